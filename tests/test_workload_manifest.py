"""Unit tests of content-hashed shipping: which files ship (.leptonignore and the always-skipped
folders), their hashes, and the node-side receiver that fills the cache and materialises the
workload (run in-process with a temporary HOME, exactly the code a node runs)."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.node import bootstrap
from lepton_infra.workload.manifest import IgnoreRules, build_manifest
from lepton_infra.workload.remote import AGENT_DIGEST, AGENT_SOURCE
from lepton_infra.workload.ship_stream import write_blob, write_end, write_header, write_stream


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
    manifest = build_manifest(tmp_path)
    assert sorted(manifest.files) == ["d/f.py", "train.py"]
    assert manifest.links == {"d/loop": "."}  # inside the folder: ships as a link
    assert sorted(build_manifest(tmp_path, follow_links=True).files) == ["d/f.py", "train.py"]


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
    received = (
        bootstrap.receive(answer["run_dir"], buf, settle_in_background=False) if not answer["exists"] else {}
    )
    return answer, received, sent


def test_receiver_materialises_the_workload_and_an_unchanged_file_is_never_sent_again(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('hi')\n", "lib/util.py": "X = 1\n"})
    first, received, sent = _ship_locally(workload, "run-1")
    assert sent == len("print('hi')\n") + len("X = 1\n")
    assert received["files"] == 2 and received["received"] == 3  # two files + the agent
    assert received["reused"] is False
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


def _stream(node_manifest: dict, blobs: list[tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    write_header(buf, {"agent": AGENT_DIGEST, **node_manifest})
    for digest, data in blobs:
        write_blob(buf, digest, data)
    write_end(buf)
    buf.seek(0)
    return buf


def test_receiver_refuses_a_corrupted_blob(tmp_path: Path, node_home: Path) -> None:
    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    good = hashlib.sha256(b"good").hexdigest()
    buf = _stream({"files": {"f.txt": [good, 0o644]}}, [(good, b"bad!")])
    with pytest.raises(ValueError, match="corrupted"):
        bootstrap.receive(str(run_dir), buf, settle_in_background=False)
    assert not any(p.name.endswith(good) for p in (node_home / ".lepton" / "cache").iterdir())
    assert not (run_dir / "workload" / "f.txt").exists()


def test_receiver_refuses_a_stream_that_ends_inside_a_blob(node_home: Path) -> None:
    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    good = hashlib.sha256(b"good").hexdigest()
    data = _stream({"files": {"f.txt": [good, 0o644]}}, [(good, b"good")]).getvalue()
    with pytest.raises(ValueError, match="ended"):
        bootstrap.receive(str(run_dir), io.BytesIO(data[:-40]), settle_in_background=False)


def test_receiver_refuses_paths_outside_the_workload(tmp_path: Path, node_home: Path) -> None:
    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    buf = _stream({"files": {"../../evil.py": [hashlib.sha256(b"").hexdigest(), 0o644]}}, [])
    with pytest.raises(ValueError, match="unsafe path"):
        bootstrap.receive(str(run_dir), buf, settle_in_background=False)


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


# --------------------------------------------------------------------------- symlinks (issue 12, class 3)


@pytest.mark.parametrize("target", ["/etc/passwd", "/etc", "/nonexistent/secret"])
def test_a_symlink_leaving_the_folder_is_refused_naming_it(tmp_path: Path, target: str) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "x"})
    (workload / "sub").mkdir()
    (workload / "sub" / "key").symlink_to(target)
    with pytest.raises(ConfigError, match=r"'sub/key' points outside the workload folder .*--follow-links"):
        build_manifest(workload)


def test_a_symlink_to_the_parent_folder_is_refused(tmp_path: Path) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "x"})
    (tmp_path / "secret.pem").write_text("KEY")
    (workload / "up").symlink_to("..")
    with pytest.raises(ConfigError, match="'up' points outside"):
        build_manifest(workload)


def test_follow_links_ships_what_an_outside_link_points_to(tmp_path: Path) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "x"})
    _tree(tmp_path / "shared", {"lib.py": "L = 1\n", "deep/more.py": "M\n"})
    (workload / "data.py").symlink_to(tmp_path / "shared" / "lib.py")
    (workload / "shared").symlink_to(tmp_path / "shared")
    manifest = build_manifest(workload, follow_links=True)
    assert sorted(manifest.files) == ["data.py", "shared/deep/more.py", "shared/lib.py", "train.py"]
    assert manifest.files["data.py"].sha256 == hashlib.sha256(b"L = 1\n").hexdigest()
    assert manifest.links == {}


def test_an_ignored_outside_link_is_simply_not_shipped(tmp_path: Path) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "x", ".leptonignore": ".venv/\n"})
    (workload / ".venv").symlink_to("/usr")
    assert sorted(build_manifest(workload).files) == [".leptonignore", "train.py"]


def test_links_inside_the_folder_ship_as_relative_links_and_arrive_as_links(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print(1)\n", "data/a.txt": "A\n"})
    (workload / "latest.txt").symlink_to("data/a.txt")
    (workload / "data" / "abs.txt").symlink_to(workload / "data" / "a.txt")  # absolute, inside
    (workload / "alias").symlink_to("data")  # a directory
    (workload / "data" / "dangling").symlink_to("missing.txt")  # inside, dangling: still a link
    manifest = build_manifest(workload)
    assert manifest.links == {
        "alias": "data",
        "data/abs.txt": "a.txt",
        "data/dangling": "missing.txt",
        "latest.txt": "data/a.txt",
    }
    assert sorted(manifest.files) == ["data/a.txt", "train.py"]  # nothing twice through the link
    answer, _, _ = _ship_locally(workload, "links-1")
    shipped = Path(answer["run_dir"]) / "workload"
    assert os.readlink(shipped / "data" / "abs.txt") == "a.txt"
    assert (shipped / "alias").is_symlink() and (shipped / "alias" / "a.txt").read_text() == "A\n"
    assert (shipped / "latest.txt").read_text() == "A\n"


@pytest.mark.parametrize(
    ("rel", "target"), [("x", "/etc/passwd"), ("x", ".."), ("a/x", "../.."), ("a/x", "b/../../..")]
)
def test_receiver_refuses_a_link_that_would_leave_the_tree(node_home: Path, rel: str, target: str) -> None:
    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    with pytest.raises(ValueError, match="unsafe link"):
        bootstrap.receive(
            str(run_dir), _stream({"files": {}, "links": {rel: target}}, []), settle_in_background=False
        )


# --------------------------------------------------------------------------- the node cache (class 4)


def _cache_file(node_home: Path, text: str) -> Path:
    return node_home / ".lepton" / "cache" / hashlib.sha256(text.encode()).hexdigest()


def test_a_job_editing_its_files_cannot_reach_the_cache_and_the_next_run_gets_the_original(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('hi')\n", "cfg.txt": "lr=1\n"})
    first, _, _ = _ship_locally(workload, "edit-1")
    shipped = Path(first["run_dir"]) / "workload" / "cfg.txt"
    cached = _cache_file(node_home, "lr=1\n")
    assert cached.is_file()
    assert os.stat(shipped).st_ino != os.stat(cached).st_ino  # its own file, not the cache's
    # What a careless job does, even one that makes the file writable first: edit in place.
    os.chmod(shipped, 0o644)
    with open(shipped, "r+") as f:
        f.write("lr=9")
    assert cached.read_text() == "lr=1\n"
    second, _, sent = _ship_locally(workload, "edit-2")
    assert sent == 0
    assert (Path(second["run_dir"]) / "workload" / "cfg.txt").read_text() == "lr=1\n"


def test_the_cache_checks_content_by_hash_not_size(tmp_path: Path, node_home: Path) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('hi')\n", "cfg.txt": "lr=1\n"})
    _ship_locally(workload, "hash-1")
    cached = _cache_file(node_home, "lr=1\n")
    os.chmod(cached, 0o644)
    cached.write_text("lr=9\n")  # same size, different content, written behind our back
    for spare in (node_home / ".lepton" / "trees").glob("*"):
        if spare.is_dir():  # no spare tree either, so the cache itself must be checked
            import shutil

            shutil.rmtree(spare)
    second, _, sent = _ship_locally(workload, "hash-2")
    assert second["missing"] == [hashlib.sha256(b"lr=1\n").hexdigest()] and sent == len("lr=1\n")
    assert (Path(second["run_dir"]) / "workload" / "cfg.txt").read_text() == "lr=1\n"
    assert cached.read_text() == "lr=1\n" and not os.stat(cached).st_mode & 0o222


def test_an_unchanged_tree_reuses_the_spare_tree_built_after_the_first_run(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('hi')\n", "a/b.txt": "B\n", "a/c.txt": "B\n"})
    (workload / "link").symlink_to("a/b.txt")
    _, first, _ = _ship_locally(workload, "spare-1")
    assert first["reused"] is False
    _, second, _ = _ship_locally(workload, "spare-2")
    assert second["reused"] is True and second["tree"] == first["tree"]
    shipped = node_home / ".lepton" / "runs" / "spare-2" / "workload"
    assert (shipped / "a" / "c.txt").read_text() == "B\n" and (shipped / "link").read_text() == "B\n"
    # The spare went to that run; the next one gets a fresh spare, never the same files.
    _, third, _ = _ship_locally(workload, "spare-3")
    assert third["reused"] is True
    third_file = node_home / ".lepton" / "runs" / "spare-3" / "workload" / "a" / "b.txt"
    assert os.stat(third_file).st_ino != os.stat(shipped / "a" / "b.txt").st_ino


def test_prepare_of_an_unchanged_tree_writes_it_at_once_and_needs_no_receive(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('hi')\n", "a/b.txt": "B\n"})
    (workload / "link").symlink_to("a/b.txt")
    _ship_locally(workload, "pre-1")
    manifest = build_manifest(workload)
    request = {
        "run_id": "pre-2",
        "blobs": {**manifest.blobs(), AGENT_DIGEST: len(AGENT_SOURCE)},
        "tree": {**manifest.node_view(), "agent": AGENT_DIGEST},
    }
    answer = bootstrap.prepare(request, settle_in_background=False)
    assert answer["missing"] == [] and answer["shipped"]["reused"] is True
    run_dir = Path(answer["run_dir"])
    assert (run_dir / "workload" / "link").read_text() == "B\n"
    assert (run_dir / ".agent" / "agent.py").read_bytes() == AGENT_SOURCE
    (workload / "a" / "b.txt").write_text("changed\n")  # now something is missing: no shortcut
    changed = build_manifest(workload)
    request = {
        "run_id": "pre-3",
        "blobs": {**changed.blobs(), AGENT_DIGEST: len(AGENT_SOURCE)},
        "tree": {**changed.node_view(), "agent": AGENT_DIGEST},
    }
    answer = bootstrap.prepare(request, settle_in_background=False)
    assert len(answer["missing"]) == 1 and answer["shipped"] is None
    assert not (Path(answer["run_dir"]) / "workload").exists()


def test_a_tampered_spare_tree_is_not_used(tmp_path: Path, node_home: Path) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('hi')\n", "cfg.txt": "lr=1\n"})
    _, first, _ = _ship_locally(workload, "tamper-1")
    spare_cfg = node_home / ".lepton" / "trees" / first["tree"] / "cfg.txt"
    spare_cfg.write_text("lr=9\n")
    answer, second, _ = _ship_locally(workload, "tamper-2")
    assert second["reused"] is False
    assert (Path(answer["run_dir"]) / "workload" / "cfg.txt").read_text() == "lr=1\n"


def test_the_controller_rehashes_a_file_whose_stat_changed_even_with_its_old_mtime(
    tmp_path: Path,
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "x", "cfg.txt": "lr=1\n"})
    old = os.stat(workload / "cfg.txt").st_mtime_ns - 10 * 10**9
    os.utime(workload / "cfg.txt", ns=(old, old))  # not "racy": old enough to be remembered
    cache_dir = tmp_path / "hash-cache"
    first = build_manifest(workload, hash_cache_dir=cache_dir)
    assert len(list(cache_dir.iterdir())) == 1
    remembered = os.stat(workload / "cfg.txt").st_ctime_ns
    (workload / "cfg.txt").write_text("lr=9\n")
    os.utime(workload / "cfg.txt", ns=(old, old))  # same size, same mtime: only ctime tells
    while os.stat(workload / "cfg.txt").st_ctime_ns == remembered:  # a kernel with coarse timestamps
        time.sleep(0.005)
        os.utime(workload / "cfg.txt", ns=(old, old))
    second = build_manifest(workload, hash_cache_dir=cache_dir)
    assert second.files["cfg.txt"].sha256 == hashlib.sha256(b"lr=9\n").hexdigest()
    assert second.files["cfg.txt"].sha256 != first.files["cfg.txt"].sha256


# --------------------------------------------------------------------------- on real sshd nodes

EDITING_JOB = """\
import os
import time
print("cfg:", open("cfg.txt").read().strip(), "link:", os.readlink("latest"), flush=True)
os.chmod("cfg.txt", 0o644)
with open("cfg.txt", "r+") as f:  # a job that edits a shipped file in place
    f.write("lr=9")
with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "seen.txt"), "w") as f:
    f.write(open("latest").read())
"""


def test_on_real_nodes_links_stay_links_outside_links_are_refused_and_edits_never_leak(
    local_pool: Any, tmp_path: Path
) -> None:
    from lepton_infra.workload import run_job

    inventory = local_pool.inventory
    workload = _tree(
        tmp_path / "w", {"train.py": EDITING_JOB, "cfg.txt": f"lr=1 {os.urandom(8).hex()}\n", "d/x": "X"}
    )
    (workload / "latest").symlink_to("d/x")
    runs = tmp_path / "runs"
    (workload / "key").symlink_to(inventory.private_key_path or "/etc/passwd")
    with pytest.raises(ConfigError, match="'key' points outside the workload folder"):
        run_job(inventory, workload, run_id="links-0", runs_dir=runs)
    assert not (runs / "links-0").exists()
    (workload / "key").unlink()

    cfg = (workload / "cfg.txt").read_text().strip()
    for run_id in ("edit-a", "edit-b"):  # the second run of the unchanged tree must not see lr=9
        result = run_job(inventory, workload, run_id=run_id, runs_dir=runs)
        assert result.status == "succeeded", result
        for node in result.nodes:
            log = (runs / run_id / node.name / "logs" / "node.log").read_text()
            assert f"cfg: {cfg} link: d/x" in log
            assert (runs / run_id / node.name / "output" / "seen.txt").read_text() == "X"


def test_on_real_nodes_the_controller_sends_each_blob_once_and_the_others_fetch_from_node_0(
    local_pool: Any, tmp_path: Path
) -> None:
    from lepton_infra.workload import steps
    from lepton_infra.workload.group import NodeGroup

    inventory = local_pool.inventory
    big = os.urandom(3 << 20)  # unique: no earlier test cached it
    workload = _tree(tmp_path / "w", {"train.py": "print(1)\n", "lib/a.py": os.urandom(16).hex()})
    (workload / "weights.bin").write_bytes(big)
    manifest = build_manifest(workload, hash_cache_dir=None)
    with NodeGroup.connect(inventory, 10.0) as group:
        steps.prepare(group, "relay-1", manifest, inventory)
        stats = steps.ship(group, manifest, inventory)
        run_dirs = [Path(m.run_dir) for m in group]
    peers = tuple(n.name for n in inventory.nodes[1:])
    assert stats.relayed_to == peers and stats.fallbacks == ()
    assert stats.relayed_bytes >= len(big) * len(peers)
    # Once from the controller (plus manifests and framing), not once per node.
    assert len(big) <= stats.controller_bytes < 1.5 * len(big)
    for run_dir in run_dirs:
        assert (run_dir / "workload" / "weights.bin").read_bytes() == big
        assert (run_dir / "workload" / "lib" / "a.py").read_text() == (workload / "lib" / "a.py").read_text()

    with NodeGroup.connect(inventory, 10.0) as group:  # unchanged: prepare writes every tree
        steps.prepare(group, "relay-2", manifest, inventory)
        assert all(m.tree_ready for m in group)
        again = steps.ship(group, manifest, inventory)
    assert again.controller_bytes == 0 and again.relayed_to == ()

    # One small file edited: each node is sent it directly (no hop through node 0 for a few KB).
    # (weights.bin goes: without a hash cache this test's big file would be re-sent as pending.)
    (workload / "weights.bin").unlink()
    (workload / "lib" / "a.py").write_text("EDITED = 1\n")
    edited = build_manifest(workload, hash_cache_dir=None)
    with NodeGroup.connect(inventory, 10.0) as group:
        steps.prepare(group, "relay-3", edited, inventory)
        small = steps.ship(group, edited, inventory)
        run_dirs = [Path(m.run_dir) for m in group]
    assert small.relayed_to == () and small.relayed_bytes == 0
    assert len(inventory.nodes) * len("EDITED = 1\n") <= small.controller_bytes < len(big)
    for run_dir in run_dirs:
        assert (run_dir / "workload" / "lib" / "a.py").read_text() == "EDITED = 1\n"
        assert (run_dir / "workload" / "train.py").read_text() == "print(1)\n"


def test_cli_run_refuses_an_outside_link_with_exit_2_and_follows_it_when_asked(
    local_pool: Any, tmp_path: Path
) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    workload = _tree(
        tmp_path / "w",
        {
            "train.py": "import os\nprint('secret:', open('outside.txt').read().strip(), os.path.islink('outside.txt'))\n"
        },
    )
    (tmp_path / "elsewhere.txt").write_text("from outside")
    (workload / "outside.txt").symlink_to(tmp_path / "elsewhere.txt")

    def cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lepton_infra.cli", "run", str(workload), "--inventory"]
            + [str(local_pool.inventory_path), "--runs-dir", str(tmp_path / "runs"), *extra],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(repo), "COLUMNS": "200"},
            check=False,
        )

    refused = cli("--run-id", "cli-links-1")
    assert refused.returncode == 2, refused.stderr
    assert "'outside.txt' points outside the workload folder" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    followed = cli("--run-id", "cli-links-2", "--follow-links")
    assert followed.returncode == 0, followed.stderr[-2000:]
    log = (tmp_path / "runs" / "cli-links-2" / "node-0" / "logs" / "node.log").read_text()
    assert "secret: from outside False" in log  # its content shipped, as a file of its own


# --------------------------------------------------------------------------- hashed while sent (issue 18)


def _ship_with(manifest: Any, run_id: str) -> tuple[dict, int]:
    blobs = {**manifest.blobs(), AGENT_DIGEST: len(AGENT_SOURCE)}
    answer = bootstrap.prepare({"run_id": run_id, "blobs": blobs})
    buf = io.BytesIO()
    sent = write_stream(manifest, answer["missing"], AGENT_SOURCE, AGENT_DIGEST, buf)
    buf.seek(0)
    bootstrap.receive(answer["run_dir"], buf, settle_in_background=False)
    return answer, sent


def test_a_large_new_file_is_read_once_hashed_while_sent_and_not_sent_again(
    tmp_path: Path, node_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lepton_infra.workload import hash_cache, ship_stream

    big = os.urandom(3000)
    workload = _tree(tmp_path / "w", {"train.py": "x"})
    (workload / "big.bin").write_bytes(big)
    (workload / "same.bin").write_bytes(big)  # identical content: placed by a copy on the node
    reads: list[str] = []

    def counting_open(path: Any, *args: Any) -> Any:
        reads.append(Path(path).name)
        return open(path, *args)

    for reader in (hash_cache, ship_stream):  # hashing reads files, and so does sending
        monkeypatch.setattr(reader, "open", counting_open, raising=False)
    cache = tmp_path / "hashes"

    first = build_manifest(workload, hash_cache_dir=cache, defer_bytes=1000)
    assert reads == ["train.py"] and first.pending == ["big.bin", "same.bin"]
    answer, sent = _ship_with(first, "big-1")
    assert sent == 2 * len(big) + len("x")
    assert sorted(reads) == ["big.bin", "same.bin", "train.py"]  # every file read once, in all
    assert first.files["big.bin"].sha256 == hashlib.sha256(big).hexdigest() and first.pending == []
    shipped = Path(answer["run_dir"]) / "workload"
    assert (shipped / "big.bin").read_bytes() == big and (shipped / "same.bin").read_bytes() == big

    # Just written, so not trusted yet: hashed before sending next time, and the node has it.
    first.save_hashes()
    second = build_manifest(workload, hash_cache_dir=cache, defer_bytes=1000)
    assert second.pending == [] and second.files["big.bin"].sha256 == first.files["big.bin"].sha256
    answer, sent = _ship_with(second, "big-2")
    assert answer["missing"] == [] and sent == 0
    assert (Path(answer["run_dir"]) / "workload" / "same.bin").read_bytes() == big


def test_a_pending_file_whose_digest_does_not_match_is_refused_on_the_node(node_home: Path) -> None:
    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    buf = io.BytesIO()
    write_header(buf, {"agent": AGENT_DIGEST, "files": {}, "pending": [["big.bin", 0o644]]})
    buf.write(bootstrap.BLOB_HEAD.pack(bootstrap.PENDING_DIGEST, 4) + b"bad!")
    buf.write(hashlib.sha256(b"good").digest())
    write_end(buf)
    buf.seek(0)
    with pytest.raises(ValueError, match="'big.bin' arrived corrupted"):
        bootstrap.receive(str(run_dir), buf, settle_in_background=False)
    assert not (run_dir / "workload" / "big.bin").exists()
    assert [p.name for p in (node_home / ".lepton" / "cache").iterdir()] == []


def test_a_stream_missing_a_pending_file_is_refused(node_home: Path) -> None:
    run_dir = Path(bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"])
    buf = io.BytesIO()
    write_header(buf, {"agent": AGENT_DIGEST, "files": {}, "pending": [["big.bin", 0o644]]})
    write_end(buf)
    buf.seek(0)
    with pytest.raises(ValueError, match="ended before pending file 'big.bin'"):
        bootstrap.receive(str(run_dir), buf, settle_in_background=False)


def test_a_file_changed_while_being_sent_stops_the_ship_and_the_node_keeps_nothing(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "x"})
    (workload / "big.bin").write_bytes(b"a" * 5000)
    manifest = build_manifest(workload, hash_cache_dir=None, defer_bytes=1000)

    class Appending(io.BytesIO):
        """The file grows (a checkpoint still being written) while its bytes go out."""

        def write(self, b: Any) -> int:
            if len(b) == 5000:
                with open(workload / "big.bin", "ab") as f:
                    f.write(b"more")
            return super().write(b)

    out = Appending()
    with pytest.raises(ConfigError, match="big.bin changed while it was being sent"):
        write_stream(manifest, [], AGENT_SOURCE, AGENT_DIGEST, out)
    assert manifest.files["big.bin"].sha256 == ""  # nothing remembered for it
    run_dir = bootstrap.prepare({"run_id": "r", "blobs": {}})["run_dir"]
    with pytest.raises(ValueError, match="ended"):
        bootstrap.receive(run_dir, io.BytesIO(out.getvalue()), settle_in_background=False)
    assert not (Path(run_dir) / "workload" / "big.bin").exists()


def test_a_small_file_is_read_once_the_bytes_hashed_are_the_bytes_sent(
    tmp_path: Path, node_home: Path
) -> None:
    workload = _tree(tmp_path / "w", {"train.py": "print('v1')\n", "lib/util.py": "X = 1\n"})
    manifest = build_manifest(workload, hash_cache_dir=None)
    # Edited after hashing: the stream still carries the hashed version (no second read), so
    # what the node checks against the digest is what the controller hashed.
    (workload / "train.py").write_text("print('v2')\n")
    (workload / "lib" / "util.py").unlink()
    answer, sent = _ship_with(manifest, "once-1")
    assert sent == len("print('v1')\n") + len("X = 1\n")
    shipped = Path(answer["run_dir"]) / "workload"
    assert (shipped / "train.py").read_text() == "print('v1')\n"
    assert (shipped / "lib" / "util.py").read_text() == "X = 1\n"
