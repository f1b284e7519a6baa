"""Parse one `tans` command and run it: exit codes, signals, closed pipes, and the exit that
skips interpreter teardown."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from tans.pipeline.cli import (
    build,
    compact,
    datasets,
    export,
    finetune,
    lease,
    pretrain,
    report,
    retrain,
    search,
    status,
    submit,
    verify,
)
from tans.pipeline.cli.options import EXIT_ERROR, EXIT_PIPE
from tans.pipeline.execution import signals
from tans.pipeline.execution.console import quiet_third_party
from tans.zoo_schema.errors import TansError
from tans.zoo_schema.redact import redact

# the commands in the order `tans --help` lists them; each module adds its parsers
COMMANDS = (
    build,
    submit,
    verify,
    compact,
    lease,
    retrain,
    pretrain,
    search,
    finetune,
    status,
    report,
    export,
    datasets,
)

EPILOG = """precedence: command-line flags > environment ($TANS_ZOO, $RAY_ADDRESS, $MLFLOW_TRACKING_URI,
$AWS_ENDPOINT_URL) > the --config file > defaults.
exit codes: 0 success; 1 the command ran but did not succeed (a build that finished nothing, a
verify that found problems); 2 usage error (a mistyped command or flag); 3 a tans error (bad
input, config or storage: the message says what to do); 130 / 143 stopped by SIGINT / SIGTERM
(run the same command again to continue); 141 the reader of the output went away (`| head`)."""


def parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("tans")
    except PackageNotFoundError:
        installed = "0+unknown"
    p = argparse.ArgumentParser(
        prog="tans",
        description="Task-adaptive network search: build model zoos on Ray and retrieve pretrained networks "
        "for new datasets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tans {installed}")
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    add_verbose(sub)
    return p


VERBOSE_HELP = "also show the INFO lines and warnings of MLflow, Ray and the other libraries tans runs on"


def add_verbose(sub) -> None:
    """`-v` after any command too (`tans build -v`, `tans datasets add -v`)."""
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                add_verbose(action)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. SIGTERM and SIGINT stop it cleanly (every
    `finally` runs: the lease is released, the MLflow run ends KILLED) with 143 and 130."""
    p = parser()
    args = p.parse_args(argv)
    if args.verbose:
        os.environ["TANS_VERBOSE"] = "1"
    quiet_third_party()
    if hasattr(args, "zoo_option") and not getattr(args, "zoo_from_config", False):
        args.zoo = getattr(args, "zoo", None) or args.zoo_option or os.environ.get("TANS_ZOO")
        if not args.zoo:
            p.error(f"{args.command}: which zoo? pass ZOO (or --zoo ZOO), or set TANS_ZOO")
    previous = signals.install()
    try:
        return args.func(args)
    except TansError as e:
        print(f"tans: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # the reader went away (`tans status --json | head -1`): end quietly
        discard_stdout()
        return EXIT_PIPE
    except BaseException as e:
        stop = signals.interruption(e)
        if stop is None and not isinstance(e, KeyboardInterrupt):
            raise
        signum = stop.signum if stop is not None else signal.SIGINT
        print(
            f"tans: stopped by {signal.Signals(signum).name}; run the same command again to continue", file=sys.stderr
        )
        return 128 + signum
    finally:
        signals.restore(previous)


def run() -> None:
    """The `tans` console script: main(), then an exit that skips interpreter teardown.

    Native thread pools (Arrow's, gRPC's) can abort a process that tears down while they
    still run ("terminate called without an active exception", exit 134). Everything tans
    owns is closed before: Ray is shut down (its local processes stop), Arrow's S3 client
    is finalized, and the standard streams are flushed."""
    code = main()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    if "pyarrow.fs" in sys.modules:
        try:
            sys.modules["pyarrow.fs"].finalize_s3()
        except Exception:  # noqa: BLE001 - S3 was never initialized
            pass
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()
        code = code or EXIT_PIPE
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


def discard_stdout() -> None:
    """Point stdout at /dev/null, so that what is still buffered for a closed pipe is dropped
    instead of raising again at the next flush."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file (captured): nothing buffered
        pass
