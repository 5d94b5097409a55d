"""Unit tests of content-hashed shipping: which files ship (.leptonignore and the always-skipped
folders), their hashes, and the node-side receiver that fills the cache and materialises the
workload (run in-process with a temporary HOME, exactly the code a node runs)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.workload.manifest import IgnoreRules, build_manifest, write_stream
from lepton_infra.workload.node import bootstrap
from lepton_infra.workload.runner import AGENT_DIGEST, AGENT_SOURCE


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_always_skips_git_pycache_runs_and_lepton_state(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "train.py": "x",
            ".git/config": "x",
            "pkg/__pycache__/m.cpython-311.pyc": "x",
            "pkg/m.py": "x",
            "runs/old/run.json": "x",
            ".lepton/local/inventory.json": "x",
            "pkg/runs/kept.py": "x",  # only the top-level runs/ is results
        },
    )
    assert sorted(build_manifest(tmp_path).files) == ["pkg/m.py", "pkg/runs/kept.py", "train.py"]


def test_leptonignore_patterns_follow_gitignore_rules(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            ".leptonignore": "# data stays home\n\n*.ckpt\n!keep.ckpt\ndata/\n/notes.txt\nsub/*.log\n",
            "train.py": "x",
            "a.ckpt": "x",
            "deep/b.ckpt": "x",
            "keep.ckpt": "x",
            "data/big.bin": "x",
            "deep/data/also.bin": "x",
            "notes.txt": "x",
            "deep/notes.txt": "x",
            "sub/x.log": "x",
            "other/x.log": "x",
        },
    )
    shipped = sorted(build_manifest(tmp_path).files)
    assert shipped == [".leptonignore", "deep/notes.txt", "keep.ckpt", "other/x.log", "train.py"]


def test_dir_only_pattern_does_not_match_a_file_of_that_name() -> None:
    rules = IgnoreRules(["build/"])
    assert rules.ignored("build", True)
    assert not rules.ignored("build", False)
    assert IgnoreRules(["**/cache"]).ignored("a/b/cache", True)


def test_manifest_records_hash_size_and_mode_and_dedups_identical_content(tmp_path: Path) -> None:
    _tree(tmp_path, {"train.py": "same", "copy.py": "same", "run.sh": "#!/bin/sh\n"})
    os.chmod(tmp_path / "run.sh", 0o755)
    manifest = build_manifest(tmp_path)
    entry = manifest.files["train.py"]
    assert entry.sha256 == hashlib.sha256(b"same").hexdigest() and entry.size == 4
    assert manifest.files["run.sh"].mode == 0o755
    assert len(manifest.blobs()) == 2  # train.py and copy.py ship once
    assert manifest.total_bytes == 4 + 4 + 10


def test_manifest_of_a_missing_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_manifest(tmp_path / "absent")


def test_symlink_loops_do_not_hang_the_walk(tmp_path: Path) -> None:
    _tree(tmp_path, {"train.py": "x", "d/f.py": "y"})
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")
    assert sorted(build_manifest(tmp_path).files) == ["d/f.py", "train.py"]


@pytest.fixture
def node_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "nodehome"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _ship_locally(workload: Path, run_id: str) -> tuple[dict, dict, int]:
    manifest = build_manifest(workload)
    blobs = {**manifest.blobs(), AGENT_DIGEST: len(AGENT_SOURCE)}
    answer = bootstrap.prepare({"run_id": run_id, "blobs": blobs})
    buf = io.BytesIO()
    sent = write_stream(manifest, answer.get("missing", []), AGENT_SOURCE, AGENT_DIGEST, buf)
    buf.seek(0)
    received = bootstrap.receive(answer["run_dir"], buf) if not answer["exists"] else {}
    return answer, received, sent


def test_receiver_materialises_the_workload_and_an_unchanged_file_is_never_sent_again(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('hi')\n", "lib/util.py": "X = 1\n"})
    first, received, sent = _ship_locally(workload, "run-1")
    assert sent == len("print('hi')\n") + len("X = 1\n")
    assert received["files"] == 2 and received["received"] == 3  # two files + the agent
    run_dir = Path(first["run_dir"])
    assert run_dir == node_home / ".lepton" / "runs" / "run-1"
    assert (run_dir / "workload" / "lib" / "util.py").read_text() == "X = 1\n"
    assert (run_dir / ".agent" / "agent.py").read_bytes() == AGENT_SOURCE

    second, _, sent = _ship_locally(workload, "run-2")
    assert second["missing"] == [] and sent == 0

    (workload / "lib" / "util.py").write_text("X = 2\n")
    third, _, sent = _ship_locally(workload, "run-3")
    assert sent == len("X = 2\n") and len(third["missing"]) == 1
    assert (Path(third["run_dir"]) / "workload" / "lib" / "util.py").read_text() == "X = 2\n"
    # the earlier run still has its own version
    assert (run_dir / "workload" / "lib" / "util.py").read_text() == "X = 1\n"


def test_a_run_id_can_be_reserved_only_once_per_node(tmp_path: Path, node_home: Path) -> None:
    assert bootstrap.prepare({"run_id": "same", "blobs": {}})["exists"] is False
    assert bootstrap.prepare({"run_id": "same", "blobs": {}})["exists"] is True


def test_receiver_refuses_a_corrupted_blob(tmp_path: Path, node_home: Path) -> None:
    import tarfile

    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        info = tarfile.TarInfo("blobs/" + hashlib.sha256(b"good").hexdigest())
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    buf.seek(0)
    with pytest.raises(ValueError, match="corrupted"):
        bootstrap.receive(str(run_dir), buf)
    assert not any(
        p.name.endswith(hashlib.sha256(b"good").hexdigest())
        for p in (node_home / ".lepton" / "cache").iterdir()
    )


def test_receiver_refuses_paths_outside_the_workload(tmp_path: Path, node_home: Path) -> None:
    import tarfile

    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        data = json.dumps(
            {"files": {"../../evil.py": [hashlib.sha256(b"").hexdigest(), 0o644]}, "agent": "x"}
        ).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    with pytest.raises(ValueError, match="unsafe path"):
        bootstrap.receive(str(run_dir), buf)


def test_rendezvous_port_probe_skips_a_port_in_use(node_home: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        answer = bootstrap.prepare(
            {"run_id": "p", "blobs": {}, "port_probe": {"addr": "127.0.0.1", "port": port}}
        )
    assert answer["port"] != port and port < answer["port"] < port + 64
