"""`tans retrain`: meta-train a new retriever version over the zoo."""

from __future__ import annotations

from dataclasses import replace

from tans.pipeline.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    emit,
    open_existing,
    parent,
    positive_float,
    positive_int,
    quiet_unless_text,
)
from tans.zoo_schema.errors import TansError


def add(sub) -> None:
    t = sub.add_parser(
        "retrain",
        parents=[parent("zoo", "mlflow", "json", "wait", json_help="print the new version and its metrics as JSON")],
        help="meta-train a new retriever version over the zoo",
    )
    t.add_argument(
        "--if-grown",
        type=positive_float,
        metavar="X",
        help="only if the retriever is stale: a dataset it does not know, or the zoo grew by this fraction "
        "(< 1) or this many results (>= 1) since the last version",
    )
    t.add_argument(
        "--if-stale",
        action="store_true",
        help="only if the retriever is stale: a dataset with networks it does not know, or the zoo grew by "
        "the build's threshold (10%%) since it was trained; as `tans build` decides at its end",
    )
    t.add_argument("--steps", type=positive_int, metavar="N", help="training steps (default 300)")
    t.add_argument("--positive", choices=["weighted", "uniform"], help="positive sampling (default weighted)")
    t.add_argument("--seed", type=int, metavar="N", help="training seed (default 0)")
    t.add_argument(
        "--backbone",
        metavar="FILE",
        help="query-encoder backbone: a supernet file from `tans pretrain-base` or a torchvision ResNet18 "
        "ImageNet state_dict; default: the zoo's base supernet's largest subnet",
    )
    t.add_argument(
        "--image-size", type=positive_int, metavar="PX", help="query image side in pixels (default: the zoo's)"
    )
    t.set_defaults(func=run)


def run(args) -> int:
    from tans.pipeline.execution.lease import holding
    from tans.pipeline.execution.retrain import run_retrain
    from tans.pipeline.execution.tracking import MlflowSettings
    from tans.retriever.train import RetrainSettings
    from tans.zoo_schema.layout import retriever_meta_key
    from tans.zoo_schema.manifest import read_manifest

    store = open_existing(args)
    manifest = read_manifest(store)
    if manifest is None:
        raise TansError(f"{args.zoo} holds datasets but no built networks yet; build it with `tans build`")
    settings = RetrainSettings()
    for name in ("steps", "positive", "seed", "backbone"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    if args.if_stale and args.if_grown is not None:
        raise TansError("pass --if-stale or --if-grown X, not both (--if-stale is --if-grown 0.1)")
    if_grown = settings.if_grown if args.if_stale else args.if_grown
    with holding(store, "tans retrain", wait=args.wait):
        version = run_retrain(
            store,
            settings,
            args.image_size or manifest.noise_shape[-1],
            if_grown,
            MlflowSettings(tracking_uri=args.mlflow_uri or ""),
            log=quiet_unless_text(args),
        )
    meta = store.read_json(retriever_meta_key(version)) if version is not None and args.json else None
    emit(args, {"version": version, "metrics": meta and meta.get("metrics")}, indent=None)
    return EXIT_OK if version is not None or if_grown is not None else EXIT_FAILED
