"""Reading and stopping processes through /proc (Linux), carefully.

`local down` must stop exactly what the pool started: a PID is only signalled after its
cmdline (and start time) prove it is still the process we recorded, so a reused PID is never hit."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    """A running process that belongs to a local node (its sshd, a session, or a job)."""

    pid: int
    cmdline: str
    reason: str  # why it counts as the node's: "sshd", "sshd child", "HOME", "marker", "cwd"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may itself hold spaces and ')')."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Kernel start time in clock ticks since boot; with the PID it identifies one process for good."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _state_and_ppid(pid: int) -> tuple[str, int] | None:
    fields = _stat_fields(pid)
    return (fields[0], int(fields[1])) if fields else None


def cmdline(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with; empty when unreadable (another user's, or gone)."""
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def cwd(pid: int) -> str | None:
    try:
        return os.readlink(_PROC / str(pid) / "cwd")
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None


def is_running(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    state = _state_and_ppid(pid)
    return state is not None and state[0] not in ("Z", "X")


def is_expected(pid: int, expected_cmdline: list[str], expected_start: int | None) -> bool:
    """True if `pid` is still the very process we started: same cmdline, same start time."""
    if not is_running(pid):
        return False
    # OpenSSH rewrites its listener's title to "sshd: <argv> [listener] 0 of 10-100 startups"
    # (clobbering the environ area too), so accept that form of our exact command line.
    actual, expected = " ".join(cmdline(pid)), " ".join(expected_cmdline)
    if actual != expected and not actual.startswith(f"sshd: {expected} ["):
        return False
    return expected_start is None or start_time(pid) == expected_start


def all_pids() -> Iterator[int]:
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _protected_pids() -> set[int]:
    """This process and its ancestors: never stop the caller, even if it runs inside a node."""
    protected = {0, 1}
    pid = os.getpid()
    while pid > 1 and pid not in protected:
        protected.add(pid)
        state = _state_and_ppid(pid)
        if state is None:
            break
        pid = state[1]
    return protected


def descendants(roots: Iterable[int]) -> set[int]:
    """Every live process below `roots` in the parent tree (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        state = _state_and_ppid(pid)
        if state is not None:
            children.setdefault(state[1], []).append(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def node_processes(node_dir: Path, home: Path, sshd_pids: Iterable[int] = ()) -> list[ProcessInfo]:
    """Processes that belong to one local node.

    A node's processes are: its sshd (`sshd_pids`, already verified by the caller) and everything
    below it (per-connection sshd processes rewrite their own environment area with their process
    title, so only the tree finds them); anything whose environment carries the node's HOME or the
    LEPTON_LOCAL_NODE marker that its sshd_config sets (detached jobs, reparented to init, keep
    them); anything whose working directory is inside the node dir (a job that cleaned its env)."""
    node_dir_s, home_s = str(node_dir), str(home)
    protected = _protected_pids()
    roots = [p for p in sshd_pids if is_running(p)]
    found: dict[int, str] = {p: "sshd" for p in roots}
    for pid in descendants(roots):
        found.setdefault(pid, "sshd child")
    for pid in all_pids():
        if pid in found or pid in protected or not is_running(pid):
            continue
        env = environ(pid)
        if env.get("HOME") == home_s:
            found[pid] = "HOME"
        elif env.get("LEPTON_LOCAL_NODE") == node_dir_s:
            found[pid] = "marker"
        else:
            where = cwd(pid)
            if where is not None and (where == node_dir_s or where.startswith(node_dir_s + os.sep)):
                found[pid] = "cwd"
    return [
        ProcessInfo(pid=pid, cmdline=" ".join(cmdline(pid)), reason=reason)
        for pid, reason in sorted(found.items())
        if pid not in protected and is_running(pid)
    ]


def _signal(pid: int, start: int | None, sig: int) -> None:
    # Re-check identity right before each signal: a PID that exited during the grace period and was
    # handed to a new process must not be hit.
    if start is not None and start_time(pid) != start:
        return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child, so it does not stay a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_gone(pending: dict[int, int | None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pending:
        for pid in list(pending):
            reap(pid)
            if not is_running(pid) or start_time(pid) != pending[pid]:
                del pending[pid]
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def terminate(pids: Iterable[int], grace_s: float = 3.0) -> None:
    """SIGTERM, wait up to `grace_s` for them to exit, then SIGKILL the rest."""
    pending = {p: start_time(p) for p in pids if is_running(p)}
    for pid, start in pending.items():
        _signal(pid, start, signal.SIGTERM)
    _wait_gone(pending, grace_s)
    for pid, start in pending.items():
        _signal(pid, start, signal.SIGKILL)
    _wait_gone(pending, 2.0)
