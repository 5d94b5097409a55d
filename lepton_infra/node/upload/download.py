"""Data sets from the store, for jobs: `fetch(url, cache_root)` gives a verified, cached local copy
of an uploaded folder. The agent writes the uploader beside the run and names it in
`LEPTON_STORE_CLIENT`; `train.py --data-dir <store URL>` imports it from there (the job's own
interpreter, which has the clients) and calls `fetch`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .stores import MANIFEST, WORKERS, atomic_write, reader_for, sha256_file


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
        atomic_write(marker, digest.encode())
        return data
