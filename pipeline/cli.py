"""The `tans` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys

from tans.pipeline.execution import signals
from tans.retriever import proxy
from tans.retriever.rerank import DEFAULT_RERANK, RERANK_CHOICES
from tans.zoo_schema.errors import TansError
from tans.zoo_schema.redact import redact


def _build_overrides(args) -> dict:
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
    }


def _build(args) -> int:
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.progress import Progress
    from tans.pipeline.execution.run import run_build

    config = load_config(args.config, _build_overrides(args), environ={} if args.resolved_config else None)
    progress = Progress()
    try:
        summary = run_build(config, log=progress.log, progress=progress, wait=args.wait)
    finally:
        progress.close()
    _log_report(config, summary, progress.log)
    if args.json:
        print(json.dumps(summary.as_dict()))
    return 0 if summary.finished or summary.zoo_results else 1


def _log_report(config, summary, log) -> None:
    """The zoo's report as artifacts of the build's MLflow run (`report/index.html`)."""
    if not summary.mlflow_run or not summary.zoo_results:
        return
    from tans.pipeline.commands.report import log_report
    from tans.pipeline.execution.tracking import tracking_uri
    from tans.zoo_schema.store import open_store

    log_report(open_store(config.zoo, config.s3), tracking_uri(config.mlflow), summary.mlflow_run)
    log("the zoo's report is logged to the build's MLflow run (artifacts: report/index.html)")


def _submit(args) -> int:
    from tans.pipeline.commands.submit import follow, submit

    sid = submit(args.address, args.config, _build_overrides(args))
    if not args.wait:
        return 0
    status = follow(args.address, sid)
    print(f"job {sid}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args) -> int:
    from tans.pipeline.commands import submit

    if args.jobs_command == "list":
        rows = [submit.describe(j) for j in submit.tans_jobs(submit.client(args.address))]
        if args.json:
            print(json.dumps(rows, indent=1))
        for r in rows if not args.json else []:
            print(f"{r['submission_id']:48} {r['status']:10} {r['zoo']}")
        return 0
    if args.jobs_command == "status":
        info = submit.job_info(args.address, args.id)
        print(
            json.dumps(info, indent=1)
            if args.json
            else f"{info['submission_id']}: {info['status']} (zoo {info['zoo']})"
            + (f"\n  {info['message']}" if info["message"] else "")
        )
        return 0
    if args.jobs_command == "logs":
        if args.follow:
            status = submit.follow(args.address, args.id)
            return 0 if status == "SUCCEEDED" else 1
        print(submit.logs(args.address, args.id), end="")
        return 0
    stopped = submit.stop(args.address, args.id)
    print(f"job {args.id}: {'stop requested' if stopped else 'already stopped'}")
    return 0


def _resume(args) -> int:
    from tans.pipeline.execution.run import last_build_config, run_build
    from tans.zoo_schema.store import S3Settings

    config = last_build_config(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    summary = run_build(config, wait=args.wait, command="tans resume")
    _log_report(config, summary, print)
    if args.json:
        print(json.dumps(summary.as_dict()))
    return 0 if summary.finished or summary.zoo_results else 1


def _open_existing(args):
    """The zoo a read-only command was given; a path with no zoo is an error, never created."""
    from tans.zoo_schema.manifest import require_zoo
    from tans.zoo_schema.store import S3Settings, open_store

    store = open_store(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    require_zoo(store)
    return store


def _verify(args) -> int:
    from tans.pipeline.commands.verify import WRITER_TIME_LIMIT_S, verify_zoo

    report = verify_zoo(
        _open_existing(args),
        args.clean_orphans,
        dry_run=args.dry_run,
        wait=args.wait,
        log=(lambda *_: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return 1 if report.problems else 0
    print(
        f"zoo {report.zoo}: {report.results_checked} results, {report.datasets_checked} datasets and "
        f"{report.retriever_versions_checked} retriever versions checked, {len(report.problems)} problem(s), "
        f"{len(report.orphans)} orphan(s), {len(report.temp_files)} temp file(s)"
    )
    if report.legacy_checkpoint_refs:
        print(
            f"  {report.legacy_checkpoint_refs} result row(s) of schema 1 name their checkpoint by absolute "
            "URI; they are read as keys of this zoo (nothing to do)"
        )
    for p in report.problems:
        action = "quarantined" if report.quarantined else "would be quarantined (--dry-run)"
        print(f"  {p.key}: {p.problem} ({action}); repair: {p.repair}")
    verb = "deleted" if report.orphans_deleted else "would be deleted by --clean-orphans"
    young = set(report.young)
    for k in report.orphans[:50]:
        print(
            f"  orphan kept: {k} was written less than {WRITER_TIME_LIMIT_S / 60:.0f} min ago, and a writer that "
            "lost its lease may still commit it; run --clean-orphans again later"
            if k in young
            else f"  orphan ({verb}): {k}"
        )
    if len(report.orphans) > 50:
        print(f"  ... and {len(report.orphans) - 50} more orphans (--json lists all)")
    for k in report.foreign:
        print(f"  not a file tans writes, left alone: {k}")
    for k in report.outside:
        print(f"  reached through a symlink out of the zoo, left alone: {k}")
    for k in report.temp_files:
        print(f"  temp file of an interrupted write: {k}")
    return 1 if report.problems else 0


def _lease(args) -> int:
    from tans.pipeline.execution.lease import break_lease, inspect, read_lease
    from tans.zoo_schema.layout import LEASE
    from tans.zoo_schema.manifest import require_zoo
    from tans.zoo_schema.store import S3Settings, open_store

    store = open_store(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    if not store.exists(LEASE):
        require_zoo(store)  # a mistyped path is an error, not "no lease"
    if args.lease_command == "break":
        print(break_lease(store, args.force))
        return 0
    lease = read_lease(store)
    info = {"zoo": store.uri, **(inspect(lease) if lease else {"holder": None})}
    if args.json:
        print(json.dumps(info, indent=1))
    elif lease is None:
        print(f"zoo {store.uri}: no lease; no command is writing to it")
    else:
        state = {True: "stale", False: "fresh", None: "stale only if unchanged for a TTL"}[info["stale"]]
        print(
            f"zoo {store.uri}: leased by {info['holder']} running `{info['command']}` ({info['why']}), "
            f"ttl {info['ttl_s']:g}s: {state}"
        )
    return 0


def _retrain(args) -> int:
    from dataclasses import replace

    from tans.pipeline.execution.lease import holding
    from tans.pipeline.execution.retrain import run_retrain
    from tans.pipeline.execution.tracking import MlflowSettings
    from tans.retriever.train import RetrainSettings
    from tans.zoo_schema.layout import retriever_meta_key
    from tans.zoo_schema.manifest import read_manifest

    store = _open_existing(args)
    manifest = read_manifest(store)
    if manifest is None:
        raise TansError(f"{args.zoo} holds datasets but no built networks yet; build it with `tans build`")
    settings = RetrainSettings()
    for name in ("steps", "positive", "seed", "backbone"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    with holding(store, "tans retrain", wait=args.wait):
        version = run_retrain(
            store,
            settings,
            args.image_size or manifest.noise_shape[-1],
            args.if_grown,
            MlflowSettings(tracking_uri=args.mlflow_uri or ""),
        )
    if args.json:
        meta = store.read_json(retriever_meta_key(version)) if version is not None else None
        print(json.dumps({"version": version, "metrics": meta and meta.get("metrics")}))
    return 0 if version is not None or args.if_grown is not None else 1


def _pretrain_base(args) -> int:
    from dataclasses import replace

    from tans.pipeline.commands.pretrain import PretrainSettings, pretrain_base
    from tans.zoo_schema.store import S3Settings

    s3 = S3Settings(endpoint_url=args.s3_endpoint)
    settings = PretrainSettings()
    for name in ("steps", "batch_size", "lr", "image_size", "random_subnets", "seed"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    summary = pretrain_base(_open_existing(args), args.out, settings, s3)
    if args.json:
        print(json.dumps(summary))
    return 0


def _search(args) -> int:
    from tans.pipeline.commands.search import search_dataset
    from tans.retriever.search import Constraints
    from tans.zoo_schema.store import S3Settings

    s3 = S3Settings(endpoint_url=args.s3_endpoint)
    constraints = Constraints(args.max_params, args.max_flops, args.max_latency_ms)
    result = search_dataset(
        _open_existing(args),
        args.dataset,
        constraints,
        args.top_k,
        s3=s3,
        rerank=args.rerank,
        recall=args.recall,
        finetune_top=args.finetune_top,
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
        return 0
    # the rank score is a column when it is not the predicted accuracy itself
    label = {
        "logme": "LogME",
        "knn": "k-NN",
        "predicted_accuracy+source_over_chance": "rank",
        "finetune": "ft.loss",
    }.get(result.ranked_by)
    print(
        f"{'#':>2} {'job_id':24} {'dataset':28} "
        + (f"{label:>8} " if label else "")
        + f"{'pred.acc':>8} {'src.acc':>7} {'cosine':>6} {'params':>7} {'MFLOPs':>7} {'ms':>6}  arch"
    )

    def cell(h) -> str:  # finetune shows each fine-tuned hit's loss, "-" for the others
        if not label:
            return ""
        if h.ranked_by != "finetune":
            return f"{h.rank_score:>8.3f} "
        return f"{h.proxy_loss:>8.3f} " if h.proxy_loss is not None else f"{'-':>8} "

    for i, h in enumerate(result.hits, 1):
        print(
            f"{i:>2} {h.job_id:24} {h.dataset_id[:28]:28} "
            + cell(h)
            + f"{h.predicted_accuracy:>8.3f} {h.source_accuracy:>7.3f} {h.score:>6.3f} {h.params / 1e6:>6.2f}M "
            f"{h.flops / 1e6:>7.1f} {h.latency_ms:>6.1f}  {h.arch}"
        )
    weak = sum(h.weak_match for h in result.hits)
    if weak:
        print(f"\nnote: {weak} hit(s) have a negative cosine: the zoo holds nothing close to this dataset")
    print(
        f"\nranked by {result.ranked_by} among {result.recalled} recalled networks in "
        f"{result.seconds['total']:.2f}s (re-ranking {result.seconds['rerank']:.2f}s)"
    )
    print(f"checkpoint of the first: {result.hits[0].checkpoint_uri}")
    return 0


def _finetune(args) -> int:
    from tans.pipeline.commands.finetune import run_finetune
    from tans.pipeline.execution.config import load_config

    config = load_config(
        args.config,
        {
            "zoo": args.zoo,
            "train.epochs": args.epochs,
            "train.image_size": args.image_size,
            "address": args.address,
            "mlflow.tracking_uri": args.mlflow_uri,
            "s3.endpoint_url": args.s3_endpoint,
        },
    )
    record = run_finetune(config, args.job, args.dataset, log=(lambda *_: None) if args.json else print, wait=args.wait)
    if args.json:
        print(json.dumps(dataclasses.asdict(record)))
    return 0


def _status(args) -> int:
    from tans.pipeline.commands.status import format_status, zoo_status

    status = zoo_status(_open_existing(args))
    print(json.dumps(status.as_dict(), indent=1) if args.json else format_status(status))
    return 0


def _report(args) -> int:
    from tans.pipeline.commands.report import write_report

    folder = write_report(_open_existing(args), args.out)
    if args.json:
        print(json.dumps({"report": str(folder)}))
    return 0


def _export(args) -> int:
    from tans.workers.networks.export import export_network

    report = export_network(_open_existing(args), args.job, args.out)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=1))
    else:
        print(
            f"wrote {', '.join(report.files)} to {report.folder}: {report.config.architecture} "
            f"({report.config.num_classes} classes of {report.config.dataset_id}, accuracy "
            f"{report.config.accuracy:.3f}); load with torch alone: torch.export.load('model.pt2').module()"
        )
    return 0


def _datasets_add(args) -> int:
    from tans.pipeline.datasets.ingest import IngestSettings, ingest
    from tans.pipeline.execution.lease import holding
    from tans.zoo_schema.store import S3Settings, open_store

    s3 = S3Settings(endpoint_url=args.s3_endpoint)
    store = open_store(args.zoo, s3)
    with holding(store, "tans datasets add", wait=args.wait, log=(lambda *_: None) if args.json else print):
        reports = _ingest_each(store, args, IngestSettings(split_seed=args.split_seed), s3, ingest)
    if args.json:
        print(json.dumps(reports))
    return 0


def _ingest_each(store, args, settings, s3, ingest) -> list[dict]:
    reports = []
    for source in args.sources:
        report = ingest(store, source, name=args.name if len(args.sources) == 1 else None, settings=settings, s3=s3)
        reports.append({"source": source, **dataclasses.asdict(report), "duplicates": report.duplicates})
        if args.json:
            continue
        state = "already in the zoo" if report.already_present else "ingested"
        dupes = f" ({report.duplicates} of them duplicate images)" if report.duplicates else ""
        print(
            f"{source}: {report.images} images {state} as {', '.join(report.dataset_ids)}; "
            f"{len(report.skipped)} files skipped{dupes}"
        )
        for fname, reason in report.skipped[:20]:
            print(f"  skipped {fname}: {reason}")
    return reports


def _datasets_synth(args) -> int:
    from tans.pipeline.datasets.synth import generate

    names = generate(args.out, count=args.count, seed=args.seed)
    print(
        json.dumps({"out": args.out, "datasets": names}) if args.json else f"wrote {len(names)} datasets to {args.out}"
    )
    return 0


ZOO_HELP = "the zoo: a local directory or s3://bucket/prefix (default: $TANS_ZOO)"
WAIT_HELP = (
    "if another command is writing to the zoo (it holds the zoo's lease), wait until it is done "
    "instead of stopping with its name"
)
S3_HELP = "S3 endpoint URL for s3:// locations, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL)"


def _zoo_args(p, positional: bool = True) -> None:
    """The zoo, the same way on every command: ZOO, --zoo ZOO, or $TANS_ZOO."""
    if positional:
        p.add_argument("zoo", nargs="?", metavar="ZOO", help=ZOO_HELP)
    p.add_argument("--zoo", dest="zoo_option", metavar="ZOO", help="the zoo, as a flag (same as ZOO)")
    p.add_argument("--s3-endpoint", metavar="URL", help=S3_HELP)


def _size(text: str) -> float:
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _build_flags(b) -> None:
    b.add_argument("zoo", nargs="?", metavar="ZOO", help=ZOO_HELP + "; or the config's `zoo`")
    b.add_argument("--zoo", dest="zoo_option", metavar="ZOO", help="the zoo, as a flag (same as ZOO)")
    b.add_argument("--config", metavar="FILE", help='TOML build config; every key optional (README "Build config")')
    b.add_argument("--datasets", metavar="DIR", help="directory (or s3:// prefix) whose sub-folders are datasets")
    b.add_argument("--max-jobs", type=int, metavar="N", help="total jobs (finished + given up) the zoo should hold")
    b.add_argument("--epochs", type=_positive_int, metavar="N", help="fine-tuning epochs per job (default 2)")
    b.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="PX",
        help="input side in pixels for fine-tuning and measurements (default 32)",
    )
    b.add_argument(
        "--strategy",
        metavar="NAME",
        help="acquisition strategy: pareto (default), random, or a peer: nsga2, tpe, qnehvi",
    )
    b.add_argument("--seed", type=int, metavar="N", help="seed of the acquisition policy (default 0)")
    b.add_argument("--max-in-flight", type=_positive_int, metavar="N", help="fine-tuning jobs running at once")
    b.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    b.add_argument("--s3-endpoint", metavar="URL", help=S3_HELP)
    b.add_argument("--json", action="store_true", help="print the build's summary as JSON on the last line")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
        description="Task-adaptive network search: build "
        "model zoos on Ray and retrieve pretrained networks for new datasets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tans {installed}")
    sub = p.add_subparsers(dest="command", required=True)
    ray_address = os.environ.get("RAY_ADDRESS")

    b = sub.add_parser("build", help="build (or continue building) a model zoo on Ray")
    _build_flags(b)
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
    b.add_argument("--wait", action="store_true", help=WAIT_HELP)
    b.set_defaults(func=_build)

    j = sub.add_parser("submit", help="submit the build to a Ray cluster as a Ray Job (Jobs API)")
    _build_flags(j)
    j.add_argument(
        "--address",
        required=not ray_address,
        default=ray_address,
        metavar="URL",
        help="the cluster's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)",
    )
    j.add_argument("--wait", action="store_true", help="follow the job's log until it stops")
    j.set_defaults(func=_submit)

    jobs = sub.add_parser("jobs", help="status, logs or stop of submitted builds")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, text in (
        ("list", "the cluster's tans builds"),
        ("status", "a build's status"),
        ("logs", "a build's driver log"),
        ("stop", "stop a build (rerun `tans submit` to resume)"),
    ):
        cmd = jsub.add_parser(name, help=text)
        if name != "list":
            cmd.add_argument("id", help="submission id (printed by `tans submit`)")
        cmd.add_argument(
            "--address",
            required=not ray_address,
            default=ray_address,
            metavar="URL",
            help="the cluster's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)",
        )
        if name in ("list", "status"):
            cmd.add_argument("--json", action="store_true", help="print JSON")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="keep printing until the job stops")
        cmd.set_defaults(func=_jobs)

    r = sub.add_parser("resume", help="continue the zoo's last build with its recorded config")
    _zoo_args(r)
    r.add_argument("--json", action="store_true", help="print the build's summary as JSON on the last line")
    r.add_argument("--wait", action="store_true", help=WAIT_HELP)
    r.set_defaults(func=_resume)

    v = sub.add_parser("verify", help="check every result, checkpoint and dataset; quarantine corrupt ones")
    _zoo_args(v)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--clean-orphans",
        action="store_true",
        help="delete the listed orphans (objects nothing references) and temp files older than 10 min",
    )
    v.add_argument("--dry-run", action="store_true", help="only report: quarantine and delete nothing (takes no lease)")
    v.add_argument("--wait", action="store_true", help=WAIT_HELP)
    v.set_defaults(func=_verify)

    le = sub.add_parser("lease", help="show or break the zoo's lease (one writing command per zoo)")
    lsub = le.add_subparsers(dest="lease_command", required=True)
    ls = lsub.add_parser("show", help="who holds the lease, its age and TTL, and whether it is stale")
    ls.add_argument("--json", action="store_true", help="print JSON")
    lb = lsub.add_parser("break", help="remove a stale, dead or corrupt lease (a fresh one with --force)")
    lb.add_argument("--force", action="store_true", help="remove a fresh lease too: only if its driver is dead")
    for cmd in (ls, lb):
        _zoo_args(cmd)
        cmd.set_defaults(func=_lease)

    t = sub.add_parser("retrain", help="meta-train a new retriever version over the zoo")
    _zoo_args(t)
    t.add_argument(
        "--if-grown",
        type=_positive_float,
        metavar="X",
        help="only if the zoo grew by this fraction (< 1) or this many results (>= 1) since the last version",
    )
    t.add_argument("--steps", type=_positive_int, metavar="N", help="training steps (default 300)")
    t.add_argument("--positive", choices=["weighted", "uniform"], help="positive sampling (default weighted)")
    t.add_argument("--seed", type=int, metavar="N", help="training seed (default 0)")
    t.add_argument(
        "--backbone",
        metavar="FILE",
        help="query-encoder backbone: a supernet file from `tans "
        "pretrain-base` or a torchvision ResNet18 ImageNet state_dict; default: the zoo's base "
        "supernet's largest subnet",
    )
    t.add_argument(
        "--image-size", type=_positive_int, metavar="PX", help="query image side in pixels (default: the zoo's)"
    )
    t.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    t.add_argument("--json", action="store_true", help="print the new version and its metrics as JSON")
    t.add_argument("--wait", action="store_true", help=WAIT_HELP)
    t.set_defaults(func=_retrain)

    b = sub.add_parser(
        "pretrain-base",
        help="train the OFA supernet (sandwich rule) on the zoo's datasets, for base weights and the query backbone",
    )
    _zoo_args(b)
    b.add_argument("--out", required=True, metavar="FILE", help="safetensors file to write (local or s3://)")
    b.add_argument("--steps", type=_positive_int, metavar="N", help="optimizer steps (default 1000)")
    b.add_argument("--batch-size", type=_positive_int, metavar="N", help="images per step (default 64)")
    b.add_argument("--lr", type=_positive_float, metavar="X", help="peak learning rate (default 0.05)")
    b.add_argument("--image-size", type=_positive_int, metavar="PX", help="input side in pixels (default 32)")
    b.add_argument(
        "--random-subnets", type=int, metavar="N", help="random subnets per step besides the largest and smallest"
    )
    b.add_argument("--seed", type=int, metavar="N", help="seed (default 0)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.set_defaults(func=_pretrain_base)

    q = sub.add_parser("search", help="rank the zoo's pretrained networks for a dataset")
    _zoo_args(q)
    q.add_argument(
        "--dataset", required=True, metavar="PATH", help="ImageFolder directory or Parquet file (local or s3://)"
    )
    q.add_argument("--top-k", type=_positive_int, default=10, metavar="N", help="how many networks to list")
    q.add_argument(
        "--rerank",
        choices=RERANK_CHOICES,
        default=DEFAULT_RERANK,
        help="order the recalled networks by the retriever's predicted accuracy (none), by that "
        "and each network's accuracy on its own zoo dataset (source), by LogME / a k-NN probe "
        "on each network's features of your images, or by source with its first --finetune-top "
        f"networks fine-tuned for one epoch on your images (finetune; default: {DEFAULT_RERANK})",
    )
    q.add_argument(
        "--finetune-top",
        type=_positive_int,
        default=proxy.FINETUNE_TOP,
        metavar="N",
        help="with --rerank finetune: how many of the first networks to fine-tune "
        f"(default {proxy.FINETUNE_TOP}; each is fine-tuned twice for one epoch, on each half of "
        f"about {proxy.BUDGET} of your images)",
    )
    q.add_argument(
        "--recall",
        type=_positive_int,
        default=20,
        metavar="N",
        help="networks recalled from the latent space before ordering",
    )
    q.add_argument("--max-params", type=_size, metavar="N", help="at most this many parameters (e.g. 3M, 250k)")
    q.add_argument(
        "--max-flops", type=_size, metavar="N", help="at most this many FLOPs at the zoo's input size (e.g. 60M)"
    )
    q.add_argument(
        "--max-latency-ms",
        type=_positive_float,
        metavar="MS",
        help="at most this batch-1 latency in milliseconds, as measured on the zoo's workers",
    )
    q.add_argument("--json", action="store_true", help="print the ranking as JSON")
    q.set_defaults(func=_search)

    f = sub.add_parser("finetune", help="fine-tune a zoo network (e.g. a search hit) on your dataset, on Ray")
    _zoo_args(f)
    f.add_argument("--job", required=True, metavar="JOB_ID", help="job_id of the zoo network to start from")
    f.add_argument(
        "--dataset", required=True, metavar="PATH", help="ImageFolder directory or Parquet file (local or s3://)"
    )
    f.add_argument("--epochs", type=_positive_int, metavar="N", help="fine-tuning epochs (default 2)")
    f.add_argument("--image-size", type=_positive_int, metavar="PX", help="input side in pixels (default 32)")
    f.add_argument("--config", metavar="FILE", help="TOML config for training/resources (optional)")
    f.add_argument("--address", metavar="ADDRESS", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    f.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    f.add_argument("--json", action="store_true", help="print the new result row as JSON")
    f.add_argument("--wait", action="store_true", help=WAIT_HELP)
    f.set_defaults(func=_finetune)

    s = sub.add_parser("status", help="show what a zoo holds")
    _zoo_args(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_status)

    rp = sub.add_parser("report", help="write an HTML report with plots of the zoo")
    _zoo_args(rp)
    rp.add_argument("--out", required=True, metavar="DIR", help="directory for index.html and its figures")
    rp.add_argument("--json", action="store_true", help="print the files written as JSON")
    rp.set_defaults(func=_report)

    x = sub.add_parser(
        "export",
        help="write a zoo network for use without tans: model.safetensors, config.json, "
        "README.md (model card) and model.pt2 (torch.export)",
    )
    _zoo_args(x)
    x.add_argument(
        "--job", required=True, metavar="JOB_ID", help="job_id of the network (from `tans search` or `tans status`)"
    )
    x.add_argument("--out", required=True, metavar="DIR", help="directory to write the files into")
    x.add_argument("--json", action="store_true", help="print the files and the config as JSON")
    x.set_defaults(func=_export)

    d = sub.add_parser("datasets", help="add datasets to a zoo, or generate the built-in ones")
    dsub = d.add_subparsers(dest="datasets_command", required=True)
    a = dsub.add_parser("add", help="ingest ImageFolder directories or Parquet files into a zoo")
    a.add_argument("sources", nargs="+", metavar="SOURCE", help="local path or s3:// URI of each dataset")
    _zoo_args(a, positional=False)
    a.add_argument("--name", help="dataset name (one source only); default: the folder name")
    a.add_argument("--split-seed", type=int, default=0, metavar="N", help="seed of the train/test split")
    a.add_argument("--json", action="store_true", help="print what was ingested as JSON")
    a.add_argument("--wait", action="store_true", help=WAIT_HELP)
    a.set_defaults(func=_datasets_add)
    g = dsub.add_parser("synth", help="write the built-in datasets (offline, deterministic)")
    g.add_argument("--out", required=True, metavar="DIR", help="directory to write one folder per dataset into")
    g.add_argument("--count", type=_positive_int, metavar="N", help="how many of the suite (default: all)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="generator seed")
    g.add_argument("--json", action="store_true", help="print the dataset names as JSON")
    g.set_defaults(func=_datasets_synth)
    return p


EXIT_USAGE = 2  # argparse: a mistyped command or flag
EXIT_ERROR = 3  # a tans error: bad input, config, storage; the message says what to do
EXIT_BUILD = 1  # a build or command that ran but did not succeed (nothing finished, a failed job)
EXIT_PIPE = 141  # 128 + SIGPIPE, as `head` expects of a writer whose reader went away


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. SIGTERM and SIGINT stop it cleanly (every
    `finally` runs: the lease is released, the MLflow run ends KILLED) with 143 and 130."""
    p = parser()
    args = p.parse_args(argv)
    if hasattr(args, "zoo_option") and args.func is not _build and args.func is not _submit:
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
        _discard_stdout()
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
        _discard_stdout()
        code = code or EXIT_PIPE
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that what is still buffered for a closed pipe is dropped
    instead of raising again at the next flush."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file (captured): nothing buffered
        pass


if __name__ == "__main__":
    run()
