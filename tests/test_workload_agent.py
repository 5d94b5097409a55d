"""The node-side agent run for real on this machine (no SSH): a launched job is detached and
supervised, its exit code recorded, cancel stops everything it started (also processes in
sessions of their own, as torchrun's workers are), and a vanished supervisor reads as "lost"."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from lepton_infra.node import (
    AGENT_MODULES,
    NODE_DIR,
    agent,
    agent_files,
    agent_procs,
    agent_program,
    agent_supervise,
)

AGENT = Path(agent.__file__)  # replaced by the shipped form (one zip) for every test: see below


@pytest.fixture(scope="module", autouse=True)
def _shipped_agent(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run the agent as the nodes do: the zip `agent_program()` makes, named agent.py."""
    global AGENT
    AGENT = tmp_path_factory.mktemp("agent") / ".agent" / "agent.py"
    AGENT.parent.mkdir()
    AGENT.write_bytes(agent_program())


def test_the_shipped_agent_is_one_file_holding_every_module_and_stable() -> None:
    """Its digest names the version: the same sources give the same bytes, and it holds every
    module the agent imports (a module left out would fail only on a node)."""
    shipped = agent_program()
    assert shipped == agent_program()
    with zipfile.ZipFile(io.BytesIO(shipped)) as archive:
        assert sorted(archive.namelist()) == sorted(["__main__.py", *AGENT_MODULES])
        for name in AGENT_MODULES:
            assert archive.read(name) == (NODE_DIR / name).read_bytes()
    assert sorted(p.name for p in NODE_DIR.glob("agent*.py")) == sorted(AGENT_MODULES)


def _agent(verb: str, run_dir: Path, spec: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, str(AGENT), verb, str(run_dir)],
        input=json.dumps(spec) if spec is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def _launch(tmp_path: Path, code: str) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "workload").mkdir(parents=True)
    spec = {
        "run_id": "t",
        "node": "n0",
        "argv": [sys.executable, "-c", code],
        "env": {"LEPTON_OUTPUT_DIR": str(run_dir / "output"), "LEPTON_RUN_ID": "t", "PYTHONUNBUFFERED": "1"},
        "cwd": str(run_dir / "workload"),
    }
    state = _agent("launch", run_dir, spec)
    assert state["state"] in ("running", "succeeded", "failed"), state
    return run_dir


def _wait_terminal(run_dir: Path, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _agent("status", run_dir)
        if state["state"] in agent_files.TERMINAL:
            return state
        time.sleep(0.1)
    raise AssertionError(f"still {state}")


def _wait_gone(run_dir: Path, timeout: float = 10) -> list[int]:
    deadline = time.time() + timeout
    while (left := agent_procs.run_processes(str(run_dir))) and time.time() < deadline:
        time.sleep(0.1)
    return left


def test_launched_job_runs_detached_and_its_exit_code_and_log_are_recorded(tmp_path: Path) -> None:
    # The job waits for a file, not a clock: `status` (an interpreter start) sees it running however
    # loaded the machine is.
    release = tmp_path / "release"
    job = f"import os, sys, time; print('hello')\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)\nsys.exit(3)"
    run_dir = _launch(tmp_path, job)
    state = _agent("status", run_dir)
    assert state["state"] == "running" and state["pid"] and state["pgid"] == state["pid"]
    release.touch()
    final = _wait_terminal(run_dir)
    assert final["state"] == "failed" and final["exit_code"] == 3
    assert final["started"] <= final["ended"]
    assert (run_dir / "logs" / "node.log").read_text() == "hello\n"


def test_job_gets_the_spec_environment_and_cwd_and_writes_outputs(tmp_path: Path) -> None:
    code = "import os; open(os.path.join(os.environ['LEPTON_OUTPUT_DIR'], 'cwd.txt'), 'w').write(os.getcwd())"
    run_dir = _launch(tmp_path, code)
    assert _wait_terminal(run_dir)["state"] == "succeeded"
    assert (run_dir / "output" / "cwd.txt").read_text() == str(run_dir / "workload")


def test_launching_the_same_run_twice_is_refused(tmp_path: Path) -> None:
    run_dir = _launch(tmp_path, "pass")
    with pytest.raises(subprocess.CalledProcessError) as err:
        _agent("launch", run_dir, {"argv": ["true"], "env": {}, "cwd": "/"})
    assert "already launched" in err.value.stderr


# A job that leaves a grandchild in a session of its own, as torchrun does with its workers.
_ESCAPER = (
    "import subprocess, sys, time;"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True);"
    "print('started', flush=True);"
    "time.sleep({sleep})"
)


def test_cancel_stops_the_job_and_workers_in_other_sessions(tmp_path: Path) -> None:
    run_dir = _launch(tmp_path, _ESCAPER.format(sleep=120))
    deadline = time.time() + 10
    while len(agent_procs.run_processes(str(run_dir))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(agent_procs.run_processes(str(run_dir))) == 2
    state = _agent("cancel", run_dir)
    assert state["state"] == "cancelled"
    assert _wait_gone(run_dir) == []


def test_processes_a_finished_job_left_behind_are_killed(tmp_path: Path) -> None:
    run_dir = _launch(tmp_path, _ESCAPER.format(sleep=0.2))
    assert _wait_terminal(run_dir)["state"] == "succeeded"
    assert _wait_gone(run_dir) == []


def test_a_killed_supervisor_reads_as_lost_and_cancel_still_cleans_up(tmp_path: Path) -> None:
    run_dir = _launch(tmp_path, "import time; time.sleep(120)")
    state = _agent("status", run_dir)
    os.kill(state["supervisor_pid"], signal.SIGKILL)
    time.sleep(0.2)
    lost = _agent("status", run_dir)
    assert lost["state"] == "lost" and "job processes still running" in lost["detail"]
    assert _agent("cancel", run_dir)["state"] in ("cancelled", "lost")
    assert _wait_gone(run_dir) == []


def test_status_of_a_run_that_was_never_launched(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    assert _agent("status", tmp_path / "r")["state"] == "unknown"
    assert _agent("status", tmp_path / "absent")["detail"] == "no such run on this node"


def test_cancel_before_launch_is_recorded_and_the_job_never_starts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "workload").mkdir(parents=True)  # shipped (or still shipping), not launched
    assert _agent("cancel", run_dir)["state"] == "cancelled"
    marker = tmp_path / "started"
    spec = {
        "run_id": "t",
        "node": "n0",
        "argv": [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"],
        "env": {"LEPTON_OUTPUT_DIR": str(run_dir / "output"), "LEPTON_RUN_ID": "t"},
        "cwd": str(run_dir / "workload"),
    }
    answer = _agent("launch", run_dir, spec)
    assert answer["state"] == "cancelled" and "before launch" in answer["detail"]
    time.sleep(1.0)
    assert not marker.exists()
    assert _agent("status", run_dir)["state"] == "cancelled"


def test_a_full_disk_leaves_state_json_rewritable_in_place(tmp_path: Path) -> None:
    """The in-place path that a full disk takes: the padded file is rewritten without new blocks."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    agent_files.write_state(str(run_dir), {"state": "running", "detail": ""})
    size = (run_dir / "state.json").stat().st_size
    assert size == agent_files.STATE_PAD
    with open(run_dir / "state.json", "r+b") as f:  # what write_state does when the tmp file fails
        f.write(agent_files._encode_state({"state": "failed", "detail": "x" * 10000}, size))
    assert json.loads((run_dir / "state.json").read_text())["state"] == "failed"
    assert (run_dir / "state.json").stat().st_size == size


def test_a_multi_node_job_binds_gloo_to_the_interface_of_its_private_ip(tmp_path: Path) -> None:
    """Found by the first-boot rehearsal: on an image whose hostname resolves to 127.0.1.1, gloo
    bound loopback and the peer's connections were refused. The agent names the interface."""
    env = {"LEPTON_NUM_NODES": "2", "LEPTON_NODE_RANK": "1", "LEPTON_NODE_IPS": "10.9.9.9,127.0.0.1"}
    assert agent_supervise.gloo_interface(env) == {"GLOO_SOCKET_IFNAME": "lo"}
    assert agent_supervise.gloo_interface({**env, "GLOO_SOCKET_IFNAME": "eth7"}) == {}  # the job's own choice
    assert agent_supervise.gloo_interface({**env, "LEPTON_NUM_NODES": "1"}) == {}
    run_dir = tmp_path / "run"
    (run_dir / "workload").mkdir(parents=True)
    code = "import os; print(os.environ.get('GLOO_SOCKET_IFNAME'))"
    spec = {
        "run_id": "t",
        "node": "n1",
        "argv": [sys.executable, "-c", code],
        "env": {"LEPTON_OUTPUT_DIR": str(run_dir / "output"), "PYTHONUNBUFFERED": "1", **env},
        "cwd": str(run_dir / "workload"),
    }
    _agent("launch", run_dir, spec)
    assert _wait_terminal(run_dir)["state"] == "succeeded"
    assert (run_dir / "logs" / "node.log").read_text() == "lo\n"


# A daemon in the making: double fork, setsid, an empty environment, SIGTERM ignored.
_DAEMONIZER = (
    "import os, signal, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "        os.execve('/bin/sleep', ['sleep', '617'], {})\n"
    "    os._exit(0)\n"
    "os.wait()\n"
    "print('started', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_daemon_without_cgroup_is_still_found_through_the_subreaper(tmp_path: Path) -> None:
    """The fallback where no cgroup can be made (no root, no delegation): the daemon reparents to
    the supervisor (a child subreaper), so the run still knows it although it left the job's
    session and carries no marker."""
    run_dir = _launch(tmp_path, _DAEMONIZER)
    deadline = time.time() + 10
    while b"started" not in (run_dir / "logs" / "node.log").read_bytes() and time.time() < deadline:
        time.sleep(0.05)
    state = _agent("status", run_dir)
    found = agent_procs.run_processes(str(run_dir), {**state, "cgroup": None})
    commands = [agent_procs._describe(pid) for pid in found]
    assert "sleep 617" in commands, commands
    final = _agent("cancel", run_dir)
    assert final["state"] == "cancelled"
    assert [k["command"] for k in final["killed"]] == ["sleep 617"]
    assert final["killed"][0]["signal"] == "KILL" and final["killed"][0]["escaped"] is True
    assert _wait_gone(run_dir) == []


def test_wait_blocks_until_the_end_is_recorded_and_answers_with_it(tmp_path: Path) -> None:
    """`wait` sleeps in flock on the supervisor's end lock: it answers with the final state, not
    with "running" (the controller learns of the end without polling state.json for it)."""
    run_dir = _launch(tmp_path, "import sys, time; time.sleep(1.0); sys.exit(5)")
    final = _agent("wait", run_dir)
    assert final["state"] == "failed" and final["exit_code"] == 5


def test_wait_answers_lost_at_once_when_the_supervisor_dies(tmp_path: Path) -> None:
    run_dir = _launch(tmp_path, "import time; time.sleep(120)")
    os.kill(_agent("status", run_dir)["supervisor_pid"], signal.SIGKILL)
    assert _agent("wait", run_dir)["state"] == "lost"  # the kernel dropped the dead holder's lock
    _agent("cancel", run_dir)
    assert _wait_gone(run_dir) == []


def test_wait_gives_up_after_its_limit_while_the_job_runs(tmp_path: Path) -> None:
    run_dir = _launch(tmp_path, "import time; time.sleep(120)")
    assert agent.wait(str(run_dir), limit=0.3)["state"] == "running"
    _agent("cancel", run_dir)


def test_job_wait_returns_the_exit_code_when_the_job_exits_and_none_while_it_runs() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(4)"])
    job = agent_supervise.JobWait(proc)
    assert job.fd is not None  # Linux >= 5.3: woken by the kernel, no timed polling
    assert job.wait(0.01) is None
    assert job.wait(30) == 4
    job.close()


def test_orphans_are_reaped_while_the_job_runs_and_its_own_exit_code_survives(tmp_path: Path) -> None:
    """The supervisor is a subreaper: a grandchild orphaned by the job is reparented to it and
    must be reaped (no zombies pile up), without ever reaping the job itself (its exit code)."""
    died, release = tmp_path / "orphan-died", tmp_path / "release"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"  # the orphan: dies under the supervisor
        f"        time.sleep(0.3); open({str(died)!r}, 'w').close(); os._exit(0)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        f"while not os.path.exists({str(release)!r}): time.sleep(0.05)\n"  # runs until released
        "sys.exit(7)\n"
    )
    run_dir = _launch(tmp_path, code)
    supervisor = _agent("status", run_dir)["supervisor_pid"]

    def zombies() -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == supervisor and fields[0] == "Z":
                out.append(int(entry))
        return out

    # The supervisor reaps on its heartbeat (every 2 s): the dead orphan must be gone within a few,
    # while the job still runs.
    deadline = time.monotonic() + 30
    while not died.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert died.exists(), "the orphan never ran"
    deadline = time.monotonic() + 10
    while zombies() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert zombies() == []
    assert _agent("status", run_dir)["state"] == "running"
    release.touch()
    final = _wait_terminal(run_dir)
    assert final["state"] == "failed" and final["exit_code"] == 7


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_metrics_sampler_runs_at_a_lower_priority_than_the_job(tmp_path: Path) -> None:
    """The sampler starts while the job imports torch: it must not take CPU from it."""
    run_dir = tmp_path / "run"
    (run_dir / "workload").mkdir(parents=True)
    (run_dir / ".agent").mkdir()  # where prepare puts the agent, and the supervisor the sampler
    source = (Path(agent_files.__file__).parent / "metrics.py").read_text()
    spec = {
        "run_id": "t",
        "node": "n0",
        "argv": [sys.executable, "-c", "import time; time.sleep(3)"],
        "env": {"LEPTON_OUTPUT_DIR": str(run_dir / "output"), "LEPTON_RUN_ID": "t"},
        "cwd": str(run_dir / "workload"),
        "metrics": {"source": source, "every": 0.5},
    }
    state = _agent("launch", run_dir, spec)
    sampler = None
    deadline = time.time() + 10
    while sampler is None and time.time() < deadline:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if str(run_dir / ".agent" / "metrics.py") in (proc / "cmdline").read_bytes().decode():
                        sampler = int(proc.name)
        time.sleep(0.05)
    assert sampler is not None, "no sampler process"
    assert _nice(sampler) >= _nice(state["pid"]) + 10
    assert _wait_terminal(run_dir)["state"] == "succeeded"
