"""Sweeps: one queue message per (configuration, repeat), a detached worker per node taking them
(`lepton_infra.data.sweep_worker`), results in `<store>/sweeps/<sweep-id>/<job-id>/`.

The controller only submits and reports: after `submit` returns, the workers finish the sweep
without it, and `status` reads everything back from the store and the dead-letter queue."""

from __future__ import annotations

import itertools
import json
import secrets
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import lepton_infra
from lepton_infra.data import open_queue, open_store
from lepton_infra.data.queue import Queue
from lepton_infra.data.store import Store
from lepton_infra.data.sweep_ledger import archive_dead_letters, job_prefix, read_ledger, sweep_key
from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import jobspec
from lepton_infra.workload.ssh import connect_all, parallel

_SKIP_DIRS = {".git", "__pycache__", "runs", ".mypy_cache", ".ruff_cache", ".pytest_cache", "outputs"}
_PKG = Path(lepton_infra.__file__).parent
# What a node needs to run the worker: our error types and the data package (stdlib-only for local).
_SHIPPED_LIB = ["__init__.py", "errors.py", "data"]
DEFAULT_METRIC = "final_test_accuracy"
BUNDLE = "bundle.tar"


def remote_dir(sweep_id: str) -> str:
    return '"$HOME"/.lepton/sweeps/' + shlex.quote(sweep_id)


def parse_value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(items: Sequence[str]) -> dict[str, list[int | float | str]]:
    """`["lr=0.1,0.01", "batch_size=64,128"]` -> {"lr": [0.1, 0.01], "batch_size": [64, 128]}."""
    grid: dict[str, list[int | float | str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"--grid {item!r}: expected NAME=V1,V2,... (NAME letters, digits, '_' or '-')")
        parsed = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ConfigError(f"--grid {item!r}: no values after '='")
        if key in grid:
            raise ConfigError(f"--grid {key!r} given twice; put all its values in one --grid {key}=V1,V2")
        grid[key] = parsed
    return grid


def plan_jobs(
    sweep_id: str, workload: str, grid: dict[str, list[int | float | str]], repeats: int, args: Sequence[str]
) -> list[dict[str, Any]]:
    if repeats < 1:
        raise ConfigError(f"--repeats is {repeats}; it must be at least 1")
    keys = list(grid)
    jobs = []
    for c, combo in enumerate(itertools.product(*(grid[k] for k in keys)) if keys else [()]):
        for r in range(repeats):
            jobs.append(
                {
                    "sweep_id": sweep_id,
                    "job_id": f"c{c:03d}-r{r}",
                    "config": f"c{c:03d}",
                    "repeat": r,
                    "workload": workload,
                    "params": dict(zip(keys, combo, strict=True)),
                    "args": list(args),
                }
            )
    return jobs


@dataclass
class Sweep:
    sweep_id: str
    store: str
    queue: str
    jobs: list[dict[str, Any]]
    workers: dict[str, str] = field(default_factory=dict)  # node -> worker dir on the node


def _bundle(workload_dir: Path, out: IO[bytes]) -> None:
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for path in sorted(workload_dir.rglob("*")):
            rel = path.relative_to(workload_dir)
            if any(part in _SKIP_DIRS for part in rel.parts) or not path.is_file():
                continue
            tar.add(path, arcname=f"workload/{rel.as_posix()}", recursive=False)
        for name in _SHIPPED_LIB:
            src = _PKG / name
            files = [src] if src.is_file() else sorted(src.glob("*.py"))
            for f in files:
                tar.add(f, arcname=f"lib/lepton_infra/{f.relative_to(_PKG).as_posix()}", recursive=False)


def open_plane(inventory: Inventory) -> tuple[Store, Queue]:
    """The inventory's store and queue, checked: ConfigError naming the URL before any job exists."""
    if not inventory.store or not inventory.queue:
        missing = " and ".join(k for k in ("store", "queue") if not getattr(inventory, k))
        raise ConfigError(
            f"inventory of {inventory.cluster!r} has no {missing}; sweeps need both (a cluster with "
            "store and queue, or `lepton-infra local up`)"
        )
    region = inventory.region  # the cluster's, not this machine's profile's
    store, queue = open_store(inventory.store, region=region), open_queue(inventory.queue, region=region)
    store.check()
    queue.check()
    return store, queue


@dataclass(frozen=True)
class WorkerSettings:
    """How the workers of one sweep behave; kept in sweep.json so `sweep resume` starts the same."""

    visibility_timeout_s: int = 300
    idle_exit_s: float | None = None  # default: visibility timeout + 60 s
    heartbeat_s: float = 10.0
    retry_backoff_s: float = 10.0
    snapshot_s: float = 30.0
    check_s: float = 2.0  # how soon a running job sees a cancel or a prune

    def argv(self) -> list[str]:
        idle = self.idle_exit_s if self.idle_exit_s is not None else self.visibility_timeout_s + 60
        return [
            "--visibility-timeout-s", str(self.visibility_timeout_s), "--idle-exit-s", str(idle),
            "--heartbeat-s", str(self.heartbeat_s), "--retry-backoff-s", str(self.retry_backoff_s),
            "--snapshot-s", str(self.snapshot_s), "--check-s", str(self.check_s),
        ]  # fmt: skip

    def stale_after_s(self) -> float:
        """A worker silent this long is dead (three missed beats, and slack for a slow store)."""
        return 3 * self.heartbeat_s + 5


def submit(
    inventory: Inventory,
    workload_dir: Path,
    grid: dict[str, list[int | float | str]],
    *,
    repeats: int = 1,
    args: Sequence[str] = (),
    sweep_id: str | None = None,
    visibility_timeout_s: int = 300,
    idle_exit_s: float | None = None,
    connect_timeout: float = 10.0,
    settings: WorkerSettings | None = None,
    jobs: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Sweep:
    """Check the store and queue, enqueue every job (the grid's, or `jobs` as given: a search
    queues its own), ship the workload and start one worker per node."""
    workload_dir = Path(workload_dir)
    if not workload_dir.is_dir():
        raise ConfigError(f"workload {str(workload_dir)!r} is not a directory")
    entrypoint = jobspec.read_entrypoint(workload_dir)
    sweep_id = jobspec.check_run_id(
        sweep_id or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    )
    settings = settings or WorkerSettings(visibility_timeout_s=visibility_timeout_s, idle_exit_s=idle_exit_s)
    store, queue = open_plane(inventory)
    if store.exists(sweep_key(sweep_id)):
        raise ConfigError(f"sweep id {sweep_id!r} already exists in {store.url}; choose another")
    busy = running_sweeps(store, queue)
    if busy:
        # Workers serve one sweep; a second sweep on the same queue would wait behind the first.
        raise ConfigError(
            f"sweep(s) {', '.join(busy)} still have unfinished jobs on queue {queue.url!r}; wait for them "
            "(`lepton-infra sweep status ID`), or end one with `lepton-infra sweep cancel ID`, before "
            "starting another"
        )
    workload = workload_dir.resolve().name
    if jobs is None:
        jobs = plan_jobs(sweep_id, workload, grid, repeats, args)
    conns = connect_all(inventory, connect_timeout)  # every node reachable before anything is queued
    try:
        record = {
            "sweep_id": sweep_id,
            "workload": workload,
            "entrypoint": entrypoint,
            "grid": grid,
            "repeats": repeats,
            "args": list(args),
            "jobs": jobs,
            "submitted": time.time(),
            "nodes": [n.name for n in inventory.nodes],
            "worker": asdict(settings),
            **(extra or {}),
        }
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle.tar"
            with bundle.open("wb") as out:
                _bundle(workload_dir, out)
            # Kept with the sweep: `sweep resume` restarts workers on fresh nodes without the folder.
            store.put(f"sweeps/{sweep_id}/{BUNDLE}", bundle)
            store.put(sweep_key(sweep_id), json.dumps(record, indent=1).encode())
            for job in jobs:
                queue.send(json.dumps(job))
            workers = start_workers(conns, inventory, record, store.url, queue.url, bundle)
    finally:
        for conn in conns:
            conn.close()
    return Sweep(sweep_id, store.url, queue.url, jobs, workers)


def start_workers(
    conns: Sequence[Any],
    inventory: Inventory,
    record: dict[str, Any],
    store_url: str,
    queue_url: str,
    bundle: Path,
) -> dict[str, str]:
    """Unpack `bundle` on every node and start a detached worker there; returns node -> its dir."""
    sweep_id = record["sweep_id"]
    settings = WorkerSettings(**record.get("worker", {}))
    python = inventory.python
    # The cluster's region: the worker's store and queue clients need it (jobspec.cluster_env).
    cluster = " ".join(f"{k}={shlex.quote(v)}" for k, v in jobspec.cluster_env(inventory).items())

    def start(conn: Any) -> str:
        d = remote_dir(sweep_id)
        worker = [
            python, "-m", "lepton_infra.data.sweep_worker",
            "--queue", queue_url, "--store", store_url, "--sweep-id", sweep_id,
            "--workload", record["workload"], "--entrypoint", record.get("entrypoint", "train.py"),
            "--node", conn.name, *settings.argv(),
        ]  # fmt: skip
        # Unpack in the foreground (a background list reads /dev/null, not our stream), then
        # start the worker in its own session with all three stdio redirected, so it outlives SSH.
        command = (
            f'D={d}; mkdir -p "$D" && tar -x -C "$D" && cd "$D" && '
            f'{{ PYTHONPATH="$D/lib" {cluster} setsid {" ".join(shlex.quote(w) for w in worker)} --workdir "$D" '
            f'< /dev/null >> "$D/worker.log" 2>&1 & echo $! > "$D/worker.pid"; }} && echo "$D"'
        )

        def send(out: IO[bytes]) -> None:
            with bundle.open("rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)

        result, _, _ = conn.run_upload(command, send)
        return str(result.stdout.decode().strip().splitlines()[-1])

    return {conn.name: path for conn, path in zip(conns, parallel(list(conns), start), strict=True)}


@dataclass(frozen=True)
class JobRow:
    job_id: str
    config: str
    params: dict[str, Any]
    state: str  # done | dead | pruned | cancelled | pending
    node: str | None = None
    metric: float | None = None
    detail: str = ""


def status(store: Store, queue: Queue, sweep_id: str, metric: str = DEFAULT_METRIC) -> list[JobRow]:
    """Every job of the sweep: done (result committed), dead (in the dead-letter queue, with the
    reason) or pending (queued or running)."""
    try:
        record = json.loads(store.get(sweep_key(sweep_id)))
    except Exception as exc:
        raise ConfigError(f"no sweep {sweep_id!r} in {store.url} ({exc})") from exc
    archive_dead_letters(store, queue)
    ledger = read_ledger(store, sweep_id)
    rows = []
    for job in record["jobs"]:
        job_id = job["job_id"]
        if job_id in ledger.committed:
            value, node = _result(store, sweep_id, job_id, metric)
            rows.append(JobRow(job_id, job["config"], job["params"], "done", node, value))
        elif job_id in ledger.ended:
            end = ledger.ended[job_id]
            rows.append(JobRow(job_id, job["config"], job["params"], str(end["state"]), detail=end["reason"]))
        else:
            state = "pending" if ledger.cancelled is None else "cancelled"
            rows.append(JobRow(job_id, job["config"], job["params"], state))
    return rows


def running_sweeps(store: Store, queue: Queue) -> list[str]:
    """Sweeps in this store, not cancelled, with jobs that have neither a result nor an end record."""
    archive_dead_letters(store, queue)
    out = []
    for obj in store.list("sweeps"):
        parts = obj.key.split("/")
        if len(parts) == 3 and parts[2] == "sweep.json":
            record = json.loads(store.get(obj.key))
            jobs = {j["job_id"] for j in record["jobs"]}
            ledger = read_ledger(store, parts[1])
            open_search = bool(record.get("search")) and not record.get("closed")
            if ledger.cancelled is None and (open_search or not jobs <= ledger.done()):
                out.append(parts[1])
    return out


def _result(store: Store, sweep_id: str, job_id: str, metric: str) -> tuple[float | None, str | None]:
    prefix = job_prefix(sweep_id, job_id)
    node = None
    try:
        node = json.loads(store.get(f"{prefix}/job.json")).get("node")
        value = json.loads(store.get(f"{prefix}/output/metrics.json")).get(metric)
        return (float(value) if isinstance(value, int | float) else None), node
    except Exception:
        return None, node


def summary(rows: Sequence[JobRow], *, minimize: bool = False) -> list[dict[str, Any]]:
    """One row per configuration: mean metric over its finished repeats, best first."""
    by_config: dict[str, list[JobRow]] = {}
    for row in rows:
        by_config.setdefault(row.config, []).append(row)
    out: list[dict[str, Any]] = []
    for config, group in by_config.items():
        values = [r.metric for r in group if r.metric is not None]
        out.append(
            {
                "config": config,
                "params": group[0].params,
                "done": sum(r.state == "done" for r in group),
                "dead": sum(r.state == "dead" for r in group),
                "pruned": sum(r.state == "pruned" for r in group),
                "jobs": len(group),
                "mean": sum(values) / len(values) if values else None,
            }
        )
    missing = float("inf") if minimize else float("-inf")
    out.sort(key=lambda s: s["mean"] if s["mean"] is not None else missing, reverse=not minimize)
    return out
