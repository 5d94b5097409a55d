"""Node-side bootstrap: reserve a run directory and receive a workload into the content cache.

Sent as `python -c "<this source>" prepare|receive ...` because it has to work on a node where
nothing was shipped yet. Standard library only. Layout it maintains on the node:

    ~/.lepton/cache/<sha256>             one read-only file per distinct content (shared by runs)
    ~/.lepton/runs/<run-id>/workload/    the workload, hard-linked (or copied) from the cache
    ~/.lepton/runs/<run-id>/.agent/agent.py

`prepare` (JSON request on stdin) creates the run directory with one `mkdir`, which is atomic, so a
run id can never be taken twice on a node; it answers which blobs the cache lacks and, on node 0,
a free rendezvous port. `receive RUN_DIR` reads one tar stream of `blobs/<sha256>` members plus a
`manifest.json` on stdin, verifies every blob's hash, moves it into the cache and materialises
the workload tree."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tarfile
from typing import IO, Any

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def lepton_home() -> str:
    # $HOME, not the passwd entry: local pool nodes share a user but each has its own HOME.
    return os.path.join(os.path.expanduser("~"), ".lepton")


def _port_free(addr: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((addr, port))
        except OSError:
            return False
    return True


def prepare(request: dict[str, Any]) -> dict[str, Any]:
    home = lepton_home()
    runs = os.path.join(home, "runs")
    cache = os.path.join(home, "cache")
    os.makedirs(runs, exist_ok=True)
    os.makedirs(cache, exist_ok=True)
    run_dir = os.path.join(runs, request["run_id"])
    try:
        os.mkdir(run_dir)
    except FileExistsError:
        return {"home": os.path.expanduser("~"), "run_dir": run_dir, "exists": True}
    missing = []
    for digest, size in sorted(request.get("blobs", {}).items()):
        try:
            # A size check is cheap and catches a cache file a job overwrote through a hard link.
            if os.stat(os.path.join(cache, digest)).st_size == size:
                continue
        except OSError:
            pass
        missing.append(digest)
    port = None
    probe = request.get("port_probe")
    if probe:
        # Walk upwards from the run's preferred port; another run's rendezvous may hold it.
        for candidate in range(probe["port"], probe["port"] + 64):
            if _port_free(probe["addr"], candidate):
                port = candidate
                break
    return {
        "home": os.path.expanduser("~"),
        "run_dir": run_dir,
        "exists": False,
        "missing": missing,
        "port": port,
    }


def _safe_rel(rel: str) -> str:
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        raise ValueError(f"unsafe path in manifest: {rel!r}")
    return norm


def _place(src: str, dst: str, mode: int) -> str:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not mode & 0o111:
        try:
            os.link(src, dst)
            return "linked"
        except OSError:
            pass  # another filesystem, or links not allowed: fall back to a copy
    shutil.copyfile(src, dst)
    os.chmod(dst, mode & 0o777 or 0o644)
    return "copied"


def receive(run_dir: str, stream: IO[bytes]) -> dict[str, Any]:
    cache = os.path.join(lepton_home(), "cache")
    os.makedirs(cache, exist_ok=True)
    manifest = None
    received = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name == "manifest.json":
                fobj = tar.extractfile(member)
                assert fobj is not None
                manifest = json.loads(fobj.read().decode("utf-8"))
                continue
            digest = member.name[len("blobs/") :]
            if not member.name.startswith("blobs/") or not _HEX64.match(digest) or not member.isfile():
                raise ValueError(f"unexpected member in workload stream: {member.name!r}")
            fobj = tar.extractfile(member)
            assert fobj is not None
            tmp = os.path.join(cache, f".{digest}.{os.getpid()}.tmp")
            hasher = hashlib.sha256()
            with open(tmp, "wb") as out:
                while True:
                    chunk = fobj.read(1 << 20)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
            if hasher.hexdigest() != digest:
                os.unlink(tmp)
                raise ValueError(f"blob {digest} arrived corrupted (sha256 {hasher.hexdigest()})")
            # Read-only, then an atomic rename: a concurrent run never sees half a blob.
            os.chmod(tmp, 0o444)
            os.replace(tmp, os.path.join(cache, digest))
            received += 1
    if manifest is None:
        raise ValueError("workload stream has no manifest.json")
    counts = {"linked": 0, "copied": 0}
    workload = os.path.join(run_dir, "workload")
    os.makedirs(workload, exist_ok=True)
    for rel, (digest, mode) in sorted(manifest["files"].items()):
        dst = os.path.join(workload, _safe_rel(rel))
        counts[_place(os.path.join(cache, digest), dst, int(mode))] += 1
    agent_dir = os.path.join(run_dir, ".agent")
    os.makedirs(agent_dir, exist_ok=True)
    _place(os.path.join(cache, manifest["agent"]), os.path.join(agent_dir, "agent.py"), 0o644)
    return {"received": received, "files": len(manifest["files"]), **counts}


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "prepare":
        print(json.dumps(prepare(json.loads(sys.stdin.read()))))
        return 0
    if command == "receive" and len(argv) == 3:
        print(json.dumps(receive(argv[2], sys.stdin.buffer)))
        return 0
    print(
        f"usage: bootstrap prepare < request.json | bootstrap receive RUN_DIR < stream.tar (got {argv[1:]})"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
