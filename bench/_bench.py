"""Shared plumbing for the bench/ scripts (not a benchmark itself: `make bench` skips `_*.py`).

Every script starts a throw-away local pool, measures our workload layer and the OpenSSH-family
tools against the SAME nodes in the same run, and prints a table plus `ratio ...` lines. This
module holds what they share: the command line, the environment header, the pool's lifetime,
OpenSSH options that pin the very host keys the inventory pins, timing and printing."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# Runnable as `python bench/x.py` from a checkout without installing: the repo root on sys.path.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lepton_infra.inventory import Inventory, Node  # noqa: E402
from lepton_infra.local import LocalPool  # noqa: E402

T = TypeVar("T")
CAVEAT = (
    "caveat: this machine is shared and noisy (other jobs use the same cores); numbers are medians "
    "of a few repeats, ratios from the same run are meaningful, absolute seconds much less so."
)


# Everything printed as a table or a ratio, for `--json` (see finish()).
RECORD: dict[str, Any] = {"environment": {}, "tables": [], "ratios": []}


def parser(description: str, *, nodes: int, repeat: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--nodes", type=int, default=nodes, help=f"local sshd nodes (default {nodes})")
    p.add_argument("--repeat", type=int, default=repeat, help=f"repeats per approach (default {repeat})")
    p.add_argument(
        "--json", type=Path, default=None, help="also write every table and ratio to this JSON file"
    )
    return p


def finish(args: argparse.Namespace) -> None:
    """Write what was printed (environment, tables with every sample, ratios) as JSON, if asked."""
    path = getattr(args, "json", None)
    if path is None:
        return
    RECORD["command"] = [Path(sys.argv[0]).name, *sys.argv[1:]]
    Path(path).write_text(json.dumps(RECORD, indent=2) + "\n", encoding="utf-8")
    print(f"json: {path}")


def check_counts(args: argparse.Namespace, *names: str) -> None:
    """Refuse nonsense sizes up front with the option's name (a bench that runs 0 times says nothing)."""
    for name in ("nodes", "repeat", *names):
        value = getattr(args, name)
        if value < 1:
            sys.exit(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_environment(title: str) -> None:
    print(f"# {title}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"environment: {os.cpu_count()} cores, load average {load}, {platform.platform()}")
    RECORD["environment"] = {
        "title": title,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "paramiko": _dist("paramiko"),
        "openssh": _version(["ssh", "-V"]),
        "rsync": _version(["rsync", "--version"]),
    }
    print(
        f"  python {platform.python_version()}, paramiko {_dist('paramiko')}, "
        f"parallel-ssh {_dist('parallel-ssh')}"
    )
    print(f"  {_version(['ssh', '-V'])}")
    print(f"  {_version(['rsync', '--version'])}")
    print(CAVEAT)
    print()


@contextlib.contextmanager
def local_pool(nodes: int) -> Iterator[LocalPool]:
    """A fresh pool in a temporary state dir; always stopped and removed, whatever happens."""
    state_dir = Path(tempfile.mkdtemp(prefix="lepton-bench-"))
    pool: LocalPool | None = None
    try:
        pool = LocalPool.start(nodes, state_dir)
        yield pool
    finally:
        if pool is not None:
            pool.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"lepton-bench-{prefix}-"))


# --------------------------------------------------------------------------- OpenSSH, keys pinned


@dataclass
class OpenSSH:
    """OpenSSH client options that trust exactly the inventory's host keys, as our layer does:
    a generated known_hosts, StrictHostKeyChecking yes, no ~/.ssh/config (-F /dev/null), only the
    pool's key, never a prompt."""

    inventory: Inventory
    workdir: Path
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.known_hosts = self.workdir / "known_hosts"
        lines = [f"[{n.host}]:{n.port} {n.host_key}" for n in self.inventory.nodes]
        self.known_hosts.write_text("\n".join(lines) + "\n", encoding="ascii")

    def options(self, *extra: str) -> list[str]:
        key = self.inventory.private_key_path
        opts = [
            "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if key:
            opts += ["-i", key]
        return opts + self.extra + list(extra)

    def destination(self, node: Node) -> str:
        """`ssh://user@host:port`: one word, so xargs can place it anywhere in the command."""
        return f"ssh://{self.inventory.user}@{node.host}:{node.port}"

    def rsh(self, node: Node, *extra: str) -> str:
        """The `-e` value for rsync: ssh with the pinned options and the node's port."""
        import shlex

        return shlex.join(["ssh", *self.options(*extra), "-p", str(node.port)])


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One approach: its timings over the repeats, plus whatever else it moved or noted."""

    name: str
    seconds: list[float] = field(default_factory=list)
    bytes_moved: int | None = None
    note: str = ""
    skipped: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def print_table(title: str, rows: Sequence[Row], *, show_bytes: bool = False) -> None:
    RECORD["tables"].append(
        {
            "title": title,
            "rows": [
                {
                    "name": r.name,
                    "seconds": r.seconds,
                    "median_s": None if r.skipped is not None else r.median,
                    "bytes_moved": r.bytes_moved,
                    "note": r.note,
                    "skipped": r.skipped,
                }
                for r in rows
            ],
        }
    )
    print(f"## {title}")
    head = f"{'approach':<44} {'median s':>9} {'min s':>8} {'max s':>8}"
    if show_bytes:
        head += f" {'bytes moved':>12}"
    print(head + "  note")
    for r in rows:
        if r.skipped is not None:
            print(f"{r.name:<44} {'skipped':>9}  {r.skipped}")
            continue
        line = f"{r.name:<44} {r.median:>9.3f} {min(r.seconds):>8.3f} {max(r.seconds):>8.3f}"
        if show_bytes:
            line += f" {human_bytes(r.bytes_moved):>12}"
        print(line + (f"  {r.note}" if r.note else ""))
    print()


def ratio(bench: str, label: str, ours: Row, theirs: Row) -> None:
    """`ratio <bench> <label> = 0.31x (lower is better)`: ours divided by theirs, medians."""
    if ours.skipped is not None or theirs.skipped is not None:
        reason = ours.skipped if ours.skipped is not None else theirs.skipped
        print(f"ratio {bench} {label} = n/a (skipped: {reason})")
        RECORD["ratios"].append({"bench": bench, "label": label, "value": None, "skipped": reason})
        return
    value = ours.median / theirs.median if theirs.median > 0 else float("inf")
    print(f"ratio {bench} {label} = {value:.2f}x (lower is better)")
    RECORD["ratios"].append({"bench": bench, "label": label, "value": round(value, 4)})


def run_checked(cmd: Sequence[str], *, input: str | None = None, timeout: float = 300) -> str:
    """Run a tool; on failure stop the bench with its stderr (a silently failing baseline lies)."""
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    return proc.stdout


def run_parallel(cmds: Sequence[Sequence[str]], *, timeout: float = 300) -> list[str]:
    """Start every command at once (one per node, as a user's `&` loop would) and wait for all."""
    procs = [
        subprocess.Popen(list(c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds
    ]
    outs: list[str] = []
    errors: list[str] = []
    for cmd, proc in zip(cmds, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            errors.append(f"{cmd[0]} timed out after {timeout} s")
            continue
        if proc.returncode != 0:
            errors.append(f"{cmd[0]} exited {proc.returncode}: {err.strip()[-400:]}")
        outs.append(out)
    if errors:
        raise RuntimeError("; ".join(errors))
    return outs
