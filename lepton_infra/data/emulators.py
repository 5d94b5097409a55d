"""Local emulators of the clouds' stores and queues, for tests and benches: each started as one
process group on a free loopback port, stopped by `stop()`.

Each emulator comes with the environment that points the production clients at it (the same
variables the clients honour in general: `AWS_ENDPOINT_URL`, `AZURE_STORAGE_CONNECTION_STRING`,
`STORAGE_EMULATOR_HOST`, `PUBSUB_EMULATOR_HOST`), so the code under test is the production code."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PUBSUB_EMULATOR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")
# Azurite's documented development account (public, identical in every Azurite install).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class EmulatorUnavailable(RuntimeError):
    """The emulator is not installed here; the message says what is missing."""


@dataclass
class Emulator:
    name: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    workdir: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the whole process group (the Pub/Sub emulator's launcher starts a JVM child)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    name: str,
    argv: list[str],
    ports: list[int],
    env: dict[str, str],
    timeout: float = 60.0,
    host: str = "127.0.0.1",
    proc_env: dict[str, str] | None = None,
) -> Emulator:
    workdir = Path(tempfile.mkdtemp(prefix=f"lepton-{name}-"))
    log = workdir / "emulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=workdir,
            env={**os.environ, **(proc_env or {})},
        )
    emulator = Emulator(name, proc, env, log, workdir)
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:]
            emulator.stop()
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening:\n{text}")
        try:
            socket.create_connection((host, pending[0]), 0.5).close()
            pending.pop(0)
        except OSError:
            if time.monotonic() > deadline:
                emulator.stop()
                raise RuntimeError(
                    f"{name} did not listen on {host}:{pending[0]} within {timeout:.0f} s"
                ) from None
            time.sleep(0.1)
    return emulator


def _venv_tool(name: str) -> str:
    tool = Path(sys.executable).parent / name
    if tool.exists():
        return str(tool)
    found = shutil.which(name)
    if found is None:
        raise EmulatorUnavailable(f"{name} is not installed (pip install the project's dev extra)")
    return found


def start_moto(host: str = "127.0.0.1") -> Emulator:
    """moto in server mode: S3 and SQS (and every other service moto has) on one port of `host`
    (default loopback; the first-boot rehearsal serves its nodes on its bridge's address)."""
    port = free_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        # Not the default region: a client that ignores the configured one (and assumes
        # us-east-1) fails against moto's regional SQS, as it would against a real bucket elsewhere.
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return _start("moto", [_venv_tool("moto_server"), "-H", host, "-p", str(port)], [port], env, host=host)


def start_azurite(
    host: str = "127.0.0.1", account: str = AZURITE_ACCOUNT, key: str = AZURITE_KEY
) -> Emulator:
    """Azurite blob + queue services, in memory, on `host`, for `account` (default: Azurite's
    development account; another name is served with `key` through AZURITE_ACCOUNTS)."""
    tool = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    if not tool.exists():
        raise EmulatorUnavailable(
            f"azurite is not installed ({tool} missing: run `make setup`, which runs npm install)"
        )
    blob, queue, table = free_port(), free_port(), free_port()
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint=http://{host}:{blob}/{account};"
        f"QueueEndpoint=http://{host}:{queue}/{account};"
    )
    accounts = {"AZURITE_ACCOUNTS": f"{account}:{key}"} if account != AZURITE_ACCOUNT else {}
    argv = [
        str(tool),
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--inMemoryPersistence",
        "--silent",
        "--blobHost", host, "--blobPort", str(blob),
        "--queueHost", host, "--queuePort", str(queue),
        "--tableHost", host, "--tablePort", str(table),
    ]  # fmt: skip
    return _start(
        "azurite",
        argv,
        [blob, queue],
        {"AZURE_STORAGE_CONNECTION_STRING": conn},
        host=host,
        proc_env=accounts,
    )


def start_gcs(host: str = "127.0.0.1") -> Emulator:
    port = free_port()
    argv = [
        _venv_tool("gcp-storage-emulator"),
        "start",
        "--host",
        host,
        "--port",
        str(port),
        "--in-memory",
    ]
    return _start("gcs", argv, [port], {"STORAGE_EMULATOR_HOST": f"http://{host}:{port}"}, host=host)


def pubsub_unavailable_reason() -> str | None:
    if not PUBSUB_EMULATOR.exists():
        return f"Google's Pub/Sub emulator is not on this machine ({PUBSUB_EMULATOR} missing; it is not on PyPI or npm)"
    if shutil.which("java") is None:
        return "Google's Pub/Sub emulator needs Java, which is not installed"
    return None


def start_pubsub() -> Emulator:
    reason = pubsub_unavailable_reason()
    if reason is not None:
        raise EmulatorUnavailable(reason)
    port = free_port()
    argv = [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={port}"]
    return _start("pubsub", argv, [port], {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}"}, timeout=90)
