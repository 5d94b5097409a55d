"""The node-side fetch (what `train.py --data-dir <store URL>` uses) reads what the controller's
store client uploads, on every backend: verified against the manifest's SHA-256, cached, reused
without downloading while the manifest is unchanged, and refused naming the URL when a file was
changed behind the manifest's back or the folder has no manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lepton_infra.data import open_store
from lepton_infra.node import upload as node_client
from lepton_infra.workload.remote import UPLOADER_SOURCE


def _dataset(root: Path) -> Path:
    (root / "cifar-10-batches-py").mkdir(parents=True)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(os.urandom(300_000))
    (root / "cifar-10-batches-py" / "batches.meta").write_text("meta")
    (root / "README").write_text("a data set\n")
    return root


def test_fetch_downloads_verified_once_then_reuses_the_cache(store_url: str, tmp_path: Path) -> None:
    local = _dataset(tmp_path / "local")
    store = open_store(store_url)
    store.upload_dir(local, "datasets/toy")
    url, cache = f"{store_url}/datasets/toy", str(tmp_path / "cache")

    got = Path(node_client.fetch(url, cache))
    for rel in ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/batches.meta", "README"):
        assert (got / rel).read_bytes() == (local / rel).read_bytes()

    # The manifest is unchanged: the next run reuses the copy and reads no data object (gone now).
    store.delete("datasets/toy/cifar-10-batches-py/data_batch_1")
    assert Path(node_client.fetch(url, cache)) == got
    assert (got / "cifar-10-batches-py" / "data_batch_1").read_bytes() == (
        local / "cifar-10-batches-py" / "data_batch_1"
    ).read_bytes()

    # A file changed behind the manifest's back is refused on a fresh cache, naming URL and file.
    store.put("datasets/toy/cifar-10-batches-py/data_batch_1", b"tampered")
    with pytest.raises(ValueError, match=r"data_batch_1 has SHA-256 .* its manifest says"):
        node_client.fetch(url, str(tmp_path / "fresh"))
    assert not list((tmp_path / "fresh").glob("*/data")), "nothing half-fetched is left to reuse"


def test_a_folder_without_a_manifest_is_named(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    store.put("loose/file.bin", b"x")
    with pytest.raises(ValueError, match="has no readable _lepton_manifest.json"):
        node_client.fetch(f"{store_url}/loose", str(tmp_path / "cache"))


def test_file_fetch_needs_only_the_standard_library(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    open_store(f"file://{root}").upload_dir(_dataset(tmp_path / "local"), "d")
    # The bundle as the agent writes it beside the run ($LEPTON_STORE_CLIENT) and train.py imports it.
    client = tmp_path / ".store_client.py"
    client.write_text(UPLOADER_SOURCE)
    code = (
        "import importlib.util, sys; s = importlib.util.spec_from_file_location('c', sys.argv[1]);"
        " m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m.fetch(sys.argv[2], sys.argv[3]))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            code,
            str(client),
            f"file://{root}/d",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (Path(out.stdout.strip()) / "README").read_text() == "a data set\n"
