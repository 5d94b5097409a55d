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
bastion's host key pinned like the nodes'.

The parts: `keys` (host-key pinning, the client key), `dial` (one login, through a jump host or
not), `watchdog` (deadlines), `streams` (a command channel as a file), `connection`
(`NodeConnection`), `fanout` (`parallel`, `connect_all`)."""

from lepton_infra.workload.ssh.connection import (
    CONTROL_TIMEOUT_S,
    OP_TIMEOUT_S,
    TRANSFER_TIMEOUT_S,
    CommandResult,
    NodeConnection,
)
from lepton_infra.workload.ssh.fanout import connect_all, parallel
from lepton_infra.workload.ssh.keys import fingerprint_of_line, load_client_key, parse_host_key

__all__ = [
    "CONTROL_TIMEOUT_S",
    "OP_TIMEOUT_S",
    "TRANSFER_TIMEOUT_S",
    "CommandResult",
    "NodeConnection",
    "connect_all",
    "fingerprint_of_line",
    "load_client_key",
    "parallel",
    "parse_host_key",
]
