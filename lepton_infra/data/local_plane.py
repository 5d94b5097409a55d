"""The local pool's store and queue: a directory and a SQLite file in the pool's state dir, so runs and
sweeps on one machine use the same data plane as a cloud cluster with nothing else to start."""

from __future__ import annotations

from pathlib import Path

from lepton_infra.data.queue_local import create_local_queue

STORE_DIR = "store"
QUEUE_FILE = "queue.db"
# The cloud JobQueue components' defaults (JobQueueArgs), so local behaves as the clouds do.
VISIBILITY_TIMEOUT_S = 300
MAX_RECEIVE_COUNT = 5


def provision(state_dir: Path) -> tuple[str, str]:
    """Create (or keep: results outlive the pool) `<state_dir>/store/` and `<state_dir>/queue.db`;
    returns their URLs (`file://...`, `sqlite://...`) for the inventory."""
    state_dir = Path(state_dir).resolve()
    store = state_dir / STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    queue_url = create_local_queue(
        state_dir / QUEUE_FILE, max_receive_count=MAX_RECEIVE_COUNT, visibility_timeout_s=VISIBILITY_TIMEOUT_S
    )
    return f"file://{store}", queue_url
