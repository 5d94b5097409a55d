"""The three commands a controller sends to the bootstrap: `prepare` (reserve the run directory,
say which blobs the cache lacks), `receive` (read the ship stream into the run's tree) and `serve`
(node 0's blob server when nothing was sent to node 0 itself). Each answers one JSON object.
`prepare` also reaches a running keeper (keeper.py) without a command, once one was started."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys

from . import keeper, spares
from .cache import cache_dir, cached, lepton_home
from .files import copy_file, rmtree, run_mode, umask
from .install import install_self
from .stream import Receiver, read_header
from .tree import check_manifest, tree_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

PIPE_BYTES = 1 << 20  # stdin pipe capacity asked for: 64 KB pipes cost a wakeup per 64 KB


def _port_free(addr: str, port: int) -> bool:
    """Can a listener bind `addr:port` now (the rendezvous port torchrun will take on node 0)?"""
    import socket

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((addr, port))
        except OSError:
            return False
    return True


def prepare(
    request: dict[str, Any], *, settle_in_background: bool = True, checked: bool = False
) -> dict[str, Any]:
    """Reserve the run directory with one `mkdir` (atomic: a run id can never be taken twice on a
    node) and answer which blobs the cache lacks and, on node 0, a free rendezvous port. An
    unchanged tree whose blobs are all here is written now (from a spare tree when one is ready),
    sparing the controller a `receive`."""
    home = lepton_home()
    runs = os.path.join(home, "runs")
    os.makedirs(runs, exist_ok=True)
    os.makedirs(cache_dir(), exist_ok=True)
    install_self(request.get("install"))
    run_dir = os.path.join(runs, request["run_id"])
    try:
        os.mkdir(run_dir)
    except FileExistsError:
        return {"home": os.path.expanduser("~"), "run_dir": run_dir, "exists": True}
    blobs = {str(d): int(size) for d, size in request.get("blobs", {}).items()}
    tree = request.get("tree")
    shipped = None
    missing: list[str] = []
    tid = None
    if isinstance(tree, dict) and not tree.get("pending"):
        if not checked:  # the keeper's remembered trees were checked when they came
            check_manifest(tree)
        workload = os.path.join(run_dir, "workload")
        agent = str(tree.get("agent"))
        tid = tree_id(tree)
        # An unchanged tree with a spare copy ready: that copy is checked file by file (size
        # and seal), so the cache need not be; write nothing, answer at once.
        if cached(agent, blobs.get(agent, -1)) and spares.take_spare(tid, workload, tree["files"], blobs):
            receiver = Receiver(workload, tree, blobs)
            shipped = _finish(run_dir, tree, receiver, 0, settle_in_background, spare_taken=True, tid=tid)
    if shipped is None:
        missing = [d for d, size in sorted(blobs.items()) if not cached(d, size)]
    if isinstance(tree, dict) and not tree.get("pending") and shipped is None and not missing:
        # Nothing to send: write the run's tree now and spare the controller a `receive` (one
        # command and one interpreter start less per node for an unchanged tree).
        receiver = Receiver(os.path.join(run_dir, "workload"), tree, blobs)
        shipped = _finish(run_dir, tree, receiver, 0, settle_in_background, tid=tid)
    port = None
    probe = request.get("port_probe")
    if probe:
        # Walk upwards from the run's preferred port; another run's rendezvous may hold it.
        for candidate in range(probe["port"], probe["port"] + 64):
            if _port_free(probe["addr"], candidate):
                port = candidate
                break
    answer = {
        "home": os.path.expanduser("~"),
        "run_dir": run_dir,
        "exists": False,
        "missing": missing,
        "port": port,
        "shipped": shipped,
    }
    if request.get("keeper"):
        # The controller's next prepare on this node goes to the keeper (keeper.py) instead of a
        # new interpreter. A keeper started now is forked from this process: it starts out knowing
        # this tree (`fresh`), so even the next run names it by its key alone.
        _remember_tree(request, answer)
        answer["keeper"] = keeper.ensure(_keeper_serves, _keeper_after_answer)
    return answer


# The keeper's memory of recent trees: the controller's key of a full request (a digest of its
# `blobs` and `tree` JSON) -> those two. A later prepare of the same tree then sends only the key,
# sparing the manifest's transfer and parsing (~170 B a file). The newest few are kept.
_TREES: dict[str, tuple[Any, Any]] = {}
# In the keeper, background work queued by a request (the settle's fork) runs after its answer is
# sent: the fork and the wait for its first child (~15 ms) are off the controller's critical path.
_AFTER_ANSWER: list[Callable[[], None]] | None = None


def _keeper_after_answer() -> None:
    global _AFTER_ANSWER  # noqa: PLW0603 - the keeper process's own queue
    queued, _AFTER_ANSWER = _AFTER_ANSWER or [], []
    for work in queued:
        work()


def _keeper_serves(command: str, request: dict[str, Any]) -> dict[str, Any]:
    """What the keeper runs for a request: `prepare` only, as the command would. A request with a
    tree key but no tree is completed from memory, or answered `{"need": "tree"}` (nothing done)."""
    if command != "prepare":
        raise ValueError(f"the keeper does not run {command!r}")
    key = request.get("tree_key")
    known = None
    if "tree" not in request:
        known = _TREES.get(key) if isinstance(key, str) else None
        if known is None:
            return {"need": "tree"}
        request = {**request, "blobs": known[0], "tree": known[1]}
    answer = prepare({**request, "keeper": False}, checked=known is not None)
    _remember_tree(request, answer)
    return answer


def _remember_tree(request: dict[str, Any], answer: dict[str, Any]) -> None:
    key = request.get("tree_key")
    if isinstance(key, str) and isinstance(request.get("tree"), dict) and not answer.get("exists"):
        _TREES.pop(key, None)
        _TREES[key] = (request.get("blobs", {}), request["tree"])
        while len(_TREES) > keeper.KEEP_TREES:
            del _TREES[next(iter(_TREES))]


def receive(run_dir: str, stream: IO[bytes], *, settle_in_background: bool = True) -> dict[str, Any]:
    """Read the controller's stream, fetch from node 0 what the manifest says to fetch there, and
    write the run's tree. With `serve` in the manifest (node 0 of a relayed ship), answer with the
    port of a short-lived server the other nodes fetch their missing blobs from."""
    os.makedirs(cache_dir(), exist_ok=True)
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    workload = os.path.join(run_dir, "workload")
    if os.path.lexists(workload):
        rmtree(workload)  # what an earlier, failed attempt left
    manifest = read_header(stream)
    receiver = Receiver(workload, manifest)
    receiver.take(stream)
    receiver.check_complete()
    relayed = 0
    if manifest.get("fetch"):
        before = receiver.bytes
        from .relay import fetch_blobs  # a relayed ship only: most commands never load it

        fetch_blobs(receiver, manifest["fetch"])
        relayed = receiver.bytes - before
    return _finish(run_dir, manifest, receiver, relayed, settle_in_background)


def serve(run_dir: str, request: dict[str, Any]) -> dict[str, Any]:
    """Start node 0's blob server for a run whose tree is already in place (nothing was sent to
    node 0, but other nodes lack blobs): answers the port, serves from a detached process."""
    check_manifest(request)
    from .relay import BlobServer

    server = BlobServer.start(os.path.join(run_dir, "workload"), request, request["serve"])
    spares.detach(server.run)
    return {"serve": {"port": server.port}}


def _finish(
    run_dir: str,
    manifest: dict[str, Any],
    receiver: Receiver,
    relayed: int,
    settle_in_background: bool,
    *,
    spare_taken: bool = False,
    tid: str | None = None,
) -> dict[str, Any]:
    """Complete the run's tree (copies for what did not come in the stream, or the spare tree),
    its links and modes, the agent; then serve (node 0 of a relayed ship) and settle."""
    workload = os.path.join(run_dir, "workload")
    files = manifest.get("files", {})
    by_digest, sizes, placed, tree = receiver.by_digest, receiver.sizes, receiver.placed, receiver.tree
    cache = cache_dir()
    for digest in by_digest:
        if digest not in sizes:
            with contextlib.suppress(OSError):
                sizes[digest] = os.stat(os.path.join(cache, digest)).st_size
    tid = tid or tree_id(manifest)  # known to prepare: a JSON dump of the whole tree, not twice
    counts = {"written": len(placed), "copied": 0}
    # Nothing of the tree came in the stream: an unchanged tree, perhaps with a spare ready.
    reused = spare_taken or (
        not placed and not os.path.exists(workload) and spares.take_spare(tid, workload, files, sizes)
    )
    if not reused:
        for digest, targets in by_digest.items():
            src = tree.path(targets[0][0]) if digest in placed else os.path.join(cache, digest)
            if digest not in placed and not os.path.isfile(src):
                raise ValueError(f"blob {digest} is neither in the stream nor in the node's cache")
            for rel, _ in targets[1 if digest in placed else 0 :]:
                copy_file(src, tree.path(rel))
                counts["copied"] += 1
        created = 0o666 & ~umask()
        for rel, (_digest, mode) in files.items():
            if run_mode(int(mode)) != created:
                os.chmod(tree.path(rel), run_mode(int(mode)))
        tree.links(manifest.get("links", {}))
    os.makedirs(workload, exist_ok=True)
    agent_dir = os.path.join(run_dir, ".agent")
    os.makedirs(agent_dir, exist_ok=True)
    copy_file(os.path.join(cache, manifest["agent"]), os.path.join(agent_dir, "agent.py"))
    answer: dict[str, Any] = {
        "received": receiver.received,
        "bytes": receiver.bytes,
        "relayed_bytes": relayed,
        "files": len(files),
        "reused": reused,
        "tree": tid,
        **counts,
    }
    server = None
    if manifest.get("serve"):
        from .relay import BlobServer

        server = BlobServer.start(workload, manifest, manifest["serve"])
    if server is not None:
        answer["serve"] = {"port": server.port}

    def after() -> None:
        if server is not None:
            server.run()
        if settle_in_background:
            # Lowest CPU priority: caching and the spare tree must not slow the job starting
            # now, nor (on a shared machine) another node still receiving.
            with contextlib.suppress(OSError):
                os.nice(19)
        spares.settle(workload, manifest, sizes)  # through the module: a benchmark swaps it

    if settle_in_background and _AFTER_ANSWER is not None:
        _AFTER_ANSWER.append(lambda: spares.detach(after))  # the keeper forks once it has answered
    elif settle_in_background:
        spares.detach(after)
    else:
        after()
    return answer


def main(argv: list[str]) -> int:
    """`bootstrap prepare|receive|serve ...`: one JSON answer on stdout; 2 and a usage line otherwise."""
    command = argv[1] if len(argv) > 1 else ""
    if command == "prepare":
        print(json.dumps(prepare(json.loads(sys.stdin.read()))))
        return 0
    if command == "receive" and len(argv) == 3:
        print(json.dumps(receive(argv[2], sys.stdin.buffer)))
        return 0
    if command == "serve" and len(argv) == 3:
        print(json.dumps(serve(argv[2], json.loads(sys.stdin.read()))))
        return 0
    print(
        "usage: bootstrap prepare < request.json | bootstrap receive RUN_DIR < stream "
        f"| bootstrap serve RUN_DIR < request.json (got {argv[1:]})"
    )
    return 2
