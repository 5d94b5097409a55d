"""The `lepton-infra` command line: parse, call the library, render. Behaviour lives in the library
(`lepton_infra.workload`, `lepton_infra.local`, `lepton_infra.catalog`), so everything here also
works from Python. Heavy modules are imported inside the command that needs them.

One module per command family (catalog, local, running, runs, sweep, demo), the shared options
and checks in options.py, tables in render.py, the `--json` documents in documents.py. The commands
are registered here, in the order `--help` lists them.

Exit codes: 0 ok, 1 job failed, 2 bad input, 3 infrastructure/connection failure."""

from __future__ import annotations

from lepton_infra.cli import catalog, demo, running, runs
from lepton_infra.cli.app import EXIT_BAD_INPUT, EXIT_INFRA, EXIT_JOB_FAILED, EXIT_OK, app, main
from lepton_infra.cli.local import local_app
from lepton_infra.cli.sweep import sweep_app

app.command()(catalog.catalog)
app.command()(running.run)
app.command()(runs.runs)
app.command()(running.attach)
app.command()(runs.status)
app.command()(runs.top)
app.command()(runs.cancel)
app.command()(running.logs)
app.command()(running.collect)
app.command("inventory")(catalog.inventory)
app.command()(demo.demo)
app.add_typer(sweep_app, name="sweep")
app.add_typer(local_app, name="local")

__all__ = ["EXIT_BAD_INPUT", "EXIT_INFRA", "EXIT_JOB_FAILED", "EXIT_OK", "app", "main"]
