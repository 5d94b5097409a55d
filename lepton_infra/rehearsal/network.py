"""The rehearsal's network: one bridge on this machine, one network namespace per node joined to it
by a veth pair, addresses of our own (10.213.N.0/24: the bridge is .1, node k is .k+2), and the
instance metadata address 169.254.169.254 delivered to this machine for packets coming from the
bridge only (a policy-routing rule and a `local` route in a table of our own), so a server bound
there with IP_TRANSPARENT answers the nodes while this machine's own route to any real metadata
service is untouched. Nodes reach each other through the bridge (no forwarding, no firewall).

Everything made here is removed on exit from `RehearsalNet`, also after errors and Ctrl-C."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lepton_infra.errors import NodeError

METADATA_IP = "169.254.169.254"
_BASE = ipaddress.IPv4Network("10.213.0.0/16")


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; NodeError naming the command when it fails (unless `check` is false)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NodeError("rehearsal", f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> tuple[int, ipaddress.IPv4Network]:
    """A /24 of ours no interface uses yet (another rehearsal may be running)."""
    used = set()
    for line in ip("-o", "-4", "addr", "show").splitlines():
        parts = line.split()
        used.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for n, net in enumerate(_BASE.subnets(new_prefix=24)):
        if n > 0 and not any(net.overlaps(u) for u in used):
            return n, net
    raise NodeError("rehearsal", f"no free /24 left in {_BASE} for a rehearsal network")


@dataclass
class RehearsalNet:
    """A bridge and its nodes' namespaces (`add_node`); `gateway` is this machine's address there."""

    index: int
    subnet: ipaddress.IPv4Network
    nodes: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"lrh{self.index}"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def table(self) -> str:
        return str(21300 + self.index)

    def address(self, k: int) -> str:
        return str(self.subnet.network_address + 2 + k)

    def netns(self, k: int) -> str:
        return f"lrh{self.index}n{k}"

    def node_of(self, address: str) -> int | None:
        """Which node an address belongs to (the metadata server tells callers apart by it)."""
        k = int(ipaddress.IPv4Address(address)) - int(self.subnet.network_address) - 2
        return k if 0 <= k < len(self.nodes) else None

    def add_node(self) -> int:
        """A namespace for the next node, joined to the bridge; its default route is the gateway."""
        k = len(self.nodes)
        ns, host_if = self.netns(k), f"lrh{self.index}v{k}"
        self.nodes.append(ns)
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", host_if, "master", self.bridge, "up")
        ip("-n", ns, "addr", "add", f"{self.address(k)}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", self.gateway)
        return k

    def _up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        ip("route", "add", "local", METADATA_IP, "dev", "lo", "table", self.table)
        ip("rule", "add", "iif", self.bridge, "lookup", self.table, "priority", self.table)

    def down(self) -> None:
        """Remove everything this network made; safe to call twice and after a partial setup."""
        ip("rule", "del", "priority", self.table, check=False)
        ip("route", "flush", "table", self.table, check=False)
        for k, ns in enumerate(self.nodes):
            ip("link", "del", f"lrh{self.index}v{k}", check=False)
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.bridge, check=False)


def unavailable() -> str | None:
    """Why a rehearsal network cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the rehearsal needs root (network namespaces, overlay mounts, systemd-nspawn)"
    if shutil.which("ip") is None:
        return "the rehearsal needs iproute2's `ip`"
    return None


@contextmanager
def rehearsal_net() -> Iterator[RehearsalNet]:
    """A fresh bridge with metadata delivery; torn down on exit whatever happened."""
    index, subnet = _free_subnet()
    net = RehearsalNet(index, subnet)
    try:
        net._up()
        yield net
    finally:
        net.down()
