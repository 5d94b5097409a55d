"""Node-side preflight: what the inventory's interpreter has, as ONE JSON line on stdout.

Sent as `python -c SOURCE [PIN...]` while the run is shipped and before anything is launched, so a
node without torch (or with fewer GPUs than the inventory says) fails the run before it starts. It
also says which of the data plane's pinned clients (the PINs, `name==version`) the interpreter lacks,
and the platform wheels for it must match (the controller brings what is missing). Standard
library only; torch is imported inside a try, since its absence is the answer we are looking for.

`import torch` and the CUDA probe cost a second or more per run, and on a warm node the answer does
not change between runs. So a good torch answer is cached on the node under a key made of everything
that could change it: the interpreter and its import path, torch's own files (found without
importing it), the NVIDIA driver, the device nodes, the CUDA visibility variables and the boot id
(a reboot can load another driver). Any change of these, and any answer that is not a usable
torch, means a real import; a cached answer says `"cached": true`. The clients and the platform are
cheap to ask and are asked every time (the controller may have just installed a client)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

CACHE_DIR = Path.home() / ".lepton" / "preflight"
# Environment that decides what torch.cuda sees, or which libraries torch loads.
_ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "LD_PRELOAD")


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


def _stat(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns, st.st_ino]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def cache_key() -> str | None:
    """A digest of what could change the torch answer, or None when torch cannot even be found
    (then nothing is cached: the import's own error is the answer, and it must be fresh)."""
    try:
        spec = importlib.util.find_spec("torch")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    torch_dir = Path(spec.origin).parent
    torch_files = [Path(spec.origin), torch_dir / "version.py", *sorted(torch_dir.glob("_C*.so"))]
    devices = []
    try:
        for name in sorted(os.listdir("/dev")):
            if name.startswith(("nvidia", "dri")):
                st = os.stat(os.path.join("/dev", name))
                devices.append([name, st.st_rdev, st.st_mode])
    except OSError:
        pass
    parts = {
        "executable": [sys.executable, os.path.realpath(sys.executable), sys.version],
        "path": sys.path,
        "flags": repr(sys.flags),
        "torch": [_stat(p) for p in torch_files],
        "driver": _read("/proc/driver/nvidia/version"),
        "devices": devices,
        "env": {k: os.environ.get(k) for k in _ENV_KEYS},
        "boot": _read("/proc/sys/kernel/random/boot_id"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def probe_torch() -> dict[str, Any]:
    """The real torch answer: import it and ask."""
    found: dict[str, Any] = {
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


def torch_report() -> dict[str, Any]:
    """The torch answer from the node's cache when nothing it depends on changed, else probed."""
    key = cache_key()
    entry = CACHE_DIR / f"{key}.json" if key else None
    if entry is not None:
        try:
            cached = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None
        if isinstance(cached, dict) and cached.get("torch"):
            return {**cached, "cached": True}
    found = probe_torch()
    if entry is not None and found["torch"] and not found["error"]:
        try:  # best effort: a read-only or full home only costs the next run the import again
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(found), encoding="utf-8")
            os.replace(tmp, entry)
        except OSError:
            pass
    return {**found, "cached": False}


def report(pins: list[str] | None = None) -> dict[str, Any]:
    libc, libc_version = _libc()
    return {
        "clients_missing": [pin for pin in pins or [] if not _has(pin)],
        "platform": {
            "machine": platform.machine(),
            "libc": libc,
            "libc_version": libc_version,
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "implementation": sys.implementation.name,
        },
        **torch_report(),
    }


if __name__ == "__main__":
    print(json.dumps(report(sys.argv[1:])), flush=True)
