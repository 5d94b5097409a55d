"""End to end on real sshd nodes: pinned host keys and unreachable nodes. Both must fail before
anything runs on any node, naming the node."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lepton_infra.errors import ConfigError, HostKeyMismatch, NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import run_job, run_status


def _openssh_fingerprint(host_key_line: str, tmp_path: Path) -> str:
    """The fingerprint as OpenSSH itself prints it (`ssh-keygen -l`), to compare with ours."""
    path = tmp_path / "key.pub"
    path.write_text(host_key_line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def _with_node(inv: Inventory, index: int, **changes: object) -> Inventory:
    nodes = list(inv.nodes)
    nodes[index] = nodes[index].model_copy(update=changes)
    return inv.model_copy(update={"nodes": nodes})


def test_wrong_host_key_is_refused_naming_node_and_both_fingerprints_and_nothing_runs(
    pool: Inventory, make_workload: Callable[..., Path], tmp_path: Path
) -> None:
    # node-1 is pinned to node-0's key: node-1's real key no longer matches the inventory.
    tampered = _with_node(pool, 1, host_key=pool.nodes[0].host_key)
    with pytest.raises(HostKeyMismatch) as err:
        run_job(tampered, make_workload(), run_id="tampered-1", runs_dir=tmp_path / "runs")
    expected = _openssh_fingerprint(pool.nodes[0].host_key, tmp_path)
    actual = _openssh_fingerprint(pool.nodes[1].host_key, tmp_path)
    assert err.value.node == "node-1"
    assert (err.value.expected_fingerprint, err.value.actual_fingerprint) == (expected, actual)
    assert "node-1" in str(err.value) and expected in str(err.value) and actual in str(err.value)
    assert err.value.exit_code == 3
    # Nothing ran: no node has the run, not even the ones whose keys matched.
    with pytest.raises(ConfigError, match="no run 'tampered-1'"):
        run_status(pool, "tampered-1")
    assert not (tmp_path / "runs").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung sshd / black hole)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("kind", ["closed port", "silent port"])
def test_unreachable_node_fails_within_the_connect_timeout_naming_it(
    pool: Inventory, make_workload: Callable[..., Path], tmp_path: Path, silent_port: int, kind: str
) -> None:
    port = _closed_port() if kind == "closed port" else silent_port
    broken = _with_node(pool, 2, host="127.0.0.1", port=port)
    start = time.monotonic()
    with pytest.raises(NodeError) as err:
        run_job(
            broken, make_workload(), run_id="unreachable-1", connect_timeout=5.0, runs_dir=tmp_path / "runs"
        )
    elapsed = time.monotonic() - start
    # 5 s, not less: the same limit holds the healthy nodes' handshakes on a loaded machine.
    assert err.value.node == "node-2"
    assert f"127.0.0.1:{port} within 5 s" in str(err.value)
    assert not isinstance(err.value, HostKeyMismatch)
    # Generous bound: the point is that the timeout is not ignored (no default 10 s or retry storm).
    assert elapsed < 5.0 + 4.5, elapsed
    with pytest.raises(ConfigError, match="no run 'unreachable-1'"):
        run_status(pool, "unreachable-1")


def test_the_controllers_ssh_socket_sends_small_packets_at_once(pool: Inventory) -> None:
    """Nagle off on the controller's SSH socket: with it on, a channel close followed by the next
    command's open waited for the node's delayed ACK, ~40 ms per command (bench/RESULTS.md)."""
    from lepton_infra.workload.ssh import NodeConnection

    conn = NodeConnection(pool, pool.nodes[0], 10.0).connect()
    try:
        transport = conn.client.get_transport() if conn.client else None
        assert transport is not None
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert conn.run("echo ok").stdout == b"ok\n"  # and commands work as before
    finally:
        conn.close()
