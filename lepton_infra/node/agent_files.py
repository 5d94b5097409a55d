"""The run's files on a node, as the agent keeps them: state.json (padded so a full disk can
still rewrite it in place), killed.json (what a stop had to kill), the cancel marker, the metrics
tail. Standard library only; part of the agent shipped with every run (see agent.py)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Any

HEARTBEAT_S = 2.0  # how often the supervisor rewrites state.json while the job runs
TERMINAL = ("succeeded", "failed", "cancelled", "lost")
ACTIVE = ("starting", "running")
# state.json is padded with spaces (valid JSON whitespace) to this size, so that on a full disk it
# can still be rewritten in place: the blocks it needs are already its own.
STATE_PAD = 8192
LOW_SPACE_BYTES = 1 << 20  # less than this free where the run lives, after a failure: disk full
KILLED_FILE = "killed.json"  # what had to be stopped (cancel and supervisor both add to it)
MAX_KILLED_REPORTED = 20


def path(run_dir: str, *parts: str) -> str:
    """A file of the run (everything the agent keeps lives in RUN_DIR)."""
    return os.path.join(run_dir, *parts)


def read_state(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(path(run_dir, "state.json"), encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _encode_state(state: dict[str, Any], size: int) -> bytes:
    data = json.dumps(state).encode("utf-8")
    if len(data) > size and state.get("detail"):
        state = {**state, "detail": str(state["detail"])[:200]}
        data = json.dumps(state).encode("utf-8")
    return data + b" " * max(0, size - len(data))


def write_state(run_dir: str, state: dict[str, Any]) -> None:
    """tmp + rename, so a reader (the controller over SFTP) sees the old or the new file, never half.
    On a full disk (no room for the tmp file) the padded file is rewritten in place instead: the
    state must never stay "running" because the disk filled up."""
    tmp = path(run_dir, f".state.{os.getpid()}.tmp")
    final = path(run_dir, "state.json")
    try:
        with open(tmp, "wb") as f:
            f.write(_encode_state(state, STATE_PAD))
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        try:
            os.unlink(tmp)
        except OSError:
            pass
        with open(final, "r+b") as f:  # FileNotFoundError: nothing to rewrite, the error stands
            size = os.fstat(f.fileno()).st_size
            data = _encode_state(state, size)
            if len(data) > size:
                raise
            f.write(data)


def disk_full(where: str) -> str | None:
    """A message naming the path and saying "no space left on device" when the filesystem holding
    `where` is (nearly) full, else None."""
    try:
        st = os.statvfs(where)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < LOW_SPACE_BYTES or (st.f_files and st.f_favail == 0):
        return f"no space left on device: {where} ({free} bytes free)"
    return None


def read_killed(run_dir: str) -> list[dict[str, Any]]:
    try:
        with open(path(run_dir, KILLED_FILE), encoding="utf-8") as f:
            value = json.load(f)
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []
    except (OSError, ValueError):
        return []


def add_killed(run_dir: str, entries: list[dict[str, Any]]) -> None:
    """Merge into KILLED_FILE under a lock: the cancel command and the supervisor may both stop
    the same processes at once; the strongest signal either sent is the one recorded."""
    try:
        with open(path(run_dir, ".killed.lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {e.get("pid"): e for e in read_killed(run_dir)}
            for e in entries:
                old = merged.get(e["pid"], {})
                strongest = "KILL" if "KILL" in (old.get("signal"), e.get("signal")) else e.get("signal")
                escaped = bool(old.get("escaped") or e["escaped"])
                merged[e["pid"]] = {**old, **e, "signal": strongest, "escaped": escaped}
            tmp = path(run_dir, f".killed.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(list(merged.values()), f)
            os.replace(tmp, path(run_dir, KILLED_FILE))
    except OSError:
        pass  # a full disk: the processes are stopped all the same, only the report is lost


def killed_summary(run_dir: str) -> dict[str, Any]:
    """For state.json: the first few stopped processes and how many in all (state.json is small)."""
    killed = read_killed(run_dir)
    return {"killed": killed[:MAX_KILLED_REPORTED], "killed_count": len(killed)} if killed else {}


def latest_metrics(run_dir: str) -> dict[str, Any] | None:
    """The sampler's newest complete line (logs/metrics.jsonl), or None: `status --json` shows it."""
    try:
        with open(path(run_dir, "logs", "metrics.jsonl"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = f.read().split(b"\n")
        value = json.loads(lines[-2]) if len(lines) > 1 else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cancel_requested(run_dir: str) -> bool:
    return os.path.exists(path(run_dir, "cancel"))


def cancelled_before_launch(run_dir: str) -> dict[str, Any]:
    now = time.time()
    return {
        "state": "cancelled",
        "exit_code": None,
        "started": None,
        "ended": now,
        "heartbeat": now,
        "detail": "cancelled before launch",
    }
