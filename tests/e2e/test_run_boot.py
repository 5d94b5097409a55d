"""A run started while a node is still in its first boot waits for cloud-init instead of failing
with "no torch": on a real sshd node whose PATH has a `cloud-init` that reports what a booting cloud
node reports (running in modules-final, then done; or an error, with its output log), as the
nodes' own `cloud-init status --format json` does, and whose cloud-init run dir says it ran."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lepton_infra.errors import NodeError
from lepton_infra.inventory import Inventory
from lepton_infra.local import LocalPool
from lepton_infra.local.pool import node_home
from lepton_infra.workload import run_job
from lepton_infra.workload.models import NullEvents

pytestmark = pytest.mark.slow

RUNNING = {"status": "running", "detail": "Running in stage: modules-final", "errors": []}
DONE = {"status": "done", "detail": "DataSourceEc2Local", "errors": []}
ERROR = {
    "status": "error",
    "detail": "DataSourceEc2Local",
    "errors": ["('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"],
}


def _fake_cloud_init(node_dir: Path, answers: list[dict[str, object]], *, then: str = "") -> None:
    """`cloud-init` first on the node's PATH (its ~/.bashrc, which sshd's bash reads): call k of
    `status --format json` prints answers[k] (the last one from then on); `then` is shell run when
    the last answer is reached (what the boot's final stage made, e.g. the interpreter)."""
    fake = node_dir / "fakebin"
    fake.mkdir()
    script = fake / "cloud-init"
    cases = "".join(
        f"    {k}) cat <<'EOF'\n{json.dumps(a, indent=2)}\nEOF\n    ;;\n" for k, a in enumerate(answers)
    )
    last = len(answers) - 1
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{fake}/calls" 2>/dev/null || echo 0); echo $((n + 1)) > "{fake}/calls"\n'
        f'[ "$n" -ge {last} ] && n={last}\n'
        f'if [ "$n" = {last} ]; then {then or ":"}; fi\n'
        f'case "$n" in\n{cases}esac\n'
    )
    script.chmod(0o755)
    log = node_dir / "cloud-init-output.log"
    log.write_text(
        "".join(f"boot line {i}\n" for i in range(40))
        + "lepton: pip install of boto3==1.44.8 failed after 5 tries\n"
    )
    run = node_dir / "run-cloud-init"  # cloud-init's /run dir: it has run this boot, no result yet
    run.mkdir()
    (node_dir / "home" / ".bashrc").write_text(
        f'export PATH="{fake}:$PATH" LEPTON_CLOUD_INIT_LOG="{log}" LEPTON_CLOUD_INIT_RUN="{run}"\n'
    )


def _workload(tmp_path: Path) -> Path:
    wl = tmp_path / "wl"
    wl.mkdir()
    (wl / "train.py").write_text('print("trained on a booted node", flush=True)\n')
    return wl


class _Phases(NullEvents):
    """Keeps the phase lines a user would see; ignores the rest."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_phase(self, phase: str, detail: str) -> None:
        self.seen.append((phase, detail))


def test_run_waits_for_first_boot_then_runs_with_what_the_boot_installed(
    local_pool_factory: Callable[[int], LocalPool], tmp_path: Path
) -> None:
    pool = local_pool_factory(1)
    inv = Inventory.load(pool.inventory_path)
    ndir = node_home(pool.state_dir, "node-0").parent
    # The inventory's interpreter exists only once the final stage made it (as on GCP and Azure).
    python = ndir / "opt" / "python"
    ready = tmp_path / "python-made-by-boot"
    ready.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    ready.chmod(0o755)
    make = f'mkdir -p "{python.parent}" && cp -p "{ready}" "{python}"'
    _fake_cloud_init(ndir, [RUNNING, RUNNING, DONE], then=make)
    events = _Phases()

    result = run_job(
        inv.model_copy(update={"python": str(python)}),
        _workload(tmp_path),
        run_id="booted",
        runs_dir=tmp_path / "runs",
        events=events,  # type: ignore[arg-type]
    )

    assert result.status == "succeeded"
    boot = [detail for phase, detail in events.seen if phase == "boot"]
    assert any("node-0: modules-final" in d for d in boot), events.seen  # the user saw the stage
    assert boot[-1] == "first boot finished on 1 node(s)"
    log = (tmp_path / "runs" / "booted" / "node-0" / "logs" / "node.log").read_text()
    assert "trained on a booted node" in log


def test_node_still_booting_after_the_bound_names_its_stage(
    local_pool_factory: Callable[[int], LocalPool], tmp_path: Path
) -> None:
    pool = local_pool_factory(1)
    inv = Inventory.load(pool.inventory_path)
    ndir = node_home(pool.state_dir, "node-0").parent
    _fake_cloud_init(ndir, [RUNNING])

    with pytest.raises(NodeError) as err:
        run_job(inv, _workload(tmp_path), run_id="early", runs_dir=tmp_path / "runs", boot_timeout=1)

    assert err.value.exit_code == 3
    assert "node 'node-0'" in str(err.value) and "node still booting: modules-final" in str(err.value)
    assert not (node_home(pool.state_dir, "node-0") / ".lepton" / "runs" / "early").exists()
    record = json.loads((tmp_path / "runs" / "early" / "run.json").read_text())
    assert record["status"] == "failed" and "still booting" in record["error"]


def test_failed_first_boot_reports_the_boot_log_instead_of_no_torch(
    local_pool_factory: Callable[[int], LocalPool], tmp_path: Path
) -> None:
    pool = local_pool_factory(1)
    inv = Inventory.load(pool.inventory_path)
    ndir = node_home(pool.state_dir, "node-0").parent
    _fake_cloud_init(ndir, [ERROR])
    no_torch = tmp_path / "python-no-torch"  # what a node whose install failed has
    no_torch.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    no_torch.chmod(0o755)

    with pytest.raises(NodeError) as err:
        run_job(
            inv.model_copy(update={"python": str(no_torch)}), _workload(tmp_path), runs_dir=tmp_path / "runs"
        )

    message = str(err.value)
    assert "first boot failed" in message and "no torch" not in message
    assert "scripts_user" in message  # cloud-init's own error
    assert "pip install of boto3==1.44.8 failed after 5 tries" in message  # the log's last lines
    assert "boot line 39" in message and "boot line 20" not in message  # only the tail
