"""What `<state-dir>/pool.json` remembers: one `SshdRecord` per node sshd `up` started (enough to
prove later that a PID is still that sshd), and the private network of `up --bastion`.

`LocalNodeStatus` is one row of `local status`: whether a local node's sshd runs. It is not the
workload's `NodeStatus` (a job's state on a node)."""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lepton_infra.errors import ConfigError
from lepton_infra.local import netns, procs
from lepton_infra.local.manifest import POOL_FILE

_POOL_FILE_VERSION = 1


@dataclass(frozen=True)
class LocalNodeStatus:
    """One row of `local status`: the node, where it listens, its sshd PID, and whether that sshd runs."""

    name: str
    host: str
    port: int
    pid: int
    alive: bool


@dataclass
class SshdRecord:
    """What pool.json remembers about one node's (or the bastion's) sshd."""

    name: str
    host: str
    port: int
    pid: int
    start_time: int | None
    cmdline: list[str]
    node_dir: str
    home: str
    config: str
    log: str
    host_key: str = ""
    log_offset: int = field(default=0, repr=False)
    netns: str = ""  # the private network namespace the sshd runs in (`up --bastion`), if any

    def alive(self) -> bool:
        """Whether the recorded sshd still runs (its cmdline and start time checked, so a reused PID
        is not mistaken for it)."""
        return procs.is_expected(self.pid, self.cmdline, self.start_time)

    def status(self) -> LocalNodeStatus:
        return LocalNodeStatus(self.name, self.host, self.port, self.pid, self.alive())


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def read_records(state_dir: Path) -> list[SshdRecord] | None:
    """The sshds recorded in `state_dir`'s pool.json; None when no pool was started there."""
    path = state_dir / POOL_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [SshdRecord(**node) for node in data["nodes"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: unreadable local pool state ({exc}); stop stray sshd processes by hand and delete the file"
        ) from exc


def read_network(state_dir: Path) -> netns.PrivateNet | None:
    """The private network `up --bastion` recorded, if any (and if pool.json is readable)."""
    try:
        data = json.loads((state_dir / POOL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return netns.from_dict(data.get("network")) if isinstance(data, dict) else None


def write_records(
    state_dir: Path, records: list[SshdRecord], sshd: Path, network: netns.PrivateNet | None = None
) -> None:
    """Replace pool.json (written aside, then renamed: a reader never sees half a file)."""
    data = {
        "network": network.to_dict() if network else None,
        "version": _POOL_FILE_VERSION,
        "state_dir": str(state_dir),
        "sshd": str(sshd),
        "user": current_user(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "nodes": [asdict(r) for r in records],
    }
    tmp = state_dir / (POOL_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_dir / POOL_FILE)
