"""Cancelling a run that has not launched yet. `cancel` leaves a marker: in the local run folder
while the controller is still connecting (`RunStore.request_cancel`), or in the nodes' run folders
once they have one. The controller looks for the first before it launches, and watches for the
second while it ships, so a cancelled run never starts anywhere."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from lepton_infra.errors import LeptonError
from lepton_infra.workload.group import NodeGroup

CANCELLED_BEFORE_START = "cancelled before the run reached the nodes"


@contextlib.contextmanager
def cancel_watch(group: NodeGroup, every_s: float = 0.5) -> Iterator[threading.Event]:
    """While the body ships, look for the cancel marker a `cancel` leaves in a node's run folder;
    when found, close every connection, which ends the uploads at once (the node-side receivers
    see the end of their stream and exit). The event says whether that happened."""
    cancelled = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            for m in group:
                try:
                    if m.run_dir and m.conn.stat_size(f"{m.run_dir}/cancel") is not None:
                        cancelled.set()
                except LeptonError:
                    continue
            if cancelled.is_set():
                for m in group:
                    m.conn.close()
                return

    thread = threading.Thread(target=watch, name="lepton-cancel-watch", daemon=True)
    thread.start()
    try:
        yield cancelled
    finally:
        done.set()
        thread.join()
