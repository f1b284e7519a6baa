"""Base weights: the shipped pretrained supernet (the default) and OFA's published format."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from pipeline.build import base_weights_entry
from pipeline.config import load_config
from pipeline.errors import ConfigError
from workers import base_weights
from workers.finetune import decode_images, load_base_supernet
from workers.ofa_space import build_supernet
from zoo_schema.store import open_store


def test_shipped_weights_match_their_recipe_and_are_the_default(tmp_path):
    path, recipe = base_weights.shipped()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recipe["sha256"]
    assert recipe["command"].startswith("tans pretrain-base") and recipe["seed"] == 0
    assert "glyphs-hebrew-clean" not in recipe["datasets"] and len(recipe["datasets"]) == 24
    assert not {"mnist-real", "textures-real", "photos-real", "stripes-frequency"} & set(recipe["datasets"])
    config = load_config(None, {})
    assert config.arch.base_weights == "pretrained"
    store = open_store(str(tmp_path / "zoo"))
    entry = base_weights_entry(store, config)
    assert entry["kind"] == "file" and store.exists(entry["key"])
    build_supernet(1.0).load_state_dict(load_base_supernet(store, 1.0, entry).state_dict())
    with pytest.raises(ConfigError, match="width 1.0"):
        base_weights_entry(store, load_config(None, {"arch.width": 1.2}))


def test_shipped_weights_carry_features_beyond_random(tiny_datasets):
    """On a built-in dataset outside its pretraining (glyphs-digits-clean), a k-NN probe on the
    pretrained largest subnet's features beats the same probe on random-init features."""
    from pipeline.ingest import IngestSettings, read_source, validate
    from retriever.features import _largest
    from retriever.rerank import knn_probe
    from workers.ofa_space import penultimate
    by_class, _ = validate("q", read_source(str(tiny_datasets / "glyphs-digits-clean"))[0], IngestSettings())
    images = [img for cls in sorted(by_class) for img in by_class[cls]]
    labels = np.asarray([i for i, cls in enumerate(sorted(by_class)) for _ in by_class[cls]])
    x = torch.from_numpy(decode_images(images, 32))
    probes = {}
    for kind in ("pretrained", "random"):
        supernet = build_supernet(1.0)
        if kind == "pretrained":
            from safetensors.torch import load_file
            supernet.load_state_dict(load_file(str(base_weights.shipped()[0])))
        with torch.no_grad():
            probes[kind] = knn_probe(penultimate(_largest(supernet).eval(), x).numpy(), labels)
    assert probes["pretrained"] > probes["random"] + 0.1, probes


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
    json.dumps(entry)  # the manifest entry is plain JSON
