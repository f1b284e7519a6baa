"""A console a user can read: the INFO lines, warnings and progress bars of the libraries tans
runs on (MLflow and its database migrations, Ray, boto, Optuna) are silenced unless asked for
with `tans -v` (which sets TANS_VERBOSE=1, also read by the processes tans starts)."""

from __future__ import annotations

import logging
import os
import warnings

NOISY = ("mlflow", "alembic", "sqlalchemy", "ray", "urllib3", "botocore", "boto3", "s3transfer", "filelock", "optuna")


def verbose() -> bool:
    return os.environ.get("TANS_VERBOSE") == "1"


def quiet_third_party() -> None:
    """Raise the third-party loggers to ERROR and ignore warnings not raised by tans itself,
    unless TANS_VERBOSE=1. Call again after importing a library that configures its own logging
    (Ray does, on import)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is imported
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"tans(\.|$)")
