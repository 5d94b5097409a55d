"""Content-hashed view of a workload directory: which files ship, their sha256 and mode.

`.leptonignore` uses gitignore-like patterns, matched with fnmatch (so `*` also crosses `/`):
blank lines and `#` comments are skipped; `!pat` re-includes; a trailing `/` matches directories
only; a pattern with a `/` inside (or a leading `/`) is anchored at the workload root and matched
against the relative path; one without `/` matches a name at any depth; a leading `**/` is
optional. The last matching pattern wins; an ignored directory is not descended into. Always
skipped: `.git` and `__pycache__` at any depth, `runs/` and `.lepton/` at the top."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lepton_infra.errors import ConfigError

IGNORE_FILE = ".leptonignore"
ALWAYS_SKIPPED_ANYWHERE = frozenset({".git", "__pycache__"})
ALWAYS_SKIPPED_AT_TOP = frozenset({"runs", ".lepton"})


@dataclass(frozen=True)
class _Rule:
    pattern: str
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.anchored:
            return fnmatch.fnmatchcase(rel, self.pattern)
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], self.pattern)


class IgnoreRules:
    """Parsed `.leptonignore` (see the module docstring for the syntax)."""

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.rules: list[_Rule] = []
        for raw in lines:
            line = raw.rstrip("\n").rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            if line.startswith("\\"):  # `\#name` / `\!name` escape a leading # or !
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            while line.startswith("**/"):
                line = line[3:]
            anchored = "/" in line
            line = line.lstrip("/")
            if line:
                self.rules.append(_Rule(line, negate, dir_only, anchored))

    @classmethod
    def load(cls, root: Path) -> IgnoreRules:
        path = root / IGNORE_FILE
        if not path.is_file():
            return cls()
        return cls(path.read_text(encoding="utf-8", errors="replace").splitlines())

    def ignored(self, rel: str, is_dir: bool) -> bool:
        top = "/" not in rel
        name = rel.rsplit("/", 1)[-1]
        if is_dir and (name in ALWAYS_SKIPPED_ANYWHERE or (top and name in ALWAYS_SKIPPED_AT_TOP)):
            return True
        result = False
        for rule in self.rules:
            if rule.matches(rel, is_dir):
                result = not rule.negate
        return result


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    mode: int


@dataclass
class Manifest:
    """relative posix path -> FileEntry, for every file that ships."""

    root: Path
    files: dict[str, FileEntry] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def blobs(self) -> dict[str, int]:
        """Distinct contents: sha256 -> size (two identical files ship once)."""
        return {f.sha256: f.size for f in self.files.values()}

    def paths_by_digest(self) -> dict[str, Path]:
        """sha256 -> one local file with that content."""
        return {e.sha256: self.root / rel for rel, e in sorted(self.files.items())}


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def build_manifest(root: Path, rules: IgnoreRules | None = None) -> Manifest:
    """Walk `root` (following symlinks, each real directory once) and hash every shipped file."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"workload dir {str(root)!r} does not exist or is not a directory")
    rules = rules if rules is not None else IgnoreRules.load(root)
    manifest = Manifest(root=root)
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop, or the same folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        reldir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if reldir == "." else reldir + "/"
        dirnames[:] = sorted(d for d in dirnames if not rules.ignored(prefix + d, True))
        for name in sorted(filenames):
            rel = prefix + name
            path = Path(dirpath) / name
            if rules.ignored(rel, False):
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # a dangling symlink ships nothing
            if not stat.S_ISREG(st.st_mode):
                continue
            manifest.files[rel] = FileEntry(sha256_file(path), st.st_size, stat.S_IMODE(st.st_mode))
    return manifest


class _CountingWriter(io.RawIOBase):
    """Forwards writes to `sink` and counts the bytes (what went over the wire)."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self.sink = sink
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        data = bytes(b)
        self.sink(data)
        self.count += len(data)
        return len(data)


def write_stream(
    manifest: Manifest, missing: Iterable[str], agent_source: bytes, agent_digest: str, out: IO[bytes]
) -> int:
    """Write the tar stream the node-side `bootstrap receive` reads: the missing blobs (each once)
    plus manifest.json. Returns the workload content bytes sent (the agent not counted)."""
    content = 0
    names = {"files": {rel: [e.sha256, e.mode] for rel, e in manifest.files.items()}, "agent": agent_digest}
    paths = manifest.paths_by_digest()
    sizes = manifest.blobs()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for digest in sorted(set(missing)):
            info = tarfile.TarInfo(f"blobs/{digest}")
            info.mode = 0o444
            if digest == agent_digest:
                info.size = len(agent_source)
                tar.addfile(info, io.BytesIO(agent_source))
                continue
            else:
                # The manifest's size: if the file changed since hashing, the node's hash check fails
                # loudly instead of caching a blob under the wrong name.
                info.size = sizes[digest]
                with paths[digest].open("rb") as f:
                    tar.addfile(info, f)
            content += info.size
        data = json.dumps(names).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return content
