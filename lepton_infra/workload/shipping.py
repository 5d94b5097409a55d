"""Getting a workload onto the nodes, sending each missing blob from the controller once.

Direct: one stream per node over its SSH connection (the manifest, then the blobs that node's
cache lacks). Relayed (two or more nodes, and the nodes other than node 0 lack 1 MB or more): the
controller streams to node 0 only; node 0 answers with the port of a short-lived blob server on
its private address (stdlib HTTP, a one-time token the controller passed on stdin), and every
other node gets only the manifest plus "fetch your missing blobs from node 0". A laptop on a home
uplink then sends the tree once, not once per node; the nodes copy it over the cluster's own
network. A node whose fetch fails is sent its blobs directly instead, so the relay can only make a
ship faster, never make it fail."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from lepton_infra.errors import LeptonError, NodeError
from lepton_infra.workload.manifest import Manifest
from lepton_infra.workload.ship_stream import write_stream
from lepton_infra.workload.ssh import NodeConnection, parallel

RELAY_MIN_NODES = 2
# Below this many bytes for the other nodes together, each node is sent its blobs directly: a few
# hundred KB more from the controller, against a serial hop (node 0 receives and starts its server
# before the peers fetch) that made an edit-run loop's one-file ship ~0.24 s on 2 nodes.
RELAY_MIN_BYTES = 1 << 20


class ShipTarget(Protocol):
    """What shipping reads and fills in for one node (the runner's per-node bookkeeping)."""

    conn: NodeConnection
    rank: int
    run_dir: str
    missing: list[str]
    bytes_shipped: int
    files_shipped: int


def sizes_of(manifest: Manifest, digests: Sequence[str], agent_digest: str) -> int:
    sizes = manifest.blobs()
    return sum(sizes.get(d, 0) for d in digests if d != agent_digest)


@dataclass
class ShipStats:
    """What a ship moved: workload content the nodes lacked (all nodes together), bytes the
    controller put on the wire (framing and manifests included), bytes nodes fetched from node 0
    instead; `relayed_to` names the nodes that did, `fallbacks` those sent directly after all."""

    content_bytes: int = 0
    controller_bytes: int = 0
    relayed_bytes: int = 0
    relayed_to: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()


def ship(
    targets: Sequence[ShipTarget],
    manifest: Manifest,
    *,
    python: str,
    bootstrap_cmd: Any,
    agent_source: bytes,
    agent_digest: str,
    relay: bool = True,
    done: frozenset[str] = frozenset(),
) -> ShipStats:
    """Send every node what it lacks (after `prepare` filled each target's `missing`); nodes named
    in `done` already have their tree (prepare wrote it) and get nothing, unless node 0 must serve.
    `bootstrap_cmd(python, *args)` builds the node-side command. Raises the first node's error."""
    try:
        return _ship(targets, manifest, python, bootstrap_cmd, agent_source, agent_digest, relay, done)
    finally:
        manifest.kept.drop()


def _ship(
    targets: Sequence[ShipTarget],
    manifest: Manifest,
    python: str,
    bootstrap_cmd: Any,
    agent_source: bytes,
    agent_digest: str,
    relay: bool,
    done: frozenset[str],
) -> ShipStats:
    pending = manifest.pending
    pending_bytes = sum(manifest.files[rel].size for rel in pending)
    stats = ShipStats(
        content_bytes=sum(sizes_of(manifest, t.missing, agent_digest) + pending_bytes for t in targets)
    )
    lock = threading.Lock()
    # One view for every stream that starts now: a pending file one stream resolves stays
    # pending (sent again) in the others, which the node's manifest then still says.
    first_view = manifest.node_view()

    def upload(
        t: ShipTarget,
        missing: Sequence[str],
        extra: dict[str, Any] | None,
        view: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        view = first_view if view is None else view

        def produce(out: IO[bytes]) -> int:
            return write_stream(manifest, missing, agent_source, agent_digest, out, extra, view)

        cmd = bootstrap_cmd(python, "receive", t.run_dir)
        result, _content, wire = t.conn.run_upload(cmd, produce)
        with lock:
            stats.controller_bytes += wire
        answer = _answer(t.conn, result.stdout)
        sizes = manifest.blobs()
        t.bytes_shipped = sum(sizes.get(d, 0) for d in t.missing if d != agent_digest) + pending_bytes
        t.files_shipped = len([d for d in t.missing if d != agent_digest]) + len(pending)
        return answer

    for t in targets:
        if t.conn.name in done:
            t.bytes_shipped = t.files_shipped = 0
    head, peers = targets[0], list(targets[1:])
    fetching = [t for t in peers if t.missing or pending]
    peer_bytes = sum(sizes_of(manifest, t.missing, agent_digest) + pending_bytes for t in fetching)
    if not relay or len(targets) < RELAY_MIN_NODES or not fetching or peer_bytes < RELAY_MIN_BYTES:
        parallel([t for t in targets if t.conn.name not in done], lambda t: upload(t, t.missing, None))
        manifest.save_hashes()
        return stats

    addr = head.conn.node.private_ip
    token = secrets.token_hex(16)
    idle = [t for t in peers if not t.missing and not pending and t.conn.name not in done]
    serve = {"addr": addr, "token": token, "peers": len(fetching)}

    def lead() -> dict[str, Any]:
        if head.conn.name not in done:
            return upload(head, head.missing, {"serve": serve})
        # Node 0's tree is in place already (unchanged for it): only its server is needed.
        request = json.dumps({**manifest.node_view(), "agent": agent_digest, "serve": serve}).encode()
        result = head.conn.run(bootstrap_cmd(python, "serve", head.run_dir), stdin=request)
        with lock:
            stats.controller_bytes += len(request)
        return _answer(head.conn, result.stdout)

    # Node 0 and the nodes that lack nothing go at once; the others wait for node 0's server.
    first = parallel([None, *idle], lambda t: lead() if t is None else upload(t, [], None))
    port = (first[0].get("serve") or {}).get("port")
    if not port:
        raise NodeError(head.conn.name, f"node 0 started no blob server for the other nodes: {first[0]}")
    fallbacks: list[str] = []
    manifest.save_hashes()
    # Node 0's stream hashed the pending files: the peers fetch them by digest like any blob.
    resolved = {manifest.files[rel].sha256 for rel in pending}
    later_view = manifest.node_view()

    def fetch(t: ShipTarget) -> int:
        digests = sorted(set(t.missing) | resolved)
        extra = {"fetch": {"addr": addr, "port": int(port), "token": token, "digests": digests}}
        try:
            return int(upload(t, [], extra, later_view).get("relayed_bytes", 0))
        except LeptonError:
            fallbacks.append(t.conn.name)  # e.g. peers cannot reach node 0's private address
            upload(t, digests, None, later_view)
            return 0

    relayed = parallel(fetching, fetch)
    stats.relayed_bytes = sum(relayed)
    stats.relayed_to = tuple(t.conn.name for t in fetching if t.conn.name not in fallbacks)
    stats.fallbacks = tuple(fallbacks)
    return stats


def _answer(conn: NodeConnection, stdout: bytes) -> dict[str, Any]:
    try:
        value = json.loads(stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise NodeError(conn.name, f"unreadable answer from receive: {stdout[:200]!r}") from exc
    if not isinstance(value, dict):
        raise NodeError(conn.name, f"unexpected answer from receive: {value!r}")
    return value
