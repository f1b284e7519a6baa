"""The report's figures: accuracy per dataset, each dataset's Pareto front, the
hypervolume as the zoo grew, and the retriever's latent space (PCA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tans.pipeline.commands import report_plots as plots
from tans.pipeline.commands.report_plots import (
    BOX_MIN,
    CHANCE_FACTOR,
    MIN_TEXT_PX,
    STYLE,
    DatasetView,
    _areas,
    _family_handles,
    _figure,
    _net_title,
    _plt,
    _short,
    family,
    place_labels,
    pt,
)
from tans.retriever.features import load_backbone, split_features
from tans.retriever.train import embeddings_of, load_version, versions
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.store import ZooStore

# -- figures --------------------------------------------------------------------------------


def pareto_figure(view: DatasetView, path: Path) -> str:
    """Accuracy against latency and parameters; returns the image map of its points."""
    plt = _plt()
    from matplotlib.lines import Line2D

    rs = view.results
    acc = np.array([r.accuracy for r in rs])
    lat = np.array([r.latency_ms for r in rs])
    par = np.array([r.params / 1e6 for r in rs])
    front_ids = {r.job_id for r in view.front}
    on_front = np.array([r.job_id in front_ids for r in rs])
    labelled = np.ones(len(rs), bool) if len(rs) <= 6 else on_front
    with plt.rc_context(STYLE):
        fig, axes = _figure(380, 2, sharey=True)
        lo = min(view.chance, acc.min())
        hi = max(view.chance, acc.max())
        pad = max(0.04, 0.12 * (hi - lo))
        maps = []
        for ax, x, xlabel in ((axes[0], lat, "latency (ms, batch 1)"), (axes[1], par, "parameters (M)")):
            _pareto_panel(ax, x, acc, on_front, view, xlabel, (max(0.0, lo - pad), min(1.0, hi + pad)))
        axes[0].set_ylabel("top-1 accuracy")
        warn = f"  (at chance: best < {CHANCE_FACTOR:g}x chance)" if view.at_chance else ""
        fig.suptitle(
            f"{view.dataset_id}: {len(rs)} networks, {len(view.front)} on the front{warn}",
            x=0.01,
            ha="left",
            color="darkred" if view.at_chance else "black",
        )
        handles = [
            Line2D([], [], ls="", marker="o", ms=9, mfc=view.colour, mec="black", label="Pareto front"),
            Line2D([], [], ls="", marker="o", ms=8, mfc="white", mec="0.45", label="dominated"),
            Line2D([], [], ls="--", color="0.25", lw=1.2, label="chance (1/classes)"),
        ]
        fig.legend(handles=handles, loc="upper right", ncol=3, frameon=False, borderaxespad=0.2)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        for ax, x in ((axes[0], lat), (axes[1], par)):
            idx = [i for i in range(len(rs)) if labelled[i] and on_front[i]] + [
                i for i in range(len(rs)) if labelled[i] and not on_front[i]
            ]  # the front's first
            place_labels(
                fig,
                ax,
                np.column_stack([x, acc])[idx],
                [_short(rs[i].job_id) for i in idx],
                avoid=[np.column_stack([x, acc])],
                fontsize_px=MIN_TEXT_PX,
            )
            maps.append((ax, np.column_stack([x, acc])))
        area_maps = "".join(_areas(fig, ax, xy, [_net_title(r) for r in rs]) for ax, xy in maps)
        plots.save(fig, path)
    return area_maps


def _pareto_panel(ax, x, acc, on_front, view: DatasetView, xlabel: str, ylim: tuple[float, float]) -> None:
    """One panel of a Pareto figure: accuracy against one cost, the front filled, chance drawn."""
    ax.axhline(view.chance, color="0.25", ls="--", lw=1.2, zorder=1)
    ax.scatter(x[~on_front], acc[~on_front], s=45, facecolors="white", edgecolors="0.45", linewidths=1.2, zorder=3)
    ax.scatter(x[on_front], acc[on_front], s=70, c=view.colour, edgecolors="black", linewidths=0.9, zorder=4)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.set_ylim(*ylim)
    span = max(x.max() - x.min(), 1e-3 * max(abs(x.max()), 1))
    ax.set_xlim(x.min() - 0.25 * span, x.max() + 0.25 * span)
    chance = f" chance 1/{view.classes} = {view.chance:.3f}"
    ax.text(
        0.01,
        view.chance,
        chance,
        transform=ax.get_yaxis_transform(),
        va="bottom",
        ha="left",
        fontsize=pt(MIN_TEXT_PX),
        color="0.2",
    )


def hypervolume_figure(history: list[float], path: Path) -> None:
    plt = _plt()
    with plt.rc_context(STYLE):
        fig, ax = _figure(340)
        ax.plot(
            np.arange(1, len(history) + 1), history, color="tab:blue", lw=2, marker="o" if len(history) < 30 else None
        )
        ax.set_xlabel("results committed")
        ax.set_ylabel("mean normalized\nhypervolume")
        ax.set_ylim(0, max(1e-3, max(history)) * 1.08)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        plots.save(fig, path)


def accuracy_figure(views: list[DatasetView], path: Path) -> str:
    """Every network's accuracy per dataset, best dataset on top; returns the image map."""
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    views = [v for v in views if v.results]
    row_px = 27
    with plt.rc_context(STYLE):
        fig, ax = _figure(row_px * len(views) + 200)
        rng = np.random.default_rng(0)
        xy, titles = [], []
        for i, v in enumerate(views):
            accs = np.array([r.accuracy for r in v.results])
            if v.at_chance:
                ax.axhspan(i - 0.5, i + 0.5, color="#fde0dc", zorder=0, lw=0)
            if len(accs) >= BOX_MIN:
                _box(ax, accs, i, v.colour)
            ys = i + (rng.uniform(-0.22, 0.22, len(accs)) if len(accs) > 1 else np.zeros(1))
            ax.scatter(accs, ys, s=34, c=v.colour, edgecolors="black", linewidths=0.6, zorder=3)
            ax.plot([v.chance, v.chance], [i - 0.42, i + 0.42], color="black", lw=2.2, zorder=4, solid_capstyle="butt")
            xy += list(zip(accs, ys))
            titles += [_net_title(r) for r in v.results]
        ax.set_yticks(range(len(views)))
        ax.set_yticklabels(
            [f"{v.dataset_id}  ({len(v.results)})" + ("  at chance" if v.at_chance else "") for v in views]
        )
        for tick, v in zip(ax.get_yticklabels(), views):
            if v.at_chance:
                tick.set_color("darkred")
        ax.set_ylim(len(views) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("top-1 accuracy of the zoo's networks (one dot per network)")
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(axis="y", length=0)
        handles = _family_handles(views) + [
            Line2D([], [], color="black", lw=0, marker="|", ms=12, mew=2.2, label="chance (1/classes)"),
            Patch(color="#fde0dc", label=f"best < {CHANCE_FACTOR:g}x chance"),
        ]
        ax.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=min(len(handles), 5),
            frameon=False,
            title=f"family (dataset id prefix); (n) = networks; boxes from {BOX_MIN} networks on",
        )
        fig.tight_layout()
        area = _areas(fig, ax, xy, titles, radius_px=6)
        plots.save(fig, path)
    return area


def _box(ax, accs, row: int, colour: str) -> None:
    """A dataset's box of accuracies, drawn under its dots."""
    ax.boxplot(
        [accs],
        positions=[row],
        orientation="horizontal",
        widths=0.7,
        showfliers=False,
        manage_ticks=False,
        patch_artist=True,
        medianprops=dict(color="black", lw=1.5),
        boxprops=dict(facecolor=colour + "40", edgecolor="0.25", lw=1.2),
        whiskerprops=dict(color="0.25", lw=1.2),
        capprops=dict(color="0.25", lw=1.2),
        zorder=2,
    )


def latent_points(store: ZooStore) -> dict | None:
    """2-D PCA of the newest retriever's model embeddings and dataset query embeddings."""
    import torch

    if not versions(store):
        return None
    loaded = load_version(store)
    model, meta, table = loaded.model, loaded.meta, loaded.models
    if table.num_rows == 0:
        return None
    models = embeddings_of(table["embedding"])
    owners = table["dataset_id"].to_pylist()
    jobs = table["job_id"].to_pylist() if "job_id" in table.column_names else [""] * len(owners)
    manifest = read_manifest(store)
    backbone = load_backbone(store, manifest, meta.get("backbone_key", ""))
    datasets = sorted(set(owners))
    with torch.no_grad():
        queries = np.stack(
            [
                model.encode_query(
                    torch.from_numpy(split_features(store, manifest, d, "test", meta["image_size"], backbone)[0])
                ).numpy()
                for d in datasets
            ]
        )
    both = np.concatenate([models, queries])
    centred = both - both.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    return {
        "version": meta["version"],
        "models": xy[: len(models)],
        "owners": owners,
        "jobs": jobs,
        "queries": xy[len(models) :],
        "datasets": datasets,
    }


def latent_figure(points: dict, colours: dict[str, str], path: Path) -> tuple[str, int]:
    """The latent map; returns (its image map, how many star labels were left out)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    with plt.rc_context(STYLE):
        fig, ax = _figure(860)
        colour = lambda d: colours.get(family(d), "0.5")  # noqa: E731
        models, queries = points["models"], points["queries"]
        ax.scatter(
            models[:, 0], models[:, 1], s=26, alpha=0.8, c=[colour(o) for o in points["owners"]], linewidths=0, zorder=2
        )
        ax.scatter(
            queries[:, 0],
            queries[:, 1],
            s=190,
            marker="*",
            edgecolors="black",
            linewidths=0.7,
            c=[colour(d) for d in points["datasets"]],
            zorder=4,
        )
        every = np.concatenate([models, queries])
        span = every.max(0) - every.min(0) + 1e-9
        ax.set_xlim(every[:, 0].min() - 0.08 * span[0], every[:, 0].max() + 0.08 * span[0])
        ax.set_ylim(every[:, 1].min() - 0.06 * span[1], every[:, 1].max() + 0.06 * span[1])
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        ax.set_xticks([])
        ax.set_yticks([])
        families = sorted({family(d) for d in points["datasets"]} | {family(o) for o in points["owners"]})
        handles = [
            Line2D([], [], ls="", marker="o", ms=8, mfc=colour(f), mec="black", mew=0.5, label=f) for f in families
        ]
        handles += [
            Line2D([], [], ls="", marker="o", ms=5, mfc="0.6", mec="none", label="model"),
            Line2D([], [], ls="", marker="*", ms=13, mfc="0.85", mec="black", label="dataset query"),
        ]
        ax.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=7,
            frameon=False,
            title=f"retriever v{points['version']}: family (dataset id prefix)",
        )
        fig.tight_layout()
        skipped = place_labels(
            fig, ax, queries, points["datasets"], avoid=[models], fontsize_px=MIN_TEXT_PX, marker_px=16
        )
        titles = [f"model of {o}" + (f", job {j}" if j else "") for o, j in zip(points["owners"], points["jobs"])]
        area = _areas(fig, ax, queries, [f"query of dataset {d}" for d in points["datasets"]], radius_px=9) + _areas(
            fig, ax, models, titles, radius_px=5
        )
        plots.save(fig, path)
    return area, skipped
