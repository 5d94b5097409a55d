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
from lepton_infra.workload.node import upload as node_upload

UPLOADER = Path(node_upload.__file__)


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
        [sys.executable, *flags, str(UPLOADER), store_url, "runs/r1/node-0", *args],
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
        [sys.executable, "-I", "-S", str(UPLOADER), url, "runs/r1/node-0", f"output={run / 'output'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "does not exist" in done.stdout + done.stderr
    (tmp_path / "nostore").mkdir()
    with pytest.raises(NotCommitted):
        open_store(url).download_dir("runs/r1/node-0", tmp_path / "back")


def test_checkpoint_snapshots_keep_only_what_is_needed(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run snapshots output/ again and again: unchanged files are not sent again, files the
    job deleted (old checkpoints) leave the store, and `--drop` removes the snapshot once the
    final results are stored (README "Reliability", class 5)."""
    writes: list[str] = []
    real = node_upload.writer_for

    def counting(url: str):  # type: ignore[no-untyped-def]
        write, base = real(url)
        return (lambda key, *rest: (writes.append(key.rsplit("/", 1)[-1]), write(key, *rest))[1]), base

    monkeypatch.setattr(node_upload, "writer_for", counting)
    out = tmp_path / "output"
    out.mkdir()
    (out / "ckpt-1.pt").write_bytes(os.urandom(50_000))
    (out / "metrics.json").write_text('{"epoch": 1}')
    node_upload.upload(store_url, "runs/r1/n0/checkpoint", {"output": str(out)}, snapshot=True)
    (out / "ckpt-1.pt").unlink()
    (out / "ckpt-2.pt").write_bytes(os.urandom(50_000))
    writes.clear()
    node_upload.upload(store_url, "runs/r1/n0/checkpoint", {"output": str(out)}, snapshot=True)
    assert sorted(writes) == ["_lepton_manifest.json", "ckpt-2.pt"]  # metrics.json unchanged
    store = open_store(store_url)
    keys = sorted(o.key.rsplit("/", 1)[-1] for o in store.list("runs/r1/n0/checkpoint"))
    assert [k for k in keys if not k.startswith(".")] == [
        "_lepton_manifest.json",
        "ckpt-2.pt",
        "metrics.json",
    ]
    assert node_upload.main(["upload.py", store_url, "runs/r1/n0/checkpoint", "--drop"]) == 0
    assert store.manifest("runs/r1/n0/checkpoint") is None
    assert [
        o.key for o in store.list("runs/r1/n0/checkpoint") if not o.key.rsplit("/", 1)[-1].startswith(".")
    ] == []
