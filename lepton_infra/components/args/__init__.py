"""Arguments of the cloud-neutral components: ONE typed model per concept, the source of truth.

Each `*Args` is a pydantic dataclass (the Pulumi component convention: one typed args object per
component; `dataclasses.fields`/`replace` keep working). Each field carries its type, its bounds,
its description and, for the stack's `lepton:*` keys, its config key (see `config_key`): the Pulumi
program's keys (`lepton_infra.config.KEYS`), Pulumi.yaml's config block and the component package's
inputs (`lepton_infra.provider.inputs`) are derived from or checked against these fields.

A spec is validated once, when it is constructed, and normalised there (`cloud="AWS"` becomes
`"aws"`); a bad value raises `ConfigError` naming the field, the value and what is allowed, before
any resource exists. Components receive an already valid spec and never re-check it; `validate()`
only returns the catalog row and changes nothing. Cloud-specific shapes (an existing network's ids,
an image string) are checked by the cloud's pool `plan` (`components/pool.py`), which knows them.

Laid out as: `checks` (plain checks), `fields` (how a field is declared and read), one module per
spec (`gpu_pool`, `store_queue`, `cluster`); every public name is importable from here."""

from lepton_infra.components.args.checks import (
    MAX_NODES,
    PRIVATE_EGRESS,
    WORLD_CIDRS,
    check_cidrs,
    check_cloud,
    check_int,
    check_jump,
    check_public_key,
    check_tags,
    is_internal,
)
from lepton_infra.components.args.cluster import TrainingClusterArgs
from lepton_infra.components.args.fields import (
    Cloud,
    ClusterName,
    EnvName,
    Extra,
    Flag,
    Name,
    Tags,
    UserTags,
    config_key,
    default,
    description,
)
from lepton_infra.components.args.gpu_pool import GpuVmPoolArgs
from lepton_infra.components.args.store_queue import JobQueueArgs, ObjectStoreArgs

__all__ = [
    "MAX_NODES",
    "PRIVATE_EGRESS",
    "WORLD_CIDRS",
    "Cloud",
    "ClusterName",
    "EnvName",
    "Extra",
    "Flag",
    "GpuVmPoolArgs",
    "JobQueueArgs",
    "Name",
    "ObjectStoreArgs",
    "Tags",
    "TrainingClusterArgs",
    "UserTags",
    "check_cidrs",
    "check_cloud",
    "check_int",
    "check_jump",
    "check_public_key",
    "check_tags",
    "config_key",
    "default",
    "description",
    "is_internal",
]
