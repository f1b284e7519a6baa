"""The zoo store: one small interface over a local directory or an S3 prefix.

Contract (checked for both backends by tests/test_store_contract.py):
- keys are relative, '/'-separated, made of safe segments; nothing escapes the zoo's root;
- `write_bytes(key, data, create_only=True)` is atomic and exactly-once: it returns False
  and changes nothing when the key exists (local: hard-link of a temp file; S3:
  `If-None-Match: *`), so a second writer of the same result is a no-op;
- a plain write replaces the object atomically; a reader never sees half an object;
- `list(prefix)` returns every key below a prefix, sorted;
- reading never writes: opening a store, reading, listing and `exists` create nothing
  (a local zoo's directories appear with its first write);
- a write that fails (disk full, no permission, read-only file system) leaves nothing
  behind and raises a `StorageError` that names the cause;
- `stray_temps()` lists what interrupted writes left behind (local temp files; S3 puts
  are whole or absent, so none there);
- `age(key)` is the seconds since the object was last written;
- `leaves_zoo(key)` is True when the key is reached through a link out of the zoo's root
  (a local symlinked folder); nothing deletes such a key on the zoo's behalf;
- errors of reachability and credentials are `StorageError`s that say what to check,
  and never carry the credentials themselves.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from tans.zoo_schema.errors import StorageError

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")


def check_key(key: str) -> str:
    """Refuse keys that could escape the zoo root or hold odd characters."""
    parts = key.split("/")
    bad = [p for p in parts if not _SEGMENT.match(p) or p in (".", "..")]
    if not key or bad:
        raise StorageError(
            f"refusing zoo key {key!r}: segments {bad} are not plain names "
            "(letters, digits, _ . = + -; no '..', no leading '/')"
        )
    return key


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is. Credentials are never here: they come from the environment / AWS chain."""

    endpoint_url: str | None = None
    region: str | None = None
    retry_seconds: float = 300.0  # how long an unreachable endpoint is waited out mid-build


class ZooStore:
    """A zoo at one URI. Use `open_store(uri)`; the backend methods are below."""

    uri: str

    # -- backend primitives -------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes, create_only: bool = False) -> bool:
        """Write `data` (bytes or any bytes-like buffer, e.g. a pyarrow Buffer) under `key`,
        whole or not at all; with create_only, only when the key does not exist yet (False
        when it does)."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def arrow_filesystem(self):
        """(pyarrow filesystem, base path) for reading the zoo with pyarrow.dataset."""
        raise NotImplementedError

    def age(self, key: str) -> float:
        """Seconds since the object under `key` was written (FileNotFoundError if absent)."""
        raise NotImplementedError

    def leaves_zoo(self, key: str) -> bool:
        """Whether `key` is reached through a link that leaves the zoo's root."""
        return False

    def stray_temps(self) -> list[tuple[str, float]]:
        """(path, age in seconds) of temp files interrupted writes left behind."""
        return []

    def delete_stray_temp(self, path: str) -> None:
        raise NotImplementedError

    # -- typed helpers, shared by all backends ------------------------------------------
    def uri_of(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    def read_json(self, key: str):
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj, create_only: bool = False) -> bool:
        data = json.dumps(obj, indent=1, sort_keys=True).encode()
        return self.write_bytes(key, data, create_only=create_only)

    def read_table(self, key: str) -> pa.Table:
        return parquet_table(io.BytesIO(self.read_bytes(key)))

    def write_table(self, key: str, table: pa.Table, create_only: bool = False) -> bool:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return self.write_bytes(key, sink.getvalue(), create_only=create_only)


def parquet_table(source, columns: list[str] | None = None, filesystem=None) -> pa.Table:
    """One Parquet file (a path on `filesystem`, or a file object) as a table: the file's own
    reader, not `pyarrow.parquet.read_table`, whose dataset layer imports pandas (a quarter
    of a second of every read-only command)."""
    if filesystem is None:
        return pq.ParquetFile(source).read(columns=columns)
    with filesystem.open_input_file(source) as fh:
        return pq.ParquetFile(fh).read(columns=columns)
