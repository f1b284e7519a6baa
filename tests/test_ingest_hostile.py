"""Ingestion of hostile or unusual input, with real files on disk: decompression bombs,
symlinks leaving the folder or looping, 16-bit images, hidden folders, null Parquet labels,
non-ASCII names."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tans.pipeline.datasets.ingest import IngestSettings, ingest, slug
from tans.pipeline.execution.config import load_config
from tans.zoo_schema.errors import DatasetError
from tans.zoo_schema.shards import load_split, read_datasets
from tans.zoo_schema.store import check_key, open_store
from tests.helpers import make_folder, png

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "zoo"))


# -- decompression bombs ------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_decompression_bomb_is_skipped_without_decoding(tmp_path):
    src = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    Image.new("L", (13000, 13000)).save(src / "a" / "bomb.png")  # ~160 KB, 169 MP decoded
    assert (src / "a" / "bomb.png").stat().st_size < 1_000_000
    # In a fresh process, whose peak RSS (VmHWM) is its own: ru_maxrss would inherit pytest's.
    script = textwrap.dedent("""
        import sys
        from tans.pipeline.datasets.ingest import ingest
        from tans.zoo_schema.store import open_store
        def peak_mb():
            return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024
        before = peak_mb()
        report = ingest(open_store(sys.argv[1]), sys.argv[2])
        print(peak_mb() - before, report.images, dict(report.skipped)["a/bomb.png"], sep="\\n")
    """)
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "zoo"), str(src)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    growth_mb, images, reason = out.stdout.splitlines()
    assert reason == "image is 13000x13000 = 169.0 MP, over ingest.max_pixels (40.0 MP)"
    assert images == "10"
    assert int(growth_mb) < 100  # decoding would take >= 169 MB (2.7 GB before the check)


def test_pil_bomb_error_is_a_skip(tmp_path, store, monkeypatch):
    src = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    Image.new("RGB", (100, 100)).save(src / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # PIL refuses above 2x this
    report = ingest(store, str(src), settings=IngestSettings(max_pixels=10**9))
    assert dict(report.skipped)["a/big.png"].startswith("image refused by PIL: Image size (10000 pixels)")
    assert report.images == 10


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path, store):
    src = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    Image.new("L", (9000, 5000), 90).save(src / "a" / "photo.jpg", quality=50)  # 45 MP
    report = ingest(store, str(src))
    assert report.images == 11 and not report.skipped
    images = load_split(store, "ds", "train")[0] + load_split(store, "ds", "test")[0]
    assert max(Image.open(io.BytesIO(b)).size for b in images) == (256, 142)


def test_max_pixels_comes_from_the_config(tmp_path, store):
    config = tmp_path / "build.toml"
    config.write_text("[ingest]\nmax_pixels = 300\nmin_images_per_class = 1\n")
    settings = load_config(str(config)).ingest
    assert settings.max_pixels == 300
    src = make_folder(tmp_path / "ds", {"a": 5, "b": 5})  # 20x16 = 320 pixels
    Image.new("RGB", (10, 10)).save(src / "a" / "small.png")
    Image.new("RGB", (10, 10), (0, 0, 255)).save(src / "b" / "small.png")  # not a duplicate of a's
    report = ingest(store, str(src), settings=settings)
    assert report.images == 2 and len(report.skipped) == 10
    assert dict(report.skipped)["a/0.png"].startswith("image is 20x16 = 0.0 MP, over ingest.max_pixels")


# -- symlinks -----------------------------------------------------------------------------


def test_symlinks_leaving_the_folder_are_not_followed(tmp_path, store):
    src = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    outside = make_folder(tmp_path / "outside", {"x": 5})
    (src / "a" / "secret.png").symlink_to(outside / "x" / "0.png")
    (src / "c").symlink_to(outside / "x")
    (src / "b" / "root").symlink_to("/")
    (src / "b" / "passwd.png").symlink_to("/etc/passwd")
    report = ingest(store, str(src))
    assert dict(report.skipped) == {
        p: "symlink leaves the dataset folder" for p in ("a/secret.png", "c", "b/root", "b/passwd.png")
    }
    assert report.images == 12 and read_datasets(store)[0].class_names == ["a", "b"]


def test_symlink_cycles_and_aliases_are_read_once(tmp_path, store):
    src = make_folder(tmp_path / "ds", {"a": 6, "b": 6})
    (src / "a" / "up").symlink_to("..")  # made 12 images into 492
    (src / "b" / "loop").symlink_to(src / "b")
    (src / "b" / "copy.png").symlink_to("../a/0.png")
    os.link(src / "a" / "1.png", src / "b" / "hard.png")
    (src / "inside").mkdir()
    (src / "inside" / "ok.png").symlink_to("../b/2.png")
    report = ingest(store, str(src))
    assert dict(report.skipped) == {
        "b/copy.png": "same file as a/0.png",
        "b/hard.png": "same file as a/1.png",
        "inside/ok.png": "same file as b/2.png",
    }
    assert report.images == 12


def test_symlink_inside_the_folder_is_followed(tmp_path, store):
    src = make_folder(tmp_path / "ds", {"a": 6})
    make_folder(tmp_path / "ds" / "raw", {"b": 6})
    (src / "b").symlink_to(src / "raw" / "b")  # class folder reached through a link
    report = ingest(store, str(src))
    assert read_datasets(store)[0].class_names == ["a", "b"] and report.images == 12


def test_fifo_and_dangling_link_are_skipped(tmp_path, store):
    src = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    os.mkfifo(src / "a" / "pipe.png")  # reading it would block forever
    (src / "b" / "gone.png").symlink_to(src / "b" / "missing.png")
    report = ingest(store, str(src))
    assert dict(report.skipped) == {
        "a/pipe.png": "not a regular file",
        "b/gone.png": "cannot read file (No such file or directory)",
    }


# -- 16-bit and float images --------------------------------------------------------------


def _assert_ramps_survive(tmp_path, store, ramp: Image.Image, suffix: str) -> None:
    """A class of `ramp` images, ingested, still runs evenly from black to white when read back
    (convert('RGB') clipped 16-bit values: all white)."""
    src = make_folder(tmp_path / "ramps", {"flat": 5})
    (src / "ramp").mkdir()
    for i in range(5):
        copy = ramp.copy()
        copy.putpixel((0, 7), (i + 1) * (1000 if ramp.mode == "I;16" else 0.1))  # distinct images, row 0 intact
        copy.save(src / "ramp" / f"{i}{suffix}")
    ingest(store, str(src))
    rows = []
    for split in ("train", "test"):
        images, labels = load_split(store, "ramps", split)
        rows += [np.asarray(Image.open(io.BytesIO(b)))[0, :, 0] for b, y in zip(images, labels) if y == 1]
    assert len(rows) == 5
    for row in rows:
        assert np.abs(row.astype(int) - np.linspace(0, 255, 64)).max() <= 2, row


def test_sixteen_bit_png_keeps_its_gradient(tmp_path, store):
    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1)))
    assert ramp.mode == "I;16"
    _assert_ramps_survive(tmp_path, store, ramp, ".png")


def test_float_tiff_in_unit_range_is_scaled(tmp_path, store):
    ramp = Image.fromarray(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1)))
    assert ramp.mode == "F"
    _assert_ramps_survive(tmp_path, store, ramp, ".tif")


# -- hidden folders -----------------------------------------------------------------------


def test_hidden_files_and_folders_are_ignored_silently(tmp_path, store):
    src = make_folder(tmp_path / "ds", {"a": 5, "b": 5})
    make_folder(src / ".ipynb_checkpoints", {"a": 5})
    make_folder(src / "a", {".ipynb_checkpoints": 5})
    (src / "b" / ".DS_Store").write_bytes(b"junk")
    (src / ".cache.png").write_bytes(b"junk")
    report = ingest(store, str(src))
    assert not report.skipped and report.images == 10
    assert read_datasets(store)[0].class_names == ["a", "b"]


# -- Parquet nulls ------------------------------------------------------------------------


def test_parquet_null_labels_are_refused(tmp_path, store):
    labels = ["red"] * 6 + [None, None] + ["blue"] * 6
    pq.write_table(pa.table({"image": [png((i, 0, 0)) for i in range(14)], "label": labels}), tmp_path / "p.parquet")
    with pytest.raises(DatasetError, match=r"2 of 14 rows have a null label; drop those rows or fill"):
        ingest(store, str(tmp_path / "p.parquet"))
    assert read_datasets(store) == []


def test_parquet_null_images_are_skipped_rows(tmp_path, store):
    images = [{"bytes": png((i, 0, 0)), "path": None} for i in range(12)]
    images[3] = None
    images[7] = {"bytes": None, "path": "lost.png"}
    pq.write_table(pa.table({"image": images, "label": [0] * 6 + [1] * 6}), tmp_path / "p.parquet")
    report = ingest(store, str(tmp_path / "p.parquet"))
    assert dict(report.skipped) == {"row 3": "no image bytes", "row 7": "no image bytes"}
    assert report.images == 10 and read_datasets(store)[0].skipped_files == 2


# -- non-ASCII names ----------------------------------------------------------------------


def test_slug_is_ascii_and_keeps_existing_ids():
    for name in ("glyphs-hebrew-clean", "animals", "k01-part2"):
        assert slug(name) == name
    assert slug("My Photos_2024") == "my-photos-2024"
    ids = {name: slug(name) for name in ("数据", "图片", "café", "cafe", "Café", "データ set")}
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids.values())
    assert re.fullmatch(r"ds-[0-9a-f]{10}", ids["数据"])
    assert re.fullmatch(r"caf-[0-9a-f]{6}", ids["café"]) and ids["cafe"] == "cafe"
    assert re.fullmatch(r"set-[0-9a-f]{6}", ids["データ set"])
    assert len(slug("é" + "x" * 200)) <= 80
    with pytest.raises(DatasetError, match="no letters or digits"):
        slug("--")


def test_non_ascii_dataset_and_class_names(tmp_path, store):
    src = make_folder(tmp_path / "数据", {"猫": 5, "犬": 5})
    report = ingest(store, str(src))
    (dataset_id,) = report.dataset_ids
    assert check_key(f"datasets/{dataset_id}.parquet") and dataset_id.startswith("ds-")
    (rec,) = read_datasets(store)
    assert rec.name == "数据" and rec.class_names == ["犬", "猫"]
    assert len(load_split(store, dataset_id, "train")[0]) == 8
