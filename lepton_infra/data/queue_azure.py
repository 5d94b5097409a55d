"""Azure Storage Queues through azure-storage-queue. Azure has no server-side redrive, so this client
keeps the poison-queue convention: the queue's metadata (set by the JobQueue component) names
`lepton_max_receive_count` and `lepton_poison_queue`; a message dequeued more often than that is
moved to the poison queue (as JSON with its reason) instead of being returned.

Credentials: `AZURE_STORAGE_CONNECTION_STRING` (account key; Azurite's form), else
`AZURE_STORAGE_ACCOUNT_KEY`, else the VM's managed identity (azure-identity)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from lepton_infra.data.queue_backend import (
    DEFAULT_MAX_RECEIVE_COUNT,
    DeadLetter,
    Message,
    MessageLost,
    Queue,
    QueueError,
    dead_letter_reason_after,
)
from lepton_infra.data.urls import azure_connection_settings
from lepton_infra.errors import ConfigError

POISON_SUFFIX = "-poison"
_POLL_S = 0.5
_AZURE_MAX_BATCH = 32


def _client(url: str, queue_name: str) -> Any:
    from azure.storage.queue import QueueClient

    settings = azure_connection_settings()
    endpoint = settings.get("QueueEndpoint", "").rstrip("/")
    if endpoint and url.startswith(endpoint + "/"):
        return QueueClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"], queue_name)
    account = (urlsplit(url).hostname or "").split(".")[0]
    base = url.rsplit("/", 1)[0]
    if settings.get("AccountName") == account and settings.get("AccountKey"):
        credential: Any = {"account_name": account, "account_key": settings["AccountKey"]}
    elif os.environ.get("AZURE_STORAGE_ACCOUNT_KEY"):
        credential = {"account_name": account, "account_key": os.environ["AZURE_STORAGE_ACCOUNT_KEY"]}
    else:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError as exc:
            raise ConfigError(
                f"queue {url!r}: no account key in the environment and azure-identity is not installed "
                "for the managed identity"
            ) from exc
        credential = DefaultAzureCredential()
    return QueueClient(base, queue_name, credential=credential)


class AzureQueue(Queue):
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.name = self.url.rsplit("/", 1)[-1]
        self._queue = _client(self.url, self.name)
        self._poison: Any = None
        self._max: int | None = None

    def _describe(self) -> None:
        try:
            meta = dict(self._queue.get_queue_properties().metadata or {})
        except Exception as exc:
            raise ConfigError(f"queue {self.url!r} cannot be used: {_short(exc)}") from exc
        self._max = int(meta.get("lepton_max_receive_count", DEFAULT_MAX_RECEIVE_COUNT))
        poison_name = meta.get("lepton_poison_queue") or self.name + POISON_SUFFIX
        self._poison = _client(self.url.rsplit("/", 1)[0] + "/" + poison_name, poison_name)

    @property
    def max_receive_count(self) -> int:  # type: ignore[override]
        if self._max is None:
            self._describe()
        assert self._max is not None
        return self._max

    @property
    def poison(self) -> Any:
        if self._poison is None:
            self._describe()
        return self._poison

    def check(self) -> None:
        self._describe()
        try:
            self._poison.get_queue_properties()
        except Exception as exc:
            raise ConfigError(f"queue {self.url!r}: its poison queue cannot be used: {_short(exc)}") from exc

    def send(self, body: str) -> str:
        try:
            return str(self._queue.send_message(body).id)
        except Exception as exc:
            raise QueueError(f"queue {self.url!r}: send failed: {_short(exc)}") from exc

    def receive(
        self, max_messages: int = 1, visibility_timeout_s: int = 30, wait_s: float = 0
    ) -> list[Message]:
        limit = self.max_receive_count
        deadline = time.monotonic() + wait_s
        while True:
            taken: list[Message] = []
            try:
                batch = self._queue.receive_messages(
                    messages_per_page=min(max_messages, _AZURE_MAX_BATCH),
                    visibility_timeout=int(visibility_timeout_s),
                    max_messages=max_messages,
                )
                for item in batch:
                    message = Message(item.id, item.content, item.pop_receipt, int(item.dequeue_count))
                    if message.receive_count > limit:
                        self.dead_letter(message, dead_letter_reason_after(message.receive_count - 1))
                        continue
                    taken.append(message)
            except Exception as exc:
                raise QueueError(f"queue {self.url!r}: receive failed: {_short(exc)}") from exc
            if taken or time.monotonic() >= deadline:
                return taken
            time.sleep(_POLL_S)

    def extend(self, message: Message, visibility_timeout_s: int) -> None:
        try:
            updated = self._queue.update_message(
                message.id, message.receipt, visibility_timeout=int(visibility_timeout_s)
            )
        except Exception as exc:
            raise MessageLost(
                f"queue {self.url!r}: message {message.id} is no longer ours: {_short(exc)}"
            ) from exc
        message.receipt = updated.pop_receipt  # Azure issues a new receipt on every update

    def release(self, message: Message) -> None:
        try:
            self.extend(message, 0)
        except MessageLost:
            pass

    def ack(self, message: Message) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._queue.delete_message(message.id, message.receipt)
        except ResourceNotFoundError:
            pass  # already gone, or redelivered to someone else who will ack it
        except Exception as exc:
            raise QueueError(f"queue {self.url!r}: ack failed: {_short(exc)}") from exc

    def dead_letter(self, message: Message, reason: str) -> None:
        envelope = json.dumps({"id": message.id, "body": message.body, "reason": reason})
        try:
            self.poison.send_message(envelope)
        except Exception as exc:
            raise QueueError(f"queue {self.url!r}: dead-letter failed: {_short(exc)}") from exc
        self.ack(message)

    @staticmethod
    def _letter(item: Any) -> DeadLetter:
        try:
            env = json.loads(item.content)
            return DeadLetter(str(env.get("id", item.id)), str(env["body"]), str(env["reason"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return DeadLetter(item.id, str(item.content), "put on the poison queue by another client")

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [self._letter(i) for i in self.poison.peek_messages(max_messages=min(limit, _AZURE_MAX_BATCH))]

    def drain_dead_letters(self, keep: Callable[[list[DeadLetter]], None], max_messages: int = 10_000) -> int:
        drained = 0
        while drained < max_messages:
            try:
                batch = list(
                    self.poison.receive_messages(
                        messages_per_page=_AZURE_MAX_BATCH,
                        visibility_timeout=60,
                        max_messages=_AZURE_MAX_BATCH,
                    )
                )
            except Exception as exc:
                raise QueueError(f"queue {self.url!r}: draining dead letters failed: {_short(exc)}") from exc
            if not batch:
                break
            keep([self._letter(item) for item in batch])
            for item in batch:
                self.poison.delete_message(item.id, item.pop_receipt)
            drained += len(batch)
        return drained

    def purge_dead_letters(self) -> int:
        count = len(self.dead_letters())
        self.poison.clear_messages()
        return count


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]
