"""Everything that runs ON a node, in one place. Standard library only: a node does not have
lepton_infra installed, so each program here is sent as source.

- First boot (embedded in cloud-init by the components): `aws_fetch_secret.py` and
  `metadata_fetch_secret.py` print the node's pinned host key from its cloud's secret store;
  `azure_stop.py` deallocates an Azure node with its own managed identity (the watchdog's stop).
- Every run (sent by the workload layer): `bootstrap/` (a package) and `preflight.py` are sent as
  `python -c SOURCE` (they must work before anything was shipped); `agent.py` is shipped with each
  run into `~/.lepton/runs/<run-id>/.agent/agent.py`; `upload/` (a package) and `metrics.py` (the
  node metrics sampler) travel in the launch spec and the agent writes them beside the run;
  `wheels.py` installs the data clients from wheels the controller brought.
- A package travels as ONE source, a bundle (`bundle()` below, run by `loader.py`): its modules
  keep ordinary relative imports and still arrive as one text, in one round trip.

This `__init__` is the controller's handle on them and is never sent."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

NODE_DIR = Path(__file__).parent


def source(filename: str) -> str:
    """The text of the node-side program `filename` (as it is sent to a node)."""
    return (NODE_DIR / filename).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Bundle:
    """A node-side package as one Python source: `python -c source ARGS` runs its `main(argv)`,
    importing the file gives its `__all__`. `name` is the package's name on the node, `<prefix>_`
    and the first 16 hex digits of the sha256 of all its modules and the loader, so any change to
    any of them is a new name (an installed or cached copy is keyed by it)."""

    name: str
    sources: dict[str, str]  # module name inside the package ("__init__" too) -> its text
    source: str


def bundle(package: str | Path, prefix: str) -> Bundle:
    """The bundle of the node-side package `lepton_infra/node/<package>/` (or of the folder
    `package`, a Path); flat: its *.py only, no subpackages."""
    folder = NODE_DIR / package  # an absolute Path stays itself
    sources = {path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.py"))}
    if "__init__" not in sources:
        raise ValueError(f"{folder} is not a package (no __init__.py): nothing to bundle")
    loader = source("loader.py")
    hasher = hashlib.sha256(loader.encode())
    for module, text in sources.items():
        data = text.encode()
        hasher.update(f"\0{module}\0{len(data)}\0".encode() + data)  # length-prefixed: unambiguous
    name = f"{prefix}_{hasher.hexdigest()[:16]}"
    return Bundle(name, sources, f"{loader}\n_open_bundle({name!r}, {sources!r}, globals())\n")
