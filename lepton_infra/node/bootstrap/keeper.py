"""The node keeper: this bootstrap kept running between runs, so the `prepare` of a run costs one
request on the controller's open SSH connection instead of an interpreter start and an import on
the node (~60-100 ms of an unchanged re-ship's ~200 ms).

How it is reached, and why it is safe:
- It listens on a loopback port; the controller reaches it through a `direct-tcpip` channel of
  its pinned SSH connection (sshd's own forwarding: nothing listens beyond loopback).
- Any local user can connect to a loopback port, so both sides prove they know a 32-byte token
  before a request is read or sent. The token lives in ~/.lepton/keeper-<version>.json (0600) and
  the controller learnt it over SSH from the `prepare` that started the keeper. The proofs are
  HMACs over two fresh nonces: the token never crosses the socket, and a process squatting the
  port of a dead keeper learns nothing about the request.
- One keeper per bootstrap version (the package name carries its digest); it exits after IDLE_S
  without a request. An exclusive flock held for its whole life says it is alive, and a kill
  releases it.
- One request at a time, in the main thread: `prepare` forks its background settle, and a process
  without threads forks safely. A silent client is dropped after CLIENT_TIMEOUT_S.

Wire protocol, JSON lines: C: {"hello", "version"}; K: {"nonce", "proof"} (or {"refused"});
C: {"proof", "command", "bytes"} + that many bytes of request; K: {"answer"} or {"error"}; then
more {"command", "bytes"} + request / answer pairs on the same connection, until the client ends it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import socket

from .cache import lepton_home

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

IDLE_S = 900.0
CLIENT_TIMEOUT_S = 30.0
MAX_REQUEST = 256 << 20
KEEP_TREES = 8  # recent trees remembered (commands.py), so their next prepare sends only a key
COMMANDS = ("prepare",)


def version() -> str:
    """This bootstrap's version: its package name (lepton_bootstrap_<digest> on a node)."""
    return __package__ or "bootstrap"


def _paths(ver: str) -> tuple[str, str]:
    base = os.path.join(lepton_home(), f"keeper-{ver}")
    return base + ".json", base + ".lock"


def proof(token: str, role: bytes, *nonces: str) -> str:
    """HMAC-SHA256 of the role and both nonces under the token: what each side shows the other."""
    msg = role + b"|" + b"|".join(n.encode() for n in nonces)
    return hmac.new(bytes.fromhex(token), msg, hashlib.sha256).hexdigest()


def ensure(
    serve: Callable[[str, dict[str, Any]], dict[str, Any]], after: Callable[[], None] | None = None
) -> dict[str, Any] | None:
    """The address of this version's keeper (`{"port", "token", "version", "fresh"}`), started
    detached when none runs (then `fresh`: it was forked from this process, and knows what it
    knew). None when one cannot be had (no loopback, no fork): the caller goes on without.
    `after` runs in the keeper once each answer is sent (its queued background work), and once
    before the first request (it switches the keeper's queue on)."""
    ver = version()
    info_path, lock_path = _paths(ver)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a keeper of this version runs
        os.close(fd)
        with contextlib.suppress(OSError, ValueError), open(info_path, encoding="utf-8") as f:
            info = json.load(f)
            if isinstance(info, dict) and info.get("version") == ver:
                return {**{k: info[k] for k in ("port", "token", "version")}, "fresh": False}
        return None
    try:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
    except OSError:
        os.close(fd)
        return None
    info = {"port": listener.getsockname()[1], "token": secrets.token_hex(32), "version": ver}
    tmp = f"{info_path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, info_path)
    from .spares import detach

    # The grandchild inherits the lock (flock belongs to the open file, shared across fork): the
    # keeper is "alive" from this moment until its last descriptor closes.
    detach(lambda: _serve_forever(listener, info, serve, info_path, after or (lambda: None)))
    listener.close()
    os.close(fd)
    return {**info, "fresh": True}


def _serve_forever(
    listener: socket.socket,
    info: dict[str, Any],
    serve: Callable[[str, dict[str, Any]], dict[str, Any]],
    info_path: str,
    after: Callable[[], None],
) -> None:
    # Off the run tree: the node's idle watchdog counts a process whose cwd is under ~/.lepton/runs
    # as a job, and a keeper must never keep an idle node (and its bill) alive.
    os.chdir("/")
    after()
    listener.settimeout(IDLE_S)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:  # noqa: UP041 - not yet TimeoutError on a node's Python < 3.10
                return  # idle: a later prepare starts a fresh keeper
            with conn:
                conn.settimeout(CLIENT_TIMEOUT_S)
                # Whatever a client sends (anyone on the node can connect), the keeper serves on.
                with contextlib.suppress(Exception):
                    _one(conn, info["token"], serve, after)
            after()  # whatever became of the connection, its queued work runs
    finally:
        with contextlib.suppress(OSError, ValueError), open(info_path, encoding="utf-8") as f:
            if json.load(f).get("token") == info["token"]:
                os.unlink(info_path)


def _one(
    conn: socket.socket,
    token: str,
    serve: Callable[[str, dict[str, Any]], dict[str, Any]],
    after: Callable[[], None],
) -> None:
    stream = conn.makefile("rwb")
    hello = json.loads(stream.readline(4096))
    if hello.get("version") != version():
        _send(stream, {"refused": f"this keeper runs {version()}"})
        return
    client_nonce, nonce = str(hello["hello"]), secrets.token_hex(16)
    _send(stream, {"nonce": nonce, "proof": proof(token, b"keeper", client_nonce, nonce)})
    head = json.loads(stream.readline(4096))
    if not hmac.compare_digest(str(head.get("proof")), proof(token, b"client", client_nonce, nonce)):
        return  # not our controller: it gets nothing, not even an error
    while head:  # proven once: further requests on this connection need no new proof
        command, size = head.get("command"), int(head.get("bytes", -1))
        if command not in COMMANDS or not 0 <= size <= MAX_REQUEST:
            _send(stream, {"error": f"bad request: command {command!r}, {size} bytes"})
            return
        body = stream.read(size)
        if len(body) != size:
            return
        try:
            answer: dict[str, Any] = {"answer": serve(command, json.loads(body))}
        except Exception as exc:  # noqa: BLE001 - the controller reports it as the node's error
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        _send(stream, answer)
        after()
        line = stream.readline(4096)
        head = json.loads(line) if line else None


def _send(stream: Any, obj: dict[str, Any]) -> None:
    stream.write(json.dumps(obj).encode() + b"\n")
    stream.flush()
