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
session pool. All of these skip, with the reason, where OpenSSH's sshd is not installed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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


@pytest.fixture
def local_pool_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], LocalPool]]:
    """`factory(n) -> LocalPool`: fresh pools for one test, all stopped and checked when it ends."""
    _require_sshd()
    pools: list[LocalPool] = []

    def factory(n: int) -> LocalPool:
        pool = make_pool(tmp_path_factory, n)
        pools.append(pool)
        return pool

    yield factory
    failures: list[str] = []
    for pool in pools:  # stop every pool even if one of them left orphans behind
        try:
            stop_pool(pool)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
