"""Has each node finished its first boot? A cloud node answers SSH while cloud-init is still
installing torch or the data plane's clients (its final stage), so a run started right after
`pulumi up` would otherwise find "no torch" where the truth is "not yet". Before anything is
prepared, the controller asks every node's cloud-init (`cloud-init status --format json`, the
status cloud-init itself keeps) and waits, bounded, with progress, until every node is done.

- done (also "degraded done": recoverable warnings): booted.
- no cloud-init, or it "not run"/"not started"/"disabled": booted. A node whose cloud-init is
  not managing this boot (the local pool, a machine brought by the user) has nothing to wait for; a
  cloud node answering SSH with our pinned host key has always started cloud-init (its bootcmd
  installed that key), so it never answers "not run".
- running: still booting, in the stage cloud-init names; after the bound, NodeError
  "node still booting: <stage>".
- error: the boot failed: NodeError with cloud-init's errors and the last lines of its output log
  (where the runcmd's own messages are, e.g. a failed install), instead of a later "no torch".

The command is POSIX sh and needs nothing on the node but cloud-init itself; a node that finished
(its /run/cloud-init/result.json lists no errors) or where cloud-init has not run since boot answers
without starting cloud-init's own Python, so the check costs a run almost nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from lepton_infra.errors import ConfigError, NodeError
from lepton_infra.workload.group import ConnectedNode, NodeGroup

BOOT_TIMEOUT_S = 900.0  # a first boot that installs torch (Azure) or drivers takes minutes
LOG_LINES = 15  # lines of cloud-init's output log shown when a boot failed
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
_MARK = "lepton-boot-log:"

# One exec per node. Fast paths first (`cloud-init status` itself imports all of cloud-init: 0.4 s
# of CPU, on every run): no cloud-init; no /run/cloud-init, so it has not run since this boot (tmpfs:
# the local pool, a machine that merely has the package); or its final stage's result.json without
# errors. Otherwise cloud-init's own status as JSON (any exit status: newer releases exit 1 on an
# error and 2 when degraded), and the tail of its output log only when the status says error.
# LEPTON_CLOUD_INIT_RUN and LEPTON_CLOUD_INIT_LOG name other places (tests).
BOOT_CHECK = (
    'if ! command -v cloud-init >/dev/null 2>&1; then echo \'{"status": "absent"}\'; exit 0; fi; '
    'r="${LEPTON_CLOUD_INIT_RUN:-/run/cloud-init}"; '
    'if [ ! -d "$r" ]; then echo \'{"status": "not run"}\'; exit 0; fi; '
    'if grep -q \'"errors": \\[\\]\' "$r/result.json" 2>/dev/null; then echo \'{"status": "done"}\'; exit 0; fi; '
    "s=$(cloud-init status --format json 2>&1); printf '%s\\n' \"$s\"; "
    'case "$s" in *\'"status": "error"\'*) '
    f'echo {_MARK}; tail -n {LOG_LINES} "${{LEPTON_CLOUD_INIT_LOG:-{CLOUD_INIT_LOG}}}" 2>&1;; esac; exit 0'
)

_BOOTED = frozenset({"absent", "done", "degraded done", "not run", "not started", "disabled"})


@dataclass(frozen=True)
class BootState:
    """One node's first boot as cloud-init reports it."""

    state: str  # "booted", "booting" or "failed"
    detail: str  # the stage while booting; errors and log lines when failed

    @property
    def booted(self) -> bool:
        return self.state == "booted"


def parse(output: str) -> BootState:
    """Read BOOT_CHECK's output. cloud-init 22.4 and later print `status`, `detail` and `errors`;
    `extended_status` (23.4+) adds "degraded". Unreadable output counts as still booting (a
    cloud-init too busy to answer), so the bound, not a guess, ends the wait."""
    text, _, log = output.partition(_MARK)
    try:
        found = json.loads(text[text.index("{") : text.rindex("}") + 1])
        status = str(found.get("extended_status") or found.get("status") or "")
    except (ValueError, AttributeError):
        return BootState("booting", f"cloud-init status unreadable: {' '.join(text.split())[:200]!r}")
    detail = str(found.get("detail") or "").strip()
    if status in _BOOTED:
        return BootState("booted", status)
    if "error" in status and "running" not in status:  # "error - running": the final stage goes on
        errors = "; ".join(str(e) for e in found.get("errors") or []) or detail or status
        lines = [line for line in log.splitlines() if line.strip()]
        tail = f"; last lines of {CLOUD_INIT_LOG}:\n" + "\n".join(lines) if lines else ""
        return BootState("failed", f"first boot failed (cloud-init {status}: {errors}){tail}")
    # "running": cloud-init's detail is "Running in stage: modules-final" and the like.
    stage = detail.removeprefix("Running in stage:").strip() or status
    return BootState("booting", stage)


def check(m: ConnectedNode) -> BootState:
    result = m.conn.run(BOOT_CHECK, check=False)
    return parse(result.stdout.decode("utf-8", "replace"))


def check_timeout(boot_timeout: float) -> None:
    if not isinstance(boot_timeout, int | float) or isinstance(boot_timeout, bool) or boot_timeout < 0:
        raise ConfigError(
            f"boot_timeout is {boot_timeout!r}; allowed: seconds (>= 0) to wait for nodes to finish first boot"
        )


def wait_booted(
    group: NodeGroup,
    *,
    timeout: float = BOOT_TIMEOUT_S,
    progress: Callable[[str], None] = lambda _: None,
    first_poll: float = 0.5,
    max_poll: float = 10.0,
) -> None:
    """Return once every node has finished its first boot; NodeError naming the node when a boot
    failed (at once), or when a node is still booting after `timeout` seconds. Asks only the
    nodes still booting, at growing intervals; `progress` hears which node is in which stage
    whenever that changes, and every half minute."""
    t0 = time.monotonic()
    pending = group
    poll, last_said, said_at = first_poll, "", t0
    while True:
        states = pending.run(check)
        states.raise_first()
        failed = {name: s for name, s in states.succeeded.items() if s.state == "failed"}
        if failed:
            name, state = next(iter(failed.items()))
            raise NodeError(name, state.detail)
        booting = {name: s for name, s in states.succeeded.items() if not s.booted}
        if not booting:
            if pending is not group or last_said:
                progress(f"first boot finished on {len(group)} node(s)")
            return
        waited = time.monotonic() - t0
        if waited >= timeout:
            name, state = next(iter(booting.items()))
            others = "".join(f"; also {n}: {s.detail}" for n, s in list(booting.items())[1:])
            raise NodeError(
                name,
                f"node still booting: {state.detail} (cloud-init has not finished after {waited:.0f} s"
                f"{others}); wait and run again, or see `cloud-init status --long` on the node",
            )
        said = ", ".join(f"{n}: {s.detail}" for n, s in booting.items())
        if said != last_said or time.monotonic() - said_at >= 30:
            progress(f"waiting for first boot to finish ({said}); {waited:.0f} s of at most {timeout:.0f} s")
            last_said, said_at = said, time.monotonic()
        waiting = frozenset(booting)
        pending = group.subset(lambda m: m.name in waiting)  # noqa: B023 - used at once, in this turn
        time.sleep(min(poll, max(0.0, timeout - waited)))
        poll = min(poll * 1.5, max_poll)
