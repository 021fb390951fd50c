"""Meta's EnCodec 24 kHz codec (SEANet encoder – LSTM – residual VQ – LSTM – SEANet decoder)."""

__all__ = ["Encodec", "EncodecConfig"]


def __getattr__(name: str):
    # Lazy, so that reading the config (e.g. for CLI defaults) does not import NumPy.
    if name == "Encodec":
        from mimi_cli.models.encodec.model import Encodec

        return Encodec
    if name == "EncodecConfig":
        from mimi_cli.models.encodec.config import EncodecConfig

        return EncodecConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
