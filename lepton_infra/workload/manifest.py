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

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pathspec

from lepton_infra.errors import ConfigError
from lepton_infra.workload.hash_cache import HashCache, KeptBytes, default_hash_cache_dir, stamp_of

IGNORE_FILE = ".leptonignore"
ALWAYS_SKIPPED_ANYWHERE = frozenset({".git", "__pycache__"})
ALWAYS_SKIPPED_AT_TOP = frozenset({"runs", ".lepton"})
# A file this large that the hash cache does not know is hashed while it is sent (read once, and
# the hash overlaps the transfer) instead of before: a 200 MB file's hash phase was 0.2-0.8 s here.
DEFER_BYTES = 1 << 20


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
    """One shipped file. `sha256` is "" while the file is pending (hashed as it is sent);
    `stamp` is its (size, mtime_ns, ctime_ns, inode) when it was looked at."""

    sha256: str
    size: int
    mode: int
    stamp: tuple[int, ...] = field(default=(), compare=False)


@dataclass
class Manifest:
    """relative posix path -> FileEntry for every file that ships, and relative posix path -> link
    target (relative, staying inside the folder) for every symlink that ships as a link."""

    root: Path
    files: dict[str, FileEntry] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    hash_cache: HashCache | None = field(default=None, repr=False, compare=False)
    kept: KeptBytes = field(default_factory=lambda: KeptBytes(), repr=False, compare=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def pending(self) -> list[str]:
        """Files not hashed yet (large and unknown to the hash cache): sent, hashed as they go."""
        return sorted(rel for rel, e in self.files.items() if not e.sha256)

    def blobs(self) -> dict[str, int]:
        """Distinct known contents: sha256 -> size (two identical files ship once)."""
        return {f.sha256: f.size for f in self.files.values() if f.sha256}

    def paths_by_digest(self) -> dict[str, Path]:
        """sha256 -> one local file with that content."""
        return {e.sha256: self.root / rel for rel, e in sorted(self.files.items()) if e.sha256}

    def node_view(self) -> dict[str, Any]:
        """What the node materialises (the `manifest.json` of the stream): paths, digests, modes,
        links; `pending` lists (path, mode) of the files whose blobs follow hashed-as-sent."""
        view: dict[str, Any] = {
            "files": {rel: [e.sha256, e.mode] for rel, e in sorted(self.files.items()) if e.sha256},
            "links": dict(sorted(self.links.items())),
        }
        if pending := self.pending:
            view["pending"] = [[rel, self.files[rel].mode] for rel in pending]
        return view

    def resolve(self, rel: str, digest: str) -> None:
        """Record the digest of a pending file, computed while it was sent (and remember it in
        the hash cache, so the next run does not read the file again)."""
        entry = self.files[rel]
        self.files[rel] = FileEntry(digest, entry.size, entry.mode, entry.stamp)
        if self.hash_cache is not None and entry.stamp:
            self.hash_cache.remember(rel, list(entry.stamp), digest)

    def save_hashes(self) -> None:
        if self.hash_cache is not None:
            self.hash_cache.save()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def build_manifest(
    root: Path,
    rules: IgnoreRules | None = None,
    *,
    follow_links: bool = False,
    hash_cache_dir: Path | None | bool = True,
    defer_bytes: int | None = DEFER_BYTES,
) -> Manifest:
    """Walk `root` and hash every shipped file.

    Nothing outside the folder ships unless asked: a symlink that resolves inside the folder ships
    as a link (its target rewritten relative, so it works wherever the node puts the tree); one that
    resolves outside (or dangles outside) is a ConfigError naming it, unless `follow_links`, which
    ships what it points to (each real directory once, so loops end). `hash_cache_dir` remembers
    digests of files whose stat did not change (True: the default place; None or False: none).
    A file of `defer_bytes` or more that it does not remember stays pending (sha256 "") and is
    hashed while it is sent (`write_stream`); None hashes everything now."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"workload dir {str(root)!r} does not exist or is not a directory")
    rules = rules if rules is not None else IgnoreRules.load(root)
    manifest = Manifest(root=root)
    root_real = os.path.realpath(root)
    if hash_cache_dir is True:
        hash_cache_dir = default_hash_cache_dir()
    cache = HashCache.for_root(root, hash_cache_dir or None)
    manifest.hash_cache = cache
    seen_dirs: set[str] = {root_real}

    def add_file(rel: str, path: str, st: os.stat_result) -> None:
        digest = cache.digest(rel, path, st, defer_bytes, manifest.kept)  # a str: no Path per file
        manifest.files[rel] = FileEntry(digest, st.st_size, stat.S_IMODE(st.st_mode), stamp_of(st))

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
