"""Node-side bootstrap: reserve a run directory and receive a workload into the content cache.

It has to work on a node where nothing was shipped yet, so it travels as one bundle (all its
modules in one `python -c` text, lepton_infra/node/loader.py) until its first `prepare` installs
it under ~/.lepton/bin (install.py). Standard library only. Layout it maintains on the node:

    ~/.lepton/cache/<sha256>             one sealed, read-only file per distinct content
    ~/.lepton/trees/<tree-id>/           a spare, never-used copy of a whole tree (spares.py)
    ~/.lepton/runs/<run-id>/workload/    the run's own copy of the workload (cwd of the job)
    ~/.lepton/runs/<run-id>/.agent/agent.py
    ~/.lepton/bin/lepton_bootstrap_<digest>/  this package, installed

One job per module: commands.py (prepare, receive, serve), stream.py (the ship stream's framing
and the receiver), tree.py (a tree's paths, checked), files.py (fast file writes), cache.py (the
sealed cache), relay.py (node 0's blob server and the peers' fetch), spares.py (after the answer:
cache fill and spare trees), install.py (the bootstrap installs itself).

The cache is immutable, whatever a job does:
- A run never gets a cache file (no hard links into the cache): its tree is its own files, written
  straight from the stream, copied (or reflinked, where the filesystem can) from the cache, or a
  spare tree renamed into place. A job, even as root, can edit only its own copy.
- Cache files are sealed (cache.py): a blob is trusted by its hash, never by its size.
- Filling the cache with the small files written straight to the run's tree, and building the
  spare tree for the next run of the same tree, happen after `receive` has answered, in a
  detached process (off the critical path). Filling hashes what it copies: a file the job already
  changed does not match its digest and is not cached."""

from __future__ import annotations

from .commands import main, prepare, receive, serve
from .spares import settle
from .stream import BLOB_HEAD, MANIFEST_HEAD, PENDING_DIGEST, STREAM_MAGIC

__all__ = [
    "BLOB_HEAD",
    "MANIFEST_HEAD",
    "PENDING_DIGEST",
    "STREAM_MAGIC",
    "main",
    "prepare",
    "receive",
    "serve",
    "settle",
]
