"""What every queue backend implements (the `Queue` interface), with its messages and errors.

The backends (queue_local, queue_sqs, queue_pubsub, queue_azure) import this module and nothing from
`queue.py`, whose `open_queue` imports them on demand: no module imports its own importer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from lepton_infra.errors import LeptonError

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
