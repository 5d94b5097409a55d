"""The local pool on real OpenSSH sshd nodes: what `up` promises (pinned keys, own homes, keys-only
login), what `down` promises (exactly our processes, no orphans, idempotent), and the refusals."""

from __future__ import annotations

import base64
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest

from lepton_infra.errors import ConfigError, NodeError
from lepton_infra.inventory import Inventory, Node
from lepton_infra.local import (
    INVENTORY_FILE,
    POOL_FILE,
    LocalNodeStatus,
    LocalPool,
    down,
    fingerprint,
    pool_processes,
    ports,
    procs,
    status,
    up,
    with_foreign_host_key,
)
from lepton_infra.local import sshd as sshd_module
from lepton_infra.local.keys import write_ed25519_key
from lepton_infra.local.sshd_config import account_locked, find_sshd


def _pkey(line: str) -> paramiko.PKey:
    kind, data = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def _server_key(node: Node) -> str:
    """The host key the node's sshd actually presents, as an OpenSSH line."""
    transport = paramiko.Transport((node.host, node.port))
    try:
        transport.start_client(timeout=10)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    finally:
        transport.close()


def _connect(inv: Inventory, node: Node) -> paramiko.SSHClient:
    """Log in as the workload layer does: pinned host key, the pool's key, nothing from ~/.ssh."""
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[{node.host}]:{node.port}", node.host_key.split()[0], _pkey(node.host_key))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        node.host,
        port=node.port,
        username=inv.user,
        key_filename=inv.private_key_path,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def _run(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    out = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
    return out


def _pids_with_home(home: Path) -> list[int]:
    return [pid for pid in procs.all_pids() if procs.environ(pid).get("HOME") == str(home)]


# --------------------------------------------------------------------------- up


def test_up_writes_an_inventory_that_loads_and_describes_the_nodes(local_pool: LocalPool) -> None:
    inv, state_dir = local_pool
    loaded = Inventory.load(state_dir / INVENTORY_FILE)
    assert loaded == inv
    assert (loaded.version, loaded.cloud, loaded.python) == (1, "local", sys.executable)
    assert [n.name for n in loaded.nodes] == ["node-0", "node-1", "node-2"]
    assert [n.host for n in loaded.nodes] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert all(n.private_ip == n.host and n.gpus == 0 and n.accelerator is None for n in loaded.nodes)
    key = Path(loaded.private_key_path or "")
    assert key.is_absolute() and key.is_file()
    assert key.stat().st_mode & 0o777 == 0o600
    assert len({n.host_key for n in loaded.nodes}) == 3, "every node has its own host key"


def test_each_node_presents_exactly_the_host_key_in_the_inventory(local_pool: LocalPool) -> None:
    for node in local_pool.inventory.nodes:
        assert _server_key(node) == node.host_key, node.name


def test_login_with_the_pool_key_runs_in_the_nodes_own_home(local_pool: LocalPool) -> None:
    inv = local_pool.inventory
    for node in inv.nodes:
        client = _connect(inv, node)
        try:
            assert _run(client, "echo $HOME").strip() == str(local_pool.home(node.name))
            # The SFTP subsystem works (internal-sftp: no shell) and sees the same home.
            sftp = client.open_sftp()
            sftp.putfo(io.BytesIO(node.name.encode()), f"{local_pool.home(node.name)}/who")
            sftp.close()
        finally:
            client.close()
        assert (local_pool.home(node.name) / "who").read_text() == node.name


def test_password_login_is_refused(local_pool: LocalPool) -> None:
    node = local_pool.inventory.nodes[0]
    transport = paramiko.Transport((node.host, node.port))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password(local_pool.inventory.user, "any password")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_a_key_other_than_the_pools_is_refused(local_pool: LocalPool, tmp_path: Path) -> None:
    stranger = write_ed25519_key(tmp_path / "id_stranger", "stranger").path
    node = local_pool.inventory.nodes[0]
    transport = paramiko.Transport((node.host, node.port))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey(local_pool.inventory.user, paramiko.Ed25519Key(filename=str(stranger)))
    finally:
        transport.close()


def test_many_parallel_connections_to_one_node_all_succeed(local_pool: LocalPool) -> None:
    inv = local_pool.inventory
    node = inv.nodes[1]

    def hostname_via_ssh(_: int) -> str:
        client = _connect(inv, node)
        try:
            return _run(client, "echo ok").strip()
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=32) as pool:
        assert list(pool.map(hostname_via_ssh, range(32))) == ["ok"] * 32


def test_tampered_inventory_pins_a_key_the_node_does_not_have(local_pool: LocalPool, tmp_path: Path) -> None:
    bad = with_foreign_host_key(local_pool.inventory, save_to=tmp_path / "inventory.json")
    assert Inventory.load(tmp_path / "inventory.json") == bad
    real, pinned = local_pool.inventory.nodes[-1], bad.nodes[-1]
    assert pinned.name == real.name and pinned.host_key != real.host_key
    assert fingerprint(_server_key(real)) == fingerprint(real.host_key) != fingerprint(pinned.host_key)
    assert bad.nodes[:-1] == local_pool.inventory.nodes[:-1]
    with pytest.raises(paramiko.SSHException):  # what a pinning client sees
        _connect(bad, pinned)


def test_status_shows_every_node_alive(local_pool: LocalPool) -> None:
    rows = status(local_pool.state_dir)
    assert [(r.name, r.host, r.port) for r in rows] == [
        (n.name, n.host, n.port) for n in local_pool.inventory.nodes
    ]
    assert all(isinstance(r, LocalNodeStatus) and r.alive and r.pid > 1 for r in rows)


def test_up_again_on_a_running_pool_refuses_and_leaves_it_running(local_pool: LocalPool) -> None:
    before = status(local_pool.state_dir)
    with pytest.raises(ConfigError) as refused:
        up(1, local_pool.state_dir)
    message = str(refused.value)
    assert "already running" in message
    assert f"lepton-infra local down --state-dir {local_pool.state_dir}" in message
    assert status(local_pool.state_dir) == before
    assert Inventory.load(local_pool.inventory_path) == local_pool.inventory


@pytest.mark.parametrize("nodes", [0, -1, 65])
def test_node_count_out_of_range_is_a_config_error_naming_nodes(tmp_path: Path, nodes: int) -> None:
    with pytest.raises(ConfigError, match=rf"nodes must be a whole number from 1 to 64.*got {nodes}"):
        up(nodes, tmp_path / "state")
    assert not (tmp_path / "state").exists()


def test_two_pools_at_once_listen_on_different_sockets(local_pool: LocalPool, local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    other = local_pool_factory(2)
    ours = {(n.host, n.port) for n in local_pool.inventory.nodes}
    theirs = {(n.host, n.port) for n in other.inventory.nodes}
    assert not ours & theirs
    for node in other.inventory.nodes:  # each answers with its own pool's key
        assert _server_key(node) == node.host_key
    assert all(r.alive for r in status(local_pool.state_dir))


def test_sshd_that_will_not_start_fails_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_render = sshd_module.render
    monkeypatch.setattr(sshd_module, "render", lambda cfg: real_render(cfg) + "NoSuchOption yes\n")
    with pytest.raises(NodeError) as failed:
        up(2, tmp_path / "state")
    assert "NoSuchOption" in str(failed.value) and "node-0" in str(failed.value)
    assert not (tmp_path / "state" / POOL_FILE).exists()
    assert not any(pool_processes(tmp_path / "state").values())


def test_a_port_taken_between_probe_and_start_is_retried_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pools starting at once can draw the same port: the loser must move, not fail."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.2", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_pick = ports.pick_port
        draws = iter([taken])
        monkeypatch.setattr(ports, "pick_port", lambda host: next(draws, None) or real_pick(host))
        with LocalPool.start(1, tmp_path / "state") as pool:
            node = pool.inventory.nodes[0]
            assert node.port != taken
            assert _server_key(node) == node.host_key
            assert status(pool.state_dir)[0].port == node.port
            assert "Address already in use" in (pool.home("node-0").parent / "sshd.log").read_text()


def test_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        up(1, tmp_path / "f")


# --------------------------------------------------------------------------- down


def test_down_stops_exactly_its_processes_and_the_nodes_detached_jobs(local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(2)
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        inv = pool.inventory
        for node in inv.nodes:
            client = _connect(inv, node)
            try:
                # Detached the way the workload layer starts jobs: outlives the SSH session.
                _run(client, "setsid nohup sleep 301 </dev/null >/dev/null 2>&1 &")
                # A job that scrubbed its environment is still found by its working directory.
                _run(client, "cd ~; setsid env -i sleep 302 </dev/null >/dev/null 2>&1 &")
            finally:
                client.close()

        def found_every_way() -> bool:  # `env -i` has exec'd: the last job is found by its cwd alone
            return all({"sshd", "HOME", "cwd"} <= {p.reason for p in found} for found in before.values())

        deadline, before = time.monotonic() + 10, pool_processes(pool.state_dir)
        while time.monotonic() < deadline and not found_every_way():
            time.sleep(0.1)
            before = pool_processes(pool.state_dir)
        for found in before.values():  # found by: the recorded sshd, the job's HOME, its cwd
            assert {"sshd", "HOME", "cwd"} <= {p.reason for p in found}, before
        sshd_pids = {r.pid for r in status(pool.state_dir)}

        stopped = down(pool.state_dir)

        assert {r.pid for r in stopped} == sshd_pids
        assert [r.name for r in stopped] == ["node-0", "node-1"]
        assert not any(pool_processes(pool.state_dir).values())
        for node in inv.nodes:
            assert _pids_with_home(pool.home(node.name)) == []
        assert all(not procs.is_running(p.pid) for found in before.values() for p in found)
        assert unrelated.poll() is None, "a process that is not the pool's was stopped"
        assert not (pool.state_dir / POOL_FILE).exists()
        assert not (pool.state_dir / INVENTORY_FILE).exists()
        assert (pool.state_dir / "nodes" / "node-0" / "sshd.log").read_text().strip(), "logs are kept"
        assert status(pool.state_dir) == []
        assert down(pool.state_dir) == []  # idempotent
    finally:
        unrelated.kill()
        unrelated.wait()


def test_down_never_signals_a_recorded_pid_that_now_belongs_to_another_process(local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(1)
    record = json.loads((pool.state_dir / POOL_FILE).read_text())
    sshd_pid = record["nodes"][0]["pid"]
    os.kill(sshd_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while procs.is_running(sshd_pid) and time.monotonic() < deadline:
        procs.reap(sshd_pid)
        time.sleep(0.05)
    # The kernel hands the dead sshd's PID to someone else: point the record at an unrelated process.
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record["nodes"][0]["pid"] = bystander.pid
        (pool.state_dir / POOL_FILE).write_text(json.dumps(record))
        assert status(pool.state_dir)[0].alive is False
        assert down(pool.state_dir) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_up_over_a_dead_pool_starts_fresh_nodes_with_new_host_keys(local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(1)
    old = pool.inventory.nodes[0]
    os.kill(status(pool.state_dir)[0].pid, signal.SIGKILL)  # the machine "crashed"
    deadline = time.monotonic() + 5
    while status(pool.state_dir)[0].alive and time.monotonic() < deadline:
        time.sleep(0.05)

    fresh = up(1, pool.state_dir)

    node = fresh.nodes[0]
    assert status(pool.state_dir)[0].alive
    assert node.host_key != old.host_key, "a rebuilt node has a new host key"
    assert _server_key(node) == node.host_key
    client = _connect(fresh, node)  # the pool's client key is kept across `up`s
    client.close()


def test_stop_node_stops_one_node_and_leaves_the_rest(local_pool_factory) -> None:  # type: ignore[no-untyped-def]
    pool = local_pool_factory(2)
    row = pool.stop_node("node-1")
    assert row.name == "node-1" and row.alive is False
    assert [r.alive for r in status(pool.state_dir)] == [True, False]
    assert pool.processes()["node-1"] == []
    with pytest.raises(ConfigError, match="no node named 'node-9'"):
        pool.stop_node("node-9")


# --------------------------------------------------------------------------- config and users


def test_nodes_run_with_the_hardened_settings_sshd_reports(local_pool: LocalPool) -> None:
    """Ask sshd itself (`sshd -T`) what it enforces, rather than trusting the text we wrote."""
    node_dir = local_pool.home("node-0").parent
    effective = subprocess.run(
        [str(find_sshd()), "-T", "-f", str(node_dir / "sshd_config")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    settings = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in effective if " " in line}
    expected = {
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "pubkeyauthentication": "yes",
        "permitrootlogin": "without-password",  # sshd's spelling of prohibit-password
        "allowusers": local_pool.inventory.user,
        "x11forwarding": "no",
        # Local forwarding to the node's own loopback only: how the controller reaches its keeper.
        "allowtcpforwarding": "local",
        "permitopen": "127.0.0.1:*",
        "allowstreamlocalforwarding": "no",
        "gatewayports": "no",
        "allowagentforwarding": "no",
        "subsystem": "sftp internal-sftp",
        "hostkeyalgorithms": "ssh-ed25519",
        "authorizedkeysfile": str(local_pool.state_dir / "authorized_keys"),
        "listenaddress": f"127.0.0.2:{local_pool.inventory.nodes[0].port}",
    }
    assert {key: settings.get(key) for key in expected} == expected
    assert settings["kexalgorithms"].startswith("curve25519-sha256,")
    assert int(settings["maxsessions"]) >= 32 and int(settings["maxstartups"].split(":")[0]) >= 32


def test_locked_account_is_detected_so_root_gets_pam(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text("root:!:20228:0:99999:7:::\nalice:$y$j9T$abc:20228::::::\nbob:*:1::::::\n")
    assert account_locked("root", shadow) is True
    assert account_locked("alice", shadow) is False
    assert account_locked("bob", shadow) is False  # '*' means no password, not locked
    assert account_locked("carol", shadow) is False
    assert account_locked("root", tmp_path / "unreadable") is False


def _as_user_command(user: str) -> list[str] | None:
    """A command prefix that runs this project's code as `user`, or None where that is impossible."""
    import lepton_infra

    setpriv = shutil.which("setpriv")
    system_python = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if os.geteuid() != 0 or setpriv is None or not system_python.is_file():
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    path = f"{Path(lepton_infra.__file__).parents[1]}:{Path(paramiko.__file__).parents[1]}"
    return [
        setpriv,
        f"--reuid={user}",
        f"--regid={pwd.getpwnam(user).pw_gid}",
        "--clear-groups",
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        f"PYTHONPATH={path}",
        str(system_python),
    ]


_AS_USER_SCRIPT = """
import io, json, sys
from pathlib import Path
import paramiko
from lepton_infra import local

state = Path(sys.argv[1])
inv = local.up(2, state)
alive = [row.alive for row in local.status(state)]
node = inv.nodes[1]
t = paramiko.Transport((node.host, node.port))
t.start_client(timeout=10)
key = t.get_remote_server_key()
t.auth_publickey(inv.user, paramiko.Ed25519Key(filename=inv.private_key_path))
sftp = paramiko.SFTPClient.from_transport(t)
home = str(state.resolve() / "nodes" / node.name / "home")
sftp.putfo(io.BytesIO(b"hello"), home + "/greeting")
listing = sftp.listdir(home)
t.close()
stopped = [row.pid for row in local.down(state)]
print(json.dumps({
    "user": inv.user, "alive": alive, "key_matches": f"{key.get_name()} {key.get_base64()}" == node.host_key,
    "authenticated": True, "listing": listing, "stopped": len(stopped),
    "left": {n: [p.pid for p in ps] for n, ps in local.pool_processes(state).items() if ps},
}))
"""


def test_a_normal_user_can_run_a_pool(tmp_path: Path) -> None:
    """Without root: no privsep dir, no PAM, host keys owned by that user. Runs as `daemon`, whose
    shell is nologin, so the check logs in and uses SFTP (internal-sftp needs no shell)."""
    prefix = _as_user_command("daemon")
    if prefix is None:
        pytest.skip("needs root, setpriv, the user 'daemon' and /usr/bin/python3.X to drop privileges")
    probe = subprocess.run([*prefix, "-c", "import paramiko, pydantic, lepton_infra"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this environment's packages are not readable by 'daemon': {probe.stderr[-300:]!r}")
    home = Path(tempfile.mkdtemp(prefix="lepton-nonroot-", dir="/tmp"))
    try:
        os.chown(home, pwd.getpwnam("daemon").pw_uid, pwd.getpwnam("daemon").pw_gid)
        done = subprocess.run(
            [*prefix, "-c", _AS_USER_SCRIPT, str(home / "state")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result == {
            "user": "daemon",
            "alive": [True, True],
            "key_matches": True,
            "authenticated": True,
            "listing": ["greeting"],
            "stopped": 2,
            "left": {},
        }
        assert (home / "state" / "id_ed25519").stat().st_uid == pwd.getpwnam("daemon").pw_uid
    finally:
        shutil.rmtree(home, ignore_errors=True)
