"""Node-side results uploader: `python upload.py [--snapshot | --drop-snapshots] STORE_URL PREFIX NAME=PATH ...`.

Shipped with the job; a node has no `lepton_infra`. For `file://` stores it needs only the standard
library. For cloud stores it uses the client that cloud-init installs into the nodes' Python
(`obstore==0.12.1` for s3:// and az://, `google-cloud-storage` for gs://) with the node's own
identity (instance profile, managed identity, service account).

It writes the same layout `lepton_infra.data.Store` reads: every object with its SHA-256 (object
metadata `leptonsha256`; for files a hidden `.<name>.leptonsha256` beside it), each file written
atomically, and `_lepton_manifest.json` last, so a folder without it is known to be incomplete.
Prints one JSON line: {"url": ..., "files": N, "bytes": B} or {"error": ...} (exit 1).

`--snapshot` writes a checkpoint snapshot atomically: into a new generation `PREFIX/g<ns>/`, then
`PREFIX/LATEST.json` names it, then the generation before the replaced one is deleted; a node lost
mid-snapshot leaves the last committed generation untouched (`lepton_infra.data.snapshots` reads
this layout). `--drop-snapshots` deletes `PREFIX/checkpoint/` once the final upload is committed,
so the store keeps one copy of output/, not two.

`fetch(url, cache_root)` is the other direction, for jobs: the agent writes this file beside the
run and names it in `LEPTON_STORE_CLIENT`, and `train.py --data-dir <store URL>` loads it from
there (the job's own interpreter, which has the clients) to get a verified, cached local copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


def _obstore_writer(
    scheme: str, bucket: str, account: str
) -> Callable[[str, str | None, bytes | None, str], None]:
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


def _gcs_writer(bucket_name: str) -> Callable[[str, str | None, bytes | None, str], None]:
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


# --------------------------------------------------------------------------- snapshots

POINTER = "LATEST.json"


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


def _pointer(url: str, key: str) -> dict[str, Any]:
    read, _ = reader_for(url)
    fd, tmp = tempfile.mkstemp(prefix=".pointer-")
    os.close(fd)
    try:
        read(key, tmp)
        with open(tmp, "rb") as fh:
            loaded = json.loads(fh.read())
        return loaded if isinstance(loaded, dict) else {}
    except Exception:  # noqa: BLE001 - no snapshot yet (or an unreadable pointer): start afresh
        return {}
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def snapshot(url: str, prefix: str, sources: dict[str, str]) -> dict[str, object]:
    """Upload `sources` as a new generation under `prefix`, then point LATEST.json at it."""
    write, base = writer_for(url)
    folder = "/".join(p for p in (base, prefix.strip("/")) if p)
    current = _pointer(url, f"{folder}/{POINTER}")
    gen = f"g{time.time_ns()}"
    manifest = upload(url, f"{prefix.strip('/')}/{gen}", sources)
    body = json.dumps({"generation": gen, "previous": current.get("generation"), "committed_at": time.time()})
    write(f"{folder}/{POINTER}", None, body.encode(), hashlib.sha256(body.encode()).hexdigest())
    older = current.get("previous")
    if isinstance(older, str) and older.startswith("g") and "/" not in older:
        remove, _ = remover_for(url)
        remove(f"{folder}/{older}")  # neither the new one nor the one it replaced
    return manifest


def drop_snapshots(url: str, prefix: str) -> None:
    remove, base = remover_for(url)
    remove("/".join(p for p in (base, prefix.strip("/"), "checkpoint") if p))


# --------------------------------------------------------------------------- fetch (data sets)

Reader = Callable[[str, str], None]  # (key, local file to write) -> None


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


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _has_size(path: str, meta: dict[str, Any]) -> bool:
    """A cached file is still there, whole (its content was checked when it was fetched)."""
    return os.path.isfile(path) and os.path.getsize(path) == int(meta.get("size", -1))


def fetch(url: str, cache_root: str) -> str:
    """The local copy of the folder at store URL `url` (as `lepton_infra.data.Store.upload_dir` or
    `upload` wrote it): downloaded once into `cache_root`, every file checked against the SHA-256
    its manifest records, and reused while the store's manifest is unchanged (then nothing is
    downloaded). One process per cache entry downloads (a file lock); the others wait and reuse.
    Raises ValueError naming the URL for a folder without a manifest or a file that fails its check."""
    import fcntl

    read, base = reader_for(url)
    entry = os.path.join(cache_root, hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:24])
    data = os.path.join(entry, "data")
    os.makedirs(entry, exist_ok=True)
    with open(os.path.join(entry, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest_key = "/".join(p for p in (base, MANIFEST) if p)
        prefix = base + "/" if base else ""
        fd, tmp_manifest = tempfile.mkstemp(dir=entry, prefix=".manifest-")
        os.close(fd)
        try:
            try:
                read(manifest_key, tmp_manifest)
            except Exception as exc:
                raise ValueError(
                    f"{url!r} has no readable {MANIFEST} (not an uploaded folder, or its upload never finished): {exc}"
                ) from exc
            with open(tmp_manifest, "rb") as fh:
                body = fh.read()
        finally:
            if os.path.exists(tmp_manifest):  # google-cloud-storage removes it on a failed download
                os.unlink(tmp_manifest)
        digest = hashlib.sha256(body).hexdigest()
        files: dict[str, dict[str, Any]] = json.loads(body).get("files") or {}
        marker = os.path.join(entry, "complete")
        if _read_text(marker) == digest and all(
            _has_size(os.path.join(data, r), m) for r, m in files.items()
        ):
            return data
        if os.path.exists(marker):
            os.unlink(marker)
        staging = tempfile.mkdtemp(dir=entry, prefix=".staging-")

        def one(item: tuple[str, dict[str, Any]]) -> None:
            rel, meta = item
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"{url!r}: manifest names {rel!r}, outside the folder")
            dest = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            read(prefix + rel, dest)
            got = sha256_file(dest)
            if got != meta.get("sha256"):
                raise ValueError(f"{url!r}: {rel} has SHA-256 {got}, its manifest says {meta.get('sha256')}")

        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(one, sorted(files.items())))
            if os.path.exists(data):
                shutil.rmtree(data)
            os.replace(staging, data)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging, ignore_errors=True)
        _atomic(marker, digest.encode())
        return data


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 and argv[1] in ("--snapshot", "--drop-snapshots") else ""
    argv = [argv[0], *argv[2:]] if mode else argv
    if len(argv) < 4:
        print(
            "usage: upload.py [--snapshot|--drop-snapshots] STORE_URL PREFIX NAME=PATH ...", file=sys.stderr
        )
        return 2
    url, prefix = argv[1], argv[2]
    sources = dict(a.split("=", 1) for a in argv[3:])
    try:
        present = {k: v for k, v in sources.items() if os.path.exists(v)}
        manifest = snapshot(url, prefix, present) if mode == "--snapshot" else upload(url, prefix, present)
        if mode == "--drop-snapshots":
            try:
                drop_snapshots(url, prefix)
            except Exception as exc:  # noqa: BLE001 - the result is committed; a leftover copy is not fatal
                print(f"dropping {prefix}/checkpoint failed: {exc}", file=sys.stderr)
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
