"""Node metrics on the controller's side: the sampler's source for the launch spec, following the
samples while a run goes (`MetricsTail`), and what is made of them afterwards (`summarise`,
`stragglers`). The sampler itself is `node/metrics.py` (runs on the node, standard library only).

A sample is one line of `logs/metrics.jsonl` on the node (collected to
`runs/<run-id>/<node>/logs/metrics.jsonl`); GPU figures are absent on a node without a GPU."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lepton_infra.errors import ConfigError
from lepton_infra.node import source as node_source

SAMPLER_SOURCE = node_source("metrics.py")
DEFAULT_EVERY_S = 5.0
METRICS_FILE = "metrics.jsonl"  # under the node's logs/


def check_every(seconds: float) -> float:
    """0 turns sampling off; otherwise 0.2 s (tests) to an hour."""
    ok = isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds)
    if not ok or not (seconds == 0 or 0.2 <= seconds <= 3600):
        raise ConfigError(
            f"metrics_every (--metrics-every) must be 0 (off) or 0.2 to 3600 seconds, got {seconds!r}"
        )
    return float(seconds)


def spec_entry(every: float) -> dict[str, Any] | None:
    """The launch spec's `metrics` entry (the agent starts the sampler from it), None when off."""
    return {"source": SAMPLER_SOURCE, "every": every} if every else None


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """Samples from complete lines; a torn or foreign line is skipped (never fatal)."""
    out = []
    for raw in data.split(b"\n"):
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("t"), int | float):
            out.append(value)
    return out


def read_samples(path: Path) -> list[dict[str, Any]]:
    try:
        return parse_lines(path.read_bytes())
    except OSError:
        return []


class MetricsTail:
    """Follows one node's metrics.jsonl over SFTP from an offset, complete lines only."""

    def __init__(self) -> None:
        self.offset = 0
        self.partial = b""

    def poll(self, conn: Any, run_dir: str) -> list[dict[str, Any]]:
        data = conn.read_range(f"{run_dir}/logs/{METRICS_FILE}", self.offset)
        self.offset += len(data)
        data, _, self.partial = (self.partial + data).rpartition(b"\n")
        return parse_lines(data)


# --------------------------------------------------------------------------- figures of a sample


def gpu_util(sample: Mapping[str, Any]) -> float | None:
    """Mean utilisation of the node's GPUs, None without GPUs (or none reporting it)."""
    values = [g["util_pct"] for g in sample.get("gpus") or () if isinstance(g.get("util_pct"), int | float)]
    return sum(values) / len(values) if values else None


def gpu_mem(sample: Mapping[str, Any]) -> tuple[int, int] | None:
    """(used, total) bytes over the node's GPUs, None without GPUs."""
    gpus = [g for g in sample.get("gpus") or () if "mem_used" in g and "mem_total" in g]
    if not gpus:
        return None
    return sum(int(g["mem_used"]) for g in gpus), sum(int(g["mem_total"]) for g in gpus)


def _series(samples: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    for s in samples:
        figures = {
            "cpu_pct": s.get("cpu_pct"),
            "mem_used": s.get("mem_used"),
            "disk_used": s.get("disk_used"),
            "net_rx_bps": s.get("net_rx_bps"),
            "net_tx_bps": s.get("net_tx_bps"),
            "gpu_util_pct": gpu_util(s),
            "gpu_mem_used": (gpu_mem(s) or (None,))[0],
            "gpu_temp_c": max((g["temp_c"] for g in s.get("gpus") or () if "temp_c" in g), default=None),
            "gpu_power_w": sum(g["power_w"] for g in s.get("gpus") or () if "power_w" in g) or None,
        }
        for key, value in figures.items():
            if isinstance(value, int | float):
                series.setdefault(key, []).append(float(value))
    return series


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """run.json's per-node summary: {"samples", "seconds", "<figure>": {"mean", "peak"}, totals}.
    Figures the node never reported (GPU ones on a CPU node) are left out."""
    if not samples:
        return None
    out: dict[str, Any] = {"samples": len(samples), "seconds": round(samples[-1]["t"] - samples[0]["t"], 1)}
    for key, values in _series(samples).items():
        out[key] = {"mean": round(statistics.fmean(values), 1), "peak": round(max(values), 1)}
    last = samples[-1]
    for key in ("mem_total", "disk_total"):
        if isinstance(last.get(key), int):
            out[key] = last[key]
    if gpu_mem(last):
        out["gpu_mem_total"] = gpu_mem(last)[1]  # type: ignore[index]
        out["gpus"] = len(last["gpus"])
    return out


# --------------------------------------------------------------------------- stragglers

LAG = 0.7  # a node below this share of the others' median lags
MIN_BUSY_PCT = 20.0  # the others must be this busy before an idle GPU counts as lagging


def stragglers(
    latest: Mapping[str, Mapping[str, Any]], step_rates: Mapping[str, float] | None = None
) -> dict[str, str]:
    """Nodes that lag the others, with why: a step rate below LAG x the others' median (when the
    job reports progress from more than one node), or GPU utilisation below LAG x the others'
    median while they are busy. Needs at least two nodes to compare."""
    found: dict[str, str] = {}
    for name, why in _lagging(dict(step_rates or {}), "step rate", 0.0).items():
        found[name] = why
    utils = {n: u for n, s in latest.items() if (u := gpu_util(s)) is not None}
    for name, why in _lagging(utils, "GPU use", MIN_BUSY_PCT).items():
        found.setdefault(name, why)
    return found


def _lagging(values: Mapping[str, float], what: str, floor: float) -> dict[str, str]:
    out: dict[str, str] = {}
    if len(values) < 2:
        return out
    for name, value in values.items():
        others = statistics.median(v for n, v in values.items() if n != name)
        if others > floor and value < LAG * others:
            out[name] = f"{what} {value:.3g} vs {others:.3g} on the others"
    return out
