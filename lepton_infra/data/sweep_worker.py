"""The sweep worker: runs on a node, detached, taking jobs from the queue until it stays empty.

Shipped with the sweep as `lib/lepton_infra/{__init__,errors}.py` + `lib/lepton_infra/data/`
(standard library only for the local pool's file:// store and SQLite queue; cloud stores and
queues use the clients cloud-init installs), so it needs no `lepton_infra` on the node.

For each message: a malformed one (not JSON, another workload, bad parameters) is dead-lettered at
once with the reason and never stops the worker. A job whose result is already committed in the
store is acked without running again (its first worker died between commit and ack). Otherwise the
job runs as `python ENTRYPOINT ARGS --key value ...` with `LEPTON_OUTPUT_DIR` set (holding the
job's own last snapshot when it was re-queued), while a thread extends the message's visibility;
its output/ is snapshotted to the store as it changes, its `LEPTON_PROGRESS` lines are published
for the search controller, and it is stopped when its sweep is cancelled or its trial pruned. On
success its output and log are uploaded to `<store>/sweeps/<sweep-id>/<job-id>/` (manifest last)
and only then is the message acked. A failed job comes back after a growing delay, or is
dead-lettered with its exit code and log tail once it has been received `max_receive_count` times.

The worker beats (`sweeps/<id>/_workers/<node>.json`) while it lives, so the controller can tell a
sweep whose workers all died from one that is busy."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lepton_infra.data.queue import Message, MessageLost, Queue, open_queue
from lepton_infra.data.snapshots import drop_snapshots, latest_snapshot
from lepton_infra.data.store import Store, open_store
from lepton_infra.data.sweep_job import STARTED, JobWatch, run_job
from lepton_infra.data.sweep_ledger import (
    CANCELLED,
    archive_dead_letters,
    beat,
    end_job,
    job_prefix,
    read_ledger,
    sweep_key,
)

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


class Worker:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.queue: Queue = open_queue(opts.queue)
        self.store: Store = open_store(opts.store)
        self.workdir = Path(opts.workdir)
        self.node = opts.node
        self.stopping = False
        self.exited = threading.Event()

    def own_sweep_ended(self) -> bool:
        """Every job of our sweep has a committed result or an end record (dead letters archived
        first, however many the queue holds), or the sweep was cancelled."""
        try:
            record = json.loads(self.store.get(sweep_key(self.opts.sweep_id)))
            archive_dead_letters(self.store, self.queue)
            ledger = read_ledger(self.store, self.opts.sweep_id)
            if ledger.cancelled is not None:
                return True
            if record.get("search") and not record.get("closed"):
                return False  # the search controller has more trials to ask for
            return {j["job_id"] for j in record["jobs"]} <= ledger.done()
        except Exception:  # noqa: BLE001 - unknown means not ended: keep serving
            return False

    def cancelled(self) -> bool:
        return self.store.exists(f"sweeps/{self.opts.sweep_id}/{CANCELLED}")

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {self.node}: {text}", flush=True)

    def _beat_forever(self) -> None:
        while not self.exited.wait(self.opts.heartbeat_s):
            try:
                beat(self.store, self.opts.sweep_id, self.node, os.getpid())
            except Exception as exc:  # noqa: BLE001 - a missed beat is survivable
                self.log(f"heartbeat failed: {exc}")

    def serve(self) -> int:
        beat(self.store, self.opts.sweep_id, self.node, os.getpid())
        threading.Thread(target=self._beat_forever, daemon=True).start()
        try:
            self._serve()
        finally:
            self.exited.set()
            try:
                beat(self.store, self.opts.sweep_id, self.node, os.getpid(), state="exited")
            except Exception:  # noqa: BLE001 - then it simply goes stale
                pass
        return 0

    def _serve(self) -> None:
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

    def handle(self, message: Message) -> None:
        try:
            job = check_job(message.body, self.opts.sweep_id, self.opts.workload)
        except ForeignJob as exc:
            if self.store.exists(f"sweeps/{exc}/{CANCELLED}"):
                self.log(f"message {message.id}: sweep {exc} was cancelled; dropping it")
                self.queue.ack(message)
                return
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
        if self.cancelled():
            self.log(f"job {job['job_id']}: sweep cancelled; dropping its message and exiting")
            self.queue.ack(message)
            self.stopping = True
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
            return
        # Back off: the next try waits base, 2 x base, 4 x base ... (a node with a transient fault,
        # or a job racing a slow dependency, is not hammered five times within a second).
        delay = min(self.opts.retry_backoff_s * 2 ** (message.receive_count - 1), 3600)
        try:
            if delay >= 1:
                self.queue.extend(message, int(delay))
            else:
                self.queue.release(message)
        except MessageLost:
            pass

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
        try:
            self._run(job, message, prefix, jobdir)
        finally:
            shutil.rmtree(jobdir, ignore_errors=True)  # nothing partial stays on the node

    def _run(self, job: dict[str, Any], message: Message, prefix: str, jobdir: Path) -> None:
        job_id = job["job_id"]
        snapshot = latest_snapshot(self.store, prefix)
        if snapshot is not None:  # re-queued: start from the job's own last snapshot
            self.store.download_dir(snapshot, jobdir / "output")
            self.log(f"job {job_id}: resuming from {snapshot}")
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
        started_on = {"node": self.node, "receive_count": message.receive_count, "at": time.time()}
        self.store.put(f"{prefix}/{STARTED}", json.dumps(started_on).encode())
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
        watch = JobWatch(
            self.store, prefix, jobdir, lost, cancelled=self.cancelled, log=self.log,
            check_s=self.opts.check_s, snapshot_s=self.opts.snapshot_s,
        )  # fmt: skip
        try:
            outcome = run_job(argv, self.workdir / "workload", env, jobdir / "job.log", watch.tick)
        finally:
            done.set()
            extender.join()
        if lost.is_set():
            raise MessageLost(f"message {message.id} was handed to another worker while this one ran")
        if isinstance(outcome, str):  # stopped on request: cancelled sweep or pruned trial
            self.log(f"job {job_id}: stopped ({outcome})")
            if outcome.startswith("pruned"):
                watch.publish_progress(force=True)
                end_job(self.store, self.opts.sweep_id, job_id, "pruned", outcome)
            else:
                self.log("sweep cancelled; exiting")
                self.stopping = True
            self.queue.ack(message)
            return
        info = {
            "job_id": job_id,
            "params": job.get("params", {}),
            "node": self.node,
            "exit_code": outcome,
            "started": started,
            "ended": time.time(),
            "receive_count": message.receive_count,
            "resumed_from": snapshot,
        }
        (jobdir / "job.json").write_text(json.dumps(info, indent=1))
        if outcome != 0:
            tail = (jobdir / "job.log").read_bytes()[-400:].decode("utf-8", "replace").strip()
            self.log(f"job {job_id}: exit {outcome}")
            self._retry_or_dead(message, f"exit code {outcome} on {self.node}: {tail}")
            return
        watch.publish_progress(force=True)
        self.store.upload_dir(jobdir, prefix)  # output/, job.log, job.json; manifest last
        self.queue.ack(message)  # only once the result is committed
        drop_snapshots(self.store, prefix)  # the result holds output/: no second copy
        self.log(f"job {job_id}: done, result at {self.store.url}/{prefix}")


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
    parser.add_argument("--heartbeat-s", type=float, default=10, help="seconds between liveness beats")
    parser.add_argument(
        "--retry-backoff-s", type=float, default=10, help="delay before a failed job's 2nd try"
    )
    parser.add_argument("--snapshot-s", type=float, default=30, help="seconds between output/ snapshots")
    parser.add_argument("--check-s", type=float, default=2, help="seconds between cancel/prune checks")
    return Worker(parser.parse_args(argv)).serve()


if __name__ == "__main__":
    sys.exit(main())
