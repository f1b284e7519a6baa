"""Zoo networks outside tans: `tans.load_network` and `tans export`, loaded back in a fresh
process that imports only torch and safetensors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tans
from tans.pipeline.cli import main
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.run import run_build
from tans.zoo_schema.errors import StorageError, TansError
from tans.zoo_schema.shards import load_split

FRESH = r"""
import json, sys
import torch
from safetensors.torch import load_file
assert not any(m.split(".")[0] in ("tans", "pipeline", "workers", "retriever", "zoo_schema", "ofa")
               for m in sys.modules), "only torch and safetensors"
folder = sys.argv[1]
config = json.load(open(f"{folder}/config.json"))
net = torch.export.load(f"{folder}/model.pt2").module()
x = load_file(f"{folder}/input.safetensors")["x"]
logits = net(x)
print(json.dumps({"logits": logits.tolist(), "classes": [config["class_names"][i] for i in logits.argmax(1).tolist()],
                  "tans_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("tans", "pipeline", "ofa"))}))
"""


@pytest.fixture(scope="module")
def zoo(ray_cluster, tiny_datasets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    path = str(tmp / "zoo")
    run_build(
        load_config(
            None,
            {
                "zoo": path,
                "datasets": [str(tiny_datasets)],
                "max_jobs": 2,
                "strategy": "random",
                "train.epochs": 1,
                "train.latency_repeats": 3,
                "arch.pool_size": 10,
                "retrain.after_build": False,
                "mlflow.tracking_uri": f"sqlite:///{tmp / 'm.db'}",
            },
        ),
        log=lambda *_: None,
    )
    return path


def test_load_network_is_ready_to_use(zoo):
    z = tans.open_zoo(zoo)
    table = z.results()
    assert table.num_rows == 2 and "job_id" in table.column_names
    job = table["job_id"][0].as_py()
    net = tans.load_network(zoo, job)
    row = next(r for r in table.to_pylist() if r["job_id"] == job)
    dataset = next(d for d in z.datasets() if d.dataset_id == row["dataset_id"])
    assert net.config.class_names == dataset.class_names and net.config.num_classes == row["num_classes"]
    assert net.config.image_size == row["image_size"] and len(net.config.mean) == 3
    images, labels = load_split(z.store, row["dataset_id"], "test")
    predicted = net.predict(images)  # encoded images in, class names out
    accuracy = np.mean([p == dataset.class_names[y] for p, y in zip(predicted, labels)])
    # the row's test accuracy, recomputed through another float32 path: a near-tie image may flip
    assert accuracy == pytest.approx(row["accuracy"], abs=1.01 / len(labels))
    with pytest.raises(TansError, match="has no result"):
        tans.load_network(zoo, "no-such-job")
    with pytest.raises(StorageError, match="there is no zoo at"):
        tans.open_zoo(str(z.store.uri) + "-typo")


def test_exported_network_runs_with_torch_alone_and_predicts_as_tans(zoo, tmp_path, capsys):
    job = tans.open_zoo(zoo).results()["job_id"][1].as_py()
    out = tmp_path / "export"
    assert main(["export", zoo, "--job", job, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == ["README.md", "config.json", "model.pt2", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    net = tans.load_network(zoo, job)
    assert config == json.loads(json.dumps(report["config"])) and config["job_id"] == job
    assert config["architecture"] == net.config.architecture and config["accuracy"] == net.config.accuracy
    with safe_open(str(out / "model.safetensors"), "pt") as fh:  # the weights file describes itself
        assert json.loads(fh.metadata()["tans.config"]) == config
    card = (out / "README.md").read_text()
    assert job in card and f"{config['accuracy']:.4f}" in card and "torch.export.load" in card
    # the zoo's own checkpoint carries the same config in its metadata
    record = next(r for r in tans.open_zoo(zoo).results().to_pylist() if r["job_id"] == job)
    with safe_open(str(tans.open_zoo(zoo).store.uri) + "/" + record["checkpoint_uri"], "pt") as fh:
        assert json.loads(fh.metadata()["tans.config"]) == config
    # a fresh process that imports only torch and safetensors: the same predictions, any batch size
    images, _ = load_split(tans.open_zoo(zoo).store, config["dataset_id"], "test")
    x = net.preprocess(images[:7])
    save_file({"x": x.contiguous()}, str(out / "input.safetensors"))
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(out)], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    answer = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert answer["tans_loaded"] == []
    with torch.no_grad():
        expected = net(x)
    assert torch.allclose(torch.tensor(answer["logits"]), expected, atol=1e-4)
    assert answer["classes"] == net.predict(images[:7])


def test_export_of_an_unknown_job_is_a_clear_error(zoo, tmp_path, capsys):
    assert main(["export", zoo, "--job", "nope", "--out", str(tmp_path / "x")]) == 3
    assert "job 'nope' has no result" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
