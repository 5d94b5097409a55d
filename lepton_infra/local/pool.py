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

import contextlib
import fcntl
import json
import os
import pwd
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from lepton_infra.errors import ConfigError, NodeError
from lepton_infra.inventory import Inventory, Jump, Node, Price
from lepton_infra.local import netns, procs
from lepton_infra.local.keys import read_public_line, write_ed25519_key
from lepton_infra.local.sshd_config import NodeConfig, account_locked, check_config_path, find_sshd, render

DEFAULT_STATE_DIR = Path(".lepton/local")
MAX_NODES = 64
POOL_FILE = "pool.json"
MANIFEST_FILE = "lepton-pool.json"
INVENTORY_FILE = "inventory.json"
CLIENT_KEY_FILE = "id_ed25519"
_LOCK_FILE = ".lock"
# What a pool directory holds. A folder holding only these (an older lepton-infra's pool, which had
# no manifest) may be reused by `up`; any other content means the folder is someone else's.
_POOL_ENTRIES = frozenset(
    {
        MANIFEST_FILE,
        POOL_FILE,
        POOL_FILE + ".tmp",
        CLIENT_KEY_FILE,
        CLIENT_KEY_FILE + ".pub",
        "authorized_keys",
        "nodes",
        _LOCK_FILE,
    }
)
STARTUP_TIMEOUT_S = 30.0
BASTION = "bastion"  # the jump host's name in pool.json, status and the node dirs
_POOL_FILE_VERSION = 1
# Listening ports are drawn from below Linux's ephemeral range (32768-60999), so an outgoing
# connection can never take a port between our probe and sshd's bind; the draw is random so pools
# started at the same time (tests beside a demo) rarely pick the same one, and a clash is retried.
_PORT_RANGE = (20000, 32767)
_BIND_ATTEMPTS = 8
_random = random.SystemRandom()
# sshd processes started by this Python process, kept so `down` can reap them (no zombies) and
# Python does not warn about a "still running" subprocess it lost track of.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class NodeStatus:
    """One row of `local status`: the node, where it listens, its sshd PID, and whether that sshd runs."""

    name: str
    host: str
    port: int
    pid: int
    alive: bool


@dataclass
class _NodeRecord:
    """What pool.json remembers about one node's sshd."""

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
        return procs.is_expected(self.pid, self.cmdline, self.start_time)

    def status(self) -> NodeStatus:
        return NodeStatus(self.name, self.host, self.port, self.pid, self.alive())


def node_address(index: int) -> str:
    """Node k listens on 127.0.0.<k+2> (127.0.0.1 stays free for everything else on the machine)."""
    return f"127.0.0.{index + 2}"


def node_dir(state_dir: Path, name: str) -> Path:
    return Path(state_dir).resolve() / "nodes" / name


def node_home(state_dir: Path, name: str) -> Path:
    """The node's HOME (`~` in its remote commands): `<state-dir>/nodes/<name>/home`."""
    return node_dir(state_dir, name) / "home"


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _validate_nodes(nodes: object) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise ConfigError(
            f"nodes must be a whole number from 1 to {MAX_NODES} (one sshd on 127.0.0.<k+2> per node), "
            f"got {nodes!r}"
        )
    return nodes


def check_state_dir(state_dir: Path) -> Path:
    """The absolute state dir, or ConfigError, before anything is written: a path sshd_config cannot
    hold, a file (or a file on the way), a folder we may not write, or a folder with other content
    (it may hold a cloud inventory.json that `up` would overwrite)."""
    state_dir = Path(state_dir).expanduser().absolute()
    check_config_path(state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"--state-dir {state_dir} is a file; the local pool needs a directory there")
    existing = state_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--state-dir {state_dir}: {existing} is a file, so no directory can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--state-dir {state_dir}: {existing} is not writable by this user")
    if state_dir.is_dir() and _read_manifest(state_dir) is None:
        foreign = sorted(p.name for p in state_dir.iterdir() if p.name not in _POOL_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"--state-dir {state_dir} is not empty and is not a local pool's folder (it has {shown} "
                f"and no {MANIFEST_FILE}); choose an empty or new folder"
            )
    return state_dir


def _read_manifest(state_dir: Path) -> dict[str, object] | None:
    """The pool's manifest; for a pool made before manifests existed, one built from its pool.json."""
    path = state_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        old = state_dir / POOL_FILE
        try:
            legacy = json.loads(old.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(legacy, dict) or legacy.get("state_dir") != str(state_dir):
            return None
        return {
            "files": [POOL_FILE, INVENTORY_FILE],
            "nodes": [n.get("name") for n in legacy.get("nodes", [])],
        }
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: unreadable local pool manifest ({exc}); delete the folder by hand"
        ) from exc
    if not isinstance(data, dict) or data.get("kind") != "lepton-local-pool":
        raise ConfigError(f"{path}: not a lepton-infra local pool manifest")
    return data


def _write_manifest(state_dir: Path, nodes: list[str]) -> None:
    files = [
        POOL_FILE,
        INVENTORY_FILE,
        CLIENT_KEY_FILE,
        CLIENT_KEY_FILE + ".pub",
        "authorized_keys",
        _LOCK_FILE,
    ]
    data = {
        "kind": "lepton-local-pool",
        "version": 1,
        "state_dir": str(state_dir),
        "files": files,
        "nodes": nodes,
    }
    tmp = state_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_dir / MANIFEST_FILE)


def _manifest_node_dirs(state_dir: Path, manifest: dict[str, object]) -> set[Path]:
    names = manifest.get("nodes")
    listed = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    return {state_dir / "nodes" / n for n in listed if (state_dir / "nodes" / n).is_dir()}


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state dir (two `up`s at once would both see 'no pool')."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / _LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_pool(state_dir: Path) -> list[_NodeRecord] | None:
    path = state_dir / POOL_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [_NodeRecord(**node) for node in data["nodes"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: unreadable local pool state ({exc}); stop stray sshd processes by hand and delete the file"
        ) from exc


def _read_network(state_dir: Path) -> netns.PrivateNet | None:
    try:
        data = json.loads((state_dir / POOL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return netns.from_dict(data.get("network")) if isinstance(data, dict) else None


def _write_pool(
    state_dir: Path, records: list[_NodeRecord], sshd: Path, network: netns.PrivateNet | None = None
) -> None:
    data = {
        "network": network.to_dict() if network else None,
        "version": _POOL_FILE_VERSION,
        "state_dir": str(state_dir),
        "sshd": str(sshd),
        "user": _current_user(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "nodes": [asdict(r) for r in records],
    }
    tmp = state_dir / (POOL_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_dir / POOL_FILE)


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # sshd sets SO_REUSEADDR too, so a port in TIME_WAIT is usable and should count as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(host: str) -> int:
    for _ in range(200):
        port = _random.randint(*_PORT_RANGE)
        if _port_is_free(host, port):
            return port
    raise NodeError(host, f"no free TCP port in {_PORT_RANGE[0]}-{_PORT_RANGE[1]} on {host}")


def _log_tail(path: Path, offset: int = 0, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (log is empty)"


def _spawn(record: _NodeRecord, cfg: NodeConfig, sshd: Path) -> None:
    """Write the node's config for `record.port` and start its sshd detached; updates `record`."""
    config = Path(record.config)
    config.write_text(render(cfg), encoding="utf-8")
    log = Path(record.log)
    record.cmdline = [str(sshd), "-D", "-e", "-f", str(config)]
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": record.home,
        "LEPTON_LOCAL_NODE": record.node_dir,
    }
    with open(log, "ab") as out:
        out.write(
            f"--- lepton-infra: starting sshd on {record.host}:{record.port} at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n".encode()
        )
        out.flush()
        record.log_offset = out.tell()
        # New session: Ctrl-C in the terminal that ran `local up` must not reach the nodes, and
        # the nodes keep running after that process exits.
        prefix = [_tool_nsenter(), f"--net=/run/netns/{record.netns}", "--"] if record.netns else []
        proc = subprocess.Popen(
            prefix + record.cmdline,  # nsenter execs sshd: the PID and cmdline are sshd's
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=record.node_dir,
            env=env,
        )
    _children[proc.pid] = proc
    record.pid = proc.pid
    record.start_time = procs.start_time(proc.pid)


def _tool_nsenter() -> str:
    return netns.PrivateNet("", "", "", "").exec_prefix()[0]


def _ready(record: _NodeRecord) -> bool:
    """sshd answers: an SSH banner on its socket; inside a private namespace (unreachable from
    here by design), its own log line saying it listens."""
    if record.netns:
        return f"Server listening on {record.host} port {record.port}" in _log_tail(
            Path(record.log), record.log_offset, lines=40
        )
    return _answers_ssh(record.host, record.port)


def _answers_ssh(host: str, port: int) -> bool:
    """True once something at host:port accepts TCP and sends an SSH identification line."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(2.0)
            banner = b""
            while b"\n" not in banner and len(banner) < 512:
                chunk = sock.recv(256)
                if not chunk:
                    break
                banner += chunk
            return banner.startswith(b"SSH-2.0-")
    except OSError:
        return False


def _exited(record: _NodeRecord) -> bool:
    proc = _children.get(record.pid)
    if proc is not None:
        return proc.poll() is not None
    return not procs.is_running(record.pid)


def _bind_failed(record: _NodeRecord) -> bool:
    tail = _log_tail(Path(record.log), record.log_offset, lines=40)
    return "Address already in use" in tail or "Cannot bind any address" in tail


def _wait_ready(
    records: list[_NodeRecord], configs: dict[str, NodeConfig], sshd: Path, timeout_s: float
) -> None:
    """Wait for every node's sshd to show an SSH banner; re-spawn on a port clash, raise on anything else."""
    pending = {r.name: r for r in records}
    attempts = dict.fromkeys(pending, 1)
    deadline = time.monotonic() + timeout_s
    while pending:
        for name, record in list(pending.items()):
            if _exited(record):
                if _bind_failed(record) and attempts[name] < _BIND_ATTEMPTS:
                    # Another process (maybe another pool starting right now) took the port.
                    attempts[name] += 1
                    record.port = _pick_port(record.host)
                    cfg = configs[name] = _replace_port(configs[name], record.port)
                    _spawn(record, cfg, sshd)
                    continue
                raise NodeError(
                    name,
                    f"sshd exited while starting on {record.host}:{record.port}; "
                    f"last lines of {record.log}:\n{_log_tail(Path(record.log), record.log_offset)}",
                )
            if _ready(record):
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            name, record = next(iter(pending.items()))
            raise NodeError(
                name,
                f"sshd did not answer on {record.host}:{record.port} within {timeout_s:.0f} s "
                f"({len(pending)} node(s) not ready); last lines of {record.log}:\n"
                f"{_log_tail(Path(record.log), record.log_offset)}",
            )
        time.sleep(0.05)


def _replace_port(cfg: NodeConfig, port: int) -> NodeConfig:
    return NodeConfig(**{**asdict(cfg), "port": port})


def _client_key(state_dir: Path) -> str:
    """The pool's client key: reused if present (the user may have copied it), else generated."""
    path = state_dir / CLIENT_KEY_FILE
    if path.is_file() and path.with_name(path.name + ".pub").is_file():
        path.chmod(0o600)
        return read_public_line(path)
    return write_ed25519_key(path, f"lepton-local-client@{state_dir.name}").public_line


def _ensure_privsep_dir() -> None:
    # Root sshd refuses to start without its privilege-separation directory; Debian creates it
    # only from the service unit, which never ran in a container.
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)


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
    nodes = _validate_nodes(nodes)
    cluster = cluster_name(name)
    sshd = find_sshd()
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
    with _locked(state_dir):
        listed = (_read_manifest(state_dir) or {}).get("nodes")
        known = {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()
        wanted = {f"node-{k}" for k in range(nodes)} | ({BASTION} if bastion else set())
        _write_manifest(state_dir, sorted(known | wanted))
        previous = _read_pool(state_dir)
        if previous is not None:
            running = [r for r in previous if r.alive()]
            if running:
                listed = ", ".join(f"{r.name} (pid {r.pid}, {r.host}:{r.port})" for r in running)
                raise ConfigError(
                    f"--state-dir {state_dir}: a local pool is already running there ({listed}); "
                    f"stop it first with `lepton-infra local down --state-dir {state_dir}` "
                    "or use another --state-dir"
                )
            _stop(previous, set(_node_dirs(state_dir)))
            old_network = _read_network(state_dir)
            if old_network is not None:
                netns.delete(old_network)
        _ensure_privsep_dir()
        user = _current_user()
        use_pam = os.geteuid() == 0 and account_locked(user)
        client_public = _client_key(state_dir)
        authorized_keys = state_dir / "authorized_keys"
        authorized_keys.write_text(client_public + "\n", encoding="ascii")
        authorized_keys.chmod(0o600)

        records: list[_NodeRecord] = []
        configs: dict[str, NodeConfig] = {}
        network = netns.create(state_dir) if bastion else None
        common = {"authorized_keys": authorized_keys, "user": user, "use_pam": use_pam}
        try:
            for k in range(nodes):
                host = node_address(k)
                # Behind a bastion: listening on the namespace's own loopback (unreachable from
                # outside), logins only from inside it (the bastion's forwarded connections).
                record, cfg = _new_node(
                    state_dir,
                    f"node-{k}",
                    host,
                    _pick_port(host),
                    netns=network.name if network else "",
                    allow_from="127.0.0.1" if network else None,
                    **common,  # type: ignore[arg-type]
                )
                _spawn(record, cfg, sshd)
                records.append(record)
                configs[record.name] = cfg
            # Recorded before waiting: if this process dies now, `down` still finds the sshds.
            _write_pool(state_dir, records, sshd, network)
            _wait_ready(records, configs, sshd, STARTUP_TIMEOUT_S)
            jump: Jump | None = None
            if network is not None:
                record, cfg = _new_node(
                    state_dir,
                    BASTION,
                    network.bastion_addr,
                    _pick_port(network.outer_addr),
                    netns=network.name,
                    permit_open=tuple(f"{r.host}:{r.port}" for r in records),
                    **common,  # type: ignore[arg-type]
                )
                _spawn(record, cfg, sshd)
                records.append(record)
                _write_pool(state_dir, records, sshd, network)
                _wait_ready([record], {BASTION: cfg}, sshd, STARTUP_TIMEOUT_S)
                jump = Jump(host=record.host, port=record.port, user=user, host_key=record.host_key)
            _write_pool(state_dir, records, sshd, network)  # ports may have changed on a clash
        except BaseException:
            _stop(records, set())
            if network is not None:
                netns.delete(network)
            (state_dir / POOL_FILE).unlink(missing_ok=True)
            raise

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


def _new_node(
    state_dir: Path,
    name: str,
    host: str,
    port: int,
    *,
    authorized_keys: Path,
    user: str,
    use_pam: bool,
    netns: str = "",
    allow_from: str | None = None,
    permit_open: tuple[str, ...] | None = None,
) -> tuple[_NodeRecord, NodeConfig]:
    """A node's (or the bastion's) dir, fresh host key, config and record; not started yet."""
    ndir = state_dir / "nodes" / name
    home = ndir / "home"
    home.mkdir(parents=True, exist_ok=True)
    host_key = write_ed25519_key(ndir / "ssh_host_ed25519_key", f"{name}@lepton-local")
    cfg = NodeConfig(
        name=name,
        listen_address=host,
        port=port,
        host_key=host_key.path,
        pid_file=ndir / "sshd.pid",
        authorized_keys=authorized_keys,
        home=home,
        node_dir=ndir,
        user=user,
        use_pam=use_pam,
        allow_from=allow_from,
        permit_open=permit_open,
    )
    record = _NodeRecord(
        name=name,
        host=host,
        port=port,
        pid=0,
        start_time=None,
        cmdline=[],
        node_dir=str(ndir),
        home=str(home),
        config=str(ndir / "sshd_config"),
        log=str(ndir / "sshd.log"),
        host_key=" ".join(host_key.public_line.split()[:2]),
        netns=netns,
    )
    return record, cfg


def status(state_dir: Path = DEFAULT_STATE_DIR) -> list[NodeStatus]:
    """One row per node of the pool in `state_dir`; empty when no pool was started there."""
    records = _read_pool(Path(state_dir).expanduser().resolve())
    return [r.status() for r in records or []]


def _node_dirs(state_dir: Path) -> list[Path]:
    nodes = state_dir / "nodes"
    return sorted(p for p in nodes.iterdir() if p.is_dir()) if nodes.is_dir() else []


def _stop(records: list[_NodeRecord], dirs: set[Path]) -> list[NodeStatus]:
    """Stop the recorded sshds (only if still ours) and every process of the node dirs `dirs`."""
    stopped: list[NodeStatus] = []
    ours = [r for r in records if r.pid and r.alive()]
    # Freeze the listeners first: no new session can start, and their session children are found
    # through the process tree while they are still its children (once a listener is gone they are
    # reparented, and their rewritten process titles no longer say which node they served).
    procs.freeze([r.pid for r in ours])
    sessions = procs.descendants(r.pid for r in ours)
    procs.terminate([r.pid for r in ours] + sorted(sessions))
    for r in ours:
        stopped.append(NodeStatus(r.name, r.host, r.port, r.pid, alive=False))
    for r in records:
        proc = _children.pop(r.pid, None)
        if proc is not None:
            proc.poll()
    # Detached jobs (setsid + nohup) outlive their session and may start children while we stop
    # them (torchrun restarting workers): sweep until a pass finds nothing.
    refs = [procs.NodeRef(d.name, d, d / "home") for d in sorted(dirs | {Path(r.node_dir) for r in records})]
    for _ in range(5):
        leftovers = [p.pid for found in procs.find_node_processes(refs).values() for p in found]
        if not leftovers:
            break
        procs.terminate(leftovers)
    return stopped


def down(state_dir: Path = DEFAULT_STATE_DIR) -> list[NodeStatus]:
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
    if _read_manifest(state_dir) is None:
        raise ConfigError(
            f"--state-dir {state_dir} is not a local pool's folder (no {MANIFEST_FILE}); nothing was "
            "stopped or deleted. Point --state-dir at the folder `local up` used"
        )
    with _locked(state_dir):
        manifest = _read_manifest(state_dir) or {}
        records = _read_pool(state_dir) or []
        stopped = _stop(records, _manifest_node_dirs(state_dir, manifest))
        network = _read_network(state_dir)
        if network is not None:
            netns.delete(network)
        listed = manifest.get("files")
        files = set(listed) if isinstance(listed, list) else set()
        if POOL_FILE in files:
            (state_dir / POOL_FILE).unlink(missing_ok=True)
        if INVENTORY_FILE in files and _is_pool_inventory(state_dir / INVENTORY_FILE, records):
            (state_dir / INVENTORY_FILE).unlink(missing_ok=True)
        return stopped


def _is_pool_inventory(path: Path, records: list[_NodeRecord]) -> bool:
    """True if `path` is still the inventory `up` wrote (a local one pinning this pool's host keys),
    not a file someone put there since."""
    try:
        inventory = Inventory.load(path)
    except ConfigError:
        return False
    keys = {r.host_key for r in records}
    return inventory.cloud == "local" and (not keys or {n.host_key for n in inventory.nodes} <= keys)


def stop_node(state_dir: Path, name: str) -> NodeStatus:
    """Stop one node (its sshd and its processes) and leave the rest running: a node failure, for tests."""
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir):
        records = _read_pool(state_dir) or []
        for r in records:
            if r.name == name:
                _stop([r], set())
                return r.status()
    raise ConfigError(
        f"no node named {name!r} in the local pool at {state_dir}; nodes are "
        f"{', '.join(r.name for r in records) or '(none: no pool running)'}"
    )


def pool_processes(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, list[procs.ProcessInfo]]:
    """Every live process of each node in `state_dir` (sshd, sessions, jobs), by node name.

    After `down` this is empty for every node; tests use it to prove no orphans are left."""
    state_dir = Path(state_dir).resolve()
    records = {r.name: r for r in _read_pool(state_dir) or []}
    refs = []
    for d in _node_dirs(state_dir):
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

    def status(self) -> list[NodeStatus]:
        return status(self.state_dir)

    def processes(self) -> dict[str, list[procs.ProcessInfo]]:
        return pool_processes(self.state_dir)

    def stop_node(self, node: str) -> NodeStatus:
        return stop_node(self.state_dir, node)

    def down(self) -> list[NodeStatus]:
        return down(self.state_dir)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()
