"""The node-side preflight's cache, tested by running the node script itself: a warm node answers
from its cache, and anything that could change the answer (torch's files, the import path, the
CUDA visibility) makes it import again. A fake `torch` package stands in for the real one so its
files can be changed under the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lepton_infra.workload.remote import PREFLIGHT_SOURCE

FAKE_TORCH = """\
__version__ = "{version}"
class cuda:
    @staticmethod
    def is_available():
        return False
    @staticmethod
    def device_count():
        return 0
"""


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    """A node home and an import path holding a fake torch."""
    home, site = tmp_path / "home", tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    home.mkdir()
    _write_torch(site, "1.0.0")
    return home, site


def _write_torch(site: Path, version: str) -> None:
    init = site / "torch" / "__init__.py"
    init.write_text(FAKE_TORCH.format(version=version))
    # Each version its own mtime: a rewrite within the clock's resolution must not look unchanged.
    stamp = int(version.split(".")[0]) * 10**9
    os.utime(init, ns=(stamp, stamp))


def _preflight(home: Path, site: Path, **env: str) -> dict:
    environ = {"HOME": str(home), "PYTHONPATH": str(site), "PATH": os.environ["PATH"], **env}
    out = subprocess.run(
        [sys.executable, "-S", "-c", PREFLIGHT_SOURCE], env=environ, capture_output=True, check=True
    )
    return json.loads(out.stdout)


def test_a_warm_node_answers_from_its_cache(node: tuple[Path, Path]) -> None:
    home, site = node
    first = _preflight(home, site)
    assert first["torch"] == "1.0.0" and first["cached"] is False
    second = _preflight(home, site)
    assert second["cached"] is True
    assert {k: v for k, v in second.items() if k != "cached"} == {
        k: v for k, v in first.items() if k != "cached"
    }


def test_a_changed_torch_is_imported_again(node: tuple[Path, Path]) -> None:
    home, site = node
    _preflight(home, site)
    _write_torch(site, "2.0.0")
    again = _preflight(home, site)
    assert again["torch"] == "2.0.0" and again["cached"] is False


def test_cuda_visibility_and_import_path_are_part_of_the_key(node: tuple[Path, Path], tmp_path: Path) -> None:
    home, site = node
    _preflight(home, site)
    assert _preflight(home, site, CUDA_VISIBLE_DEVICES="0")["cached"] is False
    other = tmp_path / "other-site"
    (other / "torch").mkdir(parents=True)
    _write_torch(other, "3.0.0")
    assert _preflight(home, other)["torch"] == "3.0.0"


def test_a_missing_or_broken_torch_is_never_cached(tmp_path: Path) -> None:
    home, site = tmp_path / "home", tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    home.mkdir()
    (site / "torch" / "__init__.py").write_text("raise ImportError('libcuda.so.1: cannot open')\n")
    for _ in range(2):
        found = _preflight(home, site)
        assert found["torch"] is None and "libcuda" in found["error"] and found["cached"] is False
    assert not list((home / ".lepton" / "preflight").glob("*.json"))
