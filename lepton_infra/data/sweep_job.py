"""One sweep job as a child process of the worker (standard library only: it runs on nodes).

`run_job` starts the job in its own process group, which dies with the worker (a SIGKILLed worker
leaves no orphan), and calls `tick()` about once a second while it runs; a tick that returns a
reason (the sweep was cancelled, the trial was pruned, the message went to another worker) stops
the whole group and `run_job` returns that reason instead of an exit code.

`ProgressTail` reads the job's log as it grows and keeps its `LEPTON_PROGRESS {json}` lines (the
protocol `run` jobs already speak), which the worker publishes for the search controller."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_infra.data.snapshots import commit_snapshot
from lepton_infra.data.store import Store

_PR_SET_PDEATHSIG = 1
PROGRESS_PREFIX = "LEPTON_PROGRESS "
_STOP_GRACE_S = 5.0
_MAX_LINE = 64 * 1024
STOP_FLAG = "_stop.json"  # the controller's request to stop one job (a pruned trial)
PROGRESS = "_progress.json"  # the job's LEPTON_PROGRESS records so far
STARTED = "_started.json"  # a worker took the job (node, receive count, time)


def _die_with_parent() -> None:
    # The job must not outlive a killed worker: the kernel sends it SIGKILL when we die (Linux).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    os.setsid()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_job(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, tick: Callable[[], str | None]
) -> int | str:
    """The job's exit code, or the reason a tick gave for stopping it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - argv is ours: the shipped entrypoint and its args
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl must run in the child
        )
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            reason = tick()
            if reason is not None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
                return reason


class ProgressTail:
    """The `LEPTON_PROGRESS` records of a growing log, in order (malformed lines are skipped)."""

    def __init__(self, log_path: Path) -> None:
        self.path = log_path
        self.offset = 0
        self.partial = b""
        self.records: list[dict[str, Any]] = []

    def poll(self) -> bool:
        """Read what the job wrote since the last poll; True when new records arrived."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(4 * 1024 * 1024)
        except OSError:
            return False
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()[-_MAX_LINE:]
        before = len(self.records)
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith(PROGRESS_PREFIX) or len(line) > _MAX_LINE:
                continue
            try:
                record = json.loads(line[len(PROGRESS_PREFIX) :])
            except ValueError:
                continue
            if isinstance(record, dict):
                self.records.append({**record, "at": time.time()})
        return len(self.records) > before


class JobWatch:
    """What the worker does while a job runs, once per tick: stop it if its sweep was cancelled or
    its trial pruned, publish its progress records, snapshot its output/ when it changed."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        jobdir: Path,
        lost: threading.Event,
        *,
        cancelled: Callable[[], bool],
        log: Callable[[str], None],
        check_s: float,
        snapshot_s: float,
    ) -> None:
        self.store, self.prefix, self.jobdir, self.lost = store, prefix, jobdir, lost
        self.cancelled, self.log, self.check_s, self.snapshot_s = cancelled, log, check_s, snapshot_s
        self.progress = ProgressTail(jobdir / "job.log")
        self.published = 0
        self.last_check = self.last_snapshot = time.monotonic()
        self.snapshot_mtime = 0.0

    def tick(self) -> str | None:
        if self.lost.is_set():
            return "message lost to another worker"
        now = time.monotonic()
        if now - self.last_check < self.check_s:
            return None
        self.last_check = now
        try:
            self.publish_progress()
            if self.cancelled():
                return "sweep cancelled"
            if self.store.exists(f"{self.prefix}/{STOP_FLAG}"):
                flag = json.loads(self.store.get(f"{self.prefix}/{STOP_FLAG}"))
                return f"pruned: {flag.get('reason', 'stopped by the search controller')}"
            self.snapshot(now)
        except Exception as exc:  # noqa: BLE001 - the store may be flaky; the job goes on
            self.log(f"{self.prefix}: watch failed: {exc}")
        return None

    def publish_progress(self, force: bool = False) -> None:
        if (self.progress.poll() or force) and len(self.progress.records) > self.published:
            body = json.dumps({"records": self.progress.records}).encode()
            self.store.put(f"{self.prefix}/{PROGRESS}", body)
            self.published = len(self.progress.records)

    def snapshot(self, now: float) -> None:
        every = self.snapshot_s
        if every <= 0 or now - self.last_snapshot < every:
            return
        out = self.jobdir / "output"
        newest = max((p.stat().st_mtime for p in out.rglob("*") if p.is_file()), default=0.0)
        if newest > self.snapshot_mtime:
            self.last_snapshot, self.snapshot_mtime = now, newest
            where = commit_snapshot(self.store, out, self.prefix)
            self.log(f"{self.prefix}: snapshot {where}")
