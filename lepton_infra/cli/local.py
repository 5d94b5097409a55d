"""`local up|down|status`: the embedded local pool, real sshd nodes on 127.0.0.x (lepton_infra.local)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lepton_infra.cli.app import console
from lepton_infra.cli.options import JsonOpt, StateDirOpt
from lepton_infra.cli.render import emit, render_pool
from lepton_infra.display import join, plain, styled

local_app = typer.Typer(help="The embedded local pool: real sshd nodes on loopback.", no_args_is_help=True)


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
    render_pool(local.status(state_dir))


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
        emit(rows)
        return
    if not rows:
        console.print(f"no local pool in {state_dir}")
        return
    render_pool(rows)
