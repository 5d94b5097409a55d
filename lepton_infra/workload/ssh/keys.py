"""Which keys an SSH login trusts and offers: the node's host key pinned from the inventory (any
other key is refused, naming both fingerprints), and the client's private key read once, before
any node is dialled, so a bad key file is one clear ConfigError about the file."""

from __future__ import annotations

import base64
import binascii
import logging
import stat
from pathlib import Path

import paramiko

from lepton_infra.errors import ConfigError, HostKeyMismatch, redact
from lepton_infra.inventory import Inventory, Jump, Node

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


class PinnedKeyPolicy(paramiko.RejectPolicy):  # type: ignore[misc]
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
