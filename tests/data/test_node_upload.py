"""The node-side uploader (shipped with jobs, no lepton_infra on the node) writes exactly what the
controller's store client reads: same checksums, manifest last, on every backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lepton_infra.data import NotCommitted, open_store
from lepton_infra.workload.remote import UPLOADER_SOURCE

# As the agent runs it: the whole bundle (node/upload/'s modules in one source) on the command line.
UPLOADER = ["-c", UPLOADER_SOURCE]


def _run_dir(root: Path) -> Path:
    (root / "output" / "ckpt").mkdir(parents=True)
    (root / "output" / "metrics.json").write_text('{"acc": 0.9}')
    (root / "output" / "ckpt" / "model.pt").write_bytes(os.urandom(100_000))
    (root / "logs").mkdir()
    (root / "logs" / "node.log").write_text("epoch 1\n")
    (root / "state.json").write_text('{"state": "succeeded"}')
    return root


def test_node_upload_is_read_back_verified_by_the_controller(store_url: str, tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    # file:// must work with the standard library alone: -I -S, no site-packages, no lepton_infra.
    flags = ["-I", "-S"] if store_url.startswith("file://") else []
    args = [
        f"output={run / 'output'}",
        f"logs={run / 'logs'}",
        f"state.json={run / 'state.json'}",
        "missing=/nope",
    ]
    done = subprocess.run(
        [sys.executable, *flags, *UPLOADER, store_url, "runs/r1/node-0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["files"] == 4 and answer["url"] == f"{store_url}/runs/r1/node-0"

    dest = tmp_path / "back"
    manifest = open_store(store_url).download_dir("runs/r1/node-0", dest)
    assert sorted(manifest["files"]) == [
        "logs/node.log",
        "output/ckpt/model.pt",
        "output/metrics.json",
        "state.json",
    ]  # type: ignore[arg-type]
    assert (dest / "output" / "ckpt" / "model.pt").read_bytes() == (
        run / "output" / "ckpt" / "model.pt"
    ).read_bytes()
    assert (dest / "state.json").read_text() == '{"state": "succeeded"}'


def test_node_upload_to_a_missing_store_dir_fails_and_commits_nothing(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run")
    url = f"file://{tmp_path / 'nostore'}"
    done = subprocess.run(
        [sys.executable, "-I", "-S", *UPLOADER, url, "runs/r1/node-0", f"output={run / 'output'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "does not exist" in done.stdout + done.stderr
    (tmp_path / "nostore").mkdir()
    with pytest.raises(NotCommitted):
        open_store(url).download_dir("runs/r1/node-0", tmp_path / "back")


def _upload(store_url: str, *argv: str) -> None:
    flags = ["-I", "-S"] if store_url.startswith("file://") else []
    done = subprocess.run(
        [sys.executable, *flags, *UPLOADER, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_snapshots_keep_two_generations_and_the_final_upload_keeps_no_second_copy(
    store_url: str, tmp_path: Path
) -> None:
    from lepton_infra.data.snapshots import latest_snapshot

    run = _run_dir(tmp_path / "run")
    store = open_store(store_url)
    for epoch in range(3):
        (run / "output" / "metrics.json").write_text(json.dumps({"epoch": epoch}))
        _upload(store_url, "--snapshot", store_url, "runs/r1/node-0/checkpoint", f"output={run / 'output'}")
        latest = latest_snapshot(store, "runs/r1/node-0")
        assert latest is not None
        assert json.loads(store.get(f"{latest}/output/metrics.json")) == {"epoch": epoch}
    generations = {
        o.key.split("/")[4] for o in store.list("runs/r1/node-0/checkpoint") if o.key.count("/") > 4
    }
    assert len(generations) == 2  # the last one and the one it replaced; older ones are gone

    _upload(store_url, "--drop-snapshots", store_url, "runs/r1/node-0", f"output={run / 'output'}")
    assert store.manifest("runs/r1/node-0") is not None
    assert store.list("runs/r1/node-0/checkpoint") == []  # one copy of output/, not two
