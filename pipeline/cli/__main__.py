"""`python -m tans.pipeline.cli`: the same as the `tans` console script."""

from tans.pipeline.cli.main import run

run()
