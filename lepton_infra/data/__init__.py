"""The data plane: object store and job queue clients over the clouds' services and local files."""

from lepton_infra.data.queue import DeadLetter, Message, MessageLost, Queue, QueueError, open_queue
from lepton_infra.data.store import ChecksumMismatch, NotCommitted, ObjectInfo, Store, StoreError, open_store

__all__ = [
    "ChecksumMismatch",
    "DeadLetter",
    "Message",
    "MessageLost",
    "NotCommitted",
    "ObjectInfo",
    "Queue",
    "QueueError",
    "Store",
    "StoreError",
    "open_queue",
    "open_store",
]
