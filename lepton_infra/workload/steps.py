"""The steps of a run over a `NodeGroup`: preflight (does the node's python have torch and the
GPUs the inventory says?), prepare (reserve the run dir, learn missing blobs),
ship (one tar stream per node), launch (start the supervisor detached), collect (one tar stream
back). Per node each step is ONE command on the node's one connection."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lepton_infra.errors import ConfigError, LeptonError, NodeError, NoSpace
from lepton_infra.inventory import Inventory, Node
from lepton_infra.workload import clients, collecting, jobspec, keeper, metrics, shipping
from lepton_infra.workload.group import ConnectedNode, GroupResult, NodeGroup
from lepton_infra.workload.manifest import Manifest
from lepton_infra.workload.models import NodeStatus
from lepton_infra.workload.remote import (
    AGENT_DIGEST,
    AGENT_SOURCE,
    PREFLIGHT_SOURCE,
    UPLOADER_SOURCE,
    agent,
    agent_cmd,
    bootstrap_cmd,
    bootstrap_install,
    inline_cmd,
    json_answer,
)
from lepton_infra.workload.shipping import ShipStats


def results_prefix(run_id: str, node: str) -> str:
    """Where a node's results go in the inventory's store."""
    return f"runs/{run_id}/{node}"


def check_timeout(connect_timeout: float) -> None:
    if not isinstance(connect_timeout, int | float) or connect_timeout <= 0:
        raise ConfigError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")


def preflight(group: NodeGroup, inventory: Inventory) -> dict[str, dict[str, Any]]:
    """Ask every node, with ONE command each, what the inventory's `python` has: its path and
    version, `torch.__version__`, `torch.cuda.is_available()` and the GPU count. NodeError (exit
    3) naming the node and what it found when torch is missing or the node has fewer GPUs than
    the inventory says; nothing has been shipped or launched then. Returns each node's report."""
    python = inventory.python
    pins = clients.pins_for(inventory)  # which of the data plane's clients it lacks, too

    def one(m: ConnectedNode) -> dict[str, Any]:
        result = m.conn.run(inline_cmd(python, PREFLIGHT_SOURCE, *pins), check=False)
        if result.exit_status != 0 or not result.stdout.strip():
            tail = " | ".join(result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
            return {"problem": f"the inventory's python {python!r} does not run "
                    f"(exit status {result.exit_status}): {tail or 'no output'}"}  # fmt: skip
        return json_answer(m.conn, result.stdout, "preflight")

    reports = group.run(one)
    reports.raise_first()
    problems = {
        name: problem
        for name, found in reports.succeeded.items()
        if (problem := found.get("problem") or _preflight_problem(group[name].conn.node, python, found))
    }
    if problems:
        # Every node's finding at once: fixing one image and retrying only to meet the next is slow.
        (first, why), *others = problems.items()
        also = "".join(f"; also node {name!r}: {other}" for name, other in others)
        raise NodeError(first, f"preflight: {why}{also}")
    for m in group:
        m.preflight = reports.succeeded[m.name]
    return reports.succeeded


def _preflight_problem(node: Node, python: str, found: Mapping[str, Any]) -> str | None:
    """What is wrong with a node's preflight report, in a sentence naming what it found."""
    where = f"{found.get('python') or python} (Python {found.get('python_version', '?')})"
    if not found.get("torch"):
        return (
            f"no torch in {where}: {found.get('error') or 'import failed'}; the inventory's "
            "`python` must be an interpreter that has torch"
        )
    seen = int(found.get("gpus") or 0)
    if seen < node.gpus:
        cuda = "available" if found.get("cuda") else "not available"
        extra = f"; {found['error']}" if found.get("error") else ""
        return (
            f"the inventory says {node.gpus} GPU(s) ({node.accelerator or 'GPU'}) but torch "
            f"{found['torch']} in {where} sees {seen} (CUDA {cuda}{extra})"
        )
    return None


def prepare(group: NodeGroup, run_id: str, manifest: Manifest, inventory: Inventory) -> int:
    """Reserve the run dir everywhere, learn the missing blobs; returns the rendezvous port.
    ConfigError (and nothing left behind) when any node already has this run id."""
    blobs = manifest.blobs()
    blobs[AGENT_DIGEST] = len(AGENT_SOURCE)
    preferred = jobspec.master_port_for(run_id)

    # The tree too: a node that lacks nothing writes it at once (no `receive` for it).
    tree = {**manifest.node_view(), "agent": AGENT_DIGEST}
    # ~170 B a file: encoded once, not once per node. Its digest names it to the nodes' keepers,
    # which remember the trees they were given: a node's keeper that has this one is sent the key only.
    core = json.dumps({"blobs": blobs, "tree": tree}).encode()
    extra: dict[str, Any] = {
        "run_id": run_id,
        "install": bootstrap_install(),
        "keeper": True,
        "tree_key": hashlib.sha256(core).hexdigest(),
    }

    def one(m: ConnectedNode) -> dict[str, Any]:
        mine = (
            extra
            if m.rank != 0
            else {**extra, "port_probe": {"addr": inventory.master.private_ip, "port": preferred}}
        )
        own = json.dumps(mine).encode()
        full = core[:-1] + b", " + own[1:]  # one JSON object: core's keys and mine
        entry = keeper.known(m.conn)
        short = [own] if entry and mine["tree_key"] in entry["trees"] else []
        # A node's keeper answers without a new interpreter on the node (workload/keeper.py).
        answer = keeper.call(m.conn, "prepare", [*short, full])
        if answer is not None and not answer.get("exists"):
            keeper.remember(m.conn, tree=mine["tree_key"])  # the keeper now holds this tree
        elif answer is None:
            result = m.conn.run(bootstrap_cmd(inventory.python, "prepare"), stdin=full)
            answer = json_answer(m.conn, result.stdout, "prepare")
            address = answer.pop("keeper", None)
            fresh = isinstance(address, dict) and address.get("fresh") and not answer.get("exists")
            keeper.remember(m.conn, address, tree=mine["tree_key"] if fresh else None)
        m.run_dir = answer["run_dir"]
        m.missing = list(answer.get("missing", []))
        m.tree_ready = bool(answer.get("shipped"))
        return answer

    answers = group.run(one)
    # Undo our own reservations if anything went wrong; never touch an existing run's files.
    created = group.subset(
        lambda m: m.name in answers.succeeded and not answers.succeeded[m.name].get("exists")
    )
    taken = [name for name, a in answers.succeeded.items() if a.get("exists")]
    if answers.failed or taken:
        remove_run_dirs(created)
    answers.raise_first()
    if taken:
        raise ConfigError(
            f"run id {run_id!r} already exists on node(s) {', '.join(taken)}; choose another --run-id "
            "(run ids must be unique so two runs never mix files)"
        )
    port = answers.succeeded[group.members[0].name].get("port")
    return int(port) if port else preferred


def remove_run_dirs(group: NodeGroup) -> None:
    """Best effort: a node that cannot be reached keeps its (empty or partial) run dir."""
    group.run(lambda m: m.conn.run(f"rm -rf {shlex.quote(m.run_dir)}", check=False) if m.run_dir else None)


def ship(group: NodeGroup, manifest: Manifest, inventory: Inventory) -> ShipStats:
    """Send the nodes the blobs they lack (plus the agent), each blob once from the controller:
    directly to one node, or to node 0 which the others fetch from (workload/shipping.py)."""
    members = list(group)
    return shipping.ship(
        members,
        manifest,
        python=inventory.python,
        bootstrap_cmd=bootstrap_cmd,
        agent_source=AGENT_SOURCE,
        agent_digest=AGENT_DIGEST,
        done=frozenset(m.name for m in members if m.tree_ready),
    )


def launch(
    group: NodeGroup,
    *,
    inventory: Inventory,
    run_id: str,
    entrypoint: str,
    args: Sequence[str],
    nproc_per_node: int,
    master_port: int,
    env: Mapping[str, str],
    metrics_every: float = metrics.DEFAULT_EVERY_S,
) -> None:
    """Start torchrun under the node agent's supervisor on every node. All or nothing: if any node
    refuses, the started ones are cancelled, so nothing half-run stays behind."""

    def one(m: ConnectedNode) -> NodeStatus:
        spec = {
            "run_id": run_id,
            "node": m.name,
            "argv": jobspec.torchrun_argv(
                python=inventory.python,
                nnodes=len(group),
                node_rank=m.rank,
                nproc_per_node=nproc_per_node,
                master_addr=inventory.master.private_ip,
                master_port=master_port,
                entrypoint=entrypoint,
                args=args,
            ),
            "env": jobspec.node_env(
                inventory,
                rank=m.rank,
                run_id=run_id,
                output_dir=f"{m.run_dir}/output",
                nproc_per_node=nproc_per_node,
                extra=env,
            ),
            "cwd": f"{m.run_dir}/workload",
            # The agent writes it beside the run and names it in LEPTON_STORE_CLIENT (store URLs as
            # --data-dir: fetched, verified and cached on the node).
            "store_client": UPLOADER_SOURCE,
        }
        if inventory.store:
            spec["results"] = {
                "store": inventory.store,
                "prefix": results_prefix(run_id, m.name),
                "source": UPLOADER_SOURCE,
                # What the node's store client needs (the cluster's region, the user's endpoints).
                "env": {**jobspec.cluster_env(inventory), **env},
            }
        sampler = metrics.spec_entry(metrics_every)
        if sampler is not None:
            spec["metrics"] = sampler  # the node sampler (node/metrics.py)
        answer = agent(m.conn, run_id, "launch", stdin=json.dumps(spec).encode())
        m.status = NodeStatus.from_agent(m.name, answer)
        return m.status

    def stop(m: ConnectedNode) -> None:
        # A node whose launch command failed may have started all the same (its connection died
        # after the agent had launched): it is cancelled too, over a new connection.
        if m.name in started.failed:
            m.conn.reconnect()
        agent(m.conn, run_id, "cancel")

    started = group.run(one)
    if started.failed:
        group.run(stop)
        started.raise_first()


def collect(
    group: NodeGroup, run_id: str, local_dir: Path, limits: collecting.Limits | None = None
) -> GroupResult[None]:
    """Bring every node's outputs, logs and state into `local_dir/<node>/` (what is already there
    is not sent again). One unreachable node, or a full disk, must not cost the others' results:
    its error is in the returned `.failed` and in the member's `collect_error`. An interrupt
    closes the connections, so the transfers stop at once. What a node sends is untrusted
    (workload/collecting.py): what was not taken is in the member's `collect_skipped`."""
    limits = limits or collecting.Limits()

    def one(m: ConnectedNode) -> None:
        dest = local_dir / m.name
        m.collect_error = None
        try:
            dest.mkdir(parents=True, exist_ok=True)
            request: dict[str, Any] = {
                "have": collecting.already_here(dest),
                "max_bytes": limits.max_bytes,
                "max_files": limits.max_files,
            }
            unpack = collecting.Unpacker(m.name, run_id, dest, limits)
            _, _, count = m.conn.run_download(
                agent_cmd(m.conn.inventory.python, run_id, "pack"),
                unpack,
                stdin=json.dumps(request).encode(),
            )
            m.collect_skipped, m.collect_skipped_count = unpack.skipped, unpack.skipped_count
        except LeptonError as exc:
            m.collect_error = str(exc)
            raise
        except OSError as exc:
            if not collecting.disk_full(exc):
                raise
            m.collect_error = f"no space left on device: cannot create {dest}/: {exc.strerror}"
            raise NoSpace(m.collect_error) from exc
        m.bytes_collected = count
        try:
            with (dest / "state.json").open("rb") as f:  # written by the node: never read it whole
                state = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict) and (m.status is None or not m.status.terminal):
            m.status = NodeStatus.from_agent(m.name, state)

    return group.run(one, interruptible=True)


def job_seconds(group: NodeGroup) -> dict[str, float]:
    """The job's own wall time: first node's start to last node's end, as the nodes measured it."""
    starts, ends = [], []
    for m in group:
        if m.status and m.status.started and m.status.ended:
            starts.append(dt.datetime.fromisoformat(m.status.started).timestamp())
            ends.append(dt.datetime.fromisoformat(m.status.ended).timestamp())
    return {"job": round(max(ends) - min(starts), 3)} if starts else {}
