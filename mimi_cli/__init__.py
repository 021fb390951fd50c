"""mimi-cli: Kyutai's Mimi neural audio codec in NumPy and SciPy.

>>> from mimi_cli import Mimi
>>> model = Mimi.from_file("tokenizer-e351c8d8-checkpoint125.safetensors")  # or Mimi.from_pretrained()
>>> codes = model.encode(pcm)        # float32 [T] at 24 kHz → int64 [K, F]
>>> pcm = model.decode(codes)        # → float32 [1920·F]
"""

__version__ = "0.1.0"

__all__ = ["Encodec", "EncodecConfig", "Mimi", "MimiConfig", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `mimi --help` does not pay for NumPy and SciPy.
    if name in ("Mimi", "MimiConfig"):
        from mimi_cli.models import mimi

        return getattr(mimi, name)
    if name in ("Encodec", "EncodecConfig"):
        from mimi_cli.models import encodec

        return getattr(encodec, name)
    raise AttributeError(f"module 'mimi_cli' has no attribute {name!r}")
