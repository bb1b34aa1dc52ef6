"""The exceptions users see.

The CLI turns any `MedsynthError` into one line on stderr and exit code 2, so
every message must name the bad input and, where there is one, the fix.
"""


class MedsynthError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(MedsynthError):
    """A flag, parameter or config value is invalid."""


class DataError(MedsynthError):
    """An input data set or file cannot be used."""


class StorageError(MedsynthError):
    """A local path or object-storage location cannot be read or written."""


class CheckpointError(MedsynthError):
    """A checkpoint does not belong to this model or cannot be restored."""


class ServingError(MedsynthError):
    """A model cannot be exported, loaded or queried."""
