"""`tans search`: rank the zoo's pretrained networks for a dataset."""

from __future__ import annotations

import os
import shlex
import sys

from tans.pipeline.cli.options import (
    EXIT_OK,
    emit,
    non_negative_float,
    non_negative_int,
    open_existing,
    parent,
    positive_float,
    positive_int,
    size,
)
from tans.retriever import proxy
from tans.retriever.rerank import DEFAULT_RERANK, RERANK_CHOICES

# the rank score is a column when it is not the predicted accuracy itself
SCORE_LABELS = {"logme": "LogME", "knn": "k-NN", "predicted_accuracy+source_over_chance": "rank", "finetune": "ft.loss"}


def add(sub) -> None:
    q = sub.add_parser(
        "search",
        parents=[parent("zoo", "json", json_help="print the ranking as JSON")],
        help="rank the zoo's pretrained networks for a dataset",
    )
    q.add_argument(
        "--dataset", required=True, metavar="PATH", help="ImageFolder directory or Parquet file (local or s3://)"
    )
    q.add_argument("--top-k", type=positive_int, default=10, metavar="N", help="how many networks to list")
    q.add_argument(
        "--rerank",
        choices=RERANK_CHOICES,
        default=DEFAULT_RERANK,
        help="order the recalled networks by the retriever's predicted accuracy (none), by that "
        "and each network's accuracy on its own zoo dataset (source), by LogME / a k-NN probe "
        "on each network's features of your images, or by source with as many networks as --budget "
        f"allows fine-tuned for one epoch on your images, cheapest first (finetune; default: {DEFAULT_RERANK})",
    )
    q.add_argument(
        "--finetune-top",
        type=non_negative_int,
        default=proxy.FINETUNE_TOP,
        metavar="N",
        help="with --rerank finetune: fine-tune only among the first N networks of the source order "
        f"(default {proxy.FINETUNE_TOP}: among every recalled one; each is fine-tuned for one epoch on one "
        f"half of about {proxy.IMAGES} of your images and scored on the other, and when the budget has done "
        "that for all of them, again with the halves swapped)",
    )
    q.add_argument(
        "--budget",
        type=non_negative_float,
        default=proxy.SECONDS,
        metavar="SECONDS",
        help="with --rerank finetune: stop fine-tuning this many seconds after the search began; "
        f"the networks not fine-tuned by then keep their source places (default {proxy.SECONDS:g}; 0: no bound)",
    )
    q.add_argument(
        "--address",
        metavar="ADDRESS",
        help="with --rerank finetune: run the fine-tunes as Ray tasks on this cluster (a GPU each when "
        "it has them); without it they run here, one after the other",
    )
    q.add_argument(
        "--recall", type=positive_int, default=20, metavar="N", help="networks recalled from the latent space"
    )
    q.add_argument("--max-params", type=size, metavar="N", help="at most this many parameters (e.g. 3M, 250k)")
    q.add_argument(
        "--max-flops", type=size, metavar="N", help="at most this many FLOPs at the zoo's input size (e.g. 60M)"
    )
    q.add_argument(
        "--max-latency-ms",
        type=positive_float,
        metavar="MS",
        help="at most this batch-1 latency in milliseconds, as measured on the zoo's workers",
    )
    q.set_defaults(func=run)


def passive_openmp() -> None:
    """Let torch's OpenMP threads sleep, not spin, while they wait for each other (unless
    $OMP_WAIT_POLICY is set): on a machine whose cores are busy with other processes, spinning
    threads made the query's embedding take 7-8 s instead of 1 and left the budget no time for
    a fine-tune (`bench/search_budget.py`). OpenMP reads it when torch loads, so only a process
    that has not imported torch yet is changed."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run(args) -> int:
    passive_openmp()
    from tans.pipeline.commands.search import search_dataset
    from tans.retriever.search import Constraints
    from tans.zoo_schema.store import S3Settings

    result = search_dataset(
        open_existing(args),
        args.dataset,
        Constraints(args.max_params, args.max_flops, args.max_latency_ms),
        args.top_k,
        s3=S3Settings(endpoint_url=args.s3_endpoint),
        rerank=args.rerank,
        recall=args.recall,
        finetune_top=args.finetune_top,
        budget=args.budget,
        address=args.address,
    )
    for warning in result.warnings:
        print(f"tans: warning: {warning}", file=sys.stderr)
    emit(args, result.as_dict(), None if args.json else table(result, args.zoo, args.dataset))
    return EXIT_OK


def table(result, zoo: str, dataset: str) -> str:
    label = SCORE_LABELS.get(result.ranked_by)
    lines = [
        f"{'#':>2} {'job_id':24} {'dataset':28} "
        + (f"{label:>8} " if label else "")
        + f"{'pred.acc':>8} {'src.acc':>7} {'cosine':>6} {'params':>7} {'MFLOPs':>7} {'ms':>6}  arch"
    ]

    def cell(h) -> str:  # finetune shows each fine-tuned hit's loss, "-" for the others
        if not label:
            return ""
        if h.ranked_by != "finetune":
            return f"{h.rank_score:>8.3f} "
        return f"{h.proxy_loss:>8.3f} " if h.proxy_loss is not None else f"{'-':>8} "

    for i, h in enumerate(result.hits, 1):
        lines.append(
            f"{i:>2} {h.job_id:24} {h.dataset_id[:28]:28} "
            + cell(h)
            + f"{h.predicted_accuracy:>8.3f} {h.source_accuracy:>7.3f} {h.score:>6.3f} {h.params / 1e6:>6.2f}M "
            f"{h.flops / 1e6:>7.1f} {h.latency_ms:>6.1f}  {h.arch}"
        )
    weak = sum(h.weak_match for h in result.hits)
    if weak:
        lines.append(f"\nnote: {weak} hit(s) have a negative cosine: the zoo holds nothing close to this dataset")
    if result.reranked is not None:
        done, asked = result.reranked, result.finetune_candidates
        if not done:
            lines.append(
                f"\nre-ranked 0 of {asked} networks: the budget ended before the first fine-tune (raise --budget, "
                "0 for no bound); the order is the source order"
            )
        else:
            lines.append(
                f"\nre-ranked {done} of {asked} networks: fine-tuned on your images, cheapest first, and ordered "
                "by held-out loss among the places they held in the source order"
                + (" (both halves of your images held out in turn)" if result.cross_fitted else "")
                + ("" if done >= asked else "; the budget ended (raise --budget, 0 for no bound), the rest keep theirs")
            )
    lines.append(
        f"\nranked by {result.ranked_by} among {result.recalled} recalled networks in "
        f"{result.seconds['total']:.2f}s (re-ranking {result.seconds['rerank']:.2f}s)"
    )
    first = result.hits[0]
    lines += [
        f"\nthe first, {first.job_id} ({first.arch} fine-tuned on {first.dataset_id}), is at {first.checkpoint_uri}",
        "next steps:",
        f"  fine-tune it on your dataset:   tans finetune {shlex.quote(zoo)} --job {first.job_id} --dataset "
        f"{shlex.quote(dataset)}",
        f"  export it for use without tans: tans export {shlex.quote(zoo)} --job {first.job_id} --out {first.job_id}",
    ]
    return "\n".join(lines)
