"""Where each job of a sweep stands, read from the store alone (shipped to nodes with the worker).

A job has ended when its result is committed (`sweeps/<id>/<job>/_lepton_manifest.json`) or when an
end record says why it will never run again (`sweeps/<id>/_ended/<job>.json`: dead-lettered, pruned).
Dead letters are not counted where they sit: `archive_dead_letters` moves every one of them, of
every sweep, into the store and off the queue, so a sweep's end never depends on how many other
letters a dead-letter queue holds or how many of them one read returns. Letters no worker could
parse are kept under `sweeps/_malformed/` for `sweep status` to show.

Workers publish liveness as `sweeps/<id>/_workers/<node>.json` (node, pid, state, time of the last
beat); a sweep whose workers all stopped beating is reported instead of watched for ever."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from lepton_infra.data.queue import DeadLetter, Queue
from lepton_infra.data.store import MANIFEST, Store

ENDED_DIR = "_ended"
WORKERS_DIR = "_workers"
MALFORMED_PREFIX = "sweeps/_malformed"
CANCELLED = "cancelled.json"


def sweep_key(sweep_id: str) -> str:
    return f"sweeps/{sweep_id}/sweep.json"


def job_prefix(sweep_id: str, job_id: str) -> str:
    return f"sweeps/{sweep_id}/{job_id}"


def _safe_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith((".", "_"))


def end_job(store: Store, sweep_id: str, job_id: str, state: str, reason: str) -> None:
    """Record that `job_id` ended without a result (`dead`, `pruned`, `cancelled`), and why."""
    _put_ends(store, sweep_id, job_id, {job_id: _end(state, reason)})


def _end(state: str, reason: str) -> dict[str, Any]:
    return {"state": state, "reason": reason[:2000], "at": time.time()}


def _put_ends(store: Store, sweep_id: str, name: str, jobs: dict[str, dict[str, Any]]) -> None:
    store.put(f"sweeps/{sweep_id}/{ENDED_DIR}/{name}.json", json.dumps({"jobs": jobs}).encode())


def archive_dead_letters(store: Store, queue: Queue) -> int:
    """Move every dead letter of `queue` into the store (then off the queue); returns how many.
    One object per sweep per batch, so archiving a thousand letters is a handful of writes."""

    def keep(letters: list[DeadLetter]) -> None:
        by_sweep: dict[str, dict[str, dict[str, Any]]] = {}
        odd = []
        for letter in letters:
            try:
                job = json.loads(letter.body)
            except ValueError:
                job = None
            if isinstance(job, dict) and _safe_name(job.get("sweep_id")) and _safe_name(job.get("job_id")):
                by_sweep.setdefault(job["sweep_id"], {})[job["job_id"]] = _end("dead", letter.reason)
            else:
                odd.append({"id": letter.id, "body": letter.body[:4000], "reason": letter.reason})
        batch = f"dead-{time.time_ns()}-{uuid.uuid4().hex[:6]}"
        for sweep_id, jobs in by_sweep.items():
            _put_ends(store, sweep_id, batch, jobs)
        if odd:
            body = {"at": time.time(), "letters": odd}
            store.put(f"{MALFORMED_PREFIX}/{batch}.json", json.dumps(body).encode())

    return queue.drain_dead_letters(keep)


@dataclass
class Ledger:
    """One listing of `sweeps/<id>/`: committed jobs, ended ones with their records, worker beats."""

    committed: set[str] = field(default_factory=set)
    ended: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: dict[str, Any] | None = None

    def done(self) -> set[str]:
        return self.committed | set(self.ended)


def read_ledger(store: Store, sweep_id: str) -> Ledger:
    ledger = Ledger()
    for obj in store.list(f"sweeps/{sweep_id}"):
        parts = obj.key.split("/")
        if len(parts) == 4 and parts[3] == MANIFEST:
            ledger.committed.add(parts[2])
        elif len(parts) == 4 and parts[2] in (ENDED_DIR, WORKERS_DIR) and parts[3].endswith(".json"):
            try:
                record = json.loads(store.get(obj.key))
            except Exception:  # noqa: BLE001 - a record being rewritten: read it next time
                continue
            if parts[2] == WORKERS_DIR:
                ledger.workers[parts[3][: -len(".json")]] = record
            else:
                for job_id, end in (record.get("jobs") or {}).items():
                    ledger.ended.setdefault(job_id, end)
        elif len(parts) == 3 and parts[2] == CANCELLED:
            ledger.cancelled = json.loads(store.get(obj.key))
    for job_id in ledger.committed:  # a committed result wins over a later dead letter of a duplicate
        ledger.ended.pop(job_id, None)
    return ledger


def beat(store: Store, sweep_id: str, node: str, pid: int, state: str = "running") -> None:
    """Publish that the worker on `node` is alive (or, with state `exited`, that it stopped)."""
    body = {"node": node, "pid": pid, "state": state, "at": time.time()}
    store.put(f"sweeps/{sweep_id}/{WORKERS_DIR}/{node}.json", json.dumps(body).encode())


def live_workers(ledger: Ledger, stale_after_s: float, now: float | None = None) -> list[str]:
    """Nodes whose worker beat within `stale_after_s` and has not said it exited."""
    now = time.time() if now is None else now
    return sorted(
        node
        for node, w in ledger.workers.items()
        if w.get("state") == "running" and now - float(w.get("at", 0)) <= stale_after_s
    )


def malformed(store: Store, since: float = 0.0) -> list[dict[str, Any]]:
    """Dead letters no sweep could claim (not JSON, no sweep id), archived at or after `since`."""
    out: list[dict[str, Any]] = []
    for obj in store.list(MALFORMED_PREFIX):
        try:
            record = json.loads(store.get(obj.key))
        except Exception:  # noqa: BLE001
            continue
        if float(record.get("at", 0)) >= since:
            out += record.get("letters") or []
    return out
