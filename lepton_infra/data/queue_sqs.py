"""SQS through boto3. Dead-lettering after `maxReceiveCount` is SQS's own redrive policy (the queue
component sets it); `dead_letter(msg, reason)` sends to the same dead-letter queue with the reason as
a message attribute, then deletes the original."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

_SQS_MAX_WAIT_S = 20  # the longest long-poll SQS allows
_SQS_MAX_BATCH = 10


class SqsQueue(Queue):
    def __init__(self, url: str, *, region: str | None = None) -> None:
        import boto3

        self.url = url
        session = boto3.Session()
        if session.get_credentials() is None:
            raise ConfigError(
                f"queue {url!r}: no AWS credentials found (environment, profile or instance profile)"
            )
        region = region or session.region_name or _region_of(url)
        self._sqs: Any = session.client("sqs", region_name=region)
        self._dlq_url: str | None = None
        self._max: int | None = None

    def _attributes(self) -> dict[str, str]:
        try:
            got: dict[str, str] = self._sqs.get_queue_attributes(
                QueueUrl=self.url, AttributeNames=["RedrivePolicy"]
            )["Attributes"]
        except Exception as exc:
            raise ConfigError(f"queue {self.url!r} cannot be used: {_short(exc)}") from exc
        return got

    def _redrive(self) -> None:
        import json

        policy = self._attributes().get("RedrivePolicy")
        if not policy:
            raise ConfigError(
                f"queue {self.url!r} has no redrive policy (dead-letter queue); the JobQueue component creates one"
            )
        parsed = json.loads(policy)
        self._max = int(parsed.get("maxReceiveCount", DEFAULT_MAX_RECEIVE_COUNT))
        dlq_name = str(parsed["deadLetterTargetArn"]).rsplit(":", 1)[-1]
        self._dlq_url = self._sqs.get_queue_url(QueueName=dlq_name)["QueueUrl"]

    @property
    def max_receive_count(self) -> int:  # type: ignore[override]
        if self._max is None:
            self._redrive()
        assert self._max is not None
        return self._max

    @property
    def dead_letter_url(self) -> str:
        if self._dlq_url is None:
            self._redrive()
        assert self._dlq_url is not None
        return self._dlq_url

    def check(self) -> None:
        self._redrive()

    def send(self, body: str) -> str:
        return str(
            self._call("send", self._sqs.send_message, QueueUrl=self.url, MessageBody=body)["MessageId"]
        )

    def receive(
        self, max_messages: int = 1, visibility_timeout_s: int = 30, wait_s: float = 0
    ) -> list[Message]:
        got = self._call(
            "receive",
            self._sqs.receive_message,
            QueueUrl=self.url,
            MaxNumberOfMessages=min(max_messages, _SQS_MAX_BATCH),
            VisibilityTimeout=int(visibility_timeout_s),
            WaitTimeSeconds=min(int(wait_s), _SQS_MAX_WAIT_S),
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            Message(
                m["MessageId"],
                m["Body"],
                m["ReceiptHandle"],
                int(m["Attributes"].get("ApproximateReceiveCount", 1)),
            )
            for m in got.get("Messages", [])
        ]

    def extend(self, message: Message, visibility_timeout_s: int) -> None:
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=message.receipt, VisibilityTimeout=int(visibility_timeout_s)
            )
        except Exception as exc:
            raise MessageLost(
                f"queue {self.url!r}: message {message.id} is no longer ours: {_short(exc)}"
            ) from exc

    def release(self, message: Message) -> None:
        try:
            self.extend(message, 0)
        except MessageLost:
            pass

    def ack(self, message: Message) -> None:
        self._call("ack", self._sqs.delete_message, QueueUrl=self.url, ReceiptHandle=message.receipt)

    def dead_letter(self, message: Message, reason: str) -> None:
        self._call(
            "dead-letter",
            self._sqs.send_message,
            QueueUrl=self.dead_letter_url,
            MessageBody=message.body,
            MessageAttributes={REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:1000]}},
        )
        self.ack(message)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        # Peek: receive with a zero visibility timeout, so the messages stay where they are. SQS
        # samples servers, so ask until a poll adds nothing new.
        seen: dict[str, DeadLetter] = {}
        for _ in range(10):
            got = self._call(
                "read dead letters",
                self._sqs.receive_message,
                QueueUrl=self.dead_letter_url,
                MaxNumberOfMessages=_SQS_MAX_BATCH,
                VisibilityTimeout=0,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            fresh = [m for m in got if m["MessageId"] not in seen]
            for m in fresh:
                seen[m["MessageId"]] = self._letter(m)
            if not fresh or len(seen) >= limit:
                break
        return list(seen.values())[:limit]

    def _letter(self, m: dict[str, Any]) -> DeadLetter:
        attr = m.get("MessageAttributes", {}).get(REASON_ATTRIBUTE)
        reason = attr["StringValue"] if attr else dead_letter_reason_after(self.max_receive_count)
        return DeadLetter(m["MessageId"], m["Body"], reason)

    def drain_dead_letters(self, keep: Callable[[list[DeadLetter]], None], max_messages: int = 10_000) -> int:
        drained = 0
        while drained < max_messages:
            got = self._call(
                "drain dead letters",
                self._sqs.receive_message,
                QueueUrl=self.dead_letter_url,
                MaxNumberOfMessages=_SQS_MAX_BATCH,
                VisibilityTimeout=60,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                break
            keep([self._letter(m) for m in got])
            self._call(
                "delete dead letters",
                self._sqs.delete_message_batch,
                QueueUrl=self.dead_letter_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
            )
            drained += len(got)
        return drained

    def purge_dead_letters(self) -> int:
        count = len(self.dead_letters())
        self._call("purge", self._sqs.purge_queue, QueueUrl=self.dead_letter_url)
        return count

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if "NonExistentQueue" in str(exc) or "does not exist" in str(exc):
                raise ConfigError(f"queue {self.url!r} does not exist ({_short(exc)})") from exc
            raise QueueError(f"queue {self.url!r}: {what} failed: {_short(exc)}") from exc


def _region_of(url: str) -> str:
    # https://sqs.eu-west-1.amazonaws.com/123/name -> eu-west-1
    host = url.split("/")[2] if url.count("/") >= 2 else ""
    parts = host.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "sqs" else "us-east-1"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]
