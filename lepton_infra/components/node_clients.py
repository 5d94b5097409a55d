"""The first-boot script that installs the data plane's pinned clients (`lepton_infra.data.client_pins`,
one list per cloud) into the node's Python, the inventory's interpreter, under the node's own
identity (instance profile, service account, managed identity).

Pure data and text: imports no Pulumi. `cloudinit.render_cloud_init` writes `install_script` as a
file and runs it last in `runcmd` (after a cloud's own commands, which make the interpreter on GCP
and Azure). A node that cannot install them at first boot (no package index on its network, a
mirror down) still boots: the first `lepton-infra run` brings them from the controller
(`workload/clients.py`)."""

from __future__ import annotations

import shlex

from lepton_infra.data.client_pins import ALL_CLOUDS, PER_CLOUD, packages

__all__ = ["ALL_CLOUDS", "INSTALL_PATH", "PER_CLOUD", "install_script", "packages"]

INSTALL_PATH = "/usr/local/sbin/lepton-install-clients"

# POSIX sh (cloud-init runs runcmd with /bin/sh). Idempotent: a re-run on an interpreter that has
# every pin at its version changes nothing and needs no network. Retried with a growing pause
# (package mirrors and a fresh node's network are flaky at first boot); if it still fails, the boot
# does not: it says so, and the workload layer installs them at the first run. Paths, pins, tries and the
# pause come from the environment when set, so tests run the real script against real interpreters.
_SCRIPT = r"""#!/bin/sh
# lepton: the data plane's clients, pinned, in the nodes' Python (the inventory's interpreter).
set -u
py=__PYTHON__
py="${LEPTON_NODE_PYTHON:-$py}"
pins=__PINS__
pins="${LEPTON_CLIENT_PINS:-$pins}"
tries="${LEPTON_INSTALL_TRIES:-5}"
if [ ! -x "$py" ] && ! command -v "$py" >/dev/null 2>&1; then
    echo "lepton: no interpreter $py on this node; the data plane's clients ($pins) are not installed" >&2
    exit 1
fi
pinned() {
    # shellcheck disable=SC2086  # one argument per pin
    "$py" -c '
import sys
from importlib import metadata

def has(pin):
    name, _, want = pin.partition("==")
    try:
        return metadata.version(name) == want
    except metadata.PackageNotFoundError:
        return False

sys.exit(0 if all(has(p) for p in sys.argv[1:]) else 1)
' $pins
}
if pinned; then
    echo "lepton: $py already has $pins"
    exit 0
fi
later="the first \`lepton-infra run\` installs them from the controller"
if [ "${LEPTON_PACKAGE_INDEX:-__INDEX__}" = none ]; then
    echo "lepton: no package index on this node's network (privateEgress: endpoints); $later"
    exit 0
fi
# Ubuntu's own python3 refuses pip installs without this (PEP 668); a venv or conda ignores it.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
if ! "$py" -m pip --version >/dev/null 2>&1 && ! "$py" -m ensurepip --upgrade >/dev/null 2>&1; then
    # Debian/Ubuntu's system python has neither pip nor ensurepip until python3-pip is installed.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q python3-pip || true
fi
try=1
while :; do
    # shellcheck disable=SC2086
    if "$py" -m pip install -q $pins && pinned; then
        echo "lepton: $py has $pins"
        exit 0
    fi
    if [ "$try" -ge "$tries" ]; then
        # Not a failed boot: the node is usable, and the workload layer can still bring them.
        echo "lepton: pip install of $pins into $py failed after $try tries; $later" >&2
        exit 0
    fi
    echo "lepton: pip install of $pins into $py failed (try $try of $tries)" >&2
    sleep $((try * ${LEPTON_INSTALL_WAIT:-15}))
    try=$((try + 1))
done
"""


def install_script(cloud: str, python: str, *, package_index: bool = True) -> str:
    """The first-boot script that installs `packages(cloud)` into `python`. Without a
    `package_index` (nodes whose network reaches only the cloud's own services) it installs
    nothing and says who will."""
    return (
        _SCRIPT.replace("__PYTHON__", shlex.quote(python))
        .replace("__PINS__", shlex.quote(" ".join(packages(cloud))))
        .replace("__INDEX__", "pypi" if package_index else "none")
    )
