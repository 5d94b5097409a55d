"""Nodes that lie, long runs, links that stall (issue 21, README "Reliability"), on real sshd
nodes: what a node sends back is untrusted, idle and sleeping controllers keep their runs, and a
slow or stalled link (tests/e2e/linkproxy.py, a user-space proxy) loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_misbehaving_jobs import REPO, cli

from lepton_infra.inventory import Inventory

# --------------------------------------------------------------------------- class 4: untrusted

# Outputs no controller should take whole: a sparse file of a terabyte, more files than the
# limit, links leaving the run's folder, names with newlines and terminal escapes.
_HOSTILE_RESULTS_JOB = r"""
import os
out = os.environ["LEPTON_OUTPUT_DIR"]
with open(os.path.join(out, "huge.sparse"), "wb") as f:
    f.truncate(1 << 40)
for i in range(150):
    with open(os.path.join(out, f"part-{i:03d}.txt"), "w") as f:
        f.write(str(i))
os.symlink("/etc/passwd", os.path.join(out, "passwd"))
os.symlink("../../../..", os.path.join(out, "up"))
with open(os.path.join(out, "evil\nname\x1b[31m.txt"), "w") as f:
    f.write("x")
"""


@pytest.mark.slow
def test_what_a_node_sends_back_is_limited_kept_inside_the_run_folder_and_skips_are_said(
    pool: Inventory, make_workload, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    inventory = tmp_path / "inventory.json"
    pool.model_copy(update={"nodes": pool.nodes[:1], "store": None}).save(inventory)
    runs = tmp_path / "runs"
    common = ["--inventory", str(inventory), "--runs-dir", str(runs)]
    workload = str(make_workload(job=_HOSTILE_RESULTS_JOB))
    done = cli("run", workload, "--run-id", "hostile-out", "--max-collect-files", "100", *common)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = " ".join(done.stdout.split())
    name = pool.nodes[0].name
    assert f"{name}: " in said and "file(s) not collected" in said and "huge.sparse" in said, said[-3000:]
    assert "over --max-collect-bytes 50.0 GB" in said and "over --max-collect-files 100" in said
    node_dir = runs / "hostile-out" / name
    record = json.loads((runs / "hostile-out" / "run.json").read_text())["nodes"][0]
    skipped = "\n".join(record["skipped"])
    assert record["skipped_count"] >= 50 and "huge.sparse" in skipped
    taken = [p for p in node_dir.rglob("*") if p.is_file() or p.is_symlink()]
    assert sum(1 for p in taken if p.parent.name in ("output", "logs")) <= 100
    assert not (node_dir / "output" / "huge.sparse").exists()
    for path in taken:  # nothing written, and no link leading, outside the run's folder
        assert path.resolve().is_relative_to(runs / "hostile-out"), path
    assert "\x1b" not in done.stdout  # the hostile name is shown escaped

    # Raised limits bring the rest, never the terabyte (over the default 50 GB).
    done = cli("collect", "hostile-out", "--max-collect-files", "1000", "--json", *common)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = json.loads(done.stdout)["nodes"][0]
    assert (node_dir / "output" / "part-149.txt").read_text() == "149"
    assert any("huge.sparse" in s for s in after["skipped"]) and after["bytes_collected"] < 1 << 20


# --------------------------------------------------------------------------- class 6: links

_COUNTING_JOB = r"""
import os, sys, time
opts = dict(a.split("=", 1) for a in sys.argv[1:])
name = os.environ["LEPTON_NODE_NAME"]
burst = int(opts.get("burst", "0"))  # lines of 128 bytes at once first: a backlog for the link
for i in range(burst):
    print(f"{name} burst {i:06d} " + "x" * 100, flush=False)
sys.stdout.flush()
for i in range(int(opts.get("lines", "60"))):
    print(f"{name} line {i}", flush=True)
    time.sleep(float(opts.get("delay", "0.1")))
"""


def _behind_proxy(pool2: Inventory, link) -> Inventory:  # type: ignore[no-untyped-def]
    """pool2 with its second node reached through `link` (a LinkProxy)."""
    slow = pool2.nodes[1].model_copy(update={"host": "127.0.0.1", "port": link.port})
    return pool2.model_copy(update={"nodes": [pool2.nodes[0], slow], "store": None})


@pytest.mark.slow
def test_a_slow_stalling_link_to_a_healthy_node_loses_no_line_and_never_makes_it_lost(
    pool2: Inventory, make_workload, recorder, tmp_path: Path, controller_thread
) -> None:  # type: ignore[no-untyped-def]
    from linkproxy import LinkProxy

    from lepton_infra.workload import run_job

    target = pool2.nodes[1]
    with LinkProxy((target.host, target.port), rate=32 << 10) as link:  # 256 KB of backlog: 8 s
        events = recorder()
        inventory = _behind_proxy(pool2, link)
        workload = make_workload(job=_COUNTING_JOB)
        thread, box = controller_thread(
            lambda: run_job(
                inventory, workload, ["lines=80", "burst=2000"], run_id="slow-link", runs_dir=tmp_path / "runs",
                events=events, heartbeat_timeout=10,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not events.lines(target.name) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(2):  # stalls shorter than the heartbeat limit, as a congested link has
            link.stall()
            time.sleep(3)
            link.resume()
            time.sleep(1)
        thread.join(timeout=120)
    result = box.get("result")
    assert result is not None, box
    assert result.status == "succeeded", [(n.name, n.state, n.detail) for n in result.nodes]
    lines = events.lines(target.name)
    assert lines[:2000] == [f"{target.name} burst {i:06d} " + "x" * 100 for i in range(2000)]
    assert lines[2000:] == [f"{target.name} line {i}" for i in range(80)]


@pytest.mark.slow
def test_a_link_that_stays_dead_makes_the_node_lost_within_the_heartbeat_limit(
    pool2: Inventory, make_workload, recorder, tmp_path: Path, controller_thread, leftover_processes
) -> None:  # type: ignore[no-untyped-def]
    from linkproxy import LinkProxy

    from lepton_infra.workload import cancel, run_job

    target = pool2.nodes[1]
    with LinkProxy((target.host, target.port)) as link:
        events = recorder()
        inventory = _behind_proxy(pool2, link)
        workload = make_workload(job=_COUNTING_JOB)
        thread, box = controller_thread(
            lambda: run_job(
                inventory, workload, ["lines=600"], run_id="dead-link", runs_dir=tmp_path / "runs",
                events=events, heartbeat_timeout=6,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not events.lines(target.name) and time.monotonic() < deadline:
            time.sleep(0.1)
        link.cut()
        thread.join(timeout=60)
        assert not thread.is_alive(), "a dead link was never detected"
    result = box.get("result")
    assert result is not None and result.status == "failed", box
    lost = result.node(target.name)
    assert lost.state == "lost" and "heartbeat limit 6 s" in lost.detail, lost
    assert result.node(pool2.nodes[0].name).state == "cancelled"
    cancel(pool2, "dead-link")  # the node itself is fine: stop its job directly
    assert leftover_processes("dead-link") == []


# --------------------------------------------------------------------------- class 5: long runs


def test_an_idle_connection_sends_keepalives_so_a_nat_keeps_it(
    pool2: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated time: the keepalive interval shortened to a second, then three idle seconds."""
    from linkproxy import LinkProxy

    from lepton_infra.workload import ssh
    from lepton_infra.workload.ssh import dial

    monkeypatch.setattr(dial, "KEEPALIVE_S", 1)
    node = pool2.nodes[0]
    with LinkProxy((node.host, node.port)) as link:
        inventory = pool2.model_copy(
            update={"nodes": [node.model_copy(update={"host": "127.0.0.1", "port": link.port})]}
        )
        (conn,) = ssh.connect_all(inventory, 10)
        try:
            before = link.bytes_to_node
            time.sleep(3.5)
            assert link.bytes_to_node > before, "an idle connection sent nothing"
            assert conn.run("echo still here").stdout.strip() == b"still here"
        finally:
            conn.close()


@pytest.mark.slow
def test_a_controller_that_sleeps_while_its_links_drop_carries_on_with_every_line(
    pool2: Inventory, make_workload, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A laptop's sleep, simulated: the controller frozen (SIGSTOP) while the NAT drops its
    connections, then woken; it reconnects by itself and the run ends with every line."""
    from linkproxy import LinkProxy

    node = pool2.nodes[1]
    with LinkProxy((node.host, node.port)) as link:
        inventory = tmp_path / "inventory.json"
        _behind_proxy(pool2, link).save(inventory)
        runs = tmp_path / "runs"
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        argv = [
            sys.executable,
            "-m",
            "lepton_infra.cli",
            "run",
            str(make_workload(job=_COUNTING_JOB)),
            "lines=60",
        ]
        argv += ["--run-id", "sleeper", "--inventory", str(inventory), "--runs-dir", str(runs)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            offsets = runs / "sleeper" / ".log-offsets.json"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if offsets.exists() and json.loads(offsets.read_text() or "{}").get(node.name, 0) > 0:
                    break
                time.sleep(0.1)
            proc.send_signal(signal.SIGSTOP)
            link.cut()
            time.sleep(4)
            link.resume()
            proc.send_signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    shown = [
        line.split("| ", 1)[1] for line in out.splitlines() if f"{node.name} |" in line and " line " in line
    ]
    assert shown == [f"{node.name} line {i}" for i in range(60)]
