"""Host keys reach the nodes through the cloud's secret store, never through user data: the real
first-boot install script (POSIX sh, as cloud-init's bootcmd runs it) against a temporary /etc/ssh,
and the real AWS fetcher against a local IMDSv2 + Secrets Manager endpoint that checks its
Signature Version 4 with botocore's own signer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lepton_infra.components.cloudinit import host_key_install_script

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


def key_pair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode() + " root@node-0"


def run_install(
    tmp_path: Path, fetch: str, pinned: str, *, tries: int = 3, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The install script as cloud-init runs a bootcmd entry: written to a file, run by /bin/sh."""
    ssh_dir = tmp_path / "etc-ssh"
    ssh_dir.mkdir(exist_ok=True)
    script = tmp_path / "bootcmd.sh"
    script.write_text("#!/bin/sh\n" + host_key_install_script(fetch, pinned))
    full_env = {
        **os.environ,
        "LEPTON_SSH_DIR": str(ssh_dir),
        "LEPTON_KEY_TMPDIR": str(tmp_path),
        "LEPTON_HOST_KEY_TRIES": str(tries),
        "LEPTON_HOST_KEY_WAIT": "0",
        "LEPTON_RESTART_SSHD": f"touch {tmp_path / 'sshd-restarted'}",
        **(env or {}),
    }
    return subprocess.run(["/bin/sh", str(script)], env=full_env, capture_output=True, text=True, timeout=120)


def served_key(tmp_path: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(tmp_path / "etc-ssh" / "ssh_host_ed25519_key")],
        capture_output=True,
        text=True,
        check=True,
    )
    return " ".join(out.stdout.split()[:2])


def test_the_fetched_key_is_installed_as_the_only_host_key_and_sshd_restarted(tmp_path: Path) -> None:
    private, public = key_pair()
    (tmp_path / "secret").write_text(private)
    ssh_dir = tmp_path / "etc-ssh"
    ssh_dir.mkdir()
    (ssh_dir / "ssh_host_rsa_key").write_text("an image's baked key")  # must not be served
    result = run_install(tmp_path, f"cat {tmp_path / 'secret'}", public)
    assert result.returncode == 0, result.stderr
    assert served_key(tmp_path) == " ".join(public.split()[:2])
    assert sorted(p.name for p in ssh_dir.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert (ssh_dir / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "sshd-restarted").exists()
    assert not list(tmp_path.glob("lepton-host-key.*"))  # the temporary copy is gone


def test_a_key_that_is_not_the_pinned_one_is_never_installed(tmp_path: Path) -> None:
    other_private, _ = key_pair()
    _, pinned = key_pair()
    (tmp_path / "secret").write_text(other_private)
    result = run_install(tmp_path, f"cat {tmp_path / 'secret'}", pinned, tries=2)
    assert "no host key matching the pinned one after 2 tries" in result.stderr
    assert not (tmp_path / "etc-ssh" / "ssh_host_ed25519_key").exists()
    assert not (tmp_path / "sshd-restarted").exists()


def test_a_failing_fetch_is_retried_until_the_secret_is_readable(tmp_path: Path) -> None:
    private, public = key_pair()
    (tmp_path / "secret").write_text(private)
    counter = tmp_path / "calls"
    # Fails twice (e.g. the role's grant is not visible yet), then succeeds.
    fetch = f'echo x >> {counter}; [ "$(wc -l < {counter})" -ge 3 ] && cat {tmp_path / "secret"}'
    result = run_install(tmp_path, fetch, public, tries=5)
    assert result.returncode == 0, result.stderr
    assert counter.read_text().count("x") == 3 and served_key(tmp_path) == " ".join(public.split()[:2])


def test_a_later_boot_with_the_key_in_place_fetches_nothing(tmp_path: Path) -> None:
    private, public = key_pair()
    (tmp_path / "secret").write_text(private)
    assert run_install(tmp_path, f"cat {tmp_path / 'secret'}", public).returncode == 0
    (tmp_path / "sshd-restarted").unlink()
    result = run_install(tmp_path, f"touch {tmp_path / 'fetched'}; false", public)
    assert result.returncode == 0 and not (tmp_path / "fetched").exists()
    assert not (tmp_path / "sshd-restarted").exists()


# ---------------------------------------------------------------------------- AWS fetcher

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:demo-hostkeys-0-AbCdEf"
CREDS = {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG", "Token": "session-token"}


class FakeAws(BaseHTTPRequestHandler):
    """IMDSv2 (a token first, then the role's credentials) and Secrets Manager's GetSecretValue,
    which answers only a request whose SigV4 signature botocore computes identically."""

    secret = ""
    imds_token = "imds-token-123"
    seen: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, self.imds_token)
        else:
            self._send(400, "bad token request")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != self.imds_token:
            self._send(401, "IMDSv2 token required")
        elif self.path == "/latest/meta-data/iam/security-credentials/":
            self._send(200, "demo-node-0-role")
        elif self.path == "/latest/meta-data/iam/security-credentials/demo-node-0-role":
            self._send(200, json.dumps({"Code": "Success", **CREDS}))
        else:
            self._send(404, "not found")

    def do_POST(self) -> None:  # noqa: N802
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        body = self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";") if "SignedHeaders=" in auth else []
        request = AWSRequest(
            method="POST",
            url=f"http://{self.headers['Host']}/",
            data=body,
            headers={h: self.headers[h] for h in signed if h != "host"},
        )
        request.context["timestamp"] = self.headers["X-Amz-Date"]
        signer = SigV4Auth(
            Credentials(CREDS["AccessKeyId"], CREDS["SecretAccessKey"], CREDS["Token"]),
            "secretsmanager",
            "us-east-1",
        )
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        must_sign = {"host", "x-amz-date", "x-amz-security-token", "x-amz-target", "content-type"}
        self.seen.append(self.headers.get("X-Amz-Target", ""))
        if not must_sign <= set(signed) or f"Signature={expected}" not in auth:
            self._send(403, json.dumps({"__type": "InvalidSignatureException"}))
        elif json.loads(body) != {"SecretId": SECRET_ARN}:
            self._send(400, json.dumps({"__type": "ResourceNotFoundException"}))
        else:
            self._send(
                200,
                json.dumps({"ARN": SECRET_ARN, "SecretString": self.secret}),
                "application/x-amz-json-1.1",
            )


@pytest.fixture
def fake_aws() -> Iterator[str]:
    pytest.importorskip("botocore")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAws)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_aws_node_fetches_its_key_from_secrets_manager_with_a_valid_signature(
    tmp_path: Path, fake_aws: str
) -> None:
    from lepton_infra.components.aws import host_key_fetch

    private, public = key_pair()
    FakeAws.secret, FakeAws.seen = private, []
    fetch = host_key_fetch(SECRET_ARN)
    assert "PRIVATE KEY" not in fetch
    env = {"LEPTON_IMDS": fake_aws, "LEPTON_SECRETSMANAGER_ENDPOINT": fake_aws}
    result = run_install(tmp_path, fetch, public, env=env)
    assert result.returncode == 0, result.stderr
    assert FakeAws.seen == ["secretsmanager.GetSecretValue"]  # signed right the first time
    assert served_key(tmp_path) == " ".join(public.split()[:2])


def test_a_wrong_signature_is_refused_by_the_check_the_fake_endpoint_makes(fake_aws: str) -> None:
    """The signature check above can fail: a fetcher signing with another secret key is refused."""
    import urllib.error

    from lepton_infra.node import aws_fetch_secret

    FakeAws.secret = "x"
    wrong = {**CREDS, "SecretAccessKey": "not-the-key"}
    os.environ["LEPTON_SECRETSMANAGER_ENDPOINT"] = fake_aws
    try:
        original = aws_fetch_secret.credentials
        aws_fetch_secret.credentials = lambda: wrong  # type: ignore[assignment]
        with pytest.raises(urllib.error.HTTPError, match="403"):
            aws_fetch_secret.fetch(SECRET_ARN)
        aws_fetch_secret.credentials = lambda: dict(CREDS)  # type: ignore[assignment]
        assert aws_fetch_secret.fetch(SECRET_ARN) == "x"
    finally:
        aws_fetch_secret.credentials = original  # type: ignore[assignment]
        del os.environ["LEPTON_SECRETSMANAGER_ENDPOINT"]
