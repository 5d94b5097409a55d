"""cloud-init user data for every node, on every cloud: the login user with its one authorized key,
the node's pinned host key, password login off, and a watchdog that powers the node off when idle or
too old (no leaked GPUs).

The host key pair is generated in the Pulumi program (clients pin the public half before the VM
boots). The private half never travels in user data or metadata, which read-only cloud roles and
every process on the node (through the metadata service) can read: the cloud puts it in its secret
store, readable only by that node's identity, and the node fetches it at first boot.

Hook for the per-cloud modules (all plain text; none of it may hold key material):
- `host_key_fetch`: POSIX shell commands that print the node's OpenSSH host private key on stdout,
  e.g. a call to the cloud's secret store with the node's own identity. They run as root in
  cloud-init's `bootcmd` (init stage: network up, before cloud-init's ssh module and before sshd
  starts), are retried for about ten minutes, and their output is installed as
  /etc/ssh/ssh_host_ed25519_key only when it matches the pinned public key; sshd is then restarted
  without waiting (`systemctl --no-block`, as a blocking restart from inside cloud-init deadlocks).
- `boot` (`CloudBoot`): cloud-specific `files` (cloud-init `write_files`), `bootcmd` lines (run at
  every boot, before the key fetch) and `runcmd` lines (final stage, after the common ones).
- `cloud` and `python`: the node installs the data plane's pinned clients for `cloud` into
  `python` (the cluster's one interpreter, the inventory's; `node_clients`), last in `runcmd`, so
  after a cloud's own commands have made that interpreter; without a `package_index` (privateEgress
  "endpoints") it leaves them to the first run, which brings them from the controller.

`render_cloud_init` is pure and returns readable text, so it can be tested and reviewed;
`cloud_init` is the same over Pulumi outputs."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from lepton_infra.components import images, node_clients

WATCHDOG_PATH = "/usr/local/sbin/lepton-watchdog"

# The watchdog decides once a minute (systemd timer). Everything it reads can be pointed elsewhere
# through the environment, so tests run the real script against a temporary folder.
WATCHDOG_SCRIPT = r"""#!/bin/bash
# lepton watchdog: power the node off after IDLE_MINUTES without a running job, and after
# LIFETIME_HOURS since boot in any case. A job is any process whose working directory or command
# line lies under RUNS_DIR (the workload layer starts every job, and its supervisor
# .agent/agent.py, there). IDLE_MINUTES=0 disables the idle rule.
set -u
IDLE_MINUTES="${LEPTON_IDLE_MINUTES:-__IDLE__}"
LIFETIME_HOURS="${LEPTON_LIFETIME_HOURS:-__LIFETIME__}"
RUNS_DIR="${LEPTON_RUNS_DIR:-__RUNS__}"
STATE_DIR="${LEPTON_WATCHDOG_STATE:-/var/lib/lepton-watchdog}"
UPTIME_FILE="${LEPTON_UPTIME_FILE:-/proc/uptime}"
POWEROFF="${LEPTON_POWEROFF:-systemctl poweroff}"
NOW="${LEPTON_NOW:-$(date +%s)}"

mkdir -p "$STATE_DIR"
uptime_s=$(cut -d. -f1 "$UPTIME_FILE")
if [ "$uptime_s" -ge $((LIFETIME_HOURS * 3600)) ]; then
    logger -t lepton-watchdog "lifetime of ${LIFETIME_HOURS}h reached: powering off" 2>/dev/null || true
    echo "lifetime"
    $POWEROFF
    exit 0
fi

job_running=0
runs_real=$(readlink -f "$RUNS_DIR" 2>/dev/null || echo "$RUNS_DIR")
for cwd in /proc/[0-9]*/cwd; do
    target=$(readlink "$cwd" 2>/dev/null) || continue
    case "$target" in
        "$runs_real"/*) job_running=1; break ;;
    esac
done
# Command lines (NUL-separated argv) naming a path under RUNS_DIR, e.g. the run's supervisor.
# The glob is expanded before grep starts, so grep never sees its own command line.
if [ "$job_running" = 0 ] && grep -a -q -s -F -e "$RUNS_DIR/" -e "$runs_real/" /proc/[0-9]*/cmdline; then
    job_running=1
fi

# The idle clock starts afresh when there is no usable mark: first tick, an unreadable file, or a
# mark from before this boot (the node was stopped and started again).
last_active=$(cat "$STATE_DIR/last_active" 2>/dev/null || true)
case "$last_active" in ''|*[!0-9]*) last_active="" ;; esac
if [ -n "$last_active" ] && [ "$last_active" -lt $((NOW - uptime_s)) ]; then
    last_active=""
fi

if [ "$job_running" = 1 ] || [ -z "$last_active" ]; then
    echo "$NOW" > "$STATE_DIR/last_active"
    echo "active"
    exit 0
fi

if [ "$IDLE_MINUTES" -gt 0 ] && [ $((NOW - last_active)) -ge $((IDLE_MINUTES * 60)) ]; then
    logger -t lepton-watchdog "idle for ${IDLE_MINUTES} min: powering off" 2>/dev/null || true
    echo "idle"
    $POWEROFF
    exit 0
fi
echo "waiting"
"""

WATCHDOG_SERVICE = f"""[Unit]
Description=lepton watchdog: power off idle or expired training nodes

[Service]
Type=oneshot
ExecStart={WATCHDOG_PATH}
"""

WATCHDOG_TIMER = """[Unit]
Description=Run the lepton watchdog every minute

[Timer]
OnBootSec=1min
OnUnitActiveSec=1min
AccuracySec=10s

[Install]
WantedBy=timers.target
"""

SSHD_HARDENING = """PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
"""


# Installs the node's host key from the cloud's secret store (see the module docstring). POSIX sh:
# cloud-init runs `bootcmd` with /bin/sh. Paths, tries and the restart command can be pointed
# elsewhere through the environment, so tests run the real script against a temporary folder.
HOST_KEY_INSTALL = r"""# lepton: install this node's pinned SSH host key from the cloud's secret store (user data holds none)
lepton_fetch_host_key() {
__FETCH__
}
lepton_pinned=__PINNED__
lepton_ssh_dir="${LEPTON_SSH_DIR:-/etc/ssh}"
lepton_served() { ssh-keygen -y -f "$1" 2>/dev/null | cut -d' ' -f1,2; }
if [ "$(lepton_served "$lepton_ssh_dir/ssh_host_ed25519_key")" != "$lepton_pinned" ]; then
  lepton_tmp=$(umask 077 && mktemp "${LEPTON_KEY_TMPDIR:-/run}/lepton-host-key.XXXXXX")
  lepton_try=1
  until (umask 077 && lepton_fetch_host_key > "$lepton_tmp") && [ "$(lepton_served "$lepton_tmp")" = "$lepton_pinned" ]; do
    if [ "$lepton_try" -ge "${LEPTON_HOST_KEY_TRIES:-60}" ]; then
      echo "lepton: no host key matching the pinned one after $lepton_try tries; sshd keeps none of ours, so clients will refuse this node" >&2
      break
    fi
    lepton_try=$((lepton_try + 1))
    sleep "${LEPTON_HOST_KEY_WAIT:-10}"
  done
  if [ "$(lepton_served "$lepton_tmp")" = "$lepton_pinned" ]; then
    rm -f "$lepton_ssh_dir"/ssh_host_*_key "$lepton_ssh_dir"/ssh_host_*_key.pub
    install -m 0600 "$lepton_tmp" "$lepton_ssh_dir/ssh_host_ed25519_key"
    printf '%s\n' "$lepton_pinned" > "$lepton_ssh_dir/ssh_host_ed25519_key.pub"
    chmod 0644 "$lepton_ssh_dir/ssh_host_ed25519_key.pub"
    ${LEPTON_RESTART_SSHD:-systemctl --no-block try-restart ssh.service} || true
    echo "lepton: pinned host key installed"
  fi
  rm -f "$lepton_tmp"
fi
"""


@dataclass(frozen=True)
class BootFile:
    """A file cloud-init writes (`write_files`, init stage, before sshd starts)."""

    path: str
    content: str
    permissions: str = "0644"


@dataclass(frozen=True)
class CloudBoot:
    """A cloud's own additions to every node's cloud-init (plain text, never key material):
    `files` (write_files), `bootcmd` (every boot, before the host key is fetched) and `runcmd`
    (first boot, final stage, after the common commands)."""

    files: Sequence[BootFile] = ()
    bootcmd: Sequence[str] = ()
    runcmd: Sequence[str] = ()


def watchdog_script(user: str, idle_shutdown_minutes: int, max_lifetime_hours: int) -> str:
    return (
        WATCHDOG_SCRIPT.replace("__IDLE__", str(int(idle_shutdown_minutes)))
        .replace("__LIFETIME__", str(int(max_lifetime_hours)))
        .replace("__RUNS__", f"/home/{user}/.lepton/runs")
    )


def public_key_line(public_key: str) -> str:
    """`type base64` of an OpenSSH public key line (no comment), as sshd serves and clients pin it."""
    return " ".join(public_key.split()[:2])


def host_key_install_script(host_key_fetch: str, host_public_key: str) -> str:
    """The `bootcmd` script that installs the host key `host_key_fetch` prints, if it matches
    `host_public_key` (a fetched key that does not match is never installed)."""
    if "PRIVATE KEY" in host_key_fetch:
        raise ValueError("host_key_fetch must fetch the key, not contain it")
    # Not indented: a here-document's terminator (a fetcher's embedded script) must start its line.
    body = host_key_fetch.strip("\n") or "false"
    return HOST_KEY_INSTALL.replace("__FETCH__", body).replace(
        "__PINNED__", shlex.quote(public_key_line(host_public_key))
    )


def _quoted(text: str) -> str:
    """A YAML single-quoted scalar (a quote inside is doubled, nothing else is special)."""
    return "'" + text.replace("'", "''") + "'"


def _block(text: str, indent: int) -> str:
    """A YAML literal block body: every line indented, the text kept byte for byte."""
    return textwrap.indent(text.rstrip("\n") + "\n", " " * indent)


def _commands(commands: Sequence[str]) -> str:
    """Shell commands as YAML sequence items (literal blocks, so any text stays a string)."""
    return "".join(f"  - |\n{_block(c, 4)}" for c in commands)


def render_cloud_init(
    *,
    user: str,
    authorized_key: str,
    host_public_key: str,
    host_key_fetch: str,
    idle_shutdown_minutes: int,
    max_lifetime_hours: int,
    cluster: str,
    boot: CloudBoot | None = None,
    cloud: str | None = None,
    python: str | None = None,
    package_index: bool = True,
) -> str:
    """#cloud-config for one node. Keys are inserted as YAML literal blocks / quoted scalars, never
    interpolated into shell (the pinned public key is shell-quoted), so key text cannot change the
    document's structure. Holds no private key: `host_key_fetch` fetches it at first boot."""
    boot = boot or CloudBoot()
    clients: list[tuple[str, str, str]] = []
    if cloud is not None and python is not None:
        clients.append(
            (
                node_clients.INSTALL_PATH,
                "0755",
                node_clients.install_script(cloud, python, package_index=package_index),
            )
        )
    files = [
        (WATCHDOG_PATH, "0755", watchdog_script(user, idle_shutdown_minutes, max_lifetime_hours)),
        ("/etc/systemd/system/lepton-watchdog.service", "0644", WATCHDOG_SERVICE),
        ("/etc/systemd/system/lepton-watchdog.timer", "0644", WATCHDOG_TIMER),
        ("/etc/ssh/sshd_config.d/50-lepton.conf", "0644", SSHD_HARDENING),
        *((f.path, f.permissions, f.content) for f in boot.files),
        *clients,
    ]
    write_files = "".join(
        f"  - path: {_quoted(path)}\n    owner: root:root\n    permissions: '{mode}'\n    content: |\n{_block(body, 6)}"
        for path, mode, body in files
    )
    bootcmd = [*boot.bootcmd, host_key_install_script(host_key_fetch, host_public_key)]
    text = (
        "#cloud-config\n"
        f"# lepton node of cluster {cluster}: login user, pinned host key, idle/lifetime watchdog.\n"
        "users:\n"
        f"  - name: {user}\n"
        "    shell: /bin/bash\n"
        "    lock_passwd: true\n"
        "    sudo: 'ALL=(ALL) NOPASSWD:ALL'\n"
        "    ssh_authorized_keys:\n"
        f"      - {_quoted(authorized_key.strip())}\n"
        "disable_root: true\n"
        "ssh_pwauth: false\n"
        "# bootcmd installs the pinned host key before cloud-init's ssh module runs; that module must\n"
        "# neither delete it nor add others (it generates only missing types, and ed25519 is there).\n"
        "ssh_deletekeys: false\n"
        "ssh_genkeytypes: [ed25519]\n"
        f"bootcmd:\n{_commands(bootcmd)}"
        "write_files:\n"
        f"{write_files}"
        "runcmd:\n"
        "  - [systemctl, daemon-reload]\n"
        "  - [systemctl, enable, --now, lepton-watchdog.timer]\n"
        "  - [systemctl, reload-or-restart, ssh]\n"
        f"{_commands(boot.runcmd)}"
        f"{_commands([node_clients.INSTALL_PATH] if clients else [])}"
    )
    if "PRIVATE KEY" in text:  # e.g. pasted into a cloud's files
        raise ValueError("cloud-init user data must not hold a private key")
    return text


def cloud_init(
    *,
    user: str,
    authorized_key: pulumi.Input[str],
    host_public_key: pulumi.Input[str],
    host_key_fetch: pulumi.Input[str],
    idle_shutdown_minutes: int,
    max_lifetime_hours: int,
    cluster: str,
    boot: CloudBoot | None = None,
    cloud: str | None = None,
    image: str | None = None,
    python: str | None = None,
    package_index: bool = True,
) -> pulumi.Output[str]:
    """`render_cloud_init` over Pulumi outputs (`host_key_fetch` usually names a secret's id, known
    only after deployment). Not a secret: it holds no key material. With `cloud`, the node installs
    the data plane's clients into the cluster's one interpreter, the one the inventory names:
    `python` when set, else the one the image table names for `image` (None: the pool's default)."""
    python = images.python_for(cloud, image, python) if cloud is not None else None
    return pulumi.Output.all(authorized_key, host_public_key, host_key_fetch).apply(
        lambda v: render_cloud_init(
            user=user,
            authorized_key=v[0],
            host_public_key=v[1],
            host_key_fetch=v[2],
            idle_shutdown_minutes=idle_shutdown_minutes,
            max_lifetime_hours=max_lifetime_hours,
            cluster=cluster,
            boot=boot,
            cloud=cloud,
            python=python,
            package_index=package_index,
        )
    )


def node_user_data(
    args: Any,
    *,
    cloud: str,
    cluster: str,
    host_key: Any,
    host_key_fetch: pulumi.Input[str],
    boot: CloudBoot | None = None,
) -> pulumi.Output[str]:
    """One pool node's cloud-init from the pool's (valid) spec: its login user and key, its pinned
    host key (the private half fetched at first boot by `host_key_fetch`), the watchdog limits and
    the image's boot steps. Every cloud's pool calls this for each node."""
    return cloud_init(
        user=args.user,
        authorized_key=args.ssh_public_key,
        host_public_key=host_key.public_key_openssh,
        host_key_fetch=host_key_fetch,
        idle_shutdown_minutes=args.idle_shutdown_minutes,
        max_lifetime_hours=args.max_lifetime_hours,
        cluster=cluster,
        cloud=cloud,
        image=args.image,
        python=args.python,
        # privateEgress "endpoints": the cloud's own services only, no package index.
        package_index=args.private_egress != "endpoints",
        boot=boot,
    )
