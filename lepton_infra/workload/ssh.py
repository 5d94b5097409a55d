"""SSH to the nodes: one paramiko connection per node, host key pinned from the inventory.

`NodeConnection` is the one small interface the rest of the workload layer uses: `run` a command
(optionally streaming its stdin or stdout), and read files over SFTP (no shell per read). Every
SSH option lives here. Host keys come only from the inventory (RejectPolicy, no
~/.ssh/known_hosts, no ~/.ssh/config, no keys from ~/.ssh); a mismatch raises HostKeyMismatch with
both SHA256 fingerprints. `connect_all` opens every node's connection in parallel and either
returns all of them or raises, so nothing runs anywhere unless every node checked out."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import paramiko
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from lepton_infra.errors import ConfigError, HostKeyMismatch, NodeError
from lepton_infra.inventory import Inventory, Node

T = TypeVar("T")
R = TypeVar("R")
CONTROL_TIMEOUT_S = 120.0  # a control command (prepare, launch, status, cancel) that takes longer is stuck
TRANSFER_TIMEOUT_S = 300.0  # no byte moved for this long during a transfer: the link is dead
KEEPALIVE_S = 15


def fingerprint_of_blob(blob: bytes) -> str:
    """OpenSSH's `SHA256:...` fingerprint (unpadded base64 of the key blob's sha256)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint_of_line(host_key_line: str) -> str:
    parts = host_key_line.split()
    try:
        return fingerprint_of_blob(base64.b64decode(parts[1], validate=True))
    except (IndexError, binascii.Error, ValueError):
        return "<unparseable key>"


def parse_host_key(node: Node) -> paramiko.PKey:
    key_type, data = node.host_key.split()[:2]
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError, paramiko.SSHException) as exc:
        raise ConfigError(f"nodes[{node.name}].host_key is not a valid {key_type} public key: {exc}") from exc


class _PinnedKeyPolicy(paramiko.RejectPolicy):  # type: ignore[misc]
    """Called only when the node's key is not the pinned one (e.g. another key type): refuse, and
    say which key it offered."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyMismatch(
            self.node.name, fingerprint_of_line(self.node.host_key), fingerprint_of_blob(key.asbytes())
        )


def _transient(exc: BaseException) -> bool:
    """Worth another try within the connect timeout: the node may be booting or sshd busy
    (MaxStartups drops connections under a burst)."""
    if isinstance(exc, HostKeyMismatch | paramiko.AuthenticationException | paramiko.BadHostKeyException):
        return False
    if isinstance(exc, socket.timeout | TimeoutError):
        return False  # the whole budget went into that attempt
    return isinstance(exc, OSError | EOFError | paramiko.SSHException)


@dataclass
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


class _ChannelWriter(io.RawIOBase):
    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        data = bytes(b)
        self.channel.sendall(data)
        self.count += len(data)
        return len(data)


class _CountingReader(io.RawIOBase):
    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.channel.recv(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


class NodeConnection:
    """One node's SSH connection, reused for a whole run. Safe to use from several threads for
    `run` (each call opens its own channel); the SFTP helpers share one SFTP channel under a lock."""

    def __init__(self, inventory: Inventory, node: Node, connect_timeout: float) -> None:
        self.inventory = inventory
        self.node = node
        self.connect_timeout = connect_timeout
        self.client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.node.name

    # ----------------------------------------------------------------- connect
    def connect(self) -> NodeConnection:
        node, inv = self.node, self.inventory
        key_path = inv.private_key_path
        if key_path is not None and not Path(key_path).is_file():
            raise ConfigError(f"inventory private_key_path {key_path!r} does not exist or is not a file")
        pinned = parse_host_key(node)
        deadline = time.monotonic() + self.connect_timeout
        last: list[BaseException] = []

        def attempt() -> paramiko.SSHClient:
            client = paramiko.SSHClient()
            # Only the inventory's key, under the name paramiko looks up ("[host]:port" off port 22).
            entry = node.host if node.port == 22 else f"[{node.host}]:{node.port}"
            client.get_host_keys().add(entry, pinned.get_name(), pinned)
            client.set_missing_host_key_policy(_PinnedKeyPolicy(node))
            remaining = max(0.5, deadline - time.monotonic())
            try:
                client.connect(
                    node.host,
                    port=node.port,
                    username=inv.user,
                    key_filename=key_path,
                    timeout=remaining,
                    banner_timeout=remaining,
                    auth_timeout=remaining,
                    look_for_keys=False,
                    allow_agent=key_path is None,  # the agent only when the inventory says so
                )
            except BaseException as exc:
                client.close()
                last.append(exc)
                raise
            return client

        try:
            for try_ in Retrying(
                stop=stop_after_delay(self.connect_timeout),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                retry=retry_if_exception(_transient),
                reraise=True,
            ):
                with try_:
                    self.client = attempt()
        except HostKeyMismatch:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyMismatch(
                node.name,
                fingerprint_of_blob(exc.expected_key.asbytes()),
                fingerprint_of_blob(exc.key.asbytes()),
            ) from exc
        except paramiko.AuthenticationException as exc:
            raise NodeError(
                node.name,
                f"authentication as {inv.user!r} at {node.host}:{node.port} failed "
                f"(key {key_path or 'from the SSH agent'}): {exc}",
            ) from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            reason = (
                "no answer"
                if isinstance(exc, socket.timeout | TimeoutError)
                else str(exc) or type(exc).__name__
            )
            raise NodeError(
                node.name,
                f"cannot connect to {node.host}:{node.port} within {self.connect_timeout:g} s: {reason}",
            ) from exc
        assert self.client is not None
        transport = self.client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_S)
        return self

    def reconnect(self) -> None:
        self.close()
        self.connect()

    def close(self) -> None:
        with self._sftp_lock:
            if self._sftp is not None:
                try:
                    self._sftp.close()
                except Exception:  # noqa: BLE001 - closing a dead channel may fail any way
                    pass
                self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    @property
    def alive(self) -> bool:
        transport = self.client.get_transport() if self.client else None
        return bool(transport and transport.is_active())

    def _transport(self) -> paramiko.Transport:
        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            raise NodeError(self.name, "SSH connection is closed")
        return transport

    # ----------------------------------------------------------------- commands
    def _open(self, command: str, timeout: float) -> paramiko.Channel:
        try:
            channel = self._transport().open_session(timeout=self.connect_timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise NodeError(self.name, f"cannot start a command: {exc}", command=_short(command)) from exc
        return channel

    def _finish(self, channel: paramiko.Channel, command: str, stdout: bytes, check: bool) -> CommandResult:
        try:
            stderr = channel.makefile_stderr("rb").read()
            status = channel.recv_exit_status()
        finally:
            channel.close()
        result = CommandResult(status, stdout, stderr)
        if check and status != 0:
            tail = stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise NodeError(
                self.name, "command failed: " + " | ".join(tail), command=_short(command), exit_status=status
            )
        return result

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        timeout: float = CONTROL_TIMEOUT_S,
        check: bool = True,
    ) -> CommandResult:
        """Run one command (through the login shell). Raises NodeError on a non-zero exit if `check`."""
        channel = self._open(command, timeout)
        try:
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            stdout = channel.makefile("rb").read()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            channel.close()
            raise NodeError(
                self.name, f"connection lost during command: {exc}", command=_short(command)
            ) from exc
        return self._finish(channel, command, stdout, check)

    def run_upload(
        self, command: str, producer: Callable[[IO[bytes]], T], *, timeout: float = TRANSFER_TIMEOUT_S
    ) -> tuple[CommandResult, T, int]:
        """Run `command` with `producer` writing its stdin. Returns (result, producer's value, bytes sent)."""
        channel = self._open(command, timeout)
        writer = _ChannelWriter(channel)
        # tarfile writes in 10 KB pieces; batching them into 256 KB sends measured 1.5x faster for
        # large files (bench/README.md) and costs nothing for small ones.
        buffered = io.BufferedWriter(writer, 1 << 18)  # type: ignore[type-var]  # write() is narrowed to bytes
        try:
            value = producer(buffered)
            buffered.flush()
            channel.shutdown_write()
            stdout = channel.makefile("rb").read()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            channel.close()
            raise NodeError(self.name, f"upload failed: {exc}", command=_short(command)) from exc
        return self._finish(channel, command, stdout, True), value, writer.count

    def run_download(
        self, command: str, consumer: Callable[[IO[bytes]], T], *, timeout: float = TRANSFER_TIMEOUT_S
    ) -> tuple[CommandResult, T, int]:
        """Run `command` with `consumer` reading its stdout. Returns (result, consumer's value, bytes read)."""
        channel = self._open(command, timeout)
        channel.shutdown_write()
        reader = _CountingReader(channel)
        try:
            value = consumer(io.BufferedReader(reader, 1 << 16))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            channel.close()
            raise NodeError(self.name, f"download failed: {exc}", command=_short(command)) from exc
        return self._finish(channel, command, b"", True), value, reader.count

    # ----------------------------------------------------------------- SFTP (no shell)
    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            assert self.client is not None
            self._sftp = self.client.open_sftp()
        return self._sftp

    def read_file(self, path: str) -> bytes | None:
        """The whole file, or None if it does not exist."""
        with self._sftp_lock:
            try:
                with self._sftp_client().open(path, "rb") as f:
                    return bytes(f.read())
            except FileNotFoundError:
                return None

    def read_range(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Up to `limit` bytes of `path` from `offset` (b"" if nothing new or no such file)."""
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                size = sftp.stat(path).st_size or 0
            except FileNotFoundError:
                return b""
            if size <= offset:
                return b""
            with sftp.open(path, "rb") as f:
                f.seek(offset)
                return bytes(f.read(min(limit, size - offset)))


def _short(command: str) -> str:
    """Commands carry whole scripts (`python -c SOURCE`); error messages show the start only."""
    return command if len(command) <= 160 else command[:157] + "..."


def parallel(items: Sequence[T], fn: Callable[[T], R], *, max_workers: int = 32) -> list[R]:
    """fn over items in threads; results in order. Waits for all, then raises the first error in
    item order (a HostKeyMismatch before anything else: it is the one the user must see)."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        errors = [f.exception() for f in futures]
    for wanted in (HostKeyMismatch, BaseException):
        for err in errors:
            if isinstance(err, wanted):
                raise err
    return [f.result() for f in futures]


def connect_all(
    inventory: Inventory, connect_timeout: float = 10.0, nodes: Sequence[Node] | None = None
) -> list[NodeConnection]:
    """One connection per node, opened in parallel. All or nothing: on any failure every opened
    connection is closed and the error (naming the node) is raised."""
    targets = list(nodes if nodes is not None else inventory.nodes)
    conns = [NodeConnection(inventory, node, connect_timeout) for node in targets]
    try:
        parallel(conns, lambda c: c.connect())
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    return conns
