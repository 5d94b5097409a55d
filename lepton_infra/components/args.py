"""Arguments of the cloud-neutral components, validated once here for all three clouds.

Each `*Args` is a plain dataclass (the Pulumi component convention: one typed args object per
component). `validate()` raises `ConfigError` naming the field, the bad value and what is allowed,
before any resource exists. Cloud-specific shapes (an existing network's ids, an image string) are
checked by the per-cloud module, which knows them."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pulumi

from lepton_infra.catalog import CLOUDS, CatalogEntry, lookup
from lepton_infra.components.images import python_for
from lepton_infra.errors import ConfigError

WORLD_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
PRIVATE_EGRESS = ("nat", "endpoints")
MAX_NODES = 64
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


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
    pinned like the nodes'). The nodes must accept SSH from it: a bastion given as an address
    outside every `allowed_ssh_cidrs` range could never reach them."""
    if jump is None:
        return None
    from pydantic import ValidationError

    from lepton_infra.inventory import Jump

    try:
        model = Jump.model_validate(jump)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'jump'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"jump is {jump!r}: {problems}; allowed: {{host, port (default 22), user, host_key}} with "
            "host_key the bastion's public host key line"
        ) from exc
    try:
        address = ipaddress.ip_address(model.host)
    except ValueError:
        address = None  # a DNS name: what it resolves to cannot be checked here
    if address is not None and not any(
        address in ipaddress.ip_network(c, strict=False) for c in allowed_ssh_cidrs
    ):
        raise ConfigError(
            f"jump host {model.host} is outside allowed_ssh_cidrs {list(allowed_ssh_cidrs)!r}: the "
            f"nodes would refuse the bastion; add its address (e.g. '{model.host}/32')"
        )
    return model.model_dump()


@dataclass
class GpuVmPoolArgs:
    """A pool of identical GPU VMs. `accelerator`/`gpus_per_node` select a catalog row (the instance
    type); `allowed_ssh_cidrs` is required because SSH is the only way in; `extra` is merged into the
    provider's own arguments of every VM (escape hatch); `network`/`identity` reuse existing
    resources (cloud-specific keys, see the per-cloud module)."""

    cloud: str
    accelerator: str
    gpus_per_node: int = 1
    nodes: int = 1
    region: str | None = None
    zone: str | None = None
    spot: bool = False
    image: str | None = None
    disk_gb: int = 200
    allowed_ssh_cidrs: Sequence[str] = ()
    allow_world_ssh: bool = False
    ssh_public_key: pulumi.Input[str] | None = None
    network: Mapping[str, Any] | None = None
    identity: Mapping[str, Any] | None = None
    idle_shutdown_minutes: int = 60
    max_lifetime_hours: int = 24
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    user: str = "lepton"
    cluster: str | None = None
    env: str | None = None
    private_egress: str = "nat"

    def validate(self) -> CatalogEntry:
        """Check every field; returns the catalog row the pool will use.

        `private_egress` matters only for nodes without a public IP in a network the pool creates:
        "nat" gives them the internet through a NAT gateway (package mirrors, pip) besides the
        cloud's private access to its own services; "endpoints" gives them only the latter (AWS:
        S3 gateway + SQS and Secrets Manager interface endpoints; GCP: Private Google Access)."""
        self.cloud = check_cloud(self.cloud)
        check_int(self.nodes, "nodes", 1, MAX_NODES)
        check_int(self.gpus_per_node, "gpus_per_node", 1, 16)
        check_int(self.disk_gb, "disk_gb", 30, 16384)
        check_int(self.idle_shutdown_minutes, "idle_shutdown_minutes", 0, 7 * 24 * 60)
        check_int(self.max_lifetime_hours, "max_lifetime_hours", 1, 24 * 90)
        if not isinstance(self.spot, bool):
            raise ConfigError(f"spot is {self.spot!r}; allowed: true or false")
        if not isinstance(self.allow_world_ssh, bool):
            raise ConfigError(f"allow_world_ssh is {self.allow_world_ssh!r}; allowed: true or false")
        if not self.allowed_ssh_cidrs:
            raise ConfigError(
                "allowed_ssh_cidrs is empty: list the networks allowed to SSH to the nodes, "
                "e.g. ['203.0.113.0/24'] (your office or VPN egress)"
            )
        self.allowed_ssh_cidrs = check_cidrs(self.allowed_ssh_cidrs, self.allow_world_ssh)
        if self.ssh_public_key is None:
            raise ConfigError(
                "ssh_public_key is not set: a pool needs the public key its `user` logs in with "
                "(TrainingCluster generates one when you leave it unset)"
            )
        if isinstance(self.ssh_public_key, str):
            self.ssh_public_key = check_public_key(self.ssh_public_key)
        if not _USER_RE.match(str(self.user)):
            raise ConfigError(f"user is {self.user!r}; allowed: a Linux user name like 'lepton'")
        self.tags = check_tags(self.tags)
        _check_mapping(self.extra, "extra")
        _check_mapping(self.network, "network")
        _check_mapping(self.identity, "identity")
        _check_name(self.cluster, "cluster")
        _check_name(self.env, "env")
        if self.private_egress not in PRIVATE_EGRESS:
            raise ConfigError(
                f"private_egress is {self.private_egress!r}; allowed: {', '.join(PRIVATE_EGRESS)} "
                "(nat: internet through a NAT gateway; endpoints: only the cloud's own services)"
            )
        return lookup(self.cloud, self.accelerator, self.gpus_per_node, self.region)


@dataclass
class ObjectStoreArgs:
    """A private, encrypted, versioned bucket (container on Azure). `retention_days` expires
    objects; `force_destroy` lets `pulumi destroy` delete a non-empty bucket."""

    cloud: str
    region: str | None = None
    versioning: bool = True
    retention_days: int | None = None
    force_destroy: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    cluster: str | None = None
    env: str | None = None

    def validate(self) -> None:
        self.cloud = check_cloud(self.cloud)
        if self.retention_days is not None:
            check_int(self.retention_days, "retention_days", 1, 36500)
        self.tags = check_tags(self.tags)
        _check_mapping(self.extra, "extra")
        _check_name(self.cluster, "cluster")
        _check_name(self.env, "env")


@dataclass
class JobQueueArgs:
    """A work queue with a dead-letter queue: a message received `max_receive_count` times without
    being deleted moves there, so one poison job cannot loop forever."""

    cloud: str
    region: str | None = None
    visibility_timeout_s: int = 300
    max_receive_count: int = 5
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    cluster: str | None = None
    env: str | None = None

    def validate(self) -> None:
        self.cloud = check_cloud(self.cloud)
        check_int(self.visibility_timeout_s, "visibility_timeout_s", 0, 43200)
        check_int(self.max_receive_count, "max_receive_count", 1, 1000)
        self.tags = check_tags(self.tags)
        _check_mapping(self.extra, "extra")
        _check_name(self.cluster, "cluster")
        _check_name(self.env, "env")


@dataclass
class TrainingClusterArgs(GpuVmPoolArgs):
    """Everything for one training cluster: the pool's fields (inherited, so they cannot drift from
    GpuVmPoolArgs), plus the store and queue options. Without `ssh_public_key` a key pair is
    generated and exported as a secret. `python` (the inventory's interpreter with torch) defaults
    to the image's own, from the image table (`lepton_infra.components.images`)."""

    store: bool = True
    store_versioning: bool = True
    store_retention_days: int | None = None
    store_force_destroy: bool = False
    store_extra: Mapping[str, Any] = field(default_factory=dict)
    queue: bool = True
    queue_visibility_timeout_s: int = 300
    queue_max_receive_count: int = 5
    queue_extra: Mapping[str, Any] = field(default_factory=dict)
    python: str | None = None
    jump: Mapping[str, Any] | None = None

    def pool_args(self) -> GpuVmPoolArgs:
        names = {f.name for f in fields(GpuVmPoolArgs)}
        return GpuVmPoolArgs(**{k: getattr(self, k) for k in names})

    def store_args(self) -> ObjectStoreArgs:
        return ObjectStoreArgs(
            cloud=self.cloud,
            region=self.region,
            versioning=self.store_versioning,
            retention_days=self.store_retention_days,
            force_destroy=self.store_force_destroy,
            tags=self.tags,
            extra=self.store_extra,
            cluster=self.cluster,
            env=self.env,
        )

    def queue_args(self) -> JobQueueArgs:
        return JobQueueArgs(
            cloud=self.cloud,
            region=self.region,
            visibility_timeout_s=self.queue_visibility_timeout_s,
            max_receive_count=self.queue_max_receive_count,
            tags=self.tags,
            extra=self.queue_extra,
            cluster=self.cluster,
            env=self.env,
        )

    def validate(self) -> CatalogEntry:
        """Validate all three parts up front, so a bad queue option fails before any VM exists."""
        entry = self.pool_args().validate()
        if self.store:
            self.store_args().validate()
        if self.queue:
            self.queue_args().validate()
        python_for(self.cloud, self.image, self.python)  # a set `python` must name an interpreter
        self.jump = check_jump(self.jump, self.allowed_ssh_cidrs)
        return entry
