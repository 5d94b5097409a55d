"""Node-side agent: starts a run's job detached from SSH, supervises it, reports and stops it.

Standard library only. Shipped with every run to `~/.lepton/runs/<run-id>/.agent/agent.py` as one
file, a zip of this module and its siblings (`lepton_infra.node.agent_program()`: Python runs a
zip as a program; its digest covers them all), and run as `python agent.py COMMAND RUN_DIR`:

    launch RUN_DIR     (spec JSON on stdin) start the supervisor detached, print the state
    status RUN_DIR     print the state; a run whose supervisor vanished is reported "lost"
    wait RUN_DIR       print the state once the run has ended (at most WAIT_MAX_S later)
    cancel RUN_DIR     stop the job's process group (TERM, then KILL), print the final state
    pack RUN_DIR       write a tar of output/, logs/ and state.json to stdout (collection)
    supervise RUN_DIR  internal: the supervisor process itself

The supervisor (agent_supervise.py; own session, stdio redirected, so it survives the SSH session
and the controller) starts the job in a new session (its own process group), writes `state.json`
atomically with a heartbeat every few seconds (agent_files.py), records the exit code, and when the
job ends kills whatever the job left behind (agent_procs.py) after storing its results
(agent_results.py). Nothing here depends on the controller staying alive: state lives in RUN_DIR.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

try:  # as lepton_infra.node.* on the controller; top-level modules inside the shipped agent
    from . import agent_files as files
    from . import agent_pack as packing
    from . import agent_procs as procs
    from . import agent_supervise as supervisor
except ImportError:
    import agent_files as files  # type: ignore[no-redef]
    import agent_pack as packing  # type: ignore[no-redef]
    import agent_procs as procs  # type: ignore[no-redef]
    import agent_supervise as supervisor  # type: ignore[no-redef]


def program() -> str:
    """The file to run this agent again with (the supervisor): the shipped zip when running from
    it (then this module's __file__ is a path inside that zip), else this very file."""
    here = os.path.abspath(__file__)
    archive = os.path.dirname(here)
    return archive if os.path.isfile(archive) else here


WAIT_MAX_S = 20.0  # a `wait` answers after at most this long, ended or not (the caller asks again)


def status(run_dir: str) -> dict[str, Any]:
    if not os.path.isdir(run_dir):
        return {"state": "unknown", "detail": "no such run on this node", "run_dir": run_dir}
    state = files.read_state(run_dir)
    if state is None:
        return {"state": "unknown", "detail": "run was shipped but not launched", "run_dir": run_dir}
    if state["state"] in files.ACTIVE and not procs.pid_alive(state.get("supervisor_pid"), run_dir):
        # The supervisor died without recording an end (killed, or the node rebooted).
        alive = procs.group_alive(state.get("pgid")) or bool(procs.run_processes(run_dir, state))
        state["state"] = "lost"
        state["detail"] = "supervisor gone" + ("; job processes still running" if alive else "")
    state.update(files.killed_summary(run_dir))
    state["run_dir"] = run_dir
    state["now"] = time.time()
    try:
        state["log_bytes"] = os.path.getsize(files.path(run_dir, "logs", "node.log"))
    except OSError:
        state["log_bytes"] = 0
    sample = files.latest_metrics(run_dir)
    if sample is not None:
        state["metrics"] = sample
    return state


def launch(run_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
    if files.cancel_requested(run_dir):
        return status(run_dir)  # cancelled while it was being shipped: never start it
    if os.path.exists(files.path(run_dir, "spec.json")):
        raise SystemExit(f"run in {run_dir} was already launched")
    for sub in ("logs", "output"):
        os.makedirs(files.path(run_dir, sub), exist_ok=True)
    tmp = files.path(run_dir, ".spec.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    os.replace(tmp, files.path(run_dir, "spec.json"))
    with open(files.path(run_dir, "logs", "agent.log"), "ab") as agent_log:
        # All three stdio redirected + a new session: the SSH exec channel closes at once and the
        # supervisor survives the SSH session and the controller.
        child = subprocess.Popen(
            [sys.executable, "-S", program(), "supervise", run_dir],  # -S: it is standard library only
            stdin=subprocess.DEVNULL,
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.time() + 30.0
    while time.time() < deadline:
        state = files.read_state(run_dir)
        if state is not None and state["state"] != "starting":
            return status(run_dir)
        if state is None and child.poll() is not None:
            # It died before its first state write (a full disk, say): say so, never "running".
            why = files.disk_full(run_dir) or f"supervisor exited with {child.returncode}; see logs/agent.log"
            return {"state": "failed", "exit_code": None, "detail": why, "run_dir": run_dir}
        time.sleep(0.02)
    return status(run_dir)


class _WaitOver(Exception):
    pass


def wait(run_dir: str, limit: float = WAIT_MAX_S) -> dict[str, Any]:
    """The run's status once its supervisor has recorded the end (or died), or after `limit`
    seconds. Blocks in flock on the supervisor's end lock: the kernel wakes it the moment the
    lock is released, so the controller learns of the end without polling for it."""
    state = files.read_state(run_dir)
    if state is not None and state.get("state") in files.ACTIVE:
        try:
            fd = os.open(files.path(run_dir, supervisor.END_LOCK), os.O_RDONLY | os.O_CLOEXEC)
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


def cancel(run_dir: str, grace: float = 5.0) -> dict[str, Any]:
    """Stop the run at whatever phase it is in. Before launch (still shipping, or shipped), the
    cancel marker makes any later `launch` refuse and the state says cancelled at once."""
    state = files.read_state(run_dir)
    if state is not None and state["state"] in files.TERMINAL:
        return status(run_dir)
    with open(files.path(run_dir, "cancel"), "w", encoding="utf-8") as f:
        f.write(str(time.time()))
    if state is None:
        if not os.path.exists(files.path(run_dir, "spec.json")):
            files.write_state(run_dir, files.cancelled_before_launch(run_dir))
            return status(run_dir)
        # A supervisor is starting: it sees the marker before (or right after) starting the job.
        deadline = time.time() + 10.0
        while time.time() < deadline and files.read_state(run_dir) is None:
            time.sleep(0.05)
        state = files.read_state(run_dir)
        if state is None or state["state"] in files.TERMINAL:
            return status(run_dir)
    # TERM first (torchrun forwards it to its workers and they may flush logs/checkpoints), then
    # KILL what is left after the grace, wherever it went (own session, cleared environment).
    procs.stop_run_processes(run_dir, state, grace, report_all=False)
    procs.remove_cgroup(state.get("cgroup"))
    deadline = time.time() + 5.0
    while time.time() < deadline:
        current = files.read_state(run_dir)
        if current is not None and current["state"] in files.TERMINAL:
            return status(run_dir)
        if not procs.pid_alive(current.get("supervisor_pid") if current else None, run_dir):
            break
        time.sleep(0.05)
    # No supervisor left to record the end: record it here.
    current = files.read_state(run_dir) or state
    if current["state"] not in files.TERMINAL:
        current.update(state="cancelled", ended=time.time(), detail="cancelled (no supervisor)")
        files.write_state(run_dir, current)
    return status(run_dir)


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
        return supervisor.supervise(run_dir)
    if command == "pack":
        request = sys.stdin.read().strip()
        packing.pack(run_dir, sys.stdout.buffer, json.loads(request) if request else None)
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
