"""Shared fixtures: real local pools (OpenSSH sshd nodes on 127.0.0.x) for any test that needs nodes.

    def test_something(local_pool):                 # 3 nodes, one pool for the whole session
        inventory, state_dir = local_pool           # a LocalPool is a (inventory, state_dir) tuple
        local_pool.inventory_path                   # <state_dir>/inventory.json, for CLI tests

    def test_fault(local_pool_factory):             # a fresh pool only this test uses
        pool = local_pool_factory(2)                # stopped (and checked for orphans) after the test

    def test_impostor(local_pool, tmp_path):                  # node-2 pins a foreign key:
        bad = with_foreign_host_key(local_pool.inventory, save_to=tmp_path / "inv.json")
        # (from lepton_infra.local; test modules cannot import helpers from conftest: there are two)

Tests that break nodes (kill processes, stop a node) should use `local_pool_factory`, not the
session pool. Its nodes start warm: their preflight cache holds the answer the real preflight gave
on a real node once per session (an `import torch` of ~3 s saved per fresh pool; a node whose key
differs, another python or torch, imports as usual). The session pool starts cold, so the first
run of a session still does the real import. All of these skip, with the reason, where OpenSSH's
sshd is not installed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.local import LocalPool, pool_processes
from lepton_infra.local.sshd_config import find_sshd


def sshd_missing_reason() -> str | None:
    """Why local pools cannot run here, or None when they can."""
    try:
        find_sshd()
    except ConfigError as exc:
        return str(exc)
    return None


def _require_sshd() -> None:
    reason = sshd_missing_reason()
    if reason is not None:
        pytest.skip(f"needs OpenSSH's sshd for real local nodes: {reason}")


def make_pool(tmp_path_factory: pytest.TempPathFactory, n: int, name: str = "pool") -> LocalPool:
    """Start an `n`-node pool in a fresh temporary state dir. The caller must `stop_pool` it."""
    _require_sshd()
    state_dir = tmp_path_factory.mktemp(name)
    return LocalPool.start(n, state_dir)


def stop_pool(pool: LocalPool) -> None:
    """`down` the pool and fail loudly if any of its nodes' processes survived."""
    pool.down()
    leftovers = {node: procs for node, procs in pool_processes(pool.state_dir).items() if procs}
    assert not leftovers, f"processes survived `local down` of {pool.state_dir}: {leftovers}"


@pytest.fixture(scope="session")
def local_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """Three real sshd nodes shared by the whole session. Do not break them; use local_pool_factory."""
    pool = make_pool(tmp_path_factory, 3, "session-pool")
    try:
        yield pool
    finally:
        stop_pool(pool)


PREFLIGHT_CACHE = Path(".lepton") / "preflight"  # under a node's home (lepton_infra/node/preflight.py)


@pytest.fixture(scope="session")
def preflight_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The preflight cache a real node keeps after one real preflight (file name -> content), as
    `run` asks it: every local node is this machine, so its answer holds for all of them."""
    from lepton_infra.workload import steps
    from lepton_infra.workload.group import NodeGroup

    pool = make_pool(tmp_path_factory, 1, "preflight-seed")
    try:
        with NodeGroup.connect(pool.inventory, 30) as group:
            steps.preflight(group, pool.inventory)
        cache = pool.home(pool.inventory.nodes[0].name) / PREFLIGHT_CACHE
        return {p.name: p.read_bytes() for p in cache.glob("*.json")}
    finally:
        stop_pool(pool)


@pytest.fixture
def local_pool_factory(
    tmp_path_factory: pytest.TempPathFactory, preflight_cache: dict[str, bytes]
) -> Iterator[Callable[[int], LocalPool]]:
    """`factory(n) -> LocalPool`: fresh pools for one test, all stopped and checked when it ends.
    Their nodes start with a warm preflight cache (see the module docstring)."""
    _require_sshd()
    pools: list[LocalPool] = []

    def factory(n: int) -> LocalPool:
        pool = make_pool(tmp_path_factory, n)
        pools.append(pool)
        for node in pool.inventory.nodes:
            cache = pool.home(node.name) / PREFLIGHT_CACHE
            cache.mkdir(parents=True, exist_ok=True)
            for name, content in preflight_cache.items():
                (cache / name).write_bytes(content)
        return pool

    yield factory
    failures: list[str] = []
    for pool in pools:  # stop every pool even if one of them left orphans behind
        try:
            stop_pool(pool)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
