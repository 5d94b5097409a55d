"""The plain checks behind the argument models: each takes a value and the field's name and
returns the normalised value or raises ConfigError naming the field, the value and what is allowed.
Plain functions (no pydantic) so the clouds' own checks and the config loader can call them too."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from lepton_infra.catalog import CLOUDS
from lepton_infra.errors import ConfigError

WORLD_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
PRIVATE_EGRESS = ("nat", "endpoints")
MAX_NODES = 64
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
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


def check_mapping(value: object, field_name: str) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{field_name} is {value!r}; allowed: a mapping (or leave it unset)")


def check_name(value: str | None, field_name: str) -> None:
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
