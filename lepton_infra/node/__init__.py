"""Everything that runs ON a node, in one place. Standard library only: a node does not have
lepton_infra installed, so each file here is sent as source.

- First boot (embedded in cloud-init by the components): `aws_fetch_secret.py` and
  `metadata_fetch_secret.py` print the node's pinned host key from its cloud's secret store;
  `azure_stop.py` deallocates an Azure node with its own managed identity (the watchdog's stop).
- Every run (sent by the workload layer): `bootstrap.py` and `preflight.py` are sent as
  `python -c SOURCE` (they must work before anything was shipped); `agent.py` is shipped with each
  run into `~/.lepton/runs/<run-id>/.agent/agent.py`; `upload.py` and `metrics.py` (the node metrics
  sampler) travel in the launch spec and the agent writes them beside the run; `wheels.py` installs
  the data clients from wheels the controller brought.

This `__init__` is the controller's handle on them and is never sent."""

from __future__ import annotations

from pathlib import Path

NODE_DIR = Path(__file__).parent


def source(filename: str) -> str:
    """The text of the node-side program `filename` (as it is sent to a node)."""
    return (NODE_DIR / filename).read_text(encoding="utf-8")
