"""`NodeConnection`: one node's SSH connection, reused for a whole run, and the one small
interface the rest of the workload layer uses: `run` a command (optionally streaming its stdin or
stdout), and read files over SFTP (no shell per read). Every remote operation has a deadline
(`watchdog`); a failed command raises a NodeError carrying the node, the command and its exit
status."""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TypeVar

import paramiko

from lepton_infra.errors import NodeError
from lepton_infra.inventory import Inventory, Node
from lepton_infra.workload.ssh.dial import ack_at_once, active, dial, through_jump
from lepton_infra.workload.ssh.keys import load_client_key, parse_host_key
from lepton_infra.workload.ssh.streams import ChannelWriter, CountingReader
from lepton_infra.workload.ssh.watchdog import WATCHDOG

T = TypeVar("T")
CONTROL_TIMEOUT_S = 120.0  # a control command (prepare, launch, status, cancel) that takes longer is stuck
TRANSFER_TIMEOUT_S = 300.0  # no byte moved for this long during a transfer: the link is dead
OP_TIMEOUT_S = 30.0  # an SFTP read, opening a channel, an exit status: a node silent this long is hung


@dataclass
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


class NodeConnection:
    """One node's SSH connection, reused for a whole run. Safe to use from several threads for
    `run` (each call opens its own channel); the SFTP helpers share one SFTP channel under a lock."""

    def __init__(
        self,
        inventory: Inventory,
        node: Node,
        connect_timeout: float,
        *,
        pkey: paramiko.PKey | None = None,
        op_timeout: float = OP_TIMEOUT_S,
    ) -> None:
        self.inventory = inventory
        self.node = node
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self.pkey = pkey if pkey is not None else load_client_key(inventory)
        self.client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
        self._expired: str | None = None

    @property
    def name(self) -> str:
        return self.node.name

    # ----------------------------------------------------------------- connect
    def connect(self) -> NodeConnection:
        node, inv = self.node, self.inventory
        parse_host_key(node)  # a bad pinned key fails before anything is dialled
        deadline = time.monotonic() + self.connect_timeout
        login = functools.partial(
            dial,
            pkey=self.pkey,
            key_path=inv.private_key_path,
            deadline=deadline,
            connect_timeout=self.connect_timeout,
        )
        if inv.jump is not None and (self._jump is None or not active(self._jump)):
            self._jump = login(inv.jump, "jump", inv.jump.user)
        jump = self._jump
        sock = (lambda: through_jump(jump, node, deadline)) if jump is not None else None
        self.client = login(node, node.name, inv.user, sock=sock)
        self._expired = None
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
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    @property
    def alive(self) -> bool:
        return self.client is not None and active(self.client)

    def _expire(self, what: str) -> None:
        """The watchdog's callback: the node missed a deadline. Closing the transport wakes every
        thread blocked on this connection; each then fails with a NodeError naming the deadline."""
        self._expired = what
        transport = self.client.get_transport() if self.client else None
        if transport is not None:
            transport.close()

    @contextlib.contextmanager
    def deadline(self, seconds: float, what: str) -> Iterator[None]:
        """Run the body with a deadline: past it the connection is closed and the body's error is
        turned into a NodeError saying the node did not answer (for `seconds` during `what`)."""
        token = WATCHDOG.arm(seconds, lambda: self._expire(what))
        try:
            yield
        except (OSError, EOFError, paramiko.SSHException, NodeError) as exc:
            if self._expired is not None:
                raise NodeError(
                    self.name,
                    f"no answer within {seconds:g} s ({self._expired}); the node or its sshd is hung, "
                    "or the network dropped",
                ) from exc
            raise
        finally:
            WATCHDOG.disarm(token)

    def _transport(self) -> paramiko.Transport:
        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            raise NodeError(self.name, "SSH connection is closed")
        ack_at_once(transport)  # every use opens a channel: its answer must not wait ~40 ms
        return transport

    # ----------------------------------------------------------------- commands
    def _open(self, command: str, timeout: float) -> paramiko.Channel:
        try:
            with self.deadline(self.op_timeout, "starting a command"):
                channel = self._transport().open_session(timeout=self.op_timeout)
                channel.settimeout(timeout)
                channel.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise NodeError(self.name, f"cannot start a command: {exc}", command=_short(command)) from exc
        return channel

    def open_loopback(self, port: int) -> paramiko.Channel:
        """A `direct-tcpip` channel to 127.0.0.1:`port` on the node, through this (pinned) connection:
        how the controller reaches the node's keeper. paramiko.ChannelException when the node's
        sshd refuses (nothing listens there, or its forwarding is off)."""
        with self.deadline(self.op_timeout, "opening a channel"):
            return self._transport().open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=self.op_timeout
            )

    def _finish(self, channel: paramiko.Channel, command: str, stdout: bytes, check: bool) -> CommandResult:
        try:
            with self.deadline(self.op_timeout, "waiting for a command's exit status"):
                stderr = channel.makefile_stderr("rb").read()
                status = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise NodeError(
                self.name, f"connection lost during command: {exc}", command=_short(command)
            ) from exc
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
            with self.deadline(timeout, "running a command"):
                if stdin:
                    ChannelWriter(channel).write(stdin)
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
        writer = ChannelWriter(channel)
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
        except BaseException:
            channel.close()  # the producer failed (e.g. a file changed while sent): the node sees EOF
            raise
        return self._finish(channel, command, stdout, True), value, writer.count

    def run_download(
        self,
        command: str,
        consumer: Callable[[IO[bytes]], T],
        *,
        timeout: float = TRANSFER_TIMEOUT_S,
        stdin: bytes | None = None,
    ) -> tuple[CommandResult, T, int]:
        """Run `command` (given `stdin`) with `consumer` reading its stdout. Returns (result,
        consumer's value, bytes read). A LeptonError of the consumer's passes through as it is."""
        channel = self._open(command, timeout)
        reader = CountingReader(channel)
        try:
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            value = consumer(io.BufferedReader(reader, 1 << 16))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            channel.close()
            raise NodeError(self.name, f"download failed: {exc}", command=_short(command)) from exc
        except BaseException:
            channel.close()
            raise
        return self._finish(channel, command, b"", True), value, reader.count

    # ----------------------------------------------------------------- SFTP (no shell)
    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            if self.client is None:
                raise NodeError(self.name, "SSH connection is closed")
            self._transport()  # closed: a NodeError; open: acknowledges at once before the channel opens
            self._sftp = self.client.open_sftp()
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.op_timeout)
        return self._sftp

    @contextlib.contextmanager
    def _sftp_op(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """The shared SFTP channel, under its lock and a deadline; a failure drops the channel so
        the next call opens a fresh one."""
        with self._sftp_lock:
            try:
                with self.deadline(self.op_timeout, what):
                    yield self._sftp_client()
            except FileNotFoundError:
                raise
            except (OSError, EOFError, paramiko.SSHException, NodeError):
                self._sftp = None
                raise

    def read_file(self, path: str) -> bytes | None:
        """The whole file, or None if it does not exist."""
        try:
            with self._sftp_op(f"reading {path}") as sftp, sftp.open(path, "rb") as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None

    def stat_size(self, path: str) -> int | None:
        """The file's size, or None if it does not exist."""
        try:
            with self._sftp_op(f"reading {path}") as sftp:
                return int(sftp.stat(path).st_size or 0)
        except FileNotFoundError:
            return None

    def read_range(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Up to `limit` bytes of `path` from `offset` (b"" if nothing new or no such file)."""
        try:
            with self._sftp_op(f"reading {path}") as sftp:
                size = sftp.stat(path).st_size or 0
                if size <= offset:
                    return b""
                with sftp.open(path, "rb") as f:
                    f.seek(offset)
                    # prefetch: paramiko pipelines the reads instead of one round trip per 32 KB
                    want = min(limit, size - offset)
                    if want > 1 << 16:
                        f.prefetch(offset + want)
                    return bytes(f.read(want))
        except FileNotFoundError:
            return b""


def _short(command: str) -> str:
    """Commands carry whole scripts (`python -c SOURCE`); error messages show the start only."""
    return command if len(command) <= 160 else command[:157] + "..."
