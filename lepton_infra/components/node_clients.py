"""The data plane's client packages every node installs into its Python at first boot, pinned, one
list per cloud, in this one place. The node-side uploader (`workload/node/upload.py`), the sweep
worker and `train.py --data-dir <store URL>` import them with the inventory's interpreter, under the
node's own identity (instance profile, service account, managed identity).

Why these: obstore talks to S3, GCS and Azure Blob for results (all clouds); GCS also goes through
google-cloud-storage (`lepton_infra.data.store_gcs`); the sweep queue needs boto3 (SQS),
google-cloud-pubsub (Pub/Sub) or azure-storage-queue with azure-identity (Azure Storage Queues with
the VM's managed identity). Each version lies inside pyproject.toml's range for the same package
(a test checks), so nodes run what the test suite runs.

Pure data and text: imports no Pulumi. `cloudinit.render_cloud_init` writes `install_script` as a
file and runs it last in `runcmd` (after a cloud's own commands, which make the interpreter on GCP
and Azure)."""

from __future__ import annotations

import shlex

# Exact versions (first boot must be reproducible): those the test suite ran against when they were
# pinned (2026-12-02), each inside pyproject.toml's range.
ALL_CLOUDS: tuple[str, ...] = ("obstore==0.12.1",)
PER_CLOUD: dict[str, tuple[str, ...]] = {
    "aws": ("boto3==1.44.8",),
    "gcp": ("google-cloud-storage==3.17.1", "google-cloud-pubsub==2.39.0"),
    "azure": ("azure-storage-queue==12.18.1", "azure-identity==1.27.0"),
}

INSTALL_PATH = "/usr/local/sbin/lepton-install-clients"

# POSIX sh (cloud-init runs runcmd with /bin/sh). Idempotent: a re-run on an interpreter that has
# every pin at its version changes nothing and needs no network. Retried with a growing pause
# (package mirrors and a fresh node's network are flaky at first boot). Paths, pins, tries and the
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
        echo "lepton: pip install of $pins into $py failed after $try tries" >&2
        exit 1
    fi
    echo "lepton: pip install of $pins into $py failed (try $try of $tries)" >&2
    sleep $((try * ${LEPTON_INSTALL_WAIT:-15}))
    try=$((try + 1))
done
"""


def packages(cloud: str) -> tuple[str, ...]:
    """The pinned requirements a node on `cloud` installs (`name==version`)."""
    if cloud not in PER_CLOUD:
        raise ValueError(f"cloud is {cloud!r}; allowed: {', '.join(sorted(PER_CLOUD))}")
    return ALL_CLOUDS + PER_CLOUD[cloud]


def install_script(cloud: str, python: str) -> str:
    """The first-boot script that installs `packages(cloud)` into `python`."""
    return _SCRIPT.replace("__PYTHON__", shlex.quote(python)).replace(
        "__PINS__", shlex.quote(" ".join(packages(cloud)))
    )
