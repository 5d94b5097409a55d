"""What the controller already hashed: sha256 of a workload's files by their stat, so an
unchanged file is not read again, and the bytes of small files read while hashing (sent from
memory, read once)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

# A small file hashed now keeps its bytes (up to KEEP_TOTAL in all) for the stream, so it is read
# once: what is sent is exactly what was hashed, and sending opens no file a second time.
KEEP_BYTES = 256 << 10
KEEP_TOTAL = 64 << 20


class KeptBytes(dict[str, bytes]):
    """Contents read while hashing, by digest, and their total size."""

    total = 0

    def add(self, digest: str, data: bytes) -> None:
        if digest not in self:
            self[digest] = data
            self.total += len(data)

    def drop(self) -> None:
        """Forget them (after the ship: the manifest lives as long as the run)."""
        self.clear()
        self.total = 0


def sha256_file(path: str | Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def default_hash_cache_dir() -> Path:
    """Where the controller keeps what it already hashed ($XDG_CACHE_HOME/lepton-infra/hashes)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lepton-infra" / "hashes"


class HashCache:
    """sha256 of files by (size, mtime_ns, ctime_ns, inode), one JSON file per workload folder.

    A file whose size, mtime, ctime and inode are all unchanged is not read again (git's index does
    the same). ctime cannot be set from user space, so an edit that restores the old mtime
    (`touch -r`, `os.utime`) still shows. A file modified within RACY_S of being hashed is not
    remembered: a second write in the same timestamp tick could leave its stat unchanged."""

    RACY_S = 2.0

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.fresh: dict[str, list[Any]] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self.entries = data
            except (OSError, ValueError):
                pass

    @classmethod
    def for_root(cls, root: Path, cache_dir: Path | None) -> HashCache:
        if cache_dir is None:
            return cls(None)
        key = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:32]
        return cls(Path(cache_dir) / f"{key}.json")

    def digest(
        self,
        rel: str,
        path: str | Path,
        st: os.stat_result,
        defer_bytes: int | None = None,
        keep: KeptBytes | None = None,
    ) -> str:
        """The file's sha256: remembered, or read now; "" (pending) for a file of `defer_bytes`
        or more that is not remembered (it is hashed while it is sent). A small file read now
        leaves its bytes in `keep` (by digest) while it has room."""
        stamp = stamp_of(st)
        old = self.entries.get(rel) or []
        seen = isinstance(old, list) and len(old) == 5 and old[:4] == list(stamp)
        if seen and old[4]:
            digest = str(old[4])
        elif not seen and defer_bytes is not None and st.st_size >= defer_bytes:
            # Never seen like this: likely new content, so the node likely lacks it too.
            return ""
        elif keep is not None and st.st_size <= KEEP_BYTES and keep.total < KEEP_TOTAL:
            with open(path, "rb") as f:
                data = f.read(KEEP_BYTES + 1)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) == st.st_size:  # else it changed since its stat: read it again to send
                keep.add(digest, data)
        else:
            digest = sha256_file(path)
        self.remember(rel, list(stamp), digest)
        return digest

    def remember(self, rel: str, stamp: list[int], digest: str) -> None:
        """A racy file is remembered as seen but not trusted (digest ""): the next look hashes
        it before sending, so a node that has it already is not sent it again."""
        racy = time.time() - stamp[1] / 1e9 <= self.RACY_S
        self.fresh[rel] = [*stamp, "" if racy else digest]

    def save(self) -> None:
        """Keep only the files seen this time; never fail a run over the cache (it is an optimisation)."""
        if self.path is None or self.fresh == self.entries:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.fresh, separators=(",", ":")), encoding="utf-8")
            tmp.replace(self.path)
            self.entries = dict(self.fresh)
        except OSError:
            pass


def stamp_of(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
