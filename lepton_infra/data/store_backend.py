"""What every object-store backend implements (`Backend`), and the constants the backends share.

The backends (store_local, store_gcs, store_obstore) import this module and nothing from `store.py`,
whose `open_store` imports them on demand: no module imports its own importer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import IO

# Metadata key holding the SHA-256. Letters only: Azure metadata names must be identifiers, and some
# HTTP proxies drop headers whose names contain underscores.
SHA_KEY = "leptonsha256"
# Above this size an object is uploaded in parts (S3/Azure multipart, GCS resumable): parts are sent
# concurrently and a failed part is retried alone.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024


class Backend(ABC):
    """What one storage service must do. Keys here are full keys (the URL's prefix included)."""

    @abstractmethod
    def probe(self, prefix: str) -> None:
        """Raise if the bucket/container is missing or we may not read it."""

    @abstractmethod
    def put_file(self, key: str, path: Path, sha256: str) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, sha256: str) -> None: ...

    @abstractmethod
    def get_into(self, key: str, out: IO[bytes]) -> str | None:
        """Write the object's bytes to `out`; return the SHA-256 stored with it (None if absent)."""

    @abstractmethod
    def list(self, prefix: str) -> Iterable[tuple[str, int]]:
        """(full key, size) of every object under `prefix` (a folder prefix, or '' for all)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...
