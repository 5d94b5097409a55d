"""The embedded local pool: real OpenSSH sshd "nodes" on loopback, each with its own host
key, config, home and log, described by an ordinary inventory so the workload layer cannot tell
them from cloud VMs.

    inv = up(3, Path(".lepton/local"))   # writes .lepton/local/inventory.json
    status(Path(".lepton/local"))        # [LocalNodeStatus(name, host, port, pid, alive), ...]
    down(Path(".lepton/local"))          # stops exactly what `up` started, and the nodes' jobs
"""

from lepton_infra.local.keys import fingerprint, random_host_key_line
from lepton_infra.local.manifest import (
    DEFAULT_STATE_DIR,
    INVENTORY_FILE,
    MANIFEST_FILE,
    POOL_FILE,
    check_state_dir,
    node_home,
)
from lepton_infra.local.pool import MAX_NODES, LocalPool, down, pool_processes, status, stop_node, up
from lepton_infra.local.ports import node_address
from lepton_infra.local.procs import ProcessInfo
from lepton_infra.local.records import LocalNodeStatus
from lepton_infra.local.testing import with_foreign_host_key

__all__ = [
    "DEFAULT_STATE_DIR",
    "INVENTORY_FILE",
    "MANIFEST_FILE",
    "MAX_NODES",
    "POOL_FILE",
    "LocalPool",
    "LocalNodeStatus",
    "ProcessInfo",
    "down",
    "fingerprint",
    "node_address",
    "node_home",
    "pool_processes",
    "random_host_key_line",
    "status",
    "stop_node",
    "up",
    "check_state_dir",
    "with_foreign_host_key",
]
