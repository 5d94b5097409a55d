"""A private network for the local pool (`local up --bastion`): a Linux network namespace that the
nodes live in, joined to this machine by one veth pair whose inner end only the bastion listens on.

On loopback every connection comes from 127.0.0.1, so no sshd setting can tell the bastion from
anyone else; a namespace can. Inside it the nodes listen on their own loopback (127.0.0.<k+2>),
which nothing outside can reach, and accept logins only from inside (the bastion's forwarded
connections); outside, only the bastion's address on the veth pair answers. That is a cloud
private subnet with a jump host, on one machine. Needs root and iproute2 (`ip`, `nsenter`)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from lepton_infra.errors import ConfigError, NodeError

_SUBNETS = ipaddress.IPv4Network("10.231.0.0/16")  # carved into /30s, one per pool


@dataclass(frozen=True)
class PrivateNet:
    """One pool's namespace and veth pair, as recorded in pool.json (so `down` removes them)."""

    name: str
    outer_if: str
    outer_addr: str
    bastion_addr: str

    def exec_prefix(self) -> list[str]:
        """Run a command inside the namespace: nsenter execs it, so the PID stays the command's."""
        return [_tool("nsenter"), f"--net=/run/netns/{self.name}", "--"]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ConfigError(f"--bastion needs `{name}` (iproute2 / util-linux); install it or drop --bastion")
    return found


def require() -> None:
    """ConfigError unless private networks can be made here (root, ip, nsenter)."""
    if os.geteuid() != 0:
        raise ConfigError(
            "--bastion needs root: the nodes' private network is a Linux network namespace; "
            "run as root or drop --bastion"
        )
    _tool("ip")
    _tool("nsenter")


def _ip(*args: str) -> None:
    done = subprocess.run([_tool("ip"), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NodeError("bastion", f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _used_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    done = subprocess.run([_tool("ip"), "-o", "-4", "addr", "show"], capture_output=True, text=True)
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for line in done.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).ip)
    return found


def create(state_dir: Path) -> PrivateNet:
    """Make the namespace (loopback up) and the veth pair, addressed from a free /30."""
    require()
    tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    name, outer, inner = f"lepton-{tag}", f"lpo{tag}", f"lpi{tag}"
    delete_named(name, outer)  # leftovers of a crashed `up` of this same state dir
    used = _used_addresses()
    subnets = list(_SUBNETS.subnets(new_prefix=30))
    start = int(tag, 16) % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        hosts = list(subnet.hosts())
        if not used & set(hosts):
            break
    else:
        raise NodeError("bastion", f"no free /30 left in {_SUBNETS} for the pool's private network")
    outer_addr, inner_addr = str(hosts[0]), str(hosts[1])
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{outer_addr}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{inner_addr}/30", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
    except BaseException:
        delete_named(name, outer)
        raise
    return PrivateNet(name=name, outer_if=outer, outer_addr=outer_addr, bastion_addr=inner_addr)


def delete_named(name: str, outer_if: str) -> None:
    """Remove the namespace and the veth pair (deleting either end removes both); no error if gone."""
    ip = _tool("ip")
    subprocess.run([ip, "link", "del", outer_if], capture_output=True, check=False)
    subprocess.run([ip, "netns", "del", name], capture_output=True, check=False)


def delete(net: PrivateNet) -> None:
    delete_named(net.name, net.outer_if)


def from_dict(data: object) -> PrivateNet | None:
    if not isinstance(data, dict):
        return None
    try:
        return PrivateNet(**{k: str(data[k]) for k in ("name", "outer_if", "outer_addr", "bastion_addr")})
    except KeyError:
        return None
