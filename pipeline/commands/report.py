"""`tans report ZOO --out DIR`: an HTML page with PNG plots of what the zoo holds.

- the accuracy of every network per dataset, datasets sorted by their best accuracy, each
  dataset's chance level (1/classes) drawn and the datasets at chance (best accuracy under
  1.5x chance) marked; a strip of points, with a box only from `BOX_MIN` networks on;
- one Pareto-front figure per dataset: accuracy against latency and against parameters, the
  (accuracy, latency, params) front's networks filled and labelled with their job id, the
  chance level drawn; a table of the front's networks (job id, arch, accuracy, params,
  latency) under each;
- the mean normalized hypervolume as the zoo grew (one point per committed result);
- a 2-D map (PCA) of the newest retriever's latent space: every model embedding, and each
  dataset's query embedding (its test images); labels that would overlap are left out.

Every plot colours a dataset by its family (the id's prefix before the first '-'), with a
legend of families. The PNGs are written at `DPI` and shown at their natural size, with
text of at least `MIN_TEXT_PX` pixels; points carry `title` tooltips through image maps.

The page is static (index.html next to its PNGs) and needs no server. Once loaded, a
small script records on <body> how many of its images decoded (`data-images-loaded`),
which the tests read back from headless Chromium. The zoo is only read (`ReadOnlyStore`).
"""

from __future__ import annotations

import html
import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from tans.pipeline.acquisition.hypervolume import front_indices
from tans.pipeline.commands.status import ZooStatus, hypervolumes, zoo_status
from tans.retriever.features import load_backbone, split_features
from tans.retriever.train import load_version, versions
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.outfiles import output_folder, write_file
from tans.zoo_schema.records import ResultRecord
from tans.zoo_schema.results import read_state
from tans.zoo_schema.store import ZooStore

DPI = 120  # PNG resolution; the page shows each PNG at its natural pixel size
MIN_TEXT_PX = 12  # the smallest text of any plot, in pixels at 100% zoom
FIG_WIDTH_PX = 1080  # every figure's width; the page is wider
CHANCE_FACTOR = 1.5  # a dataset whose best accuracy is under this x chance is "at chance"
BOX_MIN = 5  # fewer networks than this: points only, no box
ID_CHARS = 8  # job ids on the plots are shortened to this many characters


def pt(px: float) -> float:
    """Font size in points that renders `px` pixels tall at DPI."""
    return px * 72 / DPI


STYLE = {
    "font.size": pt(14),
    "axes.titlesize": pt(15),
    "axes.labelsize": pt(14),
    "xtick.labelsize": pt(13),
    "ytick.labelsize": pt(13),
    "legend.fontsize": pt(13),
    "legend.title_fontsize": pt(13),
    "figure.titlesize": pt(16),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.titleweight": "bold",
}


class ReadOnlyStore(ZooStore):
    """A view of a zoo that never writes: writes are dropped (a cache the report would fill is
    simply recomputed), deletes refused."""

    def __init__(self, inner: ZooStore):
        self.inner, self.uri = inner, inner.uri

    def read_bytes(self, key):
        return self.inner.read_bytes(key)

    def write_bytes(self, key, data, create_only=False):
        return False

    def exists(self, key):
        return self.inner.exists(key)

    def list(self, prefix):
        return self.inner.list(prefix)

    def delete(self, key):
        raise PermissionError(f"the report only reads the zoo; it does not delete {key}")

    def arrow_filesystem(self):
        return self.inner.arrow_filesystem()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def family(dataset_id: str) -> str:
    return dataset_id.split("-", 1)[0]


def family_colours(dataset_ids) -> dict[str, str]:
    """One colour per dataset family (hex), the same in every plot and table of the report."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    families = sorted({family(d) for d in dataset_ids})
    cmap = colormaps["tab10" if len(families) <= 10 else "tab20"]
    return {f: to_hex(cmap(i % cmap.N)) for i, f in enumerate(families)}


@dataclass
class DatasetView:
    """What the plots and tables show of one dataset."""

    dataset_id: str
    classes: int
    results: list[ResultRecord]  # by accuracy, best first
    front: list[ResultRecord]  # its (accuracy, latency, params) front, best first
    colour: str

    @property
    def family(self) -> str:
        return family(self.dataset_id)

    @property
    def chance(self) -> float:
        return 1.0 / max(self.classes, 1)

    @property
    def best(self) -> ResultRecord | None:
        return self.results[0] if self.results else None

    @property
    def at_chance(self) -> bool:
        return self.best is not None and self.best.accuracy < CHANCE_FACTOR * self.chance


def dataset_views(state) -> list[DatasetView]:
    """Every dataset with a record or a result, sorted by best accuracy (best first; datasets
    without results last)."""
    classes = {d.dataset_id: d.num_classes for d in state.datasets}
    by_dataset: dict[str, list] = {d: [] for d in classes}
    for r in state.results:
        by_dataset.setdefault(r.dataset_id, []).append(r)
        classes.setdefault(r.dataset_id, r.num_classes)
    colours = family_colours(by_dataset)
    views = []
    for d, rs in by_dataset.items():
        rs = sorted(rs, key=lambda r: (-r.accuracy, r.latency_ms, r.job_id))
        front = [rs[i] for i in front_indices([(r.accuracy, r.latency_ms, r.params) for r in rs])]
        views.append(DatasetView(d, classes[d], rs, front, colours[family(d)]))
    return sorted(views, key=lambda v: (v.best is None, -(v.best.accuracy if v.best else 0), v.dataset_id))


# -- figure helpers -------------------------------------------------------------------------


def _figure(height_px: float, ncols: int = 1, **kw):
    plt = _plt()
    return plt.subplots(1, ncols, figsize=(FIG_WIDTH_PX / DPI, height_px / DPI), dpi=DPI, **kw)


def _family_handles(views: list[DatasetView], marker="o"):
    from matplotlib.lines import Line2D

    seen = {}
    for v in views:
        seen.setdefault(v.family, v.colour)
    return [
        Line2D([], [], ls="", marker=marker, ms=8, mfc=c, mec="black", mew=0.6, label=f)
        for f, c in sorted(seen.items())
    ]


def _pixel_xy(fig, ax, xy) -> np.ndarray:
    """PNG pixel coordinates (origin top left) of data points; valid when saved at fig.dpi
    without a tight bounding box."""
    disp = ax.transData.transform(np.asarray(xy, dtype=float).reshape(-1, 2))
    return np.column_stack([disp[:, 0], fig.bbox.height - disp[:, 1]])


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def place_labels(fig, ax, xy, texts, avoid=(), fontsize_px=MIN_TEXT_PX, marker_px=8) -> int:
    """Annotate the points `xy` with `texts`, in order, each at the first of a ring of offsets
    where it overlaps no other label, no point (of `xy` or `avoid`) and stays inside the axes
    (a leader line joins a label set further off); a label that fits nowhere is left out.
    Call it once the layout is final. Returns how many labels were left out."""
    renderer = fig.canvas.get_renderer()
    to_disp = ax.transData.transform
    disp = to_disp(np.asarray(xy, dtype=float).reshape(-1, 2))
    points = np.concatenate([disp, *[to_disp(np.asarray(a, dtype=float).reshape(-1, 2)) for a in avoid if len(a)]])
    r = marker_px / 2 + 1
    dots = [(x - r, y - r, x + r, y + r) for x, y in points]
    labels: list[tuple] = []
    frame = ax.get_window_extent(renderer)
    gap, skipped = marker_px / 2 + 3, 0
    for (x, y), text in zip(disp, texts):
        probe = ax.text(0.5, 0.5, text, transform=ax.transAxes, fontsize=pt(fontsize_px))
        extent = probe.get_window_extent(renderer)
        probe.remove()
        w, h = extent.width + 4, extent.height + 2
        spot = None
        for dist in (0, 14, 30):
            for sx, sy in ((1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1)):
                dx = {1: gap + dist, -1: -gap - dist - w, 0: -w / 2}[sx]
                dy = {1: gap + dist * 0.6, -1: -gap - dist * 0.6 - h, 0: -h / 2}[sy]
                box = (x + dx, y + dy, x + dx + w, y + dy + h)
                inside = (
                    frame.x0 + 2 <= box[0]
                    and box[2] <= frame.x1 - 2
                    and frame.y0 + 2 <= box[1]
                    and box[3] <= frame.y1 - 2
                )
                padded = (box[0] - 6, box[1] - 2, box[2] + 6, box[3] + 2)  # keep labels apart
                if (
                    inside
                    and not any(_overlaps(box, t) for t in dots)
                    and not any(_overlaps(padded, t) for t in labels)
                ):
                    spot = (dx, dy, box, dist)
                    break
            if spot:
                break
        if spot is None:
            skipped += 1
            continue
        dx, dy, box, dist = spot
        labels.append(box)
        ax.annotate(
            text,
            tuple(ax.transData.inverted().transform((x, y))),
            xytext=((dx + 2) * 72 / DPI, dy * 72 / DPI),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=pt(fontsize_px),
            zorder=6,
            bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.7),
        )
        if dist or abs(dy + h / 2) > 1:  # a label not level with its point gets a leader line
            end = np.array([min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])])
            step = end - (x, y)
            start = np.array([x, y]) + step / max(np.hypot(*step), 1e-9) * (marker_px / 2)
            ax.plot(*ax.transData.inverted().transform([start, end]).T, color="0.35", lw=0.7, zorder=5)
    return skipped


def _areas(fig, ax, xy, titles, radius_px=7) -> str:
    """<area> elements giving each point a `title` tooltip in an HTML image map."""
    return "".join(
        f'<area shape="circle" coords="{x:.0f},{y:.0f},{radius_px}" title="{html.escape(t)}" '
        f'alt="{html.escape(t)}" nohref>'
        for (x, y), t in zip(_pixel_xy(fig, ax, xy), titles)
    )


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI)  # no tight bbox: the image maps' pixel coordinates stay valid
    _plt().close(fig)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def _short(job_id: str) -> str:
    return job_id[:ID_CHARS]


def _net_title(r: ResultRecord) -> str:
    return (
        f"{r.dataset_id}: job {r.job_id}, arch {r.arch}, accuracy {r.accuracy:.3f}, "
        f"{r.params / 1e6:.2f} M params, {r.latency_ms:.1f} ms"
    )


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
            ax.axhline(view.chance, color="0.25", ls="--", lw=1.2, zorder=1)
            ax.scatter(
                x[~on_front], acc[~on_front], s=45, facecolors="white", edgecolors="0.45", linewidths=1.2, zorder=3
            )
            ax.scatter(x[on_front], acc[on_front], s=70, c=view.colour, edgecolors="black", linewidths=0.9, zorder=4)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
            span = max(x.max() - x.min(), 1e-3 * max(abs(x.max()), 1))
            ax.set_xlim(x.min() - 0.25 * span, x.max() + 0.25 * span)
            ax.text(
                0.01,
                view.chance,
                f" chance 1/{view.classes} = {view.chance:.3f}",
                transform=ax.get_yaxis_transform(),
                va="bottom",
                ha="left",
                fontsize=pt(MIN_TEXT_PX),
                color="0.2",
            )
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
        _save(fig, path)
    return area_maps


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
        _save(fig, path)


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
                ax.boxplot(
                    [accs],
                    positions=[i],
                    orientation="horizontal",
                    widths=0.7,
                    showfliers=False,
                    manage_ticks=False,
                    patch_artist=True,
                    medianprops=dict(color="black", lw=1.5),
                    boxprops=dict(facecolor=v.colour + "40", edgecolor="0.25", lw=1.2),
                    whiskerprops=dict(color="0.25", lw=1.2),
                    capprops=dict(color="0.25", lw=1.2),
                    zorder=2,
                )
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
        _save(fig, path)
    return area


def latent_points(store: ZooStore) -> dict | None:
    """2-D PCA of the newest retriever's model embeddings and dataset query embeddings."""
    import torch

    if not versions(store):
        return None
    loaded = load_version(store)
    model, meta, table = loaded.model, loaded.meta, loaded.models
    if table.num_rows == 0:
        return None
    models = np.asarray(table["embedding"].to_pylist(), dtype=np.float32).reshape(table.num_rows, -1)
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
        _save(fig, path)
    return area, skipped


# -- the report -----------------------------------------------------------------------------


@dataclass
class Figure:
    title: str
    src: str
    caption: str = ""
    areas: str = ""  # <area> elements of its image map


def write_report(store: ZooStore, out: str, log=print) -> Path:
    """Render the report in a private temp folder, then publish each file into `out` whole,
    never through a link planted there (`tans.zoo_schema.outfiles`); returns its index.html."""
    target = output_folder(out)
    with tempfile.TemporaryDirectory(prefix="tans-report-") as tmp:
        plots = render_report(store, Path(tmp))
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                rel = path.relative_to(tmp)
                write_file(output_folder(target / rel.parent), rel.name, path.read_bytes())
    log(f"report written to {target / 'index.html'} ({plots} plots)")
    return target / "index.html"


def render_report(store: ZooStore, folder: Path) -> int:
    """Write the report's page, status and figures into `folder` (a fresh one); returns the plots."""
    store = ReadOnlyStore(store)
    state = read_state(store)
    (folder / "pareto").mkdir(parents=True, exist_ok=True)
    hv = hypervolumes(store, state)
    status = zoo_status(store, state, hv)
    views = dataset_views(state)
    colours = {v.family: v.colour for v in views}
    figures: list[Figure] = []
    fronts: list[tuple[DatasetView, Figure]] = []
    retriever = False
    if state.results:
        areas = accuracy_figure(views, folder / "accuracy.png")
        at_chance = sum(v.at_chance for v in views)
        figures.append(
            Figure(
                "Accuracy per dataset",
                "accuracy.png",
                f"Datasets sorted by their best accuracy; black tick = chance (1/classes); "
                f"{at_chance} datasets at chance (best accuracy < {CHANCE_FACTOR:g}x chance) "
                "shaded red.",
                areas,
            )
        )
        points = latent_points(store)
        if points is not None:
            retriever = True
            areas, skipped = latent_figure(points, colours, folder / "latent.png")
            figures.append(
                Figure(
                    f"Retriever latent space (v{points['version']}, PCA)",
                    "latent.png",
                    "Dots = the zoo's models, stars = each dataset's query (its test images), "
                    "coloured by family. "
                    + (
                        f"{skipped} star labels left out where they would overlap; hover a star for its dataset."
                        if skipped
                        else "Hover a point for its dataset."
                    ),
                    areas,
                )
            )
        if hv[1]:
            hypervolume_figure(hv[1], folder / "hypervolume.png")
            figures.append(Figure("Mean normalized hypervolume as the zoo grew", "hypervolume.png"))
        for v in views:
            if v.results:
                name = f"pareto/{_safe(v.dataset_id)}.png"
                areas = pareto_figure(v, folder / name)
                fronts.append((v, Figure(f"Pareto front of {v.dataset_id}", name, "", areas)))
    (folder / "index.html").write_text(page(status, views, figures, fronts, retriever, folder, colours))
    (folder / "status.json").write_text(json.dumps(status.as_dict(), indent=1))
    return len(figures) + len(fronts)


def _img(fig: Figure, folder: Path, name: str) -> str:
    e = html.escape
    w, h = png_size(folder / fig.src)
    usemap = f' usemap="#{e(name)}"' if fig.areas else ""
    mapping = f'<map name="{e(name)}">{fig.areas}</map>' if fig.areas else ""
    return (
        f'<img src="{e(fig.src)}" width="{w}" height="{h}" alt="{e(fig.title)}" '
        f'title="{e(fig.title)}"{usemap}>{mapping}'
    )


def page(
    status: ZooStatus,
    views: list[DatasetView],
    figures: list[Figure],
    fronts: list,
    retriever: bool,
    folder: Path,
    colours: dict[str, str],
) -> str:
    time_note = (
        ""
        if status.non_training_share is None
        else (
            " Where the jobs' time went: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in status.job_seconds.items())
            + f" ({status.non_training_share:.0%} not training)."
        )
    )
    e = html.escape

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    def swatch(v: DatasetView) -> str:
        return f'<span class="sw" style="background:{v.colour}" title="family {e(v.family)}"></span>'

    stat = {r.dataset_id: r for r in status.per_dataset}
    rows = []
    for v in views:
        s = stat.get(v.dataset_id)
        best = v.best
        chance_note = (
            (
                f' <span class="tag" title="best accuracy {num(best.accuracy)} &lt; {CHANCE_FACTOR:g} x '
                f'chance {num(v.chance)}">at chance</span>'
            )
            if v.at_chance
            else ""
        )
        link = f'<a href="#{e(_safe(v.dataset_id))}">{e(v.dataset_id)}</a>' if v.results else e(v.dataset_id)
        best_job = "-" if best is None else f'<code title="{e(_net_title(best))}">{e(best.job_id)}</code>'
        rows.append(
            f'<tr class="{"chance" if v.at_chance else ""}"><td>{swatch(v)}{link}{chance_note}</td>'
            f"<td>{v.classes}</td><td>{num(v.chance)}</td><td>{len(v.results)}</td>"
            f"<td>{s.failed if s else '-'}</td><td>{num(best.accuracy if best else None)}</td>"
            f"<td>{'-' if best is None else f'{best.accuracy / v.chance:.1f}x'}</td>"
            f"<td>{num(s.mean_accuracy if s else None)}</td><td>{len(v.front)}</td>"
            f"<td>{num(s.hypervolume if s else None)}</td>"
            f"<td>{best_job}</td></tr>"
        )
    blocks = "\n".join(
        f"<figure>{_img(f, folder, f'map-{i}')}<figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>"
        for i, f in enumerate(figures)
    )
    front_blocks = []
    for i, (v, f) in enumerate(fronts):
        nets = "\n".join(
            f"<tr><td><code>{e(r.job_id)}</code></td><td><code>{e(r.arch)}</code></td><td>{r.accuracy:.3f}</td>"
            f"<td>{r.params / 1e6:.2f}</td><td>{r.latency_ms:.1f}</td></tr>"
            for r in v.front
        )
        warn = ' <span class="tag">at chance</span>' if v.at_chance else ""
        front_blocks.append(
            f'<section id="{e(_safe(v.dataset_id))}"><h3>{swatch(v)}{e(v.dataset_id)}{warn}</h3>'
            f"<figure>{_img(f, folder, f'front-{i}')}</figure>\n"
            f'<table class="front"><caption>{e(v.dataset_id)}: Pareto-front networks ({len(v.front)} of '
            f"{len(v.results)}; chance level {num(v.chance)})</caption>"
            f"<tr><th>job id</th><th>arch</th><th>accuracy</th><th>params (M)</th><th>latency (ms)</th></tr>\n"
            f"{nets}</table></section>"
        )
    legend = " ".join(f'<span class="sw" style="background:{c}"></span>{e(f)}' for f, c in sorted(colours.items()))
    notes = []
    if not status.finished_jobs:
        notes.append(
            '<p class="note">The zoo has no results yet: build it (<code>tans build</code>) for the plots.</p>'
        )
    elif not retriever:
        notes.append(
            '<p class="note">No retriever trained yet: run <code>tans retrain ZOO</code> for the latent map.</p>'
        )
    at_chance = [v for v in views if v.at_chance]
    if at_chance:
        notes.append(
            f'<p class="note">{len(at_chance)} datasets at chance (best accuracy &lt; '
            f"{CHANCE_FACTOR:g} x 1/classes): "
            + ", ".join(f'<a href="#{e(_safe(v.dataset_id))}">{e(v.dataset_id)}</a>' for v in at_chance)
            + ".</p>"
        )
    width = FIG_WIDTH_PX + 40
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tans zoo report</title>
<style>body{{font-family:sans-serif;font-size:15px;margin:2em auto;padding:0 1em;max-width:{width}px}}
table{{border-collapse:collapse;margin:0.5em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
table.front td:nth-child(2),table.front th:nth-child(2){{text-align:left}}
caption{{text-align:left;font-weight:bold;padding:2px 0}}
code{{font-size:13px}}tr.chance{{background:#fde0dc}}
.tag{{background:#b22222;color:white;border-radius:3px;padding:0 4px;font-size:12px;margin-left:4px}}
.sw{{display:inline-block;width:12px;height:12px;border:1px solid #333;margin-right:6px;vertical-align:-1px}}
.note{{background:#fff6d5;padding:4px 8px}}
figure{{display:block;margin:1em 0}}img{{max-width:100%;height:auto}}
figcaption{{max-width:{FIG_WIDTH_PX}px}}section{{margin-bottom:2em}}</style></head>
<body data-images-loaded="pending">
<h1>tans zoo report</h1>
<p>Zoo <code>{e(status.zoo)}</code>: {status.datasets} datasets, {status.finished_jobs} networks
({status.architectures} architectures), {status.failed_jobs} failed jobs; base weights
<code>{e(str(status.base_weights))}</code>; mean normalized hypervolume {num(status.mean_hypervolume)}.{time_note}</p>
<p>Dataset families (colours in every plot): {legend}</p>
{"".join(notes)}
<h2>Overview</h2>
{blocks}
<h2>Datasets (by best accuracy)</h2>
<table><tr><th>dataset</th><th>classes</th><th>chance</th><th>networks</th><th>failed</th><th>best acc.</th>
<th title="best accuracy / chance level">best / chance</th><th>mean acc.</th><th>front</th><th>HV</th>
<th>best job id</th></tr>
{chr(10).join(rows)}
</table>
<h2>Pareto fronts (accuracy, latency, parameters)</h2>
<p>Filled dots: each dataset's Pareto-front networks (non-dominated in accuracy, latency and
parameters together), labelled with the first {ID_CHARS} characters of their job id; hollow dots:
dominated networks; dashed line: chance level. Hover a dot for its job id and arch.</p>
{chr(10).join(front_blocks)}
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
}});
</script>
</body></html>
"""


def log_report(store: ZooStore, tracking_uri: str, run_id: str) -> None:
    """Write the report to a temporary folder and log it as the run's `report/` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        render_report(store, Path(tmp))
        MlflowClient(tracking_uri=tracking_uri).log_artifacts(run_id, tmp, "report")
