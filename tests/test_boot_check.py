"""The first-boot check reads cloud-init's own state the way each release writes it, and answers
from cloud-init's files without starting cloud-init when the boot is over (the check runs before
every run)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lepton_infra.workload import boot


@pytest.mark.parametrize(
    ("answer", "state", "detail"),
    [
        ({"status": "running", "detail": "Running in stage: modules-final"}, "booting", "modules-final"),
        ({"status": "done", "extended_status": "degraded done", "errors": []}, "booted", "degraded done"),
        (
            {"status": "running", "extended_status": "error - running", "errors": ["x"]},
            "booting",
            "error - running",
        ),
        ({"status": "not run", "detail": "Cloud-init enabled on sysvinit"}, "booted", "not run"),  # 22.4
        ({"status": "not started"}, "booted", "not started"),  # 24.x
        ({"status": "disabled"}, "booted", "disabled"),
    ],
)
def test_cloud_init_statuses_of_each_release_are_read(
    answer: dict[str, object], state: str, detail: str
) -> None:
    found = boot.parse(json.dumps(answer, indent=2))
    assert (found.state, found.detail) == (state, detail)


def test_an_error_carries_cloud_inits_errors_and_only_its_log_tail() -> None:
    text = json.dumps({"status": "error", "errors": ["('scripts_user', RuntimeError('x'))"]}) + "\n"
    found = boot.parse(text + "lepton-boot-log:\nlast line\n")
    assert found.state == "failed" and "scripts_user" in found.detail and found.detail.endswith("last line")


def test_unreadable_status_counts_as_still_booting() -> None:
    assert boot.parse("Traceback (most recent call last): ...").state == "booting"


def _check(tmp_path: Path, **env: str) -> boot.BootState:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "cloud-init").write_text(
        '#!/bin/sh\necho \'{"status": "running", "detail": "Running in stage: init"}\'\n'
    )
    (fake / "cloud-init").chmod(0o755)
    full = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", **env}
    out = subprocess.run(
        ["/bin/sh", "-c", boot.BOOT_CHECK], env=full, capture_output=True, text=True, timeout=30
    )
    return boot.parse(out.stdout)


def test_a_finished_boot_is_read_from_its_result_file_without_asking_cloud_init(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert _check(tmp_path, LEPTON_CLOUD_INIT_RUN=str(run)).detail == "init"  # running: cloud-init asked
    (run / "result.json").write_text('{\n "v1": {\n  "datasource": "DataSourceEc2",\n  "errors": []\n }\n}\n')
    assert _check(tmp_path, LEPTON_CLOUD_INIT_RUN=str(run)).booted  # its own "running" never asked
    (run / "result.json").write_text('{"v1": {"errors": ["boom"]}}')
    assert not _check(tmp_path, LEPTON_CLOUD_INIT_RUN=str(run)).booted  # errors: ask cloud-init
    assert _check(tmp_path, LEPTON_CLOUD_INIT_RUN=str(tmp_path / "none")).detail == "not run"
