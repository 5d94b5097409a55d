"""The options several commands share (declared once, so `--inventory` means the same everywhere)
and the checks every command runs on its arguments before it contacts anything."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lepton_infra.cli.app import err_console
from lepton_infra.errors import ConfigError

if TYPE_CHECKING:
    from lepton_infra.inventory import Inventory

DEFAULT_INVENTORY = Path(".lepton/local/inventory.json")

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
StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Where the pool keeps keys, configs and logs.")
]
RunIdArg = Annotated[
    str | None, typer.Argument(help="The run. Default: the latest one in --runs-dir.", show_default=False)
]


def positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def load_inventory(path: Path) -> Inventory:
    from lepton_infra.inventory import Inventory

    return Inventory.load(path)


def check_run_id(run_id: str | None) -> None:
    from lepton_infra.workload.jobspec import RUN_ID_RE

    if run_id is not None and not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"--run-id {run_id!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def run_or_latest(run_id: str | None, runs_dir: Path) -> str:
    """The run a command is about: RUN_ID when given, else the newest run in RUNS_DIR (said on stderr)."""
    from lepton_infra.workload.record import RunStore

    if run_id is not None:
        check_run_id(run_id)
        return run_id
    latest = RunStore(runs_dir).latest()
    err_console.print(f"run {latest} (the latest in {runs_dir}/)")
    return latest
