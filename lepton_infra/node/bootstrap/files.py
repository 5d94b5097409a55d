"""Writing files fast on a node: small files with a few raw syscalls, large ones by reflink or a
kernel-side copy, a large blob's disk writes overlapped with its hashing. A node writes thousands
of small files per ship and per spare tree, so syscalls per file matter (bench/RESULTS.md)."""

from __future__ import annotations

import errno
import fcntl
import os

from .cache import SEAL_NS

# Every node command imports this package: typing, collections.abc and shutil cost milliseconds
# of a ~116 ms `prepare` (python -X importtime), so they are imported only where used (the
# annotations are strings, never evaluated).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import IO, Any

SMALL_BYTES = 256 << 10  # a blob this small is read whole, checked, then written with 3 syscalls
THREADED_WRITE_BYTES = 8 << 20  # blobs this large are written by a second thread (see write_all)
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (copy-on-write), btrfs/xfs


def write_small(path: str, data: bytes, mode: int | None = None, seal: bool = False) -> None:
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


def copy_file(src: str, dst: str, mode: int | None = None, seal: bool = False) -> None:
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
        write_small(dst, data, mode, seal)
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


def write_all(outs: Sequence[IO[bytes]], chunks: Iterator[bytes], hasher: Any, size: int) -> None:
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


def run_mode(mode: int) -> int:
    """The mode of a file in a run's tree, from the mode the manifest recorded."""
    return (mode & 0o777) | 0o600 or 0o644  # the run's own copy: its owner may always write it


def umask() -> int:
    """The process umask (it can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def rmtree(path: str) -> None:
    """Remove a tree, whatever is left of it (shutil imported here: see TYPE_CHECKING)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
