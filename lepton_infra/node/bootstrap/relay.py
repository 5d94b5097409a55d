"""The relayed ship: the controller sends each distinct blob once, to node 0, and the other nodes
fetch what they lack from node 0 over the cluster's own network (`BlobServer` there, `fetch_blobs`
on each peer), so the controller's uplink carries the workload once, not once per node."""

from __future__ import annotations

import json
import os
import time

from .cache import HEX64, cache_dir
from .stream import BLOB_HEAD
from .tree import by_digest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .stream import Receiver

FETCH_TIMEOUT_S = 120.0  # a peer's fetch from node 0 with no byte for this long has failed
FETCH_IDLE_S = 60.0  # node 0's blob server ends after this long without a request


def fetch_blobs(receiver: Receiver, fetch: dict[str, Any]) -> None:
    """Pull this node's missing blobs from node 0 (its `serve`), over the cluster's own network."""
    import http.client

    conn = http.client.HTTPConnection(fetch["addr"], int(fetch["port"]), timeout=FETCH_TIMEOUT_S)
    try:
        body = json.dumps(fetch["digests"]).encode()
        conn.request("POST", "/blobs", body, {"X-Lepton-Token": fetch["token"]})
        response = conn.getresponse()
        if response.status != 200:
            raise ValueError(f"node 0 refused the blob fetch: HTTP {response.status}")
        receiver.take(response)  # type: ignore[arg-type]
    except OSError as exc:
        raise ValueError(f"cannot fetch blobs from {fetch['addr']}:{fetch['port']}: {exc}") from exc
    finally:
        conn.close()


class BlobServer:
    """Node 0's short-lived blob server for a relayed ship: stdlib HTTP on the cluster's private
    address, one POST /blobs per peer (the body lists digests; the answer is blob frames), a
    one-time token from the controller, gone after every peer fetched or FETCH_IDLE_S of silence.
    Serves from the cache, or from node 0's freshly written tree (the job has not started yet;
    the peer checks every hash anyway)."""

    def __init__(self, httpd: Any, peers: int, state: dict[str, float], lock: Any) -> None:
        self.httpd = httpd
        self.peers = peers
        self.state = state
        self.lock = lock

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @classmethod
    def start(cls, workload: str, manifest: dict[str, Any], serve: dict[str, Any]) -> BlobServer:
        import hmac
        import http.server
        import threading

        token = str(serve["token"])
        where = {d: os.path.join(workload, t[0][0]) for d, t in by_digest(manifest.get("files", {})).items()}
        lock = threading.Lock()
        state: dict[str, float] = {"done": 0, "last": time.monotonic()}

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                with lock:
                    state["last"] = time.monotonic()
                if not hmac.compare_digest(self.headers.get("X-Lepton-Token", ""), token):
                    self.send_error(403)
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    digests = json.loads(self.rfile.read(length))
                    paths = [(d, _blob_path(d, where)) for d in digests]
                except (ValueError, KeyError):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.end_headers()
                for digest, path in paths:
                    with open(path, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        self.wfile.write(BLOB_HEAD.pack(bytes.fromhex(digest), size))
                        if size:
                            self.connection.sendfile(f)
                self.wfile.write(BLOB_HEAD.pack(bytes(32), 0))
                with lock:
                    state["done"] += 1
                    state["last"] = time.monotonic()

        httpd = http.server.ThreadingHTTPServer((serve["addr"], 0), Handler)
        httpd.daemon_threads = True
        return cls(httpd, int(serve.get("peers", 1)), state, lock)

    def run(self) -> None:
        import threading

        thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            while True:
                time.sleep(0.05)
                with self.lock:
                    done = self.state["done"] >= self.peers
                    idle = time.monotonic() - self.state["last"] > FETCH_IDLE_S
                if done or idle:
                    break
        finally:
            self.httpd.shutdown()
            thread.join()
            self.httpd.server_close()


def _blob_path(digest: str, where: dict[str, str]) -> str:
    """Where to read a requested blob: the cache, else node 0's own tree; a bad name is refused."""
    if not HEX64.match(digest):
        raise ValueError(digest)
    cached_path = os.path.join(cache_dir(), digest)
    if os.path.isfile(cached_path):
        return cached_path
    return where[digest]
