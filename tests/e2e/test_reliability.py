"""Hostile input and faults on real sshd nodes (README "Reliability"): nothing crashes the
controller, nothing leaks, nothing is lost. One section per class of fault; each test is named
after what the user sees."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.local import MANIFEST_FILE, LocalPool, down, up
from lepton_infra.workload import jobspec
from lepton_infra.workload.ssh import connect_all


def controller_crashed(stderr: str) -> bool:
    """A traceback from the controller itself (frames in lepton_infra). A job's log streamed to the
    terminal may hold torchrun's own tracebacks (a peer's store closing at the exit barrier): those
    are the job's output, not a controller crash."""
    return "Traceback" in stderr and re.search(r"lepton_infra[/.]", stderr) is not None


REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `lepton-infra` in a subprocess: what a user sees, tracebacks included."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "lepton_infra.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _private_key_text(encrypted: bool = False) -> str:
    algorithm = (
        serialization.BestAvailableEncryption(b"correct horse") if encrypted else serialization.NoEncryption()
    )
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, algorithm)
        .decode()
    )


def _key_body_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("-----")]


def _with_key(inventory: Inventory, key_path: str, out: Path) -> Path:
    inventory.model_copy(update={"private_key_path": key_path}).save(out)
    return out


# --------------------------------------------------------------------------- class 7: local down


def test_local_down_on_a_folder_that_is_not_a_pool_deletes_nothing_and_exits_2(tmp_path: Path) -> None:
    folder = tmp_path / "cloud"
    folder.mkdir()
    cloud_inventory = folder / "inventory.json"
    cloud_inventory.write_text('{"version": 1, "cloud": "aws"}\n')
    done = cli("local", "down", "--state-dir", str(folder))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not a local pool" in done.stderr and "Traceback" not in done.stderr
    assert cloud_inventory.read_text() == '{"version": 1, "cloud": "aws"}\n'
    assert sorted(p.name for p in folder.iterdir()) == ["inventory.json"]  # not even a lock file


def test_local_down_removes_only_what_up_made(local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    pool: LocalPool = local_pool_factory(1)
    notes = pool.state_dir / "notes.txt"
    notes.write_text("mine")
    manifest = json.loads((pool.state_dir / MANIFEST_FILE).read_text())
    assert "inventory.json" in manifest["files"] and manifest["nodes"] == ["node-0"]
    down(pool.state_dir)
    assert notes.read_text() == "mine"
    assert not (pool.state_dir / "inventory.json").exists()
    assert down(pool.state_dir) == []  # idempotent: the manifest stays


def test_local_down_keeps_an_inventory_that_is_no_longer_the_pools(local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    pool: LocalPool = local_pool_factory(1)
    replaced = pool.inventory.model_copy(update={"cloud": "aws", "cluster": "prod"})
    replaced.save(pool.inventory_path)
    down(pool.state_dir)
    assert Inventory.load(pool.inventory_path).cluster == "prod"


# --------------------------------------------------------------------------- class 8: secrets


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        ("encrypted", 0o600, "passphrase"),
        ("garbage", 0o600, "not a private key"),
        ("public", 0o600, "is a public key"),
    ],
)
def test_a_bad_key_file_is_a_clear_error_about_the_file_at_once(
    local_pool: LocalPool, tmp_path: Path, content: str, mode: int, expected: str
) -> None:
    key = tmp_path / "id_bad"
    if content == "encrypted":
        key.write_text(_private_key_text(encrypted=True))
    elif content == "garbage":
        key.write_bytes(b"\x00\x01garbage\xff" * 10)
    else:
        key.write_text(local_pool.inventory.nodes[0].host_key + "\n")
    key.chmod(mode)
    inv = _with_key(local_pool.inventory, str(key), tmp_path / "inv.json")
    started = time.monotonic()
    done = cli("status", "some-run", "--inventory", str(inv))
    took = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr and str(key) in done.stderr
    assert "node-" not in done.stderr, "the key's problem must not be blamed on a node"
    assert "Traceback" not in done.stderr
    assert took < 8, f"took {took:.1f} s: the key must be refused before any retry loop"


def test_a_group_readable_key_gets_a_warning_and_still_works(
    local_pool: LocalPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "id_open"
    assert local_pool.inventory.private_key_path is not None
    shutil.copyfile(local_pool.inventory.private_key_path, key)
    key.chmod(0o644)
    inv = local_pool.inventory.model_copy(update={"private_key_path": str(key)})
    with caplog.at_level(logging.WARNING, logger="lepton_infra.ssh"):
        conns = connect_all(inv)
    try:
        assert all(c.run("true").exit_status == 0 for c in conns)
    finally:
        for c in conns:
            c.close()
    assert any("0644" in r.getMessage() and "chmod 600" in r.getMessage() for r in caplog.records)


def test_an_unreadable_key_file_is_a_clear_error(local_pool: LocalPool, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file: an unreadable key cannot be made here")
    key = tmp_path / "id_locked"
    key.write_text(_private_key_text())
    key.chmod(0)
    inv = _with_key(local_pool.inventory, str(key), tmp_path / "inv.json")
    done = cli("status", "some-run", "--inventory", str(inv))
    assert done.returncode == 2 and "cannot be read" in done.stderr


@pytest.mark.parametrize("where", ["private_key_path", "--inventory"])
def test_key_contents_given_as_a_path_are_never_echoed(
    local_pool: LocalPool, tmp_path: Path, where: str
) -> None:
    secret = _private_key_text()
    if where == "private_key_path":
        inv = _with_key(local_pool.inventory, secret, tmp_path / "inv.json")
        done = cli("status", "some-run", "--inventory", str(inv))
    else:
        done = cli("status", "some-run", "--inventory", secret)
    shown = done.stdout + done.stderr
    assert done.returncode == 2, shown
    assert "Traceback" not in shown
    for line in _key_body_lines(secret):
        assert line not in shown
    assert "not shown" in shown or "key material" in shown


# --------------------------------------------------------------------------- class 9: inventory checks


def _inventory_dict(local_pool: LocalPool) -> dict[str, object]:
    data: dict[str, object] = json.loads(local_pool.inventory.to_json())
    return data


def test_two_nodes_with_the_same_host_and_port_are_refused(local_pool: LocalPool, tmp_path: Path) -> None:
    data = _inventory_dict(local_pool)
    nodes = data["nodes"]
    assert isinstance(nodes, list)
    nodes[1] = {**nodes[1], "host": nodes[0]["host"], "port": nodes[0]["port"]}
    path = tmp_path / "inv.json"
    path.write_text(json.dumps(data))
    done = cli("status", "some-run", "--inventory", str(path))
    assert done.returncode == 2
    assert "node-0" in done.stderr and "node-1" in done.stderr and "host:port" in done.stderr


def test_a_host_key_that_does_not_parse_is_refused_naming_the_node(
    local_pool: LocalPool, tmp_path: Path
) -> None:
    data = _inventory_dict(local_pool)
    nodes = data["nodes"]
    assert isinstance(nodes, list)
    nodes[2] = {**nodes[2], "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBROKEN"}
    path = tmp_path / "inv.json"
    path.write_text(json.dumps(data))
    done = cli("status", "some-run", "--inventory", str(path))
    assert done.returncode == 2, done.stderr
    assert "node-2" in done.stderr and "not a valid ssh-ed25519 public key" in done.stderr


def test_nproc_per_node_beyond_the_gpus_or_a_sane_bound_is_refused(local_pool: LocalPool) -> None:
    cpu = local_pool.inventory
    with pytest.raises(ConfigError, match="has no GPUs"):
        jobspec.check_nproc(jobspec.MAX_CPU_NPROC + 1, cpu)
    gpu_nodes = [n.model_copy(update={"gpus": 4 if n.name != "node-1" else 2}) for n in cpu.nodes]
    gpu = cpu.model_copy(update={"nodes": gpu_nodes})
    assert jobspec.check_nproc(2, gpu) == 2
    with pytest.raises(ConfigError, match=r"node 'node-1' has GPUs \(2 x"):
        jobspec.check_nproc(3, gpu)


@pytest.mark.parametrize("bad", ["with space", "per%cent", "hash#tag", "quote'd"])
def test_a_state_dir_sshd_cannot_hold_is_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    target = tmp_path / bad / "state"
    done = cli("local", "up", "--nodes", "1", "--state-dir", str(target))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--state-dir" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_state_dir_under_a_file_or_full_of_other_things_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        up(1, tmp_path / "afile" / "state")
    other = tmp_path / "project"
    other.mkdir()
    (other / "inventory.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a local pool's folder"):
        up(1, other)
    assert sorted(p.name for p in other.iterdir()) == ["inventory.json"]


# --------------------------------------------------------------------------- class 2: malformed output

_MALFORMED_JOB = r"""
import os, sys
name = os.environ["LEPTON_NODE_NAME"]
print('LEPTON_PROGRESS {"epoch": "one", "epochs": 2, "step": 1, "steps": 2}', flush=True)
print('LEPTON_PROGRESS {"epoch": 1, "epochs": 2, "step": 1, "steps": 2, "loss": "low"}', flush=True)
print('LEPTON_PROGRESS {"epoch": 1e999, "epochs": 2}', flush=True)
print('LEPTON_PROGRESS {"epoch": 1, "epochs": 0, "step": 1, "steps": 0}', flush=True)
print('LEPTON_PROGRESS {', flush=True)
print('LEPTON_PROGRESS ' + '[' * 50000, flush=True)
sys.stdout.buffer.write(b"bytes \xff\xfe\x00 not utf-8\n")
print('LEPTON_PROGRESS {"epoch": 1, "epochs": 1, "step": 2, "steps": 2, "loss": 0.5}', flush=True)
print(f"still going on {name}", flush=True)
open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "ok"), "w").write("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("as_json", [False, True])
def test_malformed_progress_lines_are_plain_lines_and_the_run_completes(
    local_pool: LocalPool, make_workload, tmp_path: Path, as_json: bool
) -> None:  # type: ignore[no-untyped-def]
    runs = tmp_path / "runs"
    run_id = f"malformed-{int(as_json)}"
    args = ["run", str(make_workload(job=_MALFORMED_JOB)), "--inventory", str(local_pool.inventory_path)]
    args += ["--run-id", run_id, "--runs-dir", str(runs)] + (["--json"] if as_json else [])
    done = cli(*args, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not controller_crashed(done.stderr)
    record = json.loads((runs / run_id / "run.json").read_text())
    assert record["status"] == "succeeded"
    for node in local_pool.inventory.nodes:
        log = (runs / run_id / node.name / "logs" / "node.log").read_text(errors="replace")
        assert f"still going on {node.name}" in log and 'LEPTON_PROGRESS {"epoch": "one"' in log
        assert (runs / run_id / node.name / "output" / "ok").read_text() == "ok"
    if not as_json:
        assert 'LEPTON_PROGRESS {"epoch": "one"' in done.stdout  # shown as the plain line it is


# --------------------------------------------------------------------------- class 10: full disk

_FILL_JOB = r"""
import os, time
rank = int(os.environ["LEPTON_NODE_RANK"])
print(f"rank {rank} starting", flush=True)
if rank == 1:
    chunk = b"x" * (256 * 1024)
    with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "fill.bin"), "wb") as f:
        while True:
            f.write(chunk)
            f.flush()
for i in range(600):
    time.sleep(0.1)
"""


@pytest.mark.slow
def test_a_full_disk_on_a_node_is_reported_as_such_and_the_others_are_stopped(
    local_pool_factory, make_workload, tmp_path: Path, leftover_processes
) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.workload import run_job

    pool: LocalPool = local_pool_factory(2)
    small = pool.home("node-1") / ".lepton"
    small.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        runs = tmp_path / "runs"
        result = run_job(pool.inventory, make_workload(job=_FILL_JOB), [], run_id="full-1", runs_dir=runs)
        full = result.node("node-1")
        assert result.status == "failed"
        assert full.state == "failed"
        assert "no space left on device" in full.detail and ".lepton/runs/full-1" in full.detail
        assert result.node("node-0").state == "cancelled"
        node_state = json.loads((small / "runs" / "full-1" / "state.json").read_text())
        assert node_state["state"] == "failed" and "no space" in node_state["detail"]
        assert leftover_processes("full-1") == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# --------------------------------------------------------------------------- jump host (issue 8 item 6)

_FROM_INSIDE = r"""
import socket, sys, paramiko
src, host, port, user, key = sys.argv[1:6]
sock = socket.create_connection((host, int(port)), timeout=10, source_address=(src, 0))
t = paramiko.Transport(sock)
t.start_client(timeout=10)
try:
    t.auth_publickey(user, paramiko.PKey.from_path(key))
    print("accepted")
except paramiko.AuthenticationException:
    print("refused")
"""


@pytest.mark.slow
def test_a_job_runs_through_the_bastion_and_direct_connections_to_nodes_are_refused(
    tmp_path_factory: pytest.TempPathFactory, make_workload, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.errors import HostKeyMismatch, NodeError
    from lepton_infra.local import pool_processes, random_host_key_line
    from lepton_infra.local.sshd_config import find_sshd
    from lepton_infra.workload import run_job

    find_sshd()
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("a bastion pool needs root, ip and nsenter (its nodes live in a network namespace)")
    pool = LocalPool.start(2, tmp_path_factory.mktemp("bastion"), bastion=True)
    try:
        inv = pool.inventory
        assert inv.jump is not None and inv.jump.host not in {n.host for n in inv.nodes}
        # Straight to a node, as without a bastion: nothing answers (the nodes are private).
        with pytest.raises(NodeError, match="node-0|node-1"):
            connect_all(inv.model_copy(update={"jump": None}), connect_timeout=2)
        # From inside the private network but not through the bastion's sshd: the node refuses.
        node = inv.nodes[0]
        network = json.loads((pool.state_dir / "pool.json").read_text())["network"]
        inside = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{network['name']}",
                "--",
                sys.executable,
                "-c",
                _FROM_INSIDE,
                inv.jump.host,
                node.host,
                str(node.port),
                inv.user,
                str(inv.private_key_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert inside.stdout.strip() == "refused", inside.stderr[-2000:]
        # The bastion's host key is pinned like a node's.
        impostor = inv.jump.model_copy(update={"host_key": random_host_key_line()})
        with pytest.raises(HostKeyMismatch, match="jump"):
            connect_all(inv.model_copy(update={"jump": impostor}), connect_timeout=5)
        # Through the bastion: the whole job, results from both nodes.
        runs = tmp_path / "runs"
        result = run_job(inv, make_workload(), ["lines=3", "delay=0.01"], run_id="jump-1", runs_dir=runs)
        assert result.status == "succeeded", [(n.name, n.state, n.detail) for n in result.nodes]
        for n in inv.nodes:
            out = json.loads((runs / "jump-1" / n.name / "output" / "result.json").read_text())
            assert out["node"] == n.name and out["num_nodes"] == "2"
    finally:
        pool.down()
    assert not any(pool_processes(pool.state_dir).values())
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert network["name"] not in namespaces


# --------------------------------------------------------------------------- class 5: hung node


def _sshd_pids(pool: LocalPool, node: str) -> list[int]:
    from lepton_infra.local import pool_processes

    return [p.pid for p in pool_processes(pool.state_dir)[node] if p.reason in ("sshd", "sshd child")]


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_every_remote_operation_on_a_frozen_sshd_ends_at_its_deadline(local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    import signal

    from lepton_infra.errors import NodeError
    from lepton_infra.workload.ssh import NodeConnection

    pool: LocalPool = local_pool_factory(1)
    node = pool.inventory.nodes[0]
    conn = NodeConnection(pool.inventory, node, connect_timeout=3, op_timeout=1.5).connect()
    try:
        assert conn.read_file("/etc/hostname") is not None  # the SFTP channel is open
        frozen = _sshd_pids(pool, "node-0")
        _signal_all(frozen, signal.SIGSTOP)
        try:
            for call in (
                lambda: conn.read_file("/etc/hostname"),
                lambda: conn.run("true", timeout=1.5),
                lambda: conn.reconnect(),
            ):
                started = time.monotonic()
                with pytest.raises(NodeError, match="node-0"):
                    call()
                assert time.monotonic() - started < 20, "an operation outlived its deadline"
        finally:
            _signal_all(frozen, signal.SIGCONT)
        conn.reconnect()
        assert conn.run("echo back").stdout == b"back\n"
    finally:
        conn.close()


@pytest.mark.slow
def test_a_hung_node_is_lost_the_gang_stopped_and_the_others_collected(
    local_pool_factory, make_workload, tmp_path: Path, leftover_processes, controller_thread
) -> None:  # type: ignore[no-untyped-def]
    import signal

    from lepton_infra.workload import cancel, run_job

    pool: LocalPool = local_pool_factory(2)
    runs = tmp_path / "runs"
    job = make_workload()
    thread, box = controller_thread(
        lambda: run_job(
            pool.inventory,
            job,
            ["lines=400", "delay=0.2"],
            run_id="hung-1",
            runs_dir=runs,
            heartbeat_timeout=6.0,  # not less: its half bounds node-0's reads on a loaded machine
        )
    )
    log = pool.home("node-1") / ".lepton" / "runs" / "hung-1" / "logs" / "node.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "line 2 of 400" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    frozen = _sshd_pids(pool, "node-1")
    _signal_all(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        thread.join(120)
        took = time.monotonic() - started
    finally:
        _signal_all(frozen, signal.SIGCONT)
    assert not thread.is_alive() and "error" not in box, box
    result = box["result"]
    assert result.status == "failed"  # type: ignore[attr-defined]
    lost = result.node("node-1")  # type: ignore[attr-defined]
    assert lost.state == "lost" and "no answer" in lost.detail
    assert result.node("node-0").state == "cancelled"  # type: ignore[attr-defined]
    assert "line 0 of 400 from node-0" in (runs / "hung-1" / "node-0" / "logs" / "node.log").read_text()
    assert took < 60, f"the controller took {took:.0f} s after the node hung"
    cancel(pool.inventory, "hung-1")  # the hung node's job, once its sshd answers again
    assert leftover_processes("hung-1") == []


# --------------------------------------------------------------------------- class 1: text is data

_MARKUP_JOB = r"""
import os, sys
print("[/x] [bold]boom[/] :smile: [link=http://x]y[/link] \x1b[31mred\x1b]0;title\x07", flush=True)
print("LEPTON_PROGRESS " + '{"epoch": 1, "epochs": 1, "step": 1, "steps": 1, "loss": 0.1, "note": "[/x]"}', flush=True)
open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "[bold]out[x].txt"), "w").write("ok")
"""


@pytest.mark.slow
def test_markup_in_paths_and_log_lines_is_printed_as_written_everywhere(
    local_pool: LocalPool, tmp_path: Path, make_workload
) -> None:  # type: ignore[no-untyped-def]
    workload = make_workload(job=_MARKUP_JOB)
    odd = tmp_path / "w [/x] [bold]"
    shutil.copytree(workload, odd)
    runs = tmp_path / "runs [/x]"
    inv = ["--inventory", str(local_pool.inventory_path)]
    for run_id, extra in (("markup-1", []), ("markup-2", ["--json"])):
        done = cli("run", str(odd), *inv, "--run-id", run_id, "--runs-dir", str(runs), *extra, timeout=300)
        shown = done.stdout + done.stderr
        assert done.returncode == 0, shown[-3000:]
        assert not controller_crashed(done.stderr) and "MarkupError" not in shown
        assert "\x1b[31m" not in done.stdout, "a job's terminal escape reached the terminal"
        if extra:
            assert json.loads(done.stdout)["status"] == "succeeded"
        else:
            assert "[/x] [bold]boom[/] :smile:" in done.stdout and "\\x1b[31mred" in done.stdout
            assert str(runs) in done.stdout.replace("\n", "")
        record = json.loads((runs / run_id / "run.json").read_text())
        assert record["status"] == "succeeded"
        assert all(
            (runs / run_id / n.name / "output" / "[bold]out[x].txt").exists()
            for n in local_pool.inventory.nodes
        )
    for command in (
        ["attach", "markup-1", "--runs-dir", str(runs)],
        ["logs", "markup-1"],
        ["status", "markup-1"],
    ):
        done = cli(*command, *inv, timeout=120)
        shown = done.stdout + done.stderr
        assert done.returncode == 0, shown[-3000:]
        assert not controller_crashed(done.stderr) and "\x1b[31m" not in done.stdout
    assert "[/x] [bold]boom[/]" in cli("logs", "markup-1", *inv).stdout


# --------------------------------------------------------------------------- class 11: log floods

_FLOOD_JOB = r"""
import os, sys
name, n = os.environ["LEPTON_NODE_NAME"], int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write(f"{name} flood {i}\n")
out.flush()
"""


@pytest.mark.slow
def test_a_log_flood_from_8_nodes_keeps_every_line(
    local_pool_factory, make_workload, recorder, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Correctness only (bench/logs.py measures the time, 16 nodes by default): every line of
    8 x 50,000 reaches the events in order and the collected files, and the live view (batched,
    summarising) keeps up. 8 nodes are 4 streams per core of this 2-core machine, concurrent enough;
    each further node mostly adds its torchrun start-up, not a new way to lose a line."""
    from lepton_infra.display import LiveView
    from lepton_infra.workload import run_job

    nodes, lines = 8, 50_000
    pool: LocalPool = local_pool_factory(nodes)
    events = recorder()
    runs = tmp_path / "runs"
    result = run_job(
        pool.inventory,
        make_workload(job=_FLOOD_JOB),
        [str(lines)],
        run_id="flood-1",
        runs_dir=runs,
        events=events,
    )
    assert result.status == "succeeded"
    for node in pool.inventory.nodes:
        # The job's own lines, in order; torchrun may add its own warnings (e.g. a peer's store
        # closing at the exit barrier), which are kept too but are not the job's output.
        got = [x for x in events.lines(node.name) if " flood " in x]
        assert got == [f"{node.name} flood {i}" for i in range(lines)]
        kept = (runs / "flood-1" / node.name / "logs" / "node.log").read_text().splitlines()
        assert [x for x in kept if " flood " in x] == got
    # The live view over the same lines: it prints some, says how many it did not, drops nothing silently.
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    view = LiveView(Console(file=out, width=200, markup=False, color_system=None))
    flood = [(node, text) for node, text in events.logs if " flood " in text]
    assert len(flood) == nodes * lines
    for node, text in flood:
        view.on_log(node, text)
    view.close()
    shown = out.getvalue().splitlines()
    printed = sum(1 for x in shown if " flood " in x)
    hidden = sum(int(x.split("... ")[1].split(" line")[0]) for x in shown if "not shown" in x)
    assert printed + hidden == nodes * lines


# --------------------------------------------------------------------------- class 6: cancel at every phase


@pytest.mark.slow
def test_cancel_while_shipping_stops_the_run_and_nothing_ever_starts(
    local_pool_factory,
    make_workload,
    tmp_path: Path,
    leftover_processes,
    monkeypatch: pytest.MonkeyPatch,
    controller_thread,
) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.workload import run_job, shipping

    pool: LocalPool = local_pool_factory(2)
    workload = make_workload({f"data/{i}.bin": os.urandom(2048) for i in range(200)})
    real_write_stream = shipping.write_stream
    started = threading.Event()

    class SlowLink:
        """A slow link: every write of the tar stream takes 0.2 s (the whole ship: minutes)."""

        def __init__(self, out) -> None:  # type: ignore[no-untyped-def]
            self.out = out

        def write(self, data: bytes) -> int:
            time.sleep(0.2)
            n = self.out.write(data)
            self.out.flush()  # on the wire at once, as on a slow link
            return n  # type: ignore[no-any-return]

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.out, name)

    def slow_write_stream(manifest, missing, agent_source, agent_digest, out, *extra):  # type: ignore[no-untyped-def]
        started.set()
        return real_write_stream(manifest, missing, agent_source, agent_digest, SlowLink(out), *extra)

    monkeypatch.setattr(shipping, "write_stream", slow_write_stream)
    runs = tmp_path / "runs"
    thread, box = controller_thread(
        lambda: run_job(pool.inventory, workload, ["lines=3"], run_id="ship-cancel", runs_dir=runs)
    )
    assert started.wait(60)
    assert json.loads((runs / "ship-cancel" / "run.json").read_text())["status"] == "shipping"
    status = cli("status", "ship-cancel", "--inventory", str(pool.inventory_path), "--json")
    assert status.returncode == 0 and {r["state"] for r in json.loads(status.stdout)["nodes"]} == {
        "preparing"
    }
    t_cancel = time.monotonic()
    done = cli("cancel", "ship-cancel", "--inventory", str(pool.inventory_path))
    assert done.returncode == 0, done.stdout + done.stderr
    thread.join(60)
    assert not thread.is_alive() and "error" not in box, box
    assert time.monotonic() - t_cancel < 25, "the controller kept shipping after the cancel"
    result = box["result"]
    assert result.status == "cancelled"  # type: ignore[attr-defined]
    assert json.loads((runs / "ship-cancel" / "run.json").read_text())["status"] == "cancelled"
    after = cli("status", "ship-cancel", "--inventory", str(pool.inventory_path), "--json")
    assert {r["state"] for r in json.loads(after.stdout)["nodes"]} == {"cancelled"}
    for node in pool.inventory.nodes:  # never launched: no job output, no spec
        run_dir = pool.home(node.name) / ".lepton" / "runs" / "ship-cancel"
        assert not (run_dir / "spec.json").exists() and not (run_dir / "output" / "result.json").exists()
    assert leftover_processes("ship-cancel") == []


@pytest.mark.slow
def test_cancel_while_connecting_stops_the_run_before_anything_reaches_the_nodes(
    local_pool: LocalPool, make_workload, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, controller_thread
) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.workload import run_job, run_status
    from lepton_infra.workload.group import NodeGroup

    real_connect = NodeGroup.connect
    dialling, reachable = threading.Event(), threading.Event()

    def slow_connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        """Nodes that take a while to answer (booting, a slow link): the run is still connecting."""
        dialling.set()
        reachable.wait(60)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(NodeGroup, "connect", slow_connect)
    runs = tmp_path / "runs"
    thread, box = controller_thread(
        lambda: run_job(
            local_pool.inventory, make_workload(), ["lines=3"], run_id="dial-cancel", runs_dir=runs
        )
    )
    assert dialling.wait(30)
    assert json.loads((runs / "dial-cancel" / "run.json").read_text())["status"] == "connecting"
    # The CLI in another process, as a user would: it finds the run through its record.
    done = cli(
        "cancel",
        "dial-cancel",
        "--inventory",
        str(local_pool.inventory_path),
        "--runs-dir",
        str(runs),
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {r["state"] for r in json.loads(done.stdout)["nodes"]} == {"cancelled"}
    reachable.set()
    thread.join(60)
    assert not thread.is_alive() and "error" not in box, box
    assert box["result"].status == "cancelled"  # type: ignore[attr-defined]
    assert json.loads((runs / "dial-cancel" / "run.json").read_text())["status"] == "cancelled"
    with pytest.raises(ConfigError, match="no run 'dial-cancel'"):
        run_status(local_pool.inventory, "dial-cancel")  # nothing of it ever reached a node


@pytest.mark.slow
def test_attach_to_a_run_whose_controller_died_before_the_launch_says_it_never_ran(
    local_pool: LocalPool, make_workload, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from lepton_infra.workload import attach, run_job, steps

    class ControllerKilled(BaseException):
        """What SIGKILL does to the controller, at the moment of the launch."""

    def killed(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ControllerKilled

    monkeypatch.setattr(steps, "launch", killed)
    runs = tmp_path / "runs"
    with pytest.raises(ControllerKilled):
        run_job(local_pool.inventory, make_workload(), ["lines=3"], run_id="never-launched", runs_dir=runs)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="'never-launched' was never launched"):
        attach(local_pool.inventory, "never-launched", runs_dir=runs)
    done = cli(
        "attach", "never-launched", "--inventory", str(local_pool.inventory_path), "--runs-dir", str(runs)
    )
    assert done.returncode == 2 and "never launched" in done.stderr, done.stdout + done.stderr
    assert not controller_crashed(done.stderr)


def test_a_sink_that_chokes_on_progress_gets_the_plain_line_and_an_endless_line_is_passed_on() -> None:
    from lepton_infra.workload import RunEvents
    from lepton_infra.workload.follow import deliver_safely
    from lepton_infra.workload.monitor import MAX_LINE_BYTES, LineSplitter, Progress

    class Choking(RunEvents):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def on_progress(self, node: str, progress: dict[str, object]) -> None:
            raise ZeroDivisionError("a renderer bug")

        def on_log(self, node: str, line: str) -> None:
            self.lines.append(line)

    sink = Choking()
    deliver_safely(Progress("node-0", {"step": 1, "steps": 0}), sink)
    assert sink.lines == ['LEPTON_PROGRESS {"step": 1, "steps": 0}']
    splitter = LineSplitter("node-0")
    events = [e for _ in range(3) for e in splitter.feed(b"x" * (MAX_LINE_BYTES // 2 + 1))]
    assert events and len(splitter.partial) <= MAX_LINE_BYTES


def test_run_refuses_nproc_beyond_the_bound_and_a_runs_dir_under_a_file_in_one_line(
    local_pool: LocalPool, make_workload, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    inv = ["--inventory", str(local_pool.inventory_path)]
    done = cli("run", str(make_workload()), *inv, "--nproc-per-node", "65", "--runs-dir", str(tmp_path / "r"))
    assert done.returncode == 2 and "has no GPUs" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()
    (tmp_path / "file").write_text("x")
    done = cli("run", str(make_workload()), *inv, "--runs-dir", str(tmp_path / "file" / "runs"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "error (bad input)" in done.stderr


@pytest.mark.slow
def test_local_up_bastion_from_the_cli_writes_a_jump_and_down_removes_the_network(tmp_path: Path) -> None:
    from lepton_infra.local.sshd_config import find_sshd

    find_sshd()
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("a bastion pool needs root, ip and nsenter (its nodes live in a network namespace)")
    state = tmp_path / "bastion-cli"
    up_ = cli("local", "up", "--nodes", "1", "--bastion", "--state-dir", str(state), "--json")
    try:
        assert up_.returncode == 0, up_.stderr
        inventory = json.loads(up_.stdout)
        assert inventory["jump"]["host"].startswith("10.231.")
        network = json.loads((state / "pool.json").read_text())["network"]["name"]
    finally:
        down_ = cli("local", "down", "--state-dir", str(state))
    assert down_.returncode == 0, down_.stderr
    assert network not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
