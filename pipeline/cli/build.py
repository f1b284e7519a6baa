"""`tans build` and `tans resume`: build (or continue building) a zoo on Ray."""

from __future__ import annotations

import argparse

from tans.pipeline.cli.options import EXIT_FAILED, EXIT_OK, S3_HELP, ZOO_HELP, emit, parent, positive_int

SUMMARY_HELP = "print the build's summary as JSON on the last line"


def build_flags() -> argparse.ArgumentParser:
    """The build's own flags, shared with `tans submit`."""
    b = argparse.ArgumentParser(add_help=False)
    b.add_argument("zoo", nargs="?", metavar="ZOO", help=ZOO_HELP + "; or the config's `zoo`")
    b.add_argument("--zoo", dest="zoo_option", metavar="ZOO", help="the zoo, as a flag (same as ZOO)")
    b.add_argument("--config", metavar="FILE", help="TOML build config; every key optional (docs/configuration.md)")
    b.add_argument("--datasets", metavar="DIR", help="directory (or s3:// prefix) whose sub-folders are datasets")
    b.add_argument("--max-jobs", type=int, metavar="N", help="total jobs (finished + given up) the zoo should hold")
    b.add_argument(
        "--add-jobs",
        type=positive_int,
        metavar="N",
        help="grow the zoo by N jobs over what it holds (instead of --max-jobs, the total)",
    )
    b.add_argument(
        "--follow",
        action="store_true",
        help="keep running: ingest each dataset that appears under --datasets once it is complete, "
        "grow the budget by --add-jobs for each, retrain the retriever when it is stale; stop with a signal",
    )
    b.add_argument("--epochs", type=positive_int, metavar="N", help="fine-tuning epochs per job (default 2)")
    b.add_argument(
        "--image-size", type=positive_int, metavar="PX", help="input side in pixels for fine-tuning (default 32)"
    )
    b.add_argument(
        "--strategy",
        metavar="NAME",
        help="acquisition strategy: pareto (default), random, or a peer: nsga2, tpe, qnehvi",
    )
    b.add_argument("--seed", type=int, metavar="N", help="seed of the acquisition policy (default 0)")
    b.add_argument("--max-in-flight", type=positive_int, metavar="N", help="fine-tuning jobs running at once")
    b.add_argument("--s3-endpoint", metavar="URL", help=S3_HELP)
    return b


def overrides(args) -> dict:
    """The config keys the flags set (None: not given)."""
    return {
        "zoo": args.zoo or args.zoo_option,
        "max_jobs": args.max_jobs,
        "strategy": args.strategy,
        "seed": args.seed,
        "address": getattr(args, "ray_address", None),
        "executor": getattr(args, "executor", None),
        "datasets": args.datasets and [args.datasets],
        "train.epochs": args.epochs,
        "train.image_size": args.image_size,
        "resources.max_in_flight": args.max_in_flight,
        "mlflow.tracking_uri": args.mlflow_uri,
        "s3.endpoint_url": args.s3_endpoint,
        "follow.enabled": args.follow or None,
        "follow.jobs_per_dataset": args.add_jobs if args.follow else None,
    }


def added_jobs(args) -> int | None:
    """--add-jobs as a one-off budget increase (a following build spends it per new dataset)."""
    return None if args.follow else args.add_jobs


def add(sub) -> None:
    b = sub.add_parser(
        "build",
        parents=[build_flags(), parent("mlflow", "json", "wait", json_help=SUMMARY_HELP)],
        help="build (or continue building) a model zoo on Ray",
    )
    b.add_argument(
        "--executor", metavar="NAME", help="ray (default), or replay:ZOO to answer jobs from an evaluated zoo"
    )
    b.add_argument(
        "--address",
        dest="ray_address",
        metavar="ADDRESS",
        help="Ray cluster address (HOST:6379 or auto; default: $RAY_ADDRESS, else a local Ray)",
    )
    b.add_argument("--resolved-config", action="store_true", help=argparse.SUPPRESS)  # what `tans submit` ships
    b.set_defaults(func=run_build_command, zoo_from_config=True)

    r = sub.add_parser(
        "resume",
        parents=[parent("zoo", "json", "wait", json_help=SUMMARY_HELP)],
        help="continue the zoo's last build with its recorded config",
    )
    r.set_defaults(func=run_resume)


def run_build_command(args) -> int:
    from tans.pipeline.execution.progress import Progress
    from tans.pipeline.execution.recorded import resolve_config
    from tans.pipeline.execution.run import run_build

    environ = {} if args.resolved_config else None
    config = resolve_config(args.config, overrides(args), environ, added_jobs(args))
    progress = Progress()
    try:
        summary = run_build(config, log=progress.log, progress=progress, wait=args.wait)
    finally:
        progress.close()
    return finish(args, config, summary, progress.log)


def run_resume(args) -> int:
    from tans.pipeline.execution.recorded import last_build_config
    from tans.pipeline.execution.run import run_build
    from tans.zoo_schema.store import S3Settings

    config = last_build_config(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    summary = run_build(config, wait=args.wait, command="tans resume")
    return finish(args, config, summary, print)


def finish(args, config, summary, log) -> int:
    """Log the zoo's report to the build's MLflow run; the summary with --json; the exit code."""
    if summary.mlflow_run and summary.zoo_results:
        from tans.pipeline.commands.report import log_report
        from tans.pipeline.execution.tracking import tracking_uri
        from tans.zoo_schema.store import open_store

        log_report(open_store(config.zoo, config.s3), tracking_uri(config.mlflow), summary.mlflow_run)
        log("the zoo's report is logged to the build's MLflow run (artifacts: report/index.html)")
    emit(args, summary.as_dict(), indent=None)
    return EXIT_OK if summary.finished or summary.zoo_results else EXIT_FAILED
