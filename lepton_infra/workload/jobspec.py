"""Pure functions that turn user input into what runs on each node: run ids, the workload's
entrypoint (`lepton.toml`), the torchrun command line, the LEPTON_* environment, the rendezvous
port, and parsing of `LEPTON_PROGRESS` lines. No I/O beyond reading the workload's lepton.toml."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_ENTRYPOINT = "train.py"
LEPTON_TOML = "lepton.toml"
LEPTON_TOML_KEYS = {
    "entrypoint": "the script torchrun starts, relative to the workload dir (default train.py)"
}
# Rendezvous ports come from this range so two runs on one pool (one machine, for the local pool)
# get different ports; node 0 then checks the port is free and walks up if not.
PORT_BASE, PORT_SPAN = 20000, 10000
# Static rendezvous waits this long for every node; torch's default (600 s, then retries) would
# leave a run hanging for 15 minutes when a node never starts.
RDZV_TIMEOUT_S = 60
PROGRESS_TAG = "LEPTON_PROGRESS"


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"run id {run_id!r} is not allowed: use 1-64 characters from letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return run_id


def master_port_for(run_id: str) -> int:
    digest = hashlib.sha256(run_id.encode()).digest()
    return PORT_BASE + int.from_bytes(digest[:4], "big") % PORT_SPAN


def _check_relative(value: str, what: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ConfigError(f"{what} is {value!r}: it must be a relative path inside the workload dir")
    return str(path)


def read_entrypoint(workload_dir: Path) -> str:
    """The entrypoint: `train.py`, or `entrypoint` from the workload's lepton.toml. Checked to exist."""
    workload_dir = Path(workload_dir)
    if not workload_dir.exists():
        raise ConfigError(f"workload dir {str(workload_dir)!r} does not exist")
    if not workload_dir.is_dir():
        raise ConfigError(f"workload dir {str(workload_dir)!r} is not a directory")
    entrypoint = DEFAULT_ENTRYPOINT
    toml_path = workload_dir / LEPTON_TOML
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: not valid TOML ({exc})") from exc
        unknown = sorted(set(data) - set(LEPTON_TOML_KEYS))
        if unknown:
            allowed = "; ".join(f"{k}: {v}" for k, v in LEPTON_TOML_KEYS.items())
            raise ConfigError(f"{toml_path}: unknown key(s) {', '.join(unknown)}; allowed keys are {allowed}")
        if "entrypoint" in data:
            value = data["entrypoint"]
            if not isinstance(value, str):
                raise ConfigError(f"{toml_path}: 'entrypoint' must be a string, got {value!r}")
            entrypoint = _check_relative(value, f"{toml_path}: 'entrypoint'")
    if not (workload_dir / entrypoint).is_file():
        source = f"named by {toml_path}" if toml_path.is_file() and entrypoint != DEFAULT_ENTRYPOINT else ""
        raise ConfigError(
            f"workload dir {str(workload_dir)!r} has no entrypoint {entrypoint!r} {source}".rstrip()
            + f'; add {entrypoint} or set entrypoint = "..." in {LEPTON_TOML}'
        )
    return entrypoint


def check_args(args: Sequence[str]) -> list[str]:
    if isinstance(args, str | bytes):
        raise ConfigError(f"args must be a list of strings, got the single string {args!r}")
    out = []
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise ConfigError(f"args[{i}] must be a string, got {type(arg).__name__} {arg!r}")
        if "\0" in arg:
            raise ConfigError(f"args[{i}] contains a NUL byte, which no command line can carry")
        out.append(arg)
    return out


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise ConfigError(
                f"env name {key!r} is not allowed: use letters, digits and '_', not starting with a digit"
            )
        if key.startswith("LEPTON_"):
            raise ConfigError(f"env {key} is set by lepton-infra itself and cannot be overridden")
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"env {key} must be a string without NUL bytes, got {value!r}")
        out[key] = value
    return out


# Processes per node when the inventory names no GPUs (CPU nodes, the local pool): more than this
# is a typo, not a plan (the largest GPU nodes have 8 or 16 GPUs).
MAX_CPU_NPROC = 64


def check_nproc(nproc_per_node: int, inventory: Inventory | None = None) -> int:
    """`nproc_per_node` checked against the inventory: at most the GPUs of every node that has
    some (one process per GPU; more would share a GPU or fail at cuda:N), at most MAX_CPU_NPROC
    on nodes without GPUs."""
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ConfigError(
            f"nproc_per_node (--nproc-per-node) must be an integer >= 1, got {nproc_per_node!r}"
        )
    for node in inventory.nodes if inventory is not None else ():
        if node.gpus and nproc_per_node > node.gpus:
            raise ConfigError(
                f"--nproc-per-node {nproc_per_node} is more than node {node.name!r} has GPUs "
                f"({node.gpus} x {node.accelerator or 'GPU'}); use at most {node.gpus}"
            )
        if not node.gpus and nproc_per_node > MAX_CPU_NPROC:
            raise ConfigError(
                f"--nproc-per-node {nproc_per_node} is more than {MAX_CPU_NPROC} processes on node "
                f"{node.name!r}, which has no GPUs in the inventory; use at most {MAX_CPU_NPROC}"
            )
    return nproc_per_node


def torchrun_argv(
    *,
    python: str,
    nnodes: int,
    node_rank: int,
    nproc_per_node: int,
    master_addr: str,
    master_port: int,
    entrypoint: str,
    args: Sequence[str],
    rdzv_timeout_s: int = RDZV_TIMEOUT_S,
) -> list[str]:
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nnodes),
        "--node-rank",
        str(node_rank),
        "--nproc-per-node",
        str(nproc_per_node),
        "--master-addr",
        master_addr,
        "--master-port",
        str(master_port),
        "--rdzv-conf",
        f"timeout={rdzv_timeout_s}",
        # One failure fails the run: the controller then stops the whole gang.
        "--max-restarts",
        "0",
        entrypoint,
        *args,
    ]


def cluster_env(inventory: Inventory) -> dict[str, str]:
    """What every node-side client needs to know about the cluster and cannot ask the node for:
    its region (`LEPTON_REGION`; on AWS also `AWS_REGION` and `AWS_DEFAULT_REGION`, which boto3
    and obstore read, or they assume us-east-1). Given to jobs, their uploader and sweep workers;
    the user's own `env` wins over the AWS names."""
    if not inventory.region:
        return {}
    env = {"LEPTON_REGION": inventory.region}
    if inventory.cloud == "aws":
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = inventory.region
    return env


def node_env(
    inventory: Inventory,
    *,
    rank: int,
    run_id: str,
    output_dir: str,
    nproc_per_node: int,
    extra: Mapping[str, str] | None = None,
    cpu_count: int | None = None,
) -> dict[str, str]:
    nodes = inventory.nodes
    env = {**cluster_env(inventory), **(extra or {})}
    if inventory.cloud == "local":
        # Every local "node" is this machine: gloo must use loopback, and the threads must share
        # the cores or the nodes fight over them (torchrun leaves OMP_NUM_THREADS unset).
        cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // (len(nodes) * nproc_per_node))))
    env.update(
        {
            "LEPTON_RUN_ID": run_id,
            "LEPTON_NODE_RANK": str(rank),
            "LEPTON_NUM_NODES": str(len(nodes)),
            "LEPTON_NODE_NAME": nodes[rank].name,
            "LEPTON_NODE_IPS": ",".join(n.private_ip for n in nodes),
            "LEPTON_OUTPUT_DIR": output_dir,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# The progress fields a UI reads, and what each must be. A line whose fields break these rules is
# not progress: it is shown as the plain log line it is (whatever a job prints, the controller keeps
# going). Counts are bounded so no arithmetic on them can blow up a renderer.
_PROGRESS_COUNTS = ("epoch", "epochs", "step", "steps")
_PROGRESS_NUMBERS = ("loss",)
_MAX_COUNT = 10**12
MAX_PROGRESS_LINE = 1 << 16


def parse_progress(line: str) -> dict[str, Any] | None:
    """The JSON object of a well-formed `LEPTON_PROGRESS {...}` line, or None for any other line
    (including a malformed progress line). Tolerates a prefix ending in space, ':' or ']'
    (torchrun's `[default0]:` tee prefix). Well-formed: `epoch`, `epochs`, `step`, `steps` are
    whole numbers from 0 to 10**12 with epoch <= epochs and step <= steps, `loss` a finite number;
    other keys are kept only when their values are strings, numbers, booleans or null."""
    if len(line) > MAX_PROGRESS_LINE:
        return None
    idx = line.find(PROGRESS_TAG)
    if idx < 0 or (idx > 0 and line[idx - 1] not in " :]\t"):
        return None
    rest = line[idx + len(PROGRESS_TAG) :]
    if not rest.startswith((" ", "\t")):
        return None
    try:
        value = json.loads(rest)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _PROGRESS_COUNTS:
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= _MAX_COUNT:
                return None
        elif key in _PROGRESS_NUMBERS:
            if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
                return None
        elif not (item is None or isinstance(item, str | bool | int | float)):
            continue
        elif isinstance(item, float) and not math.isfinite(item):
            continue
        out[key] = item
    for part, whole in (("epoch", "epochs"), ("step", "steps")):
        if part in out and whole in out and out[part] > out[whole]:
            return None
    return out
