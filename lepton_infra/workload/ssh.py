"""SSH to the nodes: one paramiko connection per node, host key pinned from the inventory.

`NodeConnection` is the one small interface the rest of the workload layer uses: `run` a command
(optionally streaming its stdin or stdout), and read files over SFTP (no shell per read). Every
SSH option lives here. Host keys come only from the inventory (RejectPolicy, no
~/.ssh/known_hosts, no ~/.ssh/config, no keys from ~/.ssh); a mismatch raises HostKeyMismatch with
both SHA256 fingerprints. `connect_all` opens every node's connection in parallel and either
returns all of them or raises, so nothing runs anywhere unless every node checked out.

Every remote operation has a deadline. paramiko waits without one in places (a channel request,
an exit status, an SFTP reply), so a node whose sshd is frozen would block the controller for
good: a watchdog closes the connection of any operation past its deadline, which wakes every such
wait, and the operation fails with a NodeError that says the node stopped answering.

The client key is read once, before any connection: a key with a passphrase, garbage, an
unreadable or missing file is a ConfigError about the key file (exit 2) at once, not a retry loop
blamed on a node; a key file others may read is a warning. With an inventory `jump` host, every
node is reached through a `direct-tcpip` channel on a connection to the bastion (ProxyJump), the
bastion's host key pinned like the nodes'."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import itertools
import logging
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import paramiko
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from lepton_infra.errors import ConfigError, HostKeyMismatch, NodeError, redact
from lepton_infra.inventory import Inventory, Jump, Node

T = TypeVar("T")
R = TypeVar("R")
CONTROL_TIMEOUT_S = 120.0  # a control command (prepare, launch, status, cancel) that takes longer is stuck
TRANSFER_TIMEOUT_S = 300.0  # no byte moved for this long during a transfer: the link is dead
OP_TIMEOUT_S = 30.0  # an SFTP read, opening a channel, an exit status: a node silent this long is hung
KEEPALIVE_S = 15
_MAX_KEY_FILE_BYTES = 1 << 16  # private keys are a few KB; anything larger is not one
log = logging.getLogger("lepton_infra.ssh")


def fingerprint_of_line(host_key_line: str) -> str:
    """OpenSSH's `SHA256:...` fingerprint of an `ssh-ed25519 AAAA...` line (paramiko's own
    `PKey.fingerprint`, comparable to `ssh-keygen -l`)."""
    parts = host_key_line.split()
    try:
        return str(
            paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True)).fingerprint
        )
    except (IndexError, binascii.Error, ValueError, paramiko.SSHException):
        return "<unparseable key>"


def parse_host_key(node: Node | Jump) -> paramiko.PKey:
    name = node.name if isinstance(node, Node) else "jump"
    key_type, data = node.host_key.split()[:2]
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError, paramiko.SSHException) as exc:
        raise ConfigError(f"host key of {name!r} is not a valid {key_type} public key: {exc}") from exc


class _Transport(paramiko.Transport):  # type: ignore[misc]
    """paramiko's transport offering AES-GCM first: one AEAD pass per packet instead of AES-CTR
    plus a separate HMAC, which is what bulk shipping spends its CPU on (OpenSSH 6.2+ has it;
    the other ciphers stay offered, later, for servers without it)."""

    _preferred_ciphers = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        *(c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c),
    )


class _PinnedKeyPolicy(paramiko.RejectPolicy):  # type: ignore[misc]
    """Called only when the node's key is not the pinned one (e.g. another key type): refuse, and
    say which key it offered."""

    def __init__(self, name: str, host_key: str) -> None:
        self.name = name
        self.host_key = host_key

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyMismatch(self.name, fingerprint_of_line(self.host_key), key.fingerprint)


def load_client_key(inventory: Inventory) -> paramiko.PKey | None:
    """The inventory's private key, read and parsed once, before any node is dialled; None means
    the SSH agent. Every problem with the file is a ConfigError about the file (never its
    contents: a key pasted where the path belongs is not echoed)."""
    raw = inventory.private_key_path
    if raw is None:
        return None
    shown = redact(repr(raw))
    what = f"inventory private_key_path {shown}"
    if "PRIVATE KEY" in raw or "\n" in raw:
        raise ConfigError(
            f"{what} holds key material, not a path; put the key in a file (chmod 600) and give its path"
        )
    path = Path(raw).expanduser()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} cannot be used: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} is not a regular file")
    if info.st_size > _MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{what} is {info.st_size} bytes, too large to be a private key")
    if info.st_mode & 0o077:
        # OpenSSH refuses such a key outright ("UNPROTECTED PRIVATE KEY FILE"); we warn and go on.
        log.warning(
            "warning: private key file %s is accessible by group/others (mode %04o); run `chmod 600 %s`",
            shown,
            stat.S_IMODE(info.st_mode),
            shown,
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror}") from None
    if data.lstrip().startswith((b"ssh-", b"ecdsa-")):
        raise ConfigError(f"{what} is a public key; give the private key file (the one without .pub)")
    try:
        return paramiko.PKey.from_path(path)
    except TypeError:
        # cryptography's way of saying "encrypted, and no passphrase given"
        raise ConfigError(
            f"{what} is protected by a passphrase; lepton-infra does not prompt for one: load the key "
            "into an SSH agent and set private_key_path to null, or use a key without a passphrase"
        ) from None
    except (ValueError, paramiko.SSHException, paramiko.pkey.UnknownKeyType):
        raise ConfigError(
            f"{what} is not a private key lepton-infra can read (OpenSSH or PEM ed25519, ECDSA or RSA)"
        ) from None


class _Watchdog:
    """One daemon thread for every connection: an operation arms a deadline and disarms it when
    done; an operation still running at its deadline gets its `on_expire` called (which closes
    that node's connection, waking whatever paramiko wait is stuck)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Callable[[], None]]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, on_expire: Callable[[], None]) -> int:
        with self._cond:
            token = next(self._ids)
            self._armed[token] = (time.monotonic() + seconds, on_expire)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lepton-ssh-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [t for t, (when, _) in self._armed.items() if when <= now]
                expired = [self._armed.pop(t)[1] for t in due]
                if not expired:
                    nearest = min((when for when, _ in self._armed.values()), default=now + 60.0)
                    self._cond.wait(max(0.01, nearest - now))
                    continue
            for callback in expired:
                with contextlib.suppress(Exception):  # a callback must not kill the watchdog
                    callback()


_WATCHDOG = _Watchdog()


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
        # Not `channel.sendall`: it re-slices the rest of its bytes after every 32 KB packet, which
        # copies a 1 MB write 16 times over (0.68 of 2.4 s of a 100 MB upload, bench/RESULTS.md);
        # a memoryview slice copies nothing.
        view = memoryview(b).cast("B")
        while view:
            sent = self.channel.send(view)
            view = view[sent:]
        self.count += len(b)
        return len(b)


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
        if inv.jump is not None and (self._jump is None or not _active(self._jump)):
            self._jump = self._dial(inv.jump, "jump", inv.jump.host, inv.jump.port, inv.jump.user, deadline)
        jump = self._jump

        def sock() -> paramiko.Channel | None:
            if jump is None:
                return None
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

        self.client = self._dial(node, node.name, node.host, node.port, inv.user, deadline, sock)
        self._expired = None
        return self

    def _dial(
        self,
        target: Node | Jump,
        name: str,
        host: str,
        port: int,
        user: str,
        deadline: float,
        sock: Callable[[], paramiko.Channel | None] | None = None,
    ) -> paramiko.SSHClient:
        """One SSH login with the pinned key of `target`, retried on transient failures until
        `deadline`; errors name `name` (the node, or "jump")."""
        pinned = parse_host_key(target)
        key_path = self.inventory.private_key_path

        def attempt() -> paramiko.SSHClient:
            client = paramiko.SSHClient()
            # Only the inventory's key, under the name paramiko looks up ("[host]:port" off port 22).
            entry = host if port == 22 else f"[{host}]:{port}"
            client.get_host_keys().add(entry, pinned.get_name(), pinned)
            client.set_missing_host_key_policy(_PinnedKeyPolicy(name, target.host_key))
            remaining = max(0.5, deadline - time.monotonic())
            try:
                client.connect(
                    host,
                    port=port,
                    username=user,
                    pkey=self.pkey,
                    sock=sock() if sock is not None else None,
                    timeout=remaining,
                    banner_timeout=remaining,
                    auth_timeout=remaining,
                    channel_timeout=remaining,
                    transport_factory=_Transport,
                    look_for_keys=False,
                    allow_agent=self.pkey is None,  # the agent only when the inventory says so
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
                "no answer"
                if isinstance(exc, socket.timeout | TimeoutError)
                else str(exc) or type(exc).__name__
            )
            via = " through the jump host" if sock is not None and self.inventory.jump is not None else ""
            raise NodeError(
                name, f"cannot connect to {host}:{port}{via} within {self.connect_timeout:g} s: {reason}"
            ) from exc
        assert client is not None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_S)
        return client

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
        return self.client is not None and _active(self.client)

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
        token = _WATCHDOG.arm(seconds, lambda: self._expire(what))
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
            _WATCHDOG.disarm(token)

    def _transport(self) -> paramiko.Transport:
        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            raise NodeError(self.name, "SSH connection is closed")
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
                    _ChannelWriter(channel).write(stdin)
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
        reader = _CountingReader(channel)
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


def _active(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return bool(transport and transport.is_active())


def _short(command: str) -> str:
    """Commands carry whole scripts (`python -c SOURCE`); error messages show the start only."""
    return command if len(command) <= 160 else command[:157] + "..."


def parallel(
    items: Sequence[T],
    fn: Callable[[T], R],
    *,
    max_workers: int = 32,
    on_interrupt: Callable[[], None] | None = None,
) -> list[R]:
    """fn over items in threads; results in order. Waits for all, then raises the first error in
    item order (a HostKeyMismatch before anything else: it is the one the user must see).
    An interrupt while waiting calls `on_interrupt` (close the connections, so the threads end)
    before the pool is waited for."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            errors = [f.exception() for f in futures]
        except BaseException:
            if on_interrupt is not None:
                on_interrupt()
            raise
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
    pkey = load_client_key(inventory)  # once, before any node: a bad key file is one clear error
    conns = [NodeConnection(inventory, node, connect_timeout, pkey=pkey) for node in targets]
    try:
        parallel(conns, lambda c: c.connect())
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    return conns
