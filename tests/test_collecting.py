"""A node's pack stream is untrusted (README "Reliability", class 4): a lying agent, sending
names that climb out, links that leave, files past the limits or another node's record, gets
nothing written outside its own folder and every skip said. Real tar streams, no SSH needed."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.workload.collecting import PACK_MANIFEST, Limits, Unpacker, check_limits


def _stream(members: list[tuple[str, bytes | str]]) -> io.BytesIO:
    """A tar: (name, bytes) is a file, (name, "->target") a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return buf


def test_a_lying_agent_writes_nothing_outside_its_folder_and_every_skip_is_said(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "r1"
    mine, other = runs / "node-0", runs / "node-1"
    (other / "output").mkdir(parents=True)
    (other / "output" / "result.json").write_text("theirs")
    mine.mkdir()
    unpack = Unpacker("node-0", "r1", mine, Limits(max_bytes=100, max_files=10))
    unpack(
        _stream(
            [
                (PACK_MANIFEST, json.dumps({"send_bytes": 10, "send_files": 1}).encode()),
                ("../node-1/output/result.json", b"forged"),
                ("/tmp/absolute.txt", b"x"),
                ("run.json", b"{}"),
                ("output/link", "->../../node-1"),
                ("output/abs", "->/etc"),
                ("output/ok.txt", b"fine"),
                ("output/big.bin", b"y" * 200),
                ("output/after.txt", b"never read"),
            ]
        )
    )
    assert (other / "output" / "result.json").read_text() == "theirs"
    assert (mine / "output" / "ok.txt").read_text() == "fine"
    assert sorted(p.name for p in (mine / "output").iterdir()) == ["ok.txt"]
    assert not (runs / "run.json").exists() and not (mine / "run.json").exists()
    said = "\n".join(unpack.skipped)
    for name in (
        "../node-1/output/result.json",
        "/tmp/absolute.txt",
        "run.json",
        "output/link",
        "output/abs",
    ):
        assert repr(name) in said, said
    assert "output/big.bin" in said and "--max-collect-bytes" in said and "the rest not read" in said
    assert unpack.skipped_count == 6


@pytest.mark.parametrize(
    ("value", "expected"), [("50G", 50 * 10**9), ("1.5t", 1_500_000_000_000), ("123", 123)]
)
def test_collect_sizes_read_as_people_write_them(value: str, expected: int) -> None:
    assert check_limits(value, 5).max_bytes == expected


@pytest.mark.parametrize(
    ("size", "files", "named"),
    [("lots", 5, "--max-collect-bytes"), ("0", 5, "--max-collect-bytes"), ("1G", 0, "--max-collect-files")],
)
def test_bad_collect_limits_are_refused_naming_the_option(size: str, files: int, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        check_limits(size, files)


def test_nodes_collected_at_once_do_not_both_count_on_the_same_free_space(tmp_path: Path) -> None:
    """Two nodes whose results each fit the free space but not together: the second is refused
    before it writes anything, instead of both filling the disk half-way (seen once in CI)."""
    import shutil

    from lepton_infra.errors import NoSpace

    free = shutil.disk_usage(tmp_path).free
    manifest = json.dumps({"send_bytes": int(free * 0.6), "send_files": 1}).encode()
    first, second = (Unpacker(n, "r1", tmp_path / n) for n in ("node-0", "node-1"))
    for u in (first, second):
        u.dest.mkdir()
    first._read_manifest(io.BytesIO(manifest))  # node-0's collect is under way
    with pytest.raises(NoSpace, match="node 'node-1'"):
        second._read_manifest(io.BytesIO(manifest))
    first(_stream([]))  # node-0's stream ends: its space is no longer spoken for
    second._read_manifest(io.BytesIO(manifest))
    second(_stream([]))
