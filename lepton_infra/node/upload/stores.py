"""Where the uploader reads and writes: one writer, reader and remover per store scheme (file://
with the standard library alone; s3:// and az:// through obstore, gs:// through
google-cloud-storage, both imported only when such a store is used), with the node's own identity
or the emulator endpoints the environment names (tests).

Objects carry their SHA-256 (object metadata `leptonsha256`; for files a hidden
`.<name>.leptonsha256` beside it) and every file is written atomically, the layout
`lepton_infra.data.Store` reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

MANIFEST = "_lepton_manifest.json"  # written last: a folder without it is incomplete
SHA_KEY = "leptonsha256"
PART_SIZE = 8 * 1024 * 1024
WORKERS = 8
Writer = Callable[[str, "str | None", "bytes | None", str], None]  # (key, file, or bytes, sha256)
Reader = Callable[[str, str], None]  # (key, local file to write) -> None


def sha256_file(path: str) -> str:
    """The file's SHA-256, hex (what the manifest and the objects' metadata record)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(dest: str, data: bytes | None = None, source: str | None = None) -> None:
    """`dest` gets `data` (or the file `source`) whole or not at all: a temporary beside it,
    synced, then renamed over it."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.lepton-tmp-", dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                with open(source, "rb") as src:
                    while chunk := src.read(1024 * 1024):
                        out.write(chunk)
            else:
                out.write(data or b"")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _file_writer(root: str) -> Writer:
    if not os.path.isdir(root):
        raise SystemExit(json.dumps({"error": f"store directory {root!r} does not exist"}))

    def write(key: str, source: str | None, data: bytes | None, sha: str) -> None:
        dest = os.path.join(root, key)
        sidecar = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.leptonsha256")
        atomic_write(sidecar, sha.encode())
        atomic_write(dest, data, source)

    return write


def _obstore_store(scheme: str, bucket: str, account: str) -> Any:
    """An obstore S3Store/AzureStore for the bucket/container; the node's identity, or the
    emulator endpoints the environment names (tests)."""
    from obstore.store import AzureStore, S3Store

    store: Any
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = {"endpoint": endpoint} if endpoint else {}
        client = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
        store = S3Store(bucket, config=config, client_options=client)  # type: ignore[arg-type]  # env fills the rest
    else:
        conn = dict(
            p.split("=", 1)
            for p in os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";")
            if "=" in p
        )
        config = {"account_name": account}
        client = {}
        if conn.get("AccountName") == account and conn.get("AccountKey"):
            config["account_key"] = conn["AccountKey"]
            if conn.get("BlobEndpoint"):
                config["endpoint"] = conn["BlobEndpoint"]
                client["allow_http"] = conn["BlobEndpoint"].startswith("http://")
        store = AzureStore(bucket, config=config, client_options=client)  # type: ignore[arg-type]
    return store


def _obstore_writer(scheme: str, bucket: str, account: str) -> Writer:
    import obstore

    store = _obstore_store(scheme, bucket, account)

    def write(key: str, source: str | None, data: bytes | None, sha: str) -> None:
        payload: Any = open(source, "rb") if source is not None else data  # noqa: SIM115 (closed below)
        try:
            size = os.path.getsize(source) if source is not None else len(data or b"")
            obstore.put(
                store,
                key,
                payload,
                attributes={SHA_KEY: sha},
                use_multipart=size > PART_SIZE,
                chunk_size=PART_SIZE,
            )
        finally:
            if source is not None:
                payload.close()  # type: ignore[union-attr]

    return write


def _gcs_bucket(bucket_name: str) -> Any:
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        client = storage.Client(project="lepton-emulator", credentials=AnonymousCredentials())
    else:
        client = storage.Client()
    return client.bucket(bucket_name)


def _gcs_writer(bucket_name: str) -> Writer:
    bucket = _gcs_bucket(bucket_name)

    def write(key: str, source: str | None, data: bytes | None, sha: str) -> None:
        size = os.path.getsize(source) if source is not None else len(data or b"")
        blob = bucket.blob(key, chunk_size=PART_SIZE if size > PART_SIZE else None)
        blob.metadata = {SHA_KEY: sha}
        if source is not None:
            blob.upload_from_filename(source)
        else:
            blob.upload_from_string(data or b"")

    return write


def writer_for(url: str) -> tuple[Writer, str]:
    """The writer for `url` and the key prefix inside its bucket."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme == "file":
        return _file_writer(path), ""
    segments = [s for s in path.split("/") if s]
    if parts.scheme == "az":
        return _obstore_writer("az", segments[0], parts.netloc), "/".join(segments[1:])
    if parts.scheme == "s3":
        return _obstore_writer("s3", parts.netloc, ""), "/".join(segments)
    if parts.scheme == "gs":
        return _gcs_writer(parts.netloc), "/".join(segments)
    raise SystemExit(json.dumps({"error": f"unknown store scheme in {url!r}"}))


def remover_for(url: str) -> tuple[Callable[[str], None], str]:
    """A function deleting every object under a folder key, and the key prefix inside the bucket."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    segments = [s for s in path.split("/") if s]
    if parts.scheme == "file":
        return (lambda key: shutil.rmtree(os.path.join(path, key), ignore_errors=True)), ""
    if parts.scheme in ("s3", "az"):
        import obstore

        if parts.scheme == "s3":
            store, base = _obstore_store("s3", parts.netloc, ""), "/".join(segments)
        else:
            store, base = _obstore_store("az", segments[0], parts.netloc), "/".join(segments[1:])

        def remove_objects(key: str) -> None:
            for batch in obstore.list(store, key.rstrip("/") + "/"):
                paths = [meta["path"] for meta in batch]
                if paths:
                    obstore.delete(store, paths)

        return remove_objects, base
    if parts.scheme == "gs":
        bucket = _gcs_bucket(parts.netloc)

        def remove_blobs(key: str) -> None:
            for blob in bucket.list_blobs(prefix=key.rstrip("/") + "/"):
                blob.delete()

        return remove_blobs, "/".join(segments)
    raise ValueError(f"unknown store scheme in {url!r}; allowed: s3://, gs://, az://, file://")


def reader_for(url: str) -> tuple[Reader, str]:
    """The reader for `url` (what `writer_for` writes) and the key prefix inside its bucket."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    segments = [s for s in path.split("/") if s]
    if parts.scheme == "file":

        def read_file(key: str, dest: str) -> None:
            with open(os.path.join(path, key), "rb") as src, open(dest, "wb") as out:
                while chunk := src.read(1024 * 1024):
                    out.write(chunk)

        return read_file, ""
    if parts.scheme in ("s3", "az"):
        import obstore

        if parts.scheme == "s3":
            store, base = _obstore_store("s3", parts.netloc, ""), "/".join(segments)
        else:
            store, base = _obstore_store("az", segments[0], parts.netloc), "/".join(segments[1:])

        def read_object(key: str, dest: str) -> None:
            with open(dest, "wb") as out:
                for chunk in obstore.get(store, key).stream(min_chunk_size=PART_SIZE):
                    out.write(chunk)

        return read_object, base
    if parts.scheme == "gs":
        bucket = _gcs_bucket(parts.netloc)

        def read_blob(key: str, dest: str) -> None:
            bucket.blob(key).download_to_filename(dest)

        return read_blob, "/".join(segments)
    raise ValueError(f"unknown store scheme in {url!r}; allowed: s3://, gs://, az://, file://")
