"""Weights files: the base weights tans ships (the offline stand-in for OFA's ImageNet
supernet), and reading the weights files users bring.

`arch.base_weights = "pretrained"` (the default) starts every zoo network from an OFA
MobileNetV3 supernet (width 1.0) trained by `tans pretrain-base` on the 24 built-in
datasets of the demo's zoo (the first 25 of the suite less glyphs-hebrew-clean, which the
demo searches for) and on `photos-corpus`, 361 real photographs from Debian and PyPI
packages cut into 8,610 crops (`tans datasets corpus`), then scaled back to the norms of
initialisation (`rescaled_to_init`: the same function, which a fine-tune now moves as fast as
random init). The datasets the benchmarks hold
out are not among them, nor the images they are made from (checked by content hash). The file's
recipe — the exact commands, seed, steps, tans commit, figures and sha256 — is
`pretrained/<NAME>.json` next to it; `shipped()` refuses a file that does not match it.

Users with internet access can download OFA's published `ofa_mbv3_d234_e346_k357_w1.2`
checkpoint and set `arch.base_weights` to its path (and `arch.width = 1.2`).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.store import source_filesystem

NAME = "ofa-mbv3-w1.0-suite24-photos361-rescaled"
FOLDER = Path(__file__).resolve().parent / "pretrained"
WIDTH = 1.0
# the zoo copies (sha256 of the state_dict as a zoo stores it) of bases tans shipped before:
# a zoo that started from one keeps it when a build of it asks for "pretrained"
EARLIER = {
    "ofa-mbv3-w1.0-suite24": "b08252ed2b44a858fde6b622384587c15acbc2de1b4db45f7c2894d044b7d52b",
    "ofa-mbv3-w1.0-suite24-photos361": "ca0c2520a8d8b9988c4f4ff835f718037005e0f1d420145acbd62387942f5ba4",
}


def shipped() -> tuple[Path, dict]:
    """(weights file, recipe) of the shipped pretrained supernet, its sha256 checked."""
    path, recipe_path = FOLDER / f"{NAME}.safetensors", FOLDER / f"{NAME}.json"
    if not path.is_file() or not recipe_path.is_file():
        raise ConfigError(
            f"the shipped pretrained base weights ({path}) are missing from this installation; "
            "reinstall tans, or set arch.base_weights to 'random' or to a supernet file"
        )
    recipe = json.loads(recipe_path.read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != recipe["sha256"]:
        raise ConfigError(
            f"{path} does not match the sha256 its recipe records ({recipe['sha256'][:16]}…); reinstall tans"
        )
    return path, recipe


def read_state_dict(spec: str, s3=None, what: str = "weights") -> dict:
    """The state_dict in a weights file (safetensors, or a PyTorch .pth loaded with
    `weights_only=True`, never arbitrary pickle), local or s3://; a checkpoint's
    'state_dict' entry is unwrapped."""
    import torch
    from safetensors.torch import load

    fs, path = source_filesystem(spec, s3)
    try:
        with fs.open_input_stream(path) as fh:
            raw = fh.read()
    except (OSError, FileNotFoundError) as e:
        raise ConfigError(
            f"{what} {spec} cannot be read ({e}); pass a state_dict file (.safetensors or .pth)"
        ) from None
    if spec.endswith(".safetensors"):
        return load(raw)
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def rescaled_to_init(state: dict, width: float) -> tuple[dict, list[float]]:
    """`state` (a supernet's state_dict) with each convolution that a BatchNorm follows scaled
    back to the norm a freshly initialised supernet's has, and that BatchNorm's running
    statistics scaled with it: the network computes the same function (BatchNorm divides the
    scale out), but a fine-tune moves it as fast as it moves random init. Pretraining grows
    these weights (the first convolution 4x on the shipped base), and a weight that BatchNorm
    follows learns at a rate divided by its norm squared, so a pretrained start barely moved in
    a short fine-tune and ended below random init. The function is the same up to BatchNorm's
    eps, which the scaling weighs 1/factor^2 more (on the shipped base the largest subnet's
    logits moved by at most 0.0014 of a mean 0.55). Returns (state, each factor divided out)."""
    import torch

    from tans.workers.networks.ofa_space import build_supernet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = build_supernet(width).state_dict()
    out, grown = dict(state), []
    for key in state:
        if not key.endswith(".running_var"):
            continue
        bn = key[: -len("running_var")]
        layer = bn[: -len("bn.bn.")] if bn.endswith("bn.bn.") else bn[: -len("bn.")]
        conv = next((k for k in (f"{layer}conv.conv.weight", f"{layer}conv.weight") if k in state), None)
        if conv is None or conv not in fresh or state[conv].shape != fresh[conv].shape:
            raise ConfigError(
                f"{bn[:-1]} of these weights follows no convolution of an OFA supernet of width {width}; "
                "pass a supernet state_dict of that width (without a 'module.' prefix)"
            )
        factor = float(fresh[conv].norm() / state[conv].norm().clamp_min(1e-12))
        out[conv] = state[conv] * factor
        out[f"{bn}running_mean"] = state[f"{bn}running_mean"] * factor
        out[f"{bn}running_var"] = state[f"{bn}running_var"] * factor**2
        grown.append(1 / factor)
    return out, grown
