"""Everything that runs ON a node, in one place. Standard library only: a node does not have
lepton_infra installed, so each program here is sent as source.

- First boot (embedded in cloud-init by the components): `aws_fetch_secret.py` and
  `metadata_fetch_secret.py` print the node's pinned host key from its cloud's secret store;
  `azure_stop.py` deallocates an Azure node with its own managed identity (the watchdog's stop).
- Every run (sent by the workload layer): `bootstrap/` (a package) and `preflight.py` are sent as
  `python -c SOURCE` (they must work before anything was shipped); the agent (`agent.py` and its
  `agent_*.py` modules) is shipped with each run into `~/.lepton/runs/<run-id>/.agent/agent.py`;
  `upload/` (a package) and `metrics.py` (the node metrics sampler) travel in the launch spec and
  the agent writes them beside the run; `wheels.py` installs the data clients from wheels the
  controller brought.
- Several modules travel as ONE thing, in one round trip, in one of two forms: a program sent as
  text (`python -c`) is a bundle (`bundle()` below, run by `loader.py`: the modules keep ordinary
  relative imports); the agent, which the node runs from a file, is a zip (`agent_program()`:
  Python runs a zip with a `__main__.py` natively, and a file on the node needs no loader).

This `__init__` is the controller's handle on them and is never sent."""

from __future__ import annotations

import hashlib
import io
import zipfile
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


# The agent's modules: agent.py is the entry point, the others one job each (see agent.py).
AGENT_MODULES = (
    "agent.py",
    "agent_files.py",
    "agent_procs.py",
    "agent_supervise.py",
    "agent_results.py",
    "agent_pack.py",
)
_AGENT_MAIN = "import sys\n\nimport agent\n\nsys.exit(agent.main(sys.argv))\n"


def agent_program() -> bytes:
    """The agent as ONE file: a zip of its modules plus a `__main__.py` that runs agent.main, which
    `python agent.py COMMAND RUN_DIR` runs as a program (Python runs any zip with a __main__.py),
    its modules imported from inside it. Byte-for-byte the same for the same sources (fixed
    timestamps, stored uncompressed: the sources stay readable in it), so its digest names the
    version and an unchanged agent is never sent twice."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, text in (("__main__.py", _AGENT_MAIN), *((m, source(m)) for m in AGENT_MODULES)):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, text)
    return buf.getvalue()
