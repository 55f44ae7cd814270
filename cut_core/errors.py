"""Errors that carry a message meant for a person: what is wrong and what to do.

The command line prints these as a single line (no traceback). Anything else that
escapes is a bug and keeps its traceback.
"""


class RaycutError(Exception):
    """Base class for user-facing errors."""


class ConfigError(RaycutError, ValueError):
    """A configuration value is invalid."""


class ModelDirError(RaycutError):
    """A model directory or checkpoint cannot be read or does not fit the architecture."""
