"""The ship stream the node-side `bootstrap receive` reads: a header (the manifest, so the node
writes each blob straight to its place), the blobs the node lacks, each once, then the pending
files hashed while they are sent, and an end mark. The framing is the node's own
(`lepton_infra/node/bootstrap/`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from lepton_infra.errors import ConfigError
from lepton_infra.node.bootstrap import BLOB_HEAD, MANIFEST_HEAD, PENDING_DIGEST, STREAM_MAGIC
from lepton_infra.workload.hash_cache import stamp_of
from lepton_infra.workload.manifest import Manifest


def write_stream(
    manifest: Manifest,
    missing: Iterable[str],
    agent_source: bytes,
    agent_digest: str,
    out: IO[bytes],
    extra: Mapping[str, Any] | None = None,
    view: Mapping[str, Any] | None = None,
) -> int:
    """Write the stream the node-side `bootstrap receive` reads: the manifest first (so the node
    writes each blob straight to its place in the run's tree), then the missing blobs, each once,
    then the pending files (`view["pending"]`, default the manifest's own view), each read once:
    hashed while sent, its digest after its bytes. `extra` goes into the header (a relayed
    ship's `serve`/`fetch` instructions). Returns the workload content bytes sent (the agent not
    counted)."""
    content = 0
    paths = manifest.paths_by_digest()
    sizes = manifest.blobs()
    view = manifest.node_view() if view is None else view
    write_header(out, {**view, "agent": agent_digest, **(extra or {})})
    for digest in sorted(set(missing)):
        if digest == agent_digest:
            write_blob(out, digest, agent_source)
            continue
        # The manifest's size: a file changed since hashing fails the node's hash check loudly
        # (or ends short here) instead of caching a blob under the wrong name.
        out.write(BLOB_HEAD.pack(bytes.fromhex(digest), sizes[digest]))
        if (data := manifest.kept.get(digest)) is not None and len(data) == sizes[digest]:
            out.write(data)  # read once, while hashing: exactly the bytes the digest names
        else:
            _send_file(paths[digest], sizes[digest], out, None)
        content += sizes[digest]
    for rel, _mode in view.get("pending", []):
        entry = manifest.files[rel]
        out.write(BLOB_HEAD.pack(PENDING_DIGEST, entry.size))
        with _Hasher() as hasher:
            after = _send_file(manifest.root / rel, entry.size, out, hasher)
        if entry.stamp and after != entry.stamp:
            # Written to while it was read: what went out may mix two versions. The node checks
            # the bytes against the digest that follows; the controller refuses to go on.
            raise ConfigError(f"{rel} changed while it was being sent; run again once it is written")
        out.write(hasher.hash.digest())
        manifest.resolve(rel, hasher.hash.hexdigest())
        content += entry.size
    write_end(out)
    return content


class _Hasher:
    """sha256 on a second thread: hashlib releases the GIL, so the hash of one chunk runs beside
    the encryption and sending of the previous one instead of before it."""

    def __init__(self) -> None:
        import queue
        import threading

        self.hash = hashlib.sha256()
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            self.hash.update(chunk)

    def __enter__(self) -> _Hasher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.chunks.put(None)
        self.thread.join()

    def update(self, chunk: bytes) -> None:
        self.chunks.put(chunk)


def _send_file(path: Path, size: int, out: IO[bytes], hasher: Any) -> tuple[int, int, int, int]:
    """Copy `size` bytes of `path` to `out` in 1 MB reads (hashing them when asked); returns the
    file's stamp after reading."""
    left = size
    with open(path, "rb") as f:
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                raise ConfigError(f"{path} shrank while it was being sent; run again")
            if hasher is not None:
                hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        return stamp_of(os.fstat(f.fileno()))


def write_header(out: IO[bytes], node_manifest: dict[str, Any]) -> None:
    data = json.dumps(node_manifest, separators=(",", ":")).encode()
    out.write(STREAM_MAGIC + MANIFEST_HEAD.pack(len(data)) + data)


def write_blob(out: IO[bytes], digest: str, data: bytes) -> None:
    out.write(BLOB_HEAD.pack(bytes.fromhex(digest), len(data)))
    out.write(data)


def write_end(out: IO[bytes]) -> None:
    out.write(BLOB_HEAD.pack(bytes(32), 0))
