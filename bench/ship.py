"""Ship a source tree to every node: our content-hashed shipping vs rsync and scp, same run, same
pool, and print the ratios.

    .venv/bin/python bench/ship.py [--nodes 1,8] [--repeat 3] [--files 2000] [--file-kb 4]
                                   [--big-mb 50] [--one-file-mb 200] [--json out.json]

The tree is `--files` files of `--file-kb` KB of random bytes (distinct contents, so nothing is
deduplicated) plus one `--big-mb` MB file; it is shipped to each node count of `--nodes` (one pool
of the largest count, the first N nodes of it). Approaches, each to all N nodes at once:
  lepton first      hash the tree + connect (pinned) + prepare + ship, node caches wiped before
                    each repeat (what `run_job` does before launching); from 2 nodes on, relayed:
                    the controller sends each missing blob once, to node 0, the others fetch it there
  lepton unchanged  the same for a new run with nothing changed (hashes from the local hash
                    cache, the node's spare tree renamed into place)
  rsync first       `rsync -a -e "ssh <pinned opts>"` into an empty directory
  rsync re-sync     the same again, nothing changed
  scp -r first      `scp -r` (OpenSSH 9 speaks SFTP underneath) into an empty directory
Then one `--one-file-mb` MB file to one node: lepton first vs scp (throughput).
Bytes moved: for lepton what the controller put on the wire (framing included); for rsync its own
`Total bytes sent` (protocol included); for scp the tree's size times the nodes (it sends all).
The nodes' background work after a ship (caching, the spare tree) is waited for before the next
approach is timed, so it never slows a competitor; its duration is printed."""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
from _bench import OpenSSH, Row  # noqa: E402

from lepton_infra.inventory import Inventory  # noqa: E402
from lepton_infra.local import LocalPool  # noqa: E402
from lepton_infra.workload import steps  # noqa: E402
from lepton_infra.workload.group import NodeGroup  # noqa: E402
from lepton_infra.workload.manifest import build_manifest, default_hash_cache_dir  # noqa: E402

HASH_CACHE = default_hash_cache_dir()


def make_tree(root: Path, files: int, file_kb: int, big_mb: int) -> int:
    """Random, distinct files in subfolders of 100 (like a source tree); returns total bytes."""
    total = 0
    for i in range(files):
        d = root / f"pkg{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        data = os.urandom(file_kb * 1024)
        (d / f"mod{i:05d}.py").write_bytes(data)
        total += len(data)
    if big_mb:
        data = os.urandom(big_mb * 1024 * 1024)
        (root / "weights.bin").write_bytes(data)
        total += len(data)
    (root / "train.py").write_text("print('hello')\n")
    return total + len("print('hello')\n")


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


@dataclass
class Shipped:
    controller_bytes: int
    run_dirs: list[str]
    phases: dict[str, float]


def lepton_ship(inv: Inventory, tree: Path, run_id: str) -> Shipped:
    """What run_job does up to launching, with the same internal steps: hash the tree, connect,
    prepare (reserve the run dir, learn the missing blobs), ship (direct or relayed through node 0)."""
    phases: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = now - t
        t = now

    manifest = build_manifest(tree)
    lap("hash")
    with NodeGroup.connect(inv, 10.0) as group:
        lap("connect")
        steps.prepare(group, run_id, manifest, inv)
        lap("prepare")
        stats = steps.ship(group, manifest, inv)
        lap("ship")
        return Shipped(stats.controller_bytes, [m.run_dir for m in group], phases)


def phase_note(samples: list[dict[str, float]]) -> str:
    """Median seconds per phase, e.g. `hash 0.05 + connect 0.2 + ...`."""
    return " + ".join(f"{name} {statistics.median(s[name] for s in samples):.2f}" for name in samples[0])


def wipe(pool: LocalPool, *names: str) -> None:
    """Remove what a previous repeat left on the nodes (the nodes' homes are local folders)."""
    for node in pool.inventory.nodes:
        for name in names:
            shutil.rmtree(pool.home(node.name) / name, ignore_errors=True)


def rsync_all(ssh: OpenSSH, inv: Inventory, pool: LocalPool, tree: Path, dest: str) -> int:
    cmds = [
        ["rsync", "-a", "--stats", "-e", ssh.rsh(n), f"{tree}/",
         f"{inv.user}@{n.host}:{pool.home(n.name) / dest}/"]
        for n in inv.nodes
    ]  # fmt: skip
    total = 0
    for out in _bench.run_parallel(cmds):
        m = re.search(r"Total bytes sent:\s*([\d,.]+)", out)
        if m is None:
            raise RuntimeError(f"rsync --stats printed no 'Total bytes sent': {out[-300:]}")
        total += int(re.sub(r"[,.]", "", m.group(1)))
    return total


def scp_all(ssh: OpenSSH, inv: Inventory, pool: LocalPool, tree: Path, dest: str) -> None:
    cmds = [
        ["scp", "-r", "-q", *ssh.options(), "-P", str(n.port), str(tree),
         f"{inv.user}@{n.host}:{pool.home(n.name) / dest}"]
        for n in inv.nodes
    ]  # fmt: skip
    _bench.run_parallel(cmds)


def wait_settled(pool: LocalPool, nodes: int, timeout: float = 120.0) -> float:
    """Wait for the nodes' background work after a ship (bootstrap's `.settling-<pid>` markers).
    A node's keeper starts that work just after its answer, so no marker is trusted as "done"
    until none has been seen for 0.2 s."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    homes = [pool.home(n.name) for n in pool.inventory.nodes[:nodes]]
    quiet_since = None
    while time.perf_counter() < deadline:
        markers = [m for h in homes for m in (h / ".lepton" / "trees").glob(".settling-*")]
        live = [m for m in markers if Path(f"/proc/{m.name.rsplit('-', 1)[-1]}").exists()]
        now = time.perf_counter()
        if live:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= 0.2:
            return quiet_since - t0
        time.sleep(0.05)
    return time.perf_counter() - t0


def bench_tree(
    args: argparse.Namespace, pool: LocalPool, ssh: OpenSSH, tree: Path, nodes: int, tree_bytes: int
) -> None:
    inv = pool.inventory.model_copy(update={"nodes": pool.inventory.nodes[:nodes]})
    n_files = count_files(tree)
    first = Row("lepton first (hash+connect+prepare+ship)")
    again = Row("lepton unchanged (new run, same tree)")
    r_first = Row("rsync -a first", note="empty destination")
    r_again = Row("rsync -a re-sync (unchanged)")
    scp = Row("scp -r first", note="empty destination")
    first_phases: list[dict[str, float]] = []
    again_phases: list[dict[str, float]] = []
    settle: list[float] = []
    for i in range(args.repeat):
        wipe(pool, ".lepton", "rsync-dst", "scp-dst")
        # A cold controller too: the local hash cache is wiped with the nodes' caches.
        shutil.rmtree(HASH_CACHE, ignore_errors=True)
        for row, phases, run_id in (
            (first, first_phases, f"ship-{nodes}-{i}-a"),
            (again, again_phases, f"ship-{nodes}-{i}-b"),
        ):
            secs, out = _bench.timed(functools.partial(lepton_ship, inv, tree, run_id))
            row.seconds.append(secs)
            row.bytes_moved = out.controller_bytes
            phases.append(out.phases)
            settle.append(wait_settled(pool, nodes))
            for run_dir in out.run_dirs:
                shipped = count_files(Path(run_dir) / "workload")
                if shipped != n_files:
                    raise RuntimeError(f"lepton shipped {shipped} files to {run_dir}, the tree has {n_files}")

        secs, sent = _bench.timed(lambda: rsync_all(ssh, inv, pool, tree, "rsync-dst"))
        r_first.seconds.append(secs)
        r_first.bytes_moved = sent
        secs, sent = _bench.timed(lambda: rsync_all(ssh, inv, pool, tree, "rsync-dst"))
        r_again.seconds.append(secs)
        r_again.bytes_moved = sent
        got = count_files(pool.home(inv.nodes[-1].name) / "rsync-dst")
        if got != n_files:
            raise RuntimeError(f"rsync left {got} files, the tree has {n_files}")

        scp.seconds.append(_bench.timed(lambda: scp_all(ssh, inv, pool, tree, "scp-dst"))[0])
        scp.bytes_moved = tree_bytes * nodes
        got = count_files(pool.home(inv.nodes[-1].name) / "scp-dst")
        if got != n_files:
            raise RuntimeError(f"scp left {got} files, the tree has {n_files}")
        wipe(pool, ".lepton", "rsync-dst", "scp-dst")
    first.note = "caches wiped; " + phase_note(first_phases)
    again.note = (
        phase_note(again_phases)
        + f"; nodes' background work after each ship {statistics.median(settle):.2f} s"
    )
    _bench.print_table(
        f"ship {n_files} files ({_bench.human_bytes(tree_bytes)}) to {nodes} node(s)",
        [first, again, r_first, r_again, scp],
        show_bytes=True,
    )
    tag = f"@{nodes}n"
    _bench.ratio("ship", f"lepton-first/rsync-first{tag}", first, r_first)
    _bench.ratio("ship", f"lepton-first/scp-first{tag}", first, scp)
    _bench.ratio("ship", f"lepton-unchanged/rsync-resync{tag}", again, r_again)
    sent = Row("controller bytes", seconds=[float(first.bytes_moved or 0)])
    tree_row = Row("tree bytes", seconds=[float(tree_bytes)])
    _bench.ratio("ship", f"controller-bytes-out/tree-bytes{tag}", sent, tree_row)


def bench_one_file(args: argparse.Namespace, pool: LocalPool, ssh: OpenSSH, work: Path) -> None:
    inv = pool.inventory.model_copy(update={"nodes": pool.inventory.nodes[:1]})
    tree = work / "one-file"
    tree.mkdir()
    size = args.one_file_mb * 1024 * 1024
    (tree / "weights.bin").write_bytes(os.urandom(size))
    (tree / "train.py").write_text("print('hello')\n")
    ours = Row("lepton first (hash+connect+prepare+ship)")
    theirs = Row("scp -r first", note="empty destination")
    for i in range(args.repeat):
        wipe(pool, ".lepton", "scp-dst")
        shutil.rmtree(HASH_CACHE, ignore_errors=True)
        secs, out = _bench.timed(functools.partial(lepton_ship, inv, tree, f"one-{i}"))
        ours.seconds.append(secs)
        ours.bytes_moved = out.controller_bytes
        ours.note = phase_note([out.phases])
        wait_settled(pool, 1)
        theirs.seconds.append(_bench.timed(lambda: scp_all(ssh, inv, pool, tree, "scp-dst"))[0])
        theirs.bytes_moved = size
    wipe(pool, ".lepton", "scp-dst")
    _bench.print_table(f"ship one {args.one_file_mb} MB file to 1 node", [ours, theirs], show_bytes=True)
    mb = args.one_file_mb
    print(f"throughput: lepton {mb / ours.median:.0f} MB/s, scp {mb / theirs.median:.0f} MB/s (medians)")
    _bench.ratio("ship", "lepton-one-file/scp-one-file@1n", ours, theirs)


def main() -> int:
    p = _bench.parser(__doc__.splitlines()[0], nodes=0, repeat=3)
    p.add_argument("--node-counts", default="1,8", help="comma-separated node counts (default 1,8)")
    p.add_argument("--files", type=int, default=2000, help="small files in the tree (default 2000)")
    p.add_argument("--file-kb", type=int, default=4, help="size of each small file in KB (default 4)")
    p.add_argument(
        "--big-mb", type=int, default=50, help="one big file of this many MB (default 50; 0: none)"
    )
    p.add_argument(
        "--one-file-mb", type=int, default=200, help="the one-file case, MB (default 200; 0: skip)"
    )
    args = p.parse_args()
    counts = sorted({int(c) for c in args.node_counts.split(",") if c.strip()})
    if args.nodes:
        counts = [args.nodes]  # --nodes N: just that count (the older interface)
    args.nodes = max(counts) if counts else 0
    _bench.check_counts(args, "files", "file_kb")
    if args.big_mb < 0 or args.one_file_mb < 0:
        sys.exit(f"--big-mb and --one-file-mb must be 0 or more, got {args.big_mb}, {args.one_file_mb}")
    _bench.print_environment(
        f"ship: {args.files} x {args.file_kb} KB + {args.big_mb} MB to {', '.join(map(str, counts))} "
        f"node(s), one {args.one_file_mb} MB file to 1 node, {args.repeat} repeats"
    )
    work = _bench.scratch_dir("ship")
    try:
        tree = work / "tree"
        tree_bytes = make_tree(tree, args.files, args.file_kb, args.big_mb)
        print(f"tree: {count_files(tree)} files, {_bench.human_bytes(tree_bytes)}\n")
        with _bench.local_pool(args.nodes) as pool:
            ssh = OpenSSH(pool.inventory, work / "ssh")
            for n in counts:
                bench_tree(args, pool, ssh, tree, n, tree_bytes)
            if args.one_file_mb:
                bench_one_file(args, pool, ssh, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _bench.finish(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
