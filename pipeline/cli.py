"""The `tans` command line."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from pipeline.build import signals
from retriever.rerank import RERANK_CHOICES
from zoo_schema.errors import TansError
from zoo_schema.redact import redact


def _build_overrides(args) -> dict:
    return {"zoo": args.zoo, "max_jobs": args.max_jobs, "strategy": args.strategy,
            "seed": args.seed, "address": getattr(args, "ray_address", None),
            "executor": getattr(args, "executor", None),
            "datasets": args.datasets and [args.datasets],
            "train.epochs": args.epochs, "train.image_size": args.image_size,
            "resources.max_in_flight": args.max_in_flight,
            "mlflow.tracking_uri": args.mlflow_uri}


def _build(args) -> int:
    from pipeline.build.config import load_config
    from pipeline.build.progress import Progress
    from pipeline.build.run import run_build
    config = load_config(args.config, _build_overrides(args))
    progress = Progress()
    try:
        summary = run_build(config, log=progress.log, progress=progress)
    finally:
        progress.close()
    return 0 if summary.finished or summary.zoo_results else 1


def _submit(args) -> int:
    from pipeline.commands.submit import follow, submit
    sid = submit(args.address, args.config, _build_overrides(args))
    if not args.wait:
        return 0
    status = follow(args.address, sid)
    print(f"job {sid}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args) -> int:
    from pipeline.commands import submit
    if args.jobs_command == "list":
        rows = [submit.describe(j) for j in submit.tans_jobs(submit.client(args.address))]
        if args.json:
            print(json.dumps(rows, indent=1))
        for r in rows if not args.json else []:
            print(f"{r['submission_id']:48} {r['status']:10} {r['zoo']}")
        return 0
    if args.jobs_command == "status":
        info = submit.job_info(args.address, args.id)
        print(json.dumps(info, indent=1) if args.json else
              f"{info['submission_id']}: {info['status']} (zoo {info['zoo']})"
              + (f"\n  {info['message']}" if info["message"] else ""))
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
    from pipeline.build.run import last_build_config, run_build
    from zoo_schema.store import S3Settings
    config = last_build_config(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    summary = run_build(config)
    return 0 if summary.finished or summary.zoo_results else 1


def _open_existing(args):
    """The zoo a read-only command was given; a path with no zoo is an error, never created."""
    from zoo_schema.manifest import require_zoo
    from zoo_schema.store import S3Settings, open_store
    store = open_store(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    require_zoo(store)
    return store


def _verify(args) -> int:
    from pipeline.commands.verify import verify_zoo
    report = verify_zoo(_open_existing(args), args.clean_orphans, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return 1 if report.problems else 0
    print(f"zoo {report.zoo}: {report.results_checked} results, {report.datasets_checked} datasets and "
          f"{report.retriever_versions_checked} retriever versions checked, {len(report.problems)} problem(s), "
          f"{len(report.orphans)} orphan(s), {len(report.temp_files)} temp file(s)")
    if report.legacy_checkpoint_refs:
        print(f"  {report.legacy_checkpoint_refs} result row(s) of schema 1 name their checkpoint by absolute "
              "URI; they are read as keys of this zoo (nothing to do)")
    for p in report.problems:
        action = "quarantined" if report.quarantined else "would be quarantined (--dry-run)"
        print(f"  {p.key}: {p.problem} ({action}); repair: {p.repair}")
    verb = "deleted" if report.orphans_deleted else "would be deleted by --clean-orphans"
    for k in report.orphans[:50]:
        print(f"  orphan ({verb}): {k}")
    if len(report.orphans) > 50:
        print(f"  ... and {len(report.orphans) - 50} more orphans (--json lists all)")
    for k in report.temp_files:
        print(f"  temp file of an interrupted write: {k}")
    return 1 if report.problems else 0


def _lease(args) -> int:
    from pipeline.build.lease import break_lease, inspect, read_lease
    from zoo_schema.store import S3Settings, open_store
    store = open_store(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    if args.lease_command == "break":
        print(break_lease(store, args.force))
        return 0
    lease = read_lease(store)
    info = {"zoo": store.uri, **(inspect(lease) if lease else {"holder": None})}
    if args.json:
        print(json.dumps(info, indent=1))
    elif lease is None:
        print(f"zoo {store.uri}: no lease; no driver is building it")
    else:
        state = {True: "stale", False: "fresh", None: "stale only if unchanged for a TTL"}[info["stale"]]
        print(f"zoo {store.uri}: leased by {info['holder']} ({info['why']}), ttl {info['ttl_s']:g}s: {state}")
    return 0


def _retrain(args) -> int:
    from dataclasses import replace

    from pipeline.build.retrain import run_retrain
    from pipeline.build.tracking import MlflowSettings
    from retriever.train import RetrainSettings
    from zoo_schema.manifest import read_manifest
    store = _open_existing(args)
    manifest = read_manifest(store)
    if manifest is None:
        raise TansError(f"{args.zoo} holds datasets but no built networks yet; build it with `tans build`")
    settings = RetrainSettings()
    for name in ("steps", "positive", "seed", "backbone"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    version = run_retrain(store, settings, args.image_size or manifest.noise_shape[-1], args.if_grown,
                          MlflowSettings(tracking_uri=args.mlflow_uri or ""))
    return 0 if version is not None or args.if_grown is not None else 1


def _pretrain_base(args) -> int:
    from dataclasses import replace

    from pipeline.commands.pretrain import PretrainSettings, pretrain_base
    from zoo_schema.store import S3Settings
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
    from pipeline.commands.search import search_dataset
    from retriever.search import Constraints
    from zoo_schema.store import S3Settings
    s3 = S3Settings(endpoint_url=args.s3_endpoint)
    constraints = Constraints(args.max_params, args.max_flops, args.max_latency_ms)
    result = search_dataset(_open_existing(args), args.dataset, constraints, args.top_k, s3=s3,
                            rerank=args.rerank, recall=args.recall)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
        return 0
    evidence = {"logme": "LogME", "knn": "k-NN"}.get(result.ranked_by)  # a column only when it ranked
    print(f"{'#':>2} {'job_id':24} {'dataset':28} " + (f"{evidence:>8} " if evidence else "")
          + f"{'pred.acc':>8} {'cosine':>6} {'params':>7} {'MFLOPs':>7} {'ms':>6}  arch")
    for i, h in enumerate(result.hits, 1):
        print(f"{i:>2} {h.job_id:24} {h.dataset_id[:28]:28} "
              + (f"{h.rank_score:>8.3f} " if evidence else "")
              + f"{h.predicted_accuracy:>8.3f} {h.score:>6.3f} {h.params / 1e6:>6.2f}M "
              f"{h.flops / 1e6:>7.1f} {h.latency_ms:>6.1f}  {h.arch}")
    weak = sum(h.weak_match for h in result.hits)
    if weak:
        print(f"\nnote: {weak} hit(s) have a negative cosine: the zoo holds nothing close to this dataset")
    print(f"\nranked by {result.ranked_by} among {result.recalled} recalled networks in "
          f"{result.seconds['total']:.2f}s (re-ranking {result.seconds['rerank']:.2f}s)")
    print(f"checkpoint of the first: {result.hits[0].checkpoint_uri}")
    return 0


def _finetune(args) -> int:
    from pipeline.build.config import load_config
    from pipeline.commands.finetune import run_finetune
    config = load_config(args.config, {"zoo": args.zoo, "train.epochs": args.epochs,
                                       "train.image_size": args.image_size, "address": args.address,
                                       "mlflow.tracking_uri": args.mlflow_uri,
                                       "s3.endpoint_url": args.s3_endpoint})
    run_finetune(config, args.job, args.dataset)
    return 0


def _status(args) -> int:
    from pipeline.commands.status import format_status, zoo_status
    status = zoo_status(_open_existing(args))
    print(json.dumps(status.as_dict(), indent=1) if args.json else format_status(status))
    return 0


def _report(args) -> int:
    from pipeline.commands.report import write_report
    write_report(_open_existing(args), args.out)
    return 0


def _datasets_add(args) -> int:
    from pipeline.datasets.ingest import IngestSettings, ingest
    from zoo_schema.store import S3Settings, open_store
    s3 = S3Settings(endpoint_url=args.s3_endpoint)
    store = open_store(args.zoo, s3)
    for source in args.sources:
        report = ingest(store, source, name=args.name if len(args.sources) == 1 else None,
                        settings=IngestSettings(split_seed=args.split_seed), s3=s3)
        state = "already in the zoo" if report.already_present else "ingested"
        print(f"{source}: {report.images} images {state} as {', '.join(report.dataset_ids)}; "
              f"{len(report.skipped)} files skipped")
        for fname, reason in report.skipped[:20]:
            print(f"  skipped {fname}: {reason}")
    return 0


def _datasets_synth(args) -> int:
    from pipeline.datasets.synth import generate
    names = generate(args.out, count=args.count, seed=args.seed)
    print(f"wrote {len(names)} datasets to {args.out}")
    return 0


def _build_flags(b) -> None:
    b.add_argument("--config", help="TOML build config (all keys optional)")
    b.add_argument("--zoo", help="zoo URI: a local directory or s3://bucket/prefix")
    b.add_argument("--datasets", help="directory (or s3:// prefix) whose sub-folders are datasets")
    b.add_argument("--max-jobs", type=int, help="total jobs the zoo should hold")
    b.add_argument("--epochs", type=int)
    b.add_argument("--image-size", type=int)
    b.add_argument("--strategy", help="acquisition strategy: pareto (default) or random")
    b.add_argument("--seed", type=int)
    b.add_argument("--max-in-flight", type=int, help="fine-tuning jobs running at once")
    b.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tans", description="Task-adaptive network search: build "
                                "model zoos on Ray and retrieve pretrained networks for new datasets.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build (or continue building) a model zoo on Ray")
    _build_flags(b)
    b.add_argument("--executor", help="ray (default), or replay:ZOO to answer jobs from an evaluated zoo")
    b.add_argument("--address", dest="ray_address", help="Ray cluster address (HOST:6379 or auto); "
                   "default starts a local Ray")
    b.set_defaults(func=_build)

    j = sub.add_parser("submit", help="submit the build to a Ray cluster as a Ray Job (Jobs API)")
    _build_flags(j)
    j.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    j.add_argument("--wait", action="store_true", help="follow the job's log until it stops")
    j.set_defaults(func=_submit)

    jobs = sub.add_parser("jobs", help="status, logs or stop of submitted builds")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, text in (("list", "the cluster's tans builds"), ("status", "a build's status"),
                       ("logs", "a build's driver log"), ("stop", "stop a build (rerun `tans submit` to resume)")):
        cmd = jsub.add_parser(name, help=text)
        if name != "list":
            cmd.add_argument("id", help="submission id (printed by `tans submit`)")
        cmd.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
        if name in ("list", "status"):
            cmd.add_argument("--json", action="store_true")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="keep printing until the job stops")
        cmd.set_defaults(func=_jobs)

    r = sub.add_parser("resume", help="continue the zoo's last build with its recorded config")
    r.add_argument("zoo")
    r.add_argument("--s3-endpoint", help="S3 endpoint URL (or AWS_ENDPOINT_URL)")
    r.set_defaults(func=_resume)

    v = sub.add_parser("verify", help="check every result, checkpoint and dataset; quarantine corrupt ones")
    v.add_argument("zoo")
    v.add_argument("--json", action="store_true")
    v.add_argument("--clean-orphans", action="store_true",
                   help="delete the listed orphans (objects nothing references) and old temp files")
    v.add_argument("--dry-run", action="store_true", help="only report: quarantine and delete nothing")
    v.add_argument("--s3-endpoint", help="S3 endpoint URL (or AWS_ENDPOINT_URL)")
    v.set_defaults(func=_verify)

    le = sub.add_parser("lease", help="show or break the zoo's driver lease (one driver per zoo)")
    lsub = le.add_subparsers(dest="lease_command", required=True)
    ls = lsub.add_parser("show", help="who holds the lease, its age and TTL, and whether it is stale")
    ls.add_argument("--json", action="store_true")
    lb = lsub.add_parser("break", help="remove a stale, dead or corrupt lease (a fresh one with --force)")
    lb.add_argument("--force", action="store_true", help="remove a fresh lease too: only if its driver is dead")
    for cmd in (ls, lb):
        cmd.add_argument("zoo")
        cmd.add_argument("--s3-endpoint", help="S3 endpoint URL (or AWS_ENDPOINT_URL)")
        cmd.set_defaults(func=_lease)

    t = sub.add_parser("retrain", help="meta-train a new retriever version over the zoo")
    t.add_argument("zoo")
    t.add_argument("--if-grown", type=float, help="only if the zoo grew by this fraction (<1) or count")
    t.add_argument("--steps", type=int)
    t.add_argument("--positive", choices=["weighted", "uniform"])
    t.add_argument("--seed", type=int)
    t.add_argument("--backbone", help="query-encoder backbone: a supernet file from `tans pretrain-base` or "
                   "a torchvision ResNet18 ImageNet state_dict; default: the zoo's base supernet's largest subnet")
    t.add_argument("--image-size", type=int, help="default: the zoo's (from its manifest)")
    t.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    t.add_argument("--s3-endpoint")
    t.set_defaults(func=_retrain)

    b = sub.add_parser("pretrain-base", help="train the OFA supernet (sandwich rule) on the zoo's datasets, "
                       "for base weights and the query backbone")
    b.add_argument("zoo")
    b.add_argument("--out", required=True, help="safetensors file to write (local or s3://)")
    b.add_argument("--steps", type=int)
    b.add_argument("--batch-size", type=int)
    b.add_argument("--lr", type=float)
    b.add_argument("--image-size", type=int)
    b.add_argument("--random-subnets", type=int, help="random subnets per step besides the largest and smallest")
    b.add_argument("--seed", type=int)
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.add_argument("--s3-endpoint")
    b.set_defaults(func=_pretrain_base)

    q = sub.add_parser("search", help="rank the zoo's pretrained networks for a dataset")
    q.add_argument("zoo")
    q.add_argument("--dataset", required=True, help="ImageFolder directory or Parquet file (local or s3://)")
    q.add_argument("--top-k", type=_positive_int, default=10, help="how many networks to list (>= 1)")
    q.add_argument("--rerank", choices=RERANK_CHOICES, default="none",
                   help="order the recalled networks by the retriever's predicted accuracy (none), or by "
                   "LogME / a k-NN probe on each network's features of your images")
    q.add_argument("--recall", type=_positive_int, default=20,
                   help="networks recalled from the latent space before ordering (>= 1)")
    q.add_argument("--max-params", type=float)
    q.add_argument("--max-flops", type=float)
    q.add_argument("--max-latency-ms", type=float)
    q.add_argument("--json", action="store_true")
    q.add_argument("--s3-endpoint")
    q.set_defaults(func=_search)

    f = sub.add_parser("finetune", help="fine-tune a zoo network (e.g. a search hit) on your dataset, on Ray")
    f.add_argument("zoo")
    f.add_argument("--job", required=True, help="job_id of the zoo network to start from")
    f.add_argument("--dataset", required=True, help="ImageFolder directory or Parquet file (local or s3://)")
    f.add_argument("--epochs", type=int)
    f.add_argument("--image-size", type=int)
    f.add_argument("--config", help="TOML config for training/resources (optional)")
    f.add_argument("--address", help="Ray cluster address; default starts a local Ray")
    f.add_argument("--mlflow-uri")
    f.add_argument("--s3-endpoint")
    f.set_defaults(func=_finetune)

    s = sub.add_parser("status", help="show what a zoo holds")
    s.add_argument("zoo")
    s.add_argument("--json", action="store_true")
    s.add_argument("--s3-endpoint", help="S3 endpoint URL (or AWS_ENDPOINT_URL)")
    s.set_defaults(func=_status)

    rp = sub.add_parser("report", help="write an HTML report with plots of the zoo")
    rp.add_argument("zoo")
    rp.add_argument("--out", required=True, help="directory for index.html and its PNGs")
    rp.add_argument("--s3-endpoint", help="S3 endpoint URL (or AWS_ENDPOINT_URL)")
    rp.set_defaults(func=_report)

    d = sub.add_parser("datasets", help="add datasets to a zoo, or generate the built-in ones")
    dsub = d.add_subparsers(dest="datasets_command", required=True)
    a = dsub.add_parser("add", help="ingest ImageFolder directories or Parquet files into a zoo")
    a.add_argument("sources", nargs="+", help="local path or s3:// URI of each dataset")
    a.add_argument("--zoo", required=True)
    a.add_argument("--name", help="dataset name (one source only); default: the folder name")
    a.add_argument("--split-seed", type=int, default=0)
    a.add_argument("--s3-endpoint")
    a.set_defaults(func=_datasets_add)
    g = dsub.add_parser("synth", help="write the built-in datasets (offline, deterministic)")
    g.add_argument("--out", required=True)
    g.add_argument("--count", type=int)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_datasets_synth)
    return p


EXIT_USAGE = 2      # argparse: a mistyped command or flag
EXIT_ERROR = 3      # a tans error: bad input, config, storage; the message says what to do
EXIT_BUILD = 1      # a build or command that ran but did not succeed (nothing finished, a failed job)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. SIGTERM and SIGINT stop it cleanly (every
    `finally` runs: the lease is released, the MLflow run ends KILLED) with 143 and 130."""
    args = parser().parse_args(argv)
    previous = signals.install()
    try:
        return args.func(args)
    except TansError as e:
        print(f"tans: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except BaseException as e:
        stop = signals.interruption(e)
        if stop is None and not isinstance(e, KeyboardInterrupt):
            raise
        signum = stop.signum if stop is not None else signal.SIGINT
        print(f"tans: stopped by {signal.Signals(signum).name}; run the same command again to continue",
              file=sys.stderr)
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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
