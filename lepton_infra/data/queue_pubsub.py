"""Pub/Sub through google-cloud-pubsub. The URL is the pull subscription
(`projects/P/subscriptions/S`, what the JobQueue component outputs); messages are published to its
topic. Dead-lettering after `max_delivery_attempts` is the subscription's own dead-letter policy;
dead letters are read from a subscription on the dead-letter topic (the component creates one,
since Pub/Sub drops messages published to a topic nobody subscribes to).

Pub/Sub's ack deadline is at least 10 s and at most 600 s, so visibility timeouts are clamped to that.
`PUBSUB_EMULATOR_HOST` points the client at the emulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lepton_infra.data.queue_backend import (
    REASON_ATTRIBUTE,
    DeadLetter,
    Message,
    MessageLost,
    Queue,
    QueueError,
    dead_letter_reason_after,
)
from lepton_infra.data.urls import quiet_google_import
from lepton_infra.errors import ConfigError

_MIN_DEADLINE_S = 10
_MAX_DEADLINE_S = 600


def _deadline(seconds: int) -> int:
    return max(_MIN_DEADLINE_S, min(_MAX_DEADLINE_S, int(seconds)))


class PubSubQueue(Queue):
    def __init__(self, url: str) -> None:
        with quiet_google_import():
            from google.cloud import pubsub_v1

        parts = url.split("/")
        if len(parts) != 4 or parts[0] != "projects" or parts[2] != "subscriptions":
            raise ConfigError(f"queue {url!r}: Pub/Sub queues are projects/PROJECT/subscriptions/NAME")
        self.url = url
        try:
            self._sub: Any = pubsub_v1.SubscriberClient()
            self._pub: Any = pubsub_v1.PublisherClient()
        except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and kin
            raise ConfigError(f"queue {url!r}: no Google credentials: {_short(exc)}") from exc
        self._topic: str | None = None
        self._dead_topic: str | None = None
        self._dead_sub: str | None = None
        self._max = 0

    def _describe(self) -> None:
        try:
            sub = self._sub.get_subscription(request={"subscription": self.url}, timeout=30)
        except Exception as exc:
            raise ConfigError(f"queue {self.url!r} cannot be used: {_short(exc)}") from exc
        self._topic = sub.topic
        policy = sub.dead_letter_policy
        if not policy or not policy.dead_letter_topic:
            raise ConfigError(
                f"queue {self.url!r} has no dead-letter policy; the JobQueue component sets one"
            )
        self._dead_topic = policy.dead_letter_topic
        self._max = int(policy.max_delivery_attempts)
        subs = list(self._pub.list_topic_subscriptions(request={"topic": self._dead_topic}, timeout=30))
        if not subs:
            raise ConfigError(
                f"queue {self.url!r}: nothing subscribes to dead-letter topic {self._dead_topic!r}, so dead "
                "letters would be dropped"
            )
        self._dead_sub = subs[0]

    @property
    def max_receive_count(self) -> int:  # type: ignore[override]
        if self._topic is None:
            self._describe()
        return self._max

    def _ensure(self) -> tuple[str, str, str]:
        if self._topic is None:
            self._describe()
        assert self._topic and self._dead_topic and self._dead_sub
        return self._topic, self._dead_topic, self._dead_sub

    def check(self) -> None:
        self._describe()

    def send(self, body: str) -> str:
        topic, _, _ = self._ensure()
        try:
            return str(self._pub.publish(topic, body.encode()).result(timeout=60))
        except Exception as exc:
            raise QueueError(f"queue {self.url!r}: send failed: {_short(exc)}") from exc

    def _pull(self, subscription: str, max_messages: int, wait_s: float) -> list[Any]:
        from google.api_core.exceptions import DeadlineExceeded

        try:
            response = self._sub.pull(
                request={"subscription": subscription, "max_messages": max_messages},
                timeout=max(wait_s, 2.0),
                retry=None,
            )
        except DeadlineExceeded:
            return []
        except Exception as exc:
            raise QueueError(f"queue {self.url!r}: receive failed: {_short(exc)}") from exc
        return list(response.received_messages)

    def receive(
        self, max_messages: int = 1, visibility_timeout_s: int = 30, wait_s: float = 0
    ) -> list[Message]:
        self._ensure()
        received = self._pull(self.url, max_messages, wait_s)
        messages = [
            Message(r.message.message_id, r.message.data.decode(), r.ack_id, int(r.delivery_attempt or 1))
            for r in received
        ]
        if messages:
            self._modify([m.receipt for m in messages], _deadline(visibility_timeout_s))
        return messages

    def _modify(self, ack_ids: list[str], seconds: int, subscription: str | None = None) -> None:
        self._sub.modify_ack_deadline(
            request={
                "subscription": subscription or self.url,
                "ack_ids": ack_ids,
                "ack_deadline_seconds": seconds,
            }
        )

    def extend(self, message: Message, visibility_timeout_s: int) -> None:
        try:
            self._modify([message.receipt], _deadline(visibility_timeout_s))
        except Exception as exc:
            raise MessageLost(
                f"queue {self.url!r}: message {message.id} is no longer ours: {_short(exc)}"
            ) from exc

    def release(self, message: Message) -> None:
        try:
            self._modify([message.receipt], 0)
        except Exception:
            pass  # already redelivered elsewhere: nothing to give back

    def ack(self, message: Message) -> None:
        try:
            self._sub.acknowledge(request={"subscription": self.url, "ack_ids": [message.receipt]})
        except Exception as exc:
            raise QueueError(f"queue {self.url!r}: ack failed: {_short(exc)}") from exc

    def dead_letter(self, message: Message, reason: str) -> None:
        _, dead_topic, _ = self._ensure()
        try:
            self._pub.publish(dead_topic, message.body.encode(), **{REASON_ATTRIBUTE: reason[:1000]}).result(
                timeout=60
            )
        except Exception as exc:
            raise QueueError(f"queue {self.url!r}: dead-letter failed: {_short(exc)}") from exc
        self.ack(message)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        _, _, dead_sub = self._ensure()
        seen: dict[str, DeadLetter] = {}
        ack_ids: list[str] = []
        for _ in range(5):
            got = self._pull(dead_sub, min(limit, 100), 2.0)
            fresh = [r for r in got if r.message.message_id not in seen]
            for r in fresh:
                seen[r.message.message_id] = self._letter(r)
            ack_ids += [r.ack_id for r in got]
            if not fresh or len(seen) >= limit:
                break
        if ack_ids:  # peek only: hand them straight back
            self._modify(ack_ids, 0, dead_sub)
        return list(seen.values())[:limit]

    def _letter(self, received: Any) -> DeadLetter:
        attrs = dict(received.message.attributes)
        reason = attrs.get(REASON_ATTRIBUTE) or dead_letter_reason_after(
            attrs.get("CloudPubSubDeadLetterSourceDeliveryCount", self._max)
        )
        return DeadLetter(received.message.message_id, received.message.data.decode(), reason)

    def drain_dead_letters(self, keep: Callable[[list[DeadLetter]], None], max_messages: int = 10_000) -> int:
        _, _, dead_sub = self._ensure()
        drained = 0
        while drained < max_messages and (got := self._pull(dead_sub, 100, 1.0)):
            self._modify([r.ack_id for r in got], 60, dead_sub)
            keep([self._letter(r) for r in got])
            self._sub.acknowledge(request={"subscription": dead_sub, "ack_ids": [r.ack_id for r in got]})
            drained += len(got)
        return drained

    def purge_dead_letters(self) -> int:
        _, _, dead_sub = self._ensure()
        count = 0
        while got := self._pull(dead_sub, 100, 2.0):
            self._sub.acknowledge(request={"subscription": dead_sub, "ack_ids": [r.ack_id for r in got]})
            count += len(got)
        return count


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]
