"""The `lepton-infra` command line: parse, call the library, render. Behaviour lives in the library
(`lepton_infra.workload`, `lepton_infra.local`, `lepton_infra.catalog`), so everything here also
works from Python. Heavy modules are imported inside the command that needs them.

Exit codes: 0 ok, 1 job failed, 2 bad input, 3 infrastructure/connection failure."""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import filesize
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from lepton_infra.display import LiveView, join, plain, styled
from lepton_infra.errors import ConfigError, JobFailed, LeptonError, redact

if TYPE_CHECKING:
    from lepton_infra.inventory import Inventory
    from lepton_infra.workload import NodeStatus, RunResult

EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3
DEFAULT_INVENTORY = Path(".lepton/local/inventory.json")
REPO_ROOT = Path(__file__).resolve().parent.parent

# Piped output (CI logs, `| less`) gets a wide fixed width instead of rich's 80 columns, so tables
# are not cut to ellipses. No markup and no emoji codes, ever: paths, names and job output are
# data (a `[/x]` in a path must not crash rich, a `[bold]` in a log line must not restyle the
# screen); our own styling is explicit, with `Text` (lepton_infra.display).
console = Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(
    stderr=True, highlight=False, markup=False, emoji=False, width=None if sys.stderr.isatty() else 200
)


def _error(kind: str, message: str) -> None:
    err_console.print(join(styled("error", "bold red"), f" ({kind}): ", plain(message)), soft_wrap=True)


class _OneErrorHandler(TyperGroup):
    """The one place errors become a one-line message and the documented exit code (not a
    traceback), for every command and sub-command."""

    def invoke(self, ctx: Any) -> Any:  # a typer.Context; typer vendors its own click
        try:
            return super().invoke(ctx)
        except LeptonError as exc:
            kind = {
                EXIT_BAD_INPUT: "bad input",
                EXIT_INFRA: "infrastructure error",
                EXIT_JOB_FAILED: "job failed",
            }
            _error(kind.get(exc.exit_code, "error"), str(exc))
            raise typer.Exit(exc.exit_code) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the environment's failure, not the input
                _error("infrastructure error", redact(f"no space left on device: {exc.filename or exc}"))
                raise typer.Exit(EXIT_INFRA) from exc
            # A path the user gave that the OS refuses (under a file, not writable, too long):
            # bad input, said in one line; never a traceback that could quote file contents.
            where = f" {exc.filename!r}" if exc.filename else ""
            _error("bad input", redact(f"cannot use{where}: {exc.strerror or exc}"))
            raise typer.Exit(EXIT_BAD_INPUT) from exc
        except ValueError as exc:  # e.g. a NUL byte in a path
            _error("bad input", redact(str(exc)))
            raise typer.Exit(EXIT_BAD_INPUT) from exc


app = typer.Typer(
    name="lepton-infra",
    cls=_OneErrorHandler,
    help="GPU training clusters as Pulumi components, and the SSH workload layer that runs jobs on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
local_app = typer.Typer(help="The embedded local pool: real sshd nodes on loopback.", no_args_is_help=True)
app.add_typer(local_app, name="local")

InventoryOpt = Annotated[
    Path,
    typer.Option(
        "--inventory",
        "-i",
        envvar="LEPTON_INVENTORY",
        help="Inventory JSON (from `local up` or `inventory --stack`).",
        show_default=True,
    ),
]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Where run results are collected.")]
TimeoutOpt = Annotated[float, typer.Option("--connect-timeout", help="Seconds to wait for each node's SSH.")]
HeartbeatOpt = Annotated[
    float,
    typer.Option(
        "--heartbeat-timeout",
        help="A node silent this long (hung, cut off) is lost: the others are stopped and collected.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
MaxBytesOpt = Annotated[
    str,
    typer.Option(
        "--max-collect-bytes",
        help="Most one collect takes from one node (50G, 500M, bytes); the rest stays there, listed.",
    ),
]
MaxFilesOpt = Annotated[
    int, typer.Option("--max-collect-files", help="Most files one collect takes from one node.")
]


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def _load_inventory(path: Path) -> Inventory:
    from lepton_infra.inventory import Inventory

    return Inventory.load(path)


# --------------------------------------------------------------------------- catalog


@app.command()
def catalog(
    accelerator: Annotated[str | None, typer.Option(help="T4, L4, A10G, A100-40GB, A100-80GB, H100.")] = None,
    cloud: Annotated[str | None, typer.Option(help="aws, gcp or azure.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per node.")] = None,
    region: Annotated[str | None, typer.Option(help="Only entries offered in this region.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the vendored accelerator catalog (instance types, GPUs, dated prices)."""
    from lepton_infra import catalog as cat

    rows = cat.choices(cloud=cloud, accelerator=accelerator, gpus=gpus, region=region)
    if not rows:  # the same exit 2 with --json or without: a script must not mistake [] for success
        raise ConfigError("no catalog entry matches those filters; run `lepton-infra catalog` to see all")
    if as_json:
        print(cat.to_json(rows))
        return
    console.print(cat.rich_table(rows))


# --------------------------------------------------------------------------- local pool

StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Where the pool keeps keys, configs and logs.")
]


@local_app.command("up")
def local_up(
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Number of sshd nodes (1-64).")] = 2,
    state_dir: StateDirOpt = Path(".lepton/local"),
    bastion: Annotated[
        bool,
        typer.Option(
            "--bastion",
            help="Nodes in a private network reachable only through one more sshd, the jump host (root).",
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option("--name", help="The pool's cluster name. Default: local-<this host's name>."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start N real OpenSSH sshd nodes on 127.0.0.x and write <state-dir>/inventory.json."""
    from lepton_infra import local

    inventory = local.up(nodes, state_dir, bastion=bastion, name=name)
    if as_json:
        print(inventory.to_json())
        return
    console.print(
        join(
            styled(f"started {len(inventory.nodes)} node(s)", "green"),
            " of cluster ",
            plain(inventory.cluster),
            "; inventory: ",
            plain(state_dir / "inventory.json"),
        )
    )
    _render_pool(local.status(state_dir))


@local_app.command("down")
def local_down(state_dir: StateDirOpt = Path(".lepton/local")) -> None:
    """Stop exactly the sshd processes (and their jobs) that `local up` started in STATE_DIR."""
    from lepton_infra import local

    stopped = local.down(state_dir)
    console.print(f"stopped {len(stopped)} node(s) in {state_dir}")


@local_app.command("status")
def local_status(state_dir: StateDirOpt = Path(".lepton/local"), as_json: JsonOpt = False) -> None:
    """Show the local pool's nodes and whether each sshd is alive."""
    from lepton_infra import local

    rows = local.status(state_dir)
    if as_json:
        print(json.dumps([_as_dict(r) for r in rows], indent=2, default=str))
        return
    if not rows:
        console.print(f"no local pool in {state_dir}")
        return
    _render_pool(rows)


def _render_pool(rows: list[Any]) -> None:
    table = Table()
    for column in ("node", "address", "pid", "alive"):
        table.add_column(column)
    for r in rows:
        d = _as_dict(r)
        alive = styled("yes", "green") if d.get("alive") else styled("no", "red")
        table.add_row(
            plain(d.get("name")), plain(f"{d.get('host')}:{d.get('port')}"), plain(d.get("pid")), alive
        )
    console.print(table)


def _as_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump())
    return dict(vars(obj))


# --------------------------------------------------------------------------- workloads


@contextmanager
def _live(quiet: bool, inventory: Inventory | None = None) -> Iterator[LiveView]:
    # --json: stdout is the JSON alone; the progress bar (if any) goes to stderr.
    price, nodes = (inventory.price, len(inventory.nodes)) if inventory is not None else (None, 0)
    events = LiveView(err_console if quiet else console, quiet=quiet, price=price, nodes=nodes)
    try:
        yield events
    finally:
        events.close()


def _render_result(result: RunResult, as_json: bool) -> None:
    """A run's outcome: its run.json (the RunRecord) with --json, else a table per node."""
    if as_json:
        from lepton_infra.workload.record import RunStore

        record = RunStore(Path(result.run_dir).parent).load(result.run_id)
        if record is None:  # only if run.json was removed under us: the same core from the result
            print(json.dumps(_as_dict(result), indent=2, default=str))
        else:
            print(record.model_dump_json(indent=2))
        return
    from lepton_infra.workload.cost import money
    from lepton_infra.workload.record import RunStore
    from lepton_infra.workload.report import PLOT, data_label

    record = RunStore(Path(result.run_dir).parent).load(result.run_id)
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
    if (Path(result.run_dir) / PLOT).exists():
        console.print(
            f"node metrics over time: {Path(result.run_dir) / PLOT}; tensorboard --logdir {result.run_dir}"
        )
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


def _missing_results(result: RunResult) -> None:
    """A run whose results are not all home is the environment's failure (exit 3), in one line
    naming each node and why (the store keeps what a node stored: then it is not missing)."""
    missing = [n for n in result.nodes if n.collect_error and not n.store_url]
    if missing:
        why = "; ".join(f"{n.name}: {n.collect_error}" for n in missing)
        raise LeptonError(f"run {result.run_id}: results of {len(missing)} node(s) not brought home: {why}")


def _finish(result: RunResult, as_json: bool) -> None:
    _render_result(result, as_json)
    if all(n.state == "succeeded" for n in result.nodes):
        _missing_results(result)
    if result.status != "succeeded":
        failed = [
            f"{n.name} ({n.state}" + (f": {n.detail})" if n.detail else ")")
            for n in result.nodes
            if n.state != "succeeded"
        ]
        raise JobFailed(f"run {result.run_id} {result.status}; failed nodes: {', '.join(failed) or '-'}")


def _check_run_id(run_id: str | None) -> None:
    from lepton_infra.workload.jobspec import RUN_ID_RE

    if run_id is not None and not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"--run-id {run_id!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def _run_or_latest(run_id: str | None, runs_dir: Path) -> str:
    """The run a command is about: RUN_ID when given, else the newest run in RUNS_DIR (said on stderr)."""
    from lepton_infra.workload.record import RunStore

    if run_id is not None:
        _check_run_id(run_id)
        return run_id
    latest = RunStore(runs_dir).latest()
    err_console.print(f"run {latest} (the latest in {runs_dir}/)")
    return latest


RunIdArg = Annotated[
    str | None, typer.Argument(help="The run. Default: the latest one in --runs-dir.", show_default=False)
]


@app.command()
def run(
    workload_dir: Annotated[
        Path, typer.Argument(help="Workload folder; its train.py (or lepton.toml entrypoint) runs.")
    ],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the entrypoint (after --).")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            help="Processes per node. Default: the inventory's GPUs per node (1 without GPUs).",
            show_default=False,
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Default: timestamp + random suffix.")
    ] = None,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    heartbeat_timeout: HeartbeatOpt = 30.0,
    boot_timeout: Annotated[
        float,
        typer.Option(
            "--boot-timeout",
            help="Seconds to wait for nodes still in their first boot (cloud-init) before giving up.",
        ),
    ] = 900.0,
    as_json: JsonOpt = False,
    max_collect_bytes: MaxBytesOpt = "50G",
    max_collect_files: MaxFilesOpt = 100_000,
    follow_links: Annotated[
        bool,
        typer.Option(
            "--follow-links",
            help="Ship what symlinks leaving the workload folder point to (default: refuse them).",
        ),
    ] = False,
    metrics_every: Annotated[
        float,
        typer.Option(
            "--metrics-every", help="Seconds between node metrics samples (CPU, RAM, GPUs); 0 turns them off."
        ),
    ] = 5.0,
) -> None:
    """Ship WORKLOAD_DIR to every node, run it with torchrun, stream logs, collect results."""
    if nproc_per_node is not None and nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    _positive("--connect-timeout", connect_timeout)
    _check_run_id(run_id)
    from lepton_infra.workload.collecting import check_limits

    limits = check_limits(max_collect_bytes, max_collect_files)
    inv = _load_inventory(inventory)
    from lepton_infra.workload import run_job

    with _live(quiet=as_json, inventory=inv) as events:
        result = run_job(
            inv,
            workload_dir,
            list(args or []),
            nproc_per_node=nproc_per_node,
            run_id=run_id,
            runs_dir=runs_dir,
            connect_timeout=connect_timeout,
            events=events,
            follow_links=follow_links,
            heartbeat_timeout=heartbeat_timeout,
            metrics_every=metrics_every,
            boot_timeout=boot_timeout,
            limits=limits,
        )
    _finish(result, as_json)


@app.command()
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
    total = round(sum(c["usd"] for c in costs.values() if c), 4)
    unpriced = sum(1 for c in costs.values() if not c)
    if as_json:
        rows = [
            {
                "run_id": r.run_id,
                "status": r.status,
                "nodes": [{"name": n.name, "state": n.state} for n in r.nodes],
                "started": r.created,
                "cluster": r.cluster,
                "cloud": r.cloud,
                "run_dir": str(Path(runs_dir) / r.run_id),
                "cost": costs[r.run_id],
            }
            for r in records
        ]
        out = {"runs_dir": str(runs_dir), "since": since, "runs": rows}
        print(json.dumps(out | {"total_usd": total, "runs_without_price": unpriced}, indent=2))
        return
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
            _cost_cell(costs[r.run_id]),
        )
    console.print(table)
    shown = f"total cost of {len(records)} run(s): ${total:,.4f}"
    console.print(shown + (f" ({unpriced} without a price in their inventory)" if unpriced else ""))


def _cost_cell(cost: dict[str, Any] | None) -> str:
    from lepton_infra.workload.cost import money

    return money(cost) + ("" if cost is None or cost.get("final") else " so far")


@app.command()
def attach(
    run_id: RunIdArg = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    heartbeat_timeout: HeartbeatOpt = 30.0,
    as_json: JsonOpt = False,
    max_collect_bytes: MaxBytesOpt = "50G",
    max_collect_files: MaxFilesOpt = 100_000,
) -> None:
    """Reconnect to a run (e.g. after the controller died), stream the rest of its logs, collect."""
    from lepton_infra.workload import attach as attach_run
    from lepton_infra.workload.collecting import check_limits

    limits = check_limits(max_collect_bytes, max_collect_files)
    _positive("--connect-timeout", connect_timeout)
    run_id = _run_or_latest(run_id, runs_dir)
    inv = _load_inventory(inventory)
    with _live(quiet=as_json, inventory=inv) as events:
        result = attach_run(
            inv,
            run_id,
            runs_dir=runs_dir,
            connect_timeout=connect_timeout,
            events=events,
            heartbeat_timeout=heartbeat_timeout,
            limits=limits,
        )
    _finish(result, as_json)


@app.command()
def status(
    run_id: RunIdArg = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Show each node's state of a run, read from the nodes themselves."""
    from lepton_infra.workload import run_status

    run_id = _run_or_latest(run_id, runs_dir)
    rows = run_status(_load_inventory(inventory), run_id, connect_timeout=connect_timeout)
    _render_node_statuses(run_id, rows, as_json, cost=_recorded_cost(run_id, runs_dir))


def _recorded_cost(run_id: str, runs_dir: Path) -> dict[str, Any] | None:
    """The run's cost from its run.json (brought up to now while it runs); None without one."""
    from lepton_infra.workload.cost import so_far
    from lepton_infra.workload.record import RunStore

    record = RunStore(runs_dir).load(run_id)
    return so_far(record.cost, record.created) if record is not None else None


@app.command()
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

    _positive("--every", every)
    run_id = _run_or_latest(run_id, runs_dir)
    inv = _load_inventory(inventory)
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
        head = plain(f"run {run_id}: {states}" + (f"; cost so far {_money(cost)}" if cost else ""), "bold")
        body = board.render() if board.latest else plain("no metrics sample yet", "dim")
        return Group(head, body)

    stream = watch_nodes(inv, run_id, every=every, connect_timeout=connect_timeout)
    if as_json or once:
        rows = next(stream)
        stream.close()
        if as_json:
            nodes = [_as_dict(r) for r in rows]
            print(
                json.dumps({"run_id": run_id, "nodes": nodes, "cost": cost_of(rows)}, indent=2, default=str)
            )
        else:
            console.print(view(rows))
        return
    with Live(console=console, auto_refresh=False) as live:
        try:
            for rows in stream:
                live.update(view(rows), refresh=True)
        except KeyboardInterrupt:
            pass


def _money(cost: dict[str, Any] | None) -> str:
    from lepton_infra.workload.cost import money

    return money(cost)


@app.command()
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

    _check_run_id(run_id)
    rows = cancel_run(_load_inventory(inventory), run_id, connect_timeout=connect_timeout, runs_dir=runs_dir)
    _render_node_statuses(run_id, rows, as_json)


def _render_node_statuses(
    run_id: str, rows: list[NodeStatus], as_json: bool, cost: dict[str, Any] | None = None
) -> None:
    """`status` and `cancel`: the run's status and its nodes, in run.json's shape (`run_id`,
    `status`, `nodes[].name`, `nodes[].state`, `nodes[].exit_code`, ..., `nodes[].metrics`: the
    newest metrics sample while it runs), plus `cost` when run.json has one."""
    from lepton_infra.node_view import node_line
    from lepton_infra.workload.cost import money
    from lepton_infra.workload.record import run_status_of

    nodes = [{"name": r.node, **{k: v for k, v in _as_dict(r).items() if k != "node"}} for r in rows]
    overall = run_status_of([r.state for r in rows])
    if as_json:
        out = {"run_id": run_id, "status": overall, "nodes": nodes, "cost": cost}
        print(json.dumps(out, indent=2, default=str))
        return
    table = Table(title=f"run {run_id}: {overall}")
    columns = ("name", "state", "exit_code", "pid", "started", "ended", "heartbeat")
    for column in columns:
        table.add_column("node" if column == "name" else column)
    sampled = any(r.metrics for r in rows)
    if sampled:
        table.add_column("latest sample")
    for d, r in zip(nodes, rows, strict=True):
        cells = ["-" if d.get(c) is None else str(d.get(c)) for c in columns]
        if sampled:
            cells.append(node_line("", r.metrics, 0).removeprefix(" | ") if r.metrics else "-")
        table.add_row(*cells)
    console.print(table)
    if cost is not None:
        console.print(f"cost{'' if cost.get('final') else ' so far'}: {money(cost)}")
    for r in rows:
        if said := r.killed_line():
            console.print(plain(said), soft_wrap=True)


@app.command()
def logs(
    run_id: RunIdArg = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", "-f", help="Keep streaming until the run ends.")
    ] = False,
    connect_timeout: TimeoutOpt = 10.0,
) -> None:
    """Print a run's logs, prefixed by node, straight from the nodes."""
    from lepton_infra.workload import read_logs

    run_id = _run_or_latest(run_id, runs_dir)
    inv = _load_inventory(inventory)
    if node is not None:
        inv.node(node)  # a clear ConfigError for an unknown node name
    with _live(quiet=False) as events:
        read_logs(
            inv, run_id, node=node, follow=follow, events=events, connect_timeout=connect_timeout, keep=False
        )


@app.command()
def collect(
    run_id: Annotated[str, typer.Argument(help="The run whose results to bring home.")],
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
    max_collect_bytes: MaxBytesOpt = "50G",
    max_collect_files: MaxFilesOpt = 100_000,
) -> None:
    """(Re)collect every node's outputs and logs into RUNS_DIR/RUN_ID/ and write run.json; only
    what is not already here is fetched."""
    from lepton_infra.workload import collect as collect_run
    from lepton_infra.workload.collecting import check_limits

    _check_run_id(run_id)
    limits = check_limits(max_collect_bytes, max_collect_files)
    inv = _load_inventory(inventory)
    with _live(quiet=as_json) as events:
        result = collect_run(
            inv, run_id, runs_dir=runs_dir, connect_timeout=connect_timeout, limits=limits, events=events
        )
    _render_result(result, as_json)
    if not as_json:
        from lepton_infra.workload.record import RunStore
        from lepton_infra.workload.results import store_notes

        for line in store_notes(RunStore(runs_dir).load(run_id)):
            console.print(line)
    _missing_results(result)


# --------------------------------------------------------------------------- Pulumi stacks


@app.command("inventory")
def inventory_cmd(
    stack: Annotated[str, typer.Option("--stack", "-s", help="Pulumi stack name, e.g. dev-aws.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Inventory file to write.")] = Path(
        ".lepton/inventory.json"
    ),
    cwd: Annotated[Path, typer.Option("--cwd", help="Folder with Pulumi.yaml.")] = Path("."),
) -> None:
    """Turn a deployed stack's `inventory` output into an inventory file (private key saved beside it, 0600)."""
    if not re.match(r"^[A-Za-z0-9_.\-/]+$", stack):
        raise ConfigError(f"--stack {stack!r} is not a valid Pulumi stack name")
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise ConfigError("the Pulumi CLI is not on PATH; install it from pulumi.com, log in, then retry")
    # All outputs at once: `inventory`, plus `private_key` when the stack generated the login key.
    cmd = [
        pulumi,
        "stack",
        "output",
        "--show-secrets",
        "--json",
        "--stack",
        stack,
        "--cwd",
        str(cwd),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"`pulumi stack output` failed for stack {stack!r}: {proc.stderr.strip()}")
    from lepton_infra.components.stack_inventory import inventory_from_stack_output

    inv = inventory_from_stack_output(proc.stdout, out.parent)
    inv.save(out)
    console.print(
        f"wrote {out} ({len(inv.nodes)} node(s), cloud {inv.cloud}); use it with `--inventory {out}`"
    )


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    nodes: Annotated[int, typer.Option("--nodes", help="Local nodes to train across (DDP).")] = 2,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Per-process batch size.")] = 16,
    state_dir: StateDirOpt = Path(".lepton/demo"),
    runs_dir: RunsDirOpt = Path("runs"),
) -> None:
    """Start a local pool, train the CIFAR-10 LeNet across it on synthetic data, collect, tear down."""
    from lepton_infra import local
    from lepton_infra.workload import run_job

    if nodes < 1 or nodes > 8:
        raise ConfigError(f"--nodes must be between 1 and 8 for the demo, got {nodes}")
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    workload = _cifar10_workload()
    console.rule(styled("lepton-infra demo", "bold"))
    console.print(f"1. starting {nodes} local sshd node(s) in {state_dir}")
    if (state_dir / "pool.json").exists():
        local.down(state_dir)  # a previous demo that was interrupted
    inv = local.up(nodes, state_dir)
    try:
        console.print(
            f"2. training the CIFAR-10 LeNet ({workload}) across {nodes} node(s), {epochs} epoch(s), on "
            "SYNTHETIC CIFAR-shaped data (no download here; its accuracy says nothing about CIFAR-10)"
        )
        args = [
            "--data",
            "synthetic",
            "--epochs",
            str(epochs),
            "--batch-size",
            str(batch_size),
            "--log-every",
            "200",
        ]
        with _live(quiet=False, inventory=inv) as events:
            result = run_job(inv, workload, args, runs_dir=runs_dir, events=events)
        _render_result(result, as_json=False)
    finally:
        console.print("3. tearing the local pool down")
        local.down(state_dir)
    if result.status != "succeeded":
        raise JobFailed(f"demo run {result.run_id} {result.status}; see {result.run_dir}")
    _render_metrics(Path(result.run_dir))


def _cifar10_workload() -> Path:
    for candidate in (Path("workloads/cifar10"), REPO_ROOT / "workloads" / "cifar10"):
        if (candidate / "train.py").is_file():
            return candidate
    raise ConfigError("workloads/cifar10/train.py not found; run the demo from the lepton-infra repository")


def _render_metrics(run_dir: Path) -> None:
    metrics_files = sorted(run_dir.glob("*/**/metrics.json"))
    if not metrics_files:
        console.print(styled(f"no metrics.json collected under {run_dir}", "yellow"))
        return
    metrics = json.loads(metrics_files[0].read_text())
    data = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}
    trained_on = (
        f"SYNTHETIC CIFAR-shaped data (not CIFAR-10, seed {data.get('seed')})"
        if data.get("kind") == "synthetic"
        else "real CIFAR-10"
        if data.get("kind") == "cifar10"
        else "data not stated"
    )
    table = Table(title=f"CIFAR-10 LeNet on {trained_on}")
    for column in ("epoch", "train loss", "test accuracy", "samples/s", "wall time"):
        table.add_column(column, justify="right")
    for e in metrics.get("epochs", []):
        table.add_row(
            str(e.get("epoch")),
            _fmt(e.get("train_loss"), ".3f"),
            _fmt(e.get("test_accuracy", e.get("test_acc")), ".3f"),
            _fmt(e.get("samples_per_s", e.get("samples_per_sec")), ",.0f"),
            _fmt(e.get("wall_time_s", e.get("time_s")), ".1f", "s"),
        )
    console.print(table)
    folder = metrics_files[0].parent
    console.print(f"world size {metrics.get('world_size')}; results: {folder}/")
    for name in ("metrics.json", "model.pt", "loss_curve.png"):
        if (folder / name).exists():
            console.print(f"  {folder / name}")
    if (run_dir / "metrics.png").exists():
        console.print(f"  {run_dir / 'metrics.png'}  (GPU/CPU use and memory per node beside the loss)")


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if not isinstance(value, int | float) else f"{value:{spec}}{suffix}"


# --------------------------------------------------------------------------- sweeps


_SWEEP_VERBS = ("status", "resume", "cancel")


@app.command()
def sweep(
    workload: Annotated[
        str, typer.Argument(help="Workload folder, or `status` / `resume` / `cancel` followed by a sweep id.")
    ],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for every job (after --).")] = None,
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="NAME=V1,V2,... (repeatable): one job per combination.")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Jobs per combination.")] = 1,
    search: Annotated[
        str | None,
        typer.Option(
            "--search", help="grid, random or tpe: Optuna picks each trial (--grid values, --range)."
        ),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", help="With --search: how many trials.")] = 10,
    ranges: Annotated[
        list[str] | None, typer.Option("--range", help="With --search: NAME=LOW:HIGH[:log] (repeatable).")
    ] = None,
    pruner: Annotated[
        str, typer.Option("--pruner", help="With --search: median, halving or none (stops bad trials early).")
    ] = "median",
    parallel: Annotated[
        int | None, typer.Option("--parallel", help="With --search: trials at once (default: one per node).")
    ] = None,
    report: Annotated[
        str | None,
        typer.Option("--report", help="With --search: LEPTON_PROGRESS key to prune on (default: --metric)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="With --search: the sampler's seed.")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    sweep_id: Annotated[str | None, typer.Option("--sweep-id", help="Default: timestamp + suffix.")] = None,
    visibility_timeout: Annotated[
        int, typer.Option("--visibility-timeout", help="Seconds a taken job stays hidden between extensions.")
    ] = 300,
    heartbeat: Annotated[
        float,
        typer.Option("--heartbeat", help="Seconds between worker beats; none for 3x this + 5 s = stalled."),
    ] = 10.0,
    retry_backoff: Annotated[
        float, typer.Option("--retry-backoff", help="Seconds before a failed job's 2nd try (doubling).")
    ] = 10.0,
    snapshot_every: Annotated[
        float, typer.Option("--snapshot-every", help="Seconds between snapshots of a job's output/ (0: off).")
    ] = 30.0,
    metric: Annotated[
        str, typer.Option("--metric", help="Key of the job's metrics.json to rank by.")
    ] = "final_test_accuracy",
    minimize: Annotated[bool, typer.Option("--minimize", help="Lower metric is better.")] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Submit and return; `sweep status ID` later.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="With `status`: refresh until every job ended.")
    ] = False,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Run WORKLOAD once per --grid combination (x --repeats) through the cluster's queue, a worker per
    node; results land in <store>/sweeps/<id>/<job>/. `sweep status ID` shows where a sweep stands,
    `sweep resume ID` restarts its workers, `sweep cancel ID` ends it."""
    from lepton_infra.workload import sweep as sweeps
    from lepton_infra.workload import sweep_control

    inv = _load_inventory(inventory)
    if workload not in _SWEEP_VERBS:
        for name, value in (("--connect-timeout", connect_timeout), ("--heartbeat", heartbeat),
                            ("--retry-backoff", retry_backoff)):  # fmt: skip
            _positive(name, value)
    if workload in _SWEEP_VERBS:
        if len(args or []) != 1:
            raise ConfigError(f"usage: lepton-infra sweep {workload} SWEEP_ID")
        the_id = (args or [])[0]
        if workload == "cancel":
            purged = sweep_control.cancel(inv, the_id)
            console.print(f"sweep {the_id}: cancelled; {purged} queued job(s) removed, its record kept")
            return
        if workload == "resume":
            _positive("--connect-timeout", connect_timeout)
            workers = sweep_control.resume(inv, the_id, connect_timeout)
            if not as_json:
                restarted = ", ".join(workers) or "none (workers still alive)"
                console.print(f"sweep {the_id}: workers restarted on {restarted}")
            watch = not detach
            _run_search_if_any(inv, the_id, metric, runs_dir, as_json)
    elif search is not None:
        import dataclasses

        from lepton_infra.workload import sweep_search

        if detach:
            raise ConfigError("--search runs its controller in the foreground; --detach is for grid sweeps")
        spec = sweep_search.SearchSpec(
            kind=search, trials=trials, choices=sweeps.parse_grid(grid or []),
            ranges=sweep_search.parse_ranges(ranges or []), pruner=pruner,
            parallel=parallel or len(inv.nodes), report=report or "", minimize=minimize, seed=seed,
        )  # fmt: skip
        sweep_search.check_spec(spec)
        started = sweeps.submit(
            inv, Path(workload), {}, args=list(args or []), sweep_id=sweep_id, connect_timeout=connect_timeout,
            settings=sweeps.WorkerSettings(visibility_timeout_s=visibility_timeout, heartbeat_s=heartbeat,
                                           retry_backoff_s=retry_backoff, snapshot_s=snapshot_every, check_s=1.0),
            jobs=[], extra={"search": dataclasses.asdict(spec)},
        )  # fmt: skip
        the_id = started.sweep_id
        if not as_json:
            console.print(
                f"sweep {the_id}: {search} search, {trials} trial(s), workers on {', '.join(started.workers)}"
            )
        _run_search_if_any(inv, the_id, metric, runs_dir, as_json)
        watch = False
    else:
        started = sweeps.submit(
            inv,
            Path(workload),
            sweeps.parse_grid(grid or []),
            repeats=repeats,
            args=list(args or []),
            sweep_id=sweep_id,
            connect_timeout=connect_timeout,
            settings=sweeps.WorkerSettings(
                visibility_timeout_s=visibility_timeout,
                heartbeat_s=heartbeat,
                retry_backoff_s=retry_backoff,
                snapshot_s=snapshot_every,
            ),
        )
        the_id = started.sweep_id
        if not as_json:
            console.print(
                f"sweep {the_id}: {len(started.jobs)} job(s) queued, workers on {', '.join(started.workers)}"
            )
        watch = not detach
    _sweep_report(inv, the_id, metric, minimize, watch, runs_dir, as_json)


def _run_search_if_any(inv: Inventory, sweep_id: str, metric: str, runs_dir: Path, as_json: bool) -> None:
    """Drive a search sweep's trials (ask, report, prune, tell) until all have ended; nothing for a grid."""
    from lepton_infra.workload import sweep as sweeps
    from lepton_infra.workload import sweep_control, sweep_search

    store, queue = sweeps.open_plane(inv)
    record = sweep_control.load_record(store, sweep_id)
    if not record.get("search") or record.get("closed"):
        return
    controller = sweep_search.SearchController(store, queue, sweep_id, runs_dir / "sweeps" / sweep_id, metric)

    def check() -> None:
        _, stalled = sweep_control.liveness(store, sweep_id)
        if stalled is not None:
            raise sweep_control.SweepStalled(stalled)

    if not as_json:
        console.print(f"search {sweep_id}: Optuna study in {runs_dir / 'sweeps' / sweep_id / 'optuna.db'}")
    controller.run(on_round=check)


def _sweep_report(
    inv: Inventory, sweep_id: str, metric: str, minimize: bool, watch: bool, runs_dir: Path, as_json: bool
) -> None:
    import time

    from rich.live import Live

    from lepton_infra.data.sweep_ledger import malformed
    from lepton_infra.workload import sweep as sweeps
    from lepton_infra.workload import sweep_control, sweep_plots

    store, queue = sweeps.open_plane(inv)
    record = sweep_control.load_record(store, sweep_id)
    submitted = float(record.get("submitted", 0))

    def table(rows: list[Any]) -> Table:
        t = Table(title=f"sweep {sweep_id}")
        for column in ("job", "params", "state", "node", metric, "detail"):
            t.add_column(column)
        for r in rows:
            params = " ".join(f"{k}={v}" for k, v in r.params.items())
            t.add_row(r.job_id, params, r.state, r.node or "-", _fmt(r.metric, ".4f"), r.detail[:80])
        return t

    def poll() -> tuple[list[Any], list[str], str | None]:
        rows = sweeps.status(store, queue, sweep_id, metric)
        alive, stalled = sweep_control.liveness(store, sweep_id)
        return rows, alive, stalled

    rows, alive, stalled = poll()
    if watch and not as_json:
        with Live(table(rows), console=console, refresh_per_second=1) as live:
            while any(r.state == "pending" for r in rows) and stalled is None:
                time.sleep(2)
                rows, alive, stalled = poll()
                live.update(table(rows))
    elif watch:
        while any(r.state == "pending" for r in rows) and stalled is None:
            time.sleep(2)
            rows, alive, stalled = poll()
    best = sweeps.summary(rows, minimize=minimize)
    odd = malformed(store, since=submitted)
    if as_json:
        report = {"sweep_id": sweep_id, "jobs": [_as_dict(r) for r in rows], "summary": best,
                  "workers_alive": alive, "stalled": stalled, "malformed": odd}  # fmt: skip
        print(json.dumps(report, default=str))
    else:
        if not watch:
            console.print(table(rows))
        finished = not any(r.state == "pending" for r in rows)
        searched = bool(record.get("search"))
        title = "trials" if searched else "summary by configuration"
        summary = Table(title=f"{title} ({metric}, best first)")
        for column in (
            "trial" if searched else "config",
            "params",
            "done",
            "dead",
            "pruned",
            f"mean {metric}",
        ):
            summary.add_column(column)
        for s in best:
            params = " ".join(
                f"{k}={_fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in s["params"].items()
            )
            summary.add_row(
                s["config"], params, f"{s['done']}/{s['jobs']}", str(s["dead"]), str(s["pruned"]),
                _fmt(s["mean"], ".4f"),
            )  # fmt: skip
        console.print(summary)
        if searched and best and best[0]["mean"] is not None:
            top = best[0]
            console.print(
                f"best: {top['config']} {metric}={top['mean']:.4f} params {json.dumps(top['params'])}"
            )
        if not finished:
            console.print(f"workers alive: {', '.join(alive) or 'none'}")
        if odd:
            console.print(
                styled(f"{len(odd)} malformed message(s) dead-lettered on this queue since the sweep "
                       f"started; first: {odd[0]['reason'][:120]}", "yellow")
            )  # fmt: skip
        if finished:
            png = sweep_plots.sweep_plot(
                store, record, rows, best, metric, runs_dir / "sweeps" / sweep_id / "sweep.png"
            )
            if png is not None:
                console.print(f"plot: {png}")
    if stalled is not None:
        raise sweep_control.SweepStalled(stalled)
    if any(r.state == "dead" for r in rows) and not any(r.state == "pending" for r in rows):
        raise JobFailed(f"sweep {sweep_id}: {sum(r.state == 'dead' for r in rows)} job(s) dead-lettered")


def main() -> None:
    app(prog_name="lepton-infra")


if __name__ == "__main__":
    main()
