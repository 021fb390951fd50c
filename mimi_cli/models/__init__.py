"""Codec models built on :mod:`mimi_cli.core`."""
