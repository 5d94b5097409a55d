"""The commands that answer before anything runs: `catalog` (which instance carries which GPUs,
at what dated price) and `inventory` (a deployed stack's nodes as an inventory file)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from lepton_infra.cli.app import console
from lepton_infra.cli.options import JsonOpt
from lepton_infra.errors import ConfigError


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


def inventory(
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
    cmd = [pulumi, "stack", "output", "--show-secrets", "--json", "--stack", stack, "--cwd", str(cwd)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"`pulumi stack output` failed for stack {stack!r}: {proc.stderr.strip()}")
    from lepton_infra.components.stack_inventory import inventory_from_stack_output

    inv = inventory_from_stack_output(proc.stdout, out.parent)
    inv.save(out)
    console.print(
        f"wrote {out} ({len(inv.nodes)} node(s), cloud {inv.cloud}); use it with `--inventory {out}`"
    )
