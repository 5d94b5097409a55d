"""Helpers for tests that need a pool in a bad state (the pinned host key no longer matches)."""

from __future__ import annotations

from pathlib import Path

from lepton_infra.inventory import Inventory
from lepton_infra.local.keys import random_host_key_line


def with_foreign_host_key(
    inventory: Inventory, node: str | None = None, *, save_to: Path | None = None
) -> Inventory:
    """A copy of `inventory` whose `node` (default: the last node) pins a freshly generated ed25519
    key that the real node does not have, as if the node had been replaced by an impostor.

    With `save_to`, the tampered inventory is also written there (for CLI tests)."""
    target = inventory.node(node).name if node is not None else inventory.nodes[-1].name
    nodes = [
        n.model_copy(update={"host_key": random_host_key_line()}) if n.name == target else n
        for n in inventory.nodes
    ]
    tampered = inventory.model_copy(update={"nodes": nodes})
    # Round-trip through validation so the copy is exactly what a loaded file would give.
    tampered = Inventory.from_json(tampered.to_json(), source="tampered inventory")
    if save_to is not None:
        tampered.save(save_to)
    return tampered
