"""Checkpoint snapshots are atomic: one cut off mid-upload never spoils the last committed one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lepton_infra.data import open_store
from lepton_infra.data.snapshots import latest_snapshot
from lepton_infra.node.agent_results import Snapshots
from lepton_infra.workload.remote import UPLOADER_SOURCE

FILES = 300  # enough that an upload takes a while (every file is fsynced twice)


def _host_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _write_output(run_dir: Path, version: str) -> None:
    out = run_dir / "output"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(FILES):
        (out / f"f{i:03d}.txt").write_text(f"{version} {i}")
    newer = time.time() + (1 if version == "v2" else 0)
    for path in out.iterdir():
        os.utime(path, (newer, newer))


def _any_written(root: Path, version: str) -> bool:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.startswith("f") and Path(dirpath, name).read_text().startswith(version):
                return True
    return False


def test_snapshot_cut_off_mid_upload_leaves_the_last_good_one_for_collect(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    store_url = f"file://{root}"
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    spec = {
        "results": {"source": UPLOADER_SOURCE, "store": store_url, "prefix": "runs/r1/node-0"},
        "env": {"CHECKPOINT_UPLOAD_S": "0.001"},
    }
    snapshots = Snapshots(str(run_dir), spec)
    _write_output(run_dir, "v1")
    snapshots.tick()
    snapshots.stop()  # the first snapshot completes
    assert snapshots.proc is not None and snapshots.proc.returncode == 0

    _write_output(run_dir, "v2")
    snapshots.tick()  # the second one starts ... and the node is lost mid-upload
    assert snapshots.proc is not None
    deadline = time.monotonic() + 30
    while not _any_written(root / "runs", "v2"):
        assert snapshots.proc.poll() is None, "the upload finished before it could be cut off"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(snapshots.proc.pid, signal.SIGKILL)
    snapshots.proc.wait()

    # Collect with the node unreachable (nothing listens on port 1): it reads the store, and says so.
    node = {
        "name": "node-0",
        "host": "127.0.0.1",
        "private_ip": "127.0.0.1",
        "port": 1,
        "host_key": _host_key(),
    }
    inventory = {
        "version": 1,
        "cluster": "c",
        "cloud": "local",
        "user": "u",
        "store": store_url,
        "nodes": [node],
    }
    (tmp_path / "inv.json").write_text(json.dumps(inventory))
    done = subprocess.run(
        [sys.executable, "-m", "lepton_infra.cli", "collect", "r1", "-i", str(tmp_path / "inv.json"),
         "--runs-dir", str(tmp_path / "runs"), "--connect-timeout", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "node-0: read from the store" in done.stdout, done.stdout + done.stderr
    record = json.loads((tmp_path / "runs" / "r1" / "run.json").read_text())
    [node_record] = record["nodes"]
    assert node_record["state"] == "lost" and "checkpoint snapshot" in node_record["detail"]
    got = tmp_path / "runs" / "r1" / "node-0" / "output"
    assert sorted(p.read_text() for p in got.iterdir()) == sorted(f"v1 {i}" for i in range(FILES))
    assert latest_snapshot(open_store(store_url), "runs/r1/node-0") is not None
