"""How ingestion treats a dataset (the `[ingest]` table of the build config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestSettings:
    max_classes: int = 20  # larger datasets are split (paper D.2)
    min_images_per_class: int = 5  # below this a class cannot be split 80/20 meaningfully
    test_fraction: float = 0.2
    split_seed: int = 0
    max_side: int = 256  # images are stored downscaled to at most this side...
    keep_jpeg_side: int = 512  # ...except RGB JPEGs up to this side, stored as they are
    max_pixels: int = 40_000_000  # larger images are skipped undecoded (decompression bombs)
