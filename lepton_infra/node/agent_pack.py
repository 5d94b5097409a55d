"""`agent.py pack`: the run's logs, outputs and state as one tar stream to stdout, for the
controller's collection, sending only what it does not hold yet and within its limits.
Standard library only; part of the agent shipped with every run (see agent.py)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
from typing import IO, Any

try:  # as lepton_infra.node.* on the controller; top-level modules inside the shipped agent
    from . import agent_files as files
except ImportError:
    import agent_files as files  # type: ignore[no-redef]


PACK_MANIFEST = ".lepton-pack.json"  # the first member of every pack: what it holds


def pack(run_dir: str, out: IO[bytes], request: dict[str, Any] | None = None) -> None:
    """A tar of logs/, output/, state.json and spec.json to `out`. `request["have"]` maps the
    paths the controller already holds to [size, mtime]: those are not sent again; files past
    `request["max_files"]` or `request["max_bytes"]` are held back (listed, not sent). The first
    member, PACK_MANIFEST, says what follows and what was held back, so the controller can check
    its space before it writes anything and say what it did not get."""
    request = request or {}
    have = request.get("have") or {}
    max_files, max_bytes = request.get("max_files"), request.get("max_bytes")
    entries: list[tuple[str, str]] = []
    total: dict[str, Any] = {"files": 0, "bytes": 0, "send_files": 0, "send_bytes": 0, "skipped": 0}
    held: list[dict[str, Any]] = []
    for top in ("logs", "output"):  # the logs first: past a limit, they matter most
        root = files.path(run_dir, top)
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        entries.append((root, top))
        for dirpath, dirs, filenames in os.walk(root):
            dirs.sort()
            rel_dir = os.path.relpath(dirpath, run_dir)
            for name in dirs:
                entries.append((os.path.join(dirpath, name), os.path.join(rel_dir, name)))
            for name in sorted(filenames):
                path, rel = os.path.join(dirpath, name), os.path.join(rel_dir, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                total["files"] += 1
                total["bytes"] += size
                if have.get(rel) == [size, int(st.st_mtime)]:
                    total["skipped"] += 1
                    continue
                why = None
                if isinstance(max_files, int) and total["send_files"] + 1 > max_files:
                    why = "max_files"
                elif isinstance(max_bytes, int) and total["send_bytes"] + size > max_bytes:
                    why = "max_bytes"
                if why:
                    held.append({"path": rel, "size": size, "why": why})
                    continue
                total["send_files"] += 1
                total["send_bytes"] += size
                entries.append((path, rel))
    for name in ("state.json", "spec.json"):
        if os.path.exists(files.path(run_dir, name)):
            entries.append((files.path(run_dir, name), name))
    total.update(held_back=held[:20], held_back_count=len(held), held_back_bytes=sum(h["size"] for h in held))
    manifest = json.dumps(total).encode()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        info = tarfile.TarInfo(PACK_MANIFEST)
        info.size, info.mtime = len(manifest), int(time.time())
        tar.addfile(info, io.BytesIO(manifest))
        for path, arcname in entries:
            try:
                tar.add(path, arcname=arcname, recursive=False)
            except OSError:
                continue  # vanished while packing (a job still writing): the next collect has it
