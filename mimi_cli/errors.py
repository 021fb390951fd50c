"""Exceptions whose message is meant for the user: the CLI prints it as one line.

Every message says what is wrong and, where it helps, what to do about it.
"""


class MimiError(Exception):
    """Base class: a problem with the user's input, files or environment, not a bug."""


class InvalidAudioError(MimiError, ValueError):
    """Audio that cannot be read or encoded (unreadable file, wrong dtype or shape, NaN/Inf)."""


class InvalidCodesError(MimiError, ValueError):
    """Codes (in memory or in a codes file) that cannot be decoded."""


class WeightsError(MimiError, ValueError):
    """A weights file that is missing, unreadable or does not match the model."""


class OutputExistsError(MimiError, FileExistsError):
    """An output file exists and overwriting was not asked for."""
