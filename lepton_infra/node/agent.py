"""Node-side agent: starts a run's job detached from SSH, supervises it, reports and stops it.

Standard library only; shipped with every run to `~/.lepton/runs/<run-id>/.agent/agent.py` and
run as `python agent.py COMMAND RUN_DIR`. Commands:

    launch RUN_DIR     (spec JSON on stdin) start the supervisor detached, print the state
    status RUN_DIR     print the state; a run whose supervisor vanished is reported "lost"
    wait RUN_DIR       print the state once the run has ended (at most WAIT_MAX_S later)
    cancel RUN_DIR     stop the job's process group (TERM, then KILL), print the final state
    pack RUN_DIR       write a tar of output/, logs/ and state.json to stdout (collection)
    supervise RUN_DIR  internal: the supervisor process itself

The supervisor (own session, stdio redirected, so it survives the SSH session and the controller)
starts the job in a new session (its own process group), writes `state.json` atomically with a
heartbeat every few seconds, records the exit code, and when the job ends kills whatever the job
left behind. Nothing here depends on the controller staying alive: state lives in RUN_DIR.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import time
from typing import IO, Any

HEARTBEAT_S = 2.0
TERMINAL = ("succeeded", "failed", "cancelled", "lost")
ACTIVE = ("starting", "running")


def _path(run_dir: str, *parts: str) -> str:
    return os.path.join(run_dir, *parts)


def read_state(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(_path(run_dir, "state.json"), encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


# state.json is padded with spaces (valid JSON whitespace) to this size, so that on a full disk it
# can still be rewritten in place: the blocks it needs are already its own.
STATE_PAD = 8192
LOW_SPACE_BYTES = 1 << 20  # less than this free where the run lives, after a failure: disk full


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
    tmp = _path(run_dir, f".state.{os.getpid()}.tmp")
    final = _path(run_dir, "state.json")
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


def disk_full(path: str) -> str | None:
    """A message naming the path and saying "no space left on device" when the filesystem holding
    `path` is (nearly) full, else None."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < LOW_SPACE_BYTES or (st.f_files and st.f_favail == 0):
        return f"no space left on device: {path} ({free} bytes free)"
    return None


def _pid_alive(pid: int | None, needle: str | None = None) -> bool:
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


def _group_alive(pgid: int | None) -> bool:
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
        with open(_path(run_dir, "spec.json"), encoding="utf-8") as f:
            env = json.load(f).get("env", {})
    except (OSError, ValueError):
        return None
    out = env.get("LEPTON_OUTPUT_DIR")
    return f"LEPTON_OUTPUT_DIR={out}".encode() if out else None


def _kill_group(pgid: int | None, sig: int) -> None:
    if pgid:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------- the run's processes
# Everything a run starts must end with it, including daemons that double-fork, call setsid, clear
# their environment or ignore SIGTERM. No single mark survives all of that, so a run's processes
# are the union of: its own cgroup (a child cannot leave it; where this user may create one),
# the job's session and process group, the supervisor's descendants (it is a child subreaper, so
# orphans reparent to it rather than to init), and the run's marker in the environment.

PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_S = 5.0  # SIGTERM, then this long to exit, then SIGKILL
HELPER_ENV = "LEPTON_AGENT_HELPER"  # marks the supervisor's own helpers (uploads), never the job
KILLED_FILE = "killed.json"  # what had to be stopped (cancel and supervisor both add to it)
MAX_KILLED_REPORTED = 20


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
    state = state if state is not None else (read_state(run_dir) or {})
    table = _table()
    marker = _marker(run_dir)
    job = state.get("pgid")
    supervisor = state.get("supervisor_pid")
    if supervisor != os.getpid() and not _pid_alive(supervisor, run_dir):
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


class JobWait:
    """Blocks until the job exits or a timeout passes, woken by the kernel (a pidfd) rather than
    Popen.wait's timed loop, which wakes every 50 ms: ~9 ms of CPU per second on a 2-core node,
    taken from the job (bench/job_overhead.py). Falls back to Popen.wait without pidfd_open."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        try:
            self.fd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.fd = None  # Linux < 5.3, or not Linux

    def wait(self, timeout: float) -> int | None:
        """The job's exit code (negative: killed by that signal), or None if it still runs."""
        if self.fd is None:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return self.proc.wait() if ready else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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


def interface_of(address: str) -> str | None:
    """The network interface holding the IPv4 `address` on this (Linux) node, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR: the interface's address
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == address:
                return name
    return None


def gloo_interface(env: dict[str, str]) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME for a multi-node job: the interface of this node's private IP (the address
    its peers dial). Without it gloo binds the address the node's hostname resolves to, which on
    images whose /etc/hosts maps the hostname to 127.0.1.1 (Debian's and cloud-init's default
    template) is loopback, and the peers' connections are refused (found by the first-boot
    rehearsal). A value the job's environment already sets is kept."""
    if "GLOO_SOCKET_IFNAME" in env or int(env.get("LEPTON_NUM_NODES") or 1) < 2:
        return {}
    try:
        own = env["LEPTON_NODE_IPS"].split(",")[int(env["LEPTON_NODE_RANK"])]
    except (KeyError, IndexError, ValueError):
        return {}
    name = interface_of(own)
    return {"GLOO_SOCKET_IFNAME": name} if name else {}


def stop_run_processes(
    run_dir: str, state: dict[str, Any], grace: float = STOP_GRACE_S, *, report_all: bool
) -> list[dict[str, Any]]:
    """TERM every process of the run, wait up to `grace`, KILL what is left (repeatedly: a process
    may fork while dying). Returns what it stopped: every process with `report_all` (leftovers of
    a job that has ended), else those that needed KILL or had left the job's session. Recorded in
    KILLED_FILE for status and run.json."""
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
        _add_killed(run_dir, stopped)
    return stopped


def read_killed(run_dir: str) -> list[dict[str, Any]]:
    try:
        with open(_path(run_dir, KILLED_FILE), encoding="utf-8") as f:
            value = json.load(f)
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []
    except (OSError, ValueError):
        return []


def _add_killed(run_dir: str, entries: list[dict[str, Any]]) -> None:
    """Merge into KILLED_FILE under a lock: the cancel command and the supervisor may both stop
    the same processes at once; the strongest signal either sent is the one recorded."""
    import fcntl

    try:
        with open(_path(run_dir, ".killed.lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {e.get("pid"): e for e in read_killed(run_dir)}
            for e in entries:
                old = merged.get(e["pid"], {})
                strongest = "KILL" if "KILL" in (old.get("signal"), e.get("signal")) else e.get("signal")
                escaped = bool(old.get("escaped") or e["escaped"])
                merged[e["pid"]] = {**old, **e, "signal": strongest, "escaped": escaped}
            tmp = _path(run_dir, f".killed.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(list(merged.values()), f)
            os.replace(tmp, _path(run_dir, KILLED_FILE))
    except OSError:
        pass  # a full disk: the processes are stopped all the same, only the report is lost


def killed_summary(run_dir: str) -> dict[str, Any]:
    """For state.json: the first few stopped processes and how many in all (state.json is small)."""
    killed = read_killed(run_dir)
    return {"killed": killed[:MAX_KILLED_REPORTED], "killed_count": len(killed)} if killed else {}


def supervise(run_dir: str) -> int:
    with open(_path(run_dir, "spec.json"), encoding="utf-8") as f:
        spec = json.load(f)
    env = dict(os.environ)
    env.update(spec["env"])
    env.update(gloo_interface(env))
    if spec.get("store_client"):
        # The job's fetch of store URLs (train.py --data-dir s3://...): the shipped node client.
        client = _path(run_dir, ".store_client.py")
        with open(client, "w", encoding="utf-8") as f:
            f.write(spec["store_client"])
        env["LEPTON_STORE_CLIENT"] = client
    state = {
        "run_id": spec.get("run_id"),
        "node": spec.get("node"),
        "state": "starting",
        "supervisor_pid": os.getpid(),
        "pid": None,
        "pgid": None,
        "exit_code": None,
        "signal": None,
        "started": time.time(),
        "ended": None,
        "heartbeat": time.time(),
        "detail": "",
    }
    if _cancel_requested(run_dir):
        write_state(run_dir, {**state, **_cancelled_before_launch(run_dir)})
        return 0
    become_subreaper()
    state["cgroup"] = cgroup = make_cgroup(run_dir)
    end_lock = hold_end_lock(run_dir)  # before the first state: a `wait` then always blocks on it
    write_state(run_dir, state)
    os.makedirs(_path(run_dir, "logs"), exist_ok=True)
    with open(_path(run_dir, "logs", "node.log"), "ab", buffering=0) as log:
        try:
            proc = subprocess.Popen(
                spec["argv"],
                cwd=spec["cwd"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: cancel stops the whole gang
                preexec_fn=lambda: enter_cgroup(cgroup),  # noqa: PLW1509 - the supervisor has one thread
            )
        except OSError as exc:
            log.write(f"lepton: cannot start {spec['argv'][0]!r}: {exc}\n".encode())
            state.update(state="failed", exit_code=127, ended=time.time(), detail=f"cannot start: {exc}")
            write_state(run_dir, state)
            release_end_lock(end_lock)
            return 1
        state.update(state="running", pid=proc.pid, pgid=proc.pid, heartbeat=time.time())
        write_state(run_dir, state)
        if _cancel_requested(run_dir):  # a cancel that came while the job was being started
            _kill_group(proc.pid, signal.SIGTERM)
        snapshots = Snapshots(run_dir, spec)
        sampler = start_sampler(run_dir, spec)
        job = JobWait(proc)
        while (code := job.wait(HEARTBEAT_S)) is None:
            state["heartbeat"] = time.time()
            try:
                write_state(run_dir, state)
            except OSError:
                pass  # a missed heartbeat is survivable; a dead supervisor is not
            snapshots.tick()
            reap_orphans(keep=(proc.pid,))
        job.close()
        if sampler is not None:
            sampler.terminate()  # no wait here: the job's end is recorded first, then it is reaped
        snapshots.stop()
    # The job is over; nothing of it may outlive it (torchrun's workers, daemons it started).
    cancelled = os.path.exists(_path(run_dir, "cancel"))
    stop_run_processes(run_dir, state, report_all=not cancelled)
    reap_orphans()
    remove_cgroup(cgroup)
    state.update(killed_summary(run_dir))
    detail = "cancelled" if cancelled else (f"killed by signal {-code}" if code < 0 else f"exit {code}")
    full = disk_full(run_dir) if code != 0 and not cancelled else None
    state.update(
        exit_code=code if code >= 0 else 128 - code,
        signal=-code if code < 0 else None,
        ended=time.time(),
        heartbeat=time.time(),
        state="cancelled" if cancelled else ("succeeded" if code == 0 else "failed"),
        detail=f"{detail}; {full}" if full else detail,
    )
    if spec.get("results"):
        # Before the end is recorded: a node powered off once it looks idle has its results stored.
        state["results"] = upload_results(run_dir, spec["results"], state)
    write_state(run_dir, state)
    release_end_lock(end_lock)  # every `wait` returns now, with the end just recorded
    stop_sampler(sampler)
    return 0


def start_sampler(run_dir: str, spec: dict[str, Any]) -> subprocess.Popen[bytes] | None:
    """The node metrics sampler (node/metrics.py, sent in the spec), as a process of its own: it
    cannot stop the job or the heartbeat. It gets the job's PYTHONPATH and LD_LIBRARY_PATH (where
    a node's NVML module and library may live) but not the run's marker variables: it is not one
    of the job's processes."""
    metrics = spec.get("metrics")
    if not isinstance(metrics, dict) or not metrics.get("source") or not metrics.get("every"):
        return None
    env = helper_env(run_dir)  # the supervisor's own helper: a stop of the run's processes spares it
    env.update({k: v for k, v in spec["env"].items() if k in ("PYTHONPATH", "LD_LIBRARY_PATH")})
    path = _path(run_dir, ".agent", "metrics.py")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(metrics["source"])
        with open(_path(run_dir, "logs", "agent.log"), "ab") as log:
            argv = [sys.executable, path, run_dir, str(metrics["every"])]
            return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    except OSError:
        return None  # no metrics is better than no run


def stop_sampler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


UPLOAD_TIMEOUT_S = 3600.0
CHECKPOINT_UPLOAD_S = 30.0  # at most one snapshot of output/ per this many seconds (env overrides)


class Snapshots:
    """While the job runs, copy output/ (checkpoints, metrics) to `<prefix>/checkpoint/` in the store
    whenever it changed, at most every CHECKPOINT_UPLOAD_S seconds, one upload at a time, so
    a node lost mid-run (spot reclaim) leaves its last checkpoint behind. Each snapshot is a new
    generation committed by a pointer (upload.py --snapshot): one cut off never spoils the last."""

    def __init__(self, run_dir: str, spec: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.results = spec.get("results")
        env = spec.get("env") or {}
        try:
            self.every = float(env.get("CHECKPOINT_UPLOAD_S", CHECKPOINT_UPLOAD_S))
        except ValueError:
            self.every = CHECKPOINT_UPLOAD_S
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_start = 0.0
        self.last_mtime = 0.0

    def _newest(self) -> float:
        newest = 0.0
        for dirpath, _dirs, names in os.walk(_path(self.run_dir, "output")):
            for name in names:
                try:
                    newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
                except OSError:
                    pass
        return newest

    def tick(self) -> None:
        if not self.results or self.every <= 0 or (self.proc is not None and self.proc.poll() is None):
            return
        if time.time() - self.last_start < self.every:
            return
        newest = self._newest()
        if newest <= self.last_mtime:
            return
        self.last_mtime, self.last_start = newest, time.time()
        r = self.results
        argv = [sys.executable, "-c", r["source"], "--snapshot", r["store"], r["prefix"] + "/checkpoint"]
        argv.append(f"output={_path(self.run_dir, 'output')}")
        try:
            with open(_path(self.run_dir, "logs", "upload.log"), "ab") as log:
                self.proc = subprocess.Popen(
                    argv, env=uploader_env(r, self.run_dir), stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
        except OSError:
            self.proc = None

    def stop(self) -> None:
        """Let a snapshot in flight finish (briefly) before the final upload."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def uploader_env(results: dict[str, Any], run_dir: str) -> dict[str, str]:
    """The uploader's environment: this node's, marked as the supervisor's helper (a stop spares
    it), plus the client settings the controller sent with the results (the cluster's region, the
    user's endpoints): without the region an S3 client assumes us-east-1. Not the job's whole
    environment: an uploader is no part of the job."""
    return {**helper_env(run_dir), **{str(k): str(v) for k, v in (results.get("env") or {}).items()}}


def upload_results(run_dir: str, results: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """Send output/, logs/ and the final state to `results["store"]` under `results["prefix"]` with
    the uploader the controller shipped in the spec (stdlib for file://, the node's pinned client for
    cloud stores). Returns its answer ({"url", "files", "bytes"} or {"error"}); never raises."""
    final_path = _path(run_dir, ".final_state.json")
    try:
        with open(final_path, "w", encoding="utf-8") as f:
            json.dump(final, f)
        # The final result holds output/: its snapshots under checkpoint/ go once it is committed.
        argv = [
            sys.executable,
            "-c",
            results["source"],
            "--drop-snapshots",
            results["store"],
            results["prefix"],
        ]
        argv += [
            f"output={_path(run_dir, 'output')}",
            f"logs={_path(run_dir, 'logs')}",
            f"state.json={final_path}",
        ]
        with open(_path(run_dir, "logs", "upload.log"), "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=uploader_env(results, run_dir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            deadline = time.time() + UPLOAD_TIMEOUT_S
            while True:
                try:
                    out, _ = proc.communicate(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    if time.time() > deadline:
                        proc.kill()
                        return {"error": f"upload took longer than {UPLOAD_TIMEOUT_S:.0f} s"}
                    try:
                        write_state(
                            run_dir, {**final, "state": "running", "ended": None, "heartbeat": time.time()}
                        )
                    except OSError:
                        pass
        lines = out.decode("utf-8", "replace").strip().splitlines()
        answer = json.loads(lines[-1]) if lines else {"error": f"uploader exited {proc.returncode} silently"}
        if not isinstance(answer, dict):
            return {"error": f"unexpected uploader answer {answer!r}"}
        return answer
    except Exception as exc:  # the job's own result stands whatever the upload did
        return {"error": f"{type(exc).__name__}: {exc}"}


def status(run_dir: str) -> dict[str, Any]:
    if not os.path.isdir(run_dir):
        return {"state": "unknown", "detail": "no such run on this node", "run_dir": run_dir}
    state = read_state(run_dir)
    if state is None:
        return {"state": "unknown", "detail": "run was shipped but not launched", "run_dir": run_dir}
    if state["state"] in ACTIVE and not _pid_alive(state.get("supervisor_pid"), run_dir):
        # The supervisor died without recording an end (killed, or the node rebooted).
        alive = _group_alive(state.get("pgid")) or bool(run_processes(run_dir, state))
        state["state"] = "lost"
        state["detail"] = "supervisor gone" + ("; job processes still running" if alive else "")
    state.update(killed_summary(run_dir))
    state["run_dir"] = run_dir
    state["now"] = time.time()
    try:
        state["log_bytes"] = os.path.getsize(_path(run_dir, "logs", "node.log"))
    except OSError:
        state["log_bytes"] = 0
    sample = latest_metrics(run_dir)
    if sample is not None:
        state["metrics"] = sample
    return state


def latest_metrics(run_dir: str) -> dict[str, Any] | None:
    """The sampler's newest complete line (logs/metrics.jsonl), or None: `status --json` shows it."""
    try:
        with open(_path(run_dir, "logs", "metrics.jsonl"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = f.read().split(b"\n")
        value = json.loads(lines[-2]) if len(lines) > 1 else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def launch(run_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
    if _cancel_requested(run_dir):
        return status(run_dir)  # cancelled while it was being shipped: never start it
    if os.path.exists(_path(run_dir, "spec.json")):
        raise SystemExit(f"run in {run_dir} was already launched")
    for sub in ("logs", "output"):
        os.makedirs(_path(run_dir, sub), exist_ok=True)
    tmp = _path(run_dir, ".spec.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    os.replace(tmp, _path(run_dir, "spec.json"))
    with open(_path(run_dir, "logs", "agent.log"), "ab") as agent_log:
        # All three stdio redirected + a new session: the SSH exec channel closes at once and the
        # supervisor survives the SSH session and the controller.
        supervisor = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "supervise", run_dir],
            stdin=subprocess.DEVNULL,
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.time() + 30.0
    while time.time() < deadline:
        state = read_state(run_dir)
        if state is not None and state["state"] != "starting":
            return status(run_dir)
        if state is None and supervisor.poll() is not None:
            # It died before its first state write (a full disk, say): say so, never "running".
            why = disk_full(run_dir) or f"supervisor exited with {supervisor.returncode}; see logs/agent.log"
            return {"state": "failed", "exit_code": None, "detail": why, "run_dir": run_dir}
        time.sleep(0.02)
    return status(run_dir)


END_LOCK = ".supervisor.lock"  # held (flock) by the supervisor until the run's end is recorded
WAIT_MAX_S = 20.0  # a `wait` answers after at most this long, ended or not (the caller asks again)


def hold_end_lock(run_dir: str) -> int | None:
    """Take the end lock for the supervisor's life (None if the file cannot be made: then `wait`
    answers at once and the controller's polling finds the end, as before)."""
    try:
        fd = os.open(_path(run_dir, END_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def release_end_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing drops the flock; the kernel does the same if the supervisor dies


class _WaitOver(Exception):
    pass


def wait(run_dir: str, limit: float = WAIT_MAX_S) -> dict[str, Any]:
    """The run's status once its supervisor has recorded the end (or died), or after `limit`
    seconds. Blocks in flock on the supervisor's end lock: the kernel wakes it the moment the
    lock is released, so the controller learns of the end without polling for it."""
    state = read_state(run_dir)
    if state is not None and state.get("state") in ACTIVE:
        try:
            fd = os.open(_path(run_dir, END_LOCK), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return status(run_dir)

        def over(_sig: int, _frame: object) -> None:
            raise _WaitOver

        previous = signal.signal(signal.SIGALRM, over)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except _WaitOver:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.close(fd)
    return status(run_dir)


def _cancel_requested(run_dir: str) -> bool:
    return os.path.exists(_path(run_dir, "cancel"))


def _cancelled_before_launch(run_dir: str) -> dict[str, Any]:
    now = time.time()
    return {
        "state": "cancelled",
        "exit_code": None,
        "started": None,
        "ended": now,
        "heartbeat": now,
        "detail": "cancelled before launch",
    }


def cancel(run_dir: str, grace: float = 5.0) -> dict[str, Any]:
    """Stop the run at whatever phase it is in. Before launch (still shipping, or shipped), the
    cancel marker makes any later `launch` refuse and the state says cancelled at once."""
    state = read_state(run_dir)
    if state is not None and state["state"] in TERMINAL:
        return status(run_dir)
    with open(_path(run_dir, "cancel"), "w", encoding="utf-8") as f:
        f.write(str(time.time()))
    if state is None:
        if not os.path.exists(_path(run_dir, "spec.json")):
            write_state(run_dir, _cancelled_before_launch(run_dir))
            return status(run_dir)
        # A supervisor is starting: it sees the marker before (or right after) starting the job.
        deadline = time.time() + 10.0
        while time.time() < deadline and read_state(run_dir) is None:
            time.sleep(0.05)
        state = read_state(run_dir)
        if state is None or state["state"] in TERMINAL:
            return status(run_dir)
    # TERM first (torchrun forwards it to its workers and they may flush logs/checkpoints), then
    # KILL what is left after the grace, wherever it went (own session, cleared environment).
    stop_run_processes(run_dir, state, grace, report_all=False)
    remove_cgroup(state.get("cgroup"))
    deadline = time.time() + 5.0
    while time.time() < deadline:
        current = read_state(run_dir)
        if current is not None and current["state"] in TERMINAL:
            return status(run_dir)
        if not _pid_alive(current.get("supervisor_pid") if current else None, run_dir):
            break
        time.sleep(0.05)
    # No supervisor left to record the end: record it here.
    current = read_state(run_dir) or state
    if current["state"] not in TERMINAL:
        current.update(state="cancelled", ended=time.time(), detail="cancelled (no supervisor)")
        write_state(run_dir, current)
    return status(run_dir)


PACK_MANIFEST = ".lepton-pack.json"  # the first member of every pack: what it holds


def pack(run_dir: str, out: IO[bytes], request: dict[str, Any] | None = None) -> None:
    """A tar of logs/, output/, state.json and spec.json to `out`. `request["have"]` maps the
    paths the controller already holds to [size, mtime]: those are not sent again; files past
    `request["max_files"]` or `request["max_bytes"]` are held back (listed, not sent). The first
    member, PACK_MANIFEST, says what follows and what was held back, so the controller can check
    its space before it writes anything and say what it did not get."""
    request = request or {}
    have = request.get("have") or {}
    max_files, max_bytes = request.get("max_files"), request.get("max_bytes")
    entries: list[tuple[str, str]] = []
    total: dict[str, Any] = {"files": 0, "bytes": 0, "send_files": 0, "send_bytes": 0, "skipped": 0}
    held: list[dict[str, Any]] = []
    for top in ("logs", "output"):  # the logs first: past a limit, they matter most
        root = _path(run_dir, top)
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        entries.append((root, top))
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            rel_dir = os.path.relpath(dirpath, run_dir)
            for name in dirs:
                entries.append((os.path.join(dirpath, name), os.path.join(rel_dir, name)))
            for name in sorted(files):
                path, rel = os.path.join(dirpath, name), os.path.join(rel_dir, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                total["files"] += 1
                total["bytes"] += size
                if have.get(rel) == [size, int(st.st_mtime)]:
                    total["skipped"] += 1
                    continue
                why = None
                if isinstance(max_files, int) and total["send_files"] + 1 > max_files:
                    why = "max_files"
                elif isinstance(max_bytes, int) and total["send_bytes"] + size > max_bytes:
                    why = "max_bytes"
                if why:
                    held.append({"path": rel, "size": size, "why": why})
                    continue
                total["send_files"] += 1
                total["send_bytes"] += size
                entries.append((path, rel))
    for name in ("state.json", "spec.json"):
        if os.path.exists(_path(run_dir, name)):
            entries.append((_path(run_dir, name), name))
    total.update(held_back=held[:20], held_back_count=len(held), held_back_bytes=sum(h["size"] for h in held))
    manifest = json.dumps(total).encode()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        info = tarfile.TarInfo(PACK_MANIFEST)
        info.size, info.mtime = len(manifest), int(time.time())
        tar.addfile(info, io.BytesIO(manifest))
        for path, arcname in entries:
            try:
                tar.add(path, arcname=arcname, recursive=False)
            except OSError:
                continue  # vanished while packing (a job still writing): the next collect has it


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # The controller shows this line (the command's stderr) as the node's error.
            print(f"lepton agent: no space left on device: {exc.filename or argv[-1]}", file=sys.stderr)
            return 3
        raise


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("launch", "status", "wait", "cancel", "pack", "supervise"):
        print("usage: agent.py launch|status|wait|cancel|pack|supervise RUN_DIR", file=sys.stderr)
        return 2
    command, run_dir = argv[1], os.path.abspath(argv[2])
    if command == "supervise":
        return supervise(run_dir)
    if command == "pack":
        request = sys.stdin.read().strip()
        pack(run_dir, sys.stdout.buffer, json.loads(request) if request else None)
        return 0
    if command == "launch":
        result = launch(run_dir, json.loads(sys.stdin.read()))
    elif command == "cancel":
        result = cancel(run_dir)
    elif command == "wait":
        result = wait(run_dir)
    else:
        result = status(run_dir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
