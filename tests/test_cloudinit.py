"""cloud-init user data (parsed as YAML, part by part) and the node watchdog script, which runs for
real here against a temporary runs folder, a fake uptime and a stand-in poweroff command."""

from __future__ import annotations

import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pulumi_harness as harness  # noqa: I001  (mocks before components)
import pytest
import yaml

from lepton_infra.components.cloudinit import (
    BootFile,
    CloudBoot,
    host_key_install_script,
    render_cloud_init,
    watchdog_script,
)

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 it's me"
HOST_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTests0000000000000000000000x\n"
FETCH = "secret-store-cli get node-0-host-key"


def rendered_text(boot: CloudBoot | None = None) -> str:
    return render_cloud_init(
        user="lepton",
        authorized_key=PUBKEY,
        host_public_key=HOST_PUB,
        host_key_fetch=FETCH,
        idle_shutdown_minutes=30,
        max_lifetime_hours=12,
        cluster="dev",
        boot=boot,
    )


def rendered() -> dict:
    text = rendered_text()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_user_key_and_pinned_host_key_are_installed_and_passwords_are_off() -> None:
    doc = rendered()
    (user,) = doc["users"]
    assert user["name"] == "lepton" and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == [PUBKEY]  # a quote in the comment survives YAML quoting
    assert doc["ssh_pwauth"] is False and doc["disable_root"] is True
    # bootcmd installs the fetched key; cloud-init's ssh module then keeps it and generates none.
    assert doc["ssh_deletekeys"] is False and doc["ssh_genkeytypes"] == ["ed25519"]
    assert "ssh_keys" not in doc and "PRIVATE KEY" not in rendered_text()
    (install,) = doc["bootcmd"]
    assert FETCH in install and shlex.quote(HOST_PUB.strip()) in install
    files = {f["path"]: f for f in doc["write_files"]}
    assert "PasswordAuthentication no" in files["/etc/ssh/sshd_config.d/50-lepton.conf"]["content"]
    assert "OnUnitActiveSec=1min" in files["/etc/systemd/system/lepton-watchdog.timer"]["content"]
    assert files["/usr/local/sbin/lepton-watchdog"]["permissions"] == "0755"
    assert ["systemctl", "enable", "--now", "lepton-watchdog.timer"] in doc["runcmd"]


def test_watchdog_script_is_valid_bash_with_the_limits_baked_in(tmp_path: Path) -> None:
    script = tmp_path / "watchdog"
    script.write_text(watchdog_script("lepton", 30, 12))
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert (
        'IDLE_MINUTES="${LEPTON_IDLE_MINUTES:-30}"' in text
        and 'LIFETIME_HOURS="${LEPTON_LIFETIME_HOURS:-12}"' in text
    )
    assert "/home/lepton/.lepton/runs" in text


BOOT = 1_700_000_000  # wall-clock time of the simulated boot; uptime = now - BOOT unless rebooted


def run_watchdog(
    tmp_path: Path, *, minutes: float, boot: int = BOOT, idle: int = 30, lifetime: int = 12
) -> tuple[str, bool]:
    """One tick of the real script, `minutes` after `boot`: what it printed and whether it called
    the (stand-in) poweroff command."""
    script = tmp_path / "watchdog"
    script.write_text(watchdog_script("lepton", idle, lifetime))
    marker = tmp_path / "powered-off"
    marker.unlink(missing_ok=True)
    uptime_s = int(minutes * 60)
    (tmp_path / "uptime").write_text(f"{uptime_s}.42 1234.00\n")
    env = {
        **os.environ,
        "LEPTON_RUNS_DIR": str(tmp_path / "runs"),
        "LEPTON_WATCHDOG_STATE": str(tmp_path / "state"),
        "LEPTON_UPTIME_FILE": str(tmp_path / "uptime"),
        "LEPTON_POWEROFF": f"touch {marker}",
        "LEPTON_NOW": str(boot + uptime_s),
    }
    out = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip(), marker.exists()


@contextmanager
def job(argv: list[str], cwd: Path) -> Iterator[None]:
    """A live process standing in for a training job (Popen returns after exec: cwd and argv are set)."""
    proc = subprocess.Popen(argv, cwd=cwd)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@needs_bash
def test_watchdog_powers_off_after_idle_time_but_not_while_a_job_runs(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1" / "workload"
    run_dir.mkdir(parents=True)
    assert run_watchdog(tmp_path, minutes=1) == ("active", False)  # first tick starts the idle clock
    assert run_watchdog(tmp_path, minutes=30) == ("waiting", False)  # 29 idle minutes: not yet
    with job(["sleep", "30"], cwd=run_dir):
        assert run_watchdog(tmp_path, minutes=45) == ("active", False)  # 44 minutes, but a job runs
    assert run_watchdog(tmp_path, minutes=60) == ("waiting", False)  # the idle clock restarted at 45
    assert run_watchdog(tmp_path, minutes=75) == ("idle", True)  # 30 idle minutes since the job


@needs_bash
def test_a_job_is_also_recognised_by_a_command_line_under_the_runs_folder(tmp_path: Path) -> None:
    agent = tmp_path / "runs" / "run-1" / ".agent" / "agent.py"
    agent.parent.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert run_watchdog(tmp_path, minutes=1) == ("active", False)
    # The run's supervisor: started from the login directory, its script path names the run.
    supervisor = [sys.executable, "-c", "import time; time.sleep(30)", str(agent), "supervise"]
    with job(supervisor, cwd=tmp_path / "elsewhere"):
        assert run_watchdog(tmp_path, minutes=120) == ("active", False)
    # A process elsewhere, naming another folder, is no job.
    with job([sys.executable, "-c", "import time; time.sleep(30)", str(tmp_path / "runsx")], cwd=tmp_path):
        assert run_watchdog(tmp_path, minutes=150) == ("idle", True)


@needs_bash
def test_watchdog_enforces_the_lifetime_even_while_a_job_runs(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    with job(["sleep", "30"], cwd=run_dir):
        assert run_watchdog(tmp_path, minutes=12 * 60 - 1) == ("active", False)
        assert run_watchdog(tmp_path, minutes=12 * 60) == ("lifetime", True)


@needs_bash
def test_idle_zero_disables_the_idle_rule_but_not_the_lifetime(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    run_watchdog(tmp_path, minutes=1, idle=0)
    assert run_watchdog(tmp_path, minutes=11 * 60, idle=0) == ("waiting", False)
    assert run_watchdog(tmp_path, minutes=12 * 60, idle=0) == ("lifetime", True)


@needs_bash
def test_a_node_started_again_is_not_powered_off_for_idleness_from_its_previous_boot(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    assert run_watchdog(tmp_path, minutes=1) == ("active", False)
    assert run_watchdog(tmp_path, minutes=31) == ("idle", True)  # powered off (stopped) after 30 min
    # A day later someone starts the stopped VM: the state folder survived, the idle clock must not.
    next_boot = BOOT + 24 * 3600
    assert run_watchdog(tmp_path, minutes=1, boot=next_boot) == ("active", False)
    assert run_watchdog(tmp_path, minutes=20, boot=next_boot) == ("waiting", False)
    assert run_watchdog(tmp_path, minutes=31, boot=next_boot) == ("idle", True)


@needs_bash
def test_an_unreadable_idle_mark_restarts_the_idle_clock_instead_of_breaking_the_watchdog(
    tmp_path: Path,
) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "last_active").write_text("")  # e.g. a full disk during the last write
    assert run_watchdog(tmp_path, minutes=40) == ("active", False)
    assert run_watchdog(tmp_path, minutes=70) == ("idle", True)


CLOUD_BOOT = CloudBoot(
    files=(BootFile("/etc/default/instance_configs.cfg", "[InstanceSetup]\nset_host_keys = false\n"),),
    bootcmd=("echo early > /run/lepton-early",),
    runcmd=("echo late > /run/lepton-late",),
)


def test_a_clouds_own_files_and_commands_join_the_common_ones_in_order() -> None:
    doc = yaml.safe_load(rendered_text(CLOUD_BOOT))
    early, install = doc["bootcmd"]
    assert early.strip() == "echo early > /run/lepton-early" and FETCH in install  # cloud's first
    files = {f["path"]: f for f in doc["write_files"]}
    assert files["/etc/default/instance_configs.cfg"]["content"] == "[InstanceSetup]\nset_host_keys = false\n"
    assert files["/etc/default/instance_configs.cfg"]["permissions"] == "0644"
    assert doc["runcmd"][-1].strip() == "echo late > /run/lepton-late"
    assert doc["runcmd"][:3] == rendered()["runcmd"]


def test_key_material_is_refused_in_the_fetch_and_in_a_clouds_files() -> None:
    with pytest.raises(ValueError, match="fetch the key"):
        host_key_install_script("echo '-----BEGIN OPENSSH PRIVATE KEY-----'", HOST_PUB)
    leaky = CloudBoot(files=(BootFile("/etc/x", "-----BEGIN RSA PRIVATE KEY-----\n"),))
    with pytest.raises(ValueError, match="must not hold a private key"):
        rendered_text(leaky)


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs the cloud-init package")
@pytest.mark.parametrize(
    "boot", [None, CLOUD_BOOT, "aws"], ids=["common", "with-cloud-additions", "aws-fetch"]
)
def test_cloud_init_accepts_the_document_under_its_own_schema(
    tmp_path: Path, boot: CloudBoot | str | None
) -> None:
    doc = tmp_path / "user-data.yaml"
    if boot == "aws":  # the real AWS fetcher: a here-document of Python inside bootcmd
        from lepton_infra.components.aws import host_key_fetch

        arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:demo-hostkeys-0-AbCdEf"
        text = render_cloud_init(
            user="lepton",
            authorized_key=PUBKEY,
            host_public_key=HOST_PUB,
            host_key_fetch=host_key_fetch(arn),
            idle_shutdown_minutes=30,
            max_lifetime_hours=12,
            cluster="dev",
        )
        (install,) = yaml.safe_load(text)["bootcmd"]
        assert "import hmac" in install and install.rstrip().endswith("fi")
        doc.write_text(text)
    else:
        doc.write_text(rendered_text(boot if isinstance(boot, CloudBoot) else None))
    out = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(doc)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Valid cloud-config" in out.stdout


FIXTURE = Path(__file__).parent / "fixtures" / "import_components"


def build_fixture_program() -> tuple[dict, harness.Recorder]:
    def run() -> dict:
        ns = runpy.run_path(str(FIXTURE / "__main__.py"), run_name="__main__")
        return {"store": ns["datasets"].url, "queue": ns["sweeps"].url, "dlq": ns["sweeps"].dead_letter_url}

    return harness.build(run)


def test_a_separate_program_can_import_just_a_store_and_a_queue() -> None:
    out, rec = build_fixture_program()
    assert out["store"].startswith("s3://") and out["queue"] != out["dlq"]
    assert not rec.of("aws:ec2/instance:Instance") and not rec.of("tls:index/privateKey:PrivateKey")
    assert not [r for r in rec.resources if r.type.startswith(("gcp:", "azure-native:"))]
    (bucket,) = rec.of("aws:s3/bucket:Bucket")
    assert bucket.inputs["tags"] == {
        "team": "ml-platform",
        "lepton:cluster": "datasets",
        "lepton:env": "test",
    }
    assert bucket.inputs["region"] == "us-east-1"
    (lifecycle,) = rec.of("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert lifecycle.inputs["rules"][0]["expiration"] == {"days": 30}  # the program's retention_days
    (main_queue,) = [q for q in rec.of("aws:sqs/queue:Queue") if "redrivePolicy" in q.inputs]
    (dead_letter,) = [q for q in rec.of("aws:sqs/queue:Queue") if "redrivePolicy" not in q.inputs]
    assert main_queue.inputs["visibilityTimeoutSeconds"] == 900
    redrive = json.loads(main_queue.inputs["redrivePolicy"])
    assert redrive["maxReceiveCount"] == 3 and redrive["deadLetterTargetArn"].endswith(
        dead_letter.outputs["name"]
    )
    assert out["dlq"].endswith(dead_letter.outputs["name"])
    assert {r.type for r in rec.resources} >= {"lepton:storage:ObjectStore", "lepton:queue:JobQueue"}


def test_the_separate_program_passes_every_mandatory_policy_rule() -> None:
    policy_harness = pytest.importorskip("policy_harness")
    _, rec = build_fixture_program()
    records = [policy_harness.Recorded(r.type, r.name, r.inputs, None, r.id) for r in rec.resources]
    assert policy_harness.mandatory(policy_harness.analyze(records)) == []


def test_the_separate_program_is_a_pulumi_project_of_its_own() -> None:
    project = yaml.safe_load((FIXTURE / "Pulumi.yaml").read_text())
    assert project["name"] == "data-platform" and project["runtime"]["name"] == "python"
    venv = (FIXTURE / project["runtime"]["options"]["virtualenv"]).resolve()
    assert venv == (Path(__file__).parent.parent / ".venv").resolve()  # where lepton-infra is installed
    stack = yaml.safe_load((FIXTURE / "Pulumi.dev.yaml").read_text())
    assert stack["config"]["aws:region"] == "us-east-1"
