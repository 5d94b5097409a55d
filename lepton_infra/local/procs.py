"""Reading and stopping processes (psutil for the process table and trees), carefully.

`local down` must stop exactly what the pool started: a PID is only signalled after its
cmdline (and start time) prove it is still the process we recorded, so a reused PID is never hit."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

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


_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError)


def cmdline(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except _GONE:
        return []


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with; empty when unreadable (another user's, or gone)."""
    try:
        return dict(psutil.Process(pid).environ())
    except _GONE:
        return {}


def cwd(pid: int) -> str | None:
    try:
        return str(psutil.Process(pid).cwd())
    except _GONE:
        return None


def is_running(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except _GONE:
        return False


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
    yield from psutil.pids()


def _protected_pids() -> set[int]:
    """This process and its ancestors: never stop the caller, even if it runs inside a node."""
    me = psutil.Process()
    return {0, 1, me.pid, *(p.pid for p in me.parents())}


def _children_map() -> dict[int, list[int]]:
    """parent PID -> child PIDs, from one pass over the process table."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            children.setdefault(ppid, []).append(proc.pid)
    return children


def descendants(roots: Iterable[int], children: dict[int, list[int]] | None = None) -> set[int]:
    """Every live process below `roots` in the parent tree (not the roots themselves)."""
    if children is None:
        children = _children_map()
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


@dataclass(frozen=True)
class NodeRef:
    """How to recognise one node's processes: its dir, its HOME, and its verified sshd PIDs."""

    name: str
    node_dir: Path
    home: Path
    sshd_pids: tuple[int, ...] = ()


def find_node_processes(nodes: Iterable[NodeRef]) -> dict[str, list[ProcessInfo]]:
    """Processes that belong to each node, in one pass over /proc.

    A node's processes are: its sshd (`sshd_pids`, already verified by the caller) and everything
    below it (per-connection sshd processes rewrite their own environment area with their process
    title, so only the tree finds them); anything whose environment carries the node's HOME or the
    LEPTON_LOCAL_NODE marker that its sshd_config sets (detached jobs, reparented to init, keep
    them); anything whose working directory is inside the node dir (a job that cleaned its env)."""
    refs = list(nodes)
    by_home = {str(r.home): r.name for r in refs}
    by_dir = {str(r.node_dir): r.name for r in refs}
    protected = _protected_pids()
    children = _children_map()
    found: dict[int, tuple[str, str]] = {}  # pid -> (node name, reason)
    for ref in refs:
        roots = [p for p in ref.sshd_pids if is_running(p)]
        for pid in roots:
            found[pid] = (ref.name, "sshd")
        for pid in descendants(roots, children):
            found.setdefault(pid, (ref.name, "sshd child"))
    for pid in all_pids():
        if pid in found or pid in protected or not is_running(pid):
            continue
        env = environ(pid)
        if env.get("HOME") in by_home:
            found[pid] = (by_home[env["HOME"]], "HOME")
        elif env.get("LEPTON_LOCAL_NODE") in by_dir:
            found[pid] = (by_dir[env["LEPTON_LOCAL_NODE"]], "marker")
        else:
            where = cwd(pid)
            if where is not None:
                for candidate in (where, *map(str, Path(where).parents)):
                    if candidate in by_dir:
                        found[pid] = (by_dir[candidate], "cwd")
                        break
    result: dict[str, list[ProcessInfo]] = {r.name: [] for r in refs}
    for pid, (name, reason) in sorted(found.items()):
        if pid not in protected and is_running(pid):
            result[name].append(ProcessInfo(pid=pid, cmdline=" ".join(cmdline(pid)), reason=reason))
    return result


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


def freeze(pids: Iterable[int]) -> None:
    """SIGSTOP: a frozen sshd accepts no new connection while we collect its children."""
    for pid in pids:
        _signal(pid, start_time(pid), signal.SIGSTOP)


def terminate(pids: Iterable[int], grace_s: float = 3.0) -> None:
    """SIGTERM, wait up to `grace_s` for them to exit, then SIGKILL the rest."""
    pending = {p: start_time(p) for p in pids if is_running(p)}
    for pid, start in pending.items():
        _signal(pid, start, signal.SIGTERM)
        _signal(pid, start, signal.SIGCONT)  # a frozen process only acts on SIGTERM once continued
    _wait_gone(pending, grace_s)
    for pid, start in pending.items():
        _signal(pid, start, signal.SIGKILL)
    _wait_gone(pending, 2.0)
