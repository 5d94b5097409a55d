"""Job queue client: one interface over SQS, Pub/Sub, Azure Storage Queues and a local SQLite file.

At-least-once delivery with a visibility timeout: a received message is hidden from other consumers
until it is acked or its timeout runs out, when it is delivered again. A consumer working longer
extends the timeout. A message received more than `max_receive_count` times goes to the dead-letter
queue (SQS and Pub/Sub do that themselves; for Azure and the local queue this client does it), and
`dead_letter(msg, reason)` puts a message there at once, with its reason (a message no worker can
ever run, such as one that is not JSON)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from lepton_infra.data.queue_backend import (
    DEFAULT_MAX_RECEIVE_COUNT,
    REASON_ATTRIBUTE,
    DeadLetter,
    Message,
    MessageLost,
    Queue,
    QueueError,
    dead_letter_reason_after,
)
from lepton_infra.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_RECEIVE_COUNT",
    "REASON_ATTRIBUTE",
    "DeadLetter",
    "Message",
    "MessageLost",
    "Queue",
    "QueueError",
    "dead_letter_reason_after",
    "open_queue",
]


def open_queue(url: str, *, region: str | None = None) -> Queue:
    """Open a queue URL: `sqlite:///path.db` (local), `projects/P/subscriptions/S` (Pub/Sub),
    `https://ACCOUNT.queue.core.windows.net/Q` (Azure) or an SQS queue URL. `region`: the queue's
    (an inventory's `region`); for SQS it wins over this machine's profile."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"queue URL {url!r} is empty")
    if url.startswith("sqlite://"):
        from lepton_infra.data.queue_local import LocalQueue

        return LocalQueue(url)
    if url.startswith("projects/"):
        from lepton_infra.data.queue_pubsub import PubSubQueue

        return PubSubQueue(url)
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if host.endswith(".queue.core.windows.net") or _under(url, _azure_queue_endpoint()):
            from lepton_infra.data.queue_azure import AzureQueue

            return AzureQueue(url)
        sqs_endpoint = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")
        if host.startswith("sqs.") or ".sqs." in host or _under(url, sqs_endpoint):
            from lepton_infra.data.queue_sqs import SqsQueue

            return SqsQueue(url, region=region)
    raise ConfigError(
        f"queue URL {url!r} is not one this client knows: use sqlite:///path.db (local), an SQS queue "
        "URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), projects/P/subscriptions/S (Pub/Sub) or "
        "https://ACCOUNT.queue.core.windows.net/QUEUE (Azure)"
    )


def _under(url: str, endpoint: str | None) -> bool:
    return bool(endpoint) and url.startswith(str(endpoint).rstrip("/") + "/")


def _azure_queue_endpoint() -> str | None:
    from lepton_infra.data.urls import azure_connection_settings

    return azure_connection_settings().get("QueueEndpoint")
