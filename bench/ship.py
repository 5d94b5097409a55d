"""Ship a source tree to every node: our content-hashed shipping vs rsync and scp, same run, same
pool, and print the ratios.

    .venv/bin/python bench/ship.py [--nodes 4] [--repeat 3] [--files 2000] [--file-kb 4] [--big-mb 4]

The tree is `--files` files of `--file-kb` KB of random bytes (distinct contents, so nothing is
deduplicated) plus one `--big-mb` MB file. Approaches, each to all nodes at once:
  lepton first      hash the tree + connect (pinned) + prepare + one tar stream per node, node
                    caches wiped before each repeat (what `run_job` does before launching)
  lepton unchanged  the same for a new run with nothing changed: only hashes are compared
  rsync first       `rsync -a -e "ssh <pinned opts>"` into an empty directory
  rsync re-sync     the same again, nothing changed
  scp -r first      `scp -r` (OpenSSH 9 speaks SFTP underneath) into an empty directory
Bytes moved: for lepton the content bytes in its stream (tar headers not counted); for rsync its
own `Total bytes sent` (protocol included); for scp the tree's size (it always sends everything)."""

from __future__ import annotations

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
from lepton_infra.workload.manifest import build_manifest  # noqa: E402
from lepton_infra.workload.runner import _NodeRun, _prepare, _ship  # noqa: E402
from lepton_infra.workload.ssh import connect_all  # noqa: E402


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
    content_bytes: int
    run_dirs: list[str]
    phases: dict[str, float]


def lepton_ship(inv: Inventory, tree: Path, run_id: str) -> Shipped:
    """What run_job does up to launching, with the same internal steps: hash the tree, connect,
    prepare (reserve the run dir, learn the missing blobs), ship (one tar stream per node)."""
    phases: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = now - t
        t = now

    manifest = build_manifest(tree)
    lap("hash")
    conns = connect_all(inv)
    lap("connect")
    try:
        nodes = [_NodeRun(conn, rank) for rank, conn in enumerate(conns)]
        _prepare(nodes, run_id, manifest, inv)
        lap("prepare")
        _ship(nodes, manifest, inv)
        lap("ship")
        return Shipped(sum(n.bytes_shipped for n in nodes), [n.run_dir for n in nodes], phases)
    finally:
        for c in conns:
            c.close()


def phase_note(samples: list[dict[str, float]]) -> str:
    """Median seconds per phase, e.g. `hash 0.05 + connect 0.2 + ...`."""
    return " + ".join(f"{name} {statistics.median(s[name] for s in samples):.2f}" for name in samples[0])


def wipe(pool: LocalPool, *names: str) -> None:
    """Remove what a previous repeat left on the nodes (the nodes' homes are local folders)."""
    for node in pool.inventory.nodes:
        for name in names:
            shutil.rmtree(pool.home(node.name) / name, ignore_errors=True)


def rsync_all(ssh: OpenSSH, pool: LocalPool, tree: Path, dest: str) -> int:
    inv = pool.inventory
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


def scp_all(ssh: OpenSSH, pool: LocalPool, tree: Path, dest: str) -> None:
    inv = pool.inventory
    cmds = [
        ["scp", "-r", "-q", *ssh.options(), "-P", str(n.port), str(tree),
         f"{inv.user}@{n.host}:{pool.home(n.name) / dest}"]
        for n in inv.nodes
    ]  # fmt: skip
    _bench.run_parallel(cmds)


def main() -> int:
    p = _bench.parser(__doc__.splitlines()[0], nodes=4, repeat=3)
    p.add_argument("--files", type=int, default=2000, help="small files in the tree (default 2000)")
    p.add_argument("--file-kb", type=int, default=4, help="size of each small file in KB (default 4)")
    p.add_argument("--big-mb", type=int, default=4, help="one big file of this many MB (default 4; 0: none)")
    args = p.parse_args()
    _bench.check_counts(args, "files", "file_kb")
    if args.big_mb < 0:
        sys.exit(f"--big-mb must be 0 or more, got {args.big_mb}")
    _bench.print_environment(
        f"ship: {args.files} x {args.file_kb} KB + {args.big_mb} MB to {args.nodes} nodes, "
        f"{args.repeat} repeats"
    )
    work = _bench.scratch_dir("ship")
    try:
        tree = work / "tree"
        tree_bytes = make_tree(tree, args.files, args.file_kb, args.big_mb)
        n_files = count_files(tree)
        print(f"tree: {n_files} files, {_bench.human_bytes(tree_bytes)} (x {args.nodes} nodes)\n")
        with _bench.local_pool(args.nodes) as pool:
            inv = pool.inventory
            ssh = OpenSSH(inv, work / "ssh")
            first = Row("lepton first (hash+connect+prepare+ship)")
            again = Row("lepton unchanged (new run, same tree)")
            r_first = Row("rsync -a first", note="empty destination")
            r_again = Row("rsync -a re-sync (unchanged)")
            scp = Row("scp -r first", note="empty destination")
            first_phases: list[dict[str, float]] = []
            again_phases: list[dict[str, float]] = []
            for i in range(args.repeat):
                wipe(pool, ".lepton", "rsync-dst", "scp-dst")
                for row, phases, run_id in (
                    (first, first_phases, f"ship-{i}-a"),
                    (again, again_phases, f"ship-{i}-b"),
                ):
                    secs, out = _bench.timed(functools.partial(lepton_ship, inv, tree, run_id))
                    row.seconds.append(secs)
                    row.bytes_moved = out.content_bytes
                    phases.append(out.phases)
                    shipped = count_files(Path(out.run_dirs[-1]) / "workload")
                    if shipped != n_files:
                        raise RuntimeError(f"lepton shipped {shipped} files, the tree has {n_files}")

                secs, sent = _bench.timed(lambda: rsync_all(ssh, pool, tree, "rsync-dst"))
                r_first.seconds.append(secs)
                r_first.bytes_moved = sent
                secs, sent = _bench.timed(lambda: rsync_all(ssh, pool, tree, "rsync-dst"))
                r_again.seconds.append(secs)
                r_again.bytes_moved = sent
                got = count_files(pool.home(inv.nodes[-1].name) / "rsync-dst")
                if got != n_files:
                    raise RuntimeError(f"rsync left {got} files, the tree has {n_files}")

                scp.seconds.append(_bench.timed(lambda: scp_all(ssh, pool, tree, "scp-dst"))[0])
                scp.bytes_moved = tree_bytes * args.nodes
                got = count_files(pool.home(inv.nodes[-1].name) / "scp-dst")
                if got != n_files:
                    raise RuntimeError(f"scp left {got} files, the tree has {n_files}")
                wipe(pool, ".lepton", "rsync-dst", "scp-dst")
            first.note = "caches wiped; " + phase_note(first_phases)
            again.note = phase_note(again_phases)
            rows = [first, again, r_first, r_again, scp]
            _bench.print_table(
                f"ship {n_files} files ({_bench.human_bytes(tree_bytes)}) to {args.nodes} nodes",
                rows,
                show_bytes=True,
            )
            _bench.ratio("ship", "lepton-first/rsync-first", first, r_first)
            _bench.ratio("ship", "lepton-first/scp-first", first, scp)
            _bench.ratio("ship", "lepton-unchanged/rsync-resync", again, r_again)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
