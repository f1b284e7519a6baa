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

    def key_of(self, uri: str) -> str:
        """The key of a URI inside this zoo (the inverse of uri_of)."""
        prefix = self.uri.rstrip("/") + "/"
        if not uri.startswith(prefix):
            raise StorageError(f"{uri} is not inside the zoo at {self.uri}")
        return check_key(uri[len(prefix) :])

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


class S3Store(ZooStore):
    """s3://bucket/prefix through boto3 (create-only puts) and pyarrow.fs (dataset reads).

    While a build runs, an unreachable endpoint is waited out: every operation retries
    connection failures and 5xx answers with exponential backoff for up to
    `S3Settings.retry_seconds`, logging the pause, before it gives up. Opening the store
    does not wait, so a wrong endpoint is reported at once.
    """

    def __init__(self, uri: str, settings: S3Settings | None = None):
        import boto3
        from botocore.config import Config

        self.settings = settings or S3Settings()
        rest = uri[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise StorageError(f"zoo URI {uri!r} names no bucket; use s3://BUCKET/PREFIX")
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        endpoint = self.settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        self.endpoint_url = endpoint
        self.region = self.settings.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=self.region,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=10),
        )
        self._call("open", "", lambda: self.client.head_bucket(Bucket=self.bucket), retry=False)

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _code(e: Exception) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def _transient(self, e: Exception) -> bool:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        if isinstance(e, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)):
            return True
        if isinstance(e, ClientError):
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status >= 500 or self._code(e) in ("SlowDown", "RequestTimeout")
        return False

    def _call(self, action: str, key: str, fn, retry: bool = True):
        """Run one S3 operation with outage retries; map failures to StorageError."""
        deadline = time.monotonic() + (self.settings.retry_seconds if retry else 0)
        delay = 0.5
        while True:
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - classified below
                if retry and self._transient(e) and time.monotonic() < deadline:
                    log.warning(
                        "S3 at %s unavailable to %s %s (%s); retrying in %.1fs",
                        self.endpoint_url or "AWS",
                        action,
                        key or self.uri,
                        type(e).__name__,
                        delay,
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 8.0)
                    continue
                raise self._fail(action, key, e) from None

    def _fail(self, action: str, key: str, e: Exception) -> Exception:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"s3://{self.bucket}/{self._full(key) if key else self.prefix}"
        endpoint = self.endpoint_url or "AWS default endpoint"
        code = self._code(e)
        if code in ("NoSuchKey", "404", "NotFound") and key:
            return FileNotFoundError(f"{key} is not in the zoo at {self.uri}")
        if isinstance(e, NoCredentialsError):
            return StorageError(
                f"no AWS credentials found to {action} {where}; set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile"
            )
        if self._transient(e) or isinstance(e, EndpointConnectionError):
            return StorageError(
                f"cannot reach S3 endpoint {endpoint} to {action} {where}; "
                "check the endpoint (s3.endpoint_url / AWS_ENDPOINT_URL) and that "
                "the service is up, then run the same command again"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return StorageError(
                f"S3 at {endpoint} refused our credentials ({code}) to "
                f"{action} {where}; check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or the profile in use"
            )
        if code in ("NoSuchBucket", "404"):
            return StorageError(
                f"bucket {self.bucket!r} does not exist at {endpoint}; create it first (aws s3 mb s3://{self.bucket})"
            )
        if isinstance(e, ClientError):
            return StorageError(f"S3 error {code} to {action} {where} at {endpoint}")
        return StorageError(f"S3 failure to {action} {where} at {endpoint}: {type(e).__name__}")

    def read_bytes(self, key: str) -> bytes:
        full = self._full(key)
        return self._call("read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())

    def write_bytes(self, key: str, data: bytes, create_only: bool = False) -> bool:
        full = self._full(key)
        extra = {"IfNoneMatch": "*"} if create_only else {}

        def put():
            from botocore.exceptions import ClientError

            try:
                body = data if isinstance(data, (bytes, bytearray)) else bytes(data)  # boto wants bytes
                self.client.put_object(Bucket=self.bucket, Key=full, Body=body, **extra)
                return True
            except ClientError as e:
                # 412: the key exists. 409: a concurrent conditional write won the race.
                if create_only and self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                raise

        return self._call("write", key, put)

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            self._call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
            return True
        except FileNotFoundError:
            return False

    def list(self, prefix: str) -> list[str]:
        full = self._full(prefix) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0

        def pages():
            keys = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call("list", prefix, pages))

    def age(self, key: str) -> float:
        full = self._full(key)
        head = self._call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        return time.time() - head["LastModified"].timestamp()

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def arrow_filesystem(self):
        import pyarrow.fs as pafs

        scheme = "https"
        endpoint = None
        if self.endpoint_url:
            scheme, _, endpoint = self.endpoint_url.partition("://")
        fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme=scheme, region=self.region)
        return fs, f"{self.bucket}/{self.prefix}".rstrip("/")


def open_store(uri: str, s3: S3Settings | None = None) -> ZooStore:
    """The store for a zoo URI: `s3://bucket/prefix` or a local path (`file://` allowed)."""
    if uri.startswith("s3://"):
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
