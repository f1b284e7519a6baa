"""Read-only commands stay light, and a search query decodes only the images it samples."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import tans.pipeline.commands.search as search
from tests.helpers import committed_zoo

ROOT = Path(__file__).resolve().parents[1]
PROBE = r"""
import json, sys
import tans
from tans.pipeline.cli import main
codes = [main(["status", sys.argv[1], "--json"]), main(["verify", sys.argv[1], "--json", "--dry-run"])]
rows = tans.open_zoo(sys.argv[1]).results().num_rows
print(json.dumps({"codes": codes, "rows": rows,
                  "heavy": sorted(m for m in ("torch", "ray", "mlflow", "matplotlib", "ofa") if m in sys.modules)}))
"""


def test_status_verify_and_the_zoo_table_never_import_torch_ray_or_mlflow(tmp_path):
    store, specs = committed_zoo(tmp_path / "zoo")
    r = subprocess.run([sys.executable, "-c", PROBE, store.uri], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    probe = json.loads(r.stdout.strip().splitlines()[-1])
    assert probe["heavy"] == [] and probe["codes"][0] == 0 and probe["rows"] == len(specs)
    assert f'"finished_jobs": {len(specs)}' in r.stdout  # status did read the zoo


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_query_samples_per_class_before_decoding(tmp_path, monkeypatch):
    for cls, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / "q" / cls).mkdir(parents=True)
        for i in range(200):
            (tmp_path / "q" / cls / f"{i:03d}.png").write_bytes(_png(colour))
    (tmp_path / "q" / "red" / "000-broken.png").write_bytes(b"not an image")
    decoded = []
    real = search.decode_one
    monkeypatch.setattr(search, "decode_one", lambda raw, *a: decoded.append(raw) or real(raw, *a))
    images, labels = search.query_images(str(tmp_path / "q"), per_class=5)
    assert labels == [0] * 5 + [1] * 5 and len(images) == 10  # blue, red: sorted class order
    assert len(decoded) <= 11  # 5 per class, plus the broken file if it was drawn
    again, _ = search.query_images(str(tmp_path / "q"), per_class=5)
    assert again == images  # seeded


def test_light_reading_drops_only_the_embeddings(tmp_path):
    """`tans status` reads results without their functional embeddings, from the snapshot and
    from the files committed after it alike; every other field is what a full read gives."""
    import dataclasses

    from tans.zoo_schema.results import read_results, write_snapshot

    store, specs = committed_zoo(tmp_path / "zoo")
    full = read_results(store)
    write_snapshot(store, full[:1])  # one row from the snapshot, the others from their files
    light = read_results(store, light=True)
    assert [r.functional_embedding for r in light] == [[]] * len(specs)
    assert [dataclasses.replace(r, functional_embedding=[]) for r in full] == light
    assert read_results(store) == full


def test_zoo_table_read_as_arrow_equals_the_records(tmp_path):
    """`tans.open_zoo(ZOO).results()` reads Arrow directly (snapshot + files committed since);
    it equals converting the records, also when a file holds another job's row (then the
    records are read, which leave that file out)."""
    from tans.zoo_schema.records import to_table
    from tans.zoo_schema.results import read_results, results_table, write_snapshot

    store, specs = committed_zoo(tmp_path / "zoo")
    assert results_table(store).equals(to_table(read_results(store)))
    write_snapshot(store, read_results(store)[:2])
    assert results_table(store).equals(to_table(read_results(store)))
    keys = sorted(k for k in store.list("results") if k.endswith(".parquet"))
    store.write_bytes(keys[-1], store.read_bytes(keys[0]))  # a file holding another job's row
    expected = to_table(read_results(store))
    assert expected.num_rows == len(specs) - 1 and results_table(store).equals(expected)


@pytest.mark.slow
def test_ofa_networks_load_without_torchvision_and_its_data_loader_stays_importable():
    """`ofa_module` keeps ofa's ImageNet data loader (torchvision, torch._dynamo: 1.2 s) out of
    a process that only builds and measures networks; importing the loader by name still works."""
    probe = (
        "import sys; from tans.workers.networks.ofa_space import build_supernet, build_subnet, arch_pool\n"
        "from tans.workers.networks.measure import count_flops\n"
        "net = build_subnet(build_supernet(1.0), arch_pool(0, 1)[0], 10); count_flops(net, 32)\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))\n"
        "from ofa.utils.my_dataloader import MyRandomResizedCrop; print(MyRandomResizedCrop.__name__)"
    )
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[]", "MyRandomResizedCrop"]
