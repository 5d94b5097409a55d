"""`sweep --search grid|random|tpe --trials N`: Optuna chooses each trial's parameters, on the same
queue, workers and exactly-once results as a grid sweep.

The controller (this process) asks Optuna for a trial, queues it as one job, and tells Optuna the
job's metric once its result is committed (ask/tell: Optuna never runs anything itself). While a
trial runs, the worker publishes the job's `LEPTON_PROGRESS {json}` lines; each record carrying the
`--report` key is reported as an intermediate value (step: its `step`, else `epoch`, else its
position), and when the pruner (median, successive halving) says the trial is bad the controller
leaves a stop flag the worker obeys: the trial ends as pruned. Optuna's storage is an SQLite file
in the sweep's run folder (`runs/sweeps/<id>/optuna.db`), so `sweep resume ID` after a controller
restart continues the same study: trials already told stay told, running ones are picked up."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_infra.data.queue import Queue
from lepton_infra.data.store import Store, StoreError
from lepton_infra.data.sweep_job import PROGRESS, STARTED, STOP_FLAG
from lepton_infra.data.sweep_ledger import archive_dead_letters, job_prefix, read_ledger, sweep_key
from lepton_infra.errors import ConfigError
from lepton_infra.workload.sweep import parse_value

SEARCHES = ("grid", "random", "tpe")
PRUNERS = ("median", "halving", "none")


@dataclass(frozen=True)
class SearchSpec:
    """What to search, kept in sweep.json so a restarted controller rebuilds the same study."""

    kind: str
    trials: int
    choices: dict[str, list[int | float | str]] = field(default_factory=dict)  # --grid NAME=A,B
    ranges: dict[str, list[Any]] = field(default_factory=dict)  # --range NAME=LOW:HIGH[:log]
    pruner: str = "median"
    parallel: int = 1
    report: str = ""  # progress key reported as the intermediate value (default: the metric)
    minimize: bool = False
    seed: int | None = None


def parse_ranges(items: list[str]) -> dict[str, list[Any]]:
    """`["lr=1e-4:1e-1:log", "epochs=1:5"]` -> {"lr": [1e-4, 0.1, True], "epochs": [1, 5, False]}."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, rest = item.partition("=")
        bits = rest.split(":")
        log = len(bits) == 3 and bits[2] == "log"
        if (
            not sep
            or not key.replace("_", "").isalnum()
            or len(bits) not in (2, 3)
            or (len(bits) == 3 and not log)
        ):
            raise ConfigError(f"--range {item!r}: expected NAME=LOW:HIGH or NAME=LOW:HIGH:log")
        low, high = parse_value(bits[0]), parse_value(bits[1])
        if not isinstance(low, int | float) or not isinstance(high, int | float) or low >= high:
            raise ConfigError(f"--range {item!r}: LOW and HIGH must be numbers with LOW < HIGH")
        if log and low <= 0:
            raise ConfigError(f"--range {item!r}: a log range needs LOW > 0")
        out[key] = [low, high, log]
    return out


def check_spec(spec: SearchSpec) -> None:
    if spec.kind not in SEARCHES:
        raise ConfigError(f"--search {spec.kind!r}: choose one of {', '.join(SEARCHES)}")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"--pruner {spec.pruner!r}: choose one of {', '.join(PRUNERS)}")
    if spec.trials < 1:
        raise ConfigError(f"--trials is {spec.trials}; it must be at least 1")
    if not spec.choices and not spec.ranges:
        raise ConfigError("a search needs parameters: --grid NAME=A,B,... and/or --range NAME=LOW:HIGH[:log]")
    if spec.kind == "grid" and spec.ranges:
        raise ConfigError("--search grid takes --grid values only; use random or tpe for --range")
    if both := set(spec.choices) & set(spec.ranges):
        raise ConfigError(f"parameter(s) {', '.join(sorted(both))} given as both --grid and --range")


def _distributions(spec: SearchSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists: dict[str, Any] = {k: CategoricalDistribution(v) for k, v in spec.choices.items()}
    for key, (low, high, log) in spec.ranges.items():
        ints = isinstance(low, int) and isinstance(high, int)
        dists[key] = IntDistribution(low, high, log=log) if ints else FloatDistribution(low, high, log=log)
    return dists


def open_study(spec: SearchSpec, sweep_id: str, folder: Path) -> Any:
    """The study in `folder/optuna.db`, created on first use and loaded on every later one."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our table says what happened
    folder.mkdir(parents=True, exist_ok=True)
    sampler: Any
    if spec.kind in ("grid", "random"):
        # Grid: every combination is enqueued below. Optuna's GridSampler is not used: it calls
        # Study.stop() once the grid is exhausted, which only works inside Study.optimize.
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed, n_startup_trials=min(10, max(2, spec.trials // 3))
        )
    pruner: Any = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[spec.pruner]()
    study = optuna.create_study(
        study_name=sweep_id,
        storage=f"sqlite:///{folder / 'optuna.db'}",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
        direction="minimize" if spec.minimize else "maximize",
    )
    if spec.kind == "grid" and not study.trials:  # a new study (a restarted one has them stored)
        keys = list(spec.choices)
        for combo in itertools.product(*(spec.choices[k] for k in keys)):
            study.enqueue_trial(dict(zip(keys, combo, strict=True)))
    return study


class SearchController:
    """Keeps `spec.parallel` trials queued or running until `spec.trials` have ended."""

    def __init__(self, store: Store, queue: Queue, sweep_id: str, folder: Path, metric: str) -> None:
        self.store, self.queue, self.sweep_id, self.metric = store, queue, sweep_id, metric
        self.record: dict[str, Any] = json.loads(store.get(sweep_key(sweep_id)))
        self.spec = SearchSpec(**self.record["search"])
        self.report_key = self.spec.report or metric
        self.study = open_study(self.spec, sweep_id, folder)
        self.dists = _distributions(self.spec)
        self.reported: dict[int, int] = {}  # trial number -> progress records already reported
        self.stopping: set[int] = set()
        self._recover()

    def _recover(self) -> None:
        """After a controller restart: a trial asked but never recorded is failed (it is not one of
        the --trials); one recorded that no worker has started is queued again in case its message
        was never sent (a duplicate costs at most a second run: a worker acks a job whose result
        is committed, and both runs write the same result)."""
        import optuna

        jobs = {j["job_id"]: j for j in self.record["jobs"]}
        done = read_ledger(self.store, self.sweep_id).done()
        for number in self._running():
            job = jobs.get(f"t{number:04d}")
            if job is None:
                self.study.tell(number, state=optuna.trial.TrialState.FAIL)
            elif job["job_id"] not in done and not self.store.exists(
                f"{job_prefix(self.sweep_id, job['job_id'])}/{STARTED}"
            ):
                self.queue.send(json.dumps(job))

    def _running(self) -> dict[int, Any]:
        import optuna

        return {
            t.number: optuna.trial.Trial(self.study, t._trial_id)  # noqa: SLF001 - the documented way back to a live trial
            for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        }

    def _ask(self) -> None:
        trial = self.study.ask(self.dists)
        job = {
            "sweep_id": self.sweep_id, "job_id": f"t{trial.number:04d}", "config": f"t{trial.number:04d}",
            "repeat": 0, "workload": self.record["workload"], "params": dict(trial.params),
            "args": list(self.record.get("args", [])), "trial": trial.number,
        }  # fmt: skip
        if not any(j["job_id"] == job["job_id"] for j in self.record["jobs"]):
            self.record["jobs"].append(job)
            self.store.put(sweep_key(self.sweep_id), json.dumps(self.record, indent=1).encode())
            self.queue.send(json.dumps(job))

    def step(self) -> bool:
        """One round: tell what ended, report progress, prune, ask for more; True when done."""
        import optuna

        archive_dead_letters(self.store, self.queue)
        ledger = read_ledger(self.store, self.sweep_id)
        if ledger.cancelled is not None:
            return True
        running = self._running()
        for number, trial in running.items():
            job_id = f"t{number:04d}"
            if job_id in ledger.committed:
                value = self._final(job_id)
                if value is None:
                    self.study.tell(number, state=optuna.trial.TrialState.FAIL)
                else:
                    self.study.tell(number, value)
            elif job_id in ledger.ended:
                pruned = ledger.ended[job_id].get("state") == "pruned"
                self.study.tell(
                    number, state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL
                )
            elif number not in self.stopping:
                self._report(number, trial, job_id)
        # Trials are counted by the jobs queued (a trial failed on a restart is not one of them).
        while len(self._running()) < self.spec.parallel and len(self.record["jobs"]) < self.spec.trials:
            if self._grid_exhausted():
                break
            self._ask()
        if not self._running() and (len(self.record["jobs"]) >= self.spec.trials or self._grid_exhausted()):
            self.record["closed"] = time.time()
            self.store.put(sweep_key(self.sweep_id), json.dumps(self.record, indent=1).encode())
            return True
        return False

    def _grid_exhausted(self) -> bool:
        if self.spec.kind != "grid":
            return False
        size = 1
        for values in self.spec.choices.values():
            size *= len(values)
        return len(self.record["jobs"]) >= size

    def _final(self, job_id: str) -> float | None:
        try:
            value = json.loads(
                self.store.get(f"{job_prefix(self.sweep_id, job_id)}/output/metrics.json")
            ).get(self.metric)
        except (StoreError, ValueError):
            return None
        return float(value) if isinstance(value, int | float) else None

    def _report(self, number: int, trial: Any, job_id: str) -> None:
        prefix = job_prefix(self.sweep_id, job_id)
        try:
            records = json.loads(self.store.get(f"{prefix}/{PROGRESS}")).get("records", [])
        except (StoreError, ValueError):
            return
        done = self.reported.get(number, 0)
        last = max(trial.storage.get_trial(trial._trial_id).intermediate_values, default=-1)  # noqa: SLF001
        for index, rec in enumerate(records[done:], start=done):
            value, step = rec.get(self.report_key), _step(rec, index)
            if isinstance(value, int | float) and step > last:
                trial.report(float(value), step)
                last = step
        self.reported[number] = len(records)
        if len(records) > done and trial.should_prune():
            reason = f"trial {number} pruned by the {self.spec.pruner} pruner after {len(records)} report(s)"
            self.store.put(
                f"{prefix}/{STOP_FLAG}", json.dumps({"reason": reason, "at": time.time()}).encode()
            )
            self.stopping.add(number)

    def run(self, poll_s: float = 1.0, on_round: Any = None) -> None:
        while not self.step():
            if on_round is not None:
                on_round()
            time.sleep(poll_s)

    def best(self) -> dict[str, Any] | None:
        try:
            best = self.study.best_trial
        except ValueError:
            return None
        return {"trial": best.number, "value": best.value, "params": best.params}


def _step(record: dict[str, Any], index: int) -> int:
    """Where a progress record stands, comparable across trials: epoch x steps-per-epoch + step when
    the job says both (the cifar10 job's step restarts each epoch), else its step, epoch or index."""

    def num(key: str) -> int | None:
        value = record.get(key)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    epoch, step, steps = num("epoch"), num("step"), num("steps")
    if epoch is not None and step is not None and steps:
        return (epoch - 1) * steps + step
    for value in (step, epoch):
        if value is not None:
            return value
    return index


def last_reported(store: Store, sweep_id: str, job_id: str, key: str) -> float | None:
    """The last intermediate value a trial reported (where a pruned trial stood when stopped)."""
    try:
        records = json.loads(store.get(f"{job_prefix(sweep_id, job_id)}/{PROGRESS}")).get("records", [])
    except (StoreError, ValueError):
        return None
    values = [r[key] for r in records if isinstance(r.get(key), int | float)]
    return float(values[-1]) if values else None
