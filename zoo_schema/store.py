"""Opening a zoo's store (`open_store`), the local backend (`LocalStore`) and dataset
sources' file systems (`source_filesystem`). The interface and its contract are in
`tans.zoo_schema.storage` (re-exported here); the S3 backend is `tans.zoo_schema.s3store`.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.storage import S3Settings, ZooStore, check_key, parquet_table

log = logging.getLogger("tans.store")

__all__ = ["LocalStore", "S3Settings", "ZooStore", "check_key", "open_store", "parquet_table", "source_filesystem"]


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
        keys: list[str] = []
        skip = len(str(self.root)) + 1
        folders = [str(base)]
        while folders:  # os.scandir: one system call per folder, not one per file (100,000s of results)
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    elif entry.is_file() and not entry.name.startswith(TEMP_PREFIX):
                        keys.append(entry.path[skip:].replace(os.sep, "/"))
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
