"""The controller's side of a node's keeper (lepton_infra/node/bootstrap/keeper.py): a bootstrap
kept running on the node, reached through a `direct-tcpip` channel of the pinned SSH connection.
A command it takes costs no interpreter start on the node.

The keeper's address and token come from the `prepare` answer that started it and are kept in
a small ledger on the controller, one file per node (0600: the token is a secret). It is keyed by
user, host, port and the node's pinned host key, so a different machine at the same address
never gets another node's token. The ledger is only a hint:
- if the keeper is gone, the channel cannot open, its version differs, or it cannot prove it knows
  the token, nothing was asked and `call` returns None, so the caller runs the command as before;
- once a request has been sent, a lost answer is the node's error, as a lost command is."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paramiko

from lepton_infra.errors import NodeError
from lepton_infra.node.bootstrap.keeper import KEEP_TREES, proof  # the node's side of the same handshake
from lepton_infra.workload.hash_cache import default_hash_cache_dir
from lepton_infra.workload.remote import BOOTSTRAP_MODULE
from lepton_infra.workload.ssh import NodeConnection

HELLO_TIMEOUT_S = 5.0  # a keeper that does not greet within this is busy or gone: run the command instead
ANSWER_TIMEOUT_S = 120.0  # as a control command's limit (ssh/connection.py CONTROL_TIMEOUT_S)


def ledger_dir() -> Path:
    """Beside the hash cache: $XDG_CACHE_HOME/lepton-infra/keepers."""
    return default_hash_cache_dir().parent / "keepers"


def _entry_path(conn: NodeConnection) -> Path:
    node, inv = conn.node, conn.inventory
    who = f"{inv.user}@{node.host}:{node.port} {node.host_key}"
    return ledger_dir() / f"{hashlib.sha256(who.encode()).hexdigest()[:32]}.json"


def known(conn: NodeConnection) -> dict[str, Any] | None:
    """The ledger's keeper for this node and this bootstrap version (with `trees`, the keys of the
    trees it was last given), if any."""
    try:
        entry = json.loads(_entry_path(conn).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(entry, dict) and entry.get("version") == BOOTSTRAP_MODULE
    if not (ok and isinstance(entry.get("port"), int) and isinstance(entry.get("token"), str)):
        return None
    trees = entry.get("trees")
    entry["trees"] = [str(t) for t in trees] if isinstance(trees, list) else []
    return entry


def remember(conn: NodeConnection, address: Any = None, *, tree: str | None = None) -> None:
    """Keep the keeper address a `prepare` answered (a new keeper knows no tree yet), and/or that its
    keeper was given the tree `tree`. Best effort: without it, the next run runs the command."""
    entry = known(conn) if address is None else None
    if isinstance(address, dict):  # a keeper just started knows no tree but the one given now
        entry = {k: address.get(k) for k in ("port", "token", "version")} | {"trees": []}
    if entry is None:
        return
    if tree is not None:
        entry["trees"] = [*(t for t in entry["trees"] if t != tree), tree][-KEEP_TREES:]
    path = _entry_path(conn)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f)
        os.replace(tmp, path)


def forget(conn: NodeConnection) -> None:
    with contextlib.suppress(OSError):
        _entry_path(conn).unlink()


def call(conn: NodeConnection, command: str, bodies: Sequence[bytes]) -> dict[str, Any] | None:
    """The keeper's answer to `command` with the first of the JSON `bodies`, or with the next one
    when it answers `{"need": ...}` (a short request it cannot complete, then the full one, on the
    same channel); None when no keeper took it."""
    entry = known(conn)
    if entry is None:
        return None
    try:
        channel = conn.open_loopback(entry["port"])
    except (OSError, EOFError, paramiko.SSHException, NodeError):
        forget(conn)
        return None
    with channel:
        stream = channel.makefile("rwb")
        nonce = secrets.token_hex(16)
        try:
            channel.settimeout(HELLO_TIMEOUT_S)
            stream.write(json.dumps({"hello": nonce, "version": BOOTSTRAP_MODULE}).encode() + b"\n")
            stream.flush()
            greeting = json.loads(stream.readline(4096))
            theirs = str(greeting["nonce"])
            mine = proof(entry["token"], b"keeper", nonce, theirs)
            trusted = hmac.compare_digest(str(greeting["proof"]), mine)
        except (OSError, EOFError, ValueError, KeyError, TypeError, paramiko.SSHException):
            trusted = False
        if not trusted:  # gone, refused, or not our keeper: it was told nothing
            forget(conn)
            return None
        head: dict[str, Any] = {"proof": proof(entry["token"], b"client", nonce, theirs)}
        reply: Any = None
        try:
            with conn.deadline(ANSWER_TIMEOUT_S, f"the node's keeper running {command}"):
                channel.settimeout(ANSWER_TIMEOUT_S)
                for body in bodies:
                    head |= {"command": command, "bytes": len(body)}
                    stream.write(json.dumps(head).encode() + b"\n" + body)
                    stream.flush()
                    reply = json.loads(stream.readline())
                    head = {}
                    if not (isinstance(reply, dict) and isinstance(reply.get("answer"), dict)):
                        break
                    if "need" not in reply["answer"]:
                        break
        except (OSError, EOFError, ValueError, paramiko.SSHException) as exc:
            raise NodeError(
                conn.name, f"the node's keeper stopped answering during {command}: {exc}"
            ) from exc
    answer = reply.get("answer") if isinstance(reply, dict) else None
    if not isinstance(answer, dict) or "need" in answer:
        why = reply.get("error") if isinstance(reply, dict) and "error" in reply else reply
        raise NodeError(conn.name, f"{command} failed on the node: {why}")
    return answer
