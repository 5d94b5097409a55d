"""The commands that look at runs without driving them: `runs` (this machine's list), `status`
and `top` (asked of the nodes) and `cancel`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from lepton_infra.cli.app import console
from lepton_infra.cli.options import (
    DEFAULT_INVENTORY,
    InventoryOpt,
    JsonOpt,
    RunIdArg,
    RunsDirOpt,
    TimeoutOpt,
    check_run_id,
    load_inventory,
    positive,
    run_or_latest,
)
from lepton_infra.cli.render import cost_cell, emit, money, render_node_statuses
from lepton_infra.display import plain, styled

if TYPE_CHECKING:
    from rich.console import Group

    from lepton_infra.workload import NodeStatus


def runs(
    runs_dir: RunsDirOpt = Path("runs"),
    as_json: JsonOpt = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only runs started in the last 30m, 12h, 7d, 2w...; sums their cost."),
    ] = None,
) -> None:
    """List the runs in RUNS_DIR, newest first (as this machine last saw them; `status` asks the nodes)."""
    from lepton_infra.workload import cost
    from lepton_infra.workload.record import RunStore

    records = RunStore(runs_dir).records()
    if since is not None:
        after = cost.parse_since(since)
        records = [r for r in records if cost.created_after(r.created, after)]
    costs = {r.run_id: cost.so_far(r.cost, r.created) for r in records}
    if as_json:
        from lepton_infra.cli.documents import RunsListing

        emit(RunsListing.of(records, runs_dir, since, costs))
        return
    total = round(sum(c["usd"] for c in costs.values() if c), 4)
    unpriced = sum(1 for c in costs.values() if not c)
    if not records:
        console.print(f"no runs in {runs_dir}/" + (f" since {since}" if since else ""))
        return
    table = Table(title=f"runs in {runs_dir}/" + (f" started in the last {since}" if since else ""))
    for column in ("run id", "status", "nodes", "started", "where", "cost"):
        table.add_column(column)
    for r in records:
        colour = {"succeeded": "green", "running": "yellow"}.get(r.status, "red")
        table.add_row(
            r.run_id,
            styled(r.status, colour),
            str(len(r.nodes)),
            r.created or "-",
            f"{r.cluster} ({r.cloud})",
            cost_cell(costs[r.run_id]),
        )
    console.print(table)
    shown = f"total cost of {len(records)} run(s): ${total:,.4f}"
    console.print(shown + (f" ({unpriced} without a price in their inventory)" if unpriced else ""))


def status(
    run_id: RunIdArg = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Show each node's state of a run, read from the nodes themselves."""
    from lepton_infra.workload import run_status

    run_id = run_or_latest(run_id, runs_dir)
    rows = run_status(load_inventory(inventory), run_id, connect_timeout=connect_timeout)
    render_node_statuses(run_id, rows, as_json, cost=_recorded_cost(run_id, runs_dir))


def _recorded_cost(run_id: str, runs_dir: Path) -> dict[str, Any] | None:
    """The run's cost from its run.json (brought up to now while it runs); None without one."""
    from lepton_infra.workload.cost import so_far
    from lepton_infra.workload.record import RunStore

    record = RunStore(runs_dir).load(run_id)
    return so_far(record.cost, record.created) if record is not None else None


def top(
    run_id: RunIdArg = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    every: Annotated[float, typer.Option("--every", help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Show one view and return.")] = False,
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """What a run's nodes are doing: GPU, CPU, memory per node (stragglers flagged) and the cost so
    far, updating in place until the run ends (Ctrl-C leaves it; the run goes on)."""
    from rich.console import Group
    from rich.live import Live

    from lepton_infra.node_view import NodeBoard
    from lepton_infra.workload.cost import run_cost
    from lepton_infra.workload.runner import watch_nodes

    positive("--every", every)
    run_id = run_or_latest(run_id, runs_dir)
    inv = load_inventory(inventory)
    board = NodeBoard()  # the cost goes in the heading: from the run's start, not top's

    def cost_of(rows: list[NodeStatus]) -> dict[str, Any] | None:
        """run.json's cost when this machine started the run, else the inventory's price from the
        first node's start."""
        recorded = _recorded_cost(run_id, runs_dir)
        if recorded is not None:
            return recorded
        started = min((r.started for r in rows if r.started), default=None)
        running = not all(r.terminal for r in rows)
        return run_cost(inv.price, len(rows), started, [r.ended for r in rows], running=running)

    def view(rows: list[NodeStatus]) -> Group:
        for r in rows:
            if r.metrics:
                board.sample(r.node, r.metrics)
        cost = cost_of(rows)
        states = ", ".join(f"{r.node} {r.state}" for r in rows)
        head = plain(f"run {run_id}: {states}" + (f"; cost so far {money(cost)}" if cost else ""), "bold")
        body = board.render() if board.latest else plain("no metrics sample yet", "dim")
        return Group(head, body)

    stream = watch_nodes(inv, run_id, every=every, connect_timeout=connect_timeout)
    if as_json or once:
        rows = next(stream)
        stream.close()
        if as_json:
            from lepton_infra.cli.documents import NodeActivity

            emit(NodeActivity(run_id=run_id, nodes=rows, cost=cost_of(rows)))
        else:
            console.print(view(rows))
        return
    with Live(console=console, auto_refresh=False) as live:
        try:
            for rows in stream:
                live.update(view(rows), refresh=True)
        except KeyboardInterrupt:
            pass


def cancel(
    run_id: Annotated[str, typer.Argument(help="The run to stop on every node.")],
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Stop a run's processes on every node (whole process groups, no orphans); a run still
    connecting to its nodes is stopped before it launches anything."""
    from lepton_infra.workload import cancel as cancel_run

    check_run_id(run_id)
    rows = cancel_run(load_inventory(inventory), run_id, connect_timeout=connect_timeout, runs_dir=runs_dir)
    render_node_statuses(run_id, rows, as_json)
