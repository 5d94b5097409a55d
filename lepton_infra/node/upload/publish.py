"""Results to the store: `upload` (every file with its SHA-256, the manifest last, so a folder
without it is known to be incomplete) and checkpoint snapshots, committed by a pointer.

`snapshot` writes a new generation `PREFIX/g<ns>/`, then `PREFIX/LATEST.json` names it, then the
generation before the replaced one is deleted: a node lost mid-snapshot leaves the last committed
generation untouched (`lepton_infra.data.snapshots` reads this layout). `drop_snapshots` deletes
`PREFIX/checkpoint/` once the final upload is committed, so the store keeps one copy of output/."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .stores import MANIFEST, WORKERS, reader_for, remover_for, sha256_file, writer_for

POINTER = "LATEST.json"


def upload(url: str, prefix: str, sources: dict[str, str]) -> dict[str, object]:
    """Upload each source dir (or file) under `prefix/<name>/`, then the manifest; returns it."""
    write, base = writer_for(url)
    root = "/".join(p for p in (base, prefix.strip("/")) if p)
    files: list[tuple[str, str]] = []
    for name, source in sources.items():
        if os.path.isfile(source):
            files.append((name, source))
            continue
        for dirpath, _dirs, names in os.walk(source):
            for fname in names:
                full = os.path.join(dirpath, fname)
                if os.path.isfile(full) and not os.path.islink(full):
                    rel = os.path.relpath(full, source).replace(os.sep, "/")
                    files.append((f"{name}/{rel}" if name else rel, full))

    def one(item: tuple[str, str]) -> tuple[str, dict[str, object]]:
        rel, full = item
        sha = sha256_file(full)
        write(f"{root}/{rel}", full, None, sha)
        return rel, {"size": os.path.getsize(full), "sha256": sha}

    with ThreadPoolExecutor(WORKERS) as pool:
        entries = dict(pool.map(one, sorted(files)))
    manifest: dict[str, object] = {
        "version": 1,
        "committed_at": time.time(),
        "files": entries,
        "bytes": sum(int(e["size"]) for e in entries.values()),  # type: ignore[call-overload]
    }
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    write(f"{root}/{MANIFEST}", None, body, hashlib.sha256(body).hexdigest())
    return manifest


def _pointer(url: str, key: str) -> dict[str, Any]:
    read, _ = reader_for(url)
    fd, tmp = tempfile.mkstemp(prefix=".pointer-")
    os.close(fd)
    try:
        read(key, tmp)
        with open(tmp, "rb") as fh:
            loaded = json.loads(fh.read())
        return loaded if isinstance(loaded, dict) else {}
    except Exception:  # noqa: BLE001 - no snapshot yet (or an unreadable pointer): start afresh
        return {}
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def snapshot(url: str, prefix: str, sources: dict[str, str]) -> dict[str, object]:
    """Upload `sources` as a new generation under `prefix`, then point LATEST.json at it."""
    write, base = writer_for(url)
    folder = "/".join(p for p in (base, prefix.strip("/")) if p)
    current = _pointer(url, f"{folder}/{POINTER}")
    gen = f"g{time.time_ns()}"
    manifest = upload(url, f"{prefix.strip('/')}/{gen}", sources)
    body = json.dumps({"generation": gen, "previous": current.get("generation"), "committed_at": time.time()})
    write(f"{folder}/{POINTER}", None, body.encode(), hashlib.sha256(body.encode()).hexdigest())
    older = current.get("previous")
    if isinstance(older, str) and older.startswith("g") and "/" not in older:
        remove, _ = remover_for(url)
        remove(f"{folder}/{older}")  # neither the new one nor the one it replaced
    return manifest


def drop_snapshots(url: str, prefix: str) -> None:
    remove, base = remover_for(url)
    remove("/".join(p for p in (base, prefix.strip("/"), "checkpoint") if p))
