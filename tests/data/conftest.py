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

        region = emulator.env["AWS_DEFAULT_REGION"]
        boto3.client("s3").create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )
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


MAX_RECEIVES = 5  # Pub/Sub accepts 5..100 delivery attempts; the same number for every backend


def make_queue(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    tmp_path: object,
    max_receives: int,
) -> str:
    """A fresh queue with a dead-letter queue on backend `kind`, provisioned as the JobQueue
    components do (redrive policy, dead-letter policy, poison-queue metadata); returns its URL."""
    name = unique("lepton-jobs-")
    if kind == "local":
        from lepton_infra.data.queue_local import create_local_queue

        return create_local_queue(tmp_path / "queue.db", max_receive_count=max_receives)  # type: ignore[operator]
    if kind == "sqs":
        import json

        import boto3

        use_env(monkeypatch, request.getfixturevalue("moto_emulator"))
        sqs = boto3.client("sqs")
        dlq = sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
        return str(sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})["QueueUrl"])
    if kind == "pubsub":
        from google.cloud import pubsub_v1

        use_env(monkeypatch, request.getfixturevalue("pubsub_emulator"))
        pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        project = "lepton-test"
        topic, dead = f"projects/{project}/topics/{name}", f"projects/{project}/topics/{name}-dead"
        pub.create_topic(name=topic)
        pub.create_topic(name=dead)
        sub.create_subscription(
            request={"name": f"projects/{project}/subscriptions/{name}-dead", "topic": dead}
        )
        url = f"projects/{project}/subscriptions/{name}"
        sub.create_subscription(
            request={
                "name": url,
                "topic": topic,
                "ack_deadline_seconds": 10,
                "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": max_receives},
            }
        )
        return url
    if kind == "azure":
        from azure.storage.queue import QueueServiceClient

        emulator = request.getfixturevalue("azurite_emulator")
        use_env(monkeypatch, emulator)
        service = QueueServiceClient.from_connection_string(emulator.env["AZURE_STORAGE_CONNECTION_STRING"])
        service.create_queue(name + "-poison")
        service.create_queue(
            name,
            metadata={"lepton_max_receive_count": str(max_receives), "lepton_poison_queue": name + "-poison"},
        )
        endpoint = [
            p
            for p in emulator.env["AZURE_STORAGE_CONNECTION_STRING"].split(";")
            if p.startswith("QueueEndpoint=")
        ]
        return endpoint[0].split("=", 1)[1].rstrip("/") + "/" + name
    raise AssertionError(kind)


@pytest.fixture(params=QUEUE_BACKENDS)
def queue_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> str:
    return make_queue(request, monkeypatch, request.param, tmp_path, MAX_RECEIVES)


@pytest.fixture
def queue_of(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> object:
    """`queue_of(kind, max_receives)`: a fresh queue on backend `kind` (tests that pick their backends)."""
    return lambda kind, max_receives=MAX_RECEIVES: make_queue(
        request, monkeypatch, kind, tmp_path, max_receives
    )
