"""The real-photo pretraining corpus: crops of package photos, nothing of an evaluation set."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tans.pipeline.datasets import corpus
from tans.zoo_schema.errors import DatasetError


def photo(seed: int, size=(320, 240)) -> Image.Image:
    """A picture with structure at every scale (smoothed noise), unlike any other seed's."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    return Image.fromarray(np.clip(np.asarray(small) + rng.normal(0, 12, (*size[::-1], 3)), 0, 255).astype(np.uint8))


def test_corpus_crops_each_photo_into_a_class_and_keeps_out_what_feeds_evaluation(tmp_path):
    from skimage import data

    root = tmp_path / "root" / "pkg"
    root.mkdir(parents=True)
    photo(1).save(root / "a.jpg", quality=95)
    photo(2).save(root / "b.png")
    photo(1).resize((300, 225)).save(root / "a-again.jpg", quality=70)  # the same picture, re-encoded
    Image.fromarray(data.chelsea()).save(root / "cat.jpg", quality=80)  # scikit-image's: feeds photos-real
    source = corpus.Source("pkg", "1.0", "debian", "CC0", ("*.jpg", "*.png"))
    held_out = [io.BytesIO() for _ in range(2)]
    photo(7).save(held_out[0], "PNG")
    summary = corpus.build_corpus(
        str(tmp_path / "root"),
        str(tmp_path / "out"),
        per_photo=6,
        size=32,
        held_out=[held_out[0].getvalue()],
        sources=(source,),
    )
    assert summary["photos"] == 2 and summary["crops"] == 12
    assert summary["dropped"]["excluded_source"] == ["pkg/cat.jpg"]
    assert summary["dropped"]["near_another"] == ["pkg/a.jpg"]  # sorted: a-again.jpg came first
    classes = sorted(p.name for p in (tmp_path / "out" / "photos-corpus").iterdir())
    assert classes == ["000-pkg-a-again", "001-pkg-b"]
    crops = sorted((tmp_path / "out" / "photos-corpus" / classes[1]).iterdir())
    assert len(crops) == 6 and Image.open(crops[0]).size == (32, 32)
    listing = json.loads((tmp_path / "out" / "photos-corpus.json").read_text())
    assert listing["photos_used"][1]["licence"] == "CC0" and len(listing["photos_used"][1]["sha256"]) == 64
    assert summary["dropped"]["near_held_out"] == []
    # a photo with a crop near an image of a held-out dataset is dropped; the others' crops are
    # drawn again without it
    Image.open(crops[0]).save(held_out[1], "PNG")
    again = corpus.build_corpus(
        str(tmp_path / "root"),
        str(tmp_path / "out2"),
        per_photo=6,
        size=32,
        held_out=[held_out[1].getvalue()],
        sources=(source,),
    )
    assert again["dropped"]["near_held_out"] == ["pkg/b.png"] and again["photos"] == 1
    written = sorted((tmp_path / "out2" / "photos-corpus").rglob("*.jpg"))
    assert len(written) == 6 and all(p.parent.name == "000-pkg-a-again" for p in written)
    hashes = np.array([corpus.dhash(Image.open(p)) for p in written])
    assert (corpus.nearest(hashes, corpus.dhash(Image.open(crops[0]))[None]) >= corpus.NEAR).all()
    every_crop = [held_out[1].getvalue()] + [p.read_bytes() for p in written]
    with pytest.raises(DatasetError, match="no photo under .* gave a corpus class"):  # all dropped: no empty corpus
        corpus.build_corpus(
            str(tmp_path / "root"), str(tmp_path / "out3"), per_photo=6, size=32, held_out=every_crop, sources=(source,)
        )
    assert not (tmp_path / "out3").exists()
    with pytest.raises(DatasetError, match="no photos of nothing-here"):
        corpus.find_photos(tmp_path / "root", (corpus.Source("nothing-here", "1", "pypi", "MIT", ("*.jpg",)),))


def rcc(
    entries: list[tuple[str, bytes]],
    compress: bool = True,
    name_override: str | None = None,
    version: int = 1,
    first_child: int = 2,
    root_flags: int = 2,
    stored: bytes | None = None,
) -> bytes:
    """A Qt resource bundle holding `entries` under one folder (`stored`: the compressed stream
    of each entry, instead of its own)."""
    names, data, tree = b"", b"", []

    def add_name(text: str) -> int:
        nonlocal names
        offset = len(names)
        raw = text.encode("utf-16-be")
        names += struct.pack(">HI", len(text), 0) + raw
        return offset

    root = struct.pack(">IHII", 0, root_flags, 1, 1)  # the root: a folder of one child, entry 1
    folder = struct.pack(">IHII", add_name("images"), 2, len(entries), first_child)
    files = []
    for text, blob in entries:
        body = stored if stored is not None else zlib.compress(blob)
        body = struct.pack(">I", len(blob)) + body if compress else blob
        offset = len(data)
        data += struct.pack(">I", len(body)) + body
        files.append(struct.pack(">IHHHI", add_name(name_override or text), 1 if compress else 0, 0, 0, offset))
    tree = root + folder + b"".join(files)
    header_len = 20
    tree_at, data_at = header_len, header_len + len(tree)
    names_at = data_at + len(data)
    return b"qres" + struct.pack(">4I", version, tree_at, data_at, names_at) + tree + data + names


def test_qt_bundles_unpack_their_images_and_refuse_hostile_paths(tmp_path):
    png = io.BytesIO()
    photo(3, (40, 30)).save(png, "PNG")
    bundle = tmp_path / "a.rcc"
    bundle.write_bytes(rcc([("x.png", png.getvalue()), ("notes.txt", b"not an image")]))
    assert corpus.extract_rcc(bundle, tmp_path / "out") == 1
    assert (tmp_path / "out" / "images" / "x.png").read_bytes() == png.getvalue()
    bundle.write_bytes(rcc([("x.png", png.getvalue())], name_override=".."))
    with pytest.raises(DatasetError, match="not a plain path"):
        corpus.extract_rcc(bundle, tmp_path / "evil")
    bundle.write_bytes(rcc([("x.png", png.getvalue())])[:60])  # cut short
    with pytest.raises(DatasetError, match="damaged"):
        corpus.extract_rcc(bundle, tmp_path / "cut")
    bundle.write_bytes(rcc([("x.png", png.getvalue())], first_child=1))  # the folder is its own child
    with pytest.raises(DatasetError, match="its tree loops"):
        corpus.extract_rcc(bundle, tmp_path / "loop")
    bundle.write_bytes(rcc([("x.png", png.getvalue())], root_flags=0))
    with pytest.raises(DatasetError, match="its root is not a folder"):
        corpus.extract_rcc(bundle, tmp_path / "flat")
    bundle.write_bytes(rcc([("x.png", png.getvalue())], version=9))
    with pytest.raises(DatasetError, match="format 9; only formats 1-3"):
        corpus.extract_rcc(bundle, tmp_path / "v9")
    bomb = zlib.compress(bytes(corpus.MAX_ENTRY + 1024), 9)  # 65 kB that unpack past the cap
    bundle.write_bytes(rcc([("x.png", b"")], stored=bomb))
    with pytest.raises(DatasetError, match="unpacks past 64 MB"):
        corpus.extract_rcc(bundle, tmp_path / "bomb")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "images").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    bundle.write_bytes(rcc([("x.png", png.getvalue())]))
    with pytest.raises(DatasetError, match="leads outside"):
        corpus.extract_rcc(bundle, tmp_path / "linked")
    assert not list((tmp_path / "elsewhere").iterdir())
    bundle.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(DatasetError, match="not a Qt resource bundle"):
        corpus.extract_rcc(bundle, tmp_path / "zip")
