"""The same end-to-end sweep on every queue backend: the local SQLite file, SQS on moto, Pub/Sub on
Google's emulator (skipped with the reason where it is not installed) and Azure Queues on Azurite.

Real sweep workers (subprocesses, as on a node) take the jobs: one worker is SIGKILLed mid-job, one
job always fails, and one job's result was committed by a worker that died before acking it.
Exactly-once must hold: every job's result is stored once, the committed one is not run again,
the failing one is dead-lettered with its reason, and nothing is left on the queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lepton_infra.data import open_queue, open_store
from lepton_infra.data.sweep_ledger import job_prefix, sweep_key

JOB = """\
import argparse, json, os, time
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--fail", type=int, default=0)
p.add_argument("--wait-for", default="")
a = p.parse_args()
deadline = time.time() + 60
while a.wait_for and not os.path.exists(a.wait_for) and time.time() < deadline:
    time.sleep(0.1)
if a.fail:
    raise SystemExit(3)
with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "metrics.json"), "w") as f:
    json.dump({"final_test_accuracy": 1.0 - a.lr}, f)
"""


def _job(job_id: str, lr: float, *args: str) -> dict[str, object]:
    return {"sweep_id": "e2e", "job_id": job_id, "config": job_id, "workload": "toyjob",
            "params": {"lr": lr}, "args": list(args)}  # fmt: skip


def _worker(workdir: Path, queue: str, store: str, name: str, visibility: int) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "lepton_infra.data.sweep_worker", "--queue", queue, "--store", store,
        "--sweep-id", "e2e", "--workload", "toyjob", "--node", name, "--workdir", str(workdir),
        "--visibility-timeout-s", str(visibility), "--idle-exit-s", str(visibility + 20),
        "--retry-backoff-s", "0", "--heartbeat-s", "2", "--check-s", "1",
    ]  # fmt: skip
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "sqs", "pubsub", "azure"])
def test_sweep_on_every_queue_survives_a_killed_worker_and_stores_each_result_once(
    queue_of, tmp_path: Path, kind: str
) -> None:  # type: ignore[no-untyped-def]
    queue = open_queue(queue_of(kind))
    visibility = 10 if kind == "pubsub" else 3  # Pub/Sub's shortest ack deadline is 10 s
    workdir = tmp_path / "w"
    (workdir / "workload").mkdir(parents=True)
    (workdir / "workload" / "train.py").write_text(JOB)
    (tmp_path / "store").mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    go = tmp_path / "go"
    jobs = [_job("slow", 0.1, "--wait-for", str(go)), _job("ok", 0.2), _job("fail", 0.3, "--fail", "1"),
            _job("committed", 0.4)]  # fmt: skip
    store.put(sweep_key("e2e"), json.dumps({"sweep_id": "e2e", "jobs": jobs}).encode())
    # A worker that died between committing "committed" and acking its message left this behind.
    earlier = tmp_path / "earlier"
    (earlier / "output").mkdir(parents=True)
    (earlier / "job.json").write_text(json.dumps({"node": "earlier-worker"}))
    store.upload_dir(earlier, job_prefix("e2e", "committed"))
    for job in jobs:
        queue.send(json.dumps(job))

    first = _worker(workdir, queue.url, store.url, "first", visibility)
    deadline = time.monotonic() + 60
    while b"job slow: start" not in (workdir / "first.log").read_bytes():
        assert time.monotonic() < deadline and first.poll() is None, (workdir / "first.log").read_text()
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # mid-job, with its job
    first.wait()
    go.write_text("")
    second = _worker(workdir, queue.url, store.url, "second", visibility)
    try:
        second.wait(timeout=150)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    logs = (workdir / "first.log").read_text() + (workdir / "second.log").read_text()
    assert second.returncode == 0, logs

    from lepton_infra.workload import sweep

    rows = {r.job_id: r for r in sweep.status(store, queue, "e2e")}
    assert {j: r.state for j, r in rows.items()} == {
        "slow": "done", "ok": "done", "fail": "dead", "committed": "done",
    }, logs  # fmt: skip
    assert rows["slow"].node == "second" and rows["slow"].metric == pytest.approx(0.9)
    assert "exit code 3" in rows["fail"].detail
    done = [line.split("job ")[1].split(":")[0] for line in logs.splitlines() if ": done" in line]
    assert sorted(done) == ["ok", "slow"], logs  # each run to completion once; "committed" never ran
    assert "job committed: start" not in logs and "job committed: result already committed" in logs
    assert json.loads(store.get(f"{job_prefix('e2e', 'committed')}/job.json"))["node"] == "earlier-worker"
    assert queue.receive(max_messages=10, visibility_timeout_s=visibility, wait_s=1) == []
    assert queue.dead_letters() == []  # archived to the store by status

    # The CLI reads the same sweep through this backend's client, and nothing but its report and
    # the one line about the dead job reaches the terminal (no library warnings).
    inventory = tmp_path / "inv.json"
    inventory.write_text(json.dumps({
        "version": 1, "cluster": "c", "cloud": "local", "user": "u", "store": store.url, "queue": queue.url,
        "nodes": [{"name": "n", "host": "127.0.0.1", "private_ip": "127.0.0.1", "host_key": _host_key()}],
    }))  # fmt: skip
    cli = subprocess.run(
        [sys.executable, "-m", "lepton_infra.cli", "sweep", "status", "e2e", "-i", str(inventory), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 1, cli.stderr  # a job was dead-lettered
    assert [j["state"] for j in json.loads(cli.stdout)["jobs"]] == ["done", "done", "dead", "done"]
    assert cli.stderr.strip().splitlines() == ["error (job failed): sweep e2e: 1 job(s) dead-lettered"], (
        cli.stderr
    )


def _host_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
