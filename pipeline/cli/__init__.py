"""The `tans` command line: `main` parses and runs one command (`tans.pipeline.cli.main`),
each command is a module of this package with its arguments (`add`) and its run (`run`),
and `options` holds what they share (the zoo/S3/MLflow/JSON/wait options, value types,
exit codes, output). A command imports what it needs inside its `run`, so that `tans
status` does not load what `tans build` needs."""

from tans.pipeline.cli.main import main, parser, run  # noqa: F401
