"""Job queue client: one interface over SQS, Pub/Sub, Azure Storage Queues and a local SQLite file.

At-least-once delivery with a visibility timeout: a received message is hidden from other consumers
until it is acked or its timeout runs out, when it is delivered again. A consumer working longer
extends the timeout. A message received more than `max_receive_count` times goes to the dead-letter
queue (SQS and Pub/Sub do that themselves; for Azure and the local queue this client does it), and
`dead_letter(msg, reason)` puts a message there at once, with its reason (a message no worker can
ever run, such as one that is not JSON)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from lepton_infra.errors import ConfigError, LeptonError

DEFAULT_MAX_RECEIVE_COUNT = 5
REASON_ATTRIBUTE = "lepton_reason"


class QueueError(LeptonError):
    """The queue service refused or failed an operation (exit 3: infrastructure)."""

    exit_code = 3


class MessageLost(QueueError):
    """The message's visibility ran out and it was (or may have been) handed to another consumer."""


@dataclass
class Message:
    """A received message. `receipt` identifies this delivery (it changes on every receive, and on
    Azure on every extend); `receive_count` counts deliveries, this one included."""

    id: str
    body: str
    receipt: str
    receive_count: int


@dataclass(frozen=True)
class DeadLetter:
    id: str
    body: str
    reason: str


class Queue(ABC):
    url: str
    max_receive_count: int

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @abstractmethod
    def check(self) -> None:
        """Fail with a ConfigError naming the URL if the queue is missing or not ours to use."""

    @abstractmethod
    def send(self, body: str) -> str:
        """Enqueue `body`; returns the message id."""

    @abstractmethod
    def receive(
        self, max_messages: int = 1, visibility_timeout_s: int = 30, wait_s: float = 0
    ) -> list[Message]:
        """Up to `max_messages` messages, each hidden from others for `visibility_timeout_s`.
        Waits up to `wait_s` seconds for one to arrive."""

    @abstractmethod
    def extend(self, message: Message, visibility_timeout_s: int) -> None:
        """Keep `message` hidden for another `visibility_timeout_s` seconds from now."""

    @abstractmethod
    def release(self, message: Message) -> None:
        """Make `message` visible again now (another try, counted as a receive)."""

    @abstractmethod
    def ack(self, message: Message) -> None:
        """Delete `message`: it was handled."""

    @abstractmethod
    def dead_letter(self, message: Message, reason: str) -> None:
        """Move `message` to the dead-letter queue now, with `reason`."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages in the dead-letter queue, without consuming them."""

    @abstractmethod
    def drain_dead_letters(self, keep: Callable[[list[DeadLetter]], None], max_messages: int = 10_000) -> int:
        """Take dead letters out of the dead-letter queue a batch at a time, each batch removed only
        after `keep(batch)` returned (it archives them; a crash in between archives them twice,
        never loses one).
        Reads every page, so what a caller learns does not depend on how many letters wait there.
        Returns how many were drained."""

    @abstractmethod
    def purge_dead_letters(self) -> int:
        """Drop everything in the dead-letter queue (tests, a fresh sweep); returns how many."""


def dead_letter_reason_after(receives: int | str) -> str:
    return f"received {receives} times without being acked (max_receive_count reached)"


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
