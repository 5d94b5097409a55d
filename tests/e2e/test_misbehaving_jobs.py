"""Jobs that misbehave (issue 21, README "Reliability"), on real sshd nodes: nothing a job starts
outlives its run, no output blows up the controller, a collect that failed is never success.
Nodes that lie and links that stall: test_untrusted_output_and_links.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lepton_infra.inventory import Inventory

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `lepton-infra` in a subprocess: what a user sees."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "lepton_infra.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip


# --------------------------------------------------------------------------- class 1: escapes

# Starts two processes built to outlive the run: a daemon (double fork, setsid, an empty
# environment: no marker of the run) and a child in the job's own group; both ignore SIGTERM.
# Each writes its pid where the test can find it; `forever=1` keeps the job itself running.
_ESCAPING_JOB = r"""
import os, signal, sys, time
opts = dict(a.split("=", 1) for a in sys.argv[1:])
name = os.environ["LEPTON_NODE_NAME"]

def start(kind, argv, detach):
    if os.fork() == 0:
        if detach:
            os.setsid()
            if os.fork():
                os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(os.path.join(opts["pids"], f"{name}-{kind}"), "w") as f:
            f.write(str(os.getpid()))
        os.execve("/bin/sleep", argv, {} if detach else dict(os.environ))
    if detach:
        os.wait()

start("daemon", ["sleep", "613"], detach=True)
start("child", ["sleep", "614"], detach=False)
while len(os.listdir(opts["pids"])) < 2 * int(os.environ["LEPTON_NUM_NODES"]):
    time.sleep(0.05)

def is_sleep(kind):  # its pid written and its exec done: what the cleanup will name it
    try:
        pid = open(os.path.join(opts["pids"], f"{name}-{kind}")).read()
        return open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sleep")
    except (OSError, ValueError):
        return False

while not (is_sleep("daemon") and is_sleep("child")):
    time.sleep(0.05)
print(f"daemons started on {name}", flush=True)
if opts.get("forever"):
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _pids(folder: Path, expected: int, timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return {p.name: int(p.read_text()) for p in folder.iterdir() if p.read_text().strip()}


def _still_alive(pids: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while (left := {k: p for k, p in pids.items() if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.slow
def test_daemons_a_job_leaves_behind_end_with_the_run_and_are_reported(
    pool2: Inventory, make_workload, recorder, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.workload import run_job

    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    runs, events = tmp_path / "runs", recorder()
    workload = make_workload(job=_ESCAPING_JOB)
    result = run_job(pool2, workload, [f"pids={pid_dir}"], run_id="escape-1", runs_dir=runs, events=events)
    pids = _pids(pid_dir, 4)
    try:
        assert result.status == "succeeded", result
        assert len(pids) == 4
        assert _still_alive(pids) == {}, "processes of the run outlived it"
        record = json.loads((runs / "escape-1" / "run.json").read_text())
        for node in record["nodes"]:
            stopped = {k["command"]: k["signal"] for k in node["killed"]}
            assert stopped.get("sleep 613") == "KILL" and stopped.get("sleep 614") == "KILL", node
        said = [d for phase, d in events.phases if phase == "cleanup"]
        assert len(said) == 2 and all("sleep 613" in d and "KILL" in d for d in said), said
    finally:
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, 9)


@pytest.mark.slow
def test_cancel_ends_daemons_that_left_the_session_and_ignore_sigterm(
    pool2: Inventory, make_workload, tmp_path: Path, controller_thread
) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.workload import run_job

    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    inventory = tmp_path / "inventory.json"
    pool2.save(inventory)
    runs = tmp_path / "runs"
    workload = make_workload(job=_ESCAPING_JOB)
    thread, box = controller_thread(
        lambda: run_job(pool2, workload, [f"pids={pid_dir}", "forever=1"], run_id="escape-2", runs_dir=runs)
    )
    pids = _pids(pid_dir, 4)
    try:
        assert len(pids) == 4, box
        done = cli("cancel", "escape-2", "--inventory", str(inventory), "--runs-dir", str(runs))
        assert done.returncode == 0, done.stdout + done.stderr
        assert _still_alive(pids) == {}, "cancel left processes of the run running"
        for node in pool2.nodes:
            assert f"{node.name}: stopped" in done.stdout and "sleep 613" in done.stdout, done.stdout
        thread.join(timeout=60)
        assert box["result"].status == "cancelled", box
    finally:
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, 9)


@pytest.mark.slow
def test_a_node_whose_launch_answer_was_lost_is_stopped_with_the_others(
    pool2: Inventory, make_workload, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leftover_processes
) -> None:  # type: ignore[no-untyped-def]
    """The connection dies after the node's agent launched the job but before its answer came
    back (the chaos run's kill-sshd found it): the run is refused and nothing keeps running."""
    from lepton_infra.errors import NodeError
    from lepton_infra.workload import run_job, steps

    real = steps.agent
    victim = pool2.nodes[1].name

    def answer_lost(conn, run_id, verb, **kw):  # type: ignore[no-untyped-def]
        answer = real(conn, run_id, verb, **kw)
        if verb == "launch" and conn.name == victim:
            conn.close()
            raise NodeError(conn.name, "connection lost during command")
        return answer

    monkeypatch.setattr(steps, "agent", answer_lost)
    workload = make_workload(job=_ESCAPING_JOB)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with pytest.raises(NodeError, match=victim):
        run_job(
            pool2, workload, [f"pids={pid_dir}", "forever=1"], run_id="lost-answer", runs_dir=tmp_path / "r"
        )
    assert leftover_processes("lost-answer") == []
    assert _still_alive({p.name: int(p.read_text()) for p in pid_dir.iterdir() if p.read_text()}) == {}


# --------------------------------------------------------------------------- class 2: output

# 20 MB on one line without a newline (NUL bytes, invalid UTF-8), then a quarter million empty lines,
# then a line the user must still see.
_HOSTILE_OUTPUT_JOB = r"""
import sys
out = sys.stdout.buffer
for _ in range(20):
    out.write(b"\x00\xff\xc3(" * (1 << 18))
    out.flush()
out.write(b"\n" * (1 << 18))
out.write(b"after the flood\n")
out.flush()
"""
_QUIET_JOB = "print('hello', flush=True)\n"

# The real CLI in-process, reporting its own peak RSS (KiB) into the file named first.
_MEASURED_CLI = """
import resource, sys
out, sys.argv = sys.argv[1], ["lepton-infra", *sys.argv[2:]]
try:
    from lepton_infra.cli import main
    main()
finally:
    with open(out, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def _peak_rss_mb(tmp_path: Path, name: str, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    report = tmp_path / f"{name}.rss"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED_CLI, str(report), *args],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    return int(report.read_text()) / 1024, done


@pytest.mark.slow
def test_controller_memory_stays_bounded_whatever_a_job_prints_in_every_output_mode(
    pool: Inventory, make_workload, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    inventory = tmp_path / "inventory.json"
    pool.model_copy(update={"nodes": pool.nodes[:1]}).save(inventory)
    runs = tmp_path / "runs"
    common = ["--inventory", str(inventory), "--runs-dir", str(runs)]
    idle, done = _peak_rss_mb(
        tmp_path, "idle", "run", str(make_workload(job=_QUIET_JOB)), "--run-id", "quiet", *common
    )
    assert done.returncode == 0, done.stderr[-2000:]
    hostile = make_workload(job=_HOSTILE_OUTPUT_JOB)
    for mode in ("live", "json"):
        extra = ["--json"] if mode == "json" else []
        peak, done = _peak_rss_mb(
            tmp_path, mode, "run", str(hostile), "--run-id", f"flood-{mode}", *common, *extra
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert peak - idle < 40, f"{mode}: peak RSS {peak:.0f} MB vs {idle:.0f} MB for a quiet job"
        log = (runs / f"flood-{mode}" / pool.nodes[0].name / "logs" / "node.log").read_bytes()
        assert log.endswith(b"after the flood\n")
        assert len(log) == 20 * 4 * (1 << 18) + (1 << 18) + len(b"after the flood\n")  # every byte kept
        if mode == "live":
            assert "line cut; every byte" in done.stdout and "line(s) not shown" in done.stdout
            assert "\\x00" in done.stdout and len(done.stdout) < 1 << 20


# --------------------------------------------------------------------------- class 3: collect

# Each node writes 5 MB of results and a small file; `mb=` changes the size.
_RESULTS_JOB = r"""
import os, sys
opts = dict(a.split("=", 1) for a in sys.argv[1:])
out = os.environ["LEPTON_OUTPUT_DIR"]
with open(os.path.join(out, "big.bin"), "wb") as f:
    for _ in range(int(opts.get("mb", "5"))):
        f.write(os.urandom(1 << 20))
with open(os.path.join(out, "small.txt"), "w") as f:
    f.write("small")
print("written", flush=True)
"""


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder on an 8 MB tmpfs (root only; skipped where mounting is not allowed)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_collect_fails_the_run_naming_node_and_file_and_a_later_collect_resumes(
    pool2: Inventory, make_workload, tmp_path: Path, small_disk: Path
) -> None:  # type: ignore[no-untyped-def]
    inventory = tmp_path / "inventory.json"
    pool2.model_copy(update={"store": None}).save(inventory)  # results only come home by collect
    runs = small_disk / "runs"
    common = ["--inventory", str(inventory), "--runs-dir", str(runs)]
    done = cli("run", str(make_workload(job=_RESULTS_JOB)), "--run-id", "full-collect", *common)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    error = " ".join(done.stderr.split())
    assert "no space left on device" in error and "bad input" not in error, error
    record = json.loads((runs / "full-collect" / "run.json").read_text())
    assert record["status"] == "failed"
    missing = [n for n in record["nodes"] if n["collect_error"]]
    assert len(missing) == 1 and missing[0]["state"] == "succeeded", [
        (n["name"], n["state"], n["collect_error"]) for n in record["nodes"]
    ]
    name = missing[0]["name"]
    assert f"node {name!r}" in error and str(runs / "full-collect" / name) in error
    assert "more" in error and "collect full-collect" in error  # how much, and what to do
    partial = runs / "full-collect" / name / "output" / "big.bin"
    assert not partial.exists() or partial.stat().st_size == 5 << 20  # never half a file

    # A record that cannot be written keeps its last complete version, and says why.
    from lepton_infra.errors import NoSpace
    from lepton_infra.workload.record import RunStore

    filler = small_disk / "filler"
    # suppress outermost: the file's close (flushing its last buffer) fails on a full disk too
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * (64 << 10))
    store = RunStore(runs)
    with pytest.raises(NoSpace, match="no space left on device: cannot write .*run.json"):
        store.save(store.load("full-collect").model_copy(update={"status": "succeeded"}))  # type: ignore[union-attr]
    assert json.loads((runs / "full-collect" / "run.json").read_text()) == record
    assert not list((runs / "full-collect").glob("*.tmp"))
    filler.unlink()

    # `collect` with the disk still too small says so per node (and fetches nothing it has).
    again = cli("collect", "full-collect", *common)
    assert again.returncode == 3, again.stdout[-2000:] + again.stderr[-2000:]
    said = " ".join(again.stderr.split())
    assert f"node {name!r}" in said and "no space left on device" in said, said

    # Room again: `collect` brings the rest, not what is already here.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    done = cli("collect", "full-collect", "--json", *common)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    after = {n["name"]: n for n in json.loads(done.stdout)["nodes"]}
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert after[name]["bytes_collected"] >= 5 << 20 and after[name]["collect_error"] is None
    other = next(n for n in after if n != name)
    assert after[other]["bytes_collected"] < 1 << 20, after[other]  # not fetched again
    for node in after:
        assert (runs / "full-collect" / node / "output" / "big.bin").stat().st_size == 5 << 20


@pytest.mark.slow
def test_ctrl_c_during_a_slow_collect_stops_the_controller_at_once(
    pool2: Inventory, make_workload, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from linkproxy import LinkProxy

    node = pool2.nodes[0]
    with LinkProxy((node.host, node.port), rate=2 << 20) as link:  # 60 MB at 2 MB/s: 30 s
        slow = node.model_copy(update={"host": "127.0.0.1", "port": link.port})
        inventory = tmp_path / "inventory.json"
        pool2.model_copy(update={"nodes": [slow], "store": None}).save(inventory)
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        argv = [sys.executable, "-m", "lepton_infra.cli", "run", str(make_workload(job=_RESULTS_JOB))]
        argv += ["mb=60", "--inventory", str(inventory), "--runs-dir", str(tmp_path / "runs")]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while link.bytes_from_node < 8 << 20 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)  # until the collect is well under way
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail("Ctrl-C during collect waited for the transfer to finish")
            stopped_at = link.bytes_from_node
        finally:
            proc.kill()
            out, err = proc.communicate()
        assert proc.returncode != 0, out + err
        assert stopped_at < 40 << 20, "the transfer ran on after Ctrl-C"
        assert "Traceback" not in err, err[-3000:]


# The store breaks while the job runs (its folder replaced by a file): the node's upload fails.
_BREAKS_THE_STORE_JOB = r"""
import os, shutil, sys
store = sys.argv[1]
shutil.rmtree(store)
open(store, "w").close()
open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "result.txt"), "w").write("ok")
"""


@pytest.mark.slow
def test_a_failed_upload_to_the_store_is_shown_on_the_terminal(
    pool: Inventory, make_workload, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    store.mkdir()
    inventory = tmp_path / "inventory.json"
    pool.model_copy(update={"nodes": pool.nodes[:1], "store": f"file://{store}"}).save(inventory)
    workload = make_workload(job=_BREAKS_THE_STORE_JOB)
    done = cli(
        "run", str(workload), str(store), "--inventory", str(inventory), "--runs-dir", str(tmp_path / "r")
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]  # the results are home
    said = " ".join(done.stdout.split())
    assert f"{pool.nodes[0].name}: storing its results failed" in said, said[-3000:]
