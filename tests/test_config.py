from __future__ import annotations

import pytest

from tans.pipeline.execution.config import load_config
from tans.zoo_schema.errors import ConfigError


def test_defaults_need_no_file():
    c = load_config(None)
    assert c.strategy == "pareto" and c.pareto.mc_samples == 10 and c.train.lr == 1e-2 and c.train.batch_size == 32
    assert c.train.weight_decay == 4e-5 and c.train.momentum == 0.9 and c.ingest.max_classes == 20


def test_file_and_overrides(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text('zoo = "s3://b/z"\nmax_jobs = 5\n[train]\nepochs = 3\n[s3]\nendpoint_url = "http://127.0.0.1:1"\n')
    c = load_config(str(p), {"train.epochs": 4, "max_jobs": None})
    assert (c.zoo, c.max_jobs, c.train.epochs, c.s3.endpoint_url) == ("s3://b/z", 5, 4, "http://127.0.0.1:1")


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_jbos = 3", r"unknown config key\(s\) max_jbos; valid keys: .*max_jobs"),
        ("[train]\nepoch = 3", r"unknown config key\(s\) train.epoch; valid keys in \[train\]: .*epochs"),
        ("[trian]\nepochs = 3", r"unknown config key\(s\) trian"),
        ("max_jobs = 'ten'", "max_jobs must be int"),
        ("[train]\nepochs = 0", "train.epochs must be >= 1"),
        ("[arch]\nwidth = 1.5", "arch.width must be 1.0 or 1.2"),
        ("max_jobs = [", "not valid TOML"),
    ],
)
def test_bad_config_is_named(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(p))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.toml"))
