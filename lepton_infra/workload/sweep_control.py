"""A sweep after submission: is anyone still working on it, restart its workers, or end it.

Workers beat into the store (`lepton_infra.data.sweep_ledger`); a sweep with unfinished jobs and no
beat for `WorkerSettings.stale_after_s()` is stalled, and says so instead of being watched for ever.
`resume` starts workers again on the inventory's nodes from the bundle kept with the sweep (the
workload folder is not needed); `cancel` marks the sweep cancelled (its record stays), takes its
messages off the queue, and its live workers stop their jobs and exit."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from lepton_infra.data.queue import Message, Queue
from lepton_infra.data.store import Store
from lepton_infra.data.sweep_ledger import CANCELLED, live_workers, read_ledger, sweep_key
from lepton_infra.errors import ConfigError, LeptonError
from lepton_infra.inventory import Inventory
from lepton_infra.workload.ssh import connect_all
from lepton_infra.workload.sweep import BUNDLE, WorkerSettings, open_plane, start_workers


class SweepStalled(LeptonError):
    """Jobs remain but no worker has shown a sign of life for a while (exit 3: infrastructure)."""

    exit_code = 3


def load_record(store: Store, sweep_id: str) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(store.get(sweep_key(sweep_id)))
    except Exception as exc:
        raise ConfigError(f"no sweep {sweep_id!r} in {store.url} ({exc})") from exc
    return record


def liveness(store: Store, sweep_id: str, now: float | None = None) -> tuple[list[str], str | None]:
    """(nodes whose worker is alive, why the sweep is stalled or None). A sweep is stalled when
    jobs remain and no worker beat for the sweep's bound since it was submitted or resumed."""
    now = time.time() if now is None else now
    record = load_record(store, sweep_id)
    settings = WorkerSettings(**record.get("worker", {}))
    ledger = read_ledger(store, sweep_id)
    bound = settings.stale_after_s()
    alive = live_workers(ledger, bound, now)
    pending = {j["job_id"] for j in record["jobs"]} - ledger.done()
    if alive or not pending or ledger.cancelled is not None:
        return alive, None
    last = max([float(record.get("submitted", 0)), float(record.get("resumed", 0))]
               + [float(w.get("at", 0)) for w in ledger.workers.values()])  # fmt: skip
    if now - last <= bound:
        return alive, None  # workers still starting, or only just gone quiet
    return alive, (
        f"sweep {sweep_id}: {len(pending)} job(s) unfinished and no worker alive for {now - last:.0f} s; "
        f"`lepton-infra sweep resume {sweep_id}` restarts workers on the inventory's nodes, "
        f"`lepton-infra sweep cancel {sweep_id}` ends it"
    )


def resume(inventory: Inventory, sweep_id: str, connect_timeout: float = 10.0) -> dict[str, str]:
    """Start the sweep's workers again on the inventory's nodes (unless some are alive); returns
    node -> worker dir of those started."""
    store, queue = open_plane(inventory)
    record = load_record(store, sweep_id)
    ledger = read_ledger(store, sweep_id)
    if ledger.cancelled is not None:
        raise ConfigError(f"sweep {sweep_id!r} was cancelled; start a new sweep instead")
    open_search = bool(record.get("search")) and not record.get("closed")
    if not open_search and {j["job_id"] for j in record["jobs"]} <= ledger.done():
        raise ConfigError(f"sweep {sweep_id!r} has no unfinished job; nothing to resume")
    if live_workers(ledger, WorkerSettings(**record.get("worker", {})).stale_after_s()):
        return {}  # its workers still serve it (only a search controller had stopped)
    conns = connect_all(inventory, connect_timeout)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / BUNDLE
            store.download(f"sweeps/{sweep_id}/{BUNDLE}", bundle)
            record["resumed"] = time.time()
            store.put(sweep_key(sweep_id), json.dumps(record, indent=1).encode())
            return start_workers(conns, inventory, record, store.url, queue.url, bundle)
    finally:
        for conn in conns:
            conn.close()


def cancel(inventory: Inventory, sweep_id: str) -> int:
    """Mark the sweep cancelled and take its waiting messages off the queue; returns how many.
    Messages held by workers are dropped by them (a live worker stops its job at its next check;
    any worker drops a cancelled sweep's message it receives later)."""
    store, queue = open_plane(inventory)
    load_record(store, sweep_id)
    body = {"sweep_id": sweep_id, "at": time.time()}
    store.put(f"sweeps/{sweep_id}/{CANCELLED}", json.dumps(body).encode())
    return purge_messages(queue, sweep_id)


def purge_messages(queue: Queue, sweep_id: str) -> int:
    """Ack every visible message of `sweep_id`; others are handed back untouched at the end."""
    purged, others = 0, []
    while got := queue.receive(max_messages=10, visibility_timeout_s=60, wait_s=1):
        for message in got:
            if _sweep_of(message) == sweep_id:
                queue.ack(message)
                purged += 1
            else:
                others.append(message)
    for message in others:
        queue.release(message)
    return purged


def _sweep_of(message: Message) -> str | None:
    try:
        body = json.loads(message.body)
    except ValueError:
        return None
    return body.get("sweep_id") if isinstance(body, dict) else None
