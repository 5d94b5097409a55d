"""Node-side preflight: what the inventory's interpreter has, as ONE JSON line on stdout.

Sent as `python -c SOURCE` while the run is shipped and before anything is launched, so a node
without torch (or with fewer GPUs than the inventory says) fails the run before it starts. Standard
library only; torch is imported inside a try, since its absence is the answer we are looking for."""

from __future__ import annotations

import json
import platform
import sys
from typing import Any


def report() -> dict[str, Any]:
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


if __name__ == "__main__":
    print(json.dumps(report()), flush=True)
