"""Results from the store: when a run's nodes are gone (powered off by the idle watchdog, reclaimed
spot capacity, a local node stopped), `collect` and `attach` fetch what each node itself uploaded to
`<store>/runs/<run-id>/<node>/` when its job ended, verified against the node's manifest."""

from __future__ import annotations

import json

from lepton_infra.data import NotCommitted, open_store
from lepton_infra.data.snapshots import latest_snapshot
from lepton_infra.inventory import Inventory
from lepton_infra.workload.models import NodeStatus
from lepton_infra.workload.record import NodeRecord, RunRecord, RunStore, run_status_of
from lepton_infra.workload.steps import results_prefix


def committed_nodes(inventory: Inventory, run_id: str) -> list[str]:
    """Nodes with committed results (or a checkpoint snapshot) for `run_id` in the inventory's store."""
    if not inventory.store:
        return []
    store = open_store(inventory.store, region=inventory.region)
    return [
        n.name
        for n in inventory.nodes
        if store.manifest(results_prefix(run_id, n.name)) is not None
        or latest_snapshot(store, results_prefix(run_id, n.name)) is not None
    ]


def fetch_from_store(inventory: Inventory, run_id: str, runs: RunStore, why: str) -> RunRecord:
    """Download every node's committed results into `runs/<run-id>/<node>/` and fold their final
    states into run.json (`collected_from: store`). A node with nothing committed is recorded as
    lost, with `why` (the reason the nodes could not be asked)."""
    assert inventory.store
    store = open_store(inventory.store, region=inventory.region)
    local_dir = runs.dir(run_id)
    record = runs.load(run_id) or RunRecord.start(run_id, inventory)
    old = {n.name: n for n in record.nodes}
    nodes = []
    for rank, node in enumerate(inventory.nodes):
        prefix = results_prefix(run_id, node.name)
        url = f"{store.url}/{prefix}"
        prev = old.get(node.name) or NodeRecord(name=node.name, host=node.host, rank=rank)
        dest = local_dir / node.name
        try:
            manifest = store.download_dir(prefix, dest)
        except NotCommitted:
            snapshot = latest_snapshot(store, prefix)
            if snapshot is not None:
                # Lost mid-run, but its last snapshot of output/ is there: take that.
                got = store.download_dir(snapshot, dest)
                nodes.append(
                    prev.model_copy(
                        update={"state": "lost", "store_url": f"{store.url}/{snapshot}",
                                "detail": f"unreachable ({why}); output/ from its last checkpoint snapshot",
                                "bytes_collected": int(got.get("bytes") or 0),  # type: ignore[call-overload]
                                "output_dir": str(dest / "output"), "collected_from": "store"}
                    )
                )  # fmt: skip
                continue
            nodes.append(
                prev.model_copy(
                    update={"state": prev.state if prev.state in ("succeeded", "failed", "cancelled") else "lost",
                            "detail": f"unreachable ({why}) and no results in {url}", "store_url": None}
                )
            )  # fmt: skip
            continue
        state = (
            json.loads((dest / "state.json").read_text(encoding="utf-8"))
            if (dest / "state.json").is_file()
            else {}
        )
        st = NodeStatus.from_agent(node.name, state)
        nodes.append(
            prev.model_copy(
                update={
                    "state": st.state, "exit_code": st.exit_code, "started": st.started, "ended": st.ended,
                    "detail": st.detail, "store_url": url, "store_error": None,
                    "bytes_collected": int(manifest.get("bytes") or 0),  # type: ignore[call-overload]
                    "output_dir": str(dest / "output"), "log_path": str(dest / "logs" / "node.log"),
                    "collected_from": "store",
                }
            )
        )  # fmt: skip
    record.nodes = nodes
    record.status = run_status_of([n.state for n in nodes])
    runs.save(record)
    return record


def store_notes(record: RunRecord | None) -> list[str]:
    """One line per node whose results came from the store rather than the node, saying so."""
    if record is None:
        return []
    return [
        f"{n.name}: read from the store ({n.store_url}): {n.detail or n.state}"
        for n in record.nodes
        if getattr(n, "collected_from", None) == "store" and n.store_url
    ]
