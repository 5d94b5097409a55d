"""First boot, rehearsed: each cloud's user data, exactly as its component renders it under Pulumi's
mocks, boots a real Debian machine (systemd-nspawn, cloud-init, sshd) beside emulated cloud
services; the node must come up pinned and ready, and the CIFAR-10 job must train on it through the
real CLI with its results in the cloud's store emulator. Root and systemd-nspawn needed (skips with
the reason elsewhere). Timings are printed and never asserted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lepton_infra.rehearsal import session

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
# AWS boots two nodes and runs the two-node job; GCP and Azure one node each (the whole rehearsal
# stays within a few minutes on 2 cores).
NODES = {"aws": 2, "gcp": 1, "azure": 1}
TIMINGS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", params=list(NODES))
def booted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[session.Rehearsal]:
    reason = session.unavailable()
    if reason is not None:
        pytest.skip(reason)
    cloud = request.param
    with session.rehearsal(
        cloud, NODES[cloud], REPO_ROOT / ".lepton", tmp_path_factory.mktemp(f"rh-{cloud}")
    ) as r:
        TIMINGS[cloud] = {"boot_to_ssh_s": max(r.ssh_ready_s)}
        print(
            f"\n[rehearsal {cloud}] boot -> SSH ready (pinned key): {[round(s, 1) for s in r.ssh_ready_s]} s"
        )
        yield r


def test_first_boot_installs_the_pinned_key_user_watchdog_and_clients(booted: session.Rehearsal) -> None:
    from lepton_infra.rehearsal.checks import first_boot_findings

    with ThreadPoolExecutor() as pool:  # the nodes boot together; check them together
        per_node = list(pool.map(lambda k: first_boot_findings(booted, k), range(len(booted.machines))))
    findings = [f for found in per_node for f in found]
    reads = [c for c in booted.services.calls if c["kind"] == "secret-read"]
    assert sorted(c["node"] for c in reads) == list(range(len(booted.machines))), reads
    assert not findings, "\n".join(findings)


def test_the_cifar_job_trains_on_the_booted_nodes_and_its_results_reach_the_store(
    booted: session.Rehearsal, tmp_path: Path
) -> None:
    from lepton_infra.data import open_store
    from lepton_infra.rehearsal.run import run_cifar

    run_id = f"rehearsal-{booted.cloud}-{int(time.time())}"
    job = run_cifar(booted, tmp_path / "runs", run_id)
    assert job.returncode == 0, job.output[-4000:]
    record = json.loads((tmp_path / "runs" / run_id / "run.json").read_text())
    assert record["status"] == "succeeded", record
    metrics = tmp_path / "runs" / run_id / "node-0" / "output" / "metrics.json"  # rank 0 writes them
    assert json.loads(metrics.read_text())["epochs"], metrics.read_text()
    for node in record["nodes"]:
        assert node.get("store_url"), f"{node['name']} did not store its results: {node}"
    import os

    os.environ.update(booted.host_env)
    store = open_store(booted.material["inventory"]["store"])
    stored = [o.key for o in store.list(f"runs/{run_id}/")]
    assert any(key.endswith("metrics.json") for key in stored), stored
    if job.first_step is not None:
        TIMINGS[booted.cloud]["boot_to_first_step_s"] = max(booted.ssh_ready_s) + job.first_step - job.started
    print(f"\n[rehearsal {booted.cloud}] timings: {TIMINGS[booted.cloud]}")


def test_a_node_booted_again_serves_its_pinned_key_without_fetching_it_again(
    booted: session.Rehearsal,
) -> None:
    def reads() -> list[dict]:
        return [c for c in booted.services.calls if c["kind"] == "secret-read"]

    before = reads()
    seconds = booted.restart(0)  # a stopped/deallocated node started again: bootcmd runs again
    print(f"\n[rehearsal {booted.cloud}] second boot -> SSH ready (pinned key): {seconds:.1f} s")
    assert reads() == before, "the second boot fetched the host key again although it was in place"
    m = booted.machines[0]
    assert m.run("systemctl is-enabled lepton-watchdog.timer").stdout.strip() == "enabled"


def test_the_watchdog_stops_the_node_through_the_cloud(booted: session.Rehearsal) -> None:
    from lepton_infra.rehearsal.checks import trip_watchdog

    findings = trip_watchdog(booted, len(booted.machines) - 1)
    assert not findings, "\n".join(findings)
