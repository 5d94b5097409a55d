"""The supervisor: the detached process that starts a run's job, keeps its heartbeat, records its
end and stops whatever it left behind. It sleeps between heartbeats (a pidfd wakes it when the job
exits) and holds the end lock that `agent.py wait` blocks on until the end is recorded.
Standard library only; part of the agent shipped with every run (see agent.py)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

try:  # as lepton_infra.node.* on the controller; top-level modules inside the shipped agent
    from . import agent_files as files
    from . import agent_procs as procs
    from . import agent_results as uploads
except ImportError:
    import agent_files as files  # type: ignore[no-redef]
    import agent_procs as procs  # type: ignore[no-redef]
    import agent_results as uploads  # type: ignore[no-redef]


END_LOCK = ".supervisor.lock"  # held (flock) by the supervisor until the run's end is recorded


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
        poller = select.poll()  # not select.select: no FD_SETSIZE limit on the descriptor
        poller.register(self.fd, select.POLLIN)
        return self.proc.wait() if poller.poll(timeout * 1000) else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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


def hold_end_lock(run_dir: str) -> int | None:
    """Take the end lock for the supervisor's life (None if the file cannot be made: then `wait`
    answers at once and the controller's polling finds the end, as before)."""
    try:
        fd = os.open(files.path(run_dir, END_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def release_end_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing drops the flock; the kernel does the same if the supervisor dies


def supervise(run_dir: str) -> int:
    with open(files.path(run_dir, "spec.json"), encoding="utf-8") as f:
        spec = json.load(f)
    env = dict(os.environ)
    env.update(spec["env"])
    env.update(gloo_interface(env))
    if spec.get("store_client"):
        # The job's fetch of store URLs (train.py --data-dir s3://...): the shipped node client.
        client = files.path(run_dir, ".store_client.py")
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
    if files.cancel_requested(run_dir):
        files.write_state(run_dir, {**state, **files.cancelled_before_launch(run_dir)})
        return 0
    procs.become_subreaper()
    state["cgroup"] = cgroup = procs.make_cgroup(run_dir)
    end_lock = hold_end_lock(run_dir)  # before the first state: a `wait` then always blocks on it
    files.write_state(run_dir, state)
    os.makedirs(files.path(run_dir, "logs"), exist_ok=True)
    with open(files.path(run_dir, "logs", "node.log"), "ab", buffering=0) as log:
        try:
            proc = subprocess.Popen(
                spec["argv"],
                cwd=spec["cwd"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: cancel stops the whole gang
                preexec_fn=lambda: procs.enter_cgroup(cgroup),  # noqa: PLW1509 - the supervisor has one thread
            )
        except OSError as exc:
            log.write(f"lepton: cannot start {spec['argv'][0]!r}: {exc}\n".encode())
            state.update(state="failed", exit_code=127, ended=time.time(), detail=f"cannot start: {exc}")
            files.write_state(run_dir, state)
            release_end_lock(end_lock)
            return 1
        state.update(state="running", pid=proc.pid, pgid=proc.pid, heartbeat=time.time())
        files.write_state(run_dir, state)
        if files.cancel_requested(run_dir):  # a cancel that came while the job was being started
            procs.kill_group(proc.pid, signal.SIGTERM)
        snapshots = uploads.Snapshots(run_dir, spec)
        sampler = start_sampler(run_dir, spec)
        job = JobWait(proc)
        while (code := job.wait(files.HEARTBEAT_S)) is None:
            state["heartbeat"] = time.time()
            try:
                files.write_state(run_dir, state)
            except OSError:
                pass  # a missed heartbeat is survivable; a dead supervisor is not
            snapshots.tick()
            procs.reap_orphans(keep=(proc.pid,))
        job.close()
        if sampler is not None:
            sampler.terminate()  # no wait here: the job's end is recorded first, then it is reaped
        snapshots.stop()
    # The job is over; nothing of it may outlive it (torchrun's workers, daemons it started).
    cancelled = os.path.exists(files.path(run_dir, "cancel"))
    procs.stop_run_processes(run_dir, state, report_all=not cancelled)
    procs.reap_orphans()
    procs.remove_cgroup(cgroup)
    state.update(files.killed_summary(run_dir))
    detail = "cancelled" if cancelled else (f"killed by signal {-code}" if code < 0 else f"exit {code}")
    full = files.disk_full(run_dir) if code != 0 and not cancelled else None
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
        state["results"] = uploads.upload_results(run_dir, spec["results"], state)
    files.write_state(run_dir, state)
    release_end_lock(end_lock)  # every `wait` returns now, with the end just recorded
    stop_sampler(sampler)
    return 0


SAMPLER_NICE = 10


def start_sampler(run_dir: str, spec: dict[str, Any]) -> subprocess.Popen[bytes] | None:
    """The node metrics sampler (node/metrics.py, sent in the spec), as a process of its own: it
    cannot stop the job or the heartbeat. It gets the job's PYTHONPATH and LD_LIBRARY_PATH (where
    a node's NVML module and library may live) but not the run's marker variables: it is not one
    of the job's processes."""
    metrics = spec.get("metrics")
    if not isinstance(metrics, dict) or not metrics.get("source") or not metrics.get("every"):
        return None
    env = procs.helper_env(run_dir)  # the supervisor's own helper: a stop of the run's processes spares it
    env.update({k: v for k, v in spec["env"].items() if k in ("PYTHONPATH", "LD_LIBRARY_PATH")})
    path = files.path(run_dir, ".agent", "metrics.py")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(metrics["source"])
        with open(files.path(run_dir, "logs", "agent.log"), "ab") as log:
            argv = [sys.executable, path, run_dir, str(metrics["every"])]
            return subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # It starts while the job imports torch: its interpreter start must not take CPU
                # from the job, and its samples only read counters the kernel keeps anyway.
                preexec_fn=lambda: os.nice(SAMPLER_NICE),  # noqa: PLW1509 - the supervisor has one thread
            )
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
