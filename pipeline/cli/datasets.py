"""`tans datasets add`, `synth` and `corpus`: ingest datasets into a zoo, write the built-in
ones, or cut the real-photo pretraining corpus."""

from __future__ import annotations

import dataclasses

from tans.pipeline.cli.options import EXIT_OK, emit, parent, positive_int, quiet_unless_text


def add(sub) -> None:
    d = sub.add_parser("datasets", help="add datasets to a zoo, or generate the built-in ones")
    dsub = d.add_subparsers(dest="datasets_command", required=True)
    a = dsub.add_parser(
        "add",
        parents=[parent("zoo", "json", "wait", zoo_positional=False, json_help="print what was ingested as JSON")],
        help="ingest ImageFolder directories or Parquet files into a zoo",
    )
    a.add_argument("sources", nargs="+", metavar="SOURCE", help="local path or s3:// URI of each dataset")
    a.add_argument("--name", help="dataset name (one source only); default: the folder name")
    a.add_argument("--split-seed", type=int, default=0, metavar="N", help="seed of the train/test split")
    a.add_argument(
        "--address",
        metavar="ADDR",
        help="decode the images as Ray tasks on this cluster's nodes, which also write the shards to a zoo "
        "on S3 (a source on S3 is read by the tasks): the same shards and ids as without it",
    )
    a.set_defaults(func=run_add)
    g = dsub.add_parser(
        "synth",
        parents=[parent("json", json_help="print the dataset names as JSON")],
        help="write the built-in datasets (offline, deterministic)",
    )
    g.add_argument("--out", required=True, metavar="DIR", help="directory to write one folder per dataset into")
    g.add_argument("--count", type=positive_int, metavar="N", help="how many of the suite (default: all)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="generator seed")
    g.set_defaults(func=run_synth)
    c = dsub.add_parser(
        "corpus",
        parents=[parent("json", json_help="print the corpus summary as JSON")],
        help="cut the photographs of the pretraining corpus's packages into a dataset (for pretrain-base)",
    )
    c.add_argument("root", metavar="ROOT", help="folder the corpus's packages are unpacked into, one folder each")
    c.add_argument("--unpack", action="store_true", help="only unpack GCompris' Qt bundles and SciPy's face.dat")
    c.add_argument("--out", metavar="DIR", help="folder to write photos-corpus/ and photos-corpus.json into")
    c.add_argument("--per-photo", type=positive_int, default=24, metavar="N", help="crops per photo (default 24)")
    c.add_argument("--size", type=positive_int, default=64, metavar="PX", help="side of each crop (default 64)")
    c.add_argument("--seed", type=int, default=0, metavar="N", help="crop seed")
    c.set_defaults(func=run_corpus)


def run_corpus(args) -> int:
    from pathlib import Path

    from tans.pipeline.datasets import corpus
    from tans.zoo_schema.errors import ConfigError

    if args.unpack:
        corpus.unpack(Path(args.root))
        return EXIT_OK
    if not args.out:
        raise ConfigError("tans datasets corpus needs --out DIR (or --unpack)")
    summary = corpus.build_corpus(
        args.root, args.out, args.per_photo, args.size, args.seed, held_out=corpus.held_out_images()
    )
    brief = {k: v for k, v in summary.items() if k not in ("photos_used", "sources")}
    quiet_unless_text(args)(
        f"{summary['photos']} photos, {summary['crops']} crops of {args.size} px in {args.out}/{corpus.NAME}; "
        f"dropped {sum(len(v) for v in summary['dropped'].values())} (fed an evaluation set, near another photo, "
        "a crop near a held-out image, or too few crops)"
    )
    emit(args, brief, indent=None)
    return EXIT_OK


def run_add(args) -> int:
    from tans.pipeline.datasets.ingest import IngestSettings, ingest
    from tans.pipeline.execution.lease import holding
    from tans.zoo_schema.store import S3Settings, open_store

    s3 = S3Settings(endpoint_url=args.s3_endpoint)
    store = open_store(args.zoo, s3)
    settings = IngestSettings(split_seed=args.split_seed)
    reports = []
    if args.address:
        from tans.pipeline.execution.runtime import start_ray

        start_ray(args.address)
    with holding(store, "tans datasets add", wait=args.wait, log=quiet_unless_text(args)):
        for source in args.sources:
            name = args.name if len(args.sources) == 1 else None
            report = ingest(store, source, name=name, settings=settings, s3=s3, on_ray=bool(args.address))
            reports.append({"source": source, **dataclasses.asdict(report), "duplicates": report.duplicates})
            quiet_unless_text(args)(describe(source, report))
    emit(args, reports, indent=None)
    return EXIT_OK


def describe(source: str, report) -> str:
    state = "already in the zoo" if report.already_present else "ingested"
    dupes = f" ({report.duplicates} of them duplicate images)" if report.duplicates else ""
    lines = [
        f"{source}: {report.images} images {state} as {', '.join(report.dataset_ids)}; "
        f"{len(report.skipped)} files skipped{dupes}"
    ]
    if report.decoded_on:
        lines.append(
            f"  decoded on {len(report.decoded_on)} Ray node(s): "
            + ", ".join(f"{node[:8]} {n}" for node, n in sorted(report.decoded_on.items()))
        )
    if report.written_on:
        lines.append(
            f"  images written into shards on {len(report.written_on)} Ray node(s): "
            + ", ".join(f"{node[:8]} {n}" for node, n in sorted(report.written_on.items()))
        )
    lines += [f"  skipped {name}: {reason}" for name, reason in report.skipped[:20]]
    return "\n".join(lines)


def run_synth(args) -> int:
    from tans.pipeline.datasets.synth import generate

    names = generate(args.out, count=args.count, seed=args.seed)
    emit(args, {"out": args.out, "datasets": names}, f"wrote {len(names)} datasets to {args.out}", indent=None)
    return EXIT_OK
