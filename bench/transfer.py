"""Which zoo network for a new dataset: the field's transfer metrics on held-out datasets.

1. The zoo: every synthetic built-in dataset but the held-out ones (37), 96 networks by the
   demo's settings (`demo.toml`: Pareto acquisition, 2 random archs per dataset first, 32 px)
   but 4 epochs per fine-tune (1 epoch, the demo's until 11-29, leaves networks too alike to rank: see the
   README), from the default base weights (the shipped pretrained supernet), built once in
   bench/.cache (about 17 minutes), and its retriever. Per zoo dataset: best accuracy against chance.
   Same-pair retrieval (paper Fig. 7b) over its 37 datasets, 10 query sets of unseen test
   images each, so R@1 moves in steps of 0.27 points.
2. Held-out datasets, never in the zoo nor in the base weights' pretraining: five built-in
   ones and the three of real images (`HELD_OUT`).
   Each is written with 3x the suite's images per class: the train split is the suite's own
   size (80% of its images per class, the task a user would bring), the test split is the
   other 2.2x, so that a test accuracy's standard error is about 1 point, not 3-6.
3. Ground truth per held-out dataset: a fixed set of `--networks` zoo networks — the default
   search's top-5 plus others in a fixed random order of the zoo per dataset (the same whatever
   the default ranks first) — each fine-tuned for 3 epochs with one recipe (the zoo's B.2
   defaults; a new head seeded by the fine-tune's seed) on its train split, once per seed of
   `--seeds` (2), scored on its test split
   (accuracy after epoch 1 and 3, the mean over the seeds). How well the seeds agree on the
   set's accuracies (Pearson, and the weighted tau of one seed's accuracies against another's,
   mean over pairs of seeds) is reported per dataset and on average: when two fine-tunes of the
   same networks barely agree, no ranking can agree with either, so the seed-to-seed tau is the
   reference a ranking's tau is read against. Every
   fine-tune's accuracies are kept in bench/.cache/transfer/truth-<zoo>.json, so a rerun
   fine-tunes only what it has not (`fine_tunes` in the JSON says how many).
4. Rankings of that set, judged by weighted Kendall tau against the 3-epoch accuracies
   (`scipy.stats.weightedtau`, the protocol of LogME / Model Spider): the retriever's
   predicted accuracy (TANS), LogME and a k-NN probe on each network's features of the
   query's training images, `finetune`: the cross-fitted held-out loss of a one-epoch
   fine-tune on the query's training images (tans.retriever.proxy: up to 40 per class and about 400
   in all, in two folds, each trained on and scored by turns; lower ranks first), `finetune_first`:
   the first fold's fine-tune alone (scored on the second fold: what a budget that does not
   cover every network twice ranks by), the network's
   accuracy on its own zoo dataset (raw: `source`, and from chance
   to 1: `source_over_chance`), TANS + source_over_chance (the score of `tans search --rerank
   source` itself: the mean of the two's ranks over the whole zoo), source + finetune (the score
   of `tans search --rerank finetune`'s rule applied to the set, a simulation: as many of the set's networks
   as the default search's budget fine-tuned on this machine (`budget_reranked`, which a busy machine lowers),
   the cheapest first, re-ordered by the fine-tune's loss (the first fold's, or cross-fitted where the
   search cross-fitted: `budget_cross_fitted`) among their places in the source order, the others
   in their source places), TANS + LogME and TANS + k-NN (the mean of the two's ranks within
   the set), random (expectation over 1000 shuffles). And `fine_tuned_weighted_tau`: the τ of the
   search's ordering had its budget fine-tuned 0 (`source`), 1, 2, 3, 4, 8 or 12 of the set
   once, or all of it both ways (`--budget 0`).
   Each τ also as a fraction of the two seeds' own agreement.
5. The default search's top-1 against the starts a user would otherwise take: a random zoo
   network, the largest network within the constraint (params <= the zoo's median), the
   same architecture from random init and from the pretrained base; accuracy after 1 and 3
   epochs, and regret against the best network of the set; per held-out dataset the top-1
   against random init and the base with its standard error, and on the real-image ones.
6. Search time for a 10-class query, with and without re-ranking.

    python bench/transfer.py [--split test|validation] [--networks 16] [--seeds 2]
                             [--zoo-epochs 4] [--zoo-jobs 96] [--held-out NAME,NAME,...]

`--split validation` runs steps 3-4 on five other held-out datasets (`validation_specs`: one of
real photos, four synthetic variants), in neither the zoo nor the test split, with each set
holding the top-5 of both orderings that need no images (`none`, `source`) before the random
others: the default ordering of `tans search` is chosen by their figures, so the test split's
figures judge a choice made without them.

`--zoo-epochs` / `--zoo-jobs` build (and cache) another zoo of the same datasets with other
fine-tune lengths (`--zoo-epochs 1`) or another number of networks; `--held-out` takes a
subset of the held-out datasets.

The spread of the ground-truth accuracies per dataset is reported next to the test-split
noise (binomial standard error at the mean accuracy) and the seeds' agreement, since no
ranking can separate networks that differ by less. The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402

HELD_OUT = [
    "glyphs-hebrew-clean",
    "stripes-frequency",
    "hue-shapes-12",
    "checker-scale",
    "count-dots-noisy",
    "mnist-real",
    "textures-real",
    "photos-real",
]
CACHE = ROOT / "bench" / ".cache" / "transfer"
EPOCHS = 3
TEST_SCALE = 3  # held-out datasets are written with 3x the suite's images per class; the extra 2x is test


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


ZOO_JOBS = 96
ZOO_EPOCHS = 4


def zoo_name(epochs: int, jobs: int) -> str:
    return "" if (epochs, jobs) == (1, ZOO_JOBS) else f"-e{epochs}-j{jobs}"


def build_zoo(epochs: int = ZOO_EPOCHS, jobs: int = ZOO_JOBS):
    """The zoo of every synthetic dataset but the held-out ones, by the demo's settings (or
    `epochs` per fine-tune and `jobs` networks), built once in the cache."""
    from tans.pipeline.datasets import synth
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.retrain import run_retrain
    from tans.pipeline.execution.run import run_build
    from tans.retriever.train import versions
    from tans.zoo_schema.results import read_results
    from tans.zoo_schema.store import open_store

    datasets = CACHE / "datasets"
    if not datasets.exists():
        for spec in synth.suite():
            if spec.name not in HELD_OUT:
                synth.write_dataset(spec, datasets, seed=0)
    name = zoo_name(epochs, jobs)
    config = load_config(
        str(ROOT / "demo.toml"),
        {
            "zoo": str(CACHE / f"zoo{name}"),
            "datasets": [str(datasets)],
            "max_jobs": jobs,
            "train.epochs": epochs,
            "mlflow.tracking_uri": f"sqlite:///{CACHE / f'mlflow{name}.db'}",
        },
    )
    store = open_store(config.zoo)
    started = time.perf_counter()
    if len(read_results(store)) < config.max_jobs or not versions(store):
        run_build(config, log=log)
        import ray

        ray.shutdown()
    if not versions(store):
        run_retrain(store, config.retrain, config.train.image_size, None, None, log)
    return store, config, time.perf_counter() - started


def validation_specs():
    """Datasets used only to choose among rankings (`--split validation`): in neither the zoo,
    the base weights' pretraining nor the test split. One of real photos (six other scikit-image
    pictures), four synthetic variants of the zoo's families."""
    from tans.pipeline.datasets import synth

    armenian_lower = [chr(c) for c in range(0x0561, 0x0561 + 20)]
    fonts = [f for f in synth.FONTS if synth._covers(f, armenian_lower)]
    return [
        synth.Spec(
            "objects-real",
            "photo",
            ["coins", "moon", "page", "clock", "immunohistochemistry", "cell"],
            100,
            {"noise": 0.02},
        ),
        synth.Spec(
            "glyphs-armenian-lower-clean",
            "glyph",
            armenian_lower,
            40,
            {"wild": False, "fonts": fonts[:1], "noise": 0.03},
        ),
        synth.Spec("hue-shapes-8-noisy", "hue", [f"h{i}" for i in range(8)], 50, {"shape": True, "noise": 0.1}),
        synth.Spec(
            "textures-mixed-noisy",
            "texture",
            ["stripes", "waves", "dots", "grid", "rings", "blotches"],
            60,
            {"kind": "mixed", "noise": 0.25},
        ),
        synth.Spec("shapes-cluttered-6", "shape", synth.SHAPES[:6], 50, {"clutter": 2, "noise": 0.1}),
    ]


def held_out_splits(specs):
    """(name, train images, train labels, test images, test labels) of each dataset of `specs`:
    the suite's train size per class, and TEST_SCALE - 0.8 times its images per class as test."""
    from tans.pipeline.datasets import synth
    from tans.pipeline.datasets.ingest import read_images

    for spec in specs:
        folder = CACHE / "held-out-large" / spec.name
        if not folder.exists():
            large = synth.Spec(spec.name, spec.family, spec.classes, spec.per_class * TEST_SCALE, spec.params)
            synth.write_dataset(large, folder.parent, seed=0)
        by_class, _ = read_images(str(folder))
        train_per_class = round(0.8 * spec.per_class)
        train, test = [], []
        for label, cls in enumerate(sorted(by_class)):
            images = by_class[cls]
            train += [(b, label) for b in images[:train_per_class]]
            test += [(b, label) for b in images[train_per_class:]]
        yield spec.name, [b for b, _ in train], [y for _, y in train], [b for b, _ in test], [y for _, y in test]


def fine_tune(net, classes, x, y, xt, yt, settings, seed=0):
    from tans.workers.networks.training import train

    torch.manual_seed(seed)  # the new head's init, as a zoo job seeds it
    net.classifier = torch.nn.Linear(net.classifier.in_features, classes)
    return train(net, x, y, xt, yt, settings, torch.device("cpu"), seed=seed)[1]


class GroundTruth:
    """Fine-tuned accuracies, one entry per (dataset, start, seed): the test accuracy after each
    epoch. Kept in a JSON file per zoo, so a rerun (another default ranking, more networks, an
    interrupted run) fine-tunes only what is new. Each dataset's entries hold while its
    fingerprint (its spec, TEST_SCALE, the fine-tune recipe, the base weights) is unchanged;
    otherwise they are dropped. Each write merges with what another run wrote meanwhile (under
    a lock) and replaces the file atomically."""

    def __init__(self, path: Path):
        self.path, self.lock = path, path.with_suffix(".lock")
        self.data = self._read()
        self.reused = self.trained = 0

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def _write(self, new: dict, drop: str = "") -> None:
        import fcntl

        with open(self.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {k: v for k, v in self._read().items() if not (drop and k.startswith(drop))}
            merged.update(new)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                json.dump(merged, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self.data = merged

    def use(self, dataset: str, fingerprint: str) -> None:
        """Drop `dataset`'s entries if they were made under another fingerprint."""
        key = f"fingerprint|{dataset}"
        if self.data.get(key) != fingerprint:
            self._write({key: fingerprint}, drop=f"{dataset}|" if key in self.data else "")

    def curves(self, key: str, make_net, classes, x, y, xt, yt, settings, seeds) -> np.ndarray:
        """[seeds, epochs] accuracies of `make_net(seed)` fine-tuned once per seed."""
        out = []
        for seed in range(seeds):
            k = f"{key}|epochs={settings.epochs}|seed={seed}"
            if k in self.data:
                self.reused += 1
            else:
                curve = [round(float(a), 6) for a in fine_tune(make_net(seed), classes, x, y, xt, yt, settings, seed)]
                self._write({k: curve})
                self.trained += 1
            out.append(self.data[k])
        return np.array(out)


def fingerprint(spec, settings, base_weights_id: str) -> str:
    import hashlib
    from dataclasses import asdict

    return hashlib.sha256(
        json.dumps(
            {
                "spec": [spec.name, spec.family, spec.classes, spec.per_class, spec.params],
                "test_scale": TEST_SCALE,
                "train": asdict(settings),
                "base": base_weights_id,
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]


# the bench's ranking that each `tans search --rerank` choice is
DEFAULT_RANKING = {
    "none": "tans",
    "source": "tans+source_over_chance",
    "logme": "logme",
    "knn": "knn",
    "finetune": "source+finetune",
}
RANKINGS = [
    "tans",
    "logme",
    "knn",
    "finetune",
    "finetune_first",
    "source",
    "source_over_chance",
    "tans+logme",
    "tans+knn",
    "tans+source_over_chance",
    "source+finetune",
    "random",
]


def rankings(row_set: list[dict]) -> dict[str, np.ndarray]:
    """Every ranking's score of a dataset's set of networks (higher ranks first).
    "tans+source_over_chance" is `tans search --rerank source`'s score itself (ranks over the
    whole zoo, see tans.retriever.search.imageless_score); "tans+logme" and "tans+knn" are the mean
    of the two's normalised ranks within the set (LogME and k-NN are computed for the set only)."""
    from tans.retriever.rerank import mean_rank, source_over_chance

    col = {
        k: np.array([n[k] for n in row_set], dtype=np.float64)
        for k in (
            "tans",
            "logme",
            "knn",
            "source_accuracy",
            "source_classes",
            "search_source_score",
            "proxy_loss",
            "proxy_first",
            "search_finetune_score",
        )
    }
    scores = {
        "tans": col["tans"],
        "logme": col["logme"],
        "knn": col["knn"],
        "finetune": -col["proxy_loss"],
        "finetune_first": -col["proxy_first"],
        "source": col["source_accuracy"],
        "source_over_chance": source_over_chance(col["source_accuracy"], col["source_classes"]),
        "tans+source_over_chance": col["search_source_score"],
        "source+finetune": col["search_finetune_score"],
    }
    for m in ("tans+logme", "tans+knn"):
        scores[m] = mean_rank(scores["tans"], scores[m.split("+")[1]])
    return scores


def main() -> None:
    from scipy.stats import weightedtau

    from tans.retriever import proxy
    from tans.retriever.rerank import DEFAULT_RERANK, SCORERS
    from tans.retriever.search import RECALL, Constraints, Searcher, imageless_score
    from tans.workers.job import TrainSettings
    from tans.workers.networks.images import decode_images
    from tans.workers.networks.nets import checkpoint_network, load_base_supernet, load_checkpoint, model_for
    from tans.workers.networks.ofa_space import penultimate
    from tans.zoo_schema.manifest import read_manifest
    from tans.zoo_schema.results import read_results

    p = argparse.ArgumentParser()
    p.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="test: the held-out datasets, every figure; validation: other held-out datasets, "
        "the rankings' tau only (to choose among rankings without looking at the test split)",
    )
    p.add_argument("--networks", type=int, default=16, help="zoo networks fine-tuned per held-out dataset")
    p.add_argument("--seeds", type=int, default=2, help="fine-tunes per network (the ground truth is their mean)")
    p.add_argument("--zoo-epochs", type=int, default=ZOO_EPOCHS, help="epochs of each zoo fine-tune (the demo's: 2)")
    p.add_argument("--zoo-jobs", type=int, default=ZOO_JOBS, help="networks in the zoo")
    p.add_argument("--held-out", default="", help="comma-separated subset of the split's datasets")
    args = p.parse_args()
    if args.seeds < 1 or args.networks < 6 or args.zoo_epochs < 1 or args.zoo_jobs < 1:
        p.error(
            "--seeds, --zoo-epochs and --zoo-jobs must be at least 1, --networks at least 6 "
            "(the top-5 and one random network)"
        )
    from tans.pipeline.datasets import synth

    specs = [s for s in synth.suite() if s.name in HELD_OUT] if args.split == "test" else validation_specs()
    names = [s.name for s in specs]
    if args.held_out:
        wanted = args.held_out.split(",")
        if set(wanted) - set(names):
            p.error(f"--held-out takes names of the {args.split} split: {', '.join(names)}")
        specs = [s for s in specs if s.name in wanted]
    test = args.split == "test"
    torch.set_num_threads(os.cpu_count() or 1)
    store, config, zoo_seconds = build_zoo(args.zoo_epochs, args.zoo_jobs)
    truth = GroundTruth(CACHE / f"truth{zoo_name(args.zoo_epochs, args.zoo_jobs)}.json")
    manifest = read_manifest(store)
    results = {r.job_id: r for r in read_results(store)}
    searcher = Searcher(store, live_job_ids=set(results), results=results)
    figures = {
        "split": args.split,
        "held_out": [s.name for s in specs],
        "zoo_epochs": args.zoo_epochs,
        "networks": args.networks,
        "epochs": EPOCHS,
        "seeds": args.seeds,
        "default_rerank": DEFAULT_RERANK,
    }
    if test:
        figures.update(zoo=zoo_summary(store, results, zoo_seconds), same_pair=same_pair(store, config))
        log(f"zoo: {figures['zoo']['networks']} networks, same-pair {figures['same_pair']}")
    figures["per_dataset"] = {}
    limit = float(np.median([r.params for r in results.values()]))
    settings = TrainSettings(epochs=EPOCHS, image_size=config.train.image_size)
    rng = np.random.default_rng(0)
    taus = {m: [] for m in RANKINGS}
    starts = [
        "tans_top1",
        "random_zoo_network",
        "largest_within_constraint",
        "same_arch_random_init",
        "same_arch_pretrained_base",
    ]
    finals = {s: [] for s in starts}
    firsts = {s: [] for s in starts}
    regrets, seed_taus, sweep = [], [], {}
    for spec, (name, tr_img, tr_lab, te_img, te_lab) in zip(specs, held_out_splits(specs)):
        t0 = time.perf_counter()
        truth.use(name, fingerprint(spec, settings, manifest.base_weights.id))
        classes = len(set(tr_lab))
        x = torch.from_numpy(decode_images(tr_img, settings.image_size))
        y = torch.tensor(tr_lab)
        xt = torch.from_numpy(decode_images(te_img, settings.image_size))
        yt = torch.tensor(te_lab)
        found = searcher.rank(tr_img, tr_lab, Constraints(max_params=limit), top_k=RECALL, rerank=DEFAULT_RERANK)
        default, budget_reranked = found.hits, found.reranked  # how many the default budget fine-tuned here
        top5 = [h.job_id for h in default[:5]]
        feats = searcher.query_features(tr_img, tr_lab, per_class=10)  # those `rank` embedded
        if not test:  # choosing between the orderings: the set holds each one's top-5
            for rerank in ("none", "source"):
                hits = searcher.search(feats, Constraints(max_params=limit), top_k=5, rerank=rerank)
                top5 += [h.job_id for h in hits if h.job_id not in top5]
        # the random others: a fixed order per dataset, whatever the default ranking picked
        order = np.random.default_rng(zlib.crc32(name.encode())).permutation(sorted(results))
        chosen = top5 + [str(j) for j in order if j not in top5][: args.networks - len(top5)]
        # scores of the set: the retriever's prediction, and evidence on the query's train images
        with torch.no_grad():
            q = searcher.model.encode_query(torch.from_numpy(feats))
        index = {searcher.table["job_id"][i].as_py(): i for i in range(searcher.table.num_rows)}
        rows = [index[j] for j in chosen]
        predicted_all = searcher._predicted(q)  # every zoo network's, as search ranks them
        predicted = predicted_all[rows]
        source_score = imageless_score("source", predicted_all, searcher.source_fit)[0][rows]
        assert DEFAULT_RERANK == "finetune", "the set's first 5 are the default's top-5"
        folds = proxy.proxy_folds(tr_lab)
        from tans.retriever.features import sample_per_class

        sample = sample_per_class(tr_lab, 10, "search")
        xs, ys = x[sample], np.asarray([tr_lab[i] for i in sample])
        acc1, acc3, per_seed, evidence = [], [], [], {k: [] for k in SCORERS}
        for job_id in chosen:
            net = load_checkpoint(store, results[job_id], manifest.width)
            with torch.no_grad():
                f = penultimate(net, xs).numpy()
            for k, scorer in SCORERS.items():
                evidence[k].append(scorer(f, ys))
            tuned = checkpoint_network(store, results[job_id])  # what the search fine-tunes
            sums = tuple(
                proxy.fold_sum(lambda: copy.deepcopy(tuned), classes, x, y, folds, k, settings.image_size)
                for k in (0, 1)
            )
            evidence.setdefault("proxy_sums", []).append(sums)
            evidence.setdefault("proxy_loss", []).append(proxy.scores([sums], folds)[0])  # both halves
            evidence.setdefault("proxy_first", []).append(proxy.scores([(sums[0], None)], folds)[0])
            curves = truth.curves(
                f"{name}|{job_id}",
                lambda seed: load_checkpoint(store, results[job_id], manifest.width),
                classes,
                x,
                y,
                xt,
                yt,
                settings,
                args.seeds,
            )
            acc1.append(curves[:, 0].mean())
            acc3.append(curves[:, -1].mean())
            per_seed.append(curves[:, -1])
        acc3, per_seed = np.asarray(acc3), np.asarray(per_seed)
        # `tans search --rerank finetune`'s rule on the set: the `budget_reranked` cheapest networks
        # (as many as the default budget fine-tuned on this machine) re-ordered by their loss among
        # their places in the source order (tans.retriever.proxy.cheapest_first and slot_score);
        # the search's threads may leave a gap (a later network done, an earlier one cut), which
        # this simulation of the first `budget_reranked` does not
        set_order = sorted(range(len(chosen)), key=lambda i: -source_score[i])
        cheapest = proxy.cheapest_first([results[j].flops for j in chosen], set_order)

        def budget_score(n: int, crossed: bool) -> np.ndarray:
            """The first n cheapest fine-tuned: each once (`proxy_first`), or both ways (`crossed`)."""
            done = set(cheapest[:n])
            sums = [
                (a, b if crossed else None) if i in done else (None, None)
                for i, (a, b) in enumerate(evidence["proxy_sums"])
            ]
            return proxy.slot_score(
                set_order, {i: loss for i, loss in enumerate(proxy.scores(sums, folds)) if loss is not None}
            )

        finetune_score = budget_score(budget_reranked, bool(found.cross_fitted))
        row_set = [
            {
                "job_id": j,
                "arch": results[j].arch,
                "params": results[j].params,
                "source": results[j].dataset_id,
                "source_accuracy": round(results[j].accuracy, 6),
                "source_classes": results[j].num_classes,
                "tans": round(float(predicted[i]), 6),
                "search_source_score": round(float(source_score[i]), 6),
                "logme": round(float(evidence["logme"][i]), 6),
                "knn": round(float(evidence["knn"][i]), 6),
                "proxy_loss": round(float(evidence["proxy_loss"][i]), 6),
                "proxy_first": round(float(evidence["proxy_first"][i]), 6),
                "search_finetune_score": round(float(finetune_score[i]), 6),
                "accuracy_3_epochs": round(float(acc3[i]), 6),
            }
            for i, j in enumerate(chosen)
        ]
        scores = rankings(row_set)
        row = {
            "accuracy_3_epochs": [round(float(a), 6) for a in acc3],
            "spread": round(float(acc3.max() - acc3.min()), 4),
            "test_noise_se": round(float(np.sqrt(acc3.mean() * (1 - acc3.mean()) / len(te_lab))), 4),
            "test_images": len(te_lab),
            "train_images": len(tr_lab),
            "weighted_tau": {},
            "set": row_set,
        }
        if args.seeds > 1:  # how well fine-tunes of the same networks agree (NaN -> None when one is constant)
            c = np.corrcoef(per_seed.T)[np.triu_indices(args.seeds, 1)]
            row["seed_agreement_pearson"] = round(float(np.mean(c)), 4) if np.isfinite(c).all() else None
            pairs = zip(*np.triu_indices(args.seeds, 1))  # one seed's fine-tunes ranking another's
            tau = float(np.mean([weightedtau(per_seed[:, i], per_seed[:, j]).correlation for i, j in pairs]))
            if np.isfinite(tau):  # NaN when a seed's accuracies are all equal
                seed_taus.append(tau)
            row["seed_to_seed_weighted_tau"] = round(tau, 4) if np.isfinite(tau) else None
        for m in RANKINGS[:-1]:
            tau = float(weightedtau(scores[m], acc3).correlation)
            taus[m].append(tau)
            row["weighted_tau"][m] = round(tau, 4)
        # the default ordering had a budget fine-tuned n of the set (cheapest first): n = 0 is
        # `source`, n = the set's size the loss alone
        row["budget_reranked"] = budget_reranked
        row["budget_cross_fitted"] = bool(found.cross_fitted)
        row["fine_tuned_weighted_tau"] = {}
        for n in sorted({0, 1, 2, 3, 4, 8, 12, len(chosen)}):  # all of the set: both ways, as `--budget 0`
            tau = float(weightedtau(budget_score(min(n, len(chosen)), n >= len(chosen)), acc3).correlation)
            sweep.setdefault(n, []).append(tau)
            row["fine_tuned_weighted_tau"][n] = round(tau, 4)
        shuffles = [float(weightedtau(rng.permutation(len(acc3)), acc3).correlation) for _ in range(1000)]
        taus["random"].append(float(np.mean(shuffles)))
        row["weighted_tau"]["random"] = round(taus["random"][-1], 4)
        if test:  # the default search's top-1 against the alternatives
            top1 = results[top5[0]]
            fitting = [r for r in results.values() if r.params <= limit]
            largest = max(fitting, key=lambda r: r.params)

            def mean_curve(key, make_net):
                c = truth.curves(f"{name}|{key}", make_net, classes, x, y, xt, yt, settings, args.seeds).mean(0)
                return c[0], c[-1]

            curves = {"tans_top1": (acc1[0], acc3[0]), "random_zoo_network": (acc1[len(top5)], acc3[len(top5)])}
            if largest.job_id in chosen:
                i = chosen.index(largest.job_id)
                curves["largest_within_constraint"] = (acc1[i], acc3[i])
            else:
                curves["largest_within_constraint"] = mean_curve(
                    largest.job_id, lambda seed: load_checkpoint(store, largest, manifest.width)
                )

            def random_init(seed):
                torch.manual_seed(12345 + seed)
                return model_for(top1.arch, classes, manifest.width)

            curves["same_arch_random_init"] = mean_curve(f"random-init:{top1.arch}", random_init)
            base = load_base_supernet(store, manifest.width, manifest.base_weights)
            curves["same_arch_pretrained_base"] = mean_curve(
                f"base:{top1.arch}", lambda seed: model_for(top1.arch, classes, manifest.width, base)
            )
            for s in starts:
                firsts[s].append(float(curves[s][0]))
                finals[s].append(float(curves[s][1]))
            regrets.append(float(acc3.max() - acc3[0]))
            row.update(
                top1_accuracy_1_and_3_epochs={s: [round(float(v), 4) for v in curves[s]] for s in starts},
                regret=round(regrets[-1], 4),
            )
        row["seconds"] = round(time.perf_counter() - t0, 1)
        figures["per_dataset"][name] = row
        log(
            f"{name}: tau "
            + ", ".join(f"{m} {row['weighted_tau'][m]:+.2f}" for m in RANKINGS)
            + f" | top-1 {acc3[0]:.3f} best {acc3.max():.3f} spread {row['spread']:.3f} ({row['seconds']}s)"
        )
    figures["weighted_tau_mean"] = {m: round(float(np.mean(v)), 4) for m, v in taus.items()}
    figures["default_weighted_tau"] = figures["weighted_tau_mean"][DEFAULT_RANKING[DEFAULT_RERANK]]
    if seed_taus:
        figures["seed_to_seed_weighted_tau_mean"] = round(float(np.mean(seed_taus)), 4)
    figures["fine_tuned_weighted_tau_mean"] = {n: round(float(np.mean(v)), 4) for n, v in sweep.items()}
    figures["budget_reranked_mean"] = round(
        float(np.mean([r["budget_reranked"] for r in figures["per_dataset"].values()])), 2
    )
    if seed_taus and figures["seed_to_seed_weighted_tau_mean"] > 0:  # how much of the seeds' own agreement
        agreement = figures["seed_to_seed_weighted_tau_mean"]
        figures["weighted_tau_over_seed_agreement"] = {
            m: round(v / agreement, 4) for m, v in figures["weighted_tau_mean"].items()
        }
        figures["default_weighted_tau_over_seed_agreement"] = round(figures["default_weighted_tau"] / agreement, 4)
    figures["fine_tunes"] = {"trained": truth.trained, "reused_from_cache": truth.reused}
    if test:
        final = np.array([finals[s] for s in starts])
        figures["start_accuracy_mean"] = {
            s: {
                "after_1_epoch": round(float(np.mean(firsts[s])), 4),
                "after_3_epochs": round(float(np.mean(finals[s])), 4),
            }
            for s in starts
        }
        # per held-out dataset: the top-1 against its architecture from random init and from the base
        against = {}
        for name, row in figures["per_dataset"].items():
            acc = {s: v[1] for s, v in row["top1_accuracy_1_and_3_epochs"].items()}
            p = acc["tans_top1"]
            se = float(np.sqrt(p * (1 - p) / row["test_images"] / args.seeds))  # of a mean over the seeds
            against[name] = {
                "top1": acc["tans_top1"],
                "random_init": acc["same_arch_random_init"],
                "base": acc["same_arch_pretrained_base"],
                "se": round(se, 4),
                "top1_within_one_se_of_random_init_or_better": bool(p >= acc["same_arch_random_init"] - se),
            }
        figures["top1_against_random_init_and_base"] = against
        real = [n for n in against if n.endswith("-real")]
        if real:
            figures["real_images"] = {
                "datasets": real,
                "top1_mean": round(float(np.mean([against[n]["top1"] for n in real])), 4),
                "random_init_mean": round(float(np.mean([against[n]["random_init"] for n in real])), 4),
                "base_mean": round(float(np.mean([against[n]["base"] for n in real])), 4),
                "top1_not_below_random_init_on_every_one": all(
                    against[n]["top1_within_one_se_of_random_init_or_better"] for n in real
                ),
            }
        figures["tans_top1_best_on_average"] = bool(final.mean(1).argmax() == 0)
        figures["tans_top1_never_worst"] = bool((final.argmin(0) != 0).all())
        figures["regret_mean"] = round(float(np.mean(regrets)), 4)
        figures["search_seconds"] = search_times(config.zoo)
        figures["goals"] = {
            "default_weighted_tau": ">= 0.8 of the seeds' own agreement",
            "real_images": "the top-1 within one SE of random init or better on each, better on average",
            "top1": "best on average and never the worst",
            "search_with_rerank_s": "< 10",
        }
    print(json.dumps(figures))


def same_pair(store, config) -> dict:
    """R@k of the zoo's own datasets with unseen (test) query images, the retriever retrained
    with the build's settings (the paper's Fig. 7b protocol), and which datasets missed: each
    query dataset whose top-1 was another dataset's model, and in how many of its queries."""
    from collections import Counter

    from tans.retriever.train import evaluate, gather, same_pair_ranks, train_retriever

    t = gather(store, config.train.image_size, config.retrain.backbone)
    model, _ = train_retriever(t, config.retrain, log=lambda *_: None)
    m = evaluate(model, t, config.retrain, queries_per_dataset=10)
    owners, ranks = same_pair_ranks(model, t, config.retrain, queries_per_dataset=10)
    m = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
    misses = Counter(t.dataset_ids[i] for i, r in zip(owners, ranks) if r > 1)
    m["top1_misses"] = dict(misses.most_common())
    return m


def zoo_summary(store, results, seconds) -> dict:
    from tans.zoo_schema.shards import read_datasets

    rows = {}
    for d in read_datasets(store):
        accs = [r.accuracy for r in results.values() if r.dataset_id == d.dataset_id]
        if accs:
            rows[d.dataset_id] = {
                "best": round(max(accs), 4),
                "chance": round(1 / d.num_classes, 4),
                "networks": len(accs),
            }
    above = [k for k, v in rows.items() if v["best"] >= 2 * v["chance"]]
    return {
        "networks": len(results),
        "datasets": len(rows),
        "build_seconds": round(seconds, 1),
        "base_weights": json.loads(store.read_bytes("manifest.json"))["base_weights"]["id"],
        "datasets_best_at_least_twice_chance": len(above),
        "per_dataset": rows,
    }


def search_times(zoo: str) -> dict:
    """`tans search` end to end from the command line, for a 10-class held-out query."""
    out = {}
    from tans.pipeline.datasets import synth

    query = CACHE / "held-out" / "mnist-real"  # the suite's own size: 1,000 images
    if not query.exists():
        synth.write_dataset(next(s for s in synth.suite() if s.name == "mnist-real"), query.parent, seed=0)
    query = str(query)
    from tans.retriever.rerank import RERANK_CHOICES

    subprocess.run(
        [sys.executable, "-m", "tans.pipeline.cli", "search", zoo, "--dataset", query, "--json"],
        capture_output=True,
        cwd=ROOT,
    )  # untimed: Python's and torch's files into the page cache
    for rerank in RERANK_CHOICES:
        started = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "tans.pipeline.cli",
                "search",
                zoo,
                "--dataset",
                query,
                "--rerank",
                rerank,
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        wall = time.perf_counter() - started
        inner = json.loads(r.stdout)["seconds"] if r.returncode == 0 else {"error": r.stderr[-300:]}
        out[rerank] = {"command_seconds": round(wall, 2), **inner}
    return out


if __name__ == "__main__":
    main()
