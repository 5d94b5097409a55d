"""file:// backend, standard library only (the same code runs on nodes that lack our package).

Writes go to a temporary file in the target directory and are renamed into place, so readers see
the old object or the whole new one. The SHA-256 of each object sits beside it in a hidden
`.<name>.leptonsha256` file, written before the object itself is renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lepton_infra.data.store_backend import Backend
from lepton_infra.errors import ConfigError

SIDECAR_SUFFIX = ".leptonsha256"
_TMP_MARK = ".lepton-tmp-"


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def _atomic_write(dest: Path, write: object) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}{_TMP_MARK}", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)  # type: ignore[operator]
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LocalBackend(Backend):
    def probe(self, prefix: str) -> None:
        root = Path(prefix)
        if not root.is_dir():
            raise ConfigError(
                f"store 'file://{prefix}': directory {prefix!r} does not exist (create it, or run "
                "`lepton-infra local up`, which makes one in its state dir)"
            )
        if not os.access(root, os.W_OK | os.X_OK):
            raise ConfigError(f"store 'file://{prefix}': directory {prefix!r} is not writable by us")

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        dest = Path(key)
        _atomic_write(_sidecar(dest), lambda out: out.write(sha256.encode()))

        def copy(out: IO[bytes]) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)

        _atomic_write(dest, copy)

    def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        dest = Path(key)
        _atomic_write(_sidecar(dest), lambda out: out.write(sha256.encode()))
        _atomic_write(dest, lambda out: out.write(data))

    def get_into(self, key: str, out: IO[bytes]) -> str | None:
        path = Path(key)
        with path.open("rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
        try:
            return _sidecar(path).read_text().strip() or None
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        root = Path(prefix.rstrip("/") or "/")
        if not root.is_dir():
            return
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                if name.endswith(SIDECAR_SUFFIX) or _TMP_MARK in name:
                    continue
                full = os.path.join(dirpath, name)
                yield full, os.path.getsize(full)

    def delete(self, key: str) -> None:
        path = Path(key)
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
