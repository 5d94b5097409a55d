"""Starting a pool's set of sshds: clearing what a dead pool left in the folder, then the nodes
(and with `--bastion` the jump host in front of their private network), recorded in pool.json before
anyone waits on them, and all stopped again if any fails to come up."""

from __future__ import annotations

import os
from pathlib import Path

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Jump
from lepton_infra.local import netns, ports, sshd
from lepton_infra.local.manifest import POOL_FILE, node_dirs
from lepton_infra.local.ports import node_address
from lepton_infra.local.records import SshdRecord, read_network, read_records, write_records
from lepton_infra.local.sshd_config import NodeConfig, account_locked

BASTION = "bastion"  # the jump host's name in pool.json, status and the node dirs


def clear_dead_pool(state_dir: Path) -> None:
    """Refuse while a pool runs in `state_dir`; sweep what a dead one left (processes, network)."""
    previous = read_records(state_dir)
    if previous is None:
        return
    running = [r for r in previous if r.alive()]
    if running:
        listed = ", ".join(f"{r.name} (pid {r.pid}, {r.host}:{r.port})" for r in running)
        raise ConfigError(
            f"--state-dir {state_dir}: a local pool is already running there ({listed}); "
            f"stop it first with `lepton-infra local down --state-dir {state_dir}` "
            "or use another --state-dir"
        )
    sshd.stop(previous, set(node_dirs(state_dir)))
    old_network = read_network(state_dir)
    if old_network is not None:
        netns.delete(old_network)


def start_sshds(
    state_dir: Path, nodes: int, bastion: bool, user: str, sshd_path: Path
) -> tuple[list[SshdRecord], Jump | None]:
    """Start the nodes' sshds (and the bastion's), recorded in pool.json before anyone waits on
    them; on any failure stop what started and forget it."""
    use_pam = os.geteuid() == 0 and account_locked(user)
    client_public = sshd.client_key(state_dir)
    authorized_keys = state_dir / "authorized_keys"
    authorized_keys.write_text(client_public + "\n", encoding="ascii")
    authorized_keys.chmod(0o600)

    records: list[SshdRecord] = []
    configs: dict[str, NodeConfig] = {}
    network = netns.create(state_dir) if bastion else None
    common = {"authorized_keys": authorized_keys, "user": user, "use_pam": use_pam}
    try:
        for k in range(nodes):
            host = node_address(k)
            # Behind a bastion: listening on the namespace's own loopback (unreachable from
            # outside), logins only from inside it (the bastion's forwarded connections).
            record, cfg = sshd.new_node(
                state_dir,
                f"node-{k}",
                host,
                ports.pick_port(host),
                netns=network.name if network else "",
                allow_from="127.0.0.1" if network else None,
                **common,  # type: ignore[arg-type]
            )
            sshd.spawn(record, cfg, sshd_path)
            records.append(record)
            configs[record.name] = cfg
        # Recorded before waiting: if this process dies now, `down` still finds the sshds.
        write_records(state_dir, records, sshd_path, network)
        sshd.wait_ready(records, configs, sshd_path, sshd.STARTUP_TIMEOUT_S)
        jump: Jump | None = None
        if network is not None:
            record, cfg = sshd.new_node(
                state_dir,
                BASTION,
                network.bastion_addr,
                ports.pick_port(network.outer_addr),
                netns=network.name,
                permit_open=tuple(f"{r.host}:{r.port}" for r in records),
                **common,  # type: ignore[arg-type]
            )
            sshd.spawn(record, cfg, sshd_path)
            records.append(record)
            write_records(state_dir, records, sshd_path, network)
            sshd.wait_ready([record], {BASTION: cfg}, sshd_path, sshd.STARTUP_TIMEOUT_S)
            jump = Jump(host=record.host, port=record.port, user=user, host_key=record.host_key)
        write_records(state_dir, records, sshd_path, network)  # ports may have changed on a clash
    except BaseException:
        sshd.stop(records, set())
        if network is not None:
            netns.delete(network)
        (state_dir / POOL_FILE).unlink(missing_ok=True)
        raise
    return records, jump
