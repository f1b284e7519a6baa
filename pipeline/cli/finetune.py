"""`tans finetune`: fine-tune a zoo network (e.g. a search hit) on your dataset, on Ray."""

from __future__ import annotations

import dataclasses

from tans.pipeline.cli.options import EXIT_OK, emit, parent, positive_int, quiet_unless_text


def add(sub) -> None:
    f = sub.add_parser(
        "finetune",
        parents=[parent("zoo", "mlflow", "json", "wait", json_help="print the new result row as JSON")],
        help="fine-tune a zoo network (e.g. a search hit) on your dataset, on Ray",
    )
    f.add_argument("--job", required=True, metavar="JOB_ID", help="job_id of the zoo network to start from")
    f.add_argument(
        "--dataset", required=True, metavar="PATH", help="ImageFolder directory or Parquet file (local or s3://)"
    )
    f.add_argument("--epochs", type=positive_int, metavar="N", help="fine-tuning epochs (default 2)")
    f.add_argument("--image-size", type=positive_int, metavar="PX", help="input side in pixels (default 32)")
    f.add_argument("--config", metavar="FILE", help="TOML config for training/resources (optional)")
    f.add_argument("--address", metavar="ADDRESS", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    f.set_defaults(func=run)


def run(args) -> int:
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
    record = run_finetune(config, args.job, args.dataset, log=quiet_unless_text(args), wait=args.wait)
    emit(args, dataclasses.asdict(record), indent=None)
    return EXIT_OK
