"""Base weights: the shipped pretrained supernet (the default) and OFA's published format."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.run import base_weights_entry
from tans.workers.networks import weights as base_weights
from tans.workers.networks.images import decode_images
from tans.workers.networks.nets import load_base_supernet
from tans.workers.networks.ofa_space import build_supernet
from tans.zoo_schema.errors import ConfigError, StorageError
from tans.zoo_schema.store import open_store


def test_shipped_weights_match_their_recipe_and_are_the_default(tmp_path):
    path, recipe = base_weights.shipped()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recipe["sha256"]
    assert recipe["command"].startswith("tans pretrain-base") and recipe["seed"] == 0
    suite = [d for d in recipe["datasets"] if not d.startswith("photos-corpus")]
    assert "glyphs-hebrew-clean" not in suite and len(suite) == 24
    assert not {"mnist-real", "textures-real", "photos-real", "stripes-frequency"} & set(recipe["datasets"])
    # the real photographs: a class each, none of them what an evaluation set is made from
    assert recipe["corpus"]["photos"] == len(recipe["corpus_photos"]) == 361
    assert not recipe["corpus"]["dropped"]["excluded_source"] and recipe["corpus"]["checked_against"]["held_out_images"]
    # scaled back to the norms of initialisation; a zoo started from the unscaled file keeps that one
    assert recipe["rescaled_from"]["name"] in base_weights.EARLIER
    assert recipe["summary"]["rescaled"]["convolutions"] == 64
    from safetensors.torch import load_file

    torch.manual_seed(0)
    fresh, shipped = build_supernet(1.0).state_dict(), load_file(str(path))
    assert torch.allclose(shipped["first_conv.conv.weight"].norm(), fresh["first_conv.conv.weight"].norm())
    config = load_config(None, {})
    assert config.arch.base_weights == "pretrained"
    store = open_store(str(tmp_path / "zoo"))
    entry = base_weights_entry(store, config)
    assert entry.kind == "file" and store.exists(entry.key)
    build_supernet(1.0).load_state_dict(load_base_supernet(store, 1.0, entry).state_dict())
    with pytest.raises(ConfigError, match="width 1.0"):
        base_weights_entry(store, load_config(None, {"arch.width": 1.2}))


@pytest.mark.parametrize("name", ["glyphs-greek-lower-clean", "digits-sklearn"])
def test_shipped_weights_recognise_their_pretraining_tasks(name, tmp_path):
    """Re-check the recipe's claim on fresh images (seed 1, never seen in pretraining) of two
    of its datasets: the supernet's own 755-way classifier (each dataset's classes in their
    slots, datasets in the recipe's order) is far above chance (1/755)."""
    import dataclasses

    from safetensors.torch import load_file

    from tans.pipeline.datasets import synth
    from tans.pipeline.datasets.ingest import read_images

    path, recipe = base_weights.shipped()
    specs = {s.name: s for s in synth.suite()}
    offset = sum(len(specs[d].classes) for d in recipe["datasets"][: recipe["datasets"].index(name)])
    spec = dataclasses.replace(specs[name], per_class=10) if specs[name].per_class else specs[name]
    synth.write_dataset(spec, tmp_path, seed=1)
    by_class, _ = read_images(str(tmp_path / name))
    images = [img for cls in sorted(by_class) for img in by_class[cls]][:300]
    labels = np.asarray([i for i, cls in enumerate(sorted(by_class)) for _ in by_class[cls]])[:300] + offset
    supernet = build_supernet(1.0)
    supernet.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        predicted = supernet.eval()(torch.from_numpy(decode_images(images, 32))).argmax(1).numpy()
    assert (predicted == labels).mean() > 0.5


def test_ofa_published_checkpoint_format_is_accepted(tmp_path):
    """OFA's ofa_mbv3_d234_e346_k357_w1.2 is a torch file holding {'state_dict': ...}; a file
    written in that exact format is accepted as arch.base_weights at width 1.2."""
    torch.manual_seed(3)
    state = build_supernet(1.2).state_dict()
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.2"  # OFA's file name, no extension
    torch.save({"state_dict": state}, path)
    store = open_store(str(tmp_path / "zoo"))
    entry = base_weights_entry(store, load_config(None, {"arch.width": 1.2, "arch.base_weights": str(path)}))
    loaded = load_base_supernet(store, 1.2, entry).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    json.dumps(entry.to_json())  # the manifest entry is plain JSON


def test_pretrained_weights_are_written_whole_or_not_at_all(tmp_path):
    from tans.pipeline.commands.pretrain import write_weights

    out = tmp_path / "weights" / "base.safetensors"
    write_weights(str(out), b"first", None)
    write_weights(str(out), b"second", None)
    assert out.read_bytes() == b"second" and [p.name for p in out.parent.iterdir()] == ["base.safetensors"]
    (tmp_path / "dir.safetensors").mkdir()  # a directory where the file should go: refused, no temp left
    with pytest.raises(StorageError, match="dir.safetensors is a folder"):
        write_weights(str(tmp_path / "dir.safetensors"), b"x", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.safetensors", "weights"]


def test_a_zoo_started_from_an_earlier_shipped_base_keeps_it(tmp_path, monkeypatch):
    """A zoo whose manifest names a base tans shipped before is grown with "pretrained" as it
    was built: its own copy of that base, not the base shipped now (which would be a conflict)."""
    import dataclasses

    from tans.pipeline.execution.run import wanted_manifest
    from tans.zoo_schema.manifest import ensure_manifest

    store = open_store(str(tmp_path / "zoo"))
    config = load_config(None, {"zoo": str(tmp_path / "zoo")})
    now = ensure_manifest(store, wanted_manifest(store, config))  # built with the base shipped now
    earlier = dataclasses.replace(now.base_weights, sha256="e" * 64, id="sha256:" + "e" * 16)
    other = open_store(str(tmp_path / "old-zoo"))
    ensure_manifest(other, dataclasses.replace(now, base_weights=earlier))
    with pytest.raises(Exception, match="built with other settings"):  # not a base tans shipped
        ensure_manifest(other, wanted_manifest(other, config))
    monkeypatch.setattr(base_weights, "EARLIER", {"an-earlier-base": "e" * 64})
    assert ensure_manifest(other, wanted_manifest(other, config)).base_weights == earlier
    assert wanted_manifest(store, config).base_weights == now.base_weights  # a zoo of the current one keeps it


def test_rescaled_to_init_computes_the_same_function_at_the_norms_of_a_fresh_supernet():
    """A pretrained supernet's convolutions grew; scaled back with their BatchNorm statistics,
    every subnet computes what it did (up to BatchNorm's eps), at a fresh supernet's norms."""
    from tans.workers.networks.nets import model_for
    from tans.workers.networks.ofa_space import Arch

    smallest, largest = Arch.from_config([3] * 20, [3] * 20, [2] * 5), Arch.from_config([7] * 20, [6] * 20, [4] * 5)
    torch.manual_seed(3)
    grown = build_supernet(1.0).state_dict()
    for key in list(grown):
        if key.endswith("running_var"):  # pretraining left statistics of their own
            grown[key] = grown[key] + torch.rand_like(grown[key])
        elif key.endswith("running_mean"):
            grown[key] = grown[key] + torch.randn_like(grown[key])
        elif key.endswith("conv.weight"):
            grown[key] = grown[key] * (1 + 3 * torch.rand(()))
    state, factors = base_weights.rescaled_to_init(grown, 1.0)
    assert len(factors) == 64 and max(factors) > 2 and min(factors) >= 0.99
    torch.manual_seed(0)
    fresh = build_supernet(1.0).state_dict()
    first = "first_conv.conv.weight"
    assert torch.allclose(state[first].norm(), fresh[first].norm()) and state[first].norm() < grown[first].norm() / 1.5
    assert torch.equal(state["feature_mix_layer.conv.weight"], grown["feature_mix_layer.conv.weight"])  # no BatchNorm
    x = torch.rand(32, 3, 64, 64)
    for arch in (smallest, largest):
        before, after = build_supernet(1.0), build_supernet(1.0)
        before.load_state_dict(grown)
        after.load_state_dict(state)
        nets = []
        for supernet in (before, after):
            torch.manual_seed(1)  # the same new head
            nets.append(model_for(arch.id, 5, 1.0, supernet))
        with torch.no_grad():
            for net in nets:
                net.eval()
            assert torch.allclose(nets[0](x), nets[1](x), rtol=1e-3, atol=1e-6)
            for net in nets:
                net.train()
            was, now = nets[0](x), nets[1](x)
            assert (was - now).abs().max() < 0.05 * was.abs().mean()
    with pytest.raises(ConfigError, match="follows no convolution of an OFA supernet of width 1.0"):
        base_weights.rescaled_to_init({k: v for k, v in grown.items() if k != first}, 1.0)
    with pytest.raises(ConfigError, match="without a 'module.' prefix"):
        base_weights.rescaled_to_init({f"module.{k}": v for k, v in grown.items()}, 1.0)
    with pytest.raises(ConfigError, match="of width 1.2"):
        base_weights.rescaled_to_init(grown, 1.2)
