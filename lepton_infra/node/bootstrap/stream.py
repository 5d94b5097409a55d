"""The ship stream and the receiver that writes it into a run's tree.

`receive` reads one stream on stdin: STREAM_MAGIC, the manifest as length-prefixed JSON, then
`<sha256><size><bytes>` per missing blob, then `<PENDING_DIGEST><size><bytes><sha256>` per file
the manifest lists as `pending` (the controller hashed it while sending it: one read), then 32 zero
bytes: a framing with no per-file header to parse, unlike tar. Node 0's blob server (relay.py)
answers a peer with the same blob frames. Every blob's hash is checked before it is kept. The
controller writes this framing with these very constants (lepton_infra.workload.manifest)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct

from .cache import cache_dir, seal
from .files import SMALL_BYTES, write_all, write_small
from .tree import Tree, by_digest, check_manifest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any

STREAM_MAGIC = b"LEPTON-SHIP-1\n"
MANIFEST_HEAD = struct.Struct(">Q")
BLOB_HEAD = struct.Struct(">32sQ")  # raw sha256, size; an all-zero digest ends the stream
# In place of a digest: the next of the manifest's `pending` files, its sha256 after its bytes.
PENDING_DIGEST = b"\xff" * 32
CHUNK = 4 << 20  # bytes per read of a blob: few Python round trips for a large file


def read_exact(stream: IO[bytes], n: int) -> bytes:
    """Exactly `n` bytes of the stream; ValueError when it ends first."""
    data = stream.read(n)
    if len(data) != n:
        raise ValueError(f"workload stream ended early ({len(data)} of {n} bytes)")
    return data


def blob_chunks(stream: IO[bytes], size: int) -> Iterator[bytes]:
    """A blob of `size` bytes as CHUNK-sized reads; ValueError when the stream ends inside it."""
    left = size
    while left:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            raise ValueError(f"workload stream ended inside a blob ({size - left} of {size} bytes)")
        left -= len(chunk)
        yield chunk


def read_header(stream: IO[bytes]) -> dict[str, Any]:
    """The stream's magic and manifest; ValueError for anything else, or an unsafe path."""
    if stream.read(len(STREAM_MAGIC)) != STREAM_MAGIC:
        raise ValueError("not a workload stream (bad magic)")
    (length,) = MANIFEST_HEAD.unpack(read_exact(stream, MANIFEST_HEAD.size))
    manifest = json.loads(read_exact(stream, length).decode("utf-8"))
    if not isinstance(manifest, dict):
        raise ValueError("workload stream: manifest is not an object")
    check_manifest(manifest)
    return manifest


class Receiver:
    """Takes blob frames (from the controller's stream, or from node 0 over the cluster network)
    and puts each blob in its first place in the run's tree, or in the cache."""

    def __init__(self, workload: str, manifest: dict[str, Any], sizes: dict[str, int] | None = None) -> None:
        self.tree = Tree(workload)
        self.manifest = manifest
        manifest.setdefault("files", {})
        self.by_digest = by_digest(manifest.get("files", {}))
        self.pending = [(str(rel), int(mode)) for rel, mode in manifest.get("pending", [])]
        self.placed: set[str] = set()
        # Known sizes (prepare checked them against the cache) spare `commands._finish` a stat per blob.
        self.sizes: dict[str, int] = dict(sizes or {})
        self.received = 0
        self.bytes = 0

    def take(self, stream: IO[bytes]) -> None:
        """Read blob frames until the end frame. A small blob for the tree is checked in memory,
        then written with open/write/close only (a Python file object adds fstat, ioctl and lseek:
        6 syscalls a file instead of 3); a corrupted one is never written. Writer threads were
        tried: a futex handoff per file cost more than it overlapped (bench/RESULTS.md)."""
        while True:
            raw, size = BLOB_HEAD.unpack(read_exact(stream, BLOB_HEAD.size))
            if raw == bytes(32):
                return
            if raw == PENDING_DIGEST:
                self._take_pending(stream, size)
                continue
            digest = raw.hex()
            self.sizes[digest] = size
            targets = self.by_digest.get(digest, [])
            # Blobs go only to the run's tree now (one write), to the cache after the answer
            # (settle); the agent and blobs only other nodes need go straight to the cache.
            to_cache = not targets or digest == self.manifest.get("agent")
            dsts = [self.tree.path(r) for r, _ in targets[:1]]
            if size <= SMALL_BYTES and not to_cache:
                data = read_exact(stream, size)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise ValueError(
                        f"blob {digest} arrived corrupted (sha256 {hashlib.sha256(data).hexdigest()})"
                    )
                write_small(dsts[0], data)
            else:
                _receive_blob(blob_chunks(stream, size), digest, size, dsts, to_cache)
            if targets:
                self.placed.add(digest)
            self.received += 1
            self.bytes += size

    def _take_pending(self, stream: IO[bytes], size: int) -> None:
        """The next pending file: its bytes go to its place, its digest follows them; it must be
        the hash of what arrived, or nothing of it stays."""
        if not self.pending:
            raise ValueError("workload stream: a pending file beyond the manifest's list")
        rel, mode = self.pending.pop(0)
        dst = self.tree.path(rel)
        hasher = hashlib.sha256()
        try:
            with open(dst, "wb") as out:
                write_all([out], blob_chunks(stream, size), hasher, size)
            said = read_exact(stream, 32)
            if said != hasher.digest():
                raise ValueError(f"pending file {rel!r} arrived corrupted (sha256 {hasher.hexdigest()})")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        digest = said.hex()
        self.manifest["files"][rel] = [digest, mode]
        self.by_digest.setdefault(digest, []).insert(0, (rel, mode))
        self.sizes[digest] = size
        self.placed.add(digest)
        self.received += 1
        self.bytes += size

    def check_complete(self) -> None:
        if self.pending:
            raise ValueError(f"workload stream ended before pending file {self.pending[0][0]!r}")
        self.manifest.pop("pending", None)


def _receive_blob(chunks: Iterator[bytes], digest: str, size: int, dsts: list[str], to_cache: bool) -> None:
    """Stream one blob to its first place in the tree (and the cache, when asked), hashing as it
    goes; a corrupted blob leaves nothing behind."""
    tmp = os.path.join(cache_dir(), f".{digest}.{os.getpid()}.tmp") if to_cache else None
    outs = [open(p, "wb") for p in ([dsts[0]] if dsts else []) + ([tmp] if tmp else [])]
    hasher = hashlib.sha256()
    try:
        write_all(outs, chunks, hasher, size)
    finally:
        for out in outs:
            out.close()
    if hasher.hexdigest() != digest:
        for p in ([dsts[0]] if dsts else []) + ([tmp] if tmp else []):
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise ValueError(f"blob {digest} arrived corrupted (sha256 {hasher.hexdigest()})")
    if tmp is not None:
        # Sealed, then an atomic rename: a concurrent run never sees half a blob.
        seal(tmp)
        os.replace(tmp, os.path.join(cache_dir(), digest))
