"""Where local nodes listen: one loopback address per node and a free TCP port drawn for each, and
how to tell that an sshd answers there."""

from __future__ import annotations

import random
import socket

from lepton_infra.errors import NodeError

# Listening ports are drawn from below Linux's ephemeral range (32768-60999), so an outgoing
# connection can never take a port between our probe and sshd's bind; the draw is random so pools
# started at the same time (tests beside a demo) rarely pick the same one, and a clash is retried.
PORT_RANGE = (20000, 32767)
_random = random.SystemRandom()


def node_address(index: int) -> str:
    """Node k listens on 127.0.0.<k+2> (127.0.0.1 stays free for everything else on the machine)."""
    return f"127.0.0.{index + 2}"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # sshd sets SO_REUSEADDR too, so a port in TIME_WAIT is usable and should count as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str) -> int:
    """A port in PORT_RANGE that is free on `host` right now (sshd may still lose it to a racer)."""
    for _ in range(200):
        port = _random.randint(*PORT_RANGE)
        if port_is_free(host, port):
            return port
    raise NodeError(host, f"no free TCP port in {PORT_RANGE[0]}-{PORT_RANGE[1]} on {host}")


def answers_ssh(host: str, port: int) -> bool:
    """True once something at host:port accepts TCP and sends an SSH identification line."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(2.0)
            banner = b""
            while b"\n" not in banner and len(banner) < 512:
                chunk = sock.recv(256)
                if not chunk:
                    break
                banner += chunk
            return banner.startswith(b"SSH-2.0-")
    except OSError:
        return False
