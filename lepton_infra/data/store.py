"""Object store client: one small interface over s3://, gs://, az:// and file:// URLs.

Every object is written with its SHA-256 in the object's metadata and verified on the way back.
A single object is never visible half-written: cloud stores publish a PUT (or a completed multipart
upload) atomically, and file:// writes a temporary file and renames it. A folder is published by
uploading its files first and its manifest (names, sizes, SHA-256) last: a folder without a
manifest is not committed and `download_dir` refuses it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lepton_infra.data.store_backend import MULTIPART_THRESHOLD, PART_SIZE, SHA_KEY, Backend
from lepton_infra.data.urls import StoreUrl, parse_store_url
from lepton_infra.errors import ConfigError, LeptonError

__all__ = [
    "MANIFEST",
    "MULTIPART_THRESHOLD",
    "PART_SIZE",
    "SHA_KEY",
    "Backend",
    "ChecksumMismatch",
    "NotCommitted",
    "ObjectInfo",
    "Store",
    "StoreError",
    "open_store",
    "sha256_file",
]

MANIFEST = "_lepton_manifest.json"
DEFAULT_WORKERS = 8
_HASH_CHUNK = 1024 * 1024


class StoreError(LeptonError):
    """The store refused or failed an operation on an object (exit 3: infrastructure)."""

    exit_code = 3


class ChecksumMismatch(StoreError):
    """What came back is not what was written."""


class NotCommitted(StoreError):
    """A folder has no manifest: its upload never finished (or is still running)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key relative to the store URL, and its size in bytes."""

    key: str
    size: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Store:
    """A store URL opened for use. Keys are relative to the URL (`runs/r1/node-0/model.pt`)."""

    def __init__(self, url: StoreUrl, backend: Backend) -> None:
        self.location = url
        self.url = url.url
        self._backend = backend

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ---------------------------------------------------------------- single objects
    def check(self) -> None:
        """Fail now, with a ConfigError naming the URL, if the bucket is missing or unreadable."""
        try:
            self._backend.probe(self.location.key(""))
        except LeptonError:
            raise
        except Exception as exc:  # the SDKs each raise their own types; the message is what matters
            raise ConfigError(f"store {self.url!r} cannot be used: {_short(exc)}") from exc

    def put(self, key: str, data: bytes | Path) -> None:
        """Write one object (bytes, or a local file streamed in parts when large)."""
        full = self.location.key(key)
        try:
            if isinstance(data, Path):
                self._backend.put_file(full, data, sha256_file(data))
            else:
                self._backend.put_bytes(full, bytes(data), hashlib.sha256(data).hexdigest())
        except LeptonError:
            raise
        except Exception as exc:
            raise StoreError(f"store {self.url!r}: writing {key!r} failed: {_short(exc)}") from exc

    def get(self, key: str) -> bytes:
        """Read one object, verified against the SHA-256 written with it."""
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as buf:
            stored = self._get_into(key, buf)
            buf.seek(0)
            data = buf.read()
        self._verify(key, stored, hashlib.sha256(data).hexdigest())
        return data

    def download(self, key: str, dest: Path, *, expect_sha256: str | None = None) -> None:
        """Fetch one object to `dest`. The file appears only once complete and verified."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                stored = self._get_into(key, out)
            actual = sha256_file(tmp)
            self._verify(key, expect_sha256 or stored, actual)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects under `prefix` (a folder: `runs/r1/`), keys relative to the store URL, sorted."""
        full = self.location.key(prefix)
        if prefix and not full.endswith("/"):
            full += "/"
        base = self.location.key("")
        strip = len(base) + 1 if base else 0
        try:
            items = [ObjectInfo(k[strip:], size) for k, size in self._backend.list(full)]
        except LeptonError:
            raise
        except Exception as exc:
            raise StoreError(f"store {self.url!r}: listing {prefix!r} failed: {_short(exc)}") from exc
        return sorted(items, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        parent = key.rsplit("/", 1)[0] if "/" in key else ""
        return any(o.key == key for o in self.list(parent))

    def delete(self, key: str) -> None:
        try:
            self._backend.delete(self.location.key(key))
        except LeptonError:
            raise
        except Exception as exc:
            raise StoreError(f"store {self.url!r}: deleting {key!r} failed: {_short(exc)}") from exc

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list(prefix)
        with ThreadPoolExecutor(DEFAULT_WORKERS) as pool:
            list(pool.map(lambda o: self.delete(o.key), objects))
        return len(objects)

    # ---------------------------------------------------------------- folders
    def upload_dir(self, local: Path, prefix: str, *, workers: int = DEFAULT_WORKERS) -> dict[str, object]:
        """Upload every file under `local` to `prefix/`, in parallel, then commit the manifest.

        Returns the manifest. Readers see the folder as committed only once the manifest exists,
        so a node that dies mid-upload leaves no folder that looks complete."""
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink())
        entries: dict[str, dict[str, object]] = {}

        def one(path: Path) -> tuple[str, dict[str, object]]:
            rel = path.relative_to(local).as_posix()
            digest = sha256_file(path)
            self._put_with_sha(f"{prefix}/{rel}", path, digest)
            return rel, {"size": path.stat().st_size, "sha256": digest}

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for rel, entry in pool.map(one, files):
                entries[rel] = entry
        manifest: dict[str, object] = {
            "version": 1,
            "committed_at": time.time(),
            "files": entries,
            "bytes": sum(int(e["size"]) for e in entries.values()),  # type: ignore[call-overload]
        }
        self.put(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
        return manifest

    def manifest(self, prefix: str) -> dict[str, object] | None:
        """The committed manifest of folder `prefix`, or None if it was never committed."""
        if not self.exists(f"{prefix.rstrip('/')}/{MANIFEST}"):
            return None
        loaded: dict[str, object] = json.loads(self.get(f"{prefix.rstrip('/')}/{MANIFEST}"))
        return loaded

    def download_dir(self, prefix: str, local: Path, *, workers: int = DEFAULT_WORKERS) -> dict[str, object]:
        """Fetch a committed folder to `local`, every file verified against the manifest."""
        prefix = prefix.rstrip("/")
        manifest = self.manifest(prefix)
        if manifest is None:
            raise NotCommitted(
                f"store {self.url!r}: {prefix + '/'!r} has no {MANIFEST}: its upload never finished"
            )
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise StoreError(f"store {self.url!r}: {prefix}/{MANIFEST} is malformed (no 'files')")
        local = Path(local)

        def one(item: tuple[str, dict[str, object]]) -> None:
            rel, entry = item
            dest = (local / rel).resolve()
            if not dest.is_relative_to(local.resolve()):
                raise StoreError(f"store {self.url!r}: manifest entry {rel!r} escapes the folder")
            self.download(f"{prefix}/{rel}", dest, expect_sha256=str(entry["sha256"]))

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(one, sorted(files.items())))
        return manifest

    # ---------------------------------------------------------------- helpers
    def _put_with_sha(self, key: str, path: Path, digest: str) -> None:
        try:
            self._backend.put_file(self.location.key(key), path, digest)
        except LeptonError:
            raise
        except Exception as exc:
            raise StoreError(f"store {self.url!r}: writing {key!r} failed: {_short(exc)}") from exc

    def _get_into(self, key: str, out: IO[bytes]) -> str | None:
        try:
            return self._backend.get_into(self.location.key(key), out)
        except LeptonError:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                raise StoreError(f"store {self.url!r}: no object {key!r}") from exc
            raise StoreError(f"store {self.url!r}: reading {key!r} failed: {_short(exc)}") from exc

    def _verify(self, key: str, expected: str | None, actual: str) -> None:
        if expected is not None and expected != actual:
            raise ChecksumMismatch(
                f"store {self.url!r}: {key!r} has SHA-256 {actual} but was written as {expected}; "
                "the copy is corrupt (nothing was kept)"
            )


def _short(exc: BaseException) -> str:
    """The first line of an SDK's message (obstore appends a multi-line debug dump)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]


def _is_not_found(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in ("NotFoundError", "NotFound", "ResourceNotFoundError", "FileNotFoundError") or (
        "NoSuchKey" in str(exc)
    )


def open_store(url: str, *, region: str | None = None) -> Store:
    """Open `url` with the backend its scheme needs. Cloud SDKs are imported only here, on demand.
    `region`: the bucket's (an inventory's `region`); for S3 it wins over this machine's profile."""
    parsed = parse_store_url(url)
    backend: Backend
    if parsed.scheme == "file":
        from lepton_infra.data.store_local import LocalBackend

        backend = LocalBackend()
    elif parsed.scheme == "gs":
        from lepton_infra.data.store_gcs import GcsBackend

        backend = GcsBackend(parsed)
    else:
        from lepton_infra.data.store_obstore import ObstoreBackend

        backend = ObstoreBackend(parsed, region=region)
    return Store(parsed, backend)
