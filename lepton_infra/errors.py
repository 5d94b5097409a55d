"""The project's error types. Each maps to one CLI exit code, so scripts can tell bad input
(fix your command) from a broken node (fix or retry the infrastructure) from a failed job."""

from __future__ import annotations

import re

# Private key material in any of the forms a user might paste where a path belongs: a PEM/OpenSSH
# block (whole or cut off; its newlines raw or escaped by repr), the base64 body of an OpenSSH key
# ("openssh-key-v1" encodes to b3BlbnNzaC1rZXktdjE), or any run of three or more base64 lines.
_NL = r"(?:\\n|\n)"
_KEY_MATERIAL = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)"
    r"|b3BlbnNzaC1rZXktdjE(?:[A-Za-z0-9+/=]|" + _NL + r")*"
    r"|[A-Za-z0-9+/=]{16,}(?:" + _NL + r"[A-Za-z0-9+/=]{16,}){2,}"
    r"|-----END [A-Z0-9 ]*PRIVATE KEY-----",
    re.DOTALL,
)
REDACTED = "<private key material, not shown>"


def redact(text: str) -> str:
    """`text` with any private key material replaced: every message that may quote user input (a
    path, a field value) goes through this before it can reach a terminal or a log."""
    return _KEY_MATERIAL.sub(REDACTED, text)


class LeptonError(Exception):
    """Base class. `exit_code` is what the CLI exits with when this error reaches it.

    The message is redacted (see `redact`) so a key pasted where a path belongs is never echoed."""

    exit_code: int = 3

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(LeptonError, ValueError):
    """Bad input: a config key, CLI argument, inventory field or workload layout.

    Messages name the key, the bad value and what is allowed."""

    exit_code = 2


class NodeError(LeptonError):
    """A node could not be reached, refused us, or failed an infrastructure-level command."""

    exit_code = 3

    def __init__(
        self, node: str, message: str, *, command: str | None = None, exit_status: int | None = None
    ):
        self.node = node
        self.command = command
        self.exit_status = exit_status
        detail = f"node {node!r}: {message}"
        if command is not None:
            detail += f" (command: {command!r}"
            detail += f", exit status {exit_status})" if exit_status is not None else ")"
        super().__init__(detail)


class HostKeyMismatch(NodeError):
    """The node presented a host key other than the one pinned in the inventory."""

    def __init__(self, node: str, expected_fingerprint: str, actual_fingerprint: str):
        self.expected_fingerprint = expected_fingerprint
        self.actual_fingerprint = actual_fingerprint
        super().__init__(
            node,
            "host key mismatch: the inventory pins "
            f"{expected_fingerprint} but the node presented {actual_fingerprint}. "
            "Nothing was run. If the node was rebuilt, regenerate the inventory; otherwise treat this as an attack.",
        )


class JobFailed(LeptonError):
    """The job ran but at least one node's process exited non-zero (or was lost)."""

    exit_code = 1


class NoSpace(LeptonError):
    """A disk (or quota) on the controller has no room for what must be written there: the
    environment failed, not the input (exit 3). The message names the file, the folder, how much
    was needed and what was free."""

    exit_code = 3
