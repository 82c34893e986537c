"""Exceptions with one-line, user-facing messages."""


class RaxnetError(Exception):
    """Base class: the message is printed as one line and the CLI exits non-zero."""


class InputError(RaxnetError):
    """Bad input data (missing/corrupt file, wrong shape or grid, NaN, non-binary mask...).

    The message always names the offending file.
    """


class ConfigError(RaxnetError):
    """Bad configuration file or option."""


class StageInputError(RaxnetError):
    """An earlier stage's output that this stage needs is missing or malformed."""
