"""Deadlines for SSH operations. paramiko waits without one in places (a channel request, an exit
status, an SFTP reply), so a node whose sshd is frozen would block the controller for good: one
watchdog thread calls an expired operation's `on_expire` (which closes that node's connection,
waking every such wait)."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable


class Watchdog:
    """One daemon thread for every connection: an operation arms a deadline and disarms it when
    done; an operation still running at its deadline gets its `on_expire` called (which closes
    that node's connection, waking whatever paramiko wait is stuck)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Callable[[], None]]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, on_expire: Callable[[], None]) -> int:
        with self._cond:
            token = next(self._ids)
            self._armed[token] = (time.monotonic() + seconds, on_expire)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lepton-ssh-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [t for t, (when, _) in self._armed.items() if when <= now]
                expired = [self._armed.pop(t)[1] for t in due]
                if not expired:
                    nearest = min((when for when, _ in self._armed.values()), default=now + 60.0)
                    self._cond.wait(max(0.01, nearest - now))
                    continue
            for callback in expired:
                with contextlib.suppress(Exception):  # a callback must not kill the watchdog
                    callback()


WATCHDOG = Watchdog()
