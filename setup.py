"""Packaging: the repository's layer folders install as one namespace, `tans` (`tans.pipeline`,
`tans.workers`, ...), so that nothing but `tans` lands in site-packages. Metadata is in
pyproject.toml; the list of layers is `tans/layers.py`."""

import runpy

from setuptools import find_packages, setup

LAYERS = runpy.run_path("tans/layers.py")["LAYERS"]
packages, package_dir = ["tans"], {"tans": "tans"}
for layer in LAYERS:
    package_dir[f"tans.{layer}"] = layer
    packages += [f"tans.{layer}"] + [f"tans.{layer}.{sub}" for sub in find_packages(where=layer)]

setup(packages=packages, package_dir=package_dir)
