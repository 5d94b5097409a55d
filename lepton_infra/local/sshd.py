"""One local node's sshd from birth to death: its folder, fresh host key and config (`new_node`),
starting it detached (`spawn`), waiting until it answers (moving it to another port when a racer
took its port), and stopping it with every process of its node (`stop`)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from lepton_infra.errors import NodeError
from lepton_infra.local import netns, ports, procs
from lepton_infra.local.keys import read_public_line, write_ed25519_key
from lepton_infra.local.manifest import CLIENT_KEY_FILE
from lepton_infra.local.records import LocalNodeStatus, SshdRecord
from lepton_infra.local.sshd_config import NodeConfig, render

STARTUP_TIMEOUT_S = 30.0
_BIND_ATTEMPTS = 8
# sshd processes started by this Python process, kept so `down` can reap them (no zombies) and
# Python does not warn about a "still running" subprocess it lost track of.
_children: dict[int, subprocess.Popen[bytes]] = {}


def new_node(
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
) -> tuple[SshdRecord, NodeConfig]:
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
    record = SshdRecord(
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


def client_key(state_dir: Path) -> str:
    """The pool's client key: reused if present (the user may have copied it), else generated."""
    path = state_dir / CLIENT_KEY_FILE
    if path.is_file() and path.with_name(path.name + ".pub").is_file():
        path.chmod(0o600)
        return read_public_line(path)
    return write_ed25519_key(path, f"lepton-local-client@{state_dir.name}").public_line


def ensure_privsep_dir() -> None:
    # Root sshd refuses to start without its privilege-separation directory; Debian creates it
    # only from the service unit, which never ran in a container.
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)


def log_tail(path: Path, offset: int = 0, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (log is empty)"


def spawn(record: SshdRecord, cfg: NodeConfig, sshd: Path) -> None:
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


def _ready(record: SshdRecord) -> bool:
    """sshd answers: an SSH banner on its socket; inside a private namespace (unreachable from
    here by design), its own log line saying it listens."""
    if record.netns:
        return f"Server listening on {record.host} port {record.port}" in log_tail(
            Path(record.log), record.log_offset, lines=40
        )
    return ports.answers_ssh(record.host, record.port)


def _exited(record: SshdRecord) -> bool:
    proc = _children.get(record.pid)
    if proc is not None:
        return proc.poll() is not None
    return not procs.is_running(record.pid)


def _bind_failed(record: SshdRecord) -> bool:
    tail = log_tail(Path(record.log), record.log_offset, lines=40)
    return "Address already in use" in tail or "Cannot bind any address" in tail


def wait_ready(
    records: list[SshdRecord], configs: dict[str, NodeConfig], sshd: Path, timeout_s: float
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
                    record.port = ports.pick_port(record.host)
                    cfg = configs[name] = NodeConfig(**{**asdict(configs[name]), "port": record.port})
                    spawn(record, cfg, sshd)
                    continue
                raise NodeError(
                    name,
                    f"sshd exited while starting on {record.host}:{record.port}; "
                    f"last lines of {record.log}:\n{log_tail(Path(record.log), record.log_offset)}",
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
                f"{log_tail(Path(record.log), record.log_offset)}",
            )
        time.sleep(0.05)


def stop(records: list[SshdRecord], dirs: set[Path]) -> list[LocalNodeStatus]:
    """Stop the recorded sshds (only if still ours) and every process of the node dirs `dirs`."""
    stopped: list[LocalNodeStatus] = []
    ours = [r for r in records if r.pid and r.alive()]
    # Freeze the listeners first: no new session can start, and their session children are found
    # through the process tree while they are still its children (once a listener is gone they are
    # reparented, and their rewritten process titles no longer say which node they served).
    procs.freeze([r.pid for r in ours])
    sessions = procs.descendants(r.pid for r in ours)
    procs.terminate([r.pid for r in ours] + sorted(sessions))
    for r in ours:
        stopped.append(LocalNodeStatus(r.name, r.host, r.port, r.pid, alive=False))
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
