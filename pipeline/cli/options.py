"""What the commands share: parent parsers for the zoo, S3, MLflow, JSON and --wait options,
value types, the named exit codes, one output function for tables and JSON, and opening
the zoo a command was given."""

from __future__ import annotations

import argparse
import json

EXIT_OK = 0  # success
EXIT_FAILED = 1  # the command ran but did not succeed (a build that finished nothing, problems found)
EXIT_USAGE = 2  # argparse: a mistyped command or flag
EXIT_ERROR = 3  # a tans error: bad input, config, storage; the message says what to do
EXIT_PIPE = 141  # 128 + SIGPIPE, as `head` expects of a writer whose reader went away

ZOO_HELP = "the zoo: a local directory or s3://bucket/prefix (default: $TANS_ZOO)"
S3_HELP = "S3 endpoint URL for s3:// locations, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL)"
MLFLOW_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"
WAIT_HELP = (
    "if another command is writing to the zoo (it holds the zoo's lease), wait until it is done "
    "instead of stopping with its name"
)


def parent(*kinds: str, zoo_positional: bool = True, json_help: str = "print JSON") -> argparse.ArgumentParser:
    """A parent parser with the shared options of `kinds`: zoo (ZOO, --zoo, --s3-endpoint),
    mlflow (--mlflow-uri), json (--json), wait (--wait)."""
    p = argparse.ArgumentParser(add_help=False)
    if "zoo" in kinds:
        if zoo_positional:
            p.add_argument("zoo", nargs="?", metavar="ZOO", help=ZOO_HELP)
        p.add_argument("--zoo", dest="zoo_option", metavar="ZOO", help="the zoo, as a flag (same as ZOO)")
        p.add_argument("--s3-endpoint", metavar="URL", help=S3_HELP)
    if "mlflow" in kinds:
        p.add_argument("--mlflow-uri", metavar="URI", help=MLFLOW_HELP)
    if "json" in kinds:
        p.add_argument("--json", action="store_true", help=json_help)
    if "wait" in kinds:
        p.add_argument("--wait", action="store_true", help=WAIT_HELP)
    return p


def emit(args, payload, text: str | None = None, indent: int | None = 1) -> None:
    """The one output of a command: `payload` as JSON with --json, else `text` (when given)."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=indent))
    elif text is not None:
        print(text)


def quiet_unless_text(args):
    """A log function: print, or nothing when the command prints JSON."""
    return (lambda *_: None) if getattr(args, "json", False) else print


def open_existing(args):
    """The zoo a command was given; a path with no zoo is an error, never created."""
    from tans.zoo_schema.manifest import require_zoo
    from tans.zoo_schema.store import S3Settings, open_store

    store = open_store(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    require_zoo(store)
    return store


def size(text: str) -> float:
    """A count with an optional k/M/G suffix: 3M, 250k, 1.5G, 3e6, 2670000."""
    units = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}
    number, scale = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 3M, 250k, 1.5G or 2670000") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more (and finite), not {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {'0 or more' if least == 0 else f'at least {least}'}, not {value}")
    return value


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def positive_int(text: str) -> int:
    return whole_number(text, 1)
