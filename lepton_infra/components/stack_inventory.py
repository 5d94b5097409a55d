"""Turn a deployed stack's outputs into an inventory file the workload layer can use. Imports no
Pulumi: the CLI calls it with the JSON of `pulumi stack output --json --show-secrets`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory

KEY_FILE = "id_ed25519"


def key_file_name(cluster: object) -> str:
    """`<cluster>_id_ed25519`: one key file per cluster, so inventories of several stacks written to
    the same folder do not overwrite each other's login key."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(cluster or "")).strip("._")
    return f"{stem}_{KEY_FILE}" if stem else KEY_FILE


def inventory_from_stack_output(json_text: str, key_dir: Path) -> Inventory:
    """`json_text` is either all stack outputs (an object with `inventory` and, when the stack
    generated the login key, `private_key`) or the `inventory` output alone (an object, or a JSON
    string holding one). A private key is written to `key_dir/<cluster>_id_ed25519` (0600) and
    referenced from `private_key_path`."""
    try:
        outputs: Any = json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"stack output is not JSON ({exc.msg}); expected `pulumi stack output --json`"
        ) from exc
    if isinstance(outputs, dict) and "inventory" in outputs:
        inventory_doc, private_key = outputs["inventory"], outputs.get("private_key")
    else:
        inventory_doc, private_key = outputs, None
    if isinstance(inventory_doc, str):
        try:
            inventory_doc = json.loads(inventory_doc)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"stack output `inventory` is not JSON ({exc.msg})") from exc
    if not isinstance(inventory_doc, dict):
        raise ConfigError("stack output has no `inventory` object; is this a lepton TrainingCluster stack?")
    doc = dict(inventory_doc)
    if private_key:
        if not isinstance(private_key, str) or "PRIVATE KEY" not in private_key:
            raise ConfigError(
                "stack output `private_key` is not an OpenSSH private key (was it shown with --show-secrets?)"
            )
        key_dir.mkdir(parents=True, exist_ok=True)
        key_path = key_dir / key_file_name(doc.get("cluster"))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(private_key if private_key.endswith("\n") else private_key + "\n")
        key_path.chmod(0o600)
        doc["private_key_path"] = str(key_path.resolve())
    return Inventory.from_dict(doc, source="stack output `inventory`")
