"""End detection by notification: the controller learns of a node's end from the agent's `wait`
(blocked in flock on the supervisor's end lock), not from its next poll of state.json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.inventory import Inventory
from lepton_infra.workload import monitor, run_job


@pytest.mark.slow
def test_the_end_is_seen_without_waiting_for_the_next_poll(
    pool2: Inventory,
    make_workload: Callable[..., Path],
    recorder: Callable[[], Any],
    controller_thread: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Polls an hour apart: only the end waiters can wake the monitor before the test gives up.
    monkeypatch.setattr(monitor, "POLL_INTERVAL_S", 3600.0)
    monkeypatch.setattr(monitor, "BUSY_POLL_INTERVAL_S", 3600.0)
    events = recorder()
    workload = make_workload()
    thread, box = controller_thread(
        lambda: run_job(
            pool2,
            workload,
            ["lines=2", "delay=0.5"],
            run_id="end-notify",
            runs_dir=tmp_path,
            events=events,
            metrics_every=0,
        )
    )
    thread.join(timeout=120)
    assert not thread.is_alive(), "the run's end was not noticed until a poll"
    result = box["result"]
    assert result.status == "succeeded", result
    for node in result.nodes:  # woken by the end, the last poll still read the whole log
        assert f"done on {node.name}" in events.lines(node.name)


def test_a_node_is_polled_eagerly_until_its_first_output_then_at_the_idle_pace(
    pool: Inventory, local_pool: tuple[Inventory, Path]
) -> None:
    """A job's first line is what a user waits for after `run`: until a node has printed, the
    monitor polls it at the busy interval (not the idle one, which held the line up to 0.5 s)."""
    from lepton_infra.local import node_home
    from lepton_infra.workload.group import ConnectedNode
    from lepton_infra.workload.ssh import NodeConnection

    node = pool.nodes[0]
    run_dir = node_home(local_pool[1], node.name) / ".lepton" / "runs" / "eager-poll"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "state.json").write_text('{"state": "running", "heartbeat": 1}')
    log = run_dir / "logs" / "node.log"
    log.write_bytes(b"")
    conn = NodeConnection(pool, node, 10.0).connect()
    try:
        watch = monitor._Watch(ConnectedNode(conn, 0, run_dir=str(run_dir)), 0, 30.0, "eager-poll")
        watch.poll()
        assert watch.eager  # silent so far: its first line may come any moment
        log.write_bytes(b"first line\n")
        lines = [e for batch in watch.poll() for e in batch if isinstance(e, monitor.LogLine)]
        assert [e.line for e in lines] == ["first line"]
        assert not watch.eager  # heard from: the idle pace until more output flows
        silent = monitor._Watch(ConnectedNode(conn, 0, run_dir=str(run_dir)), log.stat().st_size, 30.0, "x")
        silent.started -= monitor.FIRST_OUTPUT_FAST_S
        silent.poll()
        assert not silent.eager  # a job silent for long is not polled at the busy pace for ever
    finally:
        conn.close()
