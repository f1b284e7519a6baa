"""Whether the newest retriever version still serves the zoo: it is stale when the zoo holds
networks of a dataset the version was not trained on (search could not place a query near
them), or when the zoo's results grew by the threshold since it was trained.

`tans build` retrains at its end when the retriever is stale, `tans retrain --if-stale` does
when it is, `tans status` says whether it is and why, and `tans search` warns."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from tans.zoo_schema import layout
from tans.zoo_schema.errors import StorageError, TansError
from tans.zoo_schema.store import ZooStore, check_key, parquet_table

DEFAULT_IF_GROWN = 0.1  # RetrainSettings.if_grown's default


@dataclass(frozen=True)
class Staleness:
    version: int | None  # the newest version; None: no retriever yet
    stale: bool
    reasons: list[str] = field(default_factory=list)
    unknown_datasets: list[str] = field(default_factory=list)  # with networks in the zoo, not in the version
    results: int = 0  # in the zoo now
    trained_on: int = 0  # results the version was trained on

    @property
    def why(self) -> str:
        return "; ".join(self.reasons) or f"retriever v{self.version} knows every dataset of the zoo"


def versions(store: ZooStore) -> list[int]:
    """Complete retriever versions (meta.json written), ascending."""
    out = set()
    for key in store.list("retriever"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "meta.json" and parts[1].startswith("v"):
            out.add(int(parts[1][1:]))
    return sorted(out)


def version_blob(store: ZooStore, version: int, meta: dict, name: str) -> bytes:
    """One file of a version, its sha256 checked."""
    f = layout.retriever_files(layout.retriever_meta_key(version), meta)[name]
    data = store.read_bytes(f["key"])
    if f["sha256"] and hashlib.sha256(data).hexdigest() != f["sha256"]:
        raise TansError(
            f"retriever v{version}'s {name} file {f['key']} does not match its recorded sha256; "
            f"run `tans verify {store.uri}`, then `tans retrain {store.uri}`"
        )
    return data


HASH_CHUNK = 1 << 24  # bytes the checking thread reads at a time: how long Ctrl-C waits for it


@contextmanager
def version_file(store: ZooStore, version: int, meta: dict, name: str):
    """One file of a version as an open Arrow input file. Its sha256 is computed meanwhile, in
    a thread reading it in chunks through a second handle (a million networks' table is
    0.5 GB: never held in memory for the check, and hashed while it is parsed, 0.4 s saved),
    and checked when the caller is done: a mismatch is the error then, whatever the caller
    read or raised (a damaged file's parse error is reported as the mismatch it is). Version
    files are written once under a fresh prefix. An I/O error is a StorageError."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    f = layout.retriever_files(layout.retriever_meta_key(version), meta)[name]
    fs, base = store.arrow_filesystem()
    path = f"{base}/{check_key(f['key'])}"
    stop = threading.Event()  # set when the caller is interrupted: the thread stops at its next chunk

    def digest() -> str:
        h = hashlib.sha256()
        with fs.open_input_file(path) as fh:
            while not stop.is_set() and (chunk := fh.read(HASH_CHUNK)):
                h.update(chunk)  # releases the GIL: runs beside the parse
        return h.hexdigest()

    def check(future) -> None:
        if f["sha256"] and future.result() != f["sha256"]:
            raise TansError(
                f"retriever v{version}'s {name} file {f['key']} does not match its recorded sha256; "
                f"run `tans verify {store.uri}`, then `tans retrain {store.uri}`"
            )

    try:
        with fs.open_input_file(path) as fh, ThreadPoolExecutor(1) as pool:
            hashed = pool.submit(digest) if f["sha256"] else None
            try:
                yield fh
            except Exception:
                if hashed is not None:
                    check(hashed)  # a damaged file: the mismatch is the error
                raise
            except BaseException:  # Ctrl-C, an interrupted build: do not wait for the whole file
                stop.set()
                raise
            if hashed is not None:
                check(hashed)
    except (FileNotFoundError, IsADirectoryError):
        raise TansError(
            f"retriever v{version}'s {name} file {f['key']} is missing from {store.uri}; "
            f"run `tans verify {store.uri}`, then `tans retrain {store.uri}`"
        ) from None
    except OSError as e:
        raise StorageError(
            f"cannot read {f['key']} of {store.uri} ({type(e).__name__}: {str(e)[:200]}); "
            "check that the storage is reachable, then run the same command again"
        ) from None


def version_datasets(store: ZooStore, version: int, meta: dict) -> set[str]:
    """The dataset ids a version was trained on (its meta, or for versions that predate
    `dataset_ids` there, its models table)."""
    if "dataset_ids" in meta:
        return set(meta["dataset_ids"])
    table = parquet_table(io.BytesIO(version_blob(store, version, meta, "models")), ["dataset_id"])
    return set(table["dataset_id"].to_pylist())


def staleness(
    store: ZooStore, dataset_ids: list[str] | Mapping[str, int] | None = None, if_grown: float = DEFAULT_IF_GROWN
) -> Staleness:
    """The newest version against the zoo's results (`dataset_ids`: each result's dataset, or
    how many results each dataset has; read when not given): stale when a dataset with
    networks is unknown to it, or when results grew by `if_grown` (a fraction < 1 of what it
    was trained on, or a count >= 1)."""
    if dataset_ids is None:
        from tans.zoo_schema.results import results_table

        dataset_ids = results_table(store, embeddings=False)["dataset_id"].to_pylist()
    n = sum(dataset_ids.values()) if isinstance(dataset_ids, Mapping) else len(dataset_ids)
    available = versions(store)
    if not available:
        return Staleness(None, True, [f"no retriever yet ({n} results)"], results=n)
    version = available[-1]
    meta = store.read_json(layout.retriever_meta_key(version))
    trained_on = int(meta["results"])
    unknown = sorted(set(dataset_ids) - version_datasets(store, version, meta))
    need = max(trained_on * if_grown if if_grown < 1 else if_grown, 1)
    grown = n - trained_on
    reasons = []
    if unknown:
        reasons.append(f"{len(unknown)} dataset(s) with networks unknown to v{version}: {', '.join(unknown)}")
    if grown >= need:
        reasons.append(f"zoo grew by {grown} results since v{version} ({trained_on}); threshold {need:g}")
    return Staleness(version, bool(reasons), reasons, unknown, n, trained_on)
