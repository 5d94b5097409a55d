"""s3:// and az:// through obstore (Rust `object_store`): concurrent multipart uploads and streaming
reads without the GIL, one small dependency for both clouds.

Endpoints and credentials come from the usual places, so the same code runs against the clouds and
against emulators: AWS from boto3's chain (env, profile, instance profile; `AWS_ENDPOINT_URL[_S3]`
for another endpoint); Azure from `AZURE_STORAGE_CONNECTION_STRING` (account key and endpoint,
Azurite's form), `AZURE_STORAGE_ACCOUNT_KEY`, else the VM's managed identity."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import obstore

from lepton_infra.data.store_backend import MULTIPART_THRESHOLD, PART_SIZE, SHA_KEY, Backend
from lepton_infra.data.urls import StoreUrl, azure_connection_settings
from lepton_infra.errors import ConfigError

# A missing bucket or refused credential should fail within seconds, not after object_store's
# default three minutes of retries.
_RETRY: Any = {
    "max_retries": 4,
    "backoff": {"init_backoff": timedelta(milliseconds=100)},
    "retry_timeout": timedelta(seconds=30),
}
_CLIENT: Any = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(minutes=10)}


def _s3_store(url: StoreUrl, region: str | None = None) -> Any:
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    session = boto3.Session()
    if session.get_credentials() is None:
        raise ConfigError(
            f"store {url.url!r}: no AWS credentials found (environment, profile or instance profile); "
            "on a node the instance profile provides them"
        )
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config: Any = {"region": region or session.region_name or "us-east-1"}
    client: Any = dict(_CLIENT)
    if endpoint:
        config["endpoint"] = endpoint
        client["allow_http"] = endpoint.startswith("http://")
    return S3Store(
        url.bucket,
        config=config,
        client_options=client,
        retry_config=_RETRY,
        credential_provider=Boto3CredentialProvider(session),
    )


def _azure_store(url: StoreUrl) -> Any:
    from obstore.store import AzureStore

    settings = azure_connection_settings()
    config: Any = {"account_name": url.account}
    client: Any = dict(_CLIENT)
    if settings.get("AccountName") == url.account and settings.get("AccountKey"):
        config["account_key"] = settings["AccountKey"]
        if settings.get("BlobEndpoint"):
            config["endpoint"] = settings["BlobEndpoint"]
            client["allow_http"] = settings["BlobEndpoint"].startswith("http://")
    elif os.environ.get("AZURE_STORAGE_ACCOUNT_KEY"):
        config["account_key"] = os.environ["AZURE_STORAGE_ACCOUNT_KEY"]
    # Otherwise object_store asks the VM's managed identity endpoint for a token.
    return AzureStore(url.bucket, config=config, client_options=client, retry_config=_RETRY)


class ObstoreBackend(Backend):
    def __init__(self, url: StoreUrl, *, region: str | None = None) -> None:
        self._url = url
        self._store = _s3_store(url, region) if url.scheme == "s3" else _azure_store(url)

    def probe(self, prefix: str) -> None:
        stream = obstore.list(self._store, prefix=prefix.rstrip("/") or None, chunk_size=1)
        next(iter(stream), None)

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        size = path.stat().st_size
        obstore.put(
            self._store,
            key,
            path,
            attributes={SHA_KEY: sha256},
            use_multipart=size > MULTIPART_THRESHOLD,
            chunk_size=PART_SIZE,
        )

    def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        obstore.put(
            self._store,
            key,
            data,
            attributes={SHA_KEY: sha256},
            use_multipart=len(data) > MULTIPART_THRESHOLD,
            chunk_size=PART_SIZE,
        )

    def get_into(self, key: str, out: IO[bytes]) -> str | None:
        result = obstore.get(self._store, key)
        stored = result.attributes.get(SHA_KEY)
        for chunk in result.stream(min_chunk_size=1024 * 1024):
            out.write(memoryview(chunk))
        return str(stored) if stored else None

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for batch in obstore.list(self._store, prefix=prefix.rstrip("/") or None, chunk_size=1000):
            for meta in batch:
                yield str(meta["path"]), int(meta["size"])

    def delete(self, key: str) -> None:
        obstore.delete(self._store, key)
