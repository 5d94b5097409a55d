"""The CLI as a user meets it: a real `lepton-infra` process, its exit code and its message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "lepton_infra.cli"]


def lepton(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def _workload(tmp_path: Path) -> Path:
    workload = tmp_path / "job"
    workload.mkdir()
    (workload / "train.py").write_text("print('hi')\n")
    return workload


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        (json.dumps({"version": 7, "nodes": []}), "field 'version' is 7"),
        (
            json.dumps(
                {
                    "version": 1,
                    "cluster": "c",
                    "cloud": "local",
                    "user": "u",
                    "nodes": [
                        {
                            "name": "n",
                            "host": "127.0.0.2",
                            "private_ip": "127.0.0.2",
                            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAPRfoDvPXhjB/H1PTfXEsTKSjb51aCFhVbS0jJoDBX3",
                        },
                        {
                            "name": "n",
                            "host": "127.0.0.3",
                            "private_ip": "127.0.0.3",
                            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAPRfoDvPXhjB/H1PTfXEsTKSjb51aCFhVbS0jJoDBX3",
                        },
                    ],
                }
            ),
            "duplicate node name 'n'",
        ),
    ],
    ids=["missing", "not-json", "unknown-version", "duplicate-names"],
)
def test_bad_inventory_exits_2_naming_the_problem(tmp_path: Path, content: str | None, expected: str) -> None:
    inventory = tmp_path / "inventory.json"
    if content is not None:
        inventory.write_text(content)
    result = lepton("run", str(_workload(tmp_path)), "--inventory", str(inventory))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_2_before_anything_is_contacted(tmp_path: Path) -> None:
    workload = _workload(tmp_path)
    bad_run_id = lepton("run", str(workload), "--inventory", "x.json", "--run-id", "../escape")
    assert bad_run_id.returncode == 2
    assert "--run-id '../escape'" in bad_run_id.stderr
    bad_nproc = lepton("run", str(workload), "--inventory", "x.json", "--nproc-per-node", "0")
    assert bad_nproc.returncode == 2
    assert "--nproc-per-node" in bad_nproc.stderr
    not_a_number = lepton("run", str(workload), "--connect-timeout", "soon")
    assert not_a_number.returncode == 2
    assert "connect-timeout" in not_a_number.stderr


def test_catalog_lists_every_cloud_and_filters_as_json() -> None:
    table = lepton("catalog")
    assert table.returncode == 0, table.stderr
    for word in ("aws", "gcp", "azure", "g4dn.xlarge", "H100"):
        assert word in table.stdout
    filtered = lepton("catalog", "--accelerator", "T4", "--cloud", "gcp", "--json")
    rows = json.loads(filtered.stdout)
    assert rows and all(r["cloud"] == "gcp" and r["accelerator"] == "T4" for r in rows)


def test_catalog_unknown_accelerator_exits_2_listing_choices() -> None:
    result = lepton("catalog", "--accelerator", "V100")
    assert result.returncode == 2
    assert "V100" in result.stderr and "H100" in result.stderr


def test_inventory_without_pulumi_cli_says_what_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "inventory", "--stack", "dev-aws"],
        capture_output=True,
        text=True,
        env={"PATH": "/nonexistent", "HOME": str(tmp_path)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Pulumi CLI is not on PATH" in result.stderr


def test_catalog_json_with_no_match_exits_2_as_the_table_does() -> None:
    for extra in ([], ["--json"]):
        result = lepton("catalog", "--accelerator", "T4", "--cloud", "aws", "--gpus", "3", *extra)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "no catalog entry matches" in result.stderr
        assert result.stdout == ""


def test_runs_lists_nothing_and_latest_run_commands_say_where_they_looked(tmp_path: Path) -> None:
    listed = lepton("runs", "--runs-dir", str(tmp_path / "runs"), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["runs"] == []
    for command in ("status", "logs", "attach"):
        result = lepton(
            command, "--runs-dir", str(tmp_path / "runs"), "--inventory", str(tmp_path / "x.json")
        )
        assert result.returncode == 2, (command, result.stderr)
        assert f"no runs in {tmp_path / 'runs'}/" in result.stderr


def test_runs_since_keeps_recent_runs_and_sums_their_cost(tmp_path: Path) -> None:
    import datetime as dt

    def record(run_id: str, days_ago: float, cost: dict | None, status: str = "succeeded") -> None:
        created = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)).isoformat(timespec="seconds")
        doc = {
            "run_id": run_id,
            "cluster": "c",
            "cloud": "aws",
            "status": status,
            "created": created,
            "cost": cost,
        }
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        (tmp_path / "runs" / run_id / "run.json").write_text(json.dumps(doc))

    spot = {"usd_per_node_hour": 1.0, "market": "spot", "nodes": 2, "final": True}
    record("old", 10, {**spot, "usd": 100.0, "hours": 50.0})
    record("done", 2, {**spot, "usd": 1.5, "hours": 0.75})
    record("unpriced", 1, None)
    # Running for an hour on 2 nodes at $1/h: about $2 so far, whatever was recorded at launch.
    record("live", 1 / 24, {**spot, "usd": 0.0, "hours": 0.0, "final": False}, status="running")
    out = lepton("runs", "--since", "7d", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shape = json.loads(out.stdout)
    assert sorted(r["run_id"] for r in shape["runs"]) == ["done", "live", "unpriced"]
    assert shape["total_usd"] == pytest.approx(3.5, abs=0.01) and shape["runs_without_price"] == 1
    table = lepton("runs", "--since", "7d", cwd=tmp_path)
    assert "$1.50 (spot)" in table.stdout and "so far" in table.stdout
    assert "total cost of 3 run(s): $3.50" in table.stdout and "(1 without a price" in table.stdout
    bad = lepton("runs", "--since", "lately", cwd=tmp_path)
    assert bad.returncode == 2 and "--since 'lately' is not a duration" in bad.stderr


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["sweep", "run", "wl"], "sweep run"),
        (["sweep", "wl", "--grid", "lr=0.1"], "sweep run"),  # the form of every earlier version
        (["sweep", "-i", "inv.json", "wl"], "sweep run"),
        (["sweep", "status", "s1"], "sweep status"),
        (["sweep", "-i", "inv.json", "status", "s1"], "sweep status"),  # options before the verb
        (["sweep", "--inventory=inv.json", "resume", "s1"], "sweep resume"),
        (["sweep", "cancel", "s1", "-i", "inv.json"], "sweep cancel"),
    ],
)
def test_sweep_sub_commands_and_the_old_single_command_form_reach_the_same_command(
    argv: list[str], command: str
) -> None:
    from typer.testing import CliRunner

    from lepton_infra.cli import app

    shown = CliRunner().invoke(app, [*argv, "--help"], prog_name="lepton-infra", env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"Usage: lepton-infra {command} [OPTIONS]" in shown.output


def test_sweep_with_no_workload_or_an_unusable_inventory_exits_2_before_anything_runs(tmp_path: Path) -> None:
    bare = lepton("sweep")
    assert bare.returncode == 2 and "Missing argument 'workload'" in bare.stderr
    for argv in (
        ["sweep", "wl"],
        ["sweep", "status", "s1"],
        ["sweep", "resume", "s1"],
        ["sweep", "cancel", "s1"],
    ):
        done = lepton(*argv, "-i", str(tmp_path / "none.json"))
        assert done.returncode == 2, (argv, done.stderr)
        assert f"inventory file '{tmp_path / 'none.json'}' does not exist" in done.stderr
