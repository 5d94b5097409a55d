"""The tables and lines the commands show a person (their `--json` twins are in documents.py):
a run's outcome per node, nodes' states, the local pool, the live view's lifetime."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import filesize
from rich.table import Table

from lepton_infra.cli.app import console, err_console
from lepton_infra.display import LiveView, plain, styled

if TYPE_CHECKING:
    from lepton_infra.inventory import Inventory
    from lepton_infra.workload import NodeStatus, RunResult


def emit(document: Any, indent: int | None = 2) -> None:
    """Print a `--json` document (a model of documents.py, a record, a dataclass or a list of them)
    on stdout. NaN and infinities print as `json.dumps` prints them: a diverged loss is NaN, not null."""
    import json

    from pydantic_core import to_jsonable_python

    print(json.dumps(to_jsonable_python(document, inf_nan_mode="constants"), indent=indent))


def fmt(value: Any, spec: str, suffix: str = "") -> str:
    """A figure as `spec` formats it, or `-` when there is none (or it is not a number)."""
    return "-" if not isinstance(value, int | float) else f"{value:{spec}}{suffix}"


def money(cost: dict[str, Any] | None) -> str:
    from lepton_infra.workload.cost import money as as_money

    return as_money(cost)


def cost_cell(cost: dict[str, Any] | None) -> str:
    return money(cost) + ("" if cost is None or cost.get("final") else " so far")


@contextmanager
def live(quiet: bool, inventory: Inventory | None = None) -> Iterator[LiveView]:
    """The live view of a run for as long as the command drives it. --json: stdout is the JSON
    alone; the progress bar (if any) goes to stderr."""
    price, nodes = (inventory.price, len(inventory.nodes)) if inventory is not None else (None, 0)
    events = LiveView(err_console if quiet else console, quiet=quiet, price=price, nodes=nodes)
    try:
        yield events
    finally:
        events.close()


def render_result(result: RunResult, as_json: bool) -> None:
    """A run's outcome: its run.json (the RunRecord) with --json, else a table per node."""
    from lepton_infra.workload.record import RunStore

    record = RunStore(Path(result.run_dir).parent).load(result.run_id)
    if as_json:
        if record is None:  # only if run.json was removed under us: the same core from the result
            emit(result)
        else:
            print(record.model_dump_json(indent=2))
        return
    from lepton_infra.workload.report import data_label, plot_state

    summaries = {n.name: n.metrics for n in record.nodes} if record else {}
    title = f"run {result.run_id}: {result.status}"
    if record is not None:
        title += f" ({data_label(record, Path(result.run_dir))})"
    table = Table(title=title)
    columns = ("node", "state", "exit", "shipped", "collected", "CPU mean/peak", "GPU mean/peak", "RAM peak")
    for column in (*columns, "results"):
        table.add_column(column)
    for n in result.nodes:
        colour = "green" if n.state == "succeeded" else "red"
        table.add_row(
            n.name,
            styled(n.state, colour),
            "-" if n.exit_code is None else str(n.exit_code),
            filesize.decimal(n.bytes_shipped),
            filesize.decimal(n.bytes_collected),
            *_metrics_cells(summaries.get(n.name)),
            str(n.output_dir) if n.output_dir else "-",
        )
    console.print(table)
    if record is not None and record.cost is not None:
        console.print(
            f"cost: {money(record.cost)}, {record.cost['nodes']} node(s) for {record.cost['hours'] * 60:.1f} min"
        )
    state, said = plot_state(Path(result.run_dir))
    if state != "none":
        plot = {
            "drawing": f"{said} (being drawn in the background; ready in a few seconds)",
            "drawn": said,
            "failed": f"not drawn: {said}",
        }[state]
        console.print(f"node metrics over time: {plot}; tensorboard --logdir {result.run_dir}")
    console.print(
        f"results: {result.run_dir}/  (run.json has per-node status, metrics, cost, timings, bytes moved)"
    )


def _metrics_cells(summary: dict[str, Any] | None) -> tuple[str, str, str]:
    """CPU and GPU use (mean/peak %) and peak RAM of one node, from run.json's summary."""
    if not summary:
        return "-", "-", "-"

    def pct(key: str) -> str:
        figure = summary.get(key)
        return f"{figure['mean']:.0f}/{figure['peak']:.0f}%" if isinstance(figure, dict) else "-"

    ram = summary.get("mem_used")
    return pct("cpu_pct"), pct("gpu_util_pct"), filesize.decimal(int(ram["peak"])) if ram else "-"


def render_node_statuses(
    run_id: str, rows: list[NodeStatus], as_json: bool, cost: dict[str, Any] | None = None
) -> None:
    """`status` and `cancel`: the run's status and each node as the node reports it, plus `cost`
    when run.json has one (documents.RunStatus with --json)."""
    from lepton_infra.cli.documents import RunStatus
    from lepton_infra.node_view import node_line

    document = RunStatus.of(run_id, rows, cost)
    if as_json:
        emit(document)
        return
    table = Table(title=f"run {run_id}: {document.status}")
    columns = ("state", "exit_code", "pid", "started", "ended", "heartbeat")
    table.add_column("node")
    for column in columns:
        table.add_column(column)
    sampled = any(r.metrics for r in rows)
    if sampled:
        table.add_column("latest sample")
    for r in rows:
        cells = [r.node, *("-" if getattr(r, c) is None else str(getattr(r, c)) for c in columns)]
        if sampled:
            cells.append(node_line("", r.metrics, 0).removeprefix(" | ") if r.metrics else "-")
        table.add_row(*cells)
    console.print(table)
    if cost is not None:
        console.print(f"cost{'' if cost.get('final') else ' so far'}: {money(cost)}")
    for r in rows:
        if said := r.killed_line():
            console.print(plain(said), soft_wrap=True)


def render_pool(rows: list[Any]) -> None:
    """`local up` and `local status`: each sshd node, where it listens, whether it is alive."""
    table = Table()
    for column in ("node", "address", "pid", "alive"):
        table.add_column(column)
    for r in rows:
        alive = styled("yes", "green") if r.alive else styled("no", "red")
        table.add_row(plain(r.name), plain(f"{r.host}:{r.port}"), plain(r.pid), alive)
    console.print(table)
