"""Where a sweep stands, as a person or a script reads it: the jobs table (live with --watch), the
summary best first, workers alive, malformed messages, the plot; and the search controller's loop
for a search sweep. Ends with exit 3 when every worker died and 1 when jobs were dead-lettered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from lepton_infra.cli.app import console
from lepton_infra.cli.render import emit, fmt
from lepton_infra.display import styled
from lepton_infra.errors import JobFailed

if TYPE_CHECKING:
    from lepton_infra.inventory import Inventory
    from lepton_infra.workload.sweep import JobRow


def run_search_if_any(inv: Inventory, sweep_id: str, metric: str, runs_dir: Path, as_json: bool) -> None:
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


def _jobs_table(sweep_id: str, rows: list[JobRow], metric: str) -> Table:
    table = Table(title=f"sweep {sweep_id}")
    for column in ("job", "params", "state", "node", metric, "detail"):
        table.add_column(column)
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r.params.items())
        table.add_row(r.job_id, params, r.state, r.node or "-", fmt(r.metric, ".4f"), r.detail[:80])
    return table


def _summary_table(best: list[dict[str, Any]], metric: str, searched: bool) -> Table:
    title = "trials" if searched else "summary by configuration"
    table = Table(title=f"{title} ({metric}, best first)")
    for column in ("trial" if searched else "config", "params", "done", "dead", "pruned", f"mean {metric}"):
        table.add_column(column)
    for s in best:
        params = " ".join(
            f"{k}={fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in s["params"].items()
        )
        table.add_row(
            s["config"], params, f"{s['done']}/{s['jobs']}", str(s["dead"]), str(s["pruned"]),
            fmt(s["mean"], ".4f"),
        )  # fmt: skip
    return table


def sweep_report(
    inv: Inventory, sweep_id: str, metric: str, minimize: bool, watch: bool, runs_dir: Path, as_json: bool
) -> None:
    """What `sweep run`, `status` and `resume` end with: the sweep's jobs (until none is pending
    with `watch`), then the summary, or the one-line SweepReport with --json."""
    import time

    from rich.live import Live

    from lepton_infra.data.sweep_ledger import malformed
    from lepton_infra.workload import sweep as sweeps
    from lepton_infra.workload import sweep_control, sweep_plots

    store, queue = sweeps.open_plane(inv)
    record = sweep_control.load_record(store, sweep_id)
    submitted = float(record.get("submitted", 0))

    def poll() -> tuple[list[JobRow], list[str], str | None]:
        rows = sweeps.status(store, queue, sweep_id, metric)
        alive, stalled = sweep_control.liveness(store, sweep_id)
        return rows, alive, stalled

    rows, alive, stalled = poll()
    if watch and not as_json:
        with Live(_jobs_table(sweep_id, rows, metric), console=console, refresh_per_second=1) as live:
            while any(r.state == "pending" for r in rows) and stalled is None:
                time.sleep(2)
                rows, alive, stalled = poll()
                live.update(_jobs_table(sweep_id, rows, metric))
    elif watch:
        while any(r.state == "pending" for r in rows) and stalled is None:
            time.sleep(2)
            rows, alive, stalled = poll()
    best = sweeps.summary(rows, minimize=minimize)
    odd = malformed(store, since=submitted)
    if as_json:
        from lepton_infra.cli.documents import SweepReport

        document = SweepReport(
            sweep_id=sweep_id, jobs=rows, summary=best, workers_alive=alive, stalled=stalled, malformed=odd
        )
        emit(document, indent=None)  # one line: a script reads the last line of a resumed sweep
    else:
        if not watch:
            console.print(_jobs_table(sweep_id, rows, metric))
        finished = not any(r.state == "pending" for r in rows)
        searched = bool(record.get("search"))
        console.print(_summary_table(best, metric, searched))
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
