"""GCP and Azure nodes fetch their host key from the secret store at first boot: the real embedded
fetcher (the here-document the nodes' cloud-init carries), inside the real install script run by
/bin/sh, against local stand-ins for the metadata servers and for Secret Manager / Key Vault that
answer only with the node's own token. The pinned key ends up the one sshd would serve."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lepton_infra.components import azure, gcp
from lepton_infra.components.cloudinit import host_key_install_script

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")

TOKEN = "token-of-this-nodes-identity"
GCP_VERSION = "projects/lepton-test-project/secrets/demo-abc123-host-key-0/versions/latest"
AZURE_SECRET = "node-0-host-key"


def key_pair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


@dataclass
class Stand:
    """One loopback server playing the metadata server and the secret store of both clouds."""

    secret: str = ""
    refuse: int = 0  # answer the secret store with 403 this many times first (grant not visible yet)
    paths: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stand() -> Iterator[Stand]:
    state = Stand()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any] | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            state.paths.append(self.path)
            path = urllib.parse.urlsplit(self.path).path
            if path == "/computeMetadata/v1/instance/service-accounts/default/token":
                ok = self.headers.get("Metadata-Flavor") == "Google"
                return self._send(200 if ok else 403, {"access_token": TOKEN})
            if path == "/metadata/identity/oauth2/token":
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                ok = self.headers.get("Metadata") == "true" and query.get("resource") == [
                    "https://vault.azure.net"
                ]
                return self._send(200 if ok else 400, {"access_token": TOKEN})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._send(401)
            if state.refuse > 0:
                state.refuse -= 1
                return self._send(403)
            if path == f"/v1/{GCP_VERSION}:access":
                data = base64.b64encode(state.secret.encode()).decode()
                return self._send(200, {"name": GCP_VERSION, "payload": {"data": data}})
            if path == f"/secrets/{AZURE_SECRET}":
                return self._send(
                    200, {"value": state.secret, "id": f"{state.url}/secrets/{AZURE_SECRET}/v1"}
                )
            return self._send(404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def install(
    tmp_path: Path, fetch: str, pinned: str, stand: Stand, *, tries: int = 3
) -> subprocess.CompletedProcess[str]:
    """The install script as cloud-init's bootcmd runs it, with every endpoint on the stand."""
    ssh_dir = tmp_path / "etc-ssh"
    ssh_dir.mkdir(exist_ok=True)
    script = tmp_path / "bootcmd.sh"
    script.write_text("#!/bin/sh\n" + host_key_install_script(fetch, pinned))
    env = {
        **os.environ,
        "LEPTON_SSH_DIR": str(ssh_dir),
        "LEPTON_KEY_TMPDIR": str(tmp_path),
        "LEPTON_HOST_KEY_TRIES": str(tries),
        "LEPTON_HOST_KEY_WAIT": "0",
        "LEPTON_RESTART_SSHD": f"touch {tmp_path / 'sshd-restarted'}",
        "LEPTON_GCE_METADATA": stand.url,
        "LEPTON_SECRETMANAGER_ENDPOINT": stand.url,
        "LEPTON_IMDS": stand.url,
        "LEPTON_KEYVAULT_ENDPOINT": stand.url,
    }
    return subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=120)


def served(tmp_path: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(tmp_path / "etc-ssh" / "ssh_host_ed25519_key")],
        capture_output=True,
        text=True,
        check=True,
    )
    return " ".join(out.stdout.split()[:2])


FETCHES = {
    "gcp": lambda: gcp.host_key_fetch(GCP_VERSION),
    "azure": lambda: azure.host_key_fetch(("https://lepton-kv-x.vault.azure.net/", AZURE_SECRET)),
}


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_the_node_fetches_its_key_with_its_own_token_and_serves_the_pinned_key(
    cloud: str, stand: Stand, tmp_path: Path
) -> None:
    private, public = key_pair()
    stand.secret = private
    result = install(tmp_path, FETCHES[cloud](), public, stand)
    assert result.returncode == 0, result.stderr
    assert served(tmp_path) == " ".join(public.split()[:2])
    assert (tmp_path / "sshd-restarted").exists()
    assert any("token" in p for p in stand.paths), "the token comes from the metadata server"


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_a_grant_not_yet_visible_is_waited_out(cloud: str, stand: Stand, tmp_path: Path) -> None:
    private, public = key_pair()
    stand.secret, stand.refuse = private, 2  # IAM / RBAC propagate within minutes
    result = install(tmp_path, FETCHES[cloud](), public, stand, tries=4)
    assert result.returncode == 0, result.stderr
    assert served(tmp_path) == " ".join(public.split()[:2])


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_someone_elses_key_in_the_store_is_never_served(cloud: str, stand: Stand, tmp_path: Path) -> None:
    other, _ = key_pair()
    _, pinned = key_pair()
    stand.secret = other
    result = install(tmp_path, FETCHES[cloud](), pinned, stand, tries=2)
    assert "no host key matching the pinned one" in result.stderr
    assert not (tmp_path / "etc-ssh" / "ssh_host_ed25519_key").exists()


def test_the_fetch_commands_hold_no_key_and_name_only_where_the_secret_is() -> None:
    for make in FETCHES.values():
        text = make()
        assert "PRIVATE KEY" not in text
        assert text.startswith("python3 - ") and text.rstrip().endswith("LEPTON_PY")
