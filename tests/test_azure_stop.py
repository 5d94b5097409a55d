"""The Azure watchdog's stop command, run for real (the very file cloud-init installs) against a
local stand-in for the instance metadata service and Azure Resource Manager: it deallocates (Spot:
deletes) this VM with the managed identity's token, and only falls back to a guest power-off when
Azure refuses or cannot be reached. The watchdog itself hands over to it when its lifetime is up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.components import cloudinit
from lepton_infra.node import azure_stop

VM_ID = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines/node-0"
TOKEN = "token-of-the-vms-identity"
SCRIPT = Path(azure_stop.__file__)


@dataclass
class FakeAzure:
    """IMDS and ARM on one loopback port; ARM answers `arm_status` to every stop request."""

    arm_status: dict[str, int] = field(default_factory=lambda: {"POST": 202, "DELETE": 202})
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    state = FakeAzure()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            state.requests.append((self.command, self.path, dict(self.headers)))
            if self.path.startswith("/metadata/"):
                if self.headers.get("Metadata") != "true":  # IMDS refuses requests without it
                    return self._answer(400)
                if self.path.startswith("/metadata/instance/compute/resourceId"):
                    return self._answer(200, VM_ID.encode())
                if self.path.startswith("/metadata/identity/oauth2/token"):
                    return self._answer(200, json.dumps({"access_token": TOKEN}).encode())
                return self._answer(404)
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._answer(401)
            return self._answer(state.arm_status.get(self.command, 405))

        do_GET = do_POST = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def stop_env(fake: FakeAzure, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LEPTON_IMDS_URL": fake.url,
        "LEPTON_ARM_URL": fake.url,
        "LEPTON_FALLBACK_POWEROFF": f"touch {tmp_path / 'powered-off'}",
        "LEPTON_STOP_TRIES": "2",
        "LEPTON_STOP_WAIT_S": "0",
    }


def arm_calls(fake: FakeAzure) -> list[tuple[str, str]]:
    return [(m, p.split("?")[0]) for m, p, _ in fake.requests if not p.startswith("/metadata/")]


def test_deallocate_posts_to_this_vm_with_the_identitys_token(fake_azure: FakeAzure, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "deallocate"],
        env=stop_env(fake_azure, tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert arm_calls(fake_azure) == [("POST", f"{VM_ID}/deallocate")]
    token_query = next(p for _, p, _ in fake_azure.requests if "oauth2/token" in p)
    assert "resource=https%3A%2F%2Fmanagement.azure.com%2F" in token_query
    assert not (tmp_path / "powered-off").exists(), "no guest power-off when Azure deallocates"


def test_spot_deletes_and_falls_back_to_deallocate_when_delete_is_refused(
    fake_azure: FakeAzure, tmp_path: Path
) -> None:
    env = stop_env(fake_azure, tmp_path)
    out = subprocess.run([sys.executable, str(SCRIPT), "delete"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert arm_calls(fake_azure) == [("DELETE", VM_ID)]

    fake_azure.requests.clear()
    fake_azure.arm_status["DELETE"] = 403
    out = subprocess.run([sys.executable, str(SCRIPT), "delete"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # A 403 is not retried; deallocating still stops the compute bill.
    assert arm_calls(fake_azure) == [("DELETE", VM_ID), ("POST", f"{VM_ID}/deallocate")]


def test_when_azure_refuses_the_guest_is_powered_off_and_the_exit_says_so(
    fake_azure: FakeAzure, tmp_path: Path
) -> None:
    fake_azure.arm_status["POST"] = 500
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "deallocate"],
        env=stop_env(fake_azure, tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert len(arm_calls(fake_azure)) == 2, "a 5xx is retried"
    assert (tmp_path / "powered-off").exists()
    assert "stays allocated" in out.stderr


def test_the_watchdog_hands_over_to_the_stop_command_when_the_lifetime_is_up(
    fake_azure: FakeAzure, tmp_path: Path
) -> None:
    script = tmp_path / "watchdog"
    script.write_text(cloudinit.watchdog_script("lepton", idle_shutdown_minutes=30, max_lifetime_hours=1))
    script.chmod(0o755)
    (tmp_path / "uptime").write_text("3700.00 10.00\n")
    env = {
        **stop_env(fake_azure, tmp_path),
        "LEPTON_RUNS_DIR": str(tmp_path / "runs"),
        "LEPTON_WATCHDOG_STATE": str(tmp_path / "state"),
        "LEPTON_UPTIME_FILE": str(tmp_path / "uptime"),
        # What the Azure pool's systemd drop-in sets for the watchdog service.
        "LEPTON_POWEROFF": f"{sys.executable} {SCRIPT} deallocate",
    }
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lifetime"
    assert arm_calls(fake_azure) == [("POST", f"{VM_ID}/deallocate")]


def test_an_unknown_action_is_refused_without_touching_azure(fake_azure: FakeAzure, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "poweroff"],
        env=stop_env(fake_azure, tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert fake_azure.requests == []
