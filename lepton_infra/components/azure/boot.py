"""Azure's additions to every node's cloud-init (the `CloudBoot` the plan carries): the watchdog's
stop call, which frees the VM's bill where a guest power-off would not, and, for the default image,
a venv with a pinned CUDA build of torch."""

from __future__ import annotations

from lepton_infra.components.cloudinit import BootFile, CloudBoot
from lepton_infra.components.secret_fetch import node_script

STOP_PATH = "/usr/local/sbin/lepton-azure-stop"

# The HPC image has the driver, CUDA, NCCL and MPI but no torch: the default image's nodes install
# this pinned CUDA build into their own venv at first boot (cloud-init's final stage; `cloud-init
# status --wait` on a node returns once it is there), and the inventory names that venv's python
# (images.py). cu126 wheels carry their CUDA runtime and run on the image's 5xx driver.
TORCH_PIN = "torch==2.9.1+cu126"
TORCH_INDEX = "https://download.pytorch.org/whl/cu126"
VENV = "/opt/lepton/venv"
INSTALL_TORCH_PATH = "/usr/local/sbin/lepton-install-torch"
INSTALL_TORCH = (
    r"""#!/bin/sh
# lepton: a venv with a pinned CUDA build of torch (the HPC image has none). Idempotent.
set -u
venv="${LEPTON_VENV:-__VENV__}"
if "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
    echo "lepton: $venv already has torch"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q || true
apt-get -o DPkg::Lock::Timeout=600 install -y -q python3-venv || exit 1
python3 -m venv "$venv" || exit 1
for try in 1 2 3; do
    if "$venv/bin/pip" install --no-cache-dir -q --extra-index-url __INDEX__ '__TORCH__' numpy; then
        "$venv/bin/python" -c 'import torch; print("lepton: torch", torch.__version__, "in", "'"$venv"'")'
        exit 0
    fi
    echo "lepton: pip install of __TORCH__ failed (try $try)" >&2
    sleep $((try * 20))
done
exit 1
""".replace("__VENV__", VENV)
    .replace("__INDEX__", TORCH_INDEX)
    .replace("__TORCH__", TORCH_PIN)
)


def azure_boot(*, spot: bool, install_torch: bool = True) -> CloudBoot:
    """Azure's additions to every node's cloud-init: the stop command (`azure_stop.py`) and a
    systemd drop-in that makes the watchdog run it instead of a guest power-off, which would
    leave the VM allocated and billed; and, for the default image, the torch venv."""
    action = "delete" if spot else "deallocate"
    dropin = f'[Service]\nEnvironment="LEPTON_POWEROFF={STOP_PATH} {action}"\n'
    files = [
        BootFile(STOP_PATH, "#!/usr/bin/env python3\n" + node_script("azure_stop.py") + "\n", "0755"),
        BootFile("/etc/systemd/system/lepton-watchdog.service.d/50-azure-stop.conf", dropin),
    ]
    if install_torch:
        files.append(BootFile(INSTALL_TORCH_PATH, INSTALL_TORCH, "0755"))
    return CloudBoot(files=tuple(files), runcmd=(INSTALL_TORCH_PATH,) if install_torch else ())
