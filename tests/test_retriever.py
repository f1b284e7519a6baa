"""The retriever: loss, constraints, retrain threshold, versions on local disk and S3, search."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from tans.pipeline.commands.search import search_dataset
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.retrain import REGISTERED_MODEL, run_retrain
from tans.pipeline.execution.run import run_build
from tans.retriever.model import contrastive_loss
from tans.retriever.search import Constraints, NoModelFits, Searcher
from tans.retriever.stale import staleness
from tans.retriever.train import RetrainSettings, embeddings_of, load_version, versions
from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.results import read_results
from tans.zoo_schema.store import S3Settings, open_store


def test_contrastive_loss_matches_hand_computation():
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert contrastive_loss(m.clone(), m, 0.2).item() == pytest.approx(0.0)
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # query->models: row 1: 0.2 - 0 + 1 = 1.2; models->queries: col 0: 0.2 - 1 + 1 = 0.2,
    # col 1: 0.2 - 0 + 0 = 0.2; (1.2 + 0.4) / 2 = 0.8
    assert contrastive_loss(q, m, 0.2).item() == pytest.approx(0.8)


def test_constraints_filter_and_measure_violation():
    c = Constraints(max_params=3e6, max_latency_ms=10.0)
    params, flops, lat = np.array([2e6, 4e6, 2e6]), np.array([1, 1, 1]), np.array([5.0, 5.0, 20.0])
    assert c.mask(params, flops, lat).tolist() == [True, False, False]
    assert c.violation(params, flops, lat) == pytest.approx([0.0, 1 / 3, 1.0])
    assert Constraints().mask(params, flops, lat).all()


def test_source_prior_and_rank_mean_match_hand_computation():
    from tans.retriever.rerank import mean_rank, source_over_chance

    # 0.55 on 10 classes is half-way from chance (0.1) to 1; 0.5 on 2 classes is chance
    assert source_over_chance([0.55, 0.5, 1.0], [10, 2, 4]) == pytest.approx([0.5, 0.0, 1.0])
    # ranks (0..1) of [3, 1, 2] are [1, 0, 0.5]; of [0, 0, 9] (a tie shares rank 0.25) are [.25, .25, 1]
    assert mean_rank(np.array([3.0, 1, 2]), np.array([0.0, 0, 9])) == pytest.approx([0.625, 0.125, 0.75])
    # NaN ranks lowest; the public API's default ordering is the command line's
    assert mean_rank(np.array([np.nan, 1.0])) == pytest.approx([0.0, 1.0])
    import inspect

    import tans
    from tans.retriever.proxy import FINETUNE_TOP
    from tans.retriever.rerank import DEFAULT_RERANK

    assert inspect.signature(tans.Zoo.search).parameters["rerank"].default == DEFAULT_RERANK
    assert inspect.signature(tans.Zoo.search).parameters["finetune_top"].default == FINETUNE_TOP


@pytest.fixture(scope="module")
def built_zoo(ray_cluster, tiny_datasets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retriever")
    zoo = str(tmp / "zoo")
    run_build(
        load_config(
            None,
            {
                "zoo": zoo,
                "datasets": [str(tiny_datasets)],
                "max_jobs": 8,
                "strategy": "random",
                "train.epochs": 1,
                "train.latency_repeats": 3,
                "arch.pool_size": 10,
                "retrain.after_build": False,
                "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            },
        )
    )
    return zoo, tmp


SETTINGS = RetrainSettings(steps=40)


def test_retrain_threshold_versions_and_registry(built_zoo):
    from mlflow.tracking import MlflowClient

    from tans.pipeline.execution.tracking import MlflowSettings

    zoo, tmp = built_zoo
    store = open_store(zoo)
    mlflow = MlflowSettings(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    assert staleness(store, if_grown=0.5).stale  # no retriever yet
    v1 = run_retrain(store, SETTINGS, 32, None, mlflow, log=lambda *_: None)
    assert v1 == 1 and versions(store) == [1]
    meta = store.read_json("retriever/v1/meta.json")
    assert meta["results"] == 8 and 0 <= meta["metrics"]["R@1"] <= 100
    # the zoo has not grown: --if-grown 0.1 does nothing, a forced retrain makes v2
    assert run_retrain(store, SETTINGS, 32, 0.1, None, log=lambda *_: None) is None
    state = staleness(store, if_grown=2)
    assert not state.stale and (state.results, state.trained_on, state.unknown_datasets) == (8, 8, [])
    assert meta["dataset_ids"] == sorted({r.dataset_id for r in read_results(store)})
    assert run_retrain(store, replace(SETTINGS, positive="uniform"), 32, None, mlflow, log=lambda *_: None) == 2
    client = MlflowClient(tracking_uri=mlflow.tracking_uri, registry_uri=mlflow.tracking_uri)
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert champion.tags["tans.version"] == "2" and champion.tags["tans.zoo"] == store.uri
    loaded = load_version(store, 1)
    meta, table = loaded.meta, loaded.models
    assert (
        loaded.number == meta["version"] == 1
        and table.num_rows == 8
        and embeddings_of(table["embedding"]).shape == (8, 128)
    )


def test_model_embeddings_read_back_from_every_format_a_version_was_written_in(monkeypatch):
    """A version's `embedding` column is 512-byte values (128 little-endian float32); versions
    written before that format hold lists of 128 floats, and load the same. A column that is
    not 128 float32 per row, or has a gap, is refused by name, whichever the path."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tans.retriever.train import RetrieverVersion, _with_embeddings_apart, embedding_column
    from tans.zoo_schema.errors import TansError

    m = np.random.default_rng(0).normal(size=(300, 128)).astype(np.float32)
    flat = pa.array(m.ravel())
    forms = {
        "binary": embedding_column(m),
        "list": pa.FixedSizeListArray.from_arrays(flat, 128).cast(pa.list_(pa.float32())),
        "fixed list": pa.FixedSizeListArray.from_arrays(flat, 128),
    }
    from tans.retriever import train

    for name, column in forms.items():
        assert np.array_equal(embeddings_of(column), m), name
        assert np.array_equal(embeddings_of(column.slice(7, 5)), m[7:12]), name
        sink = io.BytesIO()
        pq.write_table(
            pa.table({"job_id": [f"j{i}" for i in range(300)], "embedding": column}), sink, row_group_size=128
        )
        for row_group in (train.MODELS_ROW_GROUP, 100):  # row groups of its size, or larger (read in batches)
            monkeypatch.setattr(train, "MODELS_ROW_GROUP", row_group)
            loaded = _with_embeddings_apart(
                RetrieverVersion(1, None, {}, None), pq.ParquetFile(pa.BufferReader(sink.getvalue()))
            )
            assert np.array_equal(loaded.embeddings, m) and loaded.models.column_names == ["job_id"], name
            assert loaded.models["job_id"].to_pylist()[299] == "j299"
    bad = [
        pa.FixedSizeListArray.from_arrays(pa.array(m[:, :64].ravel()), 64),  # 64 numbers
        pa.FixedSizeListArray.from_arrays(pa.array(m.ravel().astype(np.float64)), 128),  # float64
        pa.array([m[0].tolist(), None], pa.list_(pa.float32())),  # a gap
        pa.array([m[0, :127].tolist(), m[1].tolist() + [0.0]], pa.list_(pa.float32())),  # ragged: 127 + 129
        pa.array([b"x" * 256], pa.binary(256)),  # 256 bytes
        pa.array(["not numbers"]),
    ]
    for column in bad:
        with pytest.raises(TansError, match="not 128 numbers.*tans retrain"):
            embeddings_of(column)


def test_registered_retriever_loads_as_an_mlflow_pyfunc_and_ranks_like_search(built_zoo, tiny_datasets):
    """`mlflow.pyfunc.load_model("models:/tans-retriever@champion")` works (the model is logged
    as code, nothing pickled) and ranks the zoo's networks as `Searcher.search` does, from
    feature vectors or from the query's encoded images."""
    import mlflow
    import pandas as pd

    from tans.pipeline.datasets.ingest import IngestSettings, read_images
    from tans.pipeline.execution.tracking import MlflowSettings

    zoo, tmp = built_zoo
    store = open_store(zoo)
    uri = f"sqlite:///{tmp / 'pyfunc.db'}"
    version = run_retrain(store, SETTINGS, 32, None, MlflowSettings(tracking_uri=uri), log=lambda *_: None)
    mlflow.set_tracking_uri(uri)  # as a user would (or MLFLOW_TRACKING_URI)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@champion")
    finally:
        mlflow.set_tracking_uri(None)
    query = str(tiny_datasets / "hue-6")
    by_class, _ = read_images(query, IngestSettings(min_images_per_class=1))
    images = [img for cls in sorted(by_class) for img in by_class[cls][:10]]
    labels = [i for i, cls in enumerate(sorted(by_class)) for _ in by_class[cls][:10]]
    searcher = Searcher(store, version)
    features = searcher.query_features(images, labels, per_class=10)
    hits = searcher.search(features, top_k=5)
    expected = [h.job_id for h in hits]
    ranked = model.predict(pd.DataFrame({"features": list(features)}), params={"top_k": 5, "rerank": "source"})
    assert list(ranked["job_id"]) == expected and list(ranked["rank"]) == [1, 2, 3, 4, 5]
    assert list(ranked["ranked_by"]) == [h.ranked_by for h in hits] == ["predicted_accuracy+source_over_chance"] * 5
    assert list(ranked["rank_score"]) == pytest.approx([h.rank_score for h in hits])
    by_prediction = model.predict(pd.DataFrame({"features": list(features)}), params={"top_k": 5, "rerank": "none"})
    assert list(by_prediction["job_id"]) == [h.job_id for h in searcher.search(features, top_k=5, rerank="none")]
    assert list(by_prediction["predicted_accuracy"]) == sorted(by_prediction["predicted_accuracy"], reverse=True)
    from_images = model.predict(pd.DataFrame({"image": images}), params={"top_k": 5, "rerank": "source"})
    assert list(from_images["job_id"]) == expected
    from tans.zoo_schema.errors import TansError

    for needs_images in ({}, {"rerank": "logme"}):  # the default (finetune) needs labelled images
        with pytest.raises(TansError, match="needs the query's labelled images: give the columns 'image' and 'label'"):
            model.predict(pd.DataFrame({"features": list(features)}), params=needs_images)


def test_search_ranks_filters_and_explains(built_zoo, tiny_datasets):
    zoo, _ = built_zoo
    store = open_store(zoo)
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    query = str(tiny_datasets / "hue-6")
    result = search_dataset(store, query, top_k=3, rerank="none")
    hits = result.hits
    assert 1 <= len(hits) <= 3 and result.ranked_by == "predicted_accuracy"
    preds = [h.predicted_accuracy for h in hits]
    assert preds == sorted(preds, reverse=True)  # ordered by predicted accuracy
    assert hits[0].ranked_by == "predicted_accuracy" and hits[0].checkpoint_uri.startswith(zoo)
    everything = search_dataset(store, query, top_k=100, rerank="none").hits
    assert [h.job_id for h in everything[: len(hits)]] == [h.job_id for h in hits]  # --top-k never reorders
    smallest = min(h.params for h in everything)
    limited = search_dataset(store, query, Constraints(max_params=smallest), top_k=100).hits
    assert limited and all(h.params <= smallest for h in limited)
    with pytest.raises(NoModelFits, match="no model in the zoo meets the constraints; the closest is"):
        search_dataset(store, query, Constraints(max_params=10))


@pytest.mark.parametrize("rerank", ["logme", "knn"])
def test_search_reranks_with_evidence_from_the_query_images(built_zoo, tiny_datasets, rerank):
    from tans.retriever.rerank import SCORERS
    from tans.workers.networks.images import decode_images
    from tans.workers.networks.nets import load_checkpoint
    from tans.workers.networks.ofa_space import penultimate

    zoo, _ = built_zoo
    store = open_store(zoo)
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    query = str(tiny_datasets / "shapes-clean")
    result = search_dataset(store, query, top_k=100, rerank=rerank)
    assert result.ranked_by == rerank and result.seconds["rerank"] > 0
    scores = [h.rank_score for h in result.hits]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    first = search_dataset(store, query, top_k=2, rerank=rerank).hits
    assert [h.job_id for h in first] == [h.job_id for h in result.hits[:2]]
    # the score is the scorer on the network's own features of the sampled query images
    from tans.pipeline.commands.search import query_images
    from tans.zoo_schema.results import find_result

    images, labels = query_images(query, per_class=10)
    assert len(set(labels)) >= 2 and all(labels.count(c) == 10 for c in set(labels))  # sampled per class
    chosen = list(range(len(images)))
    record = find_result(store, result.hits[0].job_id)
    net = load_checkpoint(store, record, 1.0)
    with torch.no_grad():
        feats = penultimate(net, torch.from_numpy(decode_images([images[i] for i in chosen], 32))).numpy()
    expected = SCORERS[rerank](feats, np.asarray([labels[i] for i in chosen]))
    # the same figure from two float32 feature paths (batched differently): equal to float32 rounding
    assert result.hits[0].rank_score == pytest.approx(expected, rel=1e-4)


def test_search_ranks_by_predicted_and_source_accuracy(built_zoo, tiny_datasets):
    from tans.retriever.rerank import mean_rank, source_over_chance
    from tans.zoo_schema.results import find_result

    zoo, _ = built_zoo
    store = open_store(zoo)
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    query = str(tiny_datasets / "shapes-clean")
    result = search_dataset(store, query, top_k=100, rerank="source")
    hits = result.hits
    assert result.ranked_by == "predicted_accuracy+source_over_chance" == hits[0].ranked_by
    assert len(hits) == result.recalled > 2
    records = [find_result(store, h.job_id) for h in hits]
    assert [h.source_accuracy for h in hits] == pytest.approx([r.accuracy for r in records])
    expected = mean_rank(
        np.array([h.predicted_accuracy for h in hits]),
        source_over_chance([r.accuracy for r in records], [r.num_classes for r in records]),
    )
    assert [h.rank_score for h in hits] == pytest.approx(list(expected))
    assert [h.rank_score for h in hits] == sorted((h.rank_score for h in hits), reverse=True)
    first = search_dataset(store, query, top_k=2, rerank="source").hits
    assert [h.job_id for h in first] == [h.job_id for h in hits[:2]]  # --top-k never reorders
    # ranks are taken over the whole zoo: a network's score is the same whichever others were
    # recalled or met the constraints
    score = {h.job_id: h.rank_score for h in hits}
    limit = sorted(h.params for h in hits)[len(hits) // 2]
    for narrow in (
        search_dataset(store, query, Constraints(max_params=limit), top_k=100, rerank="source").hits,
        search_dataset(store, query, top_k=2, recall=2, rerank="source").hits,
    ):
        assert narrow and [h.rank_score for h in narrow] == pytest.approx([score[h.job_id] for h in narrow])


def test_a_damaged_or_missing_models_file_stops_search_by_name(built_zoo, tmp_path):
    """Search checks the version's models file by its sha256 while it parses it: a changed
    byte, a cut-off footer (a parse error, reported as the mismatch it is) and a missing file
    each stop it with an error that names the file and the fix."""
    import shutil

    from tans.zoo_schema import layout
    from tans.zoo_schema.errors import TansError

    zoo, _ = built_zoo
    if not versions(open_store(zoo)):
        run_retrain(open_store(zoo), SETTINGS, 32, None, None, log=lambda *_: None)
    shutil.copytree(zoo, tmp_path / "zoo")
    store = open_store(str(tmp_path / "zoo"))
    version = versions(store)[-1]
    meta = store.read_json(layout.retriever_meta_key(version))
    key = meta["files"]["models"]["key"]
    path = tmp_path / "zoo" / key
    good = path.read_bytes()
    assert Searcher(store).table.num_rows == meta["results"]
    middle = bytearray(good)
    middle[len(good) // 2] ^= 0xFF
    for damaged in (bytes(middle), good[:-8]):
        path.write_bytes(damaged)
        for load in (Searcher, load_version):
            with pytest.raises(TansError, match=f"{key} does not match its recorded sha256; run `tans verify"):
                load(store)
    path.unlink()
    with pytest.raises(TansError, match=f"{key} is missing from"):
        Searcher(store)
    path.write_bytes(good)
    assert Searcher(store).embeddings.shape == (meta["results"], 128)


def test_ctrl_c_while_a_version_file_is_read_does_not_wait_for_its_hash(built_zoo, monkeypatch):
    """The thread that hashes a version file beside the parse stops at its next chunk when
    the caller is interrupted, instead of reading the rest of the file (0.5 GB for a million
    networks) before Ctrl-C takes effect; read to the end, every chunk is hashed."""
    import hashlib
    import threading
    import time
    from types import SimpleNamespace

    from tans.retriever import stale
    from tans.zoo_schema import layout

    zoo, _ = built_zoo
    store = open_store(zoo)
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    version = versions(store)[-1]
    meta = store.read_json(layout.retriever_meta_key(version))
    size = len(store.read_bytes(meta["files"]["models"]["key"]))
    chunks, hashed = -(-size // 64), threading.Semaphore(0)

    class Slow:  # sha256 whose every chunk takes 10 ms
        def __init__(self):
            self.h = hashlib.sha256()

        def update(self, data):
            time.sleep(0.01)
            self.h.update(data)
            hashed.release()

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setattr(stale, "HASH_CHUNK", 64)
    monkeypatch.setattr(stale, "hashlib", SimpleNamespace(sha256=Slow))
    assert chunks > 50
    with pytest.raises(KeyboardInterrupt):
        with stale.version_file(store, version, meta, "models") as fh:
            fh.read(8)
            for _ in range(3):
                assert hashed.acquire(timeout=30)  # the thread is hashing
            raise KeyboardInterrupt
    done = 3
    while hashed.acquire(blocking=False):
        done += 1
    assert done <= 5 < chunks  # it stopped at its next chunk
    with stale.version_file(store, version, meta, "models") as fh:
        fh.read(8)
    done = 0
    while hashed.acquire(blocking=False):
        done += 1
    assert done == chunks  # read to the end, the whole file was hashed and checked


def test_retriever_version_loads_back_from_s3(built_zoo, s3_server, s3_bucket):
    zoo, _ = built_zoo
    local = open_store(zoo)
    if not versions(local):
        run_retrain(local, SETTINGS, 32, None, None, log=lambda *_: None)
    remote = open_store(f"s3://{s3_bucket}/zoo", S3Settings(endpoint_url=s3_server.url))
    for key in ["manifest.json"] + local.list("retriever") + local.list("results"):
        remote.write_bytes(key, local.read_bytes(key))
    loaded = load_version(remote)
    model, meta, local_model = loaded.model, loaded.meta, load_version(local).model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local_model.state_dict().values()))
    features = np.random.default_rng(0).normal(size=(20, meta["image_dim"])).astype(np.float32)
    remote_hits, local_hits = Searcher(remote).search(features, top_k=2), Searcher(local).search(features, top_k=2)
    # the same ranking; each names its checkpoint inside the zoo it was opened at
    assert [replace(h, checkpoint_uri="") for h in remote_hits] == [replace(h, checkpoint_uri="") for h in local_hits]
    assert all(h.checkpoint_uri.startswith(remote.uri + "/checkpoints/") for h in remote_hits)
    assert all(h.checkpoint_uri.startswith(local.uri + "/checkpoints/") for h in local_hits)


def test_finetune_a_zoo_network_on_a_new_dataset(built_zoo, tiny_datasets, tmp_path):
    from tans.pipeline.commands.finetune import run_finetune
    from tans.zoo_schema.results import read_results

    zoo, tmp = built_zoo
    store = open_store(zoo)
    start = read_results(store)[0]
    new = tmp_path / "new-task"
    import shutil

    shutil.copytree(tiny_datasets / "shapes-clean", new / "shapes-renamed")
    config = load_config(
        None,
        {
            "zoo": zoo,
            "train.epochs": 2,
            "train.latency_repeats": 3,
            "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        },
    )
    lines: list[str] = []
    record = run_finetune(config, start.job_id, str(new / "shapes-renamed"), log=lines.append)
    assert record.base_weights == f"job:{start.job_id}" and record.arch == start.arch
    assert record.dataset_id == "shapes-renamed" and len(record.epoch_accuracies) == 2
    assert any(line.startswith("epoch 2: train loss") for line in lines)
    assert record.job_id in {r.job_id for r in read_results(store)}  # committed like any zoo job
    with pytest.raises(Exception, match="has no result"):
        run_finetune(config, "0" * 24, str(new / "shapes-renamed"))


def test_resnet18_backbone_from_a_local_weights_file(built_zoo, tiny_datasets, tmp_path):
    """The paper's query backbone, when the user has its weights as a file (no download)."""
    import torchvision

    zoo, _ = built_zoo
    store = open_store(zoo)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    version = run_retrain(store, replace(SETTINGS, backbone=str(weights)), 32, None, None, log=lambda *_: None)
    meta = store.read_json(f"retriever/v{version}/meta.json")
    assert meta["backbone"].startswith("resnet18-") and meta["image_dim"] == 512
    assert store.exists(meta["backbone_key"])  # copied into the zoo as safetensors
    weights.unlink()  # search needs only the zoo
    hits = search_dataset(store, str(tiny_datasets / "hue-6"), top_k=2).hits
    assert len(hits) == 2


def test_pretrain_base_serves_as_base_weights_and_query_backbone(built_zoo, tmp_path):
    """`tans pretrain-base`: sandwich-rule training on the union of the zoo's datasets; the
    file it writes is accepted as a new zoo's base weights and as a retriever backbone."""
    from safetensors import safe_open

    from tans.pipeline.commands.pretrain import PretrainSettings, pretrain_base, sandwich_configs
    from tans.pipeline.execution.run import base_weights_entry
    from tans.zoo_schema.shards import read_datasets

    zoo, _ = built_zoo
    store = open_store(zoo)
    import random as _random

    configs = sandwich_configs(_random.Random(0), 2)
    assert configs[0] is None and configs[1] == {"ks": 3, "e": 3, "d": 2} and len(configs) == 4
    out = tmp_path / "base" / "pretrained.safetensors"
    lines = []
    settings = PretrainSettings(steps=6, batch_size=32, resolutions=(16, 24, 32))  # a side drawn per step
    summary = pretrain_base(store, str(out), settings, log=lines.append)
    assert summary["classes"] == sum(d.num_classes for d in read_datasets(store))
    assert list(summary["settings"]["resolutions"]) == [16, 24, 32] and summary["device"] == "cpu"
    with pytest.raises(ConfigError, match=r"--resolutions \[16, 64\] must lie between 16 and --image-size 32"):
        pretrain_base(store, str(out), PretrainSettings(resolutions=(16, 64)), log=lambda *_: None)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda: torch sees no GPU here"):
            pretrain_base(store, str(out), settings, log=lambda *_: None, device="cuda")
    from tans.workers.networks.nets import load_base_supernet
    from tans.workers.networks.ofa_space import build_supernet
    from tans.zoo_schema.manifest import read_manifest

    manifest = read_manifest(store)  # pretraining starts from the zoo's own base weights
    assert summary["start"] == manifest.base_weights.id and 0 <= summary["test_accuracy_largest"] <= 1
    with safe_open(str(out), "pt") as fh:
        assert json.loads(fh.metadata()["tans"])["datasets"] == summary["datasets"]
        trained = fh.get_tensor("first_conv.conv.weight")
    start = load_base_supernet(store, manifest.width, manifest.base_weights)
    assert not torch.equal(trained, start.state_dict()["first_conv.conv.weight"])  # it did train
    torch.manual_seed(0)  # and its convolutions are back at the norms of initialisation
    assert torch.allclose(trained.norm(), build_supernet(1.0).state_dict()["first_conv.conv.weight"].norm())
    assert summary["rescaled"]["convolutions"] == 64
    again = tmp_path / "stage2.safetensors"  # a longer pretraining in stages: --init the last stage's file
    staged = pretrain_base(store, str(again), replace(settings, steps=1, init=str(out)), log=lambda *_: None)
    assert staged["start"] == str(out) and staged["settings"]["init"] == str(out)
    fresh = tmp_path / "fresh.safetensors"  # the same step from the zoo's base instead
    pretrain_base(store, str(fresh), replace(settings, steps=1), log=lambda *_: None)
    with safe_open(str(again), "pt") as a, safe_open(str(fresh), "pt") as b:
        assert not torch.equal(a.get_tensor("first_conv.conv.weight"), b.get_tensor("first_conv.conv.weight"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    for bad, message in (
        (tmp_path / "foreign.safetensors", "is not a supernet of this zoo's width"),
        (tmp_path / "nope.safetensors", "cannot be read"),
    ):
        with pytest.raises(ConfigError, match=message):
            pretrain_base(store, str(again), replace(settings, init=str(bad)), log=lambda *_: None)
    config = load_config(None, {"zoo": str(tmp_path / "new-zoo"), "arch.base_weights": str(out)})
    entry = base_weights_entry(open_store(config.zoo), config)
    assert entry.kind == "file"
    version = run_retrain(store, replace(SETTINGS, steps=5, backbone=str(out)), 32, None, None, log=lambda *_: None)
    meta = store.read_json(f"retriever/v{version}/meta.json")
    assert meta["backbone"] == f"ofa-max:{entry.id}:w1.0:32px" and meta["image_dim"] == 1280
    assert meta["backbone_key"] == entry.key  # the same copy in the zoo
    with pytest.raises(Exception, match="holds neither"):
        bad = tmp_path / "bad.safetensors"
        save_file({"w": torch.zeros(2)}, str(bad))
        run_retrain(store, replace(SETTINGS, steps=5, backbone=str(bad)), 32, None, None, log=lambda *_: None)


def test_proxy_folds_split_every_class_in_half_within_a_budget():
    from tans.retriever.proxy import IMAGES, PER_CLASS, per_class, proxy_folds
    from tans.zoo_schema.errors import TansError

    labels = [0] * 100 + [1] * 3 + [2] * 1
    first, second = proxy_folds(labels)
    assert not set(first) & set(second)
    for c, n, n_first in ((0, PER_CLASS, PER_CLASS // 2), (1, 3, 1), (2, 1, 1)):
        f, g = [i for i in first if labels[i] == c], [i for i in second if labels[i] == c]
        assert (len(f) + len(g), len(f)) == (n, n_first)  # odd images go to the second and first by turns
    # one-image classes spread over both folds, so each has two images to train on
    a, b = proxy_folds([0, 0, 1, 2])
    assert len(a) == len(b) == 2
    assert proxy_folds(labels) == (first, second)  # seeded
    # the folds are shuffled, not the first and last files of each class
    big = [0] * 40 + [1] * 40
    a, _ = proxy_folds(big)
    assert sorted(i for i in a if i < 40) != list(range(20))
    # the images in all stay near the budget however many classes the query has
    assert per_class(10) == PER_CLASS and per_class(20) == IMAGES // 20 and per_class(1000) == 2
    many = [c for c in range(100) for _ in range(50)]
    a, b = proxy_folds(many)
    assert len(a) + len(b) == 100 * per_class(100) <= IMAGES
    with pytest.raises(TansError, match="at least 2 images in each half; this query has 3 in 3 classes"):
        proxy_folds([0, 1, 2])


def test_fine_tunes_go_cheapest_first_and_take_the_places_they_held():
    from tans.retriever.proxy import cheapest_first, slot_score

    order = [3, 0, 4, 1, 2]  # positions in the source order, best first
    flops = [5.0, 1.0, 9.0, 1.0, 2.0]
    assert cheapest_first(flops, order) == [3, 1, 4, 0, 2]  # ties keep the source order (3 before 1)
    assert cheapest_first(flops, order, 3) == [3, 4, 0]  # only among the first 3
    # nothing fine-tuned: the source order; the fine-tuned swap among their places by loss
    ranks = lambda score: sorted(range(len(score)), key=lambda j: -score[j])  # noqa: E731
    assert ranks(slot_score(order, {})) == order
    assert ranks(slot_score(order, {1: 0.5, 2: 0.1})) == [3, 0, 4, 2, 1]
    assert ranks(slot_score(order, {3: 2.0, 0: 1.0, 4: 3.0, 1: 0.0, 2: 1.0})) == [1, 0, 2, 3, 4]
    assert len(set(slot_score(order, {1: 0.5}))) == len(order)  # no ties for the cosine to break


def test_search_finetune_orders_the_first_networks_by_a_short_fine_tune(built_zoo, tiny_datasets):
    from tans.pipeline.commands.search import query_images
    from tans.retriever import proxy
    from tans.workers.networks.images import decode_images
    from tans.workers.networks.nets import load_checkpoint
    from tans.zoo_schema.results import find_result

    zoo, _ = built_zoo
    store = open_store(zoo)
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    query = str(tiny_datasets / "hue-6")  # 12 images per class: more than the 10 a query is embedded from
    source = search_dataset(store, query, top_k=100, rerank="source").hits
    result = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=0)  # no bound
    hits = result.hits
    assert result.ranked_by == "finetune" and result.seconds["rerank"] > 0 and result.reranked == 2
    # the same recall as the other orderings (the query embedded from the same images)
    assert sorted(h.job_id for h in hits) == sorted(h.job_id for h in source)
    tuned = [h for h in hits if h.proxy_loss is not None]
    assert hits[:2] == tuned and {h.job_id for h in tuned} == {h.job_id for h in source[:2]}
    assert tuned[0].proxy_loss <= tuned[1].proxy_loss and tuned[1].rank_score > hits[2].rank_score
    assert [h.job_id for h in hits[2:]] == [h.job_id for h in source[2:]]  # the rest keep the source order
    assert result.finetune_candidates == 2
    first = search_dataset(store, query, top_k=1, rerank="finetune", finetune_top=2, budget=0).hits
    assert first[0].job_id == hits[0].job_id  # --top-k never reorders
    # the loss is a one-epoch fine-tune of the network on the query's images, scored on held-out ones
    images, labels = query_images(query, 10, for_finetune=True)
    folds = proxy.proxy_folds(labels)
    x, y = torch.from_numpy(decode_images(images, 32)), torch.as_tensor(labels)
    record = find_result(store, hits[0].job_id)
    loss = proxy.proxy_loss(lambda: load_checkpoint(store, record, 1.0), len(set(labels)), x, y, folds, 32)
    assert loss == pytest.approx(hits[0].proxy_loss, rel=1e-4)
    # cross-fitted: the mean of the two folds' summed losses, each fold fine-tuned on the other
    halves = [
        proxy.fold_loss(load_checkpoint(store, record, 1.0), len(set(labels)), x, y, a, b, 32)
        for a, b in (folds, folds[::-1])
    ]
    assert loss == pytest.approx(sum(halves) / len(labels), rel=1e-4)
    # the search fine-tuned its two side by side on two threads of one torch thread each: the
    # same losses as one after the other (up to the sums' order on one torch thread or two),
    # torch's thread count as it was; an error is raised
    loaders = [partial(load_checkpoint, store, find_result(store, h.job_id), 1.0) for h in tuned]
    threads = torch.get_num_threads()
    alone = proxy.local_losses(loaders, len(set(labels)), x, y, folds, 32, None, workers=1)
    side_by_side = proxy.local_losses(loaders, len(set(labels)), x, y, folds, 32, None, workers=2)
    assert [s for pair in side_by_side for s in pair] == pytest.approx([s for pair in alone for s in pair], rel=1e-3)
    assert proxy.scores(alone, folds) == pytest.approx([h.proxy_loss for h in tuned], rel=1e-4)
    assert result.cross_fitted and torch.get_num_threads() == threads
    # one network on two threads: its two fine-tunes side by side, the same sums, the network
    # loaded for each (none is kept between its fine-tunes)
    loads = []
    counted = [lambda: loads.append(1) or loaders[0]()]
    assert proxy.local_losses(counted, len(set(labels)), x, y, folds, 32, None, workers=2)[0] == pytest.approx(
        alone[0], rel=1e-3
    )
    assert len(loads) == 2

    # the caller's random state is left as it was; the new head is the numbers a zoo job's is
    state = torch.random.get_rng_state()
    proxy.local_losses(loaders, len(set(labels)), x, y, folds, 32, None, workers=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(3)
    reference = torch.nn.Linear(17, 5)
    head = proxy.new_head(17, 5, 3)
    assert torch.equal(head.weight, reference.weight) and torch.equal(head.bias, reference.bias)
    # a budget already spent loads no network
    opened = []
    spent = [lambda load=load: opened.append(1) or load() for load in loaders]
    spent_sums = proxy.local_losses(spent, len(set(labels)), x, y, folds, 32, time.monotonic() - 1, workers=2)
    assert spent_sums == [(None, None)] * 2
    assert opened == []

    def broken():
        raise OSError("checkpoint unreadable")

    with pytest.raises(OSError, match="unreadable"):
        proxy.local_losses([loaders[0], broken], len(set(labels)), x, y, folds, 32, None, workers=2)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("env,expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_tans_search_lets_openmp_threads_sleep_unless_told_otherwise(env, expected, tmp_path):
    """`tans search` sets OMP_WAIT_POLICY=PASSIVE before torch loads (spinning threads made a
    busy machine's search spend its budget embedding the query); a value the user set is kept,
    and a process that already loaded torch is left as it is. What the variable holds when
    torch is first imported is recorded by an import hook, in a fresh process."""
    import os
    import subprocess
    import sys

    record = (
        "import os, sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            print('at torch:', os.environ.get('OMP_WAIT_POLICY'), flush=True)\n"
        "            sys.meta_path.remove(self)\n"
        "sys.meta_path.insert(0, Hook())\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cli = record + (
        "from tans.pipeline.cli.main import main\n"
        f"print('exit', main(['search', {str(tmp_path / 'no-zoo')!r}, '--dataset', {str(tmp_path)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", cli], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["at", "torch:", expected, "exit", "3"], out.stdout + out.stderr
    torch_first = "import torch\nfrom tans.pipeline.cli.search import passive_openmp\npassive_openmp()\n"
    out = subprocess.run(
        [sys.executable, "-c", record + torch_first + "print(os.environ.get('OMP_WAIT_POLICY'))"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-1] == str(env.get("OMP_WAIT_POLICY"))


def test_search_budget_stops_the_fine_tunes_and_the_rest_keep_the_source_order(
    built_zoo, tiny_datasets, monkeypatch, capsys
):
    from tans.pipeline.cli.main import main
    from tans.retriever import search
    from tans.workers.job import TrainSettings
    from tans.workers.networks.training import DeadlineReached, train

    zoo, _ = built_zoo
    store = open_store(zoo)
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    query = str(tiny_datasets / "hue-6")
    source = [h.job_id for h in search_dataset(store, query, top_k=100, rerank="source").hits]
    crossed = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=0)
    # a budget that ends before the first batch: nothing is fine-tuned, the source order stands
    spent = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=1e-9)
    assert spent.reranked == 0 and [h.job_id for h in spent.hits] == source
    assert all(h.proxy_loss is None for h in spent.hits) and spent.as_dict()["reranked"] == 0
    # the budget ends during the second network's first fine-tune: the cheaper of the first two
    # is fine-tuned, and alone among the fine-tuned it keeps its place: the source order stands
    # (one thread: which call is second is then the second network's)
    real, calls, one_thread = search.proxy.fold_sum, [], partial(search.proxy.local_losses, workers=1)

    def late_from(n):
        def run(*args):
            calls.append(args[5])  # which fine-tune: every network's first, then every second
            return real(*args[:-1], None if len(calls) < n else time.monotonic() - 1)

        return run

    monkeypatch.setattr(search.proxy, "fold_sum", late_from(2))
    monkeypatch.setattr(search.proxy, "local_losses", one_thread)
    half = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=60)
    assert half.reranked == 1 and calls == [0, 0]
    cheaper = min(half.hits[:2], key=lambda h: (h.flops, source.index(h.job_id)))
    assert [h.job_id for h in half.hits] == source
    assert [h.job_id for h in half.hits if h.proxy_loss is not None] == [cheaper.job_id]
    # it ends during the first swapped fine-tune: both are scored by their first fine-tune alone
    # (the loss on the second fold), not one cross-fitted and one not
    calls.clear()
    monkeypatch.setattr(search.proxy, "fold_sum", late_from(3))
    first_only = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=60)
    assert first_only.reranked == crossed.reranked == 2 and calls == [0, 0, 1]
    assert crossed.cross_fitted and not first_only.cross_fitted and first_only.as_dict()["cross_fitted"] is False
    losses = {h.job_id: h.proxy_loss for h in first_only.hits if h.proxy_loss is not None}
    assert set(losses) == {h.job_id for h in crossed.hits if h.proxy_loss is not None}
    assert all(losses[h.job_id] != pytest.approx(h.proxy_loss, rel=1e-6) for h in crossed.hits if h.job_id in losses)
    monkeypatch.undo()
    # by default every recalled network is a candidate, fine-tuned cheapest first; with all of them
    # fine-tuned the order is the loss's alone
    seen = []

    def by_job(loaders, *args):
        seen.extend(load.args[2] for load in loaders)
        return [(float(len(r.job_id) + r.job_id.count("a")) + k / 1e3, None) for k, r in enumerate(seen)]

    monkeypatch.setattr(search.proxy, "local_losses", by_job)
    every = search_dataset(store, query, top_k=100, rerank="finetune", budget=0)
    assert every.reranked == every.finetune_candidates == len(source) == len(seen)
    assert [r.flops for r in seen] == sorted(r.flops for r in seen)
    assert [h.proxy_loss for h in every.hits] == sorted(h.proxy_loss for h in every.hits)
    monkeypatch.undo()
    # the training loop itself stops at the first batch past the deadline
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x, y = torch.zeros(8, 3, 8, 8), torch.tensor([0, 1] * 4)
    with pytest.raises(DeadlineReached):
        train(net, x, y, x, y, TrainSettings(epochs=1, image_size=8), torch.device("cpu"), 0, deadline=0.0)
    # the command line says how many were fine-tuned, and refuses a negative budget
    recalled = len(source)
    assert main(["search", zoo, "--dataset", query, "--budget", "1e-9", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert f"re-ranked 0 of {recalled} networks: the budget ended before the first fine-tune (raise --budget" in out
    assert main(["search", zoo, "--dataset", query, "--budget", "0", "--top-k", "3", "--finetune-top", "3"]) == 0
    out = capsys.readouterr().out
    assert "re-ranked 3 of 3 networks: fine-tuned on your images, cheapest first" in out and "budget ended" not in out
    with pytest.raises(SystemExit):
        main(["search", zoo, "--dataset", query, "--budget", "-1"])
    assert "--budget: must be 0 or more" in capsys.readouterr().err


def test_a_score_is_cross_fitted_only_when_every_network_scored_has_both_fine_tunes():
    from tans.retriever.proxy import scores

    folds = ([0, 1, 2], [3, 4])  # the first fine-tune is scored on 2 images, the second on 3
    assert scores([(1.0, 3.0), (2.0, 4.0), (None, None)], folds) == [0.8, 1.2, None]
    assert scores([(1.0, 3.0), (2.0, None), (None, None)], folds) == [0.5, 1.0, None]
    assert scores([(None, 3.0), (2.0, None)], folds) == [None, 1.0]  # a second without its first counts for nothing
    assert scores([(None, None)], folds) == [None]


def test_search_fine_tunes_as_ray_tasks_on_the_cluster_and_ranks_as_here(built_zoo, tiny_datasets):
    """With a Ray address the fine-tunes are Ray tasks (on the fixture's logical GPUs: the GPU
    path, computed on the CPU here); the ranking is the one computed in this process."""
    import ray

    zoo, _ = built_zoo
    store = open_store(zoo)
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    query = str(tiny_datasets / "hue-6")
    here = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=0)
    there = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=0, address="auto")
    assert ray.is_initialized() and ray.cluster_resources()["GPU"] == 2
    assert there.reranked == 2 and [h.job_id for h in there.hits] == [h.job_id for h in here.hits]
    assert [h.proxy_loss for h in there.hits[:2]] == pytest.approx([h.proxy_loss for h in here.hits[:2]], rel=1e-3)
    # the budget reaches the tasks: one that ended before they started leaves the source order
    source = [h.job_id for h in search_dataset(store, query, top_k=100, rerank="source").hits]
    cut = search_dataset(store, query, top_k=100, rerank="finetune", finetune_top=2, budget=1e-9, address="auto")
    assert cut.reranked == 0 and [h.job_id for h in cut.hits] == source


def test_default_search_names_a_missing_checkpoint_and_a_class_that_does_not_decode(built_zoo, tiny_datasets, tmp_path):
    import shutil

    from tans.pipeline.commands.search import query_images
    from tans.zoo_schema.errors import TansError
    from tans.zoo_schema.results import find_result

    zoo, _ = built_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(zoo, copy)
    store = open_store(str(copy))
    if not versions(store):
        run_retrain(store, SETTINGS, 32, None, None, log=lambda *_: None)
    # a query class whose only file is not an image takes no label: the labels stay 0..k-1
    query = tmp_path / "query"
    shutil.copytree(tiny_datasets / "hue-6", query)
    (query / "zz-broken").mkdir()
    (query / "zz-broken" / "a.png").write_bytes(b"not a png")
    images, labels = query_images(str(query), 10, for_finetune=True)
    assert sorted(set(labels)) == list(range(len({*labels})))
    first = search_dataset(store, str(query), top_k=3).hits[0]
    # a checkpoint gone from the zoo stops the default search with the job, the file and the fix
    # (no budget: on a busy machine a 10 s budget may end before that network's turn)
    (copy / find_result(store, first.job_id).checkpoint_uri).unlink()
    with pytest.raises(TansError, match=rf"checkpoint of job {first.job_id} .*could not be loaded.*tans verify"):
        search_dataset(store, str(query), top_k=3, budget=0)


def test_above_the_rank_sample_the_source_scores_come_from_a_seeded_sample(monkeypatch):
    """A search over more networks than RANK_SAMPLE scores the recalled ones and a fixed sample,
    not the whole table: the same scores whichever others are recalled, within a few
    hundredths of the exact ones, and exact at or below the sample size."""
    import torch

    import tans.retriever.search as search_module
    from tans.retriever.model import Retriever
    from tans.retriever.search import Searcher, imageless_score

    rng = np.random.default_rng(0)
    searcher = Searcher.__new__(Searcher)
    torch.manual_seed(0)
    searcher.model = Retriever(8, 8).eval()
    searcher.embeddings = rng.normal(size=(2000, 128)).astype(np.float32)
    searcher.source_fit = rng.uniform(size=2000)
    searcher._sample = searcher._source_rank = None
    q = torch.nn.functional.normalize(torch.randn(128), dim=0)
    top = np.array([3, 17, 500, 1999])
    exact = imageless_score("source", searcher._predicted(q), searcher.source_fit)[0][top]
    assert searcher._scores_at(q, top, "source")[1] == pytest.approx(exact)  # 2,000 <= 65,536: exact
    monkeypatch.setattr(search_module, "RANK_SAMPLE", 500)
    sampled = searcher._scores_at(q, top, "source")[1]
    assert sampled == pytest.approx(exact, abs=0.03) and sampled != pytest.approx(exact, abs=1e-9)
    assert searcher._scores_at(q, top[1:3], "source")[1] == pytest.approx(sampled[1:3])
    assert searcher._scores_at(q, top, "none")[1] == pytest.approx(searcher._predicted(q, top))
