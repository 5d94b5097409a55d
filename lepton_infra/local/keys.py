"""Ed25519 key material for the local pool: node host keys and the pool's client key.

Generated in-process with `cryptography` (already a paramiko dependency) rather than by running
`ssh-keygen` once per node: a 64-node pool then starts without 64 extra subprocesses."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key on disk: `path` (private, 0600) and `public_line` ('ssh-ed25519 AAAA... comment')."""

    path: Path
    public_line: str


def write_ed25519_key(path: Path, comment: str) -> KeyPair:
    """Create (or replace) an ed25519 key pair at `path` / `path.pub`, private part readable by its owner only.

    The private key is written in OpenSSH format, which both sshd (HostKey) and paramiko read."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = f"{public.decode('ascii')} {comment}"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Create with 0600 from the start (never world-readable, not even for an instant); replace
    # atomically so a half-written key is never picked up by a running sshd or client.
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    tmp.replace(path)
    path.with_name(path.name + ".pub").write_text(public_line + "\n", encoding="ascii")
    return KeyPair(path=path, public_line=public_line)


def read_public_line(path: Path) -> str:
    """The 'type base64' part of the public key stored beside a private key (`path.pub`)."""
    parts = path.with_name(path.name + ".pub").read_text(encoding="ascii").split()
    return " ".join(parts[:2])


def fingerprint(public_line: str) -> str:
    """OpenSSH-style SHA256 fingerprint ('SHA256:...') of a public key line, as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def random_host_key_line() -> str:
    """A valid ed25519 public key line that belongs to no node: for tests that pin the wrong key."""
    public = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return public.decode("ascii")
