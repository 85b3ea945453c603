"""Any S3-compatible endpoint (AWS S3, MinIO, SeaweedFS, R2) through boto3.

boto3 is blocking, so every call runs on a small thread pool owned by the store.
botocore's "standard" retry mode retries throttling and 5xx with exponential
backoff and jitter; longer outages are the uploader's business (it queues).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tchat.storage.base import (
    LifecycleResult,
    NotFound,
    ObjectInfo,
    StoreError,
    cache_control_for,
    content_type_for,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")
LIFECYCLE_RULE_ID = "tchat-expire-"


class S3Store:
    name = "s3"

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        access_key: str = "",
        secret_key: str = "",
        max_workers: int = 8,
        max_attempts: int = 4,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 15.0,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3")
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                max_pool_connections=max_workers,
                s3={"addressing_style": "path"},
            ),
        )

    async def _call(self, fn: Callable[..., T], *args: Any, _key: str = "", **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(str(kwargs.get("Key", _key))) from None
            raise StoreError(f"s3 {self.endpoint}/{self.bucket}: {code}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"s3 {self.endpoint}: {exc}") from exc

    async def open(self) -> None:
        """Create the bucket if it is missing."""
        try:
            await self._call(self._client.head_bucket, Bucket=self.bucket)
        except NotFound:
            await self._call(self._client.create_bucket, Bucket=self.bucket)
        except StoreError as exc:
            if "403" in str(exc):
                raise
            await self._call(self._client.create_bucket, Bucket=self.bucket)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None, cache_control: str = ""
    ) -> None:
        await self._call(
            self._client.put_object,
            Bucket=self.bucket,
            Key=validate_key(key),
            Body=data,
            ContentType=content_type or content_type_for(key),
            CacheControl=cache_control or cache_control_for(key, data),
        )

    async def put_file(
        self, key: str, path: Path, *, content_type: str | None = None, cache_control: str = ""
    ) -> int:
        # Segments are a few hundred KB: one PUT, no multipart.
        data = await asyncio.to_thread(path.read_bytes)
        await self.put_bytes(key, data, content_type=content_type, cache_control=cache_control)
        return len(data)

    def presigned_url(self, key: str, ttl_s: int) -> str:
        """A GET URL for `key` valid `ttl_s` seconds (SigV4 query; signed locally, ≤ 7 days)."""
        validate_key(key)
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=max(1, min(ttl_s, 7 * 86400)),
        )
        return url

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=validate_key(key))["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return await self._call(read, _key=key)

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = await self._call(
                self._client.head_object, Bucket=self.bucket, Key=validate_key(key)
            )
        except NotFound:
            return None
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            content_type=resp.get("ContentType") or content_type_for(key),
            cache_control=resp.get("CacheControl") or "",
        )

    def _list_sync(self, prefix: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        out: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
        return out

    async def list(self, prefix: str) -> list[ObjectInfo]:
        validate_prefix(prefix)
        rows = await self._call(self._list_sync, prefix)
        # LIST carries no headers; they are derived the same way they were set.
        return sorted(
            (
                ObjectInfo(
                    key=row["Key"],
                    size=int(row["Size"]),
                    content_type=content_type_for(row["Key"]),
                    cache_control=cache_control_for(row["Key"]),
                )
                for row in rows
            ),
            key=lambda info: info.key,
        )

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete the whole bucket; give a prefix")
        keys = [row["Key"] for row in await self._call(self._list_sync, prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            resp = await self._call(
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = resp.get("Errors") or []
            if errors:
                raise StoreError(f"s3: {len(errors)} objects not deleted, first: {errors[0]}")
        return len(keys)

    async def apply_expiration(self, prefix: str, days: int) -> LifecycleResult:
        """Put a prefix-scoped expiration rule (keeping other rules) and read it back."""
        validate_prefix(prefix)
        if days < 1:
            raise ValueError("lifecycle expiration needs at least 1 day")
        rule_id = LIFECYCLE_RULE_ID + (prefix.strip("/").replace("/", "-") or "all")
        try:
            current = await self._call(
                self._client.get_bucket_lifecycle_configuration, Bucket=self.bucket
            )
            rules = [r for r in current.get("Rules", []) if r.get("ID") != rule_id]
        except StoreError as exc:
            if "NoSuchLifecycleConfiguration" not in str(exc):
                return _unsupported(prefix, days, exc)
            rules = []
        except NotFound:
            rules = []
        rules.append(
            {
                "ID": rule_id,
                "Filter": {"Prefix": prefix},
                "Status": "Enabled",
                "Expiration": {"Days": days},
            }
        )
        try:
            await self._call(
                self._client.put_bucket_lifecycle_configuration,
                Bucket=self.bucket,
                LifecycleConfiguration={"Rules": rules},
            )
            back = await self._call(
                self._client.get_bucket_lifecycle_configuration, Bucket=self.bucket
            )
        except StoreError as exc:
            return _unsupported(prefix, days, exc)
        for rule in back.get("Rules", []):
            rule_prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix"))
            if (
                rule.get("ID") == rule_id
                and rule_prefix == prefix
                and rule.get("Status") == "Enabled"
                and rule.get("Expiration", {}).get("Days") == days
            ):
                return LifecycleResult(
                    True, True, prefix, days, f"rule {rule_id} read back from {self.bucket}"
                )
        return LifecycleResult(
            True, False, prefix, days, f"rule {rule_id} not found when read back: {back}"
        )


def _unsupported(prefix: str, days: int, exc: Exception) -> LifecycleResult:
    return LifecycleResult(
        False, False, prefix, days, f"lifecycle rules not available here ({exc})"
    )
