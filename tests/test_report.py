"""`tans report`: legible at a glance, measured on a small zoo whose rows are written directly.

Checked: every PNG at >= 120 dpi (its pHYs chunk) and shown unscaled (the <img> width is the
PNG's), every text of every figure >= 10 px, each dataset's Pareto-front job ids in its
front table (and a dominated network's not), chance levels and at-chance datasets on the
page, datasets sorted by best accuracy, the zoo left untouched, and a zoo with no results.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from tans.pipeline.cli import main
from tans.zoo_schema import layout
from tans.zoo_schema.manifest import ensure_manifest
from tans.zoo_schema.records import DatasetRecord, ResultRecord, to_table
from tans.zoo_schema.store import open_store
from tests.helpers import MANIFEST

# dataset -> classes, [(job id, accuracy, latency ms, params)]
ZOO = {
    "glyphs-latin": (
        20,
        [
            ("aaaa0001glyphsfront00001", 0.80, 5.0, 3_000_000),
            ("aaaa0002glyphsfront00002", 0.70, 4.0, 3_500_000),
            ("aaaa0003glyphsdominated3", 0.60, 6.0, 4_000_000),
        ],
    ),  # dominated by 0001
    "hue-fine": (
        4,
        [
            ("bbbb0001huefront00000001", 0.30, 5.0, 3_000_000),  # best 0.30 < 1.5 x 1/4
            ("bbbb0002huedominated0002", 0.25, 7.0, 3_100_000),
        ],
    ),
    "shapes-many": (
        2,
        [(f"cccc000{i}shapes000000000{i}", 0.9 - 0.01 * i, 5.0 + i, 3_000_000 + 10_000 * i) for i in range(6)],
    ),  # 6: a box; only #0 on the front
}
FRONTS = {
    "glyphs-latin": {"aaaa0001glyphsfront00001", "aaaa0002glyphsfront00002"},
    "hue-fine": {"bbbb0001huefront00000001"},
    "shapes-many": {"cccc0000shapes0000000000"},
}


def small_zoo(path: Path, results: bool = True) -> str:
    store = open_store(str(path))
    ensure_manifest(store, MANIFEST)
    for d, (classes, rows) in ZOO.items():
        record = DatasetRecord(
            d, d, classes, [str(c) for c in range(classes)], 8 * classes, 2 * classes, "x", "sha-" + d, 0, 0, "t"
        )
        store.write_table(layout.dataset_key(d), to_table([record]), create_only=True)
        for job, acc, lat, params in rows if results else []:
            row = ResultRecord(
                job,
                d,
                "arch-" + job[:8],
                [0] * 45,
                acc,
                params,
                1,
                lat,
                "cpu",
                [0.0],
                "x",
                "0",
                classes,
                1,
                32,
                1.0,
                [1.0],
                [acc],
                "random-seed0",
                "t",
            )
            store.write_table(layout.result_key(d, job), to_table([row]), create_only=True)
    return str(path)


def png_dpi(path: Path) -> float:
    """Horizontal dpi from the PNG's pHYs chunk (pixels per metre); 0 without one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data[pos + 8 : pos + 17])
            return x * 0.0254 if unit == 1 else 0.0
        pos += 12 + length
    return 0.0


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def smallest_text(monkeypatch):
    """The smallest text (px at the figure's dpi) of every figure the report saves."""
    import matplotlib.text

    from tans.pipeline.commands import report_plots

    sizes: dict[str, float] = {}
    save = report_plots.save

    def measuring(fig, path):
        fig.canvas.draw()
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        sizes[Path(path).name] = min(t.get_fontsize() * fig.dpi / 72 for t in texts)
        save(fig, path)

    monkeypatch.setattr(report_plots, "save", measuring)
    return sizes


def test_report_is_legible_and_names_the_front_job_ids(tmp_path, smallest_text):
    zoo = small_zoo(tmp_path / "zoo")
    before = snapshot(tmp_path / "zoo")
    out = tmp_path / "report"
    assert main(["report", zoo, "--out", str(out)]) == 0
    assert snapshot(tmp_path / "zoo") == before  # the zoo is only read
    html = (out / "index.html").read_text()

    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 1 + len(ZOO)  # accuracy + one front per dataset (no retriever, no profiles)
    for png in pngs:
        assert png_dpi(png) >= 119.5, png
    assert set(smallest_text) == {p.name for p in pngs}
    assert min(smallest_text.values()) >= 10, smallest_text
    # every image is shown at its natural size, narrower than the page
    page_width = int(re.search(r"max-width:(\d+)px", html).group(1))
    imgs = re.findall(r'<img src="([^"]+)" width="(\d+)" height="(\d+)"', html)
    assert len(imgs) == len(pngs) == html.count("<img ")
    for src, width, height in imgs:
        data = (out / src).read_bytes()
        assert struct.unpack(">II", data[16:24]) == (int(width), int(height))
        assert int(width) <= page_width

    # each dataset's front table lists exactly its front's job ids
    for d, front in FRONTS.items():
        section = html.split(f'<section id="{d}">', 1)[1].split("</section>", 1)[0]
        table = section.split('<table class="front">', 1)[1]
        listed = set(re.findall(r"<code>([0-9a-z]{24})</code>", table))
        assert listed == front, (d, listed)
    # chance levels, the dataset at chance marked, datasets sorted by best accuracy
    assert "chance level 0.250" in html and "<th>chance</th>" in html
    hue_row = next(line for line in html.splitlines() if line.startswith('<tr class="chance">'))
    assert "hue-fine" in hue_row and "at chance" in hue_row
    assert html.count('<tr class="chance">') == 1
    table = html.split("<h2>Datasets", 1)[1].split("</table>", 1)[0]
    order = [table.index(f'href="#{d}">{d}</a>') for d in ("shapes-many", "glyphs-latin", "hue-fine")]
    assert order == sorted(order)
    glyphs_row = next(line for line in html.splitlines() if line.startswith("<tr") and 'href="#glyphs-latin"' in line)
    assert "aaaa0001glyphsfront00001" in glyphs_row  # the best job id per dataset
    assert "No retriever trained yet" in html


def test_report_of_a_zoo_without_results(tmp_path):
    zoo = small_zoo(tmp_path / "zoo", results=False)
    before = snapshot(tmp_path / "zoo")
    out = tmp_path / "report"
    assert main(["report", zoo, "--out", str(out)]) == 0
    assert snapshot(tmp_path / "zoo") == before
    html = (out / "index.html").read_text()
    assert "no results yet" in html and "<img " not in html
    assert all(d in html for d in ZOO)
