"""Emulator fixtures for the data plane's contract tests. Each emulator is one real server process on
a free loopback port, started once per session and stopped at its end; each test gets a fresh
bucket (or queue) and the environment that points the production clients at the emulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lepton_infra.data import emulators
from lepton_infra.data.emulators import Emulator, EmulatorUnavailable

STORE_BACKENDS = ["file", "s3", "gs", "az"]
QUEUE_BACKENDS = ["local", "sqs", "pubsub", "azure"]


def _session_emulator(start: object) -> Iterator[Emulator]:
    try:
        emulator = start()  # type: ignore[operator]
    except EmulatorUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def moto_emulator() -> Iterator[Emulator]:
    yield from _session_emulator(emulators.start_moto)


@pytest.fixture(scope="session")
def azurite_emulator() -> Iterator[Emulator]:
    yield from _session_emulator(emulators.start_azurite)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Emulator]:
    yield from _session_emulator(emulators.start_gcs)


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[Emulator]:
    yield from _session_emulator(emulators.start_pubsub)


def unique(stem: str) -> str:
    return f"{stem}{uuid.uuid4().hex[:10]}"


def use_env(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    for key, value in emulator.env.items():
        monkeypatch.setenv(key, value)


def make_bucket(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, kind: str, tmp_path: object
) -> str:
    """A fresh, empty bucket on backend `kind`; returns its store URL (with a prefix)."""
    if kind == "file":
        root = tmp_path / "store"  # type: ignore[operator]
        root.mkdir()
        return f"file://{root}"
    bucket = unique("lepton-test-")
    if kind == "s3":
        emulator = request.getfixturevalue("moto_emulator")
        use_env(monkeypatch, emulator)
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        return f"s3://{bucket}/prefix"
    if kind == "gs":
        emulator = request.getfixturevalue("gcs_emulator")
        use_env(monkeypatch, emulator)
        from lepton_infra.data.store_gcs import gcs_client

        gcs_client("gs://").create_bucket(bucket)
        return f"gs://{bucket}/prefix"
    if kind == "az":
        emulator = request.getfixturevalue("azurite_emulator")
        use_env(monkeypatch, emulator)
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(
            emulator.env["AZURE_STORAGE_CONNECTION_STRING"]
        ).create_container(bucket)
        return f"az://{emulators.AZURITE_ACCOUNT}/{bucket}/prefix"
    raise AssertionError(kind)


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> str:
    return make_bucket(request, monkeypatch, request.param, tmp_path)
