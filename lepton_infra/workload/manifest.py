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
from lepton_infra.node.bootstrap import BLOB_HEAD, MANIFEST_HEAD, PENDING_DIGEST, STREAM_MAGIC

IGNORE_FILE = ".leptonignore"
ALWAYS_SKIPPED_ANYWHERE = frozenset({".git", "__pycache__"})
ALWAYS_SKIPPED_AT_TOP = frozenset({"runs", ".lepton"})
# A file this large that the hash cache does not know is hashed while it is sent (read once, and
# the hash overlaps the transfer) instead of before: a 200 MB file's hash phase was 0.2-0.8 s here.
DEFER_BYTES = 1 << 20
# A small file hashed now keeps its bytes (up to KEEP_TOTAL in all) for the stream, so it is read
# once: what is sent is exactly what was hashed, and sending opens no file a second time.
KEEP_BYTES = 256 << 10
KEEP_TOTAL = 64 << 20


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


class KeptBytes(dict[str, bytes]):
    """Contents read while hashing, by digest, and their total size."""

    total = 0

    def add(self, digest: str, data: bytes) -> None:
        if digest not in self:
            self[digest] = data
            self.total += len(data)

    def drop(self) -> None:
        """Forget them (after the ship: the manifest lives as long as the run)."""
        self.clear()
        self.total = 0


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


def sha256_file(path: str | Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
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

    def digest(
        self,
        rel: str,
        path: str | Path,
        st: os.stat_result,
        defer_bytes: int | None = None,
        keep: KeptBytes | None = None,
    ) -> str:
        """The file's sha256: remembered, or read now; "" (pending) for a file of `defer_bytes`
        or more that is not remembered (it is hashed while it is sent). A small file read now
        leaves its bytes in `keep` (by digest) while it has room."""
        stamp = stamp_of(st)
        old = self.entries.get(rel)
        seen = isinstance(old, list) and len(old) == 5 and old[:4] == list(stamp)
        if seen and old[4]:
            digest = str(old[4])
        elif not seen and defer_bytes is not None and st.st_size >= defer_bytes:
            # Never seen like this: likely new content, so the node likely lacks it too.
            return ""
        elif keep is not None and st.st_size <= KEEP_BYTES and keep.total < KEEP_TOTAL:
            with open(path, "rb") as f:
                data = f.read(KEEP_BYTES + 1)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) == st.st_size:  # else it changed since its stat: read it again to send
                keep.add(digest, data)
        else:
            digest = sha256_file(path)
        self.remember(rel, list(stamp), digest)
        return digest

    def remember(self, rel: str, stamp: list[int], digest: str) -> None:
        """A racy file is remembered as seen but not trusted (digest ""): the next look hashes
        it before sending, so a node that has it already is not sent it again."""
        racy = time.time() - stamp[1] / 1e9 <= self.RACY_S
        self.fresh[rel] = [*stamp, "" if racy else digest]

    def save(self) -> None:
        """Keep only the files seen this time; never fail a run over the cache (it is an optimisation)."""
        if self.path is None or self.fresh == self.entries:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.fresh, separators=(",", ":")), encoding="utf-8")
            tmp.replace(self.path)
            self.entries = dict(self.fresh)
        except OSError:
            pass


def stamp_of(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


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
