"""The node's content cache: where things live under ~/.lepton, and whether a blob in the cache
can be trusted.

Cache files are sealed when stored: read-only and mtime set to SEAL_NS. Any write to one changes
its mtime, so a broken seal means "re-hash before use": a blob is trusted by its hash, never by
its size, and a blob whose hash no longer matches is removed and sent again."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat

HEX64 = re.compile(r"^[0-9a-f]{64}$")  # a sha256 digest as a name (cache files, spare trees)
SEAL_NS = 1_000_000_000 * 10**9  # 2001-09-09T01:46:40Z: the mtime of every sealed cache file


def lepton_home() -> str:
    """~/.lepton: the cache, spare trees, runs and the installed bootstrap live under it."""
    # $HOME, not the passwd entry: local pool nodes share a user but each has its own HOME.
    return os.path.join(os.path.expanduser("~"), ".lepton")


def cache_dir() -> str:
    """One sealed, read-only file per distinct content, named by its sha256."""
    return os.path.join(lepton_home(), "cache")


def trees_dir() -> str:
    """Spare, never-used copies of whole trees, named by tree id (see spares.py)."""
    return os.path.join(lepton_home(), "trees")


def hash_file(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def seal(path: str) -> None:
    os.chmod(path, 0o444)
    os.utime(path, ns=(SEAL_NS, SEAL_NS))


def cached(digest: str, size: int) -> bool:
    """Is a good copy of this blob in the cache? The seal (read-only, mtime SEAL_NS, right size)
    says nobody wrote it since it was verified; without it the blob is re-hashed, and removed if
    its content is not what its name says."""
    path = os.path.join(cache_dir(), digest)
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
        good = hash_file(path) == digest
    except OSError:
        good = False
    with contextlib.suppress(OSError):
        if good:
            seal(path)
        else:
            os.unlink(path)
    return good
