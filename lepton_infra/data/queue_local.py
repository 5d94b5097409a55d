"""The local pool's queue: one SQLite file, safe across processes (every receive is one IMMEDIATE
transaction, so two workers never take the same message), standard library only.

URL: `sqlite:///absolute/path/queue.db`. `create_local_queue` makes the file; opening a URL whose
file does not exist is an error rather than silently creating an empty queue."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lepton_infra.data.queue_backend import (
    DEFAULT_MAX_RECEIVE_COUNT,
    DeadLetter,
    Message,
    MessageLost,
    Queue,
    dead_letter_reason_after,
)
from lepton_infra.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    body TEXT NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""
_POLL_S = 0.2


def _path_of(url: str) -> Path:
    rest = url[len("sqlite://") :]
    if not rest.startswith("/"):
        raise ConfigError(f"queue URL {url!r}: local queues are sqlite:///ABSOLUTE/PATH.db")
    return Path(rest)


def create_local_queue(
    path: Path, *, max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT, visibility_timeout_s: int = 60
) -> str:
    """Create (or keep) the queue file at `path`; returns its URL."""
    if max_receive_count < 1:
        raise ConfigError(f"max_receive_count is {max_receive_count}; it must be at least 1")
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=30, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [
                ("max_receive_count", str(max_receive_count)),
                ("visibility_timeout_s", str(visibility_timeout_s)),
            ],
        )
    return f"sqlite://{path}"


class LocalQueue(Queue):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = _path_of(url)
        self._max: int | None = None

    @property
    def max_receive_count(self) -> int:  # type: ignore[override]
        if self._max is None:
            with self._db() as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'max_receive_count'").fetchone()
            self._max = int(row[0]) if row else DEFAULT_MAX_RECEIVE_COUNT
        return self._max

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=30, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise ConfigError(
                f"queue {self.url!r}: cannot open {str(self.path)!r} ({exc}); local queues are created by "
                "`lepton-infra local up`"
            ) from exc
        try:
            yield db
        finally:
            db.close()

    def check(self) -> None:
        with self._db() as db:
            try:
                db.execute("SELECT count(*) FROM messages").fetchone()
            except sqlite3.DatabaseError as exc:
                raise ConfigError(
                    f"queue {self.url!r}: {str(self.path)!r} is not a lepton queue ({exc})"
                ) from exc

    def send(self, body: str) -> str:
        message_id = uuid.uuid4().hex
        with self._db() as db:
            db.execute(
                "INSERT INTO messages (id, body, visible_at) VALUES (?, ?, ?)",
                (message_id, body, time.time()),
            )
        return message_id

    def receive(
        self, max_messages: int = 1, visibility_timeout_s: int = 30, wait_s: float = 0
    ) -> list[Message]:
        deadline = time.monotonic() + wait_s
        limit = self.max_receive_count
        while True:
            taken: list[Message] = []
            with self._db() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    now = time.time()
                    rows = db.execute(
                        "SELECT id, body, receive_count FROM messages WHERE visible_at <= ? ORDER BY seq LIMIT ?",
                        (now, max_messages),
                    ).fetchall()
                    for message_id, body, count in rows:
                        count += 1
                        if count > limit:
                            self._move_dead(db, message_id, body, dead_letter_reason_after(count - 1))
                            continue
                        receipt = uuid.uuid4().hex
                        db.execute(
                            "UPDATE messages SET visible_at = ?, receive_count = ?, receipt = ? WHERE id = ?",
                            (now + visibility_timeout_s, count, receipt, message_id),
                        )
                        taken.append(Message(message_id, body, receipt, count))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            if taken or time.monotonic() >= deadline:
                return taken
            time.sleep(_POLL_S)

    @staticmethod
    def _move_dead(db: sqlite3.Connection, message_id: str, body: str, reason: str) -> None:
        db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        db.execute(
            "INSERT INTO dead (id, body, reason, at) VALUES (?, ?, ?, ?)",
            (message_id, body, reason, time.time()),
        )

    def _update_current(self, message: Message, sql: str, args: tuple[object, ...]) -> bool:
        with self._db() as db:
            cursor = db.execute(sql + " WHERE id = ? AND receipt = ?", (*args, message.id, message.receipt))
            return cursor.rowcount == 1

    def extend(self, message: Message, visibility_timeout_s: int) -> None:
        if not self._update_current(
            message, "UPDATE messages SET visible_at = ?", (time.time() + visibility_timeout_s,)
        ):
            raise MessageLost(
                f"queue {self.url!r}: message {message.id} is no longer ours (redelivered or acked)"
            )

    def release(self, message: Message) -> None:
        self._update_current(message, "UPDATE messages SET visible_at = ?", (time.time(),))

    def ack(self, message: Message) -> None:
        with self._db() as db:
            db.execute("DELETE FROM messages WHERE id = ? AND receipt = ?", (message.id, message.receipt))

    def dead_letter(self, message: Message, reason: str) -> None:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT body FROM messages WHERE id = ? AND receipt = ?", (message.id, message.receipt)
            ).fetchone()
            if row is not None:
                self._move_dead(db, message.id, row[0], reason)
            db.execute("COMMIT")

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._db() as db:
            rows = db.execute("SELECT id, body, reason FROM dead ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def drain_dead_letters(self, keep: Callable[[list[DeadLetter]], None], max_messages: int = 10_000) -> int:
        drained = 0
        while drained < max_messages:
            with self._db() as db:
                rows = db.execute(
                    "SELECT seq, id, body, reason FROM dead ORDER BY seq LIMIT ?",
                    (min(500, max_messages - drained),),
                ).fetchall()
            if not rows:
                break
            keep([DeadLetter(*row[1:]) for row in rows])
            with self._db() as db:
                db.execute("DELETE FROM dead WHERE seq BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))
            drained += len(rows)
        return drained

    def purge_dead_letters(self) -> int:
        with self._db() as db:
            return db.execute("DELETE FROM dead").rowcount

    def pending(self) -> int:
        """Messages not yet acked (visible or in flight)."""
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
