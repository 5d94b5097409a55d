"""Sweeps: jobs from the queue, results in the store, the guarantees of issue 9 each a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from lepton_infra.data import open_queue, open_store
from lepton_infra.data.queue_local import create_local_queue
from lepton_infra.data.sweep_ledger import archive_dead_letters, malformed, read_ledger, sweep_key
from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import sweep

# A stand-in training job: its "accuracy" depends on lr, it sleeps a little, and --fail makes it exit 3.
JOB = textwrap.dedent(
    """\
    import argparse, json, os, time
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--fail", type=int, default=0)
    p.add_argument("--wait-for", default="")
    a = p.parse_args()
    print("job", os.environ["LEPTON_JOB_ID"], "lr", a.lr, flush=True)
    time.sleep(a.sleep)
    deadline = time.time() + 60
    while a.wait_for and not os.path.exists(a.wait_for) and time.time() < deadline:
        time.sleep(0.2)
    if a.fail:
        raise SystemExit(3)
    out = os.environ["LEPTON_OUTPUT_DIR"]
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"final_test_accuracy": 1.0 - a.lr, "batch_size": a.batch_size}, f)
    """
)


def _workload(tmp_path: Path) -> Path:
    wl = tmp_path / "toyjob"
    wl.mkdir()
    (wl / "train.py").write_text(JOB)
    return wl


def test_grid_becomes_one_job_per_configuration_and_repeat() -> None:
    grid = sweep.parse_grid(["lr=0.1,0.01", "batch_size=64,128,256"])
    assert grid == {"lr": [0.1, 0.01], "batch_size": [64, 128, 256]}
    jobs = sweep.plan_jobs("s1", "toy", grid, 2, ["--epochs", "1"])
    assert len(jobs) == 12 and len({j["job_id"] for j in jobs}) == 12
    assert jobs[0]["params"] == {"lr": 0.1, "batch_size": 64} and jobs[0]["args"] == ["--epochs", "1"]
    for bad in (["lr"], ["=1"], ["lr="], ["lr=1", "lr=2"], ["l r=1"]):
        with pytest.raises(ConfigError, match="--grid"):
            sweep.parse_grid(bad)


@pytest.mark.parametrize("kind, others", [("local", 1001), ("sqs", 25)])
def test_a_dead_job_ends_its_sweep_however_many_dead_letters_the_queue_already_holds(
    queue_of, tmp_path: Path, kind: str, others: int
) -> None:  # type: ignore[no-untyped-def]
    # More dead letters of an older sweep than one read of the dead-letter queue returns (1,000 on
    # the local queue, 10 on SQS as moto answers), then a job of the new sweep dies.
    queue = open_queue(queue_of(kind, 1))
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put(
        sweep_key("new"),
        json.dumps({"jobs": [{"job_id": "c000-r0", "config": "c000", "params": {}}]}).encode(),
    )
    for i in range(others):
        queue.send(json.dumps({"sweep_id": "old", "job_id": f"j{i}"}))
    queue.send("not json at all")
    while queue.receive(max_messages=500, visibility_timeout_s=0, wait_s=1):
        pass  # each received twice with max_receive_count 1: the queue dead-letters them all
    queue.send(json.dumps({"sweep_id": "new", "job_id": "c000-r0"}))
    [ours] = queue.receive(visibility_timeout_s=30, wait_s=5)
    queue.dead_letter(ours, "failed 5 time(s); last: exit code 3")

    rows = sweep.status(store, queue, "new")
    assert [(r.state, r.detail) for r in rows] == [("dead", "failed 5 time(s); last: exit code 3")]
    assert sweep.running_sweeps(store, queue) == []  # the next sweep is not refused as busy
    assert queue.dead_letters() == []  # archived to the store, off the queue
    assert len(read_ledger(store, "old").ended) == others


def _worker(workdir: Path, queue: str, store: str, sweep_id: str, **extra: str) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "lepton_infra.data.sweep_worker", "--queue", queue, "--store", store,
        "--sweep-id", sweep_id, "--workload", "toyjob", "--node", "local-worker", "--workdir", str(workdir),
        "--visibility-timeout-s", "30", "--idle-exit-s", "3", "--retry-backoff-s", "0",
    ]  # fmt: skip
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_bad_messages_and_failing_jobs_are_dead_lettered_with_a_reason_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "workload").mkdir()
    (workdir / "workload" / "train.py").write_text(JOB)
    (tmp_path / "store").mkdir()
    store_url = f"file://{tmp_path / 'store'}"
    queue = open_queue(create_local_queue(tmp_path / "q.db", max_receive_count=2))
    job = {"sweep_id": "s1", "workload": "toyjob", "params": {"lr": 0.5}, "args": []}
    queue.send("this is not json")
    queue.send(json.dumps({**job, "job_id": "a", "workload": "someone-else"}))
    queue.send(json.dumps({**job, "job_id": "b", "params": {"lr": [1, 2]}}))
    queue.send(json.dumps({**job, "job_id": "c", "args": ["--fail", "1"]}))
    queue.send(json.dumps({**job, "job_id": "good"}))

    proc = _worker(workdir, queue.url, store_url, "s1")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()

    store = open_store(store_url)
    archive_dead_letters(store, queue)
    [bad] = malformed(store)
    assert bad["body"] == "this is not json" and bad["reason"].startswith("not JSON")
    reasons = {job: end["reason"] for job, end in read_ledger(store, "s1").ended.items()}
    assert "unknown workload 'someone-else'" in reasons["a"]
    assert "bad args" in reasons["b"]
    assert "failed 2 time(s)" in reasons["c"] and "exit code 3" in reasons["c"]
    result = json.loads(store.get("sweeps/s1/good/output/metrics.json"))
    assert result["final_test_accuracy"] == pytest.approx(0.5)
    assert store.manifest("sweeps/s1/c") is None


def test_failed_job_comes_back_after_a_delay_and_leaves_no_partial_folder_on_the_node(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    (workdir / "workload").mkdir(parents=True)
    (workdir / "workload" / "train.py").write_text(JOB)
    (tmp_path / "store").mkdir()
    queue = open_queue(create_local_queue(tmp_path / "q.db", max_receive_count=5))
    job = {"sweep_id": "s1", "job_id": "c", "workload": "toyjob", "params": {}, "args": ["--fail", "1"]}
    queue.send(json.dumps(job))

    proc = _worker(workdir, queue.url, f"file://{tmp_path / 'store'}", "s1", retry_backoff_s="60")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert out.decode().count(": start") == 1  # not five tries within a second: the next waits
    assert queue.receive(visibility_timeout_s=1) == [] and queue.dead_letters() == []
    assert list((workdir / "jobs").iterdir()) == []  # the failed try's folder is gone


def test_inventory_with_an_unknown_queue_url_is_refused_naming_the_key(local_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(Path(local_pool.inventory_path).read_text())
    for bad in ("queue.db", "sqlite://relative.db", "projects/p/topics/t", "ftp://host/q"):
        path = tmp_path / "inv.json"
        path.write_text(json.dumps({**data, "queue": bad}))
        with pytest.raises(ConfigError) as err:
            Inventory.load(path)
        assert "queue" in str(err.value) and bad in str(err.value) and "sqlite:///" in str(err.value)


def test_worker_whose_sweep_ended_hands_another_sweeps_job_back_and_exits(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    (workdir / "workload").mkdir(parents=True)
    (workdir / "workload" / "train.py").write_text(JOB)
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put("sweeps/s1/sweep.json", json.dumps({"jobs": [{"job_id": "only"}]}).encode())
    store.put("sweeps/s1/only/_lepton_manifest.json", b"{}")  # our one job is committed
    queue = open_queue(create_local_queue(tmp_path / "q.db"))
    theirs = {"sweep_id": "s2", "job_id": "x", "workload": "other", "params": {}, "args": []}
    queue.send(json.dumps(theirs))

    proc = _worker(workdir, queue.url, store.url, "s1", idle_exit_s="60")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"ours has ended; exiting" in out, out.decode()
    assert queue.dead_letters() == []
    [back] = queue.receive(visibility_timeout_s=5)
    assert json.loads(back.body) == theirs and back.receive_count == 2  # released once, not run


def test_sweep_with_unusable_store_fails_before_any_job(local_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inventory = Inventory.load(local_pool.inventory_path)
    queue = open_queue(inventory.queue or "")
    before = queue.receive(max_messages=10, visibility_timeout_s=1)
    workload = _workload(tmp_path)
    for url in ("ftp://nowhere/x", f"file://{tmp_path}/does-not-exist"):
        bad = inventory.model_copy(update={"store": url})
        with pytest.raises(ConfigError) as err:
            sweep.submit(bad, workload, {"lr": [0.1]})
        assert url in str(err.value)
    assert before == [] and queue.receive(max_messages=10, visibility_timeout_s=1) == []


@pytest.mark.slow
def test_sigkilled_worker_job_reappears_and_every_result_is_stored_exactly_once(
    local_pool_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(3)
    inventory = Inventory.load(pool.inventory_path)
    grid = sweep.parse_grid(["lr=0.1,0.2,0.3", "batch_size=64,128"])
    started = sweep.submit(
        inventory, _workload(tmp_path), grid, args=["--sleep", "3"], visibility_timeout_s=4, idle_exit_s=25
    )
    assert len(started.jobs) == 6 and set(started.workers) == {"node-0", "node-1", "node-2"}
    logs = {node: Path(d) / "worker.log" for node, d in started.workers.items()}

    # Kill the first worker seen running a job, with everything it started (its job dies with it).
    victim, killed_job = None, None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        for node, log in logs.items():
            text = log.read_text() if log.exists() else ""
            if ": start" in text:
                victim = node
                killed_job = text.split("job ", 1)[1].split(":", 1)[0]
                break
        time.sleep(0.2)
    assert victim is not None, "no worker started a job"
    pid = int((Path(started.workers[victim]) / "worker.pid").read_text())
    os.killpg(pid, signal.SIGKILL)

    store, queue = open_store(started.store), open_queue(started.queue)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        rows = sweep.status(store, queue, started.sweep_id)
        if all(r.state == "done" for r in rows):
            break
        time.sleep(1)
    assert [r.state for r in rows] == ["done"] * 6, rows
    redone = next(r for r in rows if r.job_id == killed_job)
    assert redone.node != victim  # another node finished it
    done_lines = [line for log in logs.values() for line in log.read_text().splitlines() if ": done" in line]
    assert sorted(line.split("job ")[1].split(":")[0] for line in done_lines) == sorted(
        r.job_id for r in rows
    )
    info = json.loads(store.get(f"sweeps/{started.sweep_id}/{killed_job}/job.json"))
    assert info["receive_count"] >= 2
    best = sweep.summary(rows)
    assert [s["params"]["lr"] for s in best][:2] == [0.1, 0.1] and best[0]["mean"] == pytest.approx(0.9)
    assert queue.dead_letters() == []


def test_sweep_workers_and_their_jobs_get_the_clusters_region(local_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The worker's store and queue clients need it as much as a run's (issue 15, item 8)."""
    pool = Inventory.load(local_pool.inventory_path)
    inventory = pool.model_copy(update={"cloud": "aws", "region": "eu-west-1", "nodes": pool.nodes[:1]})
    wl = tmp_path / "regionjob"
    wl.mkdir()
    (wl / "train.py").write_text(
        "import json, os\n"
        "with open(os.path.join(os.environ['LEPTON_OUTPUT_DIR'], 'metrics.json'), 'w') as f:\n"
        "    json.dump({'region': os.environ.get('AWS_REGION'), 'default': os.environ.get('AWS_DEFAULT_REGION')}, f)\n"
    )
    started = sweep.submit(
        inventory, wl, sweep.parse_grid(["lr=0.1"]), sweep_id="sweep-region", idle_exit_s=5
    )
    store, queue = open_store(started.store), open_queue(started.queue)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sweep.status(store, queue, started.sweep_id)[0].state != "done":
        time.sleep(0.5)
    (row,) = sweep.status(store, queue, started.sweep_id)
    assert row.state == "done"
    got = json.loads(store.get(f"sweeps/{started.sweep_id}/{row.job_id}/output/metrics.json"))
    assert got == {"region": "eu-west-1", "default": "eu-west-1"}
    # Its worker leaves once idle; until then it would take (and dead-letter) the next test's messages.
    pid = int((Path(started.workers[inventory.nodes[0].name]) / "worker.pid").read_text())
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the sweep's worker did not exit once idle"
        time.sleep(0.2)


CLI = [sys.executable, "-m", "lepton_infra.cli"]


def test_sweep_cli_runs_the_grid_and_reports_best_first(local_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workload = _workload(tmp_path)
    inv = str(local_pool.inventory_path)
    open_queue(Inventory.load(local_pool.inventory_path).queue or "").send("garbage, not a job")
    done = subprocess.run(
        [*CLI, "sweep", str(workload), "-i", inv, "--grid", "lr=0.3,0.1", "--sweep-id", "cli-sweep-1",
         "--visibility-timeout", "20", "--", "--sleep", "0"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 job(s) queued" in done.stdout and "summary by configuration" in done.stdout
    assert done.stdout.index("lr=0.1") < done.stdout.rindex("lr=0.3")  # best first in the summary
    assert (tmp_path / "runs" / "sweeps" / "cli-sweep-1" / "sweep.png").is_file()

    status = subprocess.run(
        [*CLI, "sweep", "status", "cli-sweep-1", "-i", inv, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [j["state"] for j in report["jobs"]] == ["done", "done"]
    assert report["summary"][0]["params"] == {"lr": 0.1}
    assert [m["body"] for m in report["malformed"]] == ["garbage, not a job"]
    assert report["malformed"][0]["reason"].startswith("not JSON")


def test_sweep_cli_with_unknown_store_scheme_exits_2_naming_the_url(local_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = Inventory.load(local_pool.inventory_path).model_copy(update={"store": "s4://bucket/x"})
    path = tmp_path / "inv.json"
    path.write_text(bad.model_dump_json())
    done = subprocess.run(
        [*CLI, "sweep", str(_workload(tmp_path)), "-i", str(path), "--grid", "lr=0.1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "s4://bucket/x" in done.stderr


def test_second_sweep_on_a_busy_queue_is_refused_naming_the_first(local_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put("sweeps/first/sweep.json", json.dumps({"jobs": [{"job_id": "c000-r0"}]}).encode())
    inventory = Inventory.load(local_pool.inventory_path).model_copy(
        update={"store": store.url, "queue": create_local_queue(tmp_path / "q.db")}
    )
    with pytest.raises(ConfigError, match="sweep\\(s\\) first still have unfinished jobs"):
        sweep.submit(inventory, _workload(tmp_path), {"lr": [0.1]})
    assert open_queue(inventory.queue or "").receive(wait_s=0) == []


def _cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "sweep", *argv], capture_output=True, text=True, timeout=timeout)


def _kill_workers(started: sweep.Sweep) -> None:
    for d in started.workers.values():
        try:
            os.killpg(int((Path(d) / "worker.pid").read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_sweep_whose_workers_all_died_says_so_then_resumes_and_a_cancelled_one_frees_the_queue(
    local_pool, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    inventory = Inventory.load(local_pool.inventory_path)
    inv = str(local_pool.inventory_path)
    go = tmp_path / "go"
    fast = sweep.WorkerSettings(visibility_timeout_s=4, idle_exit_s=30, heartbeat_s=1, retry_backoff_s=0)
    workload = _workload(tmp_path)
    started = sweep.submit(
        inventory, workload, {"lr": [0.1, 0.2]}, args=["--wait-for", str(go)], settings=fast
    )
    logs = [Path(d) / "worker.log" for d in started.workers.values()]
    deadline = time.monotonic() + 60
    while sum(log.read_text().count(": start") for log in logs if log.exists()) < 2:
        assert time.monotonic() < deadline, "the workers never started both jobs"
        time.sleep(0.2)
    _kill_workers(started)  # every worker dies, with its job

    stalled = _cli("status", started.sweep_id, "-i", inv, "--watch", timeout=90)
    assert stalled.returncode == 3, stalled.stdout + stalled.stderr
    [line] = [x for x in stalled.stderr.splitlines() if x.strip()]
    assert "no worker alive" in line and f"sweep resume {started.sweep_id}" in line

    go.write_text("")
    resumed = _cli("resume", started.sweep_id, "-i", inv, "--json", timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [j["state"] for j in json.loads(resumed.stdout)["jobs"]] == ["done", "done"]

    # A sweep that will never finish, cancelled: its record stays, its jobs end, the queue is free.
    second = sweep.submit(
        inventory, workload, {"lr": [0.3, 0.4, 0.5]},
        args=["--wait-for", str(tmp_path / "never")], settings=fast,
    )  # fmt: skip
    cancelled = _cli("cancel", second.sweep_id, "-i", inv)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    store, queue = open_store(second.store), open_queue(second.queue)
    assert [r.state for r in sweep.status(store, queue, second.sweep_id)] == ["cancelled"] * 3
    assert sweep.running_sweeps(store, queue) == []
    deadline = time.monotonic() + 60
    while not all("exiting" in (Path(d) / "worker.log").read_text() for d in second.workers.values()):
        assert time.monotonic() < deadline, "workers of the cancelled sweep kept going"
        time.sleep(0.5)


RESUMABLE = textwrap.dedent(
    """\
    import json, os, sys, time
    out = os.environ["LEPTON_OUTPUT_DIR"]
    ckpt = os.path.join(out, "ckpt.txt")
    start = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
    with open(ckpt + ".tmp", "w") as f:
        f.write(str(start + 1))
    os.replace(ckpt + ".tmp", ckpt)
    deadline = time.time() + 60
    while start == 0 and time.time() < deadline:  # the first run never gets further
        time.sleep(0.2)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"final_test_accuracy": 1.0, "resumed_at": start}, f)
    """
)


def test_requeued_sweep_job_starts_from_its_own_last_snapshot(tmp_path: Path) -> None:
    from lepton_infra.data.snapshots import latest_snapshot

    workdir = tmp_path / "w"
    (workdir / "workload").mkdir(parents=True)
    (workdir / "workload" / "train.py").write_text(RESUMABLE)
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put(sweep_key("s1"), json.dumps({"jobs": [{"job_id": "j"}]}).encode())
    queue = open_queue(create_local_queue(tmp_path / "q.db"))
    queue.send(json.dumps({"sweep_id": "s1", "job_id": "j", "workload": "toyjob", "params": {}, "args": []}))
    fast = {"visibility_timeout_s": "3", "snapshot_s": "0.5", "check_s": "0.5"}

    first = _worker(workdir, queue.url, store.url, "s1", **fast)
    deadline = time.monotonic() + 60
    while latest_snapshot(store, "sweeps/s1/j") is None:
        assert time.monotonic() < deadline and first.poll() is None, "no snapshot of the job's output"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the node is lost mid-job
    first.wait()

    second = _worker(workdir, queue.url, store.url, "s1", **fast)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out.decode()
    assert json.loads(store.get("sweeps/s1/j/output/metrics.json"))["resumed_at"] == 1
    assert json.loads(store.get("sweeps/s1/j/job.json"))["resumed_from"].startswith(
        "sweeps/s1/j/checkpoint/g"
    )
    assert store.list("sweeps/s1/j/checkpoint") == []  # the result holds output/: no second copy


OBJECTIVE = textwrap.dedent(
    """\
    import argparse, json, os, time
    p = argparse.ArgumentParser()
    p.add_argument("--x", type=float, required=True)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    # Every third trial diverges (whatever x the sampler chose): the pruner has something to stop.
    diverged = int(os.environ["LEPTON_JOB_ID"][1:]) % 3 == 2
    for step in range(a.steps):
        score = -((a.x - 2.0) ** 2) + 0.01 * step - (100.0 if diverged else 0.0)
        print("LEPTON_PROGRESS " + json.dumps({"step": step, "steps": a.steps, "score": score}), flush=True)
        time.sleep(0.4)
    with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "metrics.json"), "w") as f:
        json.dump({"score": score}, f)
    """
)


@pytest.mark.slow
def test_tpe_search_prunes_bad_trials_and_a_restarted_controller_continues_the_study(
    local_pool, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import optuna

    workload = tmp_path / "objective"
    workload.mkdir()
    (workload / "train.py").write_text(OBJECTIVE)
    inv, runs = str(local_pool.inventory_path), tmp_path / "runs"
    common = ["-i", inv, "--runs-dir", str(runs), "--metric", "score"]
    controller = subprocess.Popen(
        [*CLI, "sweep", str(workload), *common, "--search", "tpe", "--trials", "9", "--range", "x=-10.0:10.0",
         "--pruner", "median", "--seed", "7", "--sweep-id", "tpe-1", "--heartbeat", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    db = f"sqlite:///{runs / 'sweeps' / 'tpe-1' / 'optuna.db'}"
    store = open_store(Inventory.load(local_pool.inventory_path).store or "")
    deadline = time.monotonic() + 120
    while len(read_ledger(store, "tpe-1").done()) < 3:  # a few trials end, then the controller dies
        assert time.monotonic() < deadline and controller.poll() is None, controller.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.5)
    controller.kill()
    controller.wait()

    resumed = subprocess.run(
        [*CLI, "sweep", "resume", "tpe-1", *common, "--json"], capture_output=True, text=True, timeout=180
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = json.loads(resumed.stdout.strip().splitlines()[-1])
    states = [j["state"] for j in report["jobs"]]
    study = optuna.load_study(study_name="tpe-1", storage=db)
    told = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(states) == len(told) == 9  # one study across both controllers, each trial once
    assert set(states) <= {"done", "pruned"} and states.count("pruned") >= 1, report["jobs"]
    pruned = {f"t{t.number:04d}" for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert pruned == {j["job_id"] for j in report["jobs"] if j["state"] == "pruned"}
    best = report["summary"][0]
    assert best["params"] == study.best_params and best["mean"] == pytest.approx(study.best_value)

    table = subprocess.run(
        [*CLI, "sweep", "status", "tpe-1", *common], capture_output=True, text=True, timeout=120
    )
    assert table.returncode == 0, table.stderr
    assert "trials (score, best first)" in table.stdout and f"best: {best['config']}" in table.stdout
    assert (runs / "sweeps" / "tpe-1" / "sweep.png").is_file()


def test_search_options_are_checked_naming_the_bad_value() -> None:
    from lepton_infra.workload import sweep_search as ss

    assert ss.parse_ranges(["lr=1e-4:1e-1:log", "epochs=1:5"]) == {
        "lr": [1e-4, 0.1, True],
        "epochs": [1, 5, False],
    }
    for bad in (["lr=1:0"], ["lr=0:1:log"], ["lr=a:b"], ["lr=1"], ["lr=1:2:ln"]):
        with pytest.raises(ConfigError, match="--range"):
            ss.parse_ranges(bad)
    ok = ss.SearchSpec(kind="tpe", trials=4, ranges={"x": [0.0, 1.0, False]})
    ss.check_spec(ok)
    for bad_spec, word in (
        (ss.SearchSpec(kind="bayes", trials=4, ranges=ok.ranges), "--search 'bayes'"),
        (ss.SearchSpec(kind="tpe", trials=0, ranges=ok.ranges), "--trials"),
        (ss.SearchSpec(kind="tpe", trials=4, ranges=ok.ranges, pruner="hyperband"), "--pruner"),
        (ss.SearchSpec(kind="grid", trials=4, ranges=ok.ranges), "--search grid"),
        (ss.SearchSpec(kind="tpe", trials=4), "needs parameters"),
    ):
        with pytest.raises(ConfigError, match=word):
            ss.check_spec(bad_spec)


def test_search_steps_count_across_epochs_and_every_pruner_builds(tmp_path: Path) -> None:
    import optuna

    from lepton_infra.workload import sweep_search as ss

    # The cifar10 job's step restarts each epoch: a step must still grow, and match across trials.
    records = [{"epoch": 1, "steps": 100, "step": 50}, {"epoch": 2, "steps": 100, "step": 10}]
    assert [ss._step(r, i) for i, r in enumerate(records)] == [50, 110]
    assert [ss._step({"epoch": 3}, 0), ss._step({"loss": 1.0}, 4)] == [3, 4]
    kinds = {"median": optuna.pruners.MedianPruner, "halving": optuna.pruners.SuccessiveHalvingPruner,
             "none": optuna.pruners.NopPruner}  # fmt: skip
    for name, kind in kinds.items():
        spec = ss.SearchSpec(kind="tpe", trials=4, ranges={"x": [0.0, 1.0, False]}, pruner=name)
        assert isinstance(ss.open_study(spec, f"s-{name}", tmp_path / name).pruner, kind)


def test_grid_search_runs_each_combination_once_however_many_trials_asked(tmp_path: Path) -> None:
    from lepton_infra.workload.sweep_search import SearchController, SearchSpec

    workdir = tmp_path / "w"
    (workdir / "workload").mkdir(parents=True)
    (workdir / "workload" / "train.py").write_text(JOB)
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    queue = open_queue(create_local_queue(tmp_path / "q.db"))
    spec = SearchSpec(kind="grid", trials=10, choices={"lr": [0.1, 0.3]}, parallel=2, pruner="none")
    record = {"sweep_id": "g1", "workload": "toyjob", "args": [], "jobs": [], "search": spec.__dict__}
    store.put(sweep_key("g1"), json.dumps(record).encode())
    worker = _worker(workdir, queue.url, store.url, "g1", check_s="0.5", idle_exit_s="30")
    try:
        controller = SearchController(store, queue, "g1", tmp_path / "runs" / "g1", "final_test_accuracy")
        deadline = time.monotonic() + 60
        while not controller.step():
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.3)
    finally:
        worker.kill()
    rows = sweep.status(store, queue, "g1")
    assert sorted((r.params["lr"], r.state) for r in rows) == [(0.1, "done"), (0.3, "done")]
    assert controller.best() == {
        "trial": controller.best()["trial"],
        "value": pytest.approx(0.9),
        "params": {"lr": 0.1},
    }  # type: ignore[index]
    assert sweep.running_sweeps(store, queue) == []  # the search closed its record
