"""Fixtures for the workload layer's end-to-end tests on the real sshd local pool.

Built on the session-scoped `local_pool` fixture (tests/conftest.py, lepton_infra.local): three
real sshd nodes on 127.0.0.x. Test workloads are tiny stdlib scripts written into tmp dirs; the
one torch test writes its own DDP script."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.inventory import Inventory
from lepton_infra.workload import NodeStatus, RunEvents

# A stand-in job: numbered lines + progress lines, a result file in LEPTON_OUTPUT_DIR, and on
# request one rank that kills itself mid-run. Options as key=value arguments.
TEST_JOB = textwrap.dedent(
    """\
    import json, os, signal, sys, time
    opts = dict(a.split("=", 1) for a in sys.argv[1:])
    rank = int(os.environ["LEPTON_NODE_RANK"])
    name = os.environ["LEPTON_NODE_NAME"]
    lines, delay = int(opts.get("lines", "3")), float(opts.get("delay", "0.1"))
    die_rank, die_at = int(opts.get("die_rank", "-1")), int(opts.get("die_at", "1"))
    tag = opts.get("tag", "")
    for i in range(lines):
        print(f"{tag}line {i} of {lines} from {name}", flush=True)
        progress = {"epoch": 1, "epochs": 1, "step": i + 1, "steps": lines, "loss": 1.0 / (i + 1)}
        print("LEPTON_PROGRESS " + json.dumps(progress), flush=True)
        if rank == die_rank and i + 1 >= die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(delay)
    result = {
        "run_id": os.environ["LEPTON_RUN_ID"],
        "node": name,
        "rank": rank,
        "tag": tag,
        "num_nodes": os.environ["LEPTON_NUM_NODES"],
        "world_size": os.environ.get("WORLD_SIZE"),
        "files": sorted(os.listdir(".")),
    }
    with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "result.json"), "w") as f:
        json.dump(result, f)
    print(f"{tag}done on {name}", flush=True)
    """
)


@pytest.fixture(scope="session")
def pool(local_pool: tuple[Inventory, Path]) -> Inventory:
    inventory, _state_dir = local_pool
    return inventory


@pytest.fixture(scope="session")
def pool2(pool: Inventory) -> Inventory:
    """The first two nodes only: the cheaper pool for tests that do not need three."""
    return pool.model_copy(update={"nodes": pool.nodes[:2]})


@pytest.fixture
def make_workload(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(extra: dict[str, str | bytes] | None = None, job: str = TEST_JOB) -> Path:
        root = tmp_path / f"workload-{next(counter)}"
        root.mkdir()
        (root / "train.py").write_text(job)
        for rel, content in (extra or {}).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return root

    return make


class Recorder(RunEvents):
    """Keeps everything a UI would have shown."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, str]] = []
        self.logs: list[tuple[str, str]] = []
        self.progress: list[tuple[str, dict[str, Any]]] = []
        self.done: dict[str, NodeStatus] = {}

    def on_phase(self, phase: str, detail: str) -> None:
        self.phases.append((phase, detail))

    def on_log(self, node: str, line: str) -> None:
        self.logs.append((node, line))

    def on_progress(self, node: str, progress: dict[str, Any]) -> None:
        self.progress.append((node, progress))

    def on_node_done(self, node: str, status: NodeStatus) -> None:
        self.done[node] = status

    def lines(self, node: str) -> list[str]:
        return [line for n, line in self.logs if n == node]


def processes_of_run(run_id: str) -> list[str]:
    """Live processes on this machine (every local node is this machine) carrying the run's id."""
    marker = f"LEPTON_RUN_ID={run_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {cmdline}")
        except OSError:
            continue
    return found


def wait_no_processes(run_id: str, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_of_run(run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def recorder() -> Callable[[], Recorder]:
    """Factory of event recorders (one per run)."""
    return Recorder


@pytest.fixture
def leftover_processes() -> Callable[[str], list[str]]:
    """`leftover_processes(run_id)`: the run's processes still alive after waiting up to 15 s."""
    return wait_no_processes


def start_controller(run: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """`run()` (a run_job or attach) in a started daemon thread, as a controller beside the test;
    its return value lands in box["result"], or what it raised in box["error"]."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


@pytest.fixture
def controller_thread() -> Callable[[Callable[[], Any]], tuple[threading.Thread, dict[str, Any]]]:
    """`controller_thread(run)`: see start_controller."""
    return start_controller
