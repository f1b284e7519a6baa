"""`tans report ZOO --out DIR`: an HTML page with PNG plots of what the zoo holds.

- one Pareto-front figure per dataset: accuracy against latency and against parameters,
  every network a dot coloured by the third objective, the (accuracy, latency, params)
  front's networks ringed;
- the mean normalized hypervolume as the zoo grew (one point per committed result);
- the accuracy distribution per dataset;
- a 2-D map (PCA) of the newest retriever's latent space: every model embedding, and each
  dataset's query embedding (its test images), coloured by dataset.

The page is static (index.html next to its PNGs) and needs no server. Once loaded, a
small script records on <body> how many of its images decoded (`data-images-loaded`),
which the tests read back from headless Chromium.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from pipeline.acquisition.hypervolume import front_indices
from pipeline.commands.status import ZooStatus, hypervolumes, zoo_status
from retriever.features import load_backbone, split_features
from retriever.train import load_version, versions
from zoo_schema.errors import TansError
from zoo_schema.manifest import read_manifest
from zoo_schema.results import read_state
from zoo_schema.store import ZooStore


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def pareto_figure(dataset_id: str, results, path: Path) -> None:
    plt = _plt()
    acc = np.array([r.accuracy for r in results])
    lat = np.array([r.latency_ms for r in results])
    par = np.array([r.params / 1e6 for r in results])
    front = front_indices(list(zip(acc, lat, par)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, x, xlabel, colour, clabel in ((axes[0], lat, "latency (ms, batch 1)", par, "params (M)"),
                                         (axes[1], par, "parameters (M)", lat, "latency (ms)")):
        sc = ax.scatter(x, acc, c=colour, cmap="viridis", s=28)
        ax.scatter(x[front], acc[front], s=110, facecolors="none", edgecolors="crimson", linewidths=1.5,
                   label="Pareto front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy")
        fig.colorbar(sc, ax=ax, label=clabel)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{dataset_id}: {len(results)} networks, {len(front)} on the front")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def hypervolume_figure(history: list[float], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(np.arange(1, len(history) + 1), history, color="tab:blue")
    ax.set_xlabel("results committed")
    ax.set_ylabel("mean normalized hypervolume")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def accuracy_figure(by_dataset: dict[str, list[float]], path: Path) -> None:
    plt = _plt()
    names = sorted(by_dataset)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    ax.boxplot([by_dataset[n] for n in names], vert=False, tick_labels=names)
    ax.set_xlabel("top-1 accuracy of the zoo's networks")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def latent_points(store: ZooStore) -> dict | None:
    """2-D PCA of the newest retriever's model embeddings and dataset query embeddings."""
    import torch

    if not versions(store):
        return None
    loaded = load_version(store)
    model, meta, table = loaded.model, loaded.meta, loaded.models
    models = np.asarray(table["embedding"].to_pylist(), dtype=np.float32).reshape(-1, 128)
    owners = table["dataset_id"].to_pylist()
    manifest = read_manifest(store)
    backbone = load_backbone(store, manifest, meta.get("backbone_key", ""))
    datasets = sorted(set(owners))
    with torch.no_grad():
        queries = np.stack([model.encode_query(torch.from_numpy(
            split_features(store, manifest, d, "test", meta["image_size"], backbone)[0])).numpy() for d in datasets])
    both = np.concatenate([models, queries])
    centred = both - both.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    return {"version": meta["version"], "models": xy[:len(models)], "owners": owners,
            "queries": xy[len(models):], "datasets": datasets}


def latent_figure(points: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    cmap = plt.get_cmap("tab20")
    colour = {d: cmap(i % 20) for i, d in enumerate(points["datasets"])}
    ax.scatter(points["models"][:, 0], points["models"][:, 1], s=14, alpha=0.6,
               c=[colour[o] for o in points["owners"]])
    ax.scatter(points["queries"][:, 0], points["queries"][:, 1], s=180, marker="*", edgecolors="black",
               c=[colour[d] for d in points["datasets"]])
    for (x, y), d in zip(points["queries"], points["datasets"]):
        ax.annotate(d, (x, y), fontsize=6, xytext=(4, 4), textcoords="offset points")
    ax.set_title(f"retriever v{points['version']} latent space (PCA): dots = models, stars = dataset queries")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(store: ZooStore, out: str, log=print) -> Path:
    state = read_state(store)
    if not state.results:
        raise TansError(f"the zoo at {store.uri} has no results to report; build it first")
    folder = Path(out)
    (folder / "pareto").mkdir(parents=True, exist_ok=True)
    hv = hypervolumes(store, state)
    status = zoo_status(store, state, hv)
    by_dataset: dict[str, list] = {}
    for r in state.results:
        by_dataset.setdefault(r.dataset_id, []).append(r)
    figures = []
    if hv[1]:
        hypervolume_figure(hv[1], folder / "hypervolume.png")
        figures.append(("Mean hypervolume as the zoo grew", "hypervolume.png"))
    accuracy_figure({d: [r.accuracy for r in rs] for d, rs in by_dataset.items()}, folder / "accuracy.png")
    figures.append(("Accuracy per dataset", "accuracy.png"))
    points = latent_points(store)
    if points is not None:
        latent_figure(points, folder / "latent.png")
        figures.append((f"Retriever latent space (v{points['version']})", "latent.png"))
    fronts = []
    for d in sorted(by_dataset):
        name = f"pareto/{_safe(d)}.png"
        pareto_figure(d, by_dataset[d], folder / name)
        fronts.append((d, name))
    (folder / "index.html").write_text(page(status, figures, fronts, retriever=points is not None))
    (folder / "status.json").write_text(json.dumps(status.as_dict(), indent=1))
    log(f"report written to {folder / 'index.html'} ({len(figures) + len(fronts)} plots)")
    return folder / "index.html"


def page(status: ZooStatus, figures: list, fronts: list, retriever: bool) -> str:
    e = html.escape

    def num(v):
        return "-" if v is None else f"{v:.3f}"
    rows = "\n".join(
        f"<tr><td>{e(r.dataset_id)}</td><td>{r.classes}</td><td>{r.jobs}</td><td>{r.failed}</td>"
        f"<td>{num(r.best_accuracy)}</td><td>{num(r.mean_accuracy)}</td><td>{r.pareto_front}</td>"
        f"<td>{num(r.hypervolume)}</td></tr>" for r in status.per_dataset)
    blocks = "\n".join(f"<figure><img src=\"{e(src)}\" alt=\"{e(title)}\"><figcaption>{e(title)}</figcaption></figure>"
                       for title, src in figures)
    front_blocks = "\n".join(f"<figure><img src=\"{e(src)}\" alt=\"Pareto front of {e(d)}\"></figure>"
                             for d, src in fronts)
    note = "" if retriever else "<p>No retriever trained yet: run <code>tans retrain ZOO</code> for the latent map.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tans zoo report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}</style></head>
<body data-images-loaded="pending">
<h1>tans zoo report</h1>
<p>Zoo <code>{e(status.zoo)}</code>: {status.datasets} datasets, {status.finished_jobs} networks
({status.architectures} architectures), {status.failed_jobs} failed jobs; base weights
<code>{e(str(status.base_weights))}</code>; mean normalized hypervolume {num(status.mean_hypervolume)}.</p>
{note}
<h2>Overview</h2>
{blocks}
<h2>Datasets</h2>
<table><tr><th>dataset</th><th>classes</th><th>networks</th><th>failed</th><th>best acc.</th><th>mean acc.</th>
<th>front</th><th>HV</th></tr>
{rows}
</table>
<h2>Pareto fronts (accuracy, latency, parameters)</h2>
{front_blocks}
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
}});
</script>
</body></html>
"""
