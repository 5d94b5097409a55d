"""What a real first boot must achieve, checked on a booted rehearsal node from inside (as root and as
the login user) and from outside (what the metadata service hands out). Each check returns
findings: plain sentences naming the node and what is wrong; none means the boot did its job."""

from __future__ import annotations

import json
import shlex
import time

from lepton_infra.components import node_clients
from lepton_infra.rehearsal.machine import Machine
from lepton_infra.rehearsal.session import Rehearsal

CLOUD_INIT_TIMEOUT_S = 300.0


def wait_for_cloud_init(m: Machine) -> list[str]:
    """Wait until cloud-init's last stage has ended; its own error list is a finding."""
    m.run("cloud-init status --wait >/dev/null 2>&1", timeout=CLOUD_INIT_TIMEOUT_S)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # `status --wait` returns on the first stage's error too
        done = m.run("cat /run/cloud-init/result.json")
        if done.returncode == 0:
            errors = json.loads(done.stdout)["v1"]["errors"]
            return [f"{m.name}: cloud-init reported {e}" for e in errors]
        time.sleep(0.5)
    return [f"{m.name}: cloud-init never finished (no /run/cloud-init/result.json); see {m.console}"]


def _public_login_key(r: Rehearsal) -> str:
    import io

    import paramiko

    key = paramiko.Ed25519Key.from_private_key(io.StringIO(r.material["private_key"]))
    return f"{key.get_name()} {key.get_base64()}"


def first_boot_findings(r: Rehearsal, k: int) -> list[str]:
    """Everything item 3 of the rehearsal asks of node `k`'s first boot (see the README)."""
    m, cloud = r.machines[k], r.cloud
    user, node = r.material["inventory"]["user"], r.material["inventory"]["nodes"][k]
    found = wait_for_cloud_init(m)

    def sh(command: str) -> str:
        return m.run(command).stdout.strip()

    # The login user, with exactly the cluster's key (and the SSH login that got us here used it).
    authorized = sh(f"cat /home/{user}/.ssh/authorized_keys")
    if _public_login_key(r) not in authorized:
        found.append(f"{m.name}: {user}'s authorized_keys lacks the cluster key: {authorized!r}")
    # sshd's host keys: exactly the pinned ed25519 pair, the private half 0600.
    keys = sh("ls /etc/ssh/ | grep '^ssh_host_' | sort").split()
    if keys != ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]:
        found.append(f"{m.name}: host keys in /etc/ssh are {keys}, not only the pinned ed25519 pair")
    served = sh("ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key | cut -d' ' -f1,2")
    if served != " ".join(node["host_key"].split()[:2]):
        found.append(f"{m.name}: sshd's host key {served!r} is not the pinned {node['host_key']!r}")
    if sh("stat -c %a /etc/ssh/ssh_host_ed25519_key") != "600":
        found.append(f"{m.name}: the host private key is not 0600")
    if cloud == "gcp" and "set_host_keys = false" not in sh("cat /etc/default/instance_configs.cfg"):
        found.append(f"{m.name}: the guest agent may replace the host key (set_host_keys not false)")
    # No key material where the user data or metadata can be read.
    served_material = json.dumps(r.material["nodes"][k])
    if "PRIVATE KEY" in served_material:
        found.append(f"{m.name}: its user data or metadata holds a private key")
    leaks = sh(
        f"su {user} -s /bin/sh -c \"grep -rlsI -e 'PRIVATE KEY' /var/lib/cloud /run /var/log /etc /tmp 2>/dev/null\""
    )
    if leaks:
        found.append(f"{m.name}: {user} can read private key material in {leaks.split()}")
    if sh("ls /run | grep lepton-host-key"):
        found.append(f"{m.name}: the fetched key's temporary file was left in /run")
    # The interpreters: the image table's (made or found at first boot) and the inventory's (torch
    # itself is the run's preflight's to check).
    image_python = r.material["inventory"]["python"]
    pythons = [image_python, json.loads(r.inventory_path.read_text())["python"] if r.inventory_path else ""]
    for python in pythons:
        if m.run(f"su {user} -s /bin/sh -c {shlex.quote(f'test -x {python}')}").returncode != 0:
            found.append(f"{m.name}: the interpreter {python} is not there for {user}")
    # The data plane's clients, pinned, in the image's interpreter.
    pins = " ".join(node_clients.packages(cloud))
    check = "from importlib.metadata import version as v; import sys; sys.exit(any(v(p.split('==')[0]) != p.split('==')[1] for p in sys.argv[1:]))"
    if m.run(f"{image_python} -c {shlex.quote(check)} {pins}").returncode != 0:
        found.append(f"{m.name}: {image_python} lacks the data plane's clients {pins}")
    # The watchdog is armed.
    for state, want in (("is-enabled", "enabled"), ("is-active", "active")):
        if sh(f"systemctl {state} lepton-watchdog.timer") != want:
            found.append(f"{m.name}: lepton-watchdog.timer is not {want}")
    return found


def trip_watchdog(r: Rehearsal, k: int, timeout: float = 60.0) -> list[str]:
    """Make node `k`'s watchdog decide to stop it (lifetime 0 h) and check the stop happened: a
    guest power-off halts the container (AWS, GCP); on Azure the VM is deallocated through ARM
    with the identity's token (the stand-in records it)."""
    m = r.machines[k]
    m.run(
        "systemctl set-environment LEPTON_LIFETIME_HOURS=0 && systemctl start lepton-watchdog.service",
        timeout=timeout,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.cloud == "azure":
            stops = [c for c in r.services.calls if c["kind"] == "arm" and c["node"] == k]
            if stops:
                ok = [c for c in stops if c["accepted"] and c["action"] == "deallocate"]
                return [] if ok else [f"{m.name}: ARM refused the watchdog's stop: {stops}"]
        elif not m.running():
            return []
        time.sleep(0.5)
    return [f"{m.name}: the watchdog did not stop the node within {timeout:.0f} s"]
