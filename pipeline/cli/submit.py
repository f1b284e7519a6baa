"""`tans submit` and `tans jobs`: a build as a Ray Job on a cluster, and the jobs submitted."""

from __future__ import annotations

import os

from tans.pipeline.cli.build import added_jobs, build_flags, overrides
from tans.pipeline.cli.options import EXIT_FAILED, EXIT_OK, emit, parent

ADDRESS_HELP = "the cluster's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
JOBS = (
    ("list", "the cluster's tans builds"),
    ("status", "a build's status"),
    ("logs", "a build's driver log"),
    ("stop", "stop a build (rerun `tans submit` to resume)"),
)


def add(sub) -> None:
    ray_address = os.environ.get("RAY_ADDRESS")
    j = sub.add_parser(
        "submit", parents=[build_flags(), parent("mlflow")], help="submit the build to a Ray cluster as a Ray Job"
    )
    j.add_argument("--address", required=not ray_address, default=ray_address, metavar="URL", help=ADDRESS_HELP)
    j.add_argument("--wait", action="store_true", help="follow the job's log until it stops")
    j.add_argument("--json", action="store_true", help="print the submission id as JSON")
    j.set_defaults(func=run_submit, zoo_from_config=True)

    jobs = sub.add_parser("jobs", help="status, logs or stop of submitted builds")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, text in JOBS:
        cmd = jsub.add_parser(name, parents=[parent("json")] if name in ("list", "status") else [], help=text)
        if name != "list":
            cmd.add_argument("id", help="submission id (printed by `tans submit`)")
        cmd.add_argument("--address", required=not ray_address, default=ray_address, metavar="URL", help=ADDRESS_HELP)
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="keep printing until the job stops")
        cmd.set_defaults(func=run_jobs)


def run_submit(args) -> int:
    from tans.pipeline.commands.submit import follow, submit

    sid = submit(args.address, args.config, overrides(args), add_jobs=added_jobs(args))
    if not args.wait:
        emit(args, {"submission_id": sid})
        return EXIT_OK
    status = follow(args.address, sid)
    emit(args, {"submission_id": sid, "status": status}, f"job {sid}: {status}")
    return EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED


def run_jobs(args) -> int:
    from tans.pipeline.commands import submit

    if args.jobs_command == "list":
        rows = [submit.describe(j) for j in submit.tans_jobs(submit.client(args.address))]
        emit(args, rows, "\n".join(f"{r['submission_id']:48} {r['status']:10} {r['zoo']}" for r in rows))
    elif args.jobs_command == "status":
        info = submit.job_info(args.address, args.id)
        text = f"{info['submission_id']}: {info['status']} (zoo {info['zoo']})"
        emit(args, info, text + (f"\n  {info['message']}" if info["message"] else ""))
    elif args.jobs_command == "logs" and args.follow:
        return EXIT_OK if submit.follow(args.address, args.id) == "SUCCEEDED" else EXIT_FAILED
    elif args.jobs_command == "logs":
        print(submit.logs(args.address, args.id), end="")
    else:
        stopped = submit.stop(args.address, args.id)
        print(f"job {args.id}: {'stop requested' if stopped else 'already stopped'}")
    return EXIT_OK
