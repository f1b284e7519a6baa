"""The folders of the repository that install as `tans.<name>`, bottom layer first. The one
list of them: `setup.py` maps each folder to its package, `tans submit` ships them, and
`tests/test_layers.py` checks the import rule over them. Imports nothing at import time."""

LAYERS = ("zoo_schema", "workers", "retriever", "pipeline")


def copy_package(target, skip: tuple[str, ...] = ()) -> None:
    """Copy the `tans` package as this process imports it (the public API and each layer,
    wherever it is installed from) into `target/tans`: what `tans submit` ships to a cluster
    and what the registered retriever carries as its code. `skip`: more file patterns to leave out."""
    import importlib
    import shutil
    from pathlib import Path

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", *skip)
    for name in ("tans",) + tuple(f"tans.{layer}" for layer in LAYERS):
        source = Path(importlib.import_module(name).__file__).parent
        shutil.copytree(source, Path(target).joinpath(*name.split(".")), ignore=ignore, dirs_exist_ok=True)
