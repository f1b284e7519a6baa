"""The built-in dataset suite, generated offline and deterministically for a seed.

It stands in for the paper's Kaggle datasets: 2-20 classes, a few hundred to about two
thousand images each, in the ImageFolder layout users already have. Families resemble
each other on purpose (glyph scripts in clean and wild renderings, stripe and checker
textures, hue tasks), and difficulty spreads from near-trivial (solid hues) to hard (wild
glyphs in 20 classes, fine hue bins under noise). Fonts come from matplotlib's bundled
DejaVu/STIX fonts; the digits from scikit-learn's bundled copy. Nothing is downloaded.
"""

from __future__ import annotations

import random
from pathlib import Path

from tans.pipeline.datasets.synth_draw import DRAW, FONTS, SCRIPTS, SHAPES, Spec, _covers  # noqa: F401 - the suite's names
from tans.pipeline.datasets.synth_real import REAL_PHOTOS, REAL_TEXTURES, _mnist_images, _sk_digit_images, _source_photo
from tans.zoo_schema.errors import ConfigError

# -- the suite ----------------------------------------------------------------------------


def suite() -> list[Spec]:
    """The built-in datasets, interleaved across families so that any prefix is varied."""
    glyphs_clean, glyphs_wild = [], []
    for script, chars in SCRIPTS.items():
        fonts = [f for f in FONTS if _covers(f, chars)]
        if not fonts:
            continue
        glyphs_clean.append(
            Spec(f"glyphs-{script}-clean", "glyph", chars, 40, {"wild": False, "fonts": fonts[:1], "noise": 0.03})
        )
        glyphs_wild.append(
            Spec(f"glyphs-{script}-wild", "glyph", chars, 50, {"wild": True, "fonts": fonts, "noise": 0.08})
        )
    others = [
        Spec("hue-6", "hue", [f"h{i}" for i in range(6)], 60, {"noise": 0.02}),
        Spec("shapes-clean", "shape", SHAPES[:8], 60, {}),
        Spec("stripes-orientation", "texture", [f"o{i}" for i in range(8)], 60, {"kind": "orientation"}),
        Spec("digits-sklearn", "sk_digits", [str(i) for i in range(10)], 0, {}),
        Spec("count-dots", "count", [str(i) for i in range(1, 7)], 60, {"noise": 0.02}),
        Spec(
            "textures-mixed",
            "texture",
            ["stripes", "waves", "dots", "grid", "rings", "blotches"],
            60,
            {"kind": "mixed"},
        ),
        Spec("hue-fine-20", "hue", [f"h{i:02d}" for i in range(20)], 30, {"noise": 0.12}),
        Spec("shapes-cluttered", "shape", SHAPES, 50, {"clutter": 4, "noise": 0.06}),
        Spec("stripes-frequency", "texture", [f"f{i}" for i in range(6)], 60, {"kind": "frequency"}),
        Spec("hue-shapes-12", "hue", [f"h{i:02d}" for i in range(12)], 40, {"shape": True, "noise": 0.03}),
        Spec("checker-scale", "texture", [f"c{i}" for i in range(5)], 60, {"kind": "checker", "noise": 0.1}),
        Spec("count-dots-noisy", "count", [str(i) for i in range(2, 10)], 50, {"noise": 0.15}),
        Spec("shapes-binary", "shape", ["circle", "square"], 150, {"noise": 0.05}),
        Spec(
            "stripes-orientation-noisy",
            "texture",
            [f"o{i}" for i in range(12)],
            50,
            {"kind": "orientation", "noise": 0.35},
        ),
        Spec("hue-3-noisy", "hue", [f"h{i}" for i in range(3)], 100, {"noise": 0.3}),
        Spec("digits-sklearn-noisy", "sk_digits", [str(i) for i in range(10)], 0, {"noise": 0.25}),
    ]
    out = []
    for i in range(max(len(glyphs_clean), len(glyphs_wild), len(others))):
        for group in (glyphs_clean, others, glyphs_wild):
            if i < len(group):
                out.append(group[i])
    # Real images last: `--count N` of the synthetic suite is unchanged, and the demo's zoo
    # (the first 25) never sees them; the transfer benchmark holds them out.
    return out + [
        Spec("mnist-real", "mnist", [str(i) for i in range(10)], 100, {}),
        Spec("textures-real", "photo", REAL_TEXTURES, 100, {"noise": 0.02}),
        Spec("photos-real", "photo", REAL_PHOTOS, 100, {"noise": 0.02}),
    ]


def write_dataset(spec: Spec, out_dir: Path, seed: int) -> int:
    """Write one dataset in the ImageFolder layout; returns the number of images."""
    rng = random.Random(f"{seed}:{spec.name}")
    root = out_dir / spec.name
    class_dirs = []
    for i, cls in enumerate(spec.classes):
        safe = cls if cls.isascii() and cls.isalnum() else f"c{i:02d}-u{ord(cls[0]):04x}"
        class_dirs.append(root / safe)
        class_dirs[-1].mkdir(parents=True, exist_ok=True)
    count = 0
    if spec.family in ("sk_digits", "mnist"):
        images = _sk_digit_images if spec.family == "sk_digits" else _mnist_images
        for label, img in images(spec, rng):
            img.save(class_dirs[label] / f"{count:05d}.png")
            count += 1
        return count
    if spec.family == "photo":  # the source photos are loaded once per dataset
        spec = Spec(
            spec.name,
            spec.family,
            spec.classes,
            spec.per_class,
            {**spec.params, "_photos": [_source_photo(c) for c in spec.classes]},
        )
    draw = DRAW[spec.family]
    for i in range(len(spec.classes)):
        for j in range(spec.per_class):
            draw(rng, i, spec).save(class_dirs[i] / f"{j:05d}.png")
            count += 1
    return count


def generate(out_dir: str | Path, count: int | None = None, seed: int = 0) -> list[str]:
    """Write the first `count` datasets of the suite (all when None) under out_dir."""
    specs = suite()
    if count is not None:
        if count < 1 or count > len(specs):
            raise ConfigError(f"--count must be between 1 and {len(specs)}, the suite's size")
        specs = specs[:count]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        write_dataset(spec, out, seed)
    return [s.name for s in specs]
