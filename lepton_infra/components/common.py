"""What every cloud shares: tags and labels, child options, the `extra` escape hatch, per-node host
keys, names that fit the strictest cloud, and the inventory assembled from a pool's outputs. The
per-cloud modules call these instead of keeping three copies."""

from __future__ import annotations

import hashlib
import inspect
import ipaddress
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from lepton_infra.components.args import is_internal
from lepton_infra.errors import ConfigError

# The policy pack (policy/lepton_policy/rules.py) checks exactly these names.
TAG_CLUSTER = "lepton:cluster"
TAG_ENV = "lepton:env"
TAG_IDLE = "lepton:idle-shutdown-minutes"
TAG_LIFETIME = "lepton:max-lifetime-hours"


def tags_for(
    cluster: str, env: str, user_tags: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """Tags for every resource: the leak-proofing pair (`lepton:cluster`, `lepton:env`) always wins
    over a user tag of the same name, so no resource can escape the cluster's clean-up queries."""
    tags = {**(user_tags or {}), **extra}
    tags.update({TAG_CLUSTER: cluster, TAG_ENV: env})
    return tags


def cluster_env(args: Any, name: str) -> tuple[str, str]:
    """The `lepton:cluster`/`lepton:env` values of a component: the spec's, else the resource name
    and the Pulumi stack (what TrainingCluster fills in for its parts)."""
    return args.cluster or name, args.env or pulumi.get_stack()


def pool_tags(args: Any, cluster: str, env: str) -> tuple[dict[str, str], dict[str, str]]:
    """A pool's tags for every resource, and its nodes' tags, which also carry the watchdog's
    limits (`lepton:idle-shutdown-minutes`, `lepton:max-lifetime-hours`) for the clean-up tools."""
    limits = {TAG_IDLE: str(args.idle_shutdown_minutes), TAG_LIFETIME: str(args.max_lifetime_hours)}
    return tags_for(cluster, env, args.tags), tags_for(cluster, env, args.tags, **limits)


def unwrap(component: Any) -> Any:
    """The per-cloud component behind a neutral one (which keeps it as `.impl`), or the thing itself."""
    return getattr(component, "impl", component)


_LABEL_BAD = re.compile(r"[^a-z0-9_-]")


def gcp_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """The same tags as GCP labels: lowercase letters, digits, '_' and '-', at most 63 characters,
    so `lepton:cluster` becomes `lepton-cluster`."""
    return {
        _LABEL_BAD.sub("-", k.lower())[:63]: _LABEL_BAD.sub("-", str(v).lower())[:63] for k, v in tags.items()
    }


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    """Options for a component's child: parented, so it shows up (and is deleted) under it."""
    return pulumi.ResourceOptions(parent=parent, **kwargs)


def merge_extra(base: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The escape hatch: the user's raw provider arguments win; nested dicts merge key by key so
    `{"metadata_options": {"http_put_response_hop_limit": 2}}` keeps the rest of our settings."""
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_extra(out[key], value)
        else:
            out[key] = value
    return out


def typed_args(cls: type, value: Any) -> Any:
    """`cls(**value)` for a dict, every nested dict (and list of dicts) turned into the provider's
    own `*Args` class too (found by name in `cls`'s package, from its annotations), so a misspelled
    key at any depth (ours or the user's in `extra`) is a ConfigError listing the allowed keys
    instead of being silently ignored (mocks accept any key; so would a preview). Typed values and
    Outputs pass through unchanged. (azure-native's arguments nest deepest: a VM's
    `os_profile.linux_configuration.ssh.public_keys[0]`.)"""
    if not isinstance(value, Mapping):
        return value
    # compute.InstanceArgs lives in pulumi_gcp.compute.instance; its nested *Args in pulumi_gcp.compute.
    package = sys.modules.get(cls.__module__.rpartition(".")[0]) or sys.modules[cls.__module__]
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    out: dict[str, Any] = {}
    for key, item in value.items():
        param = params.get(key)
        if param is not None and item is not None:
            annotation = repr(param.annotation)
            match = _FORWARD_ARGS.search(annotation)
            nested = getattr(package, match.group(1), None) if match else None
            if nested is not None and not annotation.startswith("typing.Union[typing.Mapping"):
                if annotation.startswith("typing.Union[typing.Sequence") and isinstance(item, list | tuple):
                    item = [typed_args(nested, x) for x in item]
                else:
                    item = typed_args(nested, item)
        out[key] = item
    try:
        return cls(**out)
    except TypeError as exc:
        allowed = ", ".join(p for p in params if p not in ("self", "__self__"))
        raise ConfigError(
            f"extra: bad key for {cls.__name__} in {dict(value)!r} ({exc}); allowed keys: {allowed}"
        ) from exc


_FORWARD_ARGS = re.compile(r"ForwardRef\('(\w+Args)'\)")


def short_hash(*parts: str, length: int = 6) -> str:
    """A stable suffix for globally-unique names (buckets, storage accounts)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def compact_name(name: str, max_len: int, *, salt: str = "") -> str:
    """`name` squeezed into lowercase alphanumerics of at most `max_len` characters with a stable hash
    suffix (Azure storage accounts: 3-24 characters, nothing else allowed)."""
    stem = re.sub(r"[^a-z0-9]", "", name.lower()) or "lepton"
    suffix = short_hash(name, salt)
    return (stem[: max_len - len(suffix)] + suffix)[:max_len]


def ssh_needs_public_ip(cidrs: Sequence[str]) -> bool:
    """A public IP only when someone outside internal address space may SSH in (a VPN range does not)."""
    return any(not is_internal(c) for c in cidrs)


def ipv4_ssh_cidrs(cidrs: Sequence[str], cloud: str) -> list[str]:
    """The IPv4 CIDRs of `allowed_ssh_cidrs` for a cloud whose pool network is IPv4-only: IPv6
    sources could never reach a node, so they are dropped with a warning, and a list of only IPv6
    sources is a ConfigError (nobody could log in)."""
    nets = [ipaddress.ip_network(str(c), strict=False) for c in cidrs]
    v4 = [str(n) for n in nets if n.version == 4]
    v6 = [str(n) for n in nets if n.version == 6]
    if v6 and not v4:
        raise ConfigError(
            f"allowed_ssh_cidrs={list(cidrs)!r} has only IPv6 ranges, but {cloud} pool nodes have IPv4 "
            "addresses only: add the IPv4 range(s) you connect from"
        )
    if v6:
        pulumi.log.warn(f"{cloud}: ignoring IPv6 SSH sources {v6}: the pool's nodes are IPv4-only")
    return v4


@dataclass
class PoolNode:
    """One node as the inventory needs it: the address the controller dials, the address peers use,
    and the public host key clients pin."""

    name: str
    host: pulumi.Input[str]
    private_ip: pulumi.Input[str]
    host_key: pulumi.Input[str]


def price_doc(entry: Any, spot: bool) -> dict[str, Any] | None:
    """The inventory's `price` (lepton_infra.inventory.Price) from the pool's catalog entry: the
    hourly price of one node on the market the pool uses. None when the catalog has no price
    for it (the run's cost is then shown as unknown, never as 0)."""
    usd = entry.hourly_usd(spot)
    if usd is None:
        return None
    return {
        "usd_per_node_hour": usd,
        "market": "spot" if spot else "on-demand",
        "instance_type": entry.instance_type,
        "read_on": entry.price_read_on.isoformat(),
    }


def inventory_json(
    *,
    cluster: str,
    cloud: str,
    user: str,
    nodes: Sequence[PoolNode],
    accelerator: str | None,
    gpus: int,
    store_url: pulumi.Input[str] | None = None,
    queue_url: pulumi.Input[str] | None = None,
    python: str = "python3",
    jump: Mapping[str, Any] | None = None,
    price: Mapping[str, Any] | None = None,
    region: pulumi.Input[str] | None = None,
) -> pulumi.Output[str]:
    """The inventory (version 1: `lepton_infra.inventory`, README "The inventory format") as JSON,
    resolved from the pool's outputs. It holds no key material (host keys are public); a generated
    login key is a separate secret stack output."""

    def build(values: list[Any]) -> str:
        store, queue, where, *per_node = values
        node_docs = [
            {
                "name": node.name,
                "host": per_node[3 * i],
                "port": 22,
                "private_ip": per_node[3 * i + 1],
                "host_key": " ".join(str(per_node[3 * i + 2]).split()[:2]),
                "accelerator": accelerator,
                "gpus": gpus,
            }
            for i, node in enumerate(nodes)
        ]
        doc: dict[str, Any] = {
            "version": 1,
            "cluster": cluster,
            "cloud": cloud,
            "user": user,
            "private_key_path": None,
            "python": python,
            "nodes": node_docs,
            "store": store,
            "queue": queue,
        }
        if jump is not None:
            doc["jump"] = dict(jump)
        if price is not None:
            doc["price"] = dict(price)  # lepton_infra.inventory.Price: what the run's cost is made of
        if where is not None:
            doc["region"] = where  # the nodes' clients need it (workload.jobspec.cluster_env)
        return json.dumps(doc, indent=2)

    flat: list[Any] = [store_url, queue_url, region]
    for node in nodes:
        flat += [node.host, node.private_ip, node.host_key]
    return pulumi.Output.all(*flat).apply(build)


def new_node_image(
    cloud: str,
    image: pulumi.Input[str],
    *,
    moving: bool,
    image_property: str,
    source: str,
    parent: pulumi.Resource,
) -> tuple[pulumi.Output[str], list[str]]:
    """The image a new node boots, logged on `up` (which image, and from where), and the
    `ignore_changes` for the instances: a `moving` source (the default image, an SSM parameter, an
    image family, Azure's `latest`) names a newer image whenever one is published, and following it
    would replace running nodes mid-training, so existing nodes keep theirs (`image_property`
    ignored) and only new ones get the new image. An image the user pinned exactly (`lepton:image`)
    is not ignored: changing the pin is a deliberate replacement, which the preview shows."""

    def say(value: str) -> str:
        origin = "" if value == source else f" (from {source})"
        keep = (
            "running nodes keep the image they were created with; lepton:image pins one"
            if moving
            else "pinned by lepton:image; changing it replaces the nodes"
        )
        pulumi.log.info(f"{cloud}: new nodes boot {value}{origin}; {keep}", resource=parent)
        return value

    return pulumi.Output.from_input(image).apply(say), [image_property] if moving else []
