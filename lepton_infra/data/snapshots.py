"""Checkpoint snapshots that a lost node cannot corrupt (shipped to nodes with the sweep worker).

A snapshot of a job's output/ goes to a new generation folder, `<prefix>/checkpoint/g<ns>/`
(manifest last), and only then does `<prefix>/checkpoint/LATEST.json` name it: a node lost
mid-upload leaves a half-written generation nobody points at, and the last committed one untouched.
Generations older than the one just replaced are deleted. The node-side uploader of `run` jobs
(`lepton_infra/node/upload/`) writes the same layout; this module is the Store-side reader and the
sweep worker's writer."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lepton_infra.data.store import Store, StoreError

SNAPSHOT_DIR = "checkpoint"
POINTER = "LATEST.json"


def _generation(store: Store, base: str) -> str | None:
    try:
        pointer = json.loads(store.get(f"{base}/{POINTER}"))
    except (StoreError, ValueError):
        return None
    gen = pointer.get("generation") if isinstance(pointer, dict) else None
    return gen if isinstance(gen, str) and gen.startswith("g") and "/" not in gen else None


def latest_snapshot(store: Store, prefix: str) -> str | None:
    """The folder of the last committed snapshot of `prefix`, or None. A store written before
    generations existed (a manifest right in `checkpoint/`) is still read."""
    base = f"{prefix}/{SNAPSHOT_DIR}"
    gen = _generation(store, base)
    if gen is not None and store.manifest(f"{base}/{gen}") is not None:
        return f"{base}/{gen}"
    return base if store.manifest(base) is not None else None


def commit_snapshot(store: Store, local: Path, prefix: str) -> str:
    """Upload `local` as a new generation, point LATEST.json at it, drop the older ones; returns
    the new generation's folder."""
    base = f"{prefix}/{SNAPSHOT_DIR}"
    previous = _generation(store, base)
    gen = f"g{time.time_ns()}"
    store.upload_dir(local, f"{base}/{gen}")
    store.put(f"{base}/{POINTER}", json.dumps({"generation": gen, "committed_at": time.time()}).encode())
    for obj in store.list(base):
        top = obj.key[len(base) + 1 :].split("/", 1)[0]
        if top.startswith("g") and top not in (gen, previous):
            store.delete(obj.key)
    return f"{base}/{gen}"


def drop_snapshots(store: Store, prefix: str) -> int:
    """Delete every snapshot of `prefix` (its final result is committed: one copy is enough)."""
    return store.delete_prefix(f"{prefix}/{SNAPSHOT_DIR}")
