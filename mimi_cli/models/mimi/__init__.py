"""Kyutai's Mimi codec."""

__all__ = ["Mimi", "MimiConfig"]


def __getattr__(name: str):
    # Lazy, so that reading the config (e.g. for CLI defaults) does not import NumPy.
    if name == "Mimi":
        from mimi_cli.models.mimi.model import Mimi

        return Mimi
    if name == "MimiConfig":
        from mimi_cli.models.mimi.config import MimiConfig

        return MimiConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
