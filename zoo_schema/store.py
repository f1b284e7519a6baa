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

import errno
import io
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tans.zoo_schema.errors import StorageError

log = logging.getLogger("tans.store")
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
        return pq.read_table(io.BytesIO(self.read_bytes(key)))

    def write_table(self, key: str, table: pa.Table, create_only: bool = False) -> bool:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return self.write_bytes(key, sink.getvalue(), create_only=create_only)


_OS_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}
TEMP_PREFIX = ".tmp-"


class LocalStore(ZooStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fail(self, action: str, key: str, e: OSError) -> StorageError:
        cause = _OS_CAUSES.get(e.errno, e.strerror or type(e).__name__)
        fix = {
            errno.ENOSPC: "free space (or move the zoo) and run the same command again",
            errno.EDQUOT: "free space (or move the zoo) and run the same command again",
        }.get(e.errno, f"check that {self.root} is writable, then run the same command again")
        return StorageError(f"cannot {action} {key} in the zoo at {self.uri}: {cause}; {fix}")

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{key} is not in the zoo at {self.uri}") from None
        except IsADirectoryError:
            raise FileNotFoundError(f"{key} is a folder, not an object, in the zoo at {self.uri}") from None

    def write_bytes(self, key: str, data: bytes, create_only: bool = False) -> bool:
        path = self._path(key)
        if create_only and path.is_file():
            return False  # no temp copy of what is there already (on a nearly full disk too)
        tmp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # whole on disk before it becomes visible under its key
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)
            return True
        except OSError as e:
            raise self._fail("write", key, e) from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(TEMP_PREFIX)
        ]
        return sorted(keys)

    def age(self, key: str) -> float:
        try:
            return time.time() - self._path(key).lstat().st_mtime
        except FileNotFoundError:
            raise FileNotFoundError(f"{key} is not in the zoo at {self.uri}") from None

    def leaves_zoo(self, key: str) -> bool:
        real = Path(os.path.realpath(self._path(key)))
        return real != self.root and self.root not in real.parents

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise self._fail("delete", key, e) from None

    def stray_temps(self) -> list[tuple[str, float]]:
        if not self.root.is_dir():
            return []
        now = time.time()
        return sorted(
            (p.relative_to(self.root).as_posix(), now - p.stat().st_mtime)
            for p in self.root.rglob(f"{TEMP_PREFIX}*")
            if p.is_file()
        )

    def delete_stray_temp(self, path: str) -> None:
        folder, _, name = path.rpartition("/")
        if not name.startswith(TEMP_PREFIX):
            raise StorageError(f"{path} is not a temp file")
        (self._path(folder) if folder else self.root).joinpath(name).unlink(missing_ok=True)

    def arrow_filesystem(self):
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), str(self.root)


def open_store(uri: str, s3: S3Settings | None = None) -> ZooStore:
    """The store for a zoo URI: `s3://bucket/prefix` or a local path (`file://` allowed)."""
    if uri.startswith("s3://"):
        from tans.zoo_schema.s3store import S3Store  # boto3: loaded only for a zoo on S3

        return S3Store(uri, s3)
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported zoo URI {uri!r}: use a local path or s3://bucket/prefix")
    return LocalStore(uri[len("file://") :] if uri.startswith("file://") else uri)


def source_filesystem(uri: str, s3: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    if uri.startswith("s3://"):
        s3 = s3 or S3Settings()
        endpoint = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        scheme, host = "https", None
        if endpoint:
            scheme, _, host = endpoint.partition("://")
        fs = pafs.S3FileSystem(
            endpoint_override=host,
            scheme=scheme,
            region=s3.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
        return fs, uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(uri).rstrip("/")
