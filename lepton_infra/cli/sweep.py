"""`sweep`: a sub-app. `sweep run WORKLOAD` runs a workload once per grid point (or per search
trial) through the cluster's queue; `sweep status|resume|cancel SWEEP_ID` act on one later. The
form every earlier version took, `sweep WORKLOAD ...`, still means `sweep run WORKLOAD ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from lepton_infra.cli.app import console
from lepton_infra.cli.options import (
    DEFAULT_INVENTORY,
    InventoryOpt,
    JsonOpt,
    RunsDirOpt,
    TimeoutOpt,
    load_inventory,
    positive,
)
from lepton_infra.cli.sweep_report import run_search_if_any, sweep_report
from lepton_infra.errors import ConfigError

DEFAULT_COMMAND = "run"


class _RunByDefault(TyperGroup):
    """Routes `sweep WORKLOAD ...` to `sweep run`, and a verb that follows options
    (`sweep -i inv.json status ID`, as the single command of old accepted) to that verb."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or args[0] not in (*self.commands, *ctx.help_option_names):
            args = self._routed(args)
        return super().parse_args(ctx, args)

    def _routed(self, args: list[str]) -> list[str]:
        run = self.commands[DEFAULT_COMMAND]
        takes_value = {
            name
            for p in run.params
            if p.param_type_name == "option" and not getattr(p, "is_flag", False)
            for name in p.opts
        }
        i = 0
        while i < len(args) and args[i] != "--" and args[i].startswith("-"):
            i += 2 if args[i] in takes_value else 1  # `--opt=value` is one token
        if i < len(args) and args[i] in self.commands and args[i] != DEFAULT_COMMAND:
            return [args[i], *args[:i], *args[i + 1 :]]
        return [DEFAULT_COMMAND, *args]


sweep_app = typer.Typer(
    cls=_RunByDefault,
    help="Run WORKLOAD once per --grid combination (x --repeats) through the cluster's queue, a worker per\n"
    "node; results land in <store>/sweeps/<id>/<job>/. `sweep status ID` shows where a sweep stands,\n"
    "`sweep resume ID` restarts its workers, `sweep cancel ID` ends it.\n\n"
    "Without a verb, `sweep WORKLOAD ...` is `sweep run WORKLOAD ...`.",
)

SweepIdArg = Annotated[str, typer.Argument(help="The sweep (its id, as `sweep run` printed it).")]
MetricOpt = Annotated[str, typer.Option("--metric", help="Key of the job's metrics.json to rank by.")]
MinimizeOpt = Annotated[bool, typer.Option("--minimize", help="Lower metric is better.")]
DEFAULT_METRIC = "final_test_accuracy"


@sweep_app.command(DEFAULT_COMMAND)
def run(
    workload: Annotated[
        Path, typer.Argument(help="Workload folder: one job of it per combination or trial.")
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
    metric: MetricOpt = DEFAULT_METRIC,
    minimize: MinimizeOpt = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Submit and return; `sweep status ID` later.")
    ] = False,
    # Taken as the single `sweep` command of old took it (a grid sweep watches unless --detach).
    _watch: Annotated[bool, typer.Option("--watch", hidden=True)] = False,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Run WORKLOAD once per --grid combination (x --repeats), or per --search trial, through the
    cluster's queue, a worker per node; results land in <store>/sweeps/<id>/<job>/."""
    from lepton_infra.workload import sweep as sweeps

    inv = load_inventory(inventory)
    for name, value in (("--connect-timeout", connect_timeout), ("--heartbeat", heartbeat),
                        ("--retry-backoff", retry_backoff)):  # fmt: skip
        positive(name, value)
    settings = sweeps.WorkerSettings(
        visibility_timeout_s=visibility_timeout,
        heartbeat_s=heartbeat,
        retry_backoff_s=retry_backoff,
        snapshot_s=snapshot_every,
    )
    if search is not None:
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
            inv, workload, {}, args=list(args or []), sweep_id=sweep_id, connect_timeout=connect_timeout,
            settings=dataclasses.replace(settings, check_s=1.0), jobs=[],
            extra={"search": dataclasses.asdict(spec)},
        )  # fmt: skip
        if not as_json:
            console.print(
                f"sweep {started.sweep_id}: {search} search, {trials} trial(s), workers on {', '.join(started.workers)}"
            )
        run_search_if_any(inv, started.sweep_id, metric, runs_dir, as_json)
        watch = False
    else:
        started = sweeps.submit(
            inv,
            workload,
            sweeps.parse_grid(grid or []),
            repeats=repeats,
            args=list(args or []),
            sweep_id=sweep_id,
            connect_timeout=connect_timeout,
            settings=settings,
        )
        if not as_json:
            console.print(
                f"sweep {started.sweep_id}: {len(started.jobs)} job(s) queued, workers on {', '.join(started.workers)}"
            )
        watch = not detach
    sweep_report(inv, started.sweep_id, metric, minimize, watch, runs_dir, as_json)


@sweep_app.command()
def status(
    sweep_id: SweepIdArg,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    metric: MetricOpt = DEFAULT_METRIC,
    minimize: MinimizeOpt = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until every job ended.")] = False,
    runs_dir: RunsDirOpt = Path("runs"),
    as_json: JsonOpt = False,
) -> None:
    """Where a sweep stands: every job, the summary best first, its workers (exit 3 if all died)."""
    sweep_report(load_inventory(inventory), sweep_id, metric, minimize, watch, runs_dir, as_json)


@sweep_app.command()
def resume(
    sweep_id: SweepIdArg,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    metric: MetricOpt = DEFAULT_METRIC,
    minimize: MinimizeOpt = False,
    detach: Annotated[bool, typer.Option("--detach", help="Restart the workers and return.")] = False,
    runs_dir: RunsDirOpt = Path("runs"),
    connect_timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Restart a sweep's workers on the inventory's nodes (and a search's controller), then watch it."""
    from lepton_infra.workload import sweep_control

    inv = load_inventory(inventory)
    positive("--connect-timeout", connect_timeout)
    workers = sweep_control.resume(inv, sweep_id, connect_timeout)
    if not as_json:
        restarted = ", ".join(workers) or "none (workers still alive)"
        console.print(f"sweep {sweep_id}: workers restarted on {restarted}")
    run_search_if_any(inv, sweep_id, metric, runs_dir, as_json)
    sweep_report(inv, sweep_id, metric, minimize, not detach, runs_dir, as_json)


@sweep_app.command()
def cancel(sweep_id: SweepIdArg, inventory: InventoryOpt = DEFAULT_INVENTORY) -> None:
    """End a sweep: its queued jobs removed, running ones stopped, its record kept."""
    from lepton_infra.workload import sweep_control

    purged = sweep_control.cancel(load_inventory(inventory), sweep_id)
    console.print(f"sweep {sweep_id}: cancelled; {purged} queued job(s) removed, its record kept")
