"""The node keeper on real sshd nodes: once a `prepare` started it, the next run's `prepare` is
answered through a `direct-tcpip` channel without a command on the node; a keeper that is gone, or
a process squatting its port, costs nothing but the fallback to the command, and learns nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.inventory import Inventory
from lepton_infra.local import LocalPool, node_home
from lepton_infra.node.bootstrap.tree import tree_id
from lepton_infra.workload import keeper, steps
from lepton_infra.workload.group import NodeGroup
from lepton_infra.workload.manifest import build_manifest
from lepton_infra.workload.remote import BOOTSTRAP_MODULE
from lepton_infra.workload.ssh import NodeConnection


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger (and hash cache) of this test's own: the first prepare always runs the command."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return keeper.ledger_dir()


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every command the controller runs on a node (the real ones still run)."""
    seen: list[str] = []
    real = NodeConnection.run

    def spy(self: NodeConnection, command: str, **kw: Any) -> Any:
        seen.append(command)
        return real(self, command, **kw)

    monkeypatch.setattr(NodeConnection, "run", spy)
    return seen


def prepare_and_ship(inv: Inventory, tree: Path, run_id: str) -> list[str]:
    """What a run does up to its launch (bench/ship.py's steps); the run dirs."""
    manifest = build_manifest(tree)
    with NodeGroup.connect(inv, 10.0) as group:
        steps.prepare(group, run_id, manifest, inv)
        steps.ship(group, manifest, inv)
        return [m.run_dir for m in group]


def prepares(commands: list[str]) -> int:
    return sum(" prepare" in c for c in commands)


@pytest.fixture
def one_node(pool: Inventory) -> Inventory:
    return pool.model_copy(update={"nodes": pool.nodes[:1]})


@pytest.fixture
def tree(make_workload: Callable[..., Path]) -> Path:
    return make_workload({"lib/a.py": "A = 1\n", "lib/b.py": "B = 2\n"})


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, Any]]]:
    """The requests offered to a keeper per call, decoded (the real call still runs)."""
    seen: list[list[dict[str, Any]]] = []
    real = keeper.call

    def spy(conn: NodeConnection, command: str, bodies: list[bytes]) -> Any:
        seen.append([json.loads(b) for b in bodies])
        return real(conn, command, bodies)

    monkeypatch.setattr(keeper, "call", spy)
    return seen


def key_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the full request, offered in case the keeper asks for it, is unusable: a prepare
    succeeds only if the tree's key was enough."""
    real_call = keeper.call

    def call(conn: NodeConnection, command: str, bodies: list[bytes]) -> Any:
        assert ["tree" in json.loads(b) for b in bodies] == [False, True]
        return real_call(conn, command, [bodies[0], b"{}"])

    monkeypatch.setattr(keeper, "call", call)


def test_after_the_first_prepare_the_keeper_answers_and_a_known_tree_is_named_by_its_key(
    local_pool_factory: Callable[[int], LocalPool],
    make_workload: Callable[..., Path],
    tree: Path,
    ledger: Path,
    commands: list[str],
    sent: list[list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = local_pool_factory(1)  # a node without a keeper yet
    inv = pool.inventory
    prepare_and_ship(inv, tree, "keeper-a1")
    assert prepares(commands) == 1
    (entry,) = ledger.iterdir()
    assert entry.stat().st_mode & 0o777 == 0o600  # it holds the token
    address = json.loads(entry.read_text())
    assert address["version"] == BOOTSTRAP_MODULE and len(address["token"]) == 64

    # The keeper was forked from that prepare and knows its tree: the key alone is enough.
    commands.clear()
    with monkeypatch.context() as patch:
        key_only(patch)
        (run_dir,) = prepare_and_ship(inv, tree, "keeper-a2")
    assert prepares(commands) == 0, commands
    assert Path(run_dir).is_relative_to(pool.home(inv.nodes[0].name))
    assert sorted(p.name for p in (Path(run_dir) / "workload" / "lib").iterdir()) == ["a.py", "b.py"]
    assert (Path(run_dir) / ".agent" / "agent.py").is_file()

    # A tree it was never given goes whole, once; after that its key is enough too. Its contents
    # are all in the node's cache (only a name changed), so the keeper writes it itself.
    other = make_workload({"lib/a2.py": "A = 1\n", "lib/b.py": "B = 2\n"})
    spare = pool.home(inv.nodes[0].name) / ".lepton" / "trees" / tree_id(build_manifest(other).node_view())
    # a1's blobs reach the cache in the settle its `receive` runs after answering: wait for it.
    cache, deadline = pool.home(inv.nodes[0].name) / ".lepton" / "cache", time.monotonic() + 30
    while not all((cache / digest).is_file() for digest in build_manifest(other).blobs()):
        assert time.monotonic() < deadline, "a1's settle never filled the node's cache"
        time.sleep(0.05)
    commands.clear()
    prepare_and_ship(inv, other, "keeper-a3")
    assert commands == []  # no prepare, and no receive either: the keeper wrote it from the cache
    assert ["tree" in r for r in sent[-1]] == [True]
    # The keeper ran the settle after its answer: the new tree's spare copy appears.
    deadline = time.monotonic() + 30
    while not (spare / "lib" / "a2.py").is_file():
        assert time.monotonic() < deadline, "no spare tree was built after the keeper's prepare"
        time.sleep(0.1)
    with monkeypatch.context() as patch:
        key_only(patch)
        (run_dir,) = prepare_and_ship(inv, other, "keeper-a4")
    assert prepares(commands) == 0
    assert (Path(run_dir) / "workload" / "lib" / "a2.py").read_text() == "A = 1\n"


class EveryTree(list[str]):
    def __contains__(self, item: object) -> bool:
        return True


def test_a_keeper_that_does_not_know_the_tree_asks_for_it_on_the_same_channel(
    one_node: Inventory,
    make_workload: Callable[..., Path],
    ledger: Path,
    commands: list[str],
    sent: list[list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepare_and_ship(one_node, make_workload({"x.py": "X = 1\n"}), "keeper-d1")
    real = keeper.known
    # The ledger claims the keeper holds every tree (as after the keeper restarted and forgot).
    monkeypatch.setattr(
        keeper, "known", lambda conn: (e := real(conn)) and {**e, "trees": EveryTree(e["trees"])}
    )
    commands.clear()
    (run_dir,) = prepare_and_ship(one_node, make_workload({"y.py": "Y = 2\n"}), "keeper-d2")
    assert prepares(commands) == 0
    assert ["tree" in r for r in sent[-1]] == [False, True]
    assert (Path(run_dir) / "workload" / "y.py").read_text() == "Y = 2\n"


class Squatter:
    """A process on a dead keeper's port: greets with a made-up proof and keeps all it is sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            self.received = conn.recv(65536)
            conn.sendall(json.dumps({"nonce": "00" * 16, "proof": "ab" * 32}).encode() + b"\n")
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


@pytest.fixture
def squatter() -> Iterator[Squatter]:
    s = Squatter()
    yield s
    s.close()


@pytest.mark.parametrize("where", ["nothing listens", "a squatter"])
def test_a_gone_keeper_costs_only_the_command_and_a_squatter_learns_nothing(
    where: str,
    one_node: Inventory,
    tree: Path,
    ledger: Path,
    commands: list[str],
    squatter: Squatter,
) -> None:
    prepare_and_ship(one_node, tree, f"keeper-b1-{where[0]}")
    (entry,) = ledger.iterdir()
    real = json.loads(entry.read_text())
    port = squatter.port if where == "a squatter" else closed_port()
    entry.write_text(json.dumps({**real, "port": port}))

    commands.clear()
    (run_dir,) = prepare_and_ship(one_node, tree, f"keeper-b2-{where[0]}")
    assert prepares(commands) == 1  # the command ran instead
    assert (Path(run_dir) / "workload" / "lib" / "a.py").read_text() == "A = 1\n"
    assert json.loads(entry.read_text())["port"] == real["port"]  # the ledger has the real keeper again
    if where == "a squatter":
        squatter.thread.join(10)
        hello = json.loads(squatter.received)  # one line: the greeting asked for, nothing after it
        assert set(hello) == {"hello", "version"}
        assert b"keeper-b2" not in squatter.received and real["token"].encode() not in squatter.received


def test_the_keeper_answers_nothing_to_a_client_without_the_token(
    one_node: Inventory, tree: Path, ledger: Path, local_pool: tuple[Inventory, Path]
) -> None:
    """Any local user can reach a loopback port: without proof of the token, nothing runs."""
    prepare_and_ship(one_node, tree, "keeper-c1")
    (entry,) = ledger.iterdir()
    port = json.loads(entry.read_text())["port"]  # a local node is this machine: dial it directly
    request = {"run_id": "keeper-c-intruder", "blobs": {}, "tree": None}
    body = json.dumps(request).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        stream = conn.makefile("rwb")
        stream.write(json.dumps({"hello": "11" * 16, "version": BOOTSTRAP_MODULE}).encode() + b"\n")
        stream.flush()
        greeting = json.loads(stream.readline())
        assert set(greeting) == {"nonce", "proof"}
        head = {"proof": "cd" * 32, "command": "prepare", "bytes": len(body)}
        stream.write(json.dumps(head).encode() + b"\n" + body)
        stream.flush()
        assert stream.readline() == b""  # closed without a word
    home = node_home(local_pool[1], one_node.nodes[0].name)
    assert not (home / ".lepton" / "runs" / "keeper-c-intruder").exists()
