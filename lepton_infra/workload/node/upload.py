"""Node-side results uploader: `python upload.py STORE_URL PREFIX DIR [NAME=SUBDIR ...]`.

Shipped with the job; a node has no `lepton_infra`. For `file://` stores it needs only the standard
library. For cloud stores it uses the client that cloud-init installs into the nodes' Python
(`obstore==0.12.1` for s3:// and az://, `google-cloud-storage` for gs://) with the node's own
identity (instance profile, managed identity, service account).

It writes the same layout `lepton_infra.data.Store` reads: every object with its SHA-256 (object
metadata `leptonsha256`; for files a hidden `.<name>.leptonsha256` beside it), each file written
atomically, and `_lepton_manifest.json` last, so a folder without it is known to be incomplete.
Prints one JSON line: {"url": ..., "files": N, "bytes": B} or {"error": ...} (exit 1)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

MANIFEST = "_lepton_manifest.json"
SHA_KEY = "leptonsha256"
PART_SIZE = 8 * 1024 * 1024
WORKERS = 8


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic(dest: str, data: bytes | None = None, source: str | None = None) -> None:
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


def _file_writer(root: str) -> Callable[[str, str | None, bytes | None, str], None]:
    if not os.path.isdir(root):
        raise SystemExit(json.dumps({"error": f"store directory {root!r} does not exist"}))

    def write(key: str, source: str | None, data: bytes | None, sha: str) -> None:
        dest = os.path.join(root, key)
        sidecar = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.leptonsha256")
        _atomic(sidecar, sha.encode())
        _atomic(dest, data, source)

    return write


def _obstore_writer(
    scheme: str, bucket: str, account: str
) -> Callable[[str, str | None, bytes | None, str], None]:
    import obstore
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


def _gcs_writer(bucket_name: str) -> Callable[[str, str | None, bytes | None, str], None]:
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        client = storage.Client(project="lepton-emulator", credentials=AnonymousCredentials())
    else:
        client = storage.Client()
    bucket = client.bucket(bucket_name)

    def write(key: str, source: str | None, data: bytes | None, sha: str) -> None:
        size = os.path.getsize(source) if source is not None else len(data or b"")
        blob = bucket.blob(key, chunk_size=PART_SIZE if size > PART_SIZE else None)
        blob.metadata = {SHA_KEY: sha}
        if source is not None:
            blob.upload_from_filename(source)
        else:
            blob.upload_from_string(data or b"")

    return write


def writer_for(url: str) -> tuple[Callable[[str, str | None, bytes | None, str], None], str]:
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


def upload(url: str, prefix: str, sources: dict[str, str]) -> dict[str, object]:
    """Upload each source dir (or file) under `prefix/<name>/`, then the manifest; returns it."""
    write, base = writer_for(url)
    root = "/".join(p for p in (base, prefix.strip("/")) if p)
    files: list[tuple[str, str]] = []
    for name, source in sources.items():
        if os.path.isfile(source):
            files.append((name, source))
            continue
        for dirpath, _dirs, names in os.walk(source):
            for fname in names:
                full = os.path.join(dirpath, fname)
                if os.path.isfile(full) and not os.path.islink(full):
                    rel = os.path.relpath(full, source).replace(os.sep, "/")
                    files.append((f"{name}/{rel}" if name else rel, full))

    def one(item: tuple[str, str]) -> tuple[str, dict[str, object]]:
        rel, full = item
        sha = sha256_file(full)
        write(f"{root}/{rel}", full, None, sha)
        return rel, {"size": os.path.getsize(full), "sha256": sha}

    with ThreadPoolExecutor(WORKERS) as pool:
        entries = dict(pool.map(one, sorted(files)))
    manifest: dict[str, object] = {
        "version": 1,
        "committed_at": time.time(),
        "files": entries,
        "bytes": sum(int(e["size"]) for e in entries.values()),  # type: ignore[call-overload]
    }
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    write(f"{root}/{MANIFEST}", None, body, hashlib.sha256(body).hexdigest())
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: upload.py STORE_URL PREFIX NAME=PATH [NAME=PATH ...]", file=sys.stderr)
        return 2
    url, prefix = argv[1], argv[2]
    sources = dict(a.split("=", 1) for a in argv[3:])
    try:
        manifest = upload(url, prefix, {k: v for k, v in sources.items() if os.path.exists(v)})
    except SystemExit:
        raise
    except Exception as exc:  # reported, not raised: the caller records it and the job's status stands
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 1
    print(
        json.dumps(
            {
                "url": f"{url.rstrip('/')}/{prefix.strip('/')}",
                "files": len(manifest["files"]),  # type: ignore[arg-type]
                "bytes": manifest["bytes"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
