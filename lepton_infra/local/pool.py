"""The embedded local pool: N real OpenSSH sshd "nodes" on 127.0.0.<k+2>.

Each node gets its own directory `<state-dir>/nodes/node-<k>/` holding its host key, sshd_config,
home, PID file and log. `up` starts the sshds detached (they outlive the calling process) and writes
`<state-dir>/inventory.json`; `<state-dir>/pool.json` records what was started so `down` stops
exactly those processes, plus anything still running as one of the nodes (detached jobs).
`<state-dir>/lepton-pool.json` is the pool's manifest: the files and node dirs `up` made. `down`
touches nothing it does not list, and a folder without one is not a pool (ConfigError), so `down`
pointed at the wrong folder (one holding a cloud inventory.json, say) deletes nothing.

Host keys are regenerated on every `up`: a restarted node is a rebuilt node, so an inventory from
an earlier `up` no longer matches and the workload layer refuses it, as it would in the cloud. The
pool's client key (`<state-dir>/id_ed25519`) is kept across `up`s."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory, Node, Price
from lepton_infra.local import netns, procs, sshd, startup
from lepton_infra.local.manifest import (
    CLIENT_KEY_FILE,
    DEFAULT_STATE_DIR,
    INVENTORY_FILE,
    MANIFEST_FILE,
    POOL_FILE,
    check_state_dir,
    listed_node_dirs,
    listed_nodes,
    locked,
    node_dirs,
    node_home,
    read_manifest,
    write_manifest,
)
from lepton_infra.local.records import (
    LocalNodeStatus,
    SshdRecord,
    current_user,
    read_network,
    read_records,
)
from lepton_infra.local.sshd_config import find_sshd
from lepton_infra.local.startup import BASTION

MAX_NODES = 64


def _check_nodes(nodes: object) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise ConfigError(
            f"nodes must be a whole number from 1 to {MAX_NODES} (one sshd on 127.0.0.<k+2> per node), "
            f"got {nodes!r}"
        )
    return nodes


_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def cluster_name(name: str | None = None) -> str:
    """The pool's cluster name: `name` when given (checked), else `local-<this host's name>`, so
    run records and logs say which machine's pool it was (the state folder's name said nothing)."""
    if name is None:
        host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]).strip("-")
        return f"local-{host or 'host'}"[:63]
    if not _CLUSTER_NAME.match(name):
        raise ConfigError(
            f"--name {name!r} is not allowed: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def up(
    nodes: int,
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    python: str | None = None,
    bastion: bool = False,
    name: str | None = None,
) -> Inventory:
    """Start `nodes` sshd nodes, write `<state_dir>/inventory.json`, and return the inventory.
    The inventory's cluster is `name` (default `local-<hostname>`, see `cluster_name`).

    With `bastion`, the nodes live in a private network (a network namespace, see local/netns.py)
    that only one more sshd, the bastion, can reach; the inventory's `jump` names it, and a
    direct connection to a node is refused. Refuses (ConfigError) while a pool started from the
    same state dir is still running. A dead pool left behind (machine rebooted, processes killed)
    is cleaned up and replaced."""
    nodes = _check_nodes(nodes)
    cluster = cluster_name(name)
    sshd_path = find_sshd()
    if bastion:
        netns.require()
    state_dir = check_state_dir(state_dir).resolve()
    fresh_dir = not state_dir.exists()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--state-dir {state_dir} cannot be created: {exc.strerror}") from exc
    if fresh_dir:
        state_dir.chmod(0o700)  # holds the pool's private client key
    with locked(state_dir):
        known = listed_nodes(read_manifest(state_dir) or {})
        wanted = {f"node-{k}" for k in range(nodes)} | ({BASTION} if bastion else set())
        write_manifest(state_dir, sorted(known | wanted))
        startup.clear_dead_pool(state_dir)
        sshd.ensure_privsep_dir()
        user = current_user()
        records, jump = startup.start_sshds(state_dir, nodes, bastion, user, sshd_path)

        from lepton_infra.data.local_plane import provision  # the pool's store + queue (issue 9)

        store_url, queue_url = provision(state_dir)
        inventory = Inventory(
            version=1,  # INVENTORY_VERSION, spelled as the Literal the model requires
            cluster=cluster,
            cloud="local",
            user=user,
            private_key_path=str(state_dir / CLIENT_KEY_FILE),
            python=python or sys.executable,
            nodes=[
                Node(
                    name=r.name,
                    host=r.host,
                    port=r.port,
                    private_ip=r.host,
                    host_key=r.host_key,
                    accelerator=None,
                    gpus=0,
                )
                for r in records
                if r.name != BASTION
            ],
            jump=jump,
            store=store_url,
            queue=queue_url,
            price=Price(usd_per_node_hour=0.0, market="local"),  # this machine: no bill per hour
        )
        inventory.save(state_dir / INVENTORY_FILE)
        return inventory


def status(state_dir: Path = DEFAULT_STATE_DIR) -> list[LocalNodeStatus]:
    """One row per node of the pool in `state_dir`; empty when no pool was started there."""
    records = read_records(Path(state_dir).expanduser().resolve())
    return [r.status() for r in records or []]


def down(state_dir: Path = DEFAULT_STATE_DIR) -> list[LocalNodeStatus]:
    """Stop the pool in `state_dir`; returns the nodes whose sshd was running (now stopped).

    Only processes proven to be this pool's are signalled: its recorded sshds (cmdline and start
    time checked, so a reused PID is never hit) and processes running as one of its nodes.
    Idempotent. Removes pool.json and inventory.json (the latter only while it is still this pool's
    inventory); keeps keys, homes, logs and the manifest. A folder without the pool's manifest is
    not touched at all: ConfigError."""
    state_dir = Path(state_dir).expanduser().resolve()
    if not state_dir.exists():
        return []
    if not state_dir.is_dir():
        raise ConfigError(f"--state-dir {state_dir} is a file, not a local pool's folder")
    if read_manifest(state_dir) is None:
        raise ConfigError(
            f"--state-dir {state_dir} is not a local pool's folder (no {MANIFEST_FILE}); nothing was "
            "stopped or deleted. Point --state-dir at the folder `local up` used"
        )
    with locked(state_dir):
        manifest = read_manifest(state_dir) or {}
        records = read_records(state_dir) or []
        stopped = sshd.stop(records, listed_node_dirs(state_dir, manifest))
        network = read_network(state_dir)
        if network is not None:
            netns.delete(network)
        listed = manifest.get("files")
        files = set(listed) if isinstance(listed, list) else set()
        if POOL_FILE in files:
            (state_dir / POOL_FILE).unlink(missing_ok=True)
        if INVENTORY_FILE in files and _is_pool_inventory(state_dir / INVENTORY_FILE, records):
            (state_dir / INVENTORY_FILE).unlink(missing_ok=True)
        return stopped


def _is_pool_inventory(path: Path, records: list[SshdRecord]) -> bool:
    """True if `path` is still the inventory `up` wrote (a local one pinning this pool's host keys),
    not a file someone put there since."""
    try:
        inventory = Inventory.load(path)
    except ConfigError:
        return False
    keys = {r.host_key for r in records}
    return inventory.cloud == "local" and (not keys or {n.host_key for n in inventory.nodes} <= keys)


def stop_node(state_dir: Path, name: str) -> LocalNodeStatus:
    """Stop one node (its sshd and its processes) and leave the rest running: a node failure, for tests."""
    state_dir = Path(state_dir).resolve()
    with locked(state_dir):
        records = read_records(state_dir) or []
        for r in records:
            if r.name == name:
                sshd.stop([r], set())
                return r.status()
    raise ConfigError(
        f"no node named {name!r} in the local pool at {state_dir}; nodes are "
        f"{', '.join(r.name for r in records) or '(none: no pool running)'}"
    )


def pool_processes(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, list[procs.ProcessInfo]]:
    """Every live process of each node in `state_dir` (sshd, sessions, jobs), by node name.

    After `down` this is empty for every node; tests use it to prove no orphans are left."""
    state_dir = Path(state_dir).resolve()
    records = {r.name: r for r in read_records(state_dir) or []}
    refs = []
    for d in node_dirs(state_dir):
        r = records.get(d.name)
        sshd_pids = (r.pid,) if r is not None and r.alive() else ()
        refs.append(procs.NodeRef(d.name, d, d / "home", sshd_pids))
    return procs.find_node_processes(refs)


class LocalPool(NamedTuple):
    """A running local pool: a tuple `(inventory, state_dir)` with the pool's operations attached.

    `with LocalPool.start(3, tmp) as pool:` stops it on exit."""

    inventory: Inventory
    state_dir: Path

    @classmethod
    def start(
        cls,
        nodes: int,
        state_dir: Path = DEFAULT_STATE_DIR,
        *,
        python: str | None = None,
        bastion: bool = False,
    ) -> LocalPool:
        inventory = up(nodes, state_dir, python=python, bastion=bastion)
        return cls(inventory, Path(state_dir).resolve())

    @classmethod
    def open(cls, state_dir: Path = DEFAULT_STATE_DIR) -> LocalPool:
        """The pool already running in `state_dir` (reads its inventory.json)."""
        state_dir = Path(state_dir).resolve()
        return cls(Inventory.load(state_dir / INVENTORY_FILE), state_dir)

    @property
    def inventory_path(self) -> Path:
        return self.state_dir / INVENTORY_FILE

    def home(self, node: str) -> Path:
        """The node's HOME, as seen from this machine."""
        self.inventory.node(node)  # ConfigError naming the nodes if unknown
        return node_home(self.state_dir, node)

    def status(self) -> list[LocalNodeStatus]:
        return status(self.state_dir)

    def processes(self) -> dict[str, list[procs.ProcessInfo]]:
        return pool_processes(self.state_dir)

    def stop_node(self, node: str) -> LocalNodeStatus:
        return stop_node(self.state_dir, node)

    def down(self) -> list[LocalNodeStatus]:
        return down(self.state_dir)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()
