"""Bring one node's results home, into `runs/<run-id>/<node>/`, from the tar stream its agent
packs. What is already here (same size and mtime) is not sent again, so a collect that failed
half-way resumes; the space the rest needs is checked before anything is written; a disk that
fills anyway is a NoSpace error naming the node, the file, the folder and the bytes needed, and
the file it was writing is removed (never a half-written file that a later collect would skip).

What a node sends is untrusted: nothing is written outside its folder (tarfile's data filter:
no absolute or `..` names, no links leaving it), only its logs/, output/, state.json and
spec.json are taken, and at most `Limits` files and bytes (the agent holds the rest back; an
agent that sends more anyway is cut off there). Everything skipped is said, with why."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.filesize import decimal

from lepton_infra.errors import ConfigError, NoSpace

PACK_MANIFEST = ".lepton-pack.json"  # the agent's first member (node/agent.py `pack`)
SPACE_MARGIN = 1 << 20  # left free beyond what a collect needs (run.json, offsets)
_FULL = (errno.ENOSPC, errno.EDQUOT)
MAX_COLLECT_BYTES = 50 * 10**9  # per node and collect; --max-collect-bytes raises it
MAX_COLLECT_FILES = 100_000  # per node and collect; --max-collect-files raises it
_TAKEN = ("logs", "output", "state.json", "spec.json")
# The nodes of a run are collected at once: each checks the space it needs against what is free
# minus what the others still have to write, or two nodes could each see room for themselves and
# both fill the disk half-way.
_ACTIVE: set[Unpacker] = set()
_ACTIVE_LOCK = threading.Lock()
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """How much one collect takes from one node at most."""

    max_bytes: int = MAX_COLLECT_BYTES
    max_files: int = MAX_COLLECT_FILES

    @property
    def why(self) -> dict[str, str]:
        return {
            "max_bytes": f"over --max-collect-bytes {decimal(self.max_bytes)}",
            "max_files": f"over --max-collect-files {self.max_files}",
        }


def parse_size(option: str, value: str | int) -> int:
    """`20G`, `500MB`, `1.5T` or a number of bytes; ConfigError naming the option otherwise."""
    match = _SIZE.match(str(value))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{option} must be a positive size such as 50G, 500M or 1000000 (bytes), got {value!r}"
        )
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def check_limits(max_bytes: str | int = MAX_COLLECT_BYTES, max_files: int = MAX_COLLECT_FILES) -> Limits:
    if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
        raise ConfigError(f"--max-collect-files must be a whole number >= 1, got {max_files!r}")
    return Limits(parse_size("--max-collect-bytes", max_bytes), max_files)


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


class _CutOff(Exception):
    """The node sent more than its limits: stop reading its stream."""


@dataclass(eq=False)
class Unpacker:
    """The consumer of one node's pack stream (NodeConnection.run_download). `skipped` lists
    what was not taken, each with why; `skipped_count` counts all of it."""

    node: str
    run_id: str
    dest: Path
    limits: Limits = field(default_factory=Limits)
    need: int = 0  # bytes the node said it sends (its manifest); 0 for an agent without one
    files: int = 0
    written: int = 0
    taken: int = 0
    skipped: list[str] = field(default_factory=list)
    skipped_count: int = 0

    def __call__(self, stream: IO[bytes]) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                try:
                    for member in tar:
                        if member.name == PACK_MANIFEST:
                            self._read_manifest(tar.extractfile(member))
                        else:
                            self._extract(tar, member)
                except _CutOff:
                    return
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self)

    @property
    def outstanding(self) -> int:
        """Bytes this collect has said it sends and not yet written."""
        return max(self.need - self.written, 0)

    def skip(self, name: str, why: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < 20:
            self.skipped.append(f"{name[:200]!r}: {why}")

    def _read_manifest(self, manifest: IO[bytes] | None) -> None:
        try:
            data: Any = json.loads(manifest.read(1 << 20)) if manifest else {}
            self.need = max(0, int(data.get("send_bytes", 0)))
            self.files = max(0, int(data.get("send_files", 0)))
            held = list(data.get("held_back") or [])
            count = int(data.get("held_back_count") or 0)
        except (ValueError, TypeError, AttributeError):
            return  # an unreadable manifest checks nothing; the extraction still counts
        for h in held[:20]:
            if isinstance(h, dict):
                why = self.limits.why.get(str(h.get("why")), "held back by the node")
                self.skip(str(h.get("path")), f"{decimal(int(h.get('size') or 0))}, {why}")
        self.skipped_count += max(0, count - min(len(held), 20))
        with _ACTIVE_LOCK:
            device = os.stat(self.dest).st_dev
            others = sum(u.outstanding for u in _ACTIVE if os.stat(u.dest).st_dev == device)
            free = shutil.disk_usage(self.dest).free - others
            if self.need + SPACE_MARGIN > free:
                raise self._full(f"its {self.files} result file(s)", max(free, 0))
            _ACTIVE.add(self)

    def _filter(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        top = member.name.split("/", 1)[0]
        if top not in _TAKEN or (top in ("state.json", "spec.json") and not member.isfile()):
            self.skip(member.name, "not part of a node's results")
            return None
        try:
            return tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:  # an absolute name, `..`, a link leaving the folder
            self.skip(member.name, f"unsafe: {exc}")
            return None

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.isfile():
            over = "max_files" if self.taken + 1 > self.limits.max_files else None
            if self.written + member.size > self.limits.max_bytes:
                over = "max_bytes"
            if over:  # the agent should have held it back: take nothing more from this node
                self.skip(member.name, f"{decimal(member.size)}, {self.limits.why[over]}; the rest not read")
                raise _CutOff
        before = self.skipped_count
        try:
            tar.extract(member, self.dest, filter=self._filter)
        except OSError as exc:
            if exc.errno not in _FULL:
                self.skip(member.name, f"cannot be written here: {exc.strerror or exc}")
                return
            target = self.dest / member.name
            if member.isfile() and target.is_file() and not target.is_symlink():
                target.unlink()  # never a half-written file (a later collect would trust its name)
            raise self._full(member.name, shutil.disk_usage(self.dest).free) from exc
        if member.isfile() and self.skipped_count == before:
            self.written += member.size
            self.taken += 1

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
