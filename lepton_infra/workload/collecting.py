"""Bring one node's results home, into `runs/<run-id>/<node>/`, from the tar stream its agent
packs. What is already here (same size and mtime) is not sent again, so a collect that failed
half-way resumes; the space the rest needs is checked before anything is written; a disk that
fills anyway is a NoSpace error naming the node, the file, the folder and the bytes needed, and
the file it was writing is removed (never a half-written file that a later collect would skip)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

from rich.filesize import decimal

from lepton_infra.errors import NoSpace

PACK_MANIFEST = ".lepton-pack.json"  # the agent's first member (node/agent.py `pack`)
SPACE_MARGIN = 1 << 20  # left free beyond what a collect needs (run.json, offsets)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def already_here(dest: Path) -> dict[str, list[int]]:
    """The regular files already collected under `dest` (output/, logs/): path -> [size, mtime]."""
    have: dict[str, list[int]] = {}
    for top in ("output", "logs"):
        root = dest / top
        if root.is_symlink() or not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    have[str(path.relative_to(dest))] = [st.st_size, int(st.st_mtime)]
    return have


def _mount_of(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _extract_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None  # e.g. a symlink pointing outside: skip it rather than lose the rest


class Unpacker:
    """The consumer of one node's pack stream (NodeConnection.run_download)."""

    def __init__(self, node: str, run_id: str, dest: Path) -> None:
        self.node, self.run_id, self.dest = node, run_id, dest
        self.need = 0  # bytes the node said it sends (its manifest); 0 for an agent without one
        self.files = 0
        self.written = 0

    def __call__(self, stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.name == PACK_MANIFEST:
                    self._check_space(tar.extractfile(member))
                    continue
                self._extract(tar, member)

    def _check_space(self, manifest: IO[bytes] | None) -> None:
        try:
            data: Any = json.loads(manifest.read(1 << 16)) if manifest else {}
            self.need = max(0, int(data.get("send_bytes", 0)))
            self.files = max(0, int(data.get("send_files", 0)))
        except (ValueError, TypeError, AttributeError):
            return  # an unreadable manifest checks nothing; the extraction still counts
        free = shutil.disk_usage(self.dest).free
        if self.need + SPACE_MARGIN > free:
            raise self._full(f"its {self.files} result file(s)", free)

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        try:
            tar.extract(member, self.dest, filter=_extract_filter)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            target = self.dest / member.name
            if member.isfile() and target.is_file() and not target.is_symlink():
                target.unlink()  # never a half-written file (a later collect would trust its name)
            raise self._full(member.name, shutil.disk_usage(self.dest).free) from exc
        if member.isfile():
            self.written += member.size

    def _full(self, what: str, free: int) -> NoSpace:
        left = max(self.need - self.written, 0)
        needed = f"needs {decimal(left)} more" if left else "needs more space"
        return NoSpace(
            f"no space left on device: node {self.node!r}: {what} could not be written to "
            f"{self.dest}/ (collecting {needed}; {decimal(free)} free on {_mount_of(self.dest)}). "
            f"Free some space (or use another --runs-dir), then `lepton-infra collect {self.run_id}`: "
            "what is already here is not fetched again"
        )


def disk_full(exc: OSError) -> bool:
    return exc.errno in _FULL
