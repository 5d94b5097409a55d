"""Node-side bootstrap: reserve a run directory and receive a workload into the content cache.

Sent as `python -c "<this source>" prepare|receive ...` because it has to work on a node where
nothing was shipped yet. Standard library only. Layout it maintains on the node:

    ~/.lepton/cache/<sha256>             one sealed, read-only file per distinct content
    ~/.lepton/trees/<tree-id>/           a spare, never-used copy of a whole tree (see below)
    ~/.lepton/runs/<run-id>/workload/    the run's own copy of the workload (cwd of the job)
    ~/.lepton/runs/<run-id>/.agent/agent.py

`prepare` (JSON request on stdin) creates the run directory with one `mkdir`, which is atomic, so a
run id can never be taken twice on a node; it answers which blobs the cache lacks and, on node 0,
a free rendezvous port. `receive RUN_DIR` reads one stream on stdin (STREAM_MAGIC, the manifest as
length-prefixed JSON, then `<sha256><size><bytes>` per missing blob, then
`<PENDING_DIGEST><size><bytes><sha256>` per file the manifest lists as `pending` (the controller
hashed it while sending it: one read), then 32 zero bytes: a framing with no per-file header to
parse, unlike tar), verifies every blob's hash and writes the run's tree.

The cache is immutable, whatever a job does:
- A run never gets a cache file (no hard links into the cache): its tree is its own files, written
  straight from the stream, copied (or reflinked, where the filesystem can) from the cache, or a
  spare tree renamed into place. A job, even as root, can edit only its own copy.
- Cache files are sealed when stored: read-only and mtime set to SEAL_NS. Any write to one
  changes its mtime, so a broken seal means "re-hash before use": a blob is trusted by its hash,
  never by its size, and a blob whose hash no longer matches is removed and sent again.
- Filling the cache with the small files written straight to the run's tree, and building the
  spare tree for the next run of the same tree, happen after `receive` has answered, in a
  detached process (off the critical path). Filling hashes what it copies: a file the job already
  changed does not match its digest and is not cached.
- A spare tree is handed to exactly one run (an atomic rename), so an unchanged tree costs one
  rename instead of one file per path; it is checked (every file's size and seal) before use."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import struct
import sys
import time

# Every node command starts an interpreter and imports this module: typing, collections.abc,
# socket and shutil cost ~18 ms of a ~116 ms `prepare` there (python -X importtime), so they are
# imported only where used (the annotations are strings, never evaluated).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import IO, Any

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SEAL_NS = 1_000_000_000 * 10**9  # 2001-09-09T01:46:40Z: the mtime of every sealed cache file
THREADED_WRITE_BYTES = 8 << 20  # blobs this large are written by a second thread (see _write_all)
PIPE_BYTES = 1 << 20  # stdin pipe capacity asked for: 64 KB pipes cost a wakeup per 64 KB
CHUNK = 4 << 20  # bytes per read of a blob: few Python round trips for a large file
SMALL_BYTES = 256 << 10  # a blob this small is read whole, checked, then written with 3 syscalls
SPARE_TREES = 3  # spare trees kept per node (the most recently built)
SPARE_WAIT_S = 10.0  # how long `receive` waits for a spare tree that is being built
STREAM_MAGIC = b"LEPTON-SHIP-1\n"
BLOB_HEAD = struct.Struct(">32sQ")  # raw sha256, size; an all-zero digest ends the stream
# In place of a digest: the next of the manifest's `pending` files, its sha256 after its bytes.
PENDING_DIGEST = b"\xff" * 32
MANIFEST_HEAD = struct.Struct(">Q")
FETCH_TIMEOUT_S = 120.0  # a peer's fetch from node 0 with no byte for this long has failed
FETCH_IDLE_S = 60.0  # node 0's blob server ends after this long without a request
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (copy-on-write), btrfs/xfs


def lepton_home() -> str:
    # $HOME, not the passwd entry: local pool nodes share a user but each has its own HOME.
    return os.path.join(os.path.expanduser("~"), ".lepton")


def _cache() -> str:
    return os.path.join(lepton_home(), "cache")


def _trees() -> str:
    return os.path.join(lepton_home(), "trees")


def _port_free(addr: str, port: int) -> bool:
    import socket

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((addr, port))
        except OSError:
            return False
    return True


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _hash_file(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _seal(path: str) -> None:
    os.chmod(path, 0o444)
    os.utime(path, ns=(SEAL_NS, SEAL_NS))


def cached(digest: str, size: int) -> bool:
    """Is a good copy of this blob in the cache? The seal (read-only, mtime SEAL_NS, right size)
    says nobody wrote it since it was verified; without it the blob is re-hashed, and removed if
    its content is not what its name says."""
    path = os.path.join(_cache(), digest)
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False
    if st.st_mtime_ns == SEAL_NS and not st.st_mode & 0o222:
        return True
    try:
        good = _hash_file(path) == digest
    except OSError:
        good = False
    with contextlib.suppress(OSError):
        if good:
            _seal(path)
        else:
            os.unlink(path)
    return good


def _install(install: Any) -> None:
    """Keep this bootstrap as a module under ~/.lepton/bin, so later commands import it (bytecode
    cached) instead of compiling it from the command line; best effort."""
    if not isinstance(install, dict) or not re.match(
        r"^lepton_bootstrap_[0-9a-f]{16}$", str(install.get("name"))
    ):
        return
    target = os.path.join(lepton_home(), "bin", f"{install['name']}.py")
    if os.path.exists(target):
        return
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(install.get("source", "")))
        os.replace(tmp, target)


def prepare(request: dict[str, Any], *, settle_in_background: bool = True) -> dict[str, Any]:
    home = lepton_home()
    runs = os.path.join(home, "runs")
    os.makedirs(runs, exist_ok=True)
    os.makedirs(_cache(), exist_ok=True)
    _install(request.get("install"))
    run_dir = os.path.join(runs, request["run_id"])
    try:
        os.mkdir(run_dir)
    except FileExistsError:
        return {"home": os.path.expanduser("~"), "run_dir": run_dir, "exists": True}
    blobs = {str(d): int(size) for d, size in request.get("blobs", {}).items()}
    tree = request.get("tree")
    shipped = None
    missing: list[str] = []
    if isinstance(tree, dict) and not tree.get("pending"):
        _check_manifest(tree)
        workload = os.path.join(run_dir, "workload")
        agent = str(tree.get("agent"))
        # An unchanged tree with a spare copy ready: that copy is checked file by file (size
        # and seal), so the cache need not be; write nothing, answer at once.
        if cached(agent, blobs.get(agent, -1)) and _take_spare(tree_id(tree), workload, tree["files"], blobs):
            shipped = _finish(run_dir, tree, _Receiver(workload, tree, blobs), 0, settle_in_background, True)
    if shipped is None:
        missing = [d for d, size in sorted(blobs.items()) if not cached(d, size)]
    if isinstance(tree, dict) and not tree.get("pending") and shipped is None and not missing:
        # Nothing to send: write the run's tree now and spare the controller a `receive` (one
        # command and one interpreter start less per node for an unchanged tree).
        receiver = _Receiver(os.path.join(run_dir, "workload"), tree, blobs)
        shipped = _finish(run_dir, tree, receiver, 0, settle_in_background)
    port = None
    probe = request.get("port_probe")
    if probe:
        # Walk upwards from the run's preferred port; another run's rendezvous may hold it.
        for candidate in range(probe["port"], probe["port"] + 64):
            if _port_free(probe["addr"], candidate):
                port = candidate
                break
    return {
        "home": os.path.expanduser("~"),
        "run_dir": run_dir,
        "exists": False,
        "missing": missing,
        "port": port,
        "shipped": shipped,
    }


# --------------------------------------------------------------------------- the tree


def _safe_rel(rel: str) -> str:
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        raise ValueError(f"unsafe path in manifest: {rel!r}")
    return norm


def _safe_link(rel: str, target: str) -> str:
    """A link target must stay inside the tree: relative, its `..` only leading and no more of them
    than the link's depth (the controller writes exactly that form)."""
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    rest = parts[ups:]
    depth = len(_safe_rel(rel).split("/")) - 1
    if target.startswith("/") or ".." in rest or ups > depth or not target:
        raise ValueError(f"unsafe link in manifest: {rel!r} -> {target!r}")
    return target


def tree_id(manifest: dict[str, Any]) -> str:
    """One id for a tree's exact paths, contents, modes and links (not the agent)."""
    view = {"files": manifest.get("files", {}), "links": manifest.get("links", {})}
    return hashlib.sha256(json.dumps(view, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _copy(src: str, dst: str, mode: int | None = None, seal: bool = False) -> None:
    """dst becomes a file of its own with src's content (then `mode` and the seal's mtime, when
    asked, set on the open file). A small file is read whole and written: 6-8 syscalls instead
    of ~14 through Python file objects and a reflink attempt, and a node copies 2,000 of them for
    every spare tree (bench/RESULTS.md). A larger one: a reflink where the filesystem shares
    extents copy-on-write, else a kernel-side copy."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, SMALL_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) <= SMALL_BYTES:  # a short read of a regular file is its end
        _write_small(dst, data, mode, seal)
        return
    _copy_large(src, dst)
    if mode is not None:
        os.chmod(dst, mode)
    if seal:
        os.utime(dst, ns=(SEAL_NS, SEAL_NS))


def _copy_large(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass
        _kernel_copy(fin, fout)


def _kernel_copy(fin: IO[bytes], fout: IO[bytes]) -> None:
    size = os.fstat(fin.fileno()).st_size
    offset = 0
    while offset < size:
        try:
            sent = os.sendfile(fout.fileno(), fin.fileno(), offset, size - offset)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            fin.seek(offset)
            import shutil

            shutil.copyfileobj(fin, fout, 1 << 20)
            return
        if sent == 0:
            break
        offset += sent


class _Tree:
    """Writes one tree's files under `base`, creating each parent directory once."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.dirs: set[str] = set()

    def path(self, rel: str) -> str:
        dst = os.path.join(self.base, _safe_rel(rel))
        parent = os.path.dirname(dst)
        if parent not in self.dirs:
            os.makedirs(parent, exist_ok=True)
            self.dirs.add(parent)
        return dst

    def links(self, links: dict[str, str]) -> None:
        """Links last, so no file is ever written through one; none may sit below another."""
        for rel, target in sorted(links.items()):
            dst = self.path(rel)
            for i in range(len(rel.split("/")) - 1):
                ancestor = os.path.join(self.base, *rel.split("/")[: i + 1])
                if os.path.islink(ancestor):
                    raise ValueError(f"unsafe link in manifest: {rel!r} lies under link {ancestor!r}")
            os.symlink(_safe_link(rel, target), dst)


def _by_digest(files: dict[str, list[Any]]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for rel, (digest, mode) in sorted(files.items()):
        out.setdefault(str(digest), []).append((rel, int(mode)))
    return out


def _mode(mode: int) -> int:
    return (mode & 0o777) | 0o600 or 0o644  # the run's own copy: its owner may always write it


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ValueError(f"workload stream ended early ({len(data)} of {n} bytes)")
    return data


def _chunks(stream: IO[bytes], size: int) -> Iterator[bytes]:
    left = size
    while left:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            raise ValueError(f"workload stream ended inside a blob ({size - left} of {size} bytes)")
        left -= len(chunk)
        yield chunk


def _write_all(outs: Sequence[IO[bytes]], chunks: Iterator[bytes], hasher: Any, size: int) -> None:
    """Hash and write every chunk. A large blob is written by a second thread while this one
    reads and hashes the next chunk (both release the GIL), so the disk and the hash overlap."""
    if size < THREADED_WRITE_BYTES:
        for chunk in chunks:
            hasher.update(chunk)
            for out in outs:
                out.write(chunk)
        return
    import queue
    import threading

    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
    failed: list[BaseException] = []

    def writer() -> None:
        while (chunk := pending.get()) is not None:
            try:
                for out in outs:
                    out.write(chunk)
            except BaseException as exc:  # noqa: BLE001 - reported by the reader below
                failed.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for chunk in chunks:
            hasher.update(chunk)
            pending.put(chunk)
            if failed:
                break
    finally:
        pending.put(None)
        thread.join()
    if failed:
        raise failed[0]


def _receive_blob(chunks: Iterator[bytes], digest: str, size: int, dsts: list[str], to_cache: bool) -> None:
    """Stream one blob to its first place in the tree (and the cache, when asked), hashing as it
    goes; a corrupted blob leaves nothing behind."""
    tmp = os.path.join(_cache(), f".{digest}.{os.getpid()}.tmp") if to_cache else None
    outs = [open(p, "wb") for p in ([dsts[0]] if dsts else []) + ([tmp] if tmp else [])]
    hasher = hashlib.sha256()
    try:
        _write_all(outs, chunks, hasher, size)
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
        _seal(tmp)
        os.replace(tmp, os.path.join(_cache(), digest))


def _write_small(path: str, data: bytes, mode: int | None = None, seal: bool = False) -> None:
    """Create `path` with `data` (then `mode` and the seal's mtime on the open file, when asked)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if mode is not None:
            os.fchmod(fd, mode)
        if seal:
            os.utime(fd, ns=(SEAL_NS, SEAL_NS))
    finally:
        os.close(fd)


def _take_spare(tid: str, workload: str, files: dict[str, list[Any]], sizes: dict[str, int]) -> bool:
    """Rename the spare tree for `tid` into `workload` (waiting a little for one being built); True
    if it is there and every file in it still has its size and seal."""
    spare = os.path.join(_trees(), tid)
    if not os.path.isdir(spare) and not os.path.exists(spare + ".lock"):
        return False
    with _locked(spare + ".lock", wait=SPARE_WAIT_S) as got:
        if not got:
            return False
        try:
            os.rename(spare, workload)
        except OSError:
            return False
    try:
        for rel, (digest, _) in files.items():
            st = os.lstat(os.path.join(workload, rel))
            if st.st_size != sizes.get(str(digest), -1) or st.st_mtime_ns != SEAL_NS:
                raise ValueError(rel)
    except (OSError, ValueError):
        _rmtree(workload)
        return False
    return True  # its files keep the seal's mtime: touching 2,000 inodes would cost what we saved


@contextlib.contextmanager
def _locked(path: str, *, wait: float) -> Any:
    """An exclusive flock on `path` (created), tried for up to `wait` seconds; yields whether held."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        os.close(fd)


def _read_header(stream: IO[bytes]) -> dict[str, Any]:
    if stream.read(len(STREAM_MAGIC)) != STREAM_MAGIC:
        raise ValueError("not a workload stream (bad magic)")
    (length,) = MANIFEST_HEAD.unpack(_read_exact(stream, MANIFEST_HEAD.size))
    manifest = json.loads(_read_exact(stream, length).decode("utf-8"))
    if not isinstance(manifest, dict):
        raise ValueError("workload stream: manifest is not an object")
    _check_manifest(manifest)
    return manifest


class _Receiver:
    """Takes blob frames (from the controller's stream, or from node 0 over the cluster network)
    and puts each blob in its first place in the run's tree, or in the cache."""

    def __init__(self, workload: str, manifest: dict[str, Any], sizes: dict[str, int] | None = None) -> None:
        self.tree = _Tree(workload)
        self.manifest = manifest
        manifest.setdefault("files", {})
        self.by_digest = _by_digest(manifest.get("files", {}))
        self.pending = [(str(rel), int(mode)) for rel, mode in manifest.get("pending", [])]
        self.placed: set[str] = set()
        # Known sizes (prepare checked them against the cache) spare `_finish` a stat per blob.
        self.sizes: dict[str, int] = dict(sizes or {})
        self.received = 0
        self.bytes = 0

    def take(self, stream: IO[bytes]) -> None:
        """Read blob frames until the end frame. A small blob for the tree is checked in memory,
        then written with open/write/close only (a Python file object adds fstat, ioctl and lseek:
        6 syscalls a file instead of 3); a corrupted one is never written. Writer threads were
        tried: a futex handoff per file cost more than it overlapped (bench/RESULTS.md)."""
        while True:
            raw, size = BLOB_HEAD.unpack(_read_exact(stream, BLOB_HEAD.size))
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
                data = _read_exact(stream, size)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise ValueError(
                        f"blob {digest} arrived corrupted (sha256 {hashlib.sha256(data).hexdigest()})"
                    )
                _write_small(dsts[0], data)
            else:
                _receive_blob(_chunks(stream, size), digest, size, dsts, to_cache)
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
                _write_all([out], _chunks(stream, size), hasher, size)
            said = _read_exact(stream, 32)
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


def _fetch(receiver: _Receiver, fetch: dict[str, Any]) -> None:
    """Pull this node's missing blobs from node 0 (its `serve`), over the cluster's own network."""
    import http.client

    conn = http.client.HTTPConnection(fetch["addr"], int(fetch["port"]), timeout=FETCH_TIMEOUT_S)
    try:
        body = json.dumps(fetch["digests"]).encode()
        conn.request("POST", "/blobs", body, {"X-Lepton-Token": fetch["token"]})
        response = conn.getresponse()
        if response.status != 200:
            raise ValueError(f"node 0 refused the blob fetch: HTTP {response.status}")
        receiver.take(response)  # type: ignore[arg-type]
    except OSError as exc:
        raise ValueError(f"cannot fetch blobs from {fetch['addr']}:{fetch['port']}: {exc}") from exc
    finally:
        conn.close()


def _check_manifest(manifest: dict[str, Any]) -> None:
    for rel in manifest.get("files", {}):
        _safe_rel(rel)
    for rel, target in manifest.get("links", {}).items():
        _safe_link(rel, target)
    for rel, _mode in manifest.get("pending", []):
        _safe_rel(rel)


def receive(run_dir: str, stream: IO[bytes], *, settle_in_background: bool = True) -> dict[str, Any]:
    """Read the controller's stream, fetch from node 0 what the manifest says to fetch there, and
    write the run's tree. With `serve` in the manifest (node 0 of a relayed ship), answer with the
    port of a short-lived server the other nodes fetch their missing blobs from."""
    os.makedirs(_cache(), exist_ok=True)
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    workload = os.path.join(run_dir, "workload")
    if os.path.lexists(workload):
        _rmtree(workload)  # what an earlier, failed attempt left
    manifest = _read_header(stream)
    receiver = _Receiver(workload, manifest)
    receiver.take(stream)
    receiver.check_complete()
    relayed = 0
    if manifest.get("fetch"):
        before = receiver.bytes
        _fetch(receiver, manifest["fetch"])
        relayed = receiver.bytes - before
    return _finish(run_dir, manifest, receiver, relayed, settle_in_background)


def serve(run_dir: str, request: dict[str, Any]) -> dict[str, Any]:
    """Start node 0's blob server for a run whose tree is already in place (nothing was sent to
    node 0, but other nodes lack blobs): answers the port, serves from a detached process."""
    _check_manifest(request)
    server = _Server.start(os.path.join(run_dir, "workload"), request, request["serve"])
    _detach(server.run)
    return {"serve": {"port": server.port}}


def _finish(
    run_dir: str,
    manifest: dict[str, Any],
    receiver: _Receiver,
    relayed: int,
    settle_in_background: bool,
    spare_taken: bool = False,
) -> dict[str, Any]:
    """Complete the run's tree (copies for what did not come in the stream, or the spare tree),
    its links and modes, the agent; then serve (node 0 of a relayed ship) and settle."""
    workload = os.path.join(run_dir, "workload")
    files = manifest.get("files", {})
    by_digest, sizes, placed, tree = receiver.by_digest, receiver.sizes, receiver.placed, receiver.tree
    cache = _cache()
    for digest in by_digest:
        if digest not in sizes:
            with contextlib.suppress(OSError):
                sizes[digest] = os.stat(os.path.join(cache, digest)).st_size
    tid = tree_id(manifest)
    counts = {"written": len(placed), "copied": 0}
    # Nothing of the tree came in the stream: an unchanged tree, perhaps with a spare ready.
    reused = spare_taken or (
        not placed and not os.path.exists(workload) and _take_spare(tid, workload, files, sizes)
    )
    if not reused:
        for digest, targets in by_digest.items():
            src = tree.path(targets[0][0]) if digest in placed else os.path.join(cache, digest)
            if digest not in placed and not os.path.isfile(src):
                raise ValueError(f"blob {digest} is neither in the stream nor in the node's cache")
            for rel, _ in targets[1 if digest in placed else 0 :]:
                _copy(src, tree.path(rel))
                counts["copied"] += 1
        created = 0o666 & ~_umask()
        for rel, (_digest, mode) in files.items():
            if _mode(int(mode)) != created:
                os.chmod(tree.path(rel), _mode(int(mode)))
        tree.links(manifest.get("links", {}))
    os.makedirs(workload, exist_ok=True)
    agent_dir = os.path.join(run_dir, ".agent")
    os.makedirs(agent_dir, exist_ok=True)
    _copy(os.path.join(cache, manifest["agent"]), os.path.join(agent_dir, "agent.py"))
    answer: dict[str, Any] = {
        "received": receiver.received,
        "bytes": receiver.bytes,
        "relayed_bytes": relayed,
        "files": len(files),
        "reused": reused,
        "tree": tid,
        **counts,
    }
    server = _Server.start(workload, manifest, manifest["serve"]) if manifest.get("serve") else None
    if server is not None:
        answer["serve"] = {"port": server.port}

    def after() -> None:
        if server is not None:
            server.run()
        if settle_in_background:
            # Lowest CPU priority: caching and the spare tree must not slow the job starting
            # now, nor (on a shared machine) another node still receiving.
            with contextlib.suppress(OSError):
                os.nice(19)
        settle(workload, manifest, sizes)

    if settle_in_background:
        _detach(after)
    else:
        after()
    return answer


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Server:
    """Node 0's short-lived blob server for a relayed ship: stdlib HTTP on the cluster's private
    address, one POST /blobs per peer (the body lists digests; the answer is blob frames), a
    one-time token from the controller, gone after every peer fetched or FETCH_IDLE_S of silence.
    Serves from the cache, or from node 0's freshly written tree (the job has not started yet;
    the peer checks every hash anyway)."""

    def __init__(self, httpd: Any, peers: int, state: dict[str, float], lock: Any) -> None:
        self.httpd = httpd
        self.peers = peers
        self.state = state
        self.lock = lock

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @classmethod
    def start(cls, workload: str, manifest: dict[str, Any], serve: dict[str, Any]) -> _Server:
        import hmac
        import http.server
        import threading

        token = str(serve["token"])
        where = {d: os.path.join(workload, t[0][0]) for d, t in _by_digest(manifest.get("files", {})).items()}
        lock = threading.Lock()
        state: dict[str, float] = {"done": 0, "last": time.monotonic()}

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                with lock:
                    state["last"] = time.monotonic()
                if not hmac.compare_digest(self.headers.get("X-Lepton-Token", ""), token):
                    self.send_error(403)
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    digests = json.loads(self.rfile.read(length))
                    paths = [(d, _blob_path(d, where)) for d in digests]
                except (ValueError, KeyError):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.end_headers()
                for digest, path in paths:
                    with open(path, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        self.wfile.write(BLOB_HEAD.pack(bytes.fromhex(digest), size))
                        if size:
                            self.connection.sendfile(f)
                self.wfile.write(BLOB_HEAD.pack(bytes(32), 0))
                with lock:
                    state["done"] += 1
                    state["last"] = time.monotonic()

        httpd = http.server.ThreadingHTTPServer((serve["addr"], 0), Handler)
        httpd.daemon_threads = True
        return cls(httpd, int(serve.get("peers", 1)), state, lock)

    def run(self) -> None:
        import threading

        thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            while True:
                time.sleep(0.05)
                with self.lock:
                    done = self.state["done"] >= self.peers
                    idle = time.monotonic() - self.state["last"] > FETCH_IDLE_S
                if done or idle:
                    break
        finally:
            self.httpd.shutdown()
            thread.join()
            self.httpd.server_close()


def _blob_path(digest: str, where: dict[str, str]) -> str:
    if not _HEX64.match(digest):
        raise ValueError(digest)
    cached_path = os.path.join(_cache(), digest)
    if os.path.isfile(cached_path):
        return cached_path
    return where[digest]


# --------------------------------------------------------------------------- after the answer


def _detach(work: Any) -> None:
    """Run `work` in a grandchild in its own session with no stdio, so the SSH command ends now."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        if os.fork():
            os._exit(0)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        work()
    finally:
        os._exit(0)


def settle(workload: str, manifest: dict[str, Any], sizes: dict[str, int]) -> None:
    """Cache what only the run's tree holds (hash-checked: a file the job already changed is left
    out), then build the spare tree for the next run of this tree and keep the newest few. While
    it works, `~/.lepton/trees/.settling-<pid>` exists (benchmarks wait for it to go)."""
    os.makedirs(_trees(), exist_ok=True)
    marker = os.path.join(_trees(), f".settling-{os.getpid()}")
    with open(marker, "w"):
        pass
    try:
        _settle(workload, manifest, sizes)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(marker)


def _settle(workload: str, manifest: dict[str, Any], sizes: dict[str, int]) -> None:
    cache = _cache()
    files = manifest.get("files", {})
    by_digest = _by_digest(files)
    for digest, targets in by_digest.items():
        if digest not in sizes or cached(digest, sizes[digest]):
            continue
        src = os.path.join(workload, targets[0][0])
        tmp = os.path.join(cache, f".{digest}.{os.getpid()}.tmp")
        try:
            _copy(src, tmp)
            if _hash_file(tmp) != digest:
                os.unlink(tmp)
                continue
            _seal(tmp)
            os.replace(tmp, os.path.join(cache, digest))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    trees = _trees()
    os.makedirs(trees, exist_ok=True)
    tid = tree_id(manifest)
    spare = os.path.join(trees, tid)
    with _locked(spare + ".lock", wait=0) as got:
        if not got or os.path.isdir(spare):
            return
        build = os.path.join(trees, f".{tid}.{os.getpid()}.tmp")
        _rmtree(build)
        try:
            tree = _Tree(build)
            os.makedirs(build)
            for rel, (digest, mode) in sorted(files.items()):
                dst = tree.path(rel)
                _copy(os.path.join(cache, str(digest)), dst, _mode(int(mode)), seal=True)
            tree.links(manifest.get("links", {}))
            os.rename(build, spare)
        except (OSError, ValueError):
            _rmtree(build)
            return
    _prune(trees)


def _prune(trees: str) -> None:
    """Keep the SPARE_TREES newest spare trees (and remove builds that died half-way)."""
    spares = []
    for name in os.listdir(trees):
        path = os.path.join(trees, name)
        if _HEX64.match(name):
            with contextlib.suppress(OSError):
                spares.append((os.stat(path).st_ctime, path))
        elif name.endswith(".tmp") and time.time() - os.stat(path).st_mtime > 3600:
            _rmtree(path)
    for _, path in sorted(spares, reverse=True)[SPARE_TREES:]:
        with _locked(path + ".lock", wait=0) as got:
            if got:
                _rmtree(path)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "prepare":
        print(json.dumps(prepare(json.loads(sys.stdin.read()))))
        return 0
    if command == "receive" and len(argv) == 3:
        print(json.dumps(receive(argv[2], sys.stdin.buffer)))
        return 0
    if command == "serve" and len(argv) == 3:
        print(json.dumps(serve(argv[2], json.loads(sys.stdin.read()))))
        return 0
    print(
        "usage: bootstrap prepare < request.json | bootstrap receive RUN_DIR < stream "
        f"| bootstrap serve RUN_DIR < request.json (got {argv[1:]})"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
