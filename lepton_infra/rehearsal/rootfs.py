"""The rehearsal machine's root file system: Debian bookworm with systemd, cloud-init and OpenSSH,
built once by mmdebstrap from Debian's archive (Ubuntu's, which the clouds' images use, is not
reachable here) and cached under the project's state folder, keyed by its package list (a changed
list builds a new one; the old one is removed). Nodes never write into it: each boots an overlay."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from lepton_infra.errors import ConfigError

SUITE = "bookworm"
# What a cloud image has that the node scripts use: systemd + cloud-init + sshd, python3 (the secret
# fetchers and the Azure stop call run on the image's own python3), iproute2, sudo, ca-certificates
# (the node's TLS trust store, where the rehearsal adds its own CA), curl, procps, locales.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "cloud-init",
    "openssh-server",
    "python3",
    "iproute2",
    "sudo",
    "ca-certificates",
    "curl",
    "procps",
    "locales",
)
# Cloud images come with the locale cloud-init sets by default (en_US.UTF-8); without it cc_locale
# fails and cloud-init reports the boot as an error.
HOOKS: tuple[str, ...] = ('echo "en_US.UTF-8 UTF-8" > "$1/etc/locale.gen" && chroot "$1" locale-gen',)


def cache_key() -> str:
    return hashlib.sha256("\n".join((SUITE, *PACKAGES, *HOOKS)).encode()).hexdigest()[:12]


def unavailable() -> str | None:
    """Why a rootfs cannot be built or booted here, or None."""
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("systemd-nspawn", "systemd-container")):
        if shutil.which(tool) is None:
            return f"the rehearsal needs `{tool}` (apt-get install {package}; `make setup` does it as root)"
    return None


def rootfs(state_dir: Path) -> Path:
    """The cached root file system for the current package list, built first if missing (~25-60 s).
    A lock keeps two processes from building it at once."""
    base = state_dir / "rehearsal"
    base.mkdir(parents=True, exist_ok=True)
    target = base / f"rootfs-{cache_key()}"
    with open(base / "rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "etc" / "os-release").exists():
            return target
        for old in base.glob("rootfs-*"):  # another package list, or a build that died half-way
            shutil.rmtree(old, ignore_errors=True)
        building = base / f"building-{os.getpid()}"
        cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        cmd += [f"--customize-hook={hook}" for hook in HOOKS] + [SUITE, str(building)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise ConfigError(f"building the rehearsal rootfs failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
        building.rename(target)
        return target
