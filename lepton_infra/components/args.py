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
an image string) are checked by the per-cloud module's `check_pool_args`, which knows them."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass

from lepton_infra.catalog import CLOUDS, CatalogEntry, lookup
from lepton_infra.components.images import python_for
from lepton_infra.errors import ConfigError

WORLD_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
PRIVATE_EGRESS = ("nat", "endpoints")
MAX_NODES = 64
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


# Address space reachable only through a VPN/peering (RFC 1918, carrier-grade NAT, IPv6 ULA).
_INTERNAL_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def is_internal(cidr: str) -> bool:
    """Whether a range lies in internal address space (what decides a node's public IP)."""
    n = ipaddress.ip_network(cidr, strict=False)
    return any(n.version == i.version and n.subnet_of(i) for i in _INTERNAL_NETS)  # type: ignore[arg-type]


def check_cloud(cloud: object, field_name: str = "cloud") -> str:
    if not isinstance(cloud, str) or cloud.lower() not in CLOUDS:
        raise ConfigError(f"{field_name} is {cloud!r}; allowed: {', '.join(CLOUDS)}")
    return cloud.lower()


def check_int(value: object, field_name: str, low: int, high: int | None = None) -> int:
    """Whole numbers only (a bool is not one), within [low, high]."""
    allowed = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field_name} is {value!r}; allowed: {allowed}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{field_name} is {value}; allowed: {allowed}")
    return value


def check_cidrs(cidrs: object, allow_world: bool, field_name: str = "allowed_ssh_cidrs") -> list[str]:
    """Every entry a valid IPv4/IPv6 network; world-open only when explicitly allowed."""
    if isinstance(cidrs, str) or not isinstance(cidrs, Sequence):
        raise ConfigError(
            f"{field_name} is {cidrs!r}; allowed: a list of CIDR blocks like ['203.0.113.0/24']"
        )
    out: list[str] = []
    for i, cidr in enumerate(cidrs):
        try:
            network = ipaddress.ip_network(str(cidr), strict=True)
        except ValueError as exc:
            raise ConfigError(
                f"{field_name}[{i}] is {cidr!r}: not a CIDR block ({exc}); write it like '203.0.113.0/24'"
            ) from exc
        if network.prefixlen == 0 and not allow_world:
            raise ConfigError(
                f"{field_name}[{i}] is {cidr!r}: that opens SSH to the whole internet; list your own "
                "networks instead, or set allow_world_ssh=True (lepton:allowWorldSsh) if you really mean it"
            )
        out.append(str(network))
    return out


def check_public_key(key: object, field_name: str = "ssh_public_key") -> str:
    """An OpenSSH public key line whose base64 body really encodes a key of the named type."""
    if not isinstance(key, str):
        raise ConfigError(f"{field_name} must be an OpenSSH public key line, got {type(key).__name__}")
    parts = key.strip().split()
    shown = key[:40] + ("..." if len(key) > 40 else "")
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise ConfigError(
            f"{field_name} is {shown!r}: expected an OpenSSH public key line starting with one of "
            f"{', '.join(_KEY_TYPES)} (e.g. the contents of ~/.ssh/id_ed25519.pub)"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{field_name} is {shown!r}: its key data is not valid base64 of an SSH key"
        ) from exc
    if embedded != parts[0]:
        raise ConfigError(
            f"{field_name} is {shown!r}: the key data says {embedded!r}, the line says {parts[0]!r}"
        )
    return " ".join(parts[:3])


def check_tags(tags: object, field_name: str = "tags") -> dict[str, str]:
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ConfigError(f"{field_name} is {tags!r}; allowed: a mapping of string keys to string values")
    return dict(tags)


def _check_mapping(value: object, field_name: str) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{field_name} is {value!r}; allowed: a mapping (or leave it unset)")


def _check_name(value: str | None, field_name: str) -> None:
    if value is not None and not _NAME_RE.match(value):
        raise ConfigError(
            f"{field_name} is {value!r}; allowed: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def check_jump(jump: object, allowed_ssh_cidrs: Sequence[str]) -> dict[str, Any] | None:
    """The bastion the inventory names for private nodes (`host`, `port`, `user`, `host_key`,
    pinned like the nodes'), plus `source_cidr`: the address (range) the NODES see the bastion's
    connections come from. For a bastion inside the cloud network that is its private address, not
    the public `host` the controller dials, so the firewall check uses `source_cidr` (default: `host`
    when it is an address) and the jump host's public address stays out of `allowed_ssh_cidrs`, which
    decides whether nodes get public IPs. Returned in the inventory's form (without `source_cidr`)."""
    if jump is None:
        return None
    from pydantic import ValidationError

    from lepton_infra.inventory import Jump

    body = dict(jump) if isinstance(jump, Mapping) else jump
    source = body.pop("source_cidr", None) if isinstance(body, dict) else None
    try:
        model = Jump.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'jump'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"jump is {jump!r}: {problems}; allowed: {{host, port (default 22), user, host_key, "
            "source_cidr}} with host_key the bastion's public host key line"
        ) from exc
    _check_jump_source(model.host, source, allowed_ssh_cidrs)
    return model.model_dump()


def _check_jump_source(host: str, source: object, allowed_ssh_cidrs: Sequence[str]) -> None:
    """The nodes must accept SSH from where the bastion connects: `source` (or `host` when it is an
    address; a DNS name cannot be checked here) inside some `allowed_ssh_cidrs` range."""
    allowed = [ipaddress.ip_network(c, strict=False) for c in allowed_ssh_cidrs]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if source is None:
        if address is not None and not any(address in n for n in allowed):
            raise ConfigError(
                f"jump host {host} is outside allowed_ssh_cidrs {list(allowed_ssh_cidrs)!r}: the nodes "
                f"would refuse the bastion; for a bastion inside the nodes' network set jump.source_cidr "
                f"to the private address (range) it connects from and list that range in "
                f"allowed_ssh_cidrs; for one outside, add its address (e.g. '{host}/32')"
            )
        return
    try:
        network = ipaddress.ip_network(str(source), strict=False)
    except ValueError as exc:
        raise ConfigError(
            f"jump.source_cidr is {source!r}: not a CIDR block ({exc}); allowed: the bastion's private "
            "address or range as the nodes see it, like '10.0.5.10/32'"
        ) from exc
    if not any(network.version == n.version and network.subnet_of(n) for n in allowed):  # type: ignore[arg-type]
        raise ConfigError(
            f"jump.source_cidr {network} is outside allowed_ssh_cidrs {list(allowed_ssh_cidrs)!r}: the "
            f"nodes would refuse the bastion; add '{network}' to allowed_ssh_cidrs"
        )
    own = None if address is None else f"{address}/{address.max_prefixlen}"
    if own is not None and not is_internal(own) and own in allowed_ssh_cidrs:
        raise ConfigError(
            f"allowed_ssh_cidrs lists the bastion's public address {host}, but the nodes see it as "
            f"jump.source_cidr {network}: that entry would only give every node a public IP; remove it"
        )


# ---------------------------------------------------------------- the models

T = TypeVar("T")
_MODEL = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
_PYDANTIC_ALLOWED = {
    "bool_type": "true or false",
    "string_type": "a string",
    "int_type": "a whole number",
    "dict_type": "a mapping (or leave it unset)",
    "list_type": "a list",
    "missing_argument": "it is required",
    "unexpected_keyword_argument": "the fields of the model",
}


def _config_error(cls: type, exc: ValidationError) -> ConfigError:
    """The first problem as a ConfigError: our own checks' messages as they are, pydantic's type
    errors as `<field> is <value>; allowed: <what>`."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    name = ".".join(str(p) for p in err["loc"]) or cls.__name__
    allowed = _PYDANTIC_ALLOWED.get(err["type"], err["msg"])
    if err["type"] == "unexpected_keyword_argument":
        allowed = ", ".join(f.name for f in fields(cls))
        return ConfigError(f"{cls.__name__}: unknown argument {name!r}; allowed: {allowed}")
    if err["type"] == "missing_argument":
        return ConfigError(f"{name} is not set; it is required ({cls.__name__})")
    return ConfigError(f"{name} is {err['input']!r}; allowed: {allowed}")


def _config_errors(model: type) -> None:
    """Make construction of the pydantic dataclass `model` raise ConfigError (exit 2) instead of
    pydantic's ValidationError, so every caller sees one error type naming the field."""
    init = vars(model)["__init__"]  # the one pydantic generated for this class

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise _config_error(model, exc) from None

    __init__.__doc__ = init.__doc__
    setattr(model, "__init__", __init__)  # noqa: B010  (mypy forbids assigning __init__)


def _trusted(cls: type[T], **values: Any) -> T:
    """An instance of `cls` from values taken from an already valid spec (a part of it, or a copy
    with the cluster's own name and key), built without validating a second time."""
    obj = cls.__new__(cls)
    obj.__dict__.update(values)
    return obj


def _field(description: str, *, config: str | None = None, required_key: bool = False, **kw: Any) -> Any:
    """A model field: `description` is the one text every interface shows (config key, package
    input); `config` is its `lepton:` key name when the Pulumi program offers it."""
    extra: dict[str, Any] = {}
    if config is not None:
        extra = {"config_key": config, "config_required": required_key}
    return Field(description=description, json_schema_extra=extra or None, **kw)


def _whole(low: int, high: int | None = None) -> Any:
    """A whole number in [low, high] (a bool is not one); the bounds are stated once, here."""

    def check(value: object, info: ValidationInfo) -> int:
        return check_int(value, str(info.field_name), low, high)

    return BeforeValidator(check)


def _before(check: Any) -> Any:
    """A before-validator from a `check(value, field_name)` function."""
    return BeforeValidator(lambda value, info: check(value, str(info.field_name)))


def _optional_whole(low: int, high: int) -> Any:
    def check(value: object, info: ValidationInfo) -> int | None:
        return None if value is None else check_int(value, str(info.field_name), low, high)

    return BeforeValidator(check)


def _strict_bool(value: object, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field_name} is {value!r}; allowed: true or false")
    return value


def _mapping(value: object, field_name: str) -> Any:
    _check_mapping(value, field_name)
    return value


def _name(value: object, field_name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{field_name} is {value!r}; allowed: a string")
    _check_name(value, field_name)
    return value


def _user(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not _USER_RE.match(value):
        raise ConfigError(f"{field_name} is {value!r}; allowed: a Linux user name like 'lepton'")
    return value


def _egress(value: object, field_name: str) -> str:
    if value not in PRIVATE_EGRESS:
        raise ConfigError(
            f"{field_name} is {value!r}; allowed: {', '.join(PRIVATE_EGRESS)} "
            "(nat: internet through a NAT gateway; endpoints: only the cloud's own services)"
        )
    return str(value)


def _key(value: object, field_name: str) -> Any:
    """A literal key is checked; a pulumi Output (a key generated in the program) passes as is."""
    return check_public_key(value, field_name) if isinstance(value, str) else value


def _cidr_list(value: object, field_name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(
            f"{field_name} is {value!r}; allowed: a list of CIDR blocks like ['203.0.113.0/24']"
        )
    return list(value)


Cloud = Annotated[str, _before(lambda v, n: check_cloud(v, n))]
Flag = Annotated[bool, _before(_strict_bool)]
Tags = Annotated[dict[str, str], _before(check_tags)]
Extra = Annotated[dict[str, Any], _before(_mapping)]
Name = Annotated[str | None, _before(_name)]

# Fields every component spec has, described once.
UserTags = Annotated[
    Tags,
    _field("Extra tags/labels for every resource (the `lepton:cluster`/`lepton:env` tags are always added)."),
]
ClusterName = Annotated[
    Name, _field("Cluster name for the `lepton:cluster` tag (default: the resource name).")
]
EnvName = Annotated[Name, _field("Environment for the `lepton:env` tag (default: the Pulumi stack name).")]


@dataclass(config=_MODEL)
class GpuVmPoolArgs:
    """A pool of identical GPU VMs. `accelerator`/`gpus_per_node` select a catalog row (the instance
    type); `allowed_ssh_cidrs` is required because SSH is the only way in; `extra` is merged into the
    provider's own arguments of every VM (escape hatch); `network`/`identity` reuse existing
    resources (cloud-specific keys, see the per-cloud module).

    `private_egress` matters only for nodes without a public IP in a network the pool creates:
    "nat" gives them the internet through a NAT gateway (package mirrors, pip) besides the cloud's
    private access to its own services; "endpoints" gives them only the latter (AWS: S3 gateway +
    SQS and Secrets Manager interface endpoints; GCP: Private Google Access)."""

    cloud: Annotated[Cloud, _field("Cloud: `aws`, `gcp` or `azure`.", config="cloud", required_key=True)]
    accelerator: Annotated[
        str,
        _field(
            "GPU model from lepton-infra's catalog: `T4`, `L4`, `A10G`, `A100-40GB`, `A100-80GB` or `H100`.",
            config="accelerator",
            required_key=True,
        ),
    ]
    gpus_per_node: Annotated[
        int,
        _whole(1, 16),
        _field(
            "GPUs per node (default 1); the catalog picks the instance type that has exactly this many.",
            config="gpusPerNode",
        ),
    ] = 1
    nodes: Annotated[
        int, _whole(1, MAX_NODES), _field(f"Number of nodes, 1-{MAX_NODES} (default 1).", config="nodes")
    ] = 1
    region: Annotated[
        str | None,
        _field(
            "Cloud region (e.g. us-east-1 / us-central1 / eastus); must offer the accelerator "
            "(the catalog lists where it does).",
            config="region",
        ),
    ] = None
    zone: Annotated[
        str | None, _field("Zone inside the region (GCP/AWS); picked for you when unset.", config="zone")
    ] = None
    spot: Annotated[
        Flag,
        _field("Use spot/preemptible capacity (default false; cheaper, may be reclaimed).", config="spot"),
    ] = False
    image: Annotated[
        str | None,
        _field(
            "Machine image; default is the cloud's deep-learning image (AMI id, GCP image, Azure URN "
            "publisher:offer:sku:version). An exact image (AMI id, GCP image version, Azure URN with a "
            "version) pins it, and changing it replaces the nodes; the default or a moving one (SSM "
            "parameter, image family, Azure `latest`) gives new nodes the current image and leaves "
            "running nodes on theirs.",
            config="image",
        ),
    ] = None
    disk_gb: Annotated[
        int, _whole(30, 16384), _field("Root disk size per node in GiB (default 200).", config="diskGb")
    ] = 200
    allowed_ssh_cidrs: Annotated[
        list[str],
        _before(_cidr_list),
        _field(
            "CIDRs allowed to reach SSH (port 22). Required in practice: world-open ranges need allowWorldSsh.",
            config="allowedSshCidrs",
            required_key=True,
        ),
    ] = Field(default_factory=list)
    allow_world_ssh: Annotated[
        Flag,
        _field(
            "Explicitly allow `0.0.0.0/0` / `::/0` in allowedSshCidrs (default false).",
            config="allowWorldSsh",
        ),
    ] = False
    ssh_public_key: Annotated[
        Any,
        _before(_key),
        _field(
            "OpenSSH public key for the nodes' user; without it a key pair is generated and exported as a secret.",
            config="sshPublicKey",
        ),
    ] = None
    network: Annotated[
        dict[str, Any] | None,
        _before(_mapping),
        _field(
            "Reuse an existing network instead of creating one (aws: subnet_id, vpc_id; "
            "gcp: network, subnetwork; azure: subnet_id, resource_group_name); its routes, NAT and "
            "endpoints are yours. As a config key, JSON text.",
            config="network",
        ),
    ] = None
    identity: Annotated[
        dict[str, Any] | None,
        _before(_mapping),
        _field(
            "Reuse an existing node identity (aws: instance_profile; gcp: service_account_email; "
            "azure: user_assigned_identity_id)."
        ),
    ] = None
    idle_shutdown_minutes: Annotated[
        int,
        _whole(0, 7 * 24 * 60),
        _field(
            "Nodes power off after this many minutes without a running job (default 60; 0: never).",
            config="idleShutdownMinutes",
        ),
    ] = 60
    max_lifetime_hours: Annotated[
        int,
        _whole(1, 24 * 90),
        _field("Nodes power off after this many hours in any case (default 24).", config="maxLifetimeHours"),
    ] = 24
    tags: UserTags = Field(default_factory=dict)
    extra: Annotated[
        Extra,
        _field(
            "Escape hatch: raw arguments merged into the cloud provider's instance resource (wins over ours)."
        ),
    ] = Field(default_factory=dict)
    user: Annotated[str, _before(_user), _field("Login user created on the nodes (default `lepton`).")] = (
        "lepton"
    )
    cluster: Annotated[
        Name,
        _field("Cluster name for the `lepton:cluster` tag and the inventory (default: the resource name)."),
    ] = None
    env: EnvName = None
    private_egress: Annotated[
        str,
        _before(_egress),
        _field(
            "How nodes without a public IP get out: `nat` (internet via a NAT gateway, default) or "
            "`endpoints` (cloud services only).",
            config="privateEgress",
        ),
    ] = "nat"
    # One interpreter per cluster: the nodes' first boot installs the data plane's clients into it,
    # and the inventory names it (TrainingCluster).
    python: Annotated[
        str | None,
        _field(
            "Interpreter with torch on the nodes, written into the inventory (default: the image's own, "
            "from the image table; python3 for an image not in it).",
            config="python",
        ),
    ] = None

    # A pool needs the login key; TrainingCluster generates one when it is left unset.
    _needs_key: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check_pool(self) -> GpuVmPoolArgs:
        """Checks across fields, done once at construction: SSH sources against allow_world_ssh,
        and the login key. The catalog row is `validate()`'s: a cloud's own region check comes
        first and names the problem better than "not offered there"."""
        if not self.allowed_ssh_cidrs:
            raise ConfigError(
                "allowed_ssh_cidrs is empty: list the networks allowed to SSH to the nodes, "
                "e.g. ['203.0.113.0/24'] (your office or VPN egress)"
            )
        self.allowed_ssh_cidrs = check_cidrs(self.allowed_ssh_cidrs, self.allow_world_ssh)
        python_for(self.cloud, self.image, self.python)  # a set `python` must name an interpreter
        if self.ssh_public_key is None and self._needs_key:
            raise ConfigError(
                "ssh_public_key is not set: a pool needs the public key its `user` logs in with "
                "(TrainingCluster generates one when you leave it unset)"
            )
        return self

    def validate(self) -> CatalogEntry:
        """The catalog row the pool will use (ConfigError when the catalog has none for this
        accelerator, GPU count and region). The fields were validated when the spec was built;
        this changes nothing."""
        return lookup(self.cloud, self.accelerator, self.gpus_per_node, self.region)


@dataclass(config=_MODEL)
class ObjectStoreArgs:
    """A private, encrypted, versioned bucket (container on Azure). `retention_days` expires
    objects; `force_destroy` lets `pulumi destroy` delete a non-empty bucket."""

    cloud: Annotated[Cloud, _field("Cloud to create the bucket in: `aws`, `gcp` or `azure`.")]
    region: Annotated[
        str | None,
        _field(
            "Cloud region (e.g. `us-east-1`, `europe-west4`, `westeurope`); the provider's default when unset."
        ),
    ] = None
    versioning: Annotated[Flag, _field("Keep old object versions (default true).")] = True
    retention_days: Annotated[
        int | None,
        _optional_whole(1, 36500),
        _field("Delete objects (and old versions) after this many days; unset keeps them."),
    ] = None
    force_destroy: Annotated[
        Flag, _field("Allow `pulumi destroy` to delete a non-empty bucket (default false).")
    ] = False
    tags: UserTags = Field(default_factory=dict)
    extra: Annotated[
        Extra,
        _field(
            "Escape hatch: raw arguments merged into the cloud provider's bucket/account resource (wins over ours)."
        ),
    ] = Field(default_factory=dict)
    cluster: ClusterName = None
    env: EnvName = None

    def validate(self) -> None:
        """Nothing left to check: the spec was validated when it was built. Changes nothing."""


@dataclass(config=_MODEL)
class JobQueueArgs:
    """A work queue with a dead-letter queue: a message received `max_receive_count` times without
    being deleted moves there, so one poison job cannot loop forever."""

    cloud: Annotated[
        Cloud,
        _field("Cloud to create the queue in: `aws` (SQS), `gcp` (Pub/Sub) or `azure` (Storage Queue)."),
    ]
    region: Annotated[str | None, _field("Cloud region; the provider's default when unset.")] = None
    visibility_timeout_s: Annotated[
        int,
        _whole(0, 43200),
        _field(
            "Seconds a received message stays invisible to other workers before it is redelivered (default 300)."
        ),
    ] = 300
    max_receive_count: Annotated[
        int,
        _whole(1, 1000),
        _field("Deliveries before a message moves to the dead-letter queue (default 5)."),
    ] = 5
    tags: UserTags = Field(default_factory=dict)
    extra: Annotated[
        Extra,
        _field(
            "Escape hatch: raw arguments merged into the cloud provider's queue resource (wins over ours)."
        ),
    ] = Field(default_factory=dict)
    cluster: ClusterName = None
    env: EnvName = None

    def validate(self) -> None:
        """Nothing left to check: the spec was validated when it was built. Changes nothing."""


@dataclass(config=_MODEL)
class TrainingClusterArgs(GpuVmPoolArgs):
    """Everything for one training cluster: the pool's fields (inherited, so they cannot drift from
    GpuVmPoolArgs), plus the store and queue options. Without `ssh_public_key` a key pair is
    generated and exported as a secret. `python` (the pool's, the inventory's interpreter with
    torch) defaults to the image's own, from the image table (`lepton_infra.components.images`)."""

    store: Annotated[Flag, _field("Create an object store the nodes may use (default true).")] = True
    store_versioning: Annotated[Flag, _field("Keep old object versions in the store (default true).")] = True
    store_retention_days: Annotated[
        int | None,
        _optional_whole(1, 36500),
        _field("Delete stored objects after this many days; unset keeps them.", config="storeRetentionDays"),
    ] = None
    store_force_destroy: Annotated[
        Flag, _field("Let `pulumi destroy` delete a store that still holds objects (default false).")
    ] = False
    store_extra: Annotated[
        Extra, _field("Raw provider arguments merged into the store's bucket/account (escape hatch).")
    ] = Field(default_factory=dict)
    queue: Annotated[Flag, _field("Create a job queue the nodes may use (default true).")] = True
    queue_visibility_timeout_s: Annotated[
        int,
        _whole(0, 43200),
        _field(
            "Seconds a received message stays invisible before redelivery (default 300).",
            config="queueVisibilityTimeoutS",
        ),
    ] = 300
    queue_max_receive_count: Annotated[
        int,
        _whole(1, 1000),
        _field(
            "Receives before a message moves to the dead-letter queue (default 5).",
            config="queueMaxReceiveCount",
        ),
    ] = 5
    queue_extra: Annotated[Extra, _field("Raw provider arguments merged into the queue (escape hatch).")] = (
        Field(default_factory=dict)
    )
    jump: Annotated[
        dict[str, Any] | None,
        _before(_mapping),
        _field(
            "A bastion for private nodes, written into the inventory: `host`, `port`, `user`, `host_key` "
            "(pinned like the nodes'), and `source_cidr`: the address range the nodes see it connect "
            "from (its private range), which must be inside allowedSshCidrs; as a config key, JSON text.",
            config="jump",
        ),
    ] = None

    enable_apis: Annotated[
        Flag,
        _field(
            "GCP only: enable the Google APIs the cluster calls (Compute Engine, IAM, Secret Manager, "
            "Pub/Sub, Cloud Storage, Cloud Resource Manager) before its first resource, for a fresh "
            "project; never disabled on destroy (default false).",
            config="enableApis",
        ),
    ] = False

    _needs_key: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check_cluster(self) -> TrainingClusterArgs:
        """The cluster's own cross-field checks: a bastion must be inside the SSH sources
        (normalised to the inventory's form), and APIs to enable exist only on GCP."""
        self.jump = check_jump(self.jump, self.allowed_ssh_cidrs)
        if self.enable_apis and self.cloud != "gcp":
            raise ConfigError(
                f"enable_apis is true, but cloud is {self.cloud!r}; allowed: true only with cloud 'gcp' "
                "(AWS and Azure services need no enabling here): leave it unset"
            )
        return self

    def _apis(self, extra: dict[str, Any]) -> dict[str, Any]:
        """`extra` with GCP's per-component switch `enable_apis` when the cluster asks for it."""
        return {"enable_apis": True, **extra} if self.enable_apis else extra

    def _values(self, cls: type) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(cls)}

    def with_values(self, **changes: Any) -> TrainingClusterArgs:
        """A copy with the cluster's own name, env or generated key, without validating again."""
        return _trusted(TrainingClusterArgs, **{**self._values(TrainingClusterArgs), **changes})

    def pool_args(self) -> GpuVmPoolArgs:
        return _trusted(GpuVmPoolArgs, **{**self._values(GpuVmPoolArgs), "extra": self._apis(self.extra)})

    def store_args(self) -> ObjectStoreArgs:
        return _trusted(
            ObjectStoreArgs,
            cloud=self.cloud,
            region=self.region,
            versioning=self.store_versioning,
            retention_days=self.store_retention_days,
            force_destroy=self.store_force_destroy,
            tags=self.tags,
            extra=self._apis(self.store_extra),
            cluster=self.cluster,
            env=self.env,
        )

    def queue_args(self) -> JobQueueArgs:
        return _trusted(
            JobQueueArgs,
            cloud=self.cloud,
            region=self.region,
            visibility_timeout_s=self.queue_visibility_timeout_s,
            max_receive_count=self.queue_max_receive_count,
            tags=self.tags,
            extra=self._apis(self.queue_extra),
            cluster=self.cluster,
            env=self.env,
        )


for _model in (GpuVmPoolArgs, ObjectStoreArgs, JobQueueArgs, TrainingClusterArgs):
    _config_errors(_model)


def config_key(cls: type, name: str) -> tuple[str, bool] | None:
    """`(lepton key, required)` when field `name` of `cls` is a stack config key, else None."""
    extra = cls.__pydantic_fields__[name].json_schema_extra  # type: ignore[attr-defined]
    if not isinstance(extra, dict) or "config_key" not in extra:
        return None
    return str(extra["config_key"]), bool(extra["config_required"])


def description(cls: type, name: str) -> str:
    """The one description of field `name` of `cls` (what every interface shows)."""
    return str(cls.__pydantic_fields__[name].description)  # type: ignore[attr-defined]


def default(cls: type, name: str) -> Any:
    """Field `name`'s default (`dataclasses.MISSING` when required; a factory's value otherwise)."""
    f = next(f for f in fields(cls) if f.name == name)
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default
