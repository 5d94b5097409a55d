"""The preflight as `run_job` runs it: in the background, beside prepare and ship (an `import torch`
and a CUDA probe on every node take seconds), so the launch waits for it only as long as it is
still running. Its findings are also the best reason to give when a step beside it failed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lepton_infra.errors import LeptonError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import steps
from lepton_infra.workload.group import NodeGroup

Findings = dict[str, dict[str, Any]]


class BackgroundPreflight:
    """`steps.preflight` on one background thread, from `running()` on."""

    def __init__(self, group: NodeGroup, inventory: Inventory) -> None:
        self.group, self.inventory = group, inventory
        self._future: Future[tuple[Findings, float]] | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Start it; leaving the body waits for it to end (it never outlives the run's connections)."""
        with ThreadPoolExecutor(1, thread_name_prefix="lepton-preflight") as background:
            self._future = background.submit(self._timed)
            yield

    def _timed(self) -> tuple[Findings, float]:
        t0 = time.monotonic()
        found = steps.preflight(self.group, self.inventory)
        return found, round(time.monotonic() - t0, 3)

    def result(self) -> tuple[Findings, float]:
        """Each node's findings and the preflight's seconds; its NodeError when a node failed it."""
        assert self._future is not None, "result() is for inside running()"
        return self._future.result()

    def reason(self, exc: BaseException) -> BaseException:
        """Why the run failed when a step beside the preflight raised `exc`: the preflight's own error
        when it failed too (a node without torch, exit 3, naming the node, is the reason to give),
        else `exc`. An interrupt is not made to wait for the preflight."""
        if self._future is None or not isinstance(exc, LeptonError):
            return exc
        try:
            self._future.result()
        except LeptonError as found:
            return found
        except BaseException:  # noqa: BLE001 - the step's own error stands
            pass
        return exc


def summary(found: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per distinct finding, e.g. `torch 2.13.0+cpu, CUDA no, 0 GPU(s) in /x/python3 on 3 node(s)`,
    and how many nodes answered from their preflight cache."""
    counts: dict[str, int] = {}
    for f in found.values():
        line = f"torch {f.get('torch')}, CUDA {'yes' if f.get('cuda') else 'no'}, {f.get('gpus', 0)} GPU(s) in {f.get('python')}"
        counts[line] = counts.get(line, 0) + 1
    text = "; ".join(f"{line} on {n} node(s)" for line, n in counts.items())
    # A warm node answers from its cache (node/preflight.py says what its key covers).
    cached = sum(1 for f in found.values() if f.get("cached"))
    return f"{text} ({cached} answered from the node's cache)" if cached else text
