"""`tans pretrain-base`: pretrain the OFA supernet the zoo's networks start from."""

from __future__ import annotations

from dataclasses import replace

from tans.pipeline.cli.options import EXIT_OK, emit, open_existing, parent, positive_float, positive_int


def add(sub) -> None:
    b = sub.add_parser(
        "pretrain-base",
        parents=[parent("zoo", "json", json_help="print the summary as JSON")],
        help="train the OFA supernet (sandwich rule) on the zoo's datasets, for base weights and the query backbone",
    )
    b.add_argument("--out", required=True, metavar="FILE", help="safetensors file to write (local or s3://)")
    b.add_argument("--steps", type=positive_int, metavar="N", help="optimizer steps (default 300)")
    b.add_argument("--batch-size", type=positive_int, metavar="N", help="images per step (default 64)")
    b.add_argument("--lr", type=positive_float, metavar="X", help="peak learning rate (default 0.05)")
    b.add_argument(
        "--image-size", type=positive_int, metavar="PX", help="side images are decoded and evaluated at (default 32)"
    )
    b.add_argument(
        "--resolutions",
        type=sides,
        metavar="PX,PX,...",
        help="sides each step draws one from, at most --image-size (default: --image-size alone)",
    )
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train (default cpu)")
    b.add_argument(
        "--random-subnets", type=int, metavar="N", help="random subnets per step besides the largest and smallest"
    )
    b.add_argument("--seed", type=int, metavar="N", help="seed (default 0)")
    b.add_argument(
        "--init",
        metavar="FILE",
        help="continue from this supernet file (from pretrain-base; local or s3://) instead of the zoo's base",
    )
    b.set_defaults(func=run)


def sides(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(","))


def run(args) -> int:
    from tans.pipeline.commands.pretrain import PretrainSettings, pretrain_base
    from tans.zoo_schema.store import S3Settings

    settings = PretrainSettings()
    for name in ("steps", "batch_size", "lr", "image_size", "resolutions", "random_subnets", "seed", "init"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    import sys

    def log(line: str) -> None:  # the progress of a long run; on stderr when stdout is the JSON
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    s3 = S3Settings(endpoint_url=args.s3_endpoint)
    summary = pretrain_base(open_existing(args), args.out, settings, s3, log=log, device=args.device)
    emit(args, summary, indent=None)
    return EXIT_OK
