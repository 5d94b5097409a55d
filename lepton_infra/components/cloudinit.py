"""cloud-init user data for every node, on every cloud: the login user with its one authorized key,
the node's pinned host key (generated in the Pulumi program, so clients know it before first boot),
password login off, and a watchdog that powers the node off when idle or too old (no leaked GPUs).

`render_cloud_init` is pure and returns readable text, so it can be tested and reviewed;
`cloud_init` is the same over Pulumi outputs."""

from __future__ import annotations

import textwrap

import pulumi

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


def watchdog_script(user: str, idle_shutdown_minutes: int, max_lifetime_hours: int) -> str:
    return (
        WATCHDOG_SCRIPT.replace("__IDLE__", str(int(idle_shutdown_minutes)))
        .replace("__LIFETIME__", str(int(max_lifetime_hours)))
        .replace("__RUNS__", f"/home/{user}/.lepton/runs")
    )


def _quoted(text: str) -> str:
    """A YAML single-quoted scalar (a quote inside is doubled, nothing else is special)."""
    return "'" + text.replace("'", "''") + "'"


def _block(text: str, indent: int) -> str:
    """A YAML literal block body: every line indented, the text kept byte for byte."""
    return textwrap.indent(text.rstrip("\n") + "\n", " " * indent)


def render_cloud_init(
    *,
    user: str,
    authorized_key: str,
    host_private_key: str,
    host_public_key: str,
    idle_shutdown_minutes: int,
    max_lifetime_hours: int,
    cluster: str,
) -> str:
    """#cloud-config for one node. Keys are inserted as YAML literal blocks / quoted scalars, never
    interpolated into shell, so key text cannot change the document's structure."""
    host_public = " ".join(host_public_key.split()[:2])
    files = [
        (WATCHDOG_PATH, "0755", watchdog_script(user, idle_shutdown_minutes, max_lifetime_hours)),
        ("/etc/systemd/system/lepton-watchdog.service", "0644", WATCHDOG_SERVICE),
        ("/etc/systemd/system/lepton-watchdog.timer", "0644", WATCHDOG_TIMER),
        ("/etc/ssh/sshd_config.d/50-lepton.conf", "0644", SSHD_HARDENING),
    ]
    write_files = "".join(
        f"  - path: {path}\n    owner: root:root\n    permissions: '{mode}'\n    content: |\n{_block(body, 6)}"
        for path, mode, body in files
    )
    return (
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
        "# Install the host key generated by Pulumi (the inventory pins it) and generate no others.\n"
        "ssh_deletekeys: true\n"
        # cloud-init ignores ssh_genkeytypes when ssh_keys is given; `[]` fails its schema (minItems 1).
        "ssh_genkeytypes: [ed25519]\n"
        "ssh_keys:\n"
        "  ed25519_private: |\n"
        f"{_block(host_private_key, 4)}"
        f"  ed25519_public: {_quoted(host_public)}\n"
        "write_files:\n"
        f"{write_files}"
        "runcmd:\n"
        "  - [systemctl, daemon-reload]\n"
        "  - [systemctl, enable, --now, lepton-watchdog.timer]\n"
        "  - [systemctl, reload-or-restart, ssh]\n"
    )


def cloud_init(
    *,
    user: str,
    authorized_key: pulumi.Input[str],
    host_private_key: pulumi.Input[str],
    host_public_key: pulumi.Input[str],
    idle_shutdown_minutes: int,
    max_lifetime_hours: int,
    cluster: str,
) -> pulumi.Output[str]:
    """`render_cloud_init` over Pulumi outputs. Secret, because it carries the host's private key."""
    rendered = pulumi.Output.all(authorized_key, host_private_key, host_public_key).apply(
        lambda v: render_cloud_init(
            user=user,
            authorized_key=v[0],
            host_private_key=v[1],
            host_public_key=v[2],
            idle_shutdown_minutes=idle_shutdown_minutes,
            max_lifetime_hours=max_lifetime_hours,
            cluster=cluster,
        )
    )
    return pulumi.Output.secret(rendered)
