#!/usr/bin/env python3
"""Stop billing for this Azure VM: the lepton watchdog's power-off command on Azure.

A guest `poweroff` leaves an Azure VM "Stopped" but still allocated, and billed for its compute.
This script asks Azure Resource Manager to deallocate the VM (or, for a Spot VM, to delete it)
with a token of the VM's own managed identity from the instance metadata service (IMDS). The
identity's only role is a custom one with just that action, assigned on this VM alone.

It runs on the node (installed by cloud-init as `/usr/local/sbin/lepton-azure-stop`), so it uses
only the Python standard library. When Azure cannot be reached or refuses, it falls back to a
guest power-off (which at least stops the GPUs' work) and exits non-zero. Every endpoint can be
pointed elsewhere through the environment, so tests run this very file against local servers.

Usage: lepton-azure-stop [deallocate|delete]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

IMDS = os.environ.get("LEPTON_IMDS_URL", "http://169.254.169.254")
ARM = os.environ.get("LEPTON_ARM_URL", "https://management.azure.com")
# Compute API version of the deallocate/delete calls (both exist unchanged since 2015).
COMPUTE_API = "2024-07-01"
FALLBACK = os.environ.get("LEPTON_FALLBACK_POWEROFF", "systemctl poweroff")
TRIES = int(os.environ.get("LEPTON_STOP_TRIES", "5"))
WAIT_S = float(os.environ.get("LEPTON_STOP_WAIT_S", "5"))


def _get(url: str, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body


def vm_resource_id() -> str:
    """This VM's ARM resource id, as IMDS reports it."""
    url = f"{IMDS}/metadata/instance/compute/resourceId?api-version=2021-02-01&format=text"
    return _get(url, {"Metadata": "true"}).decode().strip()


def arm_token() -> str:
    """An ARM access token of the VM's managed identity (the VM has exactly one, so no client id)."""
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": "https://management.azure.com/"})
    body = _get(f"{IMDS}/metadata/identity/oauth2/token?{query}", {"Metadata": "true"})
    token: str = json.loads(body)["access_token"]
    return token


def request_stop(action: str) -> int:
    """POST .../deallocate or DELETE the VM; returns ARM's HTTP status (200/202 accepted)."""
    resource = vm_resource_id()
    if not resource.startswith("/subscriptions/"):
        raise ValueError(f"IMDS gave no VM resource id: {resource!r}")
    if action == "delete":
        url, method = f"{ARM}{resource}?api-version={COMPUTE_API}", "DELETE"
    else:
        url, method = f"{ARM}{resource}/deallocate?api-version={COMPUTE_API}", "POST"
    request = urllib.request.Request(
        url,
        data=b"" if method == "POST" else None,
        method=method,
        headers={"Authorization": f"Bearer {arm_token()}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        status: int = response.status
        return status


def log(message: str) -> None:
    print(f"lepton-azure-stop: {message}", file=sys.stderr, flush=True)
    subprocess.run(["logger", "-t", "lepton-watchdog", message], check=False, capture_output=True)


def _permanent(exc: Exception) -> bool:
    """A refusal that retrying cannot change (403 no permission, 404, 409), unlike 429/5xx/timeouts."""
    return isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code != 429


def main(argv: list[str]) -> int:
    action = argv[1] if len(argv) > 1 else "deallocate"
    if action not in ("deallocate", "delete"):
        log(f"unknown action {action!r}; allowed: deallocate, delete")
        return 2
    # A Spot VM is deleted; if Azure refuses that, deallocating still stops the compute bill.
    for current in [action] if action == "deallocate" else [action, "deallocate"]:
        for attempt in range(1, TRIES + 1):
            try:
                status = request_stop(current)
                log(f"Azure accepted {current} of this VM (HTTP {status})")
                return 0
            except (OSError, ValueError, KeyError) as exc:  # URLError/HTTPError are OSErrors
                log(f"{current} attempt {attempt}/{TRIES} failed: {exc}")
                if _permanent(exc):
                    break
                if attempt < TRIES:
                    time.sleep(WAIT_S * attempt)
    log(f"could not {action} through Azure; powering off the guest instead (the VM stays allocated)")
    subprocess.run(FALLBACK.split(), check=False)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
