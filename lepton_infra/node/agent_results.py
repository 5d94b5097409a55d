"""The run's results to the store: snapshots of output/ while the job runs (a node lost mid-run
leaves its last checkpoint) and the final upload before the end is recorded, both with the
uploader the controller sent in the spec (node/upload/, one bundle), as helpers a stop spares.
Standard library only; part of the agent shipped with every run (see agent.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

try:  # as lepton_infra.node.* on the controller; top-level modules inside the shipped agent
    from . import agent_files as files
    from . import agent_procs as procs
except ImportError:
    import agent_files as files  # type: ignore[no-redef]
    import agent_procs as procs  # type: ignore[no-redef]


UPLOAD_TIMEOUT_S = 3600.0
CHECKPOINT_UPLOAD_S = 30.0  # at most one snapshot of output/ per this many seconds (env overrides)


class Snapshots:
    """While the job runs, copy output/ (checkpoints, metrics) to `<prefix>/checkpoint/` in the store
    whenever it changed, at most every CHECKPOINT_UPLOAD_S seconds, one upload at a time, so
    a node lost mid-run (spot reclaim) leaves its last checkpoint behind. Each snapshot is a new
    generation committed by a pointer (the uploader's --snapshot): one cut off never spoils the last."""

    def __init__(self, run_dir: str, spec: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.results = spec.get("results")
        env = spec.get("env") or {}
        try:
            self.every = float(env.get("CHECKPOINT_UPLOAD_S", CHECKPOINT_UPLOAD_S))
        except ValueError:
            self.every = CHECKPOINT_UPLOAD_S
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_start = 0.0
        self.last_mtime = 0.0

    def _newest(self) -> float:
        newest = 0.0
        for dirpath, _dirs, names in os.walk(files.path(self.run_dir, "output")):
            for name in names:
                try:
                    newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
                except OSError:
                    pass
        return newest

    def tick(self) -> None:
        if not self.results or self.every <= 0 or (self.proc is not None and self.proc.poll() is None):
            return
        if time.time() - self.last_start < self.every:
            return
        newest = self._newest()
        if newest <= self.last_mtime:
            return
        self.last_mtime, self.last_start = newest, time.time()
        r = self.results
        argv = [sys.executable, "-c", r["source"], "--snapshot", r["store"], r["prefix"] + "/checkpoint"]
        argv.append(f"output={files.path(self.run_dir, 'output')}")
        try:
            with open(files.path(self.run_dir, "logs", "upload.log"), "ab") as log:
                self.proc = subprocess.Popen(
                    argv, env=uploader_env(r, self.run_dir), stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
        except OSError:
            self.proc = None

    def stop(self) -> None:
        """Let a snapshot in flight finish (briefly) before the final upload."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def uploader_env(results: dict[str, Any], run_dir: str) -> dict[str, str]:
    """The uploader's environment: this node's, marked as the supervisor's helper (a stop spares
    it), plus the client settings the controller sent with the results (the cluster's region, the
    user's endpoints): without the region an S3 client assumes us-east-1. Not the job's whole
    environment: an uploader is no part of the job."""
    return {**procs.helper_env(run_dir), **{str(k): str(v) for k, v in (results.get("env") or {}).items()}}


def upload_results(run_dir: str, results: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """Send output/, logs/ and the final state to `results["store"]` under `results["prefix"]` with
    the uploader the controller shipped in the spec (stdlib for file://, the node's pinned client for
    cloud stores). Returns its answer ({"url", "files", "bytes"} or {"error"}); never raises."""
    final_path = files.path(run_dir, ".final_state.json")
    try:
        with open(final_path, "w", encoding="utf-8") as f:
            json.dump(final, f)
        # The final result holds output/: its snapshots under checkpoint/ go once it is committed.
        argv = [
            sys.executable,
            "-c",
            results["source"],
            "--drop-snapshots",
            results["store"],
            results["prefix"],
        ]
        argv += [
            f"output={files.path(run_dir, 'output')}",
            f"logs={files.path(run_dir, 'logs')}",
            f"state.json={final_path}",
        ]
        with open(files.path(run_dir, "logs", "upload.log"), "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=uploader_env(results, run_dir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            deadline = time.time() + UPLOAD_TIMEOUT_S
            while True:
                try:
                    out, _ = proc.communicate(timeout=files.HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    if time.time() > deadline:
                        proc.kill()
                        return {"error": f"upload took longer than {UPLOAD_TIMEOUT_S:.0f} s"}
                    try:
                        files.write_state(
                            run_dir, {**final, "state": "running", "ended": None, "heartbeat": time.time()}
                        )
                    except OSError:
                        pass
        lines = out.decode("utf-8", "replace").strip().splitlines()
        answer = json.loads(lines[-1]) if lines else {"error": f"uploader exited {proc.returncode} silently"}
        if not isinstance(answer, dict):
            return {"error": f"unexpected uploader answer {answer!r}"}
        return answer
    except Exception as exc:  # the job's own result stands whatever the upload did
        return {"error": f"{type(exc).__name__}: {exc}"}
