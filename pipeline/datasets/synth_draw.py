"""Drawing the built-in suite's synthetic images: glyphs, shapes, dot counts, textures and hues
(`DRAW` by family), at `SIZE` pixels, and the `Spec` of a dataset."""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

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
