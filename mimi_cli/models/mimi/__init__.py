"""Kyutai's Mimi codec."""

from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.models.mimi.model import Mimi

__all__ = ["Mimi", "MimiConfig"]
