"""One exception root for everything tans reports to a user.

Every error says what happened and, where there is one, the command that recovers.
"""


class TansError(Exception):
    """Base of all errors tans raises on purpose (bad input, bad config, bad storage)."""


class ConfigError(TansError):
    """The build config is malformed: unknown keys, wrong types, impossible values."""


class DatasetError(TansError):
    """A dataset cannot be ingested as given (empty, one class, too few images, missing)."""


class StorageError(TansError):
    """The zoo's storage is unreachable, refuses our credentials, or holds something unexpected."""


class ZooConflictError(TansError):
    """The zoo already holds something that contradicts what was asked for."""


class Interrupted(BaseException):
    """A signal (SIGTERM, SIGINT) asked tans to stop; raised in the main thread so that every
    `finally` runs (the lease is released, the MLflow run ends KILLED). Not a TansError: it
    is not an error of the input, and `except Exception` does not swallow it."""

    def __init__(self, signum: int):
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
