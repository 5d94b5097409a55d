"""The commands the controller sends to a node, and how their answers are read.

Three node-side programs exist, all standard library only (a node has no `lepton_infra`):
`node/bootstrap/` (one bundle of modules, see `lepton_infra.node.bundle`) and `node/preflight.py`,
sent inline as `python -c SOURCE` because they must work before anything was shipped (preflight,
prepare, receive), and the agent (`node/agent*.py`, one zip: `lepton_infra.node.agent_program`),
shipped with each run into `~/.lepton/runs/<run-id>/.agent/` (launch, status, wait, cancel, pack).
Each answers one JSON object on
the last line of stdout."""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

from lepton_infra.errors import NodeError
from lepton_infra.node import agent_program, bundle, source
from lepton_infra.workload.ssh import NodeConnection

_BOOTSTRAP = bundle("bootstrap", "lepton_bootstrap")
BOOTSTRAP_SOURCE = _BOOTSTRAP.source
BOOTSTRAP_MODULE = _BOOTSTRAP.name
PREFLIGHT_SOURCE = source("preflight.py")
AGENT_SOURCE = agent_program()  # one zip of the agent's modules, run as `python agent.py ...`
AGENT_DIGEST = hashlib.sha256(AGENT_SOURCE).hexdigest()
# Sent inside the launch spec (one bundle of node/upload/); the agent runs it when the job ends
# (results to the store) and writes it beside the run for the job's `fetch`.
UPLOADER_SOURCE = bundle("upload", "lepton_upload").source
NO_SUCH_RUN = "no such run on this node"


def remote_run_dir(run_id: str) -> str:
    """The run's folder on a node, as a shell word (`$HOME` expands on the node)."""
    return '"$HOME"/.lepton/runs/' + shlex.quote(run_id)


_BOOTSTRAP_STUB = f"import sys; sys.path.insert(0, sys.argv.pop(1)); from {BOOTSTRAP_MODULE} import main; sys.exit(main(sys.argv))"


def bootstrap_cmd(python: str, *args: str) -> str:
    """The bootstrap on the node, one command either way: once `prepare` has installed this
    version as the package ~/.lepton/bin/<BOOTSTRAP_MODULE>/ (its name is the digest of all its
    modules), it is imported from there (bytecode cached, nothing to compile); before that, the
    whole bundle goes inline. `-S`: it is standard library only, so the interpreter skips
    site-packages and their .pth files (a tenth of a second each start on a loaded node)."""
    py, rest = shlex.quote(python), " ".join(map(shlex.quote, args))
    return (
        f'D="$HOME"/.lepton/bin; if [ -f "$D/{BOOTSTRAP_MODULE}/__init__.py" ]; '
        f'then exec {py} -S -c {shlex.quote(_BOOTSTRAP_STUB)} "$D" {rest}; '
        f"else exec {py} -S -c {shlex.quote(BOOTSTRAP_SOURCE)} {rest}; fi"
    )


def bootstrap_install() -> dict[str, str]:
    """Asks `prepare` to install this bootstrap version (see bootstrap_cmd). The inline bundle
    installs itself from the sources it carries: nothing more is sent."""
    return {"name": BOOTSTRAP_MODULE}


CANCELLED_WHILE_SHIPPING = "cancelled while shipping"


def inline_cmd(python: str, source: str, *args: str) -> str:
    """`python -c SOURCE ARGS...`: node-side code that must run before anything was shipped."""
    return " ".join([shlex.quote(python), "-c", shlex.quote(source), *map(shlex.quote, args)])


def agent_cmd(python: str, run_id: str, verb: str) -> str:
    """The agent shipped with the run; a node without the run answers 'unknown' instead of failing.

    A run exists on a node from `prepare` on (its folder), before the agent has arrived: then
    `status` says it is being shipped, and `cancel` leaves the marker that makes the controller
    stop shipping and any later launch refuse, and records the run as cancelled. `-S`: the agent
    is standard library only, and site-packages (.pth files, editable finders) cost ~25 ms a
    start here; launch, wait and collect each start it."""
    missing = json.dumps({"state": "unknown", "detail": NO_SUCH_RUN})
    before_agent = f"echo {shlex.quote(missing)}"
    if verb == "status":
        before_agent = (
            'if [ -f "$R/state.json" ]; then '
            'printf \'{"state": "cancelled", "detail": "%s", "run_dir": "%s"}\\n\' '
            f'{shlex.quote(CANCELLED_WHILE_SHIPPING)} "$R"; '
            'else printf \'{"state": "preparing", "detail": "being shipped", "run_dir": "%s"}\\n\' "$R"; fi'
        )
    elif verb == "cancel":
        state = json.dumps({"state": "cancelled", "detail": CANCELLED_WHILE_SHIPPING, "exit_code": None})
        before_agent = (
            'date +%s > "$R/cancel"; '
            f'[ -f "$R/state.json" ] || printf %s {shlex.quote(state)} > "$R/state.json"; '
            'printf \'{"state": "cancelled", "detail": "%s", "run_dir": "%s"}\\n\' '
            f'{shlex.quote(CANCELLED_WHILE_SHIPPING)} "$R"'
        )
    return (
        f'R={remote_run_dir(run_id)}; if [ -f "$R/.agent/agent.py" ]; then '
        f'exec {shlex.quote(python)} -S "$R/.agent/agent.py" {verb} "$R"; '
        f'elif [ -d "$R" ]; then {before_agent}; '
        f"else echo {shlex.quote(missing)}; fi"
    )


def json_answer(conn: NodeConnection, data: bytes, what: str) -> dict[str, Any]:
    """The JSON object a node-side program printed last. NodeError naming the node otherwise."""
    try:
        # Login shells may print banners first: the program's answer is the last line.
        value = json.loads(data.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise NodeError(conn.name, f"unreadable answer from {what}: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise NodeError(conn.name, f"unexpected answer from {what}: {value!r}")
    return value


def agent(conn: NodeConnection, run_id: str, verb: str, *, stdin: bytes | None = None) -> dict[str, Any]:
    """Run one agent verb (launch, status, cancel) on the node and return its answer."""
    result = conn.run(agent_cmd(conn.inventory.python, run_id, verb), stdin=stdin)
    return json_answer(conn, result.stdout, f"agent {verb}")
