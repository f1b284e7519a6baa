"""Living with a zoo: growing it with a new dataset in one command (its recorded settings, no
config file), the retriever retrained because it lacks the dataset, staleness in status and
search, and the registered retriever served by `mlflow models serve` ranking as `tans search`.
A real Ray build, a real MLflow store, a real REST server."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tans.pipeline.cli import main
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.run import run_build
from tans.retriever.stale import staleness
from tans.zoo_schema.results import read_results
from tans.zoo_schema.store import open_store
from tests.conftest import free_port, wait_http
from tests.helpers import build_overrides

NEW = "glyphs-digits-clean"


@pytest.fixture(scope="module")
def grown(ray_cluster, tiny_datasets, tmp_path_factory):
    """A zoo of three datasets built with a config (Pareto, 2 initial jobs per dataset, 6 jobs,
    a retriever), then grown by `tans build ZOO --datasets NEW --add-jobs 3` alone."""
    tmp = tmp_path_factory.mktemp("day2")
    first, new = tmp / "first", tmp / "new"
    for name in ("hue-6", "shapes-clean", "digits-sklearn"):
        shutil.copytree(tiny_datasets / name, first / name)
    shutil.copytree(tiny_datasets / NEW, new / NEW)
    zoo = str(tmp / "zoo")
    settings = {
        "max_jobs": 6,
        "strategy": "pareto",
        "pareto.n_init_per_dataset": 2,
        "retrain.after_build": True,
        "retrain.steps": 30,
        "mlflow.tracking_uri": f"sqlite:///{tmp / 'tracking' / 'mlflow.db'}",
    }
    (tmp / "tracking").mkdir()
    run_build(load_config(None, build_overrides(zoo, first, tmp, **settings)), log=lambda *_: None)
    cwd, out = os.getcwd(), io.StringIO()
    os.chdir(tmp)  # another directory: the recorded settings, not the working directory, count
    try:
        with contextlib.redirect_stdout(out):
            code = main(["build", zoo, "--datasets", str(new), "--add-jobs", "3", "--json"])
    finally:
        os.chdir(cwd)
    assert code == 0, out.getvalue()
    return zoo, tmp, new / NEW, out.getvalue()


def test_growing_a_zoo_needs_no_config_and_the_new_dataset_gets_its_initial_jobs(grown, capsys):
    zoo, tmp, _, log = grown
    assert "budget: the zoo holds 6 jobs; 3 more make 9" in log
    assert f"this build's jobs per dataset: {NEW} " in log
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["zoo_results"] == 9 and summary["finished"] == 3
    assert summary["per_dataset"][NEW] >= 2  # its initial design first (n_init_per_dataset = 2)
    results = read_results(open_store(zoo))
    assert {r.image_size for r in results} == {32} and len({r.epochs for r in results}) == 1
    # the retriever was retrained because it lacked the new dataset, not because of a count
    state = staleness(open_store(zoo))
    assert state.version == 2 and not state.stale and state.trained_on == 9
    assert not (tmp / "mlruns").exists() and (tmp / "tracking" / "mlruns").is_dir()  # artifacts beside the store
    # a flag contradicting the zoo's recorded recipe is refused, naming the key and both values
    assert main(["build", zoo, "--datasets", str(tmp / "new"), "--add-jobs", "1", "--epochs", "3"]) == 3
    err = capsys.readouterr().err
    assert "train.epochs: the zoo was built with 1, this build asks 3" in err
    assert main(["build", zoo, "--add-jobs", "1", "--max-jobs", "20"]) == 3
    assert "not both" in capsys.readouterr().err


def test_a_stale_retriever_is_reported_retrained_if_stale_and_searched_with_a_warning(grown, tmp_path, capsys):
    zoo, _, query, _ = grown
    copy = tmp_path / "zoo"
    shutil.copytree(zoo, copy)
    shutil.rmtree(copy / "retriever" / "v2")  # as if the grow had not retrained: v1 lacks the dataset
    assert main(["status", str(copy), "--json"]) == 0
    retriever = json.loads(capsys.readouterr().out)["retriever"]
    assert retriever["stale"] and retriever["version"] == 1 and retriever["unknown_datasets"] == [NEW]
    assert main(["search", str(copy), "--dataset", str(query), "--rerank", "source", "--top-k", "3"]) == 0
    out, err = capsys.readouterr()
    assert f"does not know 1 dataset(s) of the zoo ({NEW};" in err and "--if-stale" in err
    assert f"tans finetune {copy} --job " in out and f"tans export {copy} --job " in out  # the next steps
    tracking = ["--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main(["retrain", str(copy), "--if-stale", "--json", *tracking]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert main(["retrain", str(copy), "--if-stale", "--json", *tracking]) == 0
    assert json.loads(capsys.readouterr().out)["version"] is None  # fresh: nothing to do
    assert main(["search", str(copy), "--dataset", str(query), "--rerank", "source", "--top-k", "10", "--json"]) == 0
    out, err = capsys.readouterr()
    hits = json.loads(out)["hits"]
    assert "stale" not in err and NEW in {h["dataset_id"] for h in hits}  # its networks are found now


def test_the_registered_retriever_served_over_rest_ranks_as_tans_search(grown, capsys):
    """`mlflow models serve -m models:/tans-retriever@champion --env-manager local`, queried
    over HTTP with the images `tans search` reads, returns its ranking in its default order."""
    from tans.pipeline.commands.search import query_images

    zoo, tmp, query, _ = grown
    uri = f"sqlite:///{tmp / 'tracking' / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    champion = MlflowClient(uri, uri).get_model_version_by_alias("tans-retriever", "champion")
    assert champion.tags["tans.version"] == "2"  # the grow's retrain
    model_dir = Path(urllib.request.url2pathname(champion.source.removeprefix("file://")))
    assert model_dir.is_relative_to(tmp / "tracking" / "mlruns")  # artifacts beside the store
    assert (model_dir / "code" / "tans" / "retriever" / "mlflow_model.py").is_file()
    assert not [line for line in (model_dir / "requirements.txt").read_text().splitlines() if "tans" in line]
    assert (model_dir / "serving_input_example.json").is_file() and "signature" in (model_dir / "MLmodel").read_text()
    # no time bound on either side, so a busy machine cannot cut one short and not the other
    args = ["--top-k", "4", "--budget", "0", "--finetune-top", "2", "--json"]
    assert main(["search", zoo, "--dataset", str(query), *args]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert expected["ranked_by"] == "finetune" and expected["reranked"] == expected["finetune_candidates"] == 2
    images, labels = query_images(str(query), 10, for_finetune=True)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tans-retriever@champion"]
        + ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        body = {
            "dataframe_split": {
                "columns": ["image", "label"],
                "data": [[base64.b64encode(b).decode(), y] for b, y in zip(images, labels)],
            },
            "params": {"top_k": 4, "budget": 0.0, "finetune_top": 2},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        predictions = json.loads(urllib.request.urlopen(request, timeout=300).read())["predictions"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        log.close()
    assert [p["job_id"] for p in predictions] == [h["job_id"] for h in expected["hits"]]
    assert [p["rank"] for p in predictions] == [1, 2, 3, 4] and {p["ranked_by"] for p in predictions} == {"finetune"}
