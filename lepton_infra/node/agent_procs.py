"""Which processes belong to a run, and stopping them all.

Everything a run starts must end with it, including daemons that double-fork, call setsid, clear
their environment or ignore SIGTERM. No single mark survives all of that, so a run's processes
are the union of: its own cgroup (a child cannot leave it; where this user may create one),
the job's session and process group, the supervisor's descendants (it is a child subreaper, so
orphans reparent to it rather than to init), and the run's marker in the environment.
Standard library only; part of the agent shipped with every run (see agent.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

try:  # as lepton_infra.node.* on the controller; top-level modules inside the shipped agent
    from . import agent_files as files
except ImportError:
    import agent_files as files  # type: ignore[no-redef]


PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_S = 5.0  # SIGTERM, then this long to exit, then SIGKILL
HELPER_ENV = "LEPTON_AGENT_HELPER"  # marks the supervisor's own helpers (uploads), never the job


def pid_alive(pid: int | None, needle: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
        if needle is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                # Guards against PID reuse: the supervisor's command line names its run dir.
                return needle.encode() in f.read()
    except OSError:
        pass
    return True


def group_alive(pgid: int | None) -> bool:
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _marker(run_dir: str) -> bytes | None:
    """The environment entry every process of this run carries (unique per node and run)."""
    try:
        with open(files.path(run_dir, "spec.json"), encoding="utf-8") as f:
            env = json.load(f).get("env", {})
    except (OSError, ValueError):
        return None
    out = env.get("LEPTON_OUTPUT_DIR")
    return f"LEPTON_OUTPUT_DIR={out}".encode() if out else None


def kill_group(pgid: int | None, sig: int) -> None:
    if pgid:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER via libc: orphans of the job reparent to this process, not init."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _cgroup_parent() -> str | None:
    """This process's own cgroup directory: cgroup2 first, else cgroup v1's pids hierarchy."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = [line.split(" - ") for line in f if " - " in line]
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            own = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for fstype, option, hier in (("cgroup2", "", "0"), ("cgroup", "pids", None)):
        for head, tail in mounts:
            fields, after = head.split(), tail.split()
            if len(fields) < 5 or len(after) < 3 or after[0] != fstype:
                continue
            if option and option not in after[2].split(","):
                continue
            for entry in own:
                if len(entry) == 3 and (entry[0] == hier if hier else option in entry[1].split(",")):
                    return fields[4] + entry[2].rstrip("/")
    return None


def make_cgroup(run_dir: str) -> str | None:
    """A fresh cgroup for the run's job (None where this user may not make one)."""
    import hashlib

    parent = _cgroup_parent()
    if parent is None:
        return None
    path = os.path.join(parent, "lepton-" + hashlib.sha256(run_dir.encode()).hexdigest()[:16])
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            return None
    except OSError:
        return None
    return path


def enter_cgroup(path: str | None) -> None:
    """Move the calling process (the job, between fork and exec) into `path`; best effort."""
    if path:
        try:
            with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as f:
                f.write("0")
        except OSError:
            pass


def _cgroup_members(path: str | None) -> set[int]:
    if not path:
        return set()
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as f:
            return {int(x) for x in f.read().split()}
    except (OSError, ValueError):
        return set()


def remove_cgroup(path: str | None) -> None:
    if path:
        try:
            os.rmdir(path)
        except OSError:
            pass  # still populated (zombies not yet reaped) or gone: the kernel frees it later


def _table() -> dict[int, tuple[str, int, int, int]]:
    """Every process: pid -> (state, ppid, pgid, session), from /proc/<pid>/stat."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
            table[int(entry)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def run_processes(run_dir: str, state: dict[str, Any] | None = None) -> list[int]:
    """PIDs (not zombies) of this run's job, wherever they went: see the section comment."""
    if not os.path.isdir("/proc"):
        return []
    state = state if state is not None else (files.read_state(run_dir) or {})
    table = _table()
    marker = _marker(run_dir)
    job = state.get("pgid")
    supervisor = state.get("supervisor_pid")
    if supervisor != os.getpid() and not pid_alive(supervisor, run_dir):
        supervisor = None
    found = _cgroup_members(state.get("cgroup"))
    children: dict[int, list[int]] = {}
    for pid, (_st, ppid, pgid, sid) in table.items():
        children.setdefault(ppid, []).append(pid)
        if job and (pgid == job or sid == job):
            found.add(pid)
    helper = f"{HELPER_ENV}={run_dir}".encode()
    todo = list(children.get(supervisor, [])) if supervisor else []
    while todo:
        pid = todo.pop()
        if helper in _environ(pid):
            continue  # the supervisor's own upload and its children
        found.add(pid)
        todo += children.get(pid, [])
    if marker is not None:
        for pid in table:
            if pid not in found and marker in _environ(pid):
                found.add(pid)
    mine = (os.getpid(), supervisor)
    return sorted(p for p in found if p in table and table[p][0] != "Z" and p not in mine)


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return (text or "?")[:120]


def helper_env(run_dir: str) -> dict[str, str]:
    """The environment of the supervisor's own helpers: marked so a stop spares them."""
    return {**os.environ, HELPER_ENV: run_dir}


def reap_orphans(keep: tuple[int, ...] = ()) -> None:
    """As a subreaper the supervisor inherits the job's orphans: collect the ones that died.
    waitid(WNOWAIT) peeks at the next dead child without reaping it, so the job's own pid (in
    `keep`) is never collected here (its Popen does that, with its exit code); no /proc scan."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return  # no children at all
        if info is None or info.si_pid in keep:
            return  # none dead, or the job itself (the ones behind it wait for the next call)
        try:
            os.waitpid(info.si_pid, os.WNOHANG)
        except ChildProcessError:
            return


def _signal_all(pids: list[int], sig: int, cgroup: str | None) -> None:
    if sig == signal.SIGKILL and cgroup:
        try:
            with open(os.path.join(cgroup, "cgroup.kill"), "w", encoding="ascii") as f:
                f.write("1")  # cgroup2: the kernel kills every member at once, forks included
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_run_processes(
    run_dir: str, state: dict[str, Any], grace: float = STOP_GRACE_S, *, report_all: bool
) -> list[dict[str, Any]]:
    """TERM every process of the run, wait up to `grace`, KILL what is left (repeatedly: a process
    may fork while dying). Returns what it stopped: every process with `report_all` (leftovers of
    a job that has ended), else those that needed KILL or had left the job's session. Recorded in
    files.KILLED_FILE for status and run.json."""
    cgroup, job = state.get("cgroup"), state.get("pgid")
    seen: dict[int, dict[str, Any]] = {}
    table = _table()

    def note(pids: list[int], sig: str) -> None:
        for pid in pids:
            entry = seen.setdefault(pid, {"pid": pid, "command": _describe(pid)})
            entry["signal"] = sig
            entry["escaped"] = bool(job) and pid in table and table[pid][3] != job

    pids = run_processes(run_dir, state)
    if not pids:
        return []
    note(pids, "TERM")
    _signal_all(pids, signal.SIGTERM, None)
    deadline = time.time() + grace
    while time.time() < deadline:
        if state.get("supervisor_pid") == os.getpid():
            reap_orphans(keep=(job or 0,))
        pids = run_processes(run_dir, state)
        if not pids:
            break
        new = [p for p in pids if p not in seen]
        table = _table()
        note(new, "TERM")
        _signal_all(new, signal.SIGTERM, None)
        time.sleep(0.1)
    for _ in range(100):
        pids = run_processes(run_dir, state)
        if not pids:
            break
        table = _table()
        note(pids, "KILL")
        _signal_all(pids, signal.SIGKILL, cgroup)
        time.sleep(0.05)
        if state.get("supervisor_pid") == os.getpid():
            reap_orphans(keep=(job or 0,))
    stopped = [e for e in seen.values() if report_all or e["signal"] == "KILL" or e["escaped"]]
    if stopped:
        files.add_killed(run_dir, stopped)
    return stopped
