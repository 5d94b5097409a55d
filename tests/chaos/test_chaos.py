"""The bounded, seeded chaos subset that runs in `make test` (the full loop: `make chaos`).

One iteration per fault kind on a fresh two-node pool; after each, the invariants of
tests/chaos/chaos_harness.py must hold (the run ends succeeded with every result, or failed naming a
node; no process of the run left; every result file intact). No timing is asserted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from chaos_harness import run_chaos

from lepton_infra.local import LocalPool

SEED = 20261202


@pytest.mark.slow
def test_seeded_faults_never_break_the_run_invariants(
    local_pool_factory: Callable[[int], LocalPool], tmp_path: Path
) -> None:
    pool = local_pool_factory(2)
    report = run_chaos(
        pool,
        tmp_path,
        seed=SEED,
        faults=["kill-train", "kill-sshd", "kill-controller", "late-sshd"],
        job_s=2.0,  # a 2 s job still has a middle to hit (`make chaos`: 4 s)
        late_s=5.0,  # late enough that the first dials fail and are retried (`make chaos`: 15 s)
        log=print,
    )
    print(report.summary())
    assert report.violations == []
    assert {i.outcome for i in report.iterations} <= {"succeeded", "failed", "refused"}


@pytest.mark.slow
def test_a_hung_node_is_detected_and_the_run_fails_naming_it(
    local_pool_factory: Callable[[int], LocalPool], tmp_path: Path
) -> None:
    pool = local_pool_factory(2)
    # A 4 s heartbeat limit, as the e2e hung-node test uses: detection, not patience, is the point.
    report = run_chaos(pool, tmp_path, seed=SEED, faults=["hang"], heartbeat_s=4.0, log=print)
    print(report.summary())
    assert report.violations == []
    hung = report.iterations[0]
    assert hung.outcome == "failed" and hung.node in hung.detail, hung
