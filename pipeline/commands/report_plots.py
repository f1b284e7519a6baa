"""The report's plotting style and helpers: sizes in pixels, family colours, the per-dataset
view of the zoo, label placement, image maps, and saving a figure (`save`)."""

from __future__ import annotations

import html
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tans.pipeline.acquisition.hypervolume import front_indices
from tans.zoo_schema.records import ResultRecord

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
        spot = _free_spot(x, y, w, h, gap, frame, dots, labels)
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


def _free_spot(x, y, w, h, gap, frame, dots, labels):
    """(dx, dy, box, distance) of the first offset around a point where a w x h label stays
    inside the axes' frame and overlaps no dot and no placed label; None if none does."""
    for dist in (0, 14, 30):
        for sx, sy in ((1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1)):
            dx = {1: gap + dist, -1: -gap - dist - w, 0: -w / 2}[sx]
            dy = {1: gap + dist * 0.6, -1: -gap - dist * 0.6 - h, 0: -h / 2}[sy]
            box = (x + dx, y + dy, x + dx + w, y + dy + h)
            inside = (
                frame.x0 + 2 <= box[0] and box[2] <= frame.x1 - 2 and frame.y0 + 2 <= box[1] and box[3] <= frame.y1 - 2
            )
            padded = (box[0] - 6, box[1] - 2, box[2] + 6, box[3] + 2)  # keep labels apart
            if inside and not any(_overlaps(box, t) for t in dots) and not any(_overlaps(padded, t) for t in labels):
                return dx, dy, box, dist
    return None


def _areas(fig, ax, xy, titles, radius_px=7) -> str:
    """<area> elements giving each point a `title` tooltip in an HTML image map."""
    return "".join(
        f'<area shape="circle" coords="{x:.0f},{y:.0f},{radius_px}" title="{html.escape(t)}" '
        f'alt="{html.escape(t)}" nohref>'
        for (x, y), t in zip(_pixel_xy(fig, ax, xy), titles)
    )


def save(fig, path: Path) -> None:
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
