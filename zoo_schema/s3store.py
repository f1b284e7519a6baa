"""The zoo store on S3 (`s3://bucket/prefix`): create-only puts through boto3, dataset reads
through pyarrow.fs, and outages waited out (see `S3Store`). The contract is the one of
`tans.zoo_schema.storage`, tested over both backends by tests/test_store_contract.py."""

from __future__ import annotations

import logging
import os
import time

from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.storage import S3Settings, ZooStore, check_key

log = logging.getLogger("tans.store")


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
