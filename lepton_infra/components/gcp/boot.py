"""What a GCP node adds to the neutral cloud-init: the guest agent told to keep the pinned host key,
and a first-boot search for the image's interpreter that has torch (the inventory's `python`)."""

from __future__ import annotations

from lepton_infra.components.cloudinit import BootFile, CloudBoot

# The guest agent generates new SSH host keys on an instance's first boot (it starts after
# network-online.target and before sshd, per its systemd unit), which would replace the pinned key
# the bootcmd has just installed. cloud-init writes this file in its init stage, before
# network-online.target, so the agent reads it before it would act. /etc/default/instance_configs.cfg
# is the guest agent's user configuration file; .template and .distro hold the image's defaults.
GUEST_AGENT_CONFIG = """[InstanceSetup]
# lepton: keep the host key pinned in the inventory (installed from Secret Manager at first boot)
set_host_keys = false
"""
# The inventory's `python` on GCP (images.py): a wrapper made at first boot for the interpreter of the
# Deep Learning VM image that imports torch. Google's image pages do not name that path, and it has
# moved between image generations (conda in /opt/conda, then conda environments under
# /opt/conda/envs, later a system-wide install or a venv under /opt), so the node searches the
# places these generations used, globs included, instead of us guessing one; it logs each
# interpreter it tried. A node where none imports torch gets no wrapper, and the run's preflight
# then names the node and the missing interpreter. (`LEPTON_PYTHON_ROOT` prefixes every place, for
# tests; `LEPTON_PYTHON_CANDIDATES` replaces the list.)
PYTHON_WRAPPER = "/opt/lepton/bin/python"
FIND_PYTHON_PATH = "/usr/local/sbin/lepton-find-python"
PYTHON_PLACES = (
    "/opt/conda/bin/python3",
    "/opt/conda/envs/*/bin/python3",
    "/opt/python/bin/python3",
    "/opt/pytorch/bin/python3",
    "/opt/*/venv/bin/python3",
    "/opt/*/bin/python3",
    "/usr/local/bin/python3",
    "/usr/bin/python3",
)
FIND_PYTHON = r"""#!/bin/sh
# lepton: point /opt/lepton/bin/python at the image's interpreter that has torch.
wrapper="${LEPTON_PYTHON_WRAPPER:-__WRAPPER__}"
root="${LEPTON_PYTHON_ROOT:-}"
places=""
for place in __PLACES__; do places="$places $root$place"; done
# Unquoted on purpose: each place's glob expands here (one that matches nothing stays as written).
for candidate in ${LEPTON_PYTHON_CANDIDATES:-$places}; do
    [ -x "$candidate" ] || continue
    if "$candidate" -c 'import torch' >/dev/null 2>&1; then
        mkdir -p "$(dirname "$wrapper")"
        # A wrapper, not a symlink: a virtual environment's python finds its packages only when
        # started by its own path.
        printf '#!/bin/sh
exec %s "$@"
' "$candidate" > "$wrapper.tmp"
        chmod 0755 "$wrapper.tmp"
        mv "$wrapper.tmp" "$wrapper"
        echo "lepton: $wrapper runs $candidate"
        exit 0
    fi
    echo "lepton: $candidate has no torch" >&2
done
echo "lepton: no interpreter with torch on this image (looked in:${LEPTON_PYTHON_CANDIDATES:-$places}); $wrapper not made" >&2
exit 1
""".replace("__WRAPPER__", PYTHON_WRAPPER).replace("__PLACES__", " ".join(PYTHON_PLACES))
GCP_BOOT = CloudBoot(
    files=(
        BootFile("/etc/default/instance_configs.cfg", GUEST_AGENT_CONFIG),
        BootFile(FIND_PYTHON_PATH, FIND_PYTHON, "0755"),
    ),
    runcmd=(FIND_PYTHON_PATH,),
)
