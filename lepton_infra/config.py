"""Stack configuration (`lepton:*` keys in `stacks/Pulumi.<env>.yaml`) parsed and validated in plain
Python, before the program creates any resource. Every error names the config key as the user
wrote it (`lepton:gpusPerNode`), the value, and what is allowed."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lepton_infra.errors import ConfigError

NAMESPACE = "lepton"


@dataclass(frozen=True)
class Key:
    """One `lepton:` config key: its TrainingClusterArgs field, parser, whether required, and a
    description (the same text goes into Pulumi.yaml's config schema)."""

    name: str
    field: str
    kind: str  # "string" | "integer" | "boolean" | "array" | "json" (an object, given as JSON text)
    description: str
    required: bool = False


KEYS: tuple[Key, ...] = (
    Key("cloud", "cloud", "string", "aws, gcp or azure", required=True),
    Key("accelerator", "accelerator", "string", "T4, L4, A10G, A100-40GB, A100-80GB or H100", required=True),
    Key(
        "allowedSshCidrs",
        "allowed_ssh_cidrs",
        "array",
        "CIDR blocks allowed to SSH to the nodes",
        required=True,
    ),
    Key("region", "region", "string", "cloud region, e.g. us-east-1 / us-central1 / eastus"),
    Key("zone", "zone", "string", "zone within the region (GCP), optional"),
    Key("gpusPerNode", "gpus_per_node", "integer", "GPUs per node (a catalog row must offer it)"),
    Key("nodes", "nodes", "integer", "number of nodes, 1-64"),
    Key("spot", "spot", "boolean", "spot/preemptible VMs (cheaper, may be reclaimed)"),
    Key("allowWorldSsh", "allow_world_ssh", "boolean", "allow 0.0.0.0/0 or ::/0 in allowedSshCidrs"),
    Key(
        "sshPublicKey",
        "ssh_public_key",
        "string",
        "OpenSSH public key for the login user; generated if unset",
    ),
    Key(
        "idleShutdownMinutes",
        "idle_shutdown_minutes",
        "integer",
        "power off after this long without a job (0: never)",
    ),
    Key("maxLifetimeHours", "max_lifetime_hours", "integer", "power off this long after boot in any case"),
    Key("diskGb", "disk_gb", "integer", "root disk size per node in GB"),
    Key(
        "image", "image", "string", "VM image override (AMI id, GCP image, Azure publisher:offer:sku:version)"
    ),
    Key("storeRetentionDays", "store_retention_days", "integer", "expire stored objects after N days"),
    Key(
        "queueVisibilityTimeoutS",
        "queue_visibility_timeout_s",
        "integer",
        "seconds a received job stays hidden",
    ),
    Key(
        "queueMaxReceiveCount", "queue_max_receive_count", "integer", "receives before a job is dead-lettered"
    ),
    Key("python", "python", "string", "interpreter with torch on the nodes (default: the image's own)"),
    Key(
        "privateEgress",
        "private_egress",
        "string",
        "how nodes without a public IP get out: nat (internet via a NAT gateway) or endpoints (cloud services only)",
    ),
    Key(
        "jump",
        "jump",
        "json",
        'bastion for private nodes, JSON: {"host": ..., "port": 22, "user": ..., "host_key": "ssh-ed25519 ..."}',
    ),
)
_BY_NAME = {k.name: k for k in KEYS}
_BY_FIELD = {k.field: k for k in KEYS}
# ObjectStoreArgs/JobQueueArgs name these fields without the cluster's store_/queue_ prefix.
_BY_FIELD.update(
    retention_days=_BY_FIELD["store_retention_days"],
    visibility_timeout_s=_BY_FIELD["queue_visibility_timeout_s"],
    max_receive_count=_BY_FIELD["queue_max_receive_count"],
)
# Catalog errors name what was looked up, not a field: map them to the keys the user set.
_CATALOG_HINTS = (
    ("unknown cloud", "cloud"),
    ("unknown accelerator", "accelerator"),
    ("per node is not offered", "gpusPerNode"),
    ("region ", "region"),
)


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ConfigError(f"lepton:{key} is {raw!r}; allowed: true or false")


def _int(key: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"lepton:{key} is {raw!r}; allowed: a whole number")
    try:
        return int(str(raw).strip())
    except ValueError as exc:
        raise ConfigError(f"lepton:{key} is {raw!r}; allowed: a whole number") from exc


def _array(key: str, raw: Any) -> list[str]:
    value = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value = (
                json.loads(text)
                if text.startswith("[")
                else [p.strip() for p in text.split(",") if p.strip()]
            )
        except json.JSONDecodeError as exc:
            raise ConfigError(f'lepton:{key} is {raw!r}; allowed: a list like ["203.0.113.0/24"]') from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'lepton:{key} is {raw!r}; allowed: a list of strings like ["203.0.113.0/24"]')
    return value


def _json(key: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw  # structured config arrives already parsed
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"lepton:{key} is {raw!r}; allowed: a JSON object ({exc.msg})") from exc


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "json": _json,
    "boolean": _bool,
    "integer": _int,
    "array": _array,
    "string": lambda key, raw: str(raw),
}


@dataclass(frozen=True)
class StackConfig:
    """Validated stack configuration: `args` are ready for TrainingCluster; `hourly_cost_usd` is
    the catalog price of the whole pool (None when the catalog has no price)."""

    args: Any  # TrainingClusterArgs (typed loosely: importing components pulls in pulumi)
    hourly_cost_usd: float | None


def parse(raw: Mapping[str, Any], *, cluster: str, env: str) -> StackConfig:
    """Parse and validate `lepton:` config values (keys without the namespace). Raises ConfigError
    for the first problem; unknown keys are rejected with a did-you-mean."""
    from lepton_infra.components.args import TrainingClusterArgs

    for key in raw:
        if key not in _BY_NAME:
            guess = difflib.get_close_matches(key, list(_BY_NAME), n=1)
            hint = f" (did you mean lepton:{guess[0]}?)" if guess else ""
            raise ConfigError(f"unknown config key lepton:{key}{hint}; allowed keys: {', '.join(_BY_NAME)}")
    for spec in KEYS:
        if spec.required and raw.get(spec.name) in (None, ""):
            raise ConfigError(
                f"lepton:{spec.name} is not set; it is required ({spec.description}): "
                f"`pulumi config set lepton:{spec.name} ...`"
            )
    values = {_BY_NAME[k].field: _PARSERS[_BY_NAME[k].kind](k, v) for k, v in raw.items() if v is not None}
    values["cloud"] = str(values["cloud"]).lower()
    args = TrainingClusterArgs(cluster=cluster, env=env, **values)
    try:
        entry = args.validate() if args.ssh_public_key else _validate_generated_key(args)
        _check_cloud_specifics(args)
    except ConfigError as exc:
        raise _named(exc) from exc
    price = entry.hourly_usd(args.spot)
    return StackConfig(args=args, hourly_cost_usd=None if price is None else round(price * args.nodes, 4))


def _check_cloud_specifics(args: Any) -> None:
    """The cloud module's own checks (zone, image, ...): they need its SDK, not any resource."""
    from lepton_infra.components.neutral import check_pool_args

    check_pool_args(args.pool_args())


def _validate_generated_key(args: Any) -> Any:
    from lepton_infra.components.neutral import _validate_without_key

    return _validate_without_key(args)


def _named(exc: ConfigError) -> ConfigError:
    """Rewrite an args/catalog error so it names the config key instead of the Python field."""
    message = str(exc)
    for field_name, spec in sorted(_BY_FIELD.items(), key=lambda kv: -len(kv[0])):
        for prefix in (f"{field_name} ", f"{field_name}["):
            if message.startswith(prefix):
                return ConfigError(f"lepton:{spec.name}{message[len(field_name) :]}")
    for needle, key in _CATALOG_HINTS:
        if needle in message:
            return ConfigError(f"lepton:{key}: {message}")
    return ConfigError(f"lepton config: {message}")


def schema() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:` block for these keys (tests check the file matches)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in KEYS:
        # Pulumi.yaml's config types are string/integer/boolean/array: an object travels as JSON text.
        kind = "string" if spec.kind == "json" else spec.kind
        entry: dict[str, Any] = {"type": kind, "description": spec.description}
        if spec.kind == "array":
            entry["items"] = {"type": "string"}
        out[f"{NAMESPACE}:{spec.name}"] = entry
    return out
