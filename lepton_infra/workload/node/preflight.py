"""Node-side preflight: what the inventory's interpreter has, as ONE JSON line on stdout.

Sent as `python -c SOURCE [PIN...]` while the run is shipped and before anything is launched, so a
node without torch (or with fewer GPUs than the inventory says) fails the run before it starts. It
also says which of the data plane's pinned clients (the PINs, `name==version`) the interpreter lacks,
and the platform wheels for it must match (the controller brings what is missing). Standard
library only; torch is imported inside a try, since its absence is the answer we are looking for."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from typing import Any


def _has(pin: str) -> bool:
    name, _, want = pin.partition("==")
    try:
        return metadata.version(name) == want
    except metadata.PackageNotFoundError:
        return False


def _libc() -> tuple[str, str]:
    """("glibc", "2.36"): asked of the C library (instant), not found by reading the binary."""
    try:
        name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    except (ValueError, OSError):
        name, version = "", ""
    return (name, version) if name and version else platform.libc_ver()


def report(pins: list[str] | None = None) -> dict[str, Any]:
    libc, libc_version = _libc()
    found: dict[str, Any] = {
        "clients_missing": [pin for pin in pins or [] if not _has(pin)],
        "platform": {
            "machine": platform.machine(),
            "libc": libc,
            "libc_version": libc_version,
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "implementation": sys.implementation.name,
        },
        "python": sys.executable,
        "python_version": platform.python_version(),
        "torch": None,
        "cuda": False,
        "gpus": 0,
        "error": "",
    }
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure (missing, broken build) is the finding
        found["error"] = f"{type(exc).__name__}: {exc}"
        return found
    found["torch"] = str(torch.__version__)
    try:
        found["cuda"] = bool(torch.cuda.is_available())
        found["gpus"] = int(torch.cuda.device_count()) if found["cuda"] else 0
    except Exception as exc:  # noqa: BLE001 - a broken driver is a finding too, not a crash
        found["error"] = f"torch.cuda: {type(exc).__name__}: {exc}"
    return found


if __name__ == "__main__":
    print(json.dumps(report(sys.argv[1:])), flush=True)
