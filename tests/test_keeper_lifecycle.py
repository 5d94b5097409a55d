"""The node keeper's life on its own (lepton_infra/node/bootstrap/keeper.py): one per bootstrap
version, its address private to the user, gone by itself once idle."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.node.bootstrap import keeper


def _lock_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _greeting(port: int) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        stream = conn.makefile("rwb")
        stream.write(json.dumps({"hello": "00" * 16, "version": keeper.version()}).encode() + b"\n")
        stream.flush()
        return dict(json.loads(stream.readline()))


def test_one_keeper_per_version_private_address_and_it_ends_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".lepton").mkdir()
    monkeypatch.setattr(keeper, "IDLE_S", 4.0)  # the forked keeper inherits it; the steps below fit in it
    served: list[str] = []

    first = keeper.ensure(lambda command, request: served.append(command) or {})
    assert first is not None and first.pop("fresh") is True  # started now
    assert keeper.ensure(lambda command, request: {}) == {**first, "fresh": False}  # the running one
    info, lock = (tmp_path / ".lepton" / f"keeper-{keeper.version()}{ext}" for ext in (".json", ".lock"))
    assert info.stat().st_mode & 0o777 == 0o600 and json.loads(info.read_text())["token"] == first["token"]
    for junk in (b"[]\n", b"not json\n", b'{"hello": 1}\n'):  # anyone on the node may connect
        with socket.create_connection(("127.0.0.1", first["port"]), timeout=5) as conn:
            conn.sendall(junk)
            conn.recv(4096)
    greeting = _greeting(first["port"])  # it still serves
    expected = keeper.proof(first["token"], b"keeper", "00" * 16, greeting["nonce"])
    assert greeting["proof"] == expected

    deadline = time.monotonic() + 30
    while not _lock_free(lock) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _lock_free(lock), "the keeper did not end after its idle time"
    assert not info.exists()
    with pytest.raises(OSError):
        _greeting(first["port"])
