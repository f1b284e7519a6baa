"""Meta-training the retriever over the zoo, and its versions in the zoo (paper B.1).

Each step takes every dataset of the zoo once (the paper: a batch of its 140 datasets):
a query set of `query_per_class` cached train-image features per class, and one of the
dataset's models as the positive. The official code samples that positive uniformly;
`positive = "weighted"` (the default here) samples it with probability proportional to
exp(accuracy / temperature), so the latent space pulls queries toward the models that do
well on them. Evaluation uses the test split's images, unseen in training.

A version is `weights.safetensors` and `models.parquet` (each result's 128-d model
embedding and what search filters and shows) under `retriever/files/<token>/`, published
by `retriever/v<N>/meta.json` (results count, backbone, settings, metrics, and the two
files with their sha256), written create-only after them. The newest version is the one
search uses.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load

from tans.retriever.features import backbone_id, load_backbone, split_features
from tans.retriever.model import Retriever, retriever_loss
from tans.retriever.stale import version_blob, version_file, versions
from tans.zoo_schema import layout
from tans.zoo_schema.errors import TansError
from tans.zoo_schema.manifest import read_manifest
from tans.zoo_schema.results import read_state
from tans.zoo_schema.store import ZooStore


@dataclass(frozen=True)
class RetrainSettings:
    """The retriever's meta-training (paper B.1) and when a build triggers it."""

    after_build: bool = True  # retrain at the end of `tans build` ...
    if_grown: float = 0.1  # ... if the zoo grew by this fraction (<1) or count (>=1)
    steps: int = 300
    lr: float = 1e-3  # paper: 1e-2 (Adam); 1e-3 is steadier on small zoos
    margin: float = 0.2
    lam: float = 1.0  # weight of the predictor's MSE
    query_per_class: int = 10
    positive: str = "weighted"  # "weighted" (toward well-performing models) or "uniform" (official)
    temperature: float = 0.1
    seed: int = 0
    use_functional: bool = True  # ablations: without the functional embedding...
    use_topology: bool = True  # ...or without the topology vector
    backbone: str = ""  # "": the base supernet's largest subnet; or a file (local or
    # s3://): a `tans pretrain-base` supernet or a torchvision ResNet18


@dataclass
class ZooTensors:
    """Everything training needs, gathered from the zoo once."""

    dataset_ids: list[str]
    train_feats: dict[str, tuple[np.ndarray, np.ndarray]]
    test_feats: dict[str, tuple[np.ndarray, np.ndarray]]
    results: list
    backbone: object  # tans.retriever.features.Backbone
    topology: torch.Tensor
    func: torch.Tensor
    accuracy: torch.Tensor
    owner: np.ndarray  # dataset index of each model


def gather(store: ZooStore, image_size: int, backbone_spec: str = "") -> ZooTensors:
    manifest = read_manifest(store)
    state = read_state(store)
    results = [r for r in state.results]
    if not results:
        raise TansError(f"the zoo at {store.uri} has no results to train a retriever on; build it first")
    dataset_ids = sorted({r.dataset_id for r in results})
    backbone = load_backbone(store, manifest, backbone_spec)
    train = {d: split_features(store, manifest, d, "train", image_size, backbone) for d in dataset_ids}
    test = {d: split_features(store, manifest, d, "test", image_size, backbone) for d in dataset_ids}
    index = {d: i for i, d in enumerate(dataset_ids)}
    return ZooTensors(
        dataset_ids,
        train,
        test,
        results,
        backbone,
        torch.tensor([r.topology for r in results], dtype=torch.float32),
        torch.tensor([r.functional_embedding for r in results], dtype=torch.float32),
        torch.tensor([r.accuracy for r in results], dtype=torch.float32),
        np.array([index[r.dataset_id] for r in results]),
    )


def sample_query(feats: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        idx.extend(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return feats[np.array(idx)]


def _model_inputs(t: ZooTensors, s: RetrainSettings):
    topo = t.topology if s.use_topology else torch.zeros_like(t.topology)
    func = t.func if s.use_functional else torch.zeros_like(t.func)
    return topo, func


def train_retriever(t: ZooTensors, s: RetrainSettings, log=print) -> tuple[Retriever, dict]:
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    all_images = torch.from_numpy(np.concatenate([f for f, _ in t.train_feats.values()]))
    model = Retriever(all_images.shape[1], t.func.shape[1])
    model.set_normalization(all_images, t.func)
    topo, func = _model_inputs(t, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    by_dataset = [np.flatnonzero(t.owner == i) for i in range(len(t.dataset_ids))]
    started = time.perf_counter()
    for step in range(s.steps):
        positives = []
        for members in by_dataset:
            if s.positive == "weighted":
                w = np.exp((t.accuracy[members].numpy() - t.accuracy[members].max().item()) / s.temperature)
                positives.append(rng.choice(members, p=w / w.sum()))
            else:
                positives.append(rng.choice(members))
        queries = [torch.from_numpy(sample_query(*t.train_feats[d], s.query_per_class, rng)) for d in t.dataset_ids]
        q = torch.stack([model.encode_query(x) for x in queries])
        pos = torch.tensor(positives)
        m = model.encode_models(topo[pos], func[pos])
        loss, contrastive, mse = retriever_loss(model, q, m, t.accuracy[pos], s.margin, s.lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == s.steps - 1:
            log(
                f"retriever step {step}: loss {loss.item():.4f} (contrastive {contrastive.item():.4f}, "
                f"mse {mse.item():.4f})"
            )
    metrics = evaluate(model, t, s)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    return model.eval(), metrics


def _same_pair_queries(model: Retriever, t: ZooTensors, s: RetrainSettings, queries_per_dataset: int):
    """(dataset index, query embedding, model embeddings, the zoo's models by cosine, rank) of
    each same-pair query: every dataset queried `queries_per_dataset` times with freshly sampled
    test-split images; the rank is the position of the first model of the query's own dataset
    in the cosine ranking of all the zoo's models (paper Fig. 7b)."""
    topo, func = _model_inputs(t, s)
    rng = np.random.default_rng(s.seed + 1)
    with torch.no_grad():
        m = model.encode_models(topo, func)
        for i, d in [(i, d) for i, d in enumerate(t.dataset_ids) for _ in range(queries_per_dataset)]:
            q = model.encode_query(torch.from_numpy(sample_query(*t.test_feats[d], s.query_per_class, rng)))
            order = torch.argsort(m @ q, descending=True).numpy()
            yield i, q, m, order, int(np.flatnonzero(t.owner[order] == i)[0]) + 1


def same_pair_ranks(
    model: Retriever, t: ZooTensors, s: RetrainSettings, queries_per_dataset: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, rank) of each same-pair query (see `_same_pair_queries`)."""
    out = [(i, rank) for i, _, _, _, rank in _same_pair_queries(model, t, s, queries_per_dataset)]
    return np.array([i for i, _ in out]), np.array([r for _, r in out])


def evaluate(model: Retriever, t: ZooTensors, s: RetrainSettings, queries_per_dataset: int = 1) -> dict:
    """Same-pair retrieval with unseen (test-split) query images (`same_pair_ranks`), and
    predictor error on each query's own models and on its cosine top-10."""
    ranks, top10_err, all_err = [], [], []
    with torch.no_grad():
        for i, q, m, order, rank in _same_pair_queries(model, t, s, queries_per_dataset):
            ranks.append(rank)
            own = np.flatnonzero(t.owner == i)
            pred = model.predict(q.expand(len(own), -1), m[own])
            all_err.append(((pred - t.accuracy[own]) ** 2).numpy())
            top = order[:10]
            pred_top = model.predict(q.expand(len(top), -1), m[top])
            top10_err.append(((pred_top - t.accuracy[top]) ** 2).numpy())
    ranks = np.array(ranks)
    return {
        "datasets": len(t.dataset_ids),
        "queries": len(ranks),
        "models": len(t.results),
        "R@1": float((ranks <= 1).mean() * 100),
        "R@5": float((ranks <= 5).mean() * 100),
        "R@10": float((ranks <= 10).mean() * 100),
        "mean_rank": float(ranks.mean()),
        "median_rank": float(np.median(ranks)),
        "predictor_mse_own_models": float(np.concatenate(all_err).mean()),
        "predictor_mse_top10": float(np.concatenate(top10_err).mean()),
    }


# -- versions -----------------------------------------------------------------------------


ENCODE_CHUNK = 65536  # networks encoded at once when a version is saved
MODELS_ROW_GROUP = 65536  # rows of a version's models table per Parquet row group (and per batch read)


def save_version(
    store: ZooStore, model: Retriever, t: ZooTensors, s: RetrainSettings, metrics: dict, image_size: int
) -> int:
    """Write a new version: its files under a fresh prefix first, then the create-only meta.json
    that names them with their sha256 (the commit). A crash leaves unreferenced files, never a
    version mixing two trainings; a concurrent retrain that took the number moves us to the next."""
    import uuid

    from safetensors.torch import save

    topo, func = _model_inputs(t, s)
    with torch.no_grad():  # in chunks: a zoo of a million networks is never one [n, 1,325] batch
        m = (
            np.concatenate(
                [
                    model.encode_models(topo[i : i + ENCODE_CHUNK], func[i : i + ENCODE_CHUNK]).numpy()
                    for i in range(0, len(topo), ENCODE_CHUNK)
                ]
            )
            if len(topo)
            else np.zeros((0, 128), np.float32)
        )
    rows = pa.table(
        {
            "job_id": [r.job_id for r in t.results],
            "dataset_id": [r.dataset_id for r in t.results],
            "arch": [r.arch for r in t.results],
            "accuracy": [r.accuracy for r in t.results],
            "params": [r.params for r in t.results],
            "flops": [r.flops for r in t.results],
            "latency_ms": [r.latency_ms for r in t.results],
            "num_classes": [r.num_classes for r in t.results],
            "checkpoint_uri": [r.checkpoint_uri for r in t.results],
            "embedding": embedding_column(m),
        }
    )
    sink = io.BytesIO()
    compression = {name: "zstd" for name in rows.column_names} | {"embedding": "none"}  # floats: zstd gains ~0 %
    pq.write_table(rows, sink, compression=compression, row_group_size=MODELS_ROW_GROUP, use_dictionary=False)
    blobs = {"weights": save({k: v.contiguous() for k, v in model.state_dict().items()}), "models": sink.getvalue()}
    prefix = layout.retriever_files_prefix(uuid.uuid4().hex[:16])
    files = {}
    for name, blob in blobs.items():
        key = f"{prefix}/{layout.RETRIEVER_FILES[name]}"
        store.write_bytes(key, blob, create_only=True)
        files[name] = {"key": key, "sha256": hashlib.sha256(blob).hexdigest()}
    meta = {
        "results": len(t.results),
        "datasets": len(t.dataset_ids),
        "dataset_ids": sorted(t.dataset_ids),
        "backbone": backbone_id(t.backbone, image_size),
        "backbone_key": t.backbone.key,
        "image_size": image_size,
        "image_dim": int(model.image_mean.shape[0]),
        "func_dim": int(model.func_mean.shape[0]),
        "settings": asdict(s),
        "metrics": metrics,
        "files": files,
        "created_at": datetime.now(UTC).isoformat(),
    }
    version = (versions(store) or [0])[-1] + 1
    while not store.write_bytes(
        layout.retriever_meta_key(version),
        json.dumps({"version": version, **meta}, indent=1).encode(),
        create_only=True,
    ):
        version += 1
    return version


@dataclass(frozen=True)
class RetrieverVersion:
    """One published retriever version: its encoders, its meta.json and its models table
    (one row per zoo network it was trained on, with the network's latent embedding)."""

    number: int
    model: Retriever
    meta: dict
    models: pa.Table | None
    embeddings: np.ndarray | None = None  # [networks, 128], with load_version(embeddings_apart=True)


def load_version(store: ZooStore, version: int | None = None, embeddings_apart: bool = False) -> RetrieverVersion:
    """A version (the newest by default), every file's sha256 checked. With `embeddings_apart`,
    the models table comes without its `embedding` column, which is in `embeddings` as one
    numpy array, decoded a batch at a time (a million networks: 0.5 GB, not 1.9 GB at peak)."""
    available = versions(store)
    if not available:
        raise TansError(f"the zoo at {store.uri} has no trained retriever; run `tans retrain {store.uri}`")
    version = version or available[-1]
    if version not in available:
        raise TansError(f"retriever version v{version} is not in {store.uri}; versions: {available}")
    meta = store.read_json(layout.retriever_meta_key(version))
    model = Retriever(meta["image_dim"], meta["func_dim"])
    model.load_state_dict(load(version_blob(store, version, meta, "weights")))
    if not embeddings_apart:
        models = pq.ParquetFile(pa.BufferReader(version_blob(store, version, meta, "models")))
        return RetrieverVersion(version, model.eval(), meta, models.read())
    with version_file(store, version, meta, "models") as fh:  # checked as it streams: no copy in memory
        models = pq.ParquetFile(fh, pre_buffer=True)  # a row group's columns in one read (one S3 request)
        if _large_groups(models):  # pre-buffering would hold a whole large row group
            models = pq.ParquetFile(fh, pre_buffer=False)
        return _with_embeddings_apart(RetrieverVersion(version, model.eval(), meta, None), models)


EMBEDDING_TYPE = pa.binary(512)  # a model embedding: 128 little-endian float32


def embedding_column(m: np.ndarray) -> pa.FixedSizeBinaryArray:
    """The models table's `embedding` column of the [n, 128] embeddings `m`: one 512-byte
    value each, 128 little-endian float32. Parquet reads it back as a copy (a million rows:
    0.14 s), where a list of floats is decoded value by value (1.1 s)."""
    m = np.ascontiguousarray(m, dtype="<f4").reshape(-1, 128)
    return pa.FixedSizeBinaryArray.from_buffers(EMBEDDING_TYPE, len(m), [None, pa.py_buffer(m.tobytes())])


def embeddings_of(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The [n, 128] float32 embeddings of a models table's `embedding` column: 512-byte
    values, or lists of 128 floats as versions before that format wrote them. A read-only
    view of the column's memory: copy it to write to it."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    bad = TansError("the retriever's table holds a model embedding that is not 128 numbers; run `tans retrain`")
    if column.null_count:
        raise bad
    if column.type == EMBEDDING_TYPE:
        return np.frombuffer(column.buffers()[1], "<f4", 128 * len(column), column.offset * 512).reshape(-1, 128)
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        raise bad
    import pyarrow.compute as pc

    values = column.flatten()
    if values.type != pa.float32() or values.null_count or len(values) != 128 * len(column):
        raise bad
    if len(column) and not pc.all(pc.equal(pc.list_value_length(column), 128)).as_py():  # ragged: 127 + 129
        raise bad
    return np.frombuffer(values.buffers()[1], np.float32, len(values), values.offset * 4).reshape(-1, 128)


def _large_groups(models: pq.ParquetFile) -> bool:
    """Whether a models table has row groups larger than MODELS_ROW_GROUP (versions written
    before it: a million networks in one row group), which are read in batches instead."""
    return any(models.metadata.row_group(g).num_rows > MODELS_ROW_GROUP for g in range(models.metadata.num_row_groups))


def _with_embeddings_apart(loaded: RetrieverVersion, models: pq.ParquetFile) -> RetrieverVersion:
    """`loaded` with its models table (without embeddings) and its embeddings array."""
    version, model, meta = loaded.number, loaded.model, loaded.meta
    n = models.metadata.num_rows
    embeddings, parts, at = np.empty((n, 128), np.float32), [], 0
    if _large_groups(models):
        chunks = (pa.Table.from_batches([b]) for b in models.iter_batches(batch_size=MODELS_ROW_GROUP))
    else:
        chunks = (models.read_row_group(g) for g in range(models.metadata.num_row_groups))  # memory stays bounded
    for group in chunks:
        part = embeddings_of(group["embedding"])
        if at + len(part) > n:
            raise TansError("the retriever's table holds more rows than its footer says; run `tans retrain`")
        embeddings[at : at + len(part)] = part
        at += len(part)
        parts.append(group.drop_columns(["embedding"]))
    schema = models.schema_arrow
    table = pa.concat_tables(parts) if parts else schema.remove(schema.get_field_index("embedding")).empty_table()
    return RetrieverVersion(version, model, meta, table, embeddings)
