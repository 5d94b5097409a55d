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
