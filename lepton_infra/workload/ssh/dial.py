"""One SSH login: the pinned host key, the client key, AES-GCM first, retried on transient
failures within the connect timeout, optionally through a jump host's `direct-tcpip` channel
(ProxyJump). Every paramiko failure becomes a NodeError (or HostKeyMismatch) naming the node."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import paramiko
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from lepton_infra.errors import HostKeyMismatch, NodeError, redact
from lepton_infra.inventory import Jump, Node
from lepton_infra.workload.ssh.keys import PinnedKeyPolicy, parse_host_key

KEEPALIVE_S = 15


class _Transport(paramiko.Transport):  # type: ignore[misc]
    """paramiko's transport offering AES-GCM first: one AEAD pass per packet instead of AES-CTR
    plus a separate HMAC, which is what bulk shipping spends its CPU on (OpenSSH 6.2+ has it;
    the other ciphers stay offered, later, for servers without it)."""

    _preferred_ciphers = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        *(c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c),
    )

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        # No Nagle: SSH writes whole packets, and a small one (a channel close, then the next
        # command's open) must not wait for the node's delayed ACK. With Nagle on, every command
        # after the first on a connection waited ~40 ms (bench/RESULTS.md, issue 18).
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, *args, **kwargs)


def ack_at_once(transport: paramiko.Transport) -> None:
    """Acknowledge what sshd sent last at once (Linux TCP_QUICKACK; the kernel leaves that mode by
    itself, so it is asked again before each channel open). The last packet sshd sent after the
    login was otherwise acknowledged only by the delayed-ACK timer, and sshd (Nagle on) held its
    answer to our first channel open until then: ~40 ms on every connection's first command."""
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket) and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass  # an optimisation only


def _transient(exc: BaseException) -> bool:
    """Worth another try within the connect timeout: the node may be booting or sshd busy
    (MaxStartups drops connections under a burst)."""
    if isinstance(exc, HostKeyMismatch | paramiko.AuthenticationException | paramiko.BadHostKeyException):
        return False
    if isinstance(exc, socket.timeout | TimeoutError):
        return False  # the whole budget went into that attempt
    return isinstance(exc, OSError | EOFError | paramiko.SSHException)


def active(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return bool(transport and transport.is_active())


def through_jump(jump: paramiko.SSHClient, node: Node, deadline: float) -> paramiko.Channel:
    """A `direct-tcpip` channel from the jump host to the node: the socket of the node's login."""
    transport = jump.get_transport()
    if transport is None or not transport.is_active():
        raise NodeError("jump", "connection to the jump host closed")
    try:
        return transport.open_channel(
            "direct-tcpip",
            (node.host, node.port),
            ("127.0.0.1", 0),
            timeout=max(0.5, deadline - time.monotonic()),
        )
    except paramiko.ChannelException as exc:
        raise paramiko.SSHException(
            f"the jump host could not reach {node.host}:{node.port}: {exc.text or exc}"
        ) from exc


def dial(
    target: Node | Jump,
    name: str,
    user: str,
    *,
    pkey: paramiko.PKey | None,
    key_path: str | None,
    deadline: float,
    connect_timeout: float,
    sock: Callable[[], paramiko.Channel] | None = None,
) -> paramiko.SSHClient:
    """One SSH login with the pinned key of `target`, retried on transient failures until
    `deadline`; errors name `name` (the node, or "jump"). `sock` opens the channel to log in
    over (through the jump host); `pkey` None means the SSH agent."""
    host, port = target.host, target.port
    pinned = parse_host_key(target)

    def attempt() -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        # Only the inventory's key, under the name paramiko looks up ("[host]:port" off port 22).
        entry = host if port == 22 else f"[{host}]:{port}"
        client.get_host_keys().add(entry, pinned.get_name(), pinned)
        client.set_missing_host_key_policy(PinnedKeyPolicy(name, target.host_key))
        remaining = max(0.5, deadline - time.monotonic())
        try:
            client.connect(
                host,
                port=port,
                username=user,
                pkey=pkey,
                sock=sock() if sock is not None else None,
                timeout=remaining,
                banner_timeout=remaining,
                auth_timeout=remaining,
                channel_timeout=remaining,
                transport_factory=_Transport,
                look_for_keys=False,
                allow_agent=pkey is None,  # the agent only when the inventory says so
            )
        except BaseException:
            client.close()
            raise
        return client

    client: paramiko.SSHClient | None = None
    budget = max(0.5, deadline - time.monotonic())
    try:
        for try_ in Retrying(
            stop=stop_after_delay(budget),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(_transient),
            reraise=True,
        ):
            with try_:
                client = attempt()
    except (HostKeyMismatch, NodeError):
        raise
    except paramiko.BadHostKeyException as exc:
        raise HostKeyMismatch(
            name,
            exc.expected_key.fingerprint,
            exc.key.fingerprint,
        ) from exc
    except paramiko.AuthenticationException as exc:
        raise NodeError(
            name,
            f"authentication as {user!r} at {host}:{port} failed "
            f"(key {redact(key_path) if key_path else 'from the SSH agent'}): {exc}",
        ) from exc
    except (OSError, EOFError, paramiko.SSHException) as exc:
        reason = (
            "no answer" if isinstance(exc, socket.timeout | TimeoutError) else str(exc) or type(exc).__name__
        )
        via = " through the jump host" if sock is not None else ""
        raise NodeError(
            name, f"cannot connect to {host}:{port}{via} within {connect_timeout:g} s: {reason}"
        ) from exc
    assert client is not None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(KEEPALIVE_S)
    return client
