"""A user-space TCP proxy standing for a bad network link to one node (this kernel has no netem,
and there is no iptables): point a node's `host`/`port` at it. While running it can be made
slow (`rate`: bytes per second from the node), stalled (`stall()`/`resume()`: nothing moves
either way, connections stay open, as behind a NAT that lost its state) or cut (`cut()`: every
connection closed, new ones refused until `resume()`)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType


class LinkProxy:
    CHUNK = 16 << 10

    def __init__(self, target: tuple[str, int], rate: float | None = None) -> None:
        self.target = target
        self.rate = rate  # bytes/s from the node to the controller; None: as fast as it goes
        self.bytes_from_node = 0
        self.bytes_to_node = 0
        self._open = threading.Event()  # set: traffic flows
        self._open.set()
        self._refusing = False
        self._closed = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_node: bool) -> None:
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                self._open.wait()
                if self._refusing:
                    break
                if from_node and self.rate:
                    time.sleep(len(data) / self.rate)
                    self._open.wait()
                dst.sendall(data)
                if from_node:
                    self.bytes_from_node += len(data)
                else:
                    self.bytes_to_node += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self._open.clear()

    def cut(self) -> None:
        self._refusing = True
        self._open.set()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def resume(self) -> None:
        self._refusing = False
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()

    def __enter__(self) -> LinkProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
