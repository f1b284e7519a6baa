"""The report's HTML page: the summary, the figures with their image maps, the datasets'
table and each dataset's Pareto front with its networks."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from tans.pipeline.commands.report_plots import (
    CHANCE_FACTOR,
    FIG_WIDTH_PX,
    ID_CHARS,
    DatasetView,
    _net_title,
    _safe,
    png_size,
)
from tans.pipeline.commands.status import ZooStatus


@dataclass
class Figure:
    title: str
    src: str
    caption: str = ""
    areas: str = ""  # <area> elements of its image map


CSS = """body{font-family:sans-serif;font-size:15px;margin:2em auto;padding:0 1em;max-width:{width}px}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
table.front td:nth-child(2),table.front th:nth-child(2){text-align:left}
caption{text-align:left;font-weight:bold;padding:2px 0}
code{font-size:13px}tr.chance{background:#fde0dc}
.tag{background:#b22222;color:white;border-radius:3px;padding:0 4px;font-size:12px;margin-left:4px}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #333;margin-right:6px;vertical-align:-1px}
.note{background:#fff6d5;padding:4px 8px}
figure{display:block;margin:1em 0}img{max-width:100%;height:auto}
figcaption{max-width:{fig_width}px}section{margin-bottom:2em}"""  # {width} and {fig_width} are filled in by `page`


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
    rows = dataset_rows(status, views)
    blocks = "\n".join(
        f"<figure>{_img(f, folder, f'map-{i}')}<figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>"
        for i, f in enumerate(figures)
    )
    front_blocks = [front_block(v, f, folder, f"front-{i}") for i, (v, f) in enumerate(fronts)]
    legend = " ".join(f'<span class="sw" style="background:{c}"></span>{e(f)}' for f, c in sorted(colours.items()))
    notes = page_notes(status, views, retriever)
    css = CSS.replace("{width}", str(FIG_WIDTH_PX + 40)).replace("{fig_width}", str(FIG_WIDTH_PX))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tans zoo report</title>
<style>{css}</style></head>
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


def num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def swatch(v: DatasetView) -> str:
    return f'<span class="sw" style="background:{v.colour}" title="family {html.escape(v.family)}"></span>'


def dataset_rows(status: ZooStatus, views: list[DatasetView]) -> list[str]:
    """The datasets' table rows, by best accuracy."""
    e = html.escape
    stat = {r.dataset_id: r for r in status.per_dataset}
    rows = []
    for v in views:
        s, best = stat.get(v.dataset_id), v.best
        chance_note = (
            f' <span class="tag" title="best accuracy {num(best.accuracy)} &lt; {CHANCE_FACTOR:g} x '
            f'chance {num(v.chance)}">at chance</span>'
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
    return rows


def front_block(v: DatasetView, f: Figure, folder: Path, name: str) -> str:
    """A dataset's section: its Pareto-front figure and the table of the front's networks."""
    e = html.escape
    nets = "\n".join(
        f"<tr><td><code>{e(r.job_id)}</code></td><td><code>{e(r.arch)}</code></td><td>{r.accuracy:.3f}</td>"
        f"<td>{r.params / 1e6:.2f}</td><td>{r.latency_ms:.1f}</td></tr>"
        for r in v.front
    )
    warn = ' <span class="tag">at chance</span>' if v.at_chance else ""
    return (
        f'<section id="{e(_safe(v.dataset_id))}"><h3>{swatch(v)}{e(v.dataset_id)}{warn}</h3>'
        f"<figure>{_img(f, folder, name)}</figure>\n"
        f'<table class="front"><caption>{e(v.dataset_id)}: Pareto-front networks ({len(v.front)} of '
        f"{len(v.results)}; chance level {num(v.chance)})</caption>"
        f"<tr><th>job id</th><th>arch</th><th>accuracy</th><th>params (M)</th><th>latency (ms)</th></tr>\n"
        f"{nets}</table></section>"
    )


def page_notes(status: ZooStatus, views: list[DatasetView], retriever: bool) -> list[str]:
    """What the reader should know first: no results, no retriever, datasets at chance."""
    e = html.escape
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
    return notes
