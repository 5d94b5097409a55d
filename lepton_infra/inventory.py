"""The inventory: the versioned JSON contract between the infrastructure layer (Pulumi stacks,
the local pool) and the workload layer. It imports nothing else of ours on purpose."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lepton_infra.errors import ConfigError

INVENTORY_VERSION = 1
Cloud = Literal["aws", "gcp", "azure", "local"]
_HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Node(_Strict):
    """One machine. `host` is what the controller dials; `private_ip` is what peers use (NCCL/gloo)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    private_ip: str
    host_key: str = Field(
        description="OpenSSH public host key line, 'ssh-ed25519 AAAA...'; pinned by clients"
    )
    accelerator: str | None = None
    gpus: int = Field(default=0, ge=0)

    @field_validator("private_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"not an IP address: {value!r}") from exc
        return value

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str, info: ValidationInfo) -> str:
        return check_host_key(value, str(info.data.get("name", "?")))


def check_host_key(value: str, owner: str) -> str:
    """The 'type base64' part of an OpenSSH public key line, parsed for real (a key that does not
    parse would only fail later, at connect time, blamed on the network). `owner` names the node
    (or the jump host) in the message."""
    parts = value.split()
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        shown = "<not shown: looks like a private key>" if "PRIVATE KEY" in value else repr(value[:40])
        raise ValueError(
            f"host key of {owner!r} must be an OpenSSH public key line like 'ssh-ed25519 AAAA...', "
            f"got {shown}; host keys are pinned, so every node needs one"
        )
    line = " ".join(parts[:2])
    try:
        load_ssh_public_key(line.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError) as exc:
        raise ValueError(
            f"host key of {owner!r} is not a valid {parts[0]} public key ({exc}); copy the node's "
            "/etc/ssh/ssh_host_*_key.pub line exactly"
        ) from None
    return line


class Jump(_Strict):
    """The bastion (ProxyJump) through which private-only nodes are reached. Its host key is pinned
    like the nodes': the client accepts exactly this key for the first hop."""

    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    host_key: str

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str) -> str:
        return check_host_key(value, "jump")


class Price(_Strict):
    """What one node costs an hour, as the stack computed it from the catalog (spot or on-demand
    as the pool was asked for): `runs`, `status` and the live view multiply it by nodes and time.
    The local pool's nodes cost 0."""

    usd_per_node_hour: float = Field(ge=0, le=10_000, allow_inf_nan=False)
    market: Literal["on-demand", "spot", "local"]
    instance_type: str | None = None
    read_on: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")  # the catalog's price date


class Inventory(_Strict):
    version: Literal[1]
    cluster: str = Field(min_length=1)
    cloud: Cloud
    user: str = Field(min_length=1)
    private_key_path: str | None = None
    python: str = "python3"
    nodes: list[Node] = Field(min_length=1)
    store: str | None = None
    queue: str | None = None
    jump: Jump | None = None
    price: Price | None = None  # None: cost unknown (shown as "-"), never guessed as 0
    # Optional (inventories written before it still load): the cluster's cloud region. The nodes'
    # store and queue clients take it from here (workload.jobspec.cluster_env); without it an AWS
    # client falls back to us-east-1 and a bucket elsewhere refuses it.
    region: str | None = Field(
        default=None, min_length=2, max_length=40, pattern=r"^[a-z][a-z0-9-]*[a-z0-9]$"
    )

    @model_validator(mode="after")
    def _unique_nodes(self) -> Inventory:
        """Two entries for one node (same name, or same host:port) would run two ranks of the job
        on one machine and collect one machine's results twice."""
        names: set[str] = set()
        addresses: dict[tuple[str, int], str] = {}
        for node in self.nodes:
            if node.name in names:
                raise ValueError(
                    f"duplicate node name {node.name!r} in nodes; every node needs a unique name"
                )
            names.add(node.name)
            address = (node.host.lower(), node.port)
            if address in addresses:
                raise ValueError(
                    f"nodes {addresses[address]!r} and {node.name!r} both are {node.host}:{node.port}; "
                    "every node needs its own host:port"
                )
            addresses[address] = node.name
        return self

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("s3://", "gs://", "az://", "file://")):
            raise ValueError(f"must start with s3://, gs://, az:// or file://, got {value!r}")
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        parts = (value or "").split("/")
        pubsub = len(parts) == 4 and parts[0] == "projects" and parts[2] == "subscriptions" and all(parts)
        if value is not None and not (value.startswith(("sqlite:///", "https://", "http://")) or pubsub):
            raise ValueError(
                "must be sqlite:///ABSOLUTE/PATH.db (local), an SQS or Azure queue URL (https://...) or "
                f"projects/PROJECT/subscriptions/NAME (Pub/Sub), got {value!r}"
            )
        return value

    @property
    def master(self) -> Node:
        """Node 0 is the rendezvous master."""
        return self.nodes[0]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(
            f"no node named {name!r} in inventory; nodes are {', '.join(n.name for n in self.nodes)}"
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "inventory") -> Inventory:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "inventory") -> Inventory:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != INVENTORY_VERSION:
            raise ConfigError(
                f"{source}: field 'version' is {version!r}; this lepton-infra reads inventory version "
                f"{INVENTORY_VERSION} only"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: invalid inventory:\n{_describe(exc)}") from exc

    @classmethod
    def load(cls, path: str | Path) -> Inventory:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(
                f"inventory file {str(path)!r} does not exist; create one with `lepton-infra local up` "
                "or `lepton-infra inventory --stack NAME`"
            ) from exc
        except (OSError, ValueError) as exc:
            # ValueError: a NUL in the path; UnicodeDecodeError: not a text file (a key, a binary)
            reason = getattr(exc, "strerror", None) or (
                "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not a usable path"
            )
            raise ConfigError(f"inventory file {str(path)!r} cannot be read: {reason}") from None
        return cls.from_json(text, source=str(path))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=False)

    def save(self, path: str | Path) -> None:
        """Write atomically (so a reader never sees half a file), readable by the owner only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)


def _describe(exc: ValidationError) -> str:
    """One line per problem, each naming the field by its JSON path (nodes[1].port)."""
    lines = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        lines.append(f"  - {path or '<root>'}: {err['msg']}{shown}")
    return "\n".join(lines)
