"""Content-hashed view of a workload directory: which files ship, their sha256 and mode.

`.leptonignore` is a `.gitignore` (git's own rules, via pathspec's GitIgnoreSpec): blank lines
and `#` comments are skipped; `!pat` re-includes; a trailing `/` matches directories only; a
pattern with a `/` inside (or a leading `/`) is anchored at the workload root; one without `/`
matches a name at any depth; `*` stays within one path segment and `**` crosses them. The last
matching pattern wins; an ignored directory is not descended into. Always
skipped: `.git` and `__pycache__` at any depth, `runs/` and `.lepton/` at the top.

Symlinks: nothing outside the folder ships unless the user asks (`follow_links`). A link that
resolves inside the folder ships as a link; one that leaves it is refused, naming the link."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pathspec

from lepton_infra.errors import ConfigError
from lepton_infra.workload.node.bootstrap import BLOB_HEAD, MANIFEST_HEAD, STREAM_MAGIC

IGNORE_FILE = ".leptonignore"
ALWAYS_SKIPPED_ANYWHERE = frozenset({".git", "__pycache__"})
ALWAYS_SKIPPED_AT_TOP = frozenset({"runs", ".lepton"})


class IgnoreRules:
    """Parsed `.leptonignore` (see the module docstring for the syntax)."""

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.spec = pathspec.GitIgnoreSpec.from_lines(list(lines))

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
        # A trailing slash tells pathspec it is a directory (for `build/`-style patterns).
        return bool(self.spec.match_file(rel + "/" if is_dir else rel))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    mode: int


@dataclass
class Manifest:
    """relative posix path -> FileEntry for every file that ships, and relative posix path -> link
    target (relative, staying inside the folder) for every symlink that ships as a link."""

    root: Path
    files: dict[str, FileEntry] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def blobs(self) -> dict[str, int]:
        """Distinct contents: sha256 -> size (two identical files ship once)."""
        return {f.sha256: f.size for f in self.files.values()}

    def paths_by_digest(self) -> dict[str, Path]:
        """sha256 -> one local file with that content."""
        return {e.sha256: self.root / rel for rel, e in sorted(self.files.items())}

    def node_view(self) -> dict[str, Any]:
        """What the node materialises (the `manifest.json` of the stream): paths, digests, modes, links."""
        return {
            "files": {rel: [e.sha256, e.mode] for rel, e in sorted(self.files.items())},
            "links": dict(sorted(self.links.items())),
        }


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
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

    def digest(self, rel: str, path: Path, st: os.stat_result) -> str:
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        old = self.entries.get(rel)
        if isinstance(old, list) and len(old) == 5 and old[:4] == stamp:
            digest = str(old[4])
        else:
            digest = sha256_file(path)
        if time.time() - st.st_mtime_ns / 1e9 > self.RACY_S:
            self.fresh[rel] = [*stamp, digest]
        return digest

    def save(self) -> None:
        """Keep only the files seen this time; never fail a run over the cache (it is an optimisation)."""
        if self.path is None or self.fresh == self.entries:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.fresh, separators=(",", ":")), encoding="utf-8")
            tmp.replace(self.path)
        except OSError:
            pass


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def build_manifest(
    root: Path,
    rules: IgnoreRules | None = None,
    *,
    follow_links: bool = False,
    hash_cache_dir: Path | None | bool = True,
) -> Manifest:
    """Walk `root` and hash every shipped file.

    Nothing outside the folder ships unless asked: a symlink that resolves inside the folder ships
    as a link (its target rewritten relative, so it works wherever the node puts the tree); one that
    resolves outside (or dangles outside) is a ConfigError naming it, unless `follow_links`, which
    ships what it points to (each real directory once, so loops end). `hash_cache_dir` remembers
    digests of files whose stat did not change (True: the default place; None or False: none)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"workload dir {str(root)!r} does not exist or is not a directory")
    rules = rules if rules is not None else IgnoreRules.load(root)
    manifest = Manifest(root=root)
    root_real = os.path.realpath(root)
    if hash_cache_dir is True:
        hash_cache_dir = default_hash_cache_dir()
    cache = HashCache.for_root(root, hash_cache_dir or None)
    seen_dirs: set[str] = {root_real}

    def add_file(rel: str, path: str, st: os.stat_result) -> None:
        digest = cache.digest(rel, Path(path), st)
        manifest.files[rel] = FileEntry(digest, st.st_size, stat.S_IMODE(st.st_mode))

    def walk(dir_path: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(dir_path), key=lambda e: e.name)
        except OSError as exc:
            raise ConfigError(f"cannot read workload folder {prefix or '.'!r}: {exc.strerror}") from exc
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                try:
                    target_st: os.stat_result | None = os.stat(entry.path)
                except OSError:
                    target_st = None  # dangling
                is_dir = target_st is not None and stat.S_ISDIR(target_st.st_mode)
                if rules.ignored(rel, is_dir):
                    continue
                target = os.path.realpath(entry.path)
                if _inside(target, root_real):
                    rel_target = os.path.relpath(target, root_real).replace(os.sep, "/")
                    parent = posixpath.dirname(rel) or "."
                    manifest.links[rel] = posixpath.relpath(rel_target, parent)
                    continue
                if not follow_links:
                    raise ConfigError(
                        f"workload symlink {rel!r} points outside the workload folder "
                        f"(to {os.readlink(entry.path)!r}); only links that stay inside it ship. "
                        "Remove it, list it in .leptonignore, or pass --follow-links to ship "
                        "what it points to"
                    )
                if target_st is None:
                    continue  # following a dangling link ships nothing
                if is_dir:
                    if target not in seen_dirs:
                        seen_dirs.add(target)
                        walk(entry.path, rel + "/")
                elif stat.S_ISREG(target_st.st_mode):
                    add_file(rel, entry.path, target_st)
                continue
            if entry.is_dir(follow_symlinks=False):
                if not rules.ignored(rel, True):
                    walk(entry.path, rel + "/")
            elif entry.is_file(follow_symlinks=False) and not rules.ignored(rel, False):
                add_file(rel, entry.path, entry.stat(follow_symlinks=False))

    walk(str(root), "")
    cache.save()
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
    manifest: Manifest,
    missing: Iterable[str],
    agent_source: bytes,
    agent_digest: str,
    out: IO[bytes],
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Write the stream the node-side `bootstrap receive` reads: the manifest first (so the node
    writes each blob straight to its place in the run's tree), then the missing blobs, each once.
    `extra` goes into the header (a relayed ship's `serve`/`fetch` instructions). Returns the
    workload content bytes sent (the agent not counted)."""
    content = 0
    paths = manifest.paths_by_digest()
    sizes = manifest.blobs()
    write_header(out, {**manifest.node_view(), "agent": agent_digest, **(extra or {})})
    for digest in sorted(set(missing)):
        if digest == agent_digest:
            write_blob(out, digest, agent_source)
            continue
        # The manifest's size: a file changed since hashing fails the node's hash check loudly
        # (or ends short here) instead of caching a blob under the wrong name.
        size = sizes[digest]
        out.write(BLOB_HEAD.pack(bytes.fromhex(digest), size))
        left = size
        with paths[digest].open("rb") as f:
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise ConfigError(f"{paths[digest]} shrank while it was being sent; run again")
                out.write(chunk)
                left -= len(chunk)
        content += size
    write_end(out)
    return content


def write_header(out: IO[bytes], node_manifest: dict[str, Any]) -> None:
    data = json.dumps(node_manifest, separators=(",", ":")).encode()
    out.write(STREAM_MAGIC + MANIFEST_HEAD.pack(len(data)) + data)


def write_blob(out: IO[bytes], digest: str, data: bytes) -> None:
    out.write(BLOB_HEAD.pack(bytes.fromhex(digest), len(data)))
    out.write(data)


def write_end(out: IO[bytes]) -> None:
    out.write(BLOB_HEAD.pack(bytes(32), 0))
