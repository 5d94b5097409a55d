"""The sweep worker: runs on a node, detached, taking jobs from the queue until it stays empty.

Shipped with the sweep as `lib/lepton_infra/{__init__,errors}.py` + `lib/lepton_infra/data/`
(standard library only for the local pool's file:// store and SQLite queue; cloud stores and
queues use the clients cloud-init installs), so it needs no `lepton_infra` on the node.

For each message: a malformed one (not JSON, another workload, bad parameters) is dead-lettered at
once with the reason and never stops the worker. A job whose result is already committed in the
store is acked without running again (its first worker died between commit and ack). Otherwise the
job runs as `python ENTRYPOINT ARGS --key value ...` with `LEPTON_OUTPUT_DIR` set, while a thread
extends the message's visibility; on success its output and log are uploaded to
`<store>/sweeps/<sweep-id>/<job-id>/` (manifest last) and only then is the message acked. A failed
job is released for another try, or dead-lettered with its exit code and log tail once it has been
received `max_receive_count` times."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lepton_infra.data.queue import Message, MessageLost, Queue, open_queue
from lepton_infra.data.store import Store, open_store
from lepton_infra.data.sweep_ledger import archive_dead_letters, job_prefix, read_ledger, sweep_key

_PR_SET_PDEATHSIG = 1
_ENDED_CHECK_S = 5.0


class ForeignJob(Exception):
    """A well-formed job of another sweep sharing the queue: not ours to run, nor bad."""


def param_args(params: dict[str, Any]) -> list[str]:
    """`{"batch_size": 64}` -> `["--batch-size", "64"]` (argparse's spelling of the key)."""
    out: list[str] = []
    for key, value in params.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def check_job(body: str, sweep_id: str, workload: str) -> dict[str, Any]:
    """The job in `body`, or ValueError saying why no worker could ever run it."""
    try:
        job = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(job, dict):
        raise ValueError(f"not a JSON object: {type(job).__name__}")
    if isinstance(job.get("sweep_id"), str) and job["sweep_id"] != sweep_id:
        raise ForeignJob(job["sweep_id"])
    if job.get("workload") != workload:
        raise ValueError(f"unknown workload {job.get('workload')!r}; this sweep's workers run {workload!r}")
    if job.get("sweep_id") != sweep_id:
        raise ValueError(f"no sweep_id (this worker serves {sweep_id!r})")
    job_id = job.get("job_id")
    if not isinstance(job_id, str) or not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"bad job_id {job_id!r}")
    params, args = job.get("params", {}), job.get("args", [])
    if not isinstance(params, dict) or not all(
        isinstance(k, str)
        and k.replace("_", "").replace("-", "").isalnum()
        and isinstance(v, str | int | float)
        for k, v in params.items()
    ):
        raise ValueError(f"bad args: params must map names to numbers or strings, got {params!r}")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"bad args: args must be a list of strings, got {args!r}")
    return job


def _die_with_parent() -> None:
    # The job must not outlive a killed worker: the kernel sends it SIGKILL when we die (Linux).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    os.setsid()


class Worker:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.queue: Queue = open_queue(opts.queue)
        self.store: Store = open_store(opts.store)
        self.workdir = Path(opts.workdir)
        self.node = opts.node
        self.stopping = False

    def own_sweep_ended(self) -> bool:
        """Every job of our sweep has a committed result or an end record (dead letters archived
        first, however many the queue holds)."""
        try:
            jobs = {j["job_id"] for j in json.loads(self.store.get(sweep_key(self.opts.sweep_id)))["jobs"]}
            archive_dead_letters(self.store, self.queue)
            return jobs <= read_ledger(self.store, self.opts.sweep_id).done()
        except Exception:  # noqa: BLE001 - unknown means not ended: keep serving
            return False

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {self.node}: {text}", flush=True)

    def serve(self) -> int:
        idle_since = last_check = time.monotonic()
        while not self.stopping and time.monotonic() - idle_since < self.opts.idle_exit_s:
            try:
                messages = self.queue.receive(
                    1, visibility_timeout_s=self.opts.visibility_timeout_s, wait_s=1
                )
            except Exception as exc:  # a flaky queue must not end the worker
                self.log(f"receive failed: {exc}")
                time.sleep(2)
                continue
            for message in messages:
                self.handle(message)
                idle_since = time.monotonic()
            if not messages and time.monotonic() - last_check > _ENDED_CHECK_S:
                last_check = time.monotonic()
                if self.own_sweep_ended():
                    self.log("every job of this sweep has ended; exiting")
                    self.stopping = True
        if not self.stopping:
            self.log("queue stayed empty; exiting")
        return 0

    def handle(self, message: Message) -> None:
        try:
            job = check_job(message.body, self.opts.sweep_id, self.opts.workload)
        except ForeignJob as exc:
            # Another sweep shares the queue: hand its job back to its own workers. Once every job of
            # ours has ended, leave the queue to them instead of taking their jobs again and again.
            self.queue.release(message)
            if self.own_sweep_ended():
                self.log(f"queue now serves sweep {exc}; ours has ended; exiting")
                self.stopping = True
            else:
                time.sleep(1)
            return
        except ValueError as exc:
            self.log(f"dead-lettering message {message.id}: {exc}")
            self.queue.dead_letter(message, str(exc))
            return
        try:
            self.run(job, message)
        except MessageLost as exc:
            self.log(f"job {job['job_id']}: {exc}")
        except Exception as exc:  # never crash on one job: give it back for another try
            self.log(f"job {job['job_id']}: {type(exc).__name__}: {exc}")
            self._retry_or_dead(message, f"worker error on {self.node}: {type(exc).__name__}: {exc}")

    def _retry_or_dead(self, message: Message, reason: str) -> None:
        if message.receive_count >= self.queue.max_receive_count:
            self.queue.dead_letter(message, f"failed {message.receive_count} time(s); last: {reason}")
        else:
            self.queue.release(message)

    def run(self, job: dict[str, Any], message: Message) -> None:
        job_id = job["job_id"]
        prefix = job_prefix(self.opts.sweep_id, job_id)
        if self.store.manifest(prefix) is not None:
            self.log(f"job {job_id}: result already committed; acking")
            self.queue.ack(message)
            return
        jobdir = self.workdir / "jobs" / job_id
        shutil.rmtree(jobdir, ignore_errors=True)
        (jobdir / "output").mkdir(parents=True)
        argv = [sys.executable, str(self.workdir / "workload" / self.opts.entrypoint), *job.get("args", [])]
        argv += param_args(job.get("params", {}))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the job sees its own environment, not our shipped library
        env.update(
            LEPTON_OUTPUT_DIR=str(jobdir / "output"),
            LEPTON_SWEEP_ID=self.opts.sweep_id,
            LEPTON_JOB_ID=job_id,
            LEPTON_RUN_ID=f"{self.opts.sweep_id}-{job_id}",
            LEPTON_NODE_NAME=self.node,
            LEPTON_NODE_RANK="0",
            LEPTON_NUM_NODES="1",
            PYTHONUNBUFFERED="1",
        )
        self.log(f"job {job_id}: start (receive {message.receive_count}) {' '.join(argv[1:])}")
        lost = threading.Event()
        done = threading.Event()

        def keep_hidden() -> None:
            every = max(1.0, self.opts.visibility_timeout_s / 3)
            while not done.wait(every):
                try:
                    self.queue.extend(message, self.opts.visibility_timeout_s)
                except MessageLost:
                    lost.set()
                    return
                except Exception as exc:
                    self.log(f"job {job_id}: extend failed ({exc}); retrying")

        extender = threading.Thread(target=keep_hidden, daemon=True)
        extender.start()
        started = time.time()
        try:
            with (jobdir / "job.log").open("wb") as log:
                proc = subprocess.run(
                    argv,
                    cwd=self.workdir / "workload",
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                    check=False,
                )
        finally:
            done.set()
            extender.join()
        if lost.is_set():
            raise MessageLost(f"message {message.id} was handed to another worker while this one ran")
        info = {
            "job_id": job_id,
            "params": job.get("params", {}),
            "node": self.node,
            "exit_code": proc.returncode,
            "started": started,
            "ended": time.time(),
            "receive_count": message.receive_count,
        }
        (jobdir / "job.json").write_text(json.dumps(info, indent=1))
        if proc.returncode != 0:
            tail = (jobdir / "job.log").read_bytes()[-400:].decode("utf-8", "replace").strip()
            self.log(f"job {job_id}: exit {proc.returncode}")
            self._retry_or_dead(message, f"exit code {proc.returncode} on {self.node}: {tail}")
            return
        self.store.upload_dir(jobdir, prefix)  # output/, job.log, job.json; manifest last
        self.queue.ack(message)  # only once the result is committed
        self.log(f"job {job_id}: done, result at {self.store.url}/{prefix}")
        shutil.rmtree(jobdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--sweep-id", required=True)
    parser.add_argument("--workload", required=True, help="the workload's name, as in each message")
    parser.add_argument("--entrypoint", default="train.py")
    parser.add_argument("--node", default=os.uname().nodename)
    parser.add_argument("--workdir", default=os.getcwd())
    parser.add_argument("--visibility-timeout-s", type=int, default=300)
    parser.add_argument("--idle-exit-s", type=float, default=60)
    return Worker(parser.parse_args(argv)).serve()


if __name__ == "__main__":
    sys.exit(main())
