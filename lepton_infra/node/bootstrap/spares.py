"""After `receive` (or `prepare`) has answered: the detached process that fills the cache with
what only the run's tree holds and builds a spare tree for the next run of the same tree, and
the taking of such a spare tree.

~/.lepton/trees/<tree-id>/ is a spare, never-used copy of a whole tree. It is handed to exactly
one run (an atomic rename), so an unchanged tree costs one rename instead of one file per path;
it is checked (every file's size and seal) before use. This work is off the critical path: the
SSH command has ended, and it runs at the lowest CPU priority."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time

from .cache import HEX64, SEAL_NS, cache_dir, cached, hash_file, seal, trees_dir
from .files import copy_file, rmtree, run_mode
from .tree import Tree, by_digest, tree_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SPARE_TREES = 3  # spare trees kept per node (the most recently built)
SPARE_WAIT_S = 10.0  # how long `receive` waits for a spare tree that is being built


def take_spare(tid: str, workload: str, files: dict[str, list[Any]], sizes: dict[str, int]) -> bool:
    """Rename the spare tree for `tid` into `workload` (waiting a little for one being built); True
    if it is there and every file in it still has its size and seal."""
    spare = os.path.join(trees_dir(), tid)
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
        rmtree(workload)
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


def detach(work: Any) -> None:
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
    os.makedirs(trees_dir(), exist_ok=True)
    marker = os.path.join(trees_dir(), f".settling-{os.getpid()}")
    with open(marker, "w"):
        pass
    try:
        _settle(workload, manifest, sizes)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(marker)


def _settle(workload: str, manifest: dict[str, Any], sizes: dict[str, int]) -> None:
    cache = cache_dir()
    files = manifest.get("files", {})
    groups = by_digest(files)
    for digest, targets in groups.items():
        if digest not in sizes or cached(digest, sizes[digest]):
            continue
        src = os.path.join(workload, targets[0][0])
        tmp = os.path.join(cache, f".{digest}.{os.getpid()}.tmp")
        try:
            copy_file(src, tmp)
            if hash_file(tmp) != digest:
                os.unlink(tmp)
                continue
            seal(tmp)
            os.replace(tmp, os.path.join(cache, digest))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    trees = trees_dir()
    os.makedirs(trees, exist_ok=True)
    tid = tree_id(manifest)
    spare = os.path.join(trees, tid)
    with _locked(spare + ".lock", wait=0) as got:
        if not got or os.path.isdir(spare):
            return
        build = os.path.join(trees, f".{tid}.{os.getpid()}.tmp")
        rmtree(build)
        try:
            tree = Tree(build)
            os.makedirs(build)
            for rel, (digest, mode) in sorted(files.items()):
                dst = tree.path(rel)
                copy_file(os.path.join(cache, str(digest)), dst, run_mode(int(mode)), seal=True)
            tree.links(manifest.get("links", {}))
            os.rename(build, spare)
        except (OSError, ValueError):
            rmtree(build)
            return
    _prune(trees)


def _prune(trees: str) -> None:
    """Keep the SPARE_TREES newest spare trees (and remove builds that died half-way)."""
    spares = []
    for name in os.listdir(trees):
        path = os.path.join(trees, name)
        if HEX64.match(name):
            with contextlib.suppress(OSError):
                spares.append((os.stat(path).st_ctime, path))
        elif name.endswith(".tmp") and time.time() - os.stat(path).st_mtime > 3600:
            rmtree(path)
    for _, path in sorted(spares, reverse=True)[SPARE_TREES:]:
        with _locked(path + ".lock", wait=0) as got:
            if got:
                rmtree(path)
