"""Where things live in a zoo: every key the project writes, and how references resolve.

Keys are relative to the zoo's root, so a zoo can be copied or moved (`cp -a`, `aws s3
sync`) and every reference still resolves against the zoo it is opened at.

- Checkpoints are referenced from result rows by their zoo-relative key
  (`checkpoints/<job_id>/<sha256>.safetensors`). Rows written before schema version 2 hold
  an absolute URI; they are read as the same key of the zoo at hand when it has that key
  (the zoo was moved or copied). A replayed result points into its source zoo with an
  absolute URI, and resolves there.
- Dataset shards are written under a fresh prefix per ingestion,
  `data/<dataset_id>/<write_id>/{train,test}/part-NNNNN.parquet`, and published by the
  create-only dataset record that names the prefix; records of schema version 1 name no
  prefix and their shards are `data/<dataset_id>/{train,test}/...`.
- Retriever versions are published by a create-only `retriever/v<N>/meta.json` that names
  its files (written first, under `retriever/files/<token>/`) with their sha256; version-1
  layouts keep the files next to the meta.
"""

from __future__ import annotations

import re

from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.store import ZooStore, check_key, open_store

MANIFEST = "manifest.json"
LEASE = "journal/lease.json"
SNAPSHOT = "results_index/snapshot.parquet"  # the one-file snapshot of older zoos (still read)
SNAPSHOT_INDEX = "results_index/index.json"  # the snapshot's segments
SEGMENTS = "results_index/segments"
SEALED = "results_sealed"  # sealed segments: committed results out of their per-job files (`sealed`)
DATASETS_SNAPSHOT = "results_index/datasets.parquet"  # a cache of the dataset records
POOL_PROFILES = "pool/profiles.parquet"
PREDICTOR_FITS = "predictor/fits"  # the accuracy predictor's fits that proposed (`predictor_fit_key`)
RESULTS = "results"  # prefixes listed by readers
DATASETS = "datasets"
FAILURES = "journal/failures"
STARTS = "journal/starts"
BUILDS = "journal/builds"
QUARANTINE = "quarantine"


# The objects `tans verify --clean-orphans` may delete when nothing references them: only
# names tans itself writes. Anything else found in the zoo's folders is left alone.
OWN_OBJECTS = re.compile(
    r"checkpoints/[0-9a-f]{24}/[0-9a-f]{64}\.safetensors"
    r"|data/[a-z0-9-]+/(?:[0-9a-f]{16}/)?(?:train|test)/part-\d{5}\.parquet"
    r"|retriever/(?:files/[0-9a-f]+|v\d+)/(?:weights\.safetensors|models\.parquet)"
    r"|results_index/segments/[0-9a-f]{32}(?:\.embeddings)?\.parquet"
    r"|results_sealed/[0-9a-f]{32}(?:\.embeddings\.parquet|\.parquet|\.json)"
)
TOKEN = re.compile(r"[0-9a-f]{32}")


def is_own_object(key: str) -> bool:
    """Whether `key` has the name of a checkpoint, shard or retriever file tans writes."""
    return OWN_OBJECTS.fullmatch(key) is not None


def predictor_fit_key(size: int, rows: int) -> str:
    """Where a build keeps the predictor's fit on the first `size` results (in commit order)
    whose rows, inputs and seed hash to `rows` (64 bits): a resumed build reads the largest
    that still matches its results instead of waiting for a fit."""
    return f"{PREDICTOR_FITS}/{size:09d}-{rows:016x}.safetensors"


PREDICTOR_FIT = re.compile(re.escape(PREDICTOR_FITS) + r"/(\d{9})-([0-9a-f]{16})\.safetensors")


def base_weights_key(sha256: str) -> str:
    """A supernet's weights copied into the zoo (content-addressed)."""
    return f"base/{sha256}.safetensors"


def query_features_key(backbone_tag: str, dataset_id: str, split: str) -> str:
    """Cached backbone features of a dataset split's sampled images."""
    return f"query_features/{backbone_tag}/{dataset_id}/{split}.safetensors"


def failure_key(job_id: str, entry: str) -> str:
    return f"{FAILURES}/{job_id}/{entry}.json"


def start_key(job_id: str, entry: str) -> str:
    return f"{STARTS}/{job_id}/{entry}.json"


def journal_key(kind: str, entry: str) -> str:
    return f"journal/{kind}/{entry}.json"


def quarantine_keys(key: str) -> tuple[str, str]:
    """(where a set-aside object goes, where its reason goes)."""
    return f"{QUARANTINE}/{key}", f"{QUARANTINE}/{key}.reason.json"


def segment_keys(token: str) -> tuple[str, str]:
    """(scalar columns, functional embeddings) of one segment of the results snapshot."""
    return f"{SEGMENTS}/{token}.parquet", f"{SEGMENTS}/{token}.embeddings.parquet"


def sealed_keys(token: str) -> tuple[str, str, str]:
    """(manifest, scalar columns, functional embeddings) of one sealed segment."""
    return f"{SEALED}/{token}.json", f"{SEALED}/{token}.parquet", f"{SEALED}/{token}.embeddings.parquet"


def sealed_token(key: str) -> str | None:
    """The token of a sealed segment's manifest key; None for any other key."""
    m = re.fullmatch(rf"{SEALED}/([0-9a-f]{{32}})\.json", key)
    return m[1] if m else None


def result_key(dataset_id: str, job_id: str) -> str:
    return f"{RESULTS}/dataset={dataset_id}/{job_id}.parquet"


_RESULT_KEY = re.compile(rf"{RESULTS}/dataset=([a-z0-9][a-z0-9-]*)/([A-Za-z0-9][A-Za-z0-9_-]*)\.parquet")


def result_key_parts(key: str) -> tuple[str, str] | None:
    """(dataset_id, job_id) of a key `result_key` writes (dataset ids are plain [a-z0-9-],
    job ids hex); None for any other key."""
    m = _RESULT_KEY.fullmatch(key)
    return (m[1], m[2]) if m else None


def checkpoint_key(job_id: str, sha256: str) -> str:
    return f"checkpoints/{job_id}/{sha256}.safetensors"


def dataset_key(dataset_id: str) -> str:
    return f"{DATASETS}/{dataset_id}.parquet"


def data_prefix(dataset_id: str, write_id: str) -> str:
    """The shards of one ingestion ('' write id: the version-1 layout)."""
    return f"data/{dataset_id}/{write_id}" if write_id else f"data/{dataset_id}"


def retriever_meta_key(version: int) -> str:
    return f"retriever/v{version}/meta.json"


def retriever_files_prefix(token: str) -> str:
    return f"retriever/files/{token}"


RETRIEVER_FILES = {"weights": "weights.safetensors", "models": "models.parquet"}


def retriever_files(meta_key: str, meta: dict) -> dict[str, dict]:
    """{name: {"key", "sha256"}} of a retriever version's files, from its meta.json.

    Version-1 metas name no files: theirs sit next to the meta, without a sha256."""
    if "files" in meta:
        files = meta["files"]
        if set(files) != set(RETRIEVER_FILES) or not all(check_key(f["key"]) for f in files.values()):
            raise ValueError(f"{meta_key} names files {sorted(files)}, expected {sorted(RETRIEVER_FILES)}")
        return files
    folder = meta_key.rsplit("/", 1)[0]
    return {name: {"key": f"{folder}/{file}", "sha256": ""} for name, file in RETRIEVER_FILES.items()}


def is_relative_ref(ref: str) -> bool:
    return "://" not in ref and not ref.startswith("/")


def checkpoint_location(store: ZooStore, ref: str) -> tuple[ZooStore, str]:
    """(store, key) of a result row's checkpoint reference, resolved against `store`.

    A relative key is in this zoo. An absolute URI (older rows, replayed rows) is this zoo's
    key when it names this zoo or when this zoo has that key (a moved or copied zoo);
    otherwise it is in the zoo the URI names, opened without creating anything.
    """
    if is_relative_ref(ref):
        return store, check_key(ref)
    head, sep, tail = ref.partition("/checkpoints/")
    if not sep:
        raise StorageError(f"{ref} is not a zoo checkpoint reference")
    key = check_key(f"checkpoints/{tail}")
    if head.rstrip("/") == store.uri.rstrip("/") or store.exists(key):
        return store, key
    return open_store(head, getattr(store, "settings", None)), key


def checkpoint_uri(store: ZooStore, ref: str) -> str:
    """The full location of a checkpoint reference, for people to read."""
    holder, key = checkpoint_location(store, ref)
    return holder.uri_of(key)
