"""Unit tests of what the workload layer derives from user input: run ids, the entrypoint from
lepton.toml, the torchrun command, the LEPTON_* environment, rendezvous ports, progress lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory
from lepton_infra.workload import jobspec
from lepton_infra.workload.runner import run_status_of

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _inventory(cloud: str = "local", n: int = 3) -> Inventory:
    nodes = [
        {
            "name": f"node-{k}",
            "host": f"127.0.0.{k + 2}",
            "port": 2222,
            "private_ip": f"10.0.0.{k + 5}",
            "host_key": KEY,
        }
        for k in range(n)
    ]
    return Inventory.from_dict(
        {
            "version": 1,
            "cluster": "c",
            "cloud": cloud,
            "user": "u",
            "python": "/opt/py/bin/python",
            "nodes": nodes,
        }
    )


def test_default_run_ids_are_timestamp_plus_random_suffix_and_valid() -> None:
    ids = {jobspec.new_run_id() for _ in range(20)}
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", i) and jobspec.check_run_id(i) == i for i in ids)
    assert len(ids) > 1  # same second, different random suffixes


@pytest.mark.parametrize("good", ["a", "run-1", "R_2.x", "9" * 64])
def test_valid_run_ids_are_accepted(good: str) -> None:
    assert jobspec.check_run_id(good) == good


@pytest.mark.parametrize("bad", ["", "-x", ".hidden", "a/b", "a b", "x" * 65, "../etc", "é"])
def test_invalid_run_ids_are_refused_naming_the_value_and_the_rule(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        jobspec.check_run_id(bad)
    assert repr(bad) in str(err.value)
    assert "letters, digits" in str(err.value)


def test_entrypoint_defaults_to_train_py(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    assert jobspec.read_entrypoint(tmp_path) == "train.py"


def test_lepton_toml_names_another_entrypoint(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print(1)\n")
    (tmp_path / "lepton.toml").write_text('entrypoint = "src/main.py"\n')
    assert jobspec.read_entrypoint(tmp_path) == "src/main.py"


def test_missing_workload_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        jobspec.read_entrypoint(tmp_path / "nope")


def test_workload_without_entrypoint_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text("")
    with pytest.raises(ConfigError, match="no entrypoint 'train.py'"):
        jobspec.read_entrypoint(tmp_path)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("entrypoint = 3\n", "'entrypoint' must be a string"),
        ('entrypoint = "/abs.py"\n', "relative path"),
        ('entrypoint = "../up.py"\n', "relative path"),
        ('entrypoint = "missing.py"\n', "no entrypoint 'missing.py'"),
        ('entry = "x.py"\n', "unknown key\\(s\\) entry"),
        ("entrypoint = \n", "not valid TOML"),
    ],
)
def test_bad_lepton_toml_is_a_config_error_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "train.py").write_text("")
    (tmp_path / "lepton.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        jobspec.read_entrypoint(tmp_path)


def test_torchrun_command_has_static_rendezvous_timeout_and_no_restarts() -> None:
    argv = jobspec.torchrun_argv(
        python="/py",
        nnodes=3,
        node_rank=2,
        nproc_per_node=4,
        master_addr="10.0.0.5",
        master_port=23456,
        entrypoint="train.py",
        args=["--epochs", "1"],
    )
    assert argv[:3] == ["/py", "-m", "torch.distributed.run"]
    flags = dict(zip(argv[3:-3:2], argv[4:-3:2], strict=True))
    assert flags == {
        "--nnodes": "3",
        "--node-rank": "2",
        "--nproc-per-node": "4",
        "--master-addr": "10.0.0.5",
        "--master-port": "23456",
        "--rdzv-conf": f"timeout={jobspec.RDZV_TIMEOUT_S}",
        "--max-restarts": "0",
    }
    assert argv[-3:] == ["train.py", "--epochs", "1"]


def test_node_env_carries_the_lepton_contract() -> None:
    inv = _inventory("aws")
    env = jobspec.node_env(
        inv, rank=1, run_id="r1", output_dir="/h/out", nproc_per_node=2, extra={"FOO": "bar"}
    )
    assert env == {
        "FOO": "bar",
        "LEPTON_RUN_ID": "r1",
        "LEPTON_NODE_RANK": "1",
        "LEPTON_NUM_NODES": "3",
        "LEPTON_NODE_NAME": "node-1",
        "LEPTON_NODE_IPS": "10.0.0.5,10.0.0.6,10.0.0.7",
        "LEPTON_OUTPUT_DIR": "/h/out",
        "PYTHONUNBUFFERED": "1",
    }


def test_local_pool_nodes_share_the_cores_and_use_loopback_for_gloo() -> None:
    env = jobspec.node_env(
        _inventory("local"), rank=0, run_id="r", output_dir="/o", nproc_per_node=1, cpu_count=8
    )
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["OMP_NUM_THREADS"] == "2"  # 8 cores / (3 nodes x 1 process)
    env = jobspec.node_env(
        _inventory("local"), rank=0, run_id="r", output_dir="/o", nproc_per_node=2, cpu_count=2
    )
    assert env["OMP_NUM_THREADS"] == "1"


def test_user_env_cannot_override_lepton_variables() -> None:
    with pytest.raises(ConfigError, match="LEPTON_RUN_ID"):
        jobspec.check_env({"LEPTON_RUN_ID": "x"})
    with pytest.raises(ConfigError, match="'1BAD'"):
        jobspec.check_env({"1BAD": "x"})
    assert jobspec.check_env({"A_B": "c"}) == {"A_B": "c"}


def test_args_must_be_a_list_of_strings() -> None:
    with pytest.raises(ConfigError, match="single string"):
        jobspec.check_args("--epochs 1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"args\[1\]"):
        jobspec.check_args(["--epochs", 1])  # type: ignore[list-item]
    assert jobspec.check_args(("a", "b")) == ["a", "b"]


@pytest.mark.parametrize("bad", [0, -1, True, "2"])
def test_nproc_per_node_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ConfigError, match="nproc_per_node"):
        jobspec.check_nproc(bad)  # type: ignore[arg-type]


def test_master_port_is_stable_per_run_and_spread_over_the_range() -> None:
    assert jobspec.master_port_for("abc") == jobspec.master_port_for("abc")
    ports = {jobspec.master_port_for(f"run-{i}") for i in range(200)}
    assert all(jobspec.PORT_BASE <= p < jobspec.PORT_BASE + jobspec.PORT_SPAN for p in ports)
    assert len(ports) > 190  # two runs on one pool almost never start from the same port


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'LEPTON_PROGRESS {"epoch": 1, "epochs": 2, "step": 5, "steps": 10, "loss": 0.5}',
            {"epoch": 1, "epochs": 2, "step": 5, "steps": 10, "loss": 0.5},
        ),
        ('[default0]:LEPTON_PROGRESS {"step": 1}', {"step": 1}),
        ("LEPTON_PROGRESS not json", None),
        ("LEPTON_PROGRESS [1, 2]", None),
        ('XLEPTON_PROGRESS {"step": 1}', None),
        ('LEPTON_PROGRESS{"step": 1}', None),
        ("epoch 1 loss 0.5", None),
        # malformed progress is a plain line, never a crash further down
        ('LEPTON_PROGRESS {"epoch": "one", "epochs": 2}', None),
        ('LEPTON_PROGRESS {"epoch": 1.5, "epochs": 2}', None),
        ('LEPTON_PROGRESS {"epoch": true}', None),
        ('LEPTON_PROGRESS {"step": -1}', None),
        ('LEPTON_PROGRESS {"step": 1e400}', None),
        ('LEPTON_PROGRESS {"steps": 10000000000000000000000}', None),
        ('LEPTON_PROGRESS {"loss": NaN}', None),
        ('LEPTON_PROGRESS {"loss": "low"}', None),
        ('LEPTON_PROGRESS {"epoch": 3, "epochs": 2}', None),
        ("LEPTON_PROGRESS " + "[" * 100000 + "]" * 100000, None),
        (
            'LEPTON_PROGRESS {"step": 1, "note": "[bold]x[/]", "nested": {"a": 1}}',
            {"step": 1, "note": "[bold]x[/]"},
        ),
    ],
)
def test_progress_lines_are_parsed_and_other_lines_are_not(line: str, expected: object) -> None:
    assert jobspec.parse_progress(line) == expected


@pytest.mark.parametrize(
    ("states", "status"),
    [
        (["succeeded", "succeeded"], "succeeded"),
        (["succeeded", "running"], "running"),
        (["failed", "cancelled"], "failed"),
        (["lost", "succeeded"], "failed"),
        (["cancelled", "cancelled"], "cancelled"),
        (["succeeded", "unknown"], "failed"),
        (["failed", "running"], "running"),
    ],
)
def test_run_status_follows_the_worst_node(states: list[str], status: str) -> None:
    assert run_status_of(states) == status
