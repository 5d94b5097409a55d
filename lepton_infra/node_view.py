"""One compact line per node (GPU %, GPU memory, CPU %, RAM), a straggler flag and the run's cost so
far: the part of the live view (`display.LiveView`) and of `lepton-infra top` that shows what the
machines are doing. Fed with metrics samples (workload/metrics.py) and progress records.

    node-0 | GPU  97% 14.2/16.0 GiB | CPU  88% | RAM  6.1/31.0 GiB | 212 W 71 C
    node-1 | GPU  41%  9.9/16.0 GiB | CPU  35% | RAM  5.9/31.0 GiB | STRAGGLER: GPU use 41 vs 97 ...
    cost so far $0.0134 (spot), 2 node(s) x $1.01/h
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import RenderableType
from rich.progress import Progress
from rich.text import Text

from lepton_infra.display import clean
from lepton_infra.inventory import Price
from lepton_infra.workload.metrics import gpu_mem, gpu_util, stragglers

GIB = 2**30


def _gib(used: float, total: float) -> str:
    return f"{used / GIB:4.1f}/{total / GIB:.1f} GiB"


def node_line(node: str, sample: dict[str, Any], width: int = 8) -> str:
    """The node's figures in one line; a figure the node does not have (no GPU) is not shown."""
    parts = []
    util, mem = gpu_util(sample), gpu_mem(sample)
    if util is not None or mem is not None:
        gpu = "GPU" + (f" {util:3.0f}%" if util is not None else "")
        parts.append(gpu + (f" {_gib(*mem)}" if mem else ""))
    else:
        parts.append("GPU -")
    if isinstance(sample.get("cpu_pct"), int | float):
        parts.append(f"CPU {sample['cpu_pct']:3.0f}% of {sample.get('cores', '?')}")
    if isinstance(sample.get("mem_used"), int) and isinstance(sample.get("mem_total"), int):
        parts.append(f"RAM {_gib(sample['mem_used'], sample['mem_total'])}")
    gpus = sample.get("gpus") or []
    power = sum(g["power_w"] for g in gpus if "power_w" in g)
    temps = [g["temp_c"] for g in gpus if "temp_c" in g]
    if power or temps:
        parts.append(" ".join(([f"{power:.0f} W"] if power else []) + ([f"{max(temps)} C"] if temps else [])))
    return f"{clean(node):>{width}} | " + " | ".join(parts)


class NodeBoard:
    """Latest sample per node, step rate per node (from progress records), and the run's price."""

    def __init__(self, price: Price | None = None, nodes: int = 0) -> None:
        self.price = price
        self.nodes = nodes
        self.started = time.time()
        self.latest: dict[str, dict[str, Any]] = {}
        self._steps: dict[str, tuple[float, int, float | None]] = {}  # node -> (t, step, rate)

    def sample(self, node: str, sample: dict[str, Any]) -> None:
        self.latest[node] = sample

    def progress(self, node: str, progress: dict[str, Any]) -> None:
        epoch, step, steps = progress.get("epoch"), progress.get("step"), progress.get("steps")
        if not all(isinstance(v, int) for v in (epoch, step, steps)):
            return
        done = (epoch - 1) * steps + step  # type: ignore[operator]
        now = time.monotonic()
        prev = self._steps.get(node)
        rate = prev[2] if prev else None
        if prev and now - prev[0] >= 1.0 and done > prev[1]:
            rate = (done - prev[1]) / (now - prev[0])
        if prev is None or now - prev[0] >= 1.0:
            self._steps[node] = (now, done, rate)

    def cost_usd(self) -> float | None:
        if self.price is None:
            return None
        hours = (time.time() - self.started) / 3600.0
        return self.price.usd_per_node_hour * max(self.nodes, len(self.latest)) * hours

    def render(self) -> Text:
        rates = {n: r for n, (_, _, r) in self._steps.items() if r is not None}
        lagging = stragglers(self.latest, rates)
        out = Text()
        width = max([8, *(len(n) for n in self.latest)])
        for node in sorted(self.latest):
            out.append(node_line(node, self.latest[node], width), "cyan")
            if node in lagging:
                out.append(f" | STRAGGLER: {lagging[node]}", "bold red")
            out.append("\n")
        usd = self.cost_usd()
        if usd is not None and self.price is not None:
            out.append(
                f"cost so far ${usd:.4f} ({self.price.market}), "
                f"{max(self.nodes, len(self.latest))} node(s) x ${self.price.usd_per_node_hour:.2f}/h",
                "dim",
            )
        out.rstrip()
        return out


class BoardProgress(Progress):
    """rich's Progress (the training bar) with the node board drawn under it, in the same live
    region: both update in place."""

    def __init__(self, board: NodeBoard, *args: Any, **kwargs: Any) -> None:
        self.board = board
        super().__init__(*args, **kwargs)

    def get_renderables(self) -> Any:
        renderables: list[RenderableType] = []
        if self.tasks:
            renderables.append(self.make_tasks_table(self.tasks))
        if self.board.latest:
            renderables.append(self.board.render())
        yield from renderables
