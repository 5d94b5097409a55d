"""Node-side sampler: what the machine does while a run's job runs, one JSON line per sample.

Standard library only (a node has no `lepton_infra`). The controller sends this file's source in
the launch spec; the agent's supervisor writes it beside the run and starts it as its own small
process (so a bug here can never stop the job or the heartbeat):

    python metrics.py RUN_DIR EVERY_S

Every EVERY_S seconds it appends to RUN_DIR/logs/metrics.jsonl (collected with the logs):

    {"t": 1733360000.1, "cpu_pct": 87.5, "cores": 2, "mem_used": ..., "mem_total": ...,
     "disk_used": ..., "disk_total": ..., "net_rx_bps": ..., "net_tx_bps": ...,
     "gpus": [{"index": 0, "util_pct": 97, "mem_used": ..., "mem_total": ..., "temp_c": 71,
               "power_w": 242.5}]}

Node figures come from /proc (CPU since the previous sample, memory, network except loopback)
and statvfs of the run's folder. GPU figures come from NVML through the `pynvml` module
(nvidia-ml-py), imported only if it is installed and finds a GPU: without one, `gpus` (and any
figure a GPU does not report) is ABSENT, never zero, so "no GPU" cannot read as "idle GPU".
The sampler stops when its parent (the supervisor) is gone or on SIGTERM. Its own cost is a few
small /proc reads per sample (bench/sampler.py measures it); a file past MAX_BYTES halves the
sampling rate rather than filling the disk."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

MAX_BYTES = 16 << 20  # each time the file grows past another multiple of this, sample half as often


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs together since boot (first line of /proc/stat)."""
    try:
        fields = [int(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def memory() -> dict[str, int]:
    try:
        info = {}
        for row in _read("/proc/meminfo").splitlines():
            key, _, rest = row.partition(":")
            info[key] = int(rest.split()[0]) * 1024
        total, available = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    except (OSError, ValueError, KeyError, IndexError):
        return {}
    return {"mem_used": total - available, "mem_total": total}


def net_bytes() -> tuple[int, int] | None:
    """(received, sent) bytes since boot over every interface but loopback."""
    try:
        rx = tx = 0
        for row in _read("/proc/net/dev").splitlines()[2:]:
            name, _, rest = row.partition(":")
            if name.strip() == "lo":
                continue
            cols = rest.split()
            rx, tx = rx + int(cols[0]), tx + int(cols[8])
    except (OSError, ValueError, IndexError):
        return None
    return rx, tx


def disk(path: str) -> dict[str, int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return {}
    total = st.f_blocks * st.f_frsize
    return {"disk_used": total - st.f_bfree * st.f_frsize, "disk_total": total}


class Gpus:
    """NVML, when the `pynvml` module is there and sees at least one GPU; else nothing at all."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            import pynvml  # noqa: PLC0415 - optional: only nodes with nvidia-ml-py have it

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.nvml = pynvml if self.handles else None
        except Exception:  # noqa: BLE001 - no library, no driver, no GPU: no GPU fields
            self.nvml, self.handles = None, []

    def sample(self) -> list[dict[str, Any]]:
        nv = self.nvml
        out: list[dict[str, Any]] = []
        if nv is None:
            return out
        for index, handle in enumerate(self.handles):
            gpu: dict[str, Any] = {"index": index}
            # Each figure on its own: a GPU that does not report power still reports the rest.
            for key, read in (
                ("util_pct", lambda h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                ("mem_used", lambda h: nv.nvmlDeviceGetMemoryInfo(h).used),
                ("mem_total", lambda h: nv.nvmlDeviceGetMemoryInfo(h).total),
                ("temp_c", lambda h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                ("power_w", lambda h: round(nv.nvmlDeviceGetPowerUsage(h) / 1000.0, 1)),
            ):
                try:
                    gpu[key] = read(handle)
                except Exception:  # noqa: BLE001, S112 - NVMLError_NotSupported and kin
                    continue
            out.append(gpu)
        return out


class Sampler:
    """Keeps the previous counters so CPU and network are rates over the last interval."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.gpus = Gpus()
        self.cores = os.cpu_count() or 1
        self.cpu = cpu_times()
        self.net = net_bytes()
        self.at = time.monotonic()

    def sample(self) -> dict[str, Any]:
        now, cpu, net = time.monotonic(), cpu_times(), net_bytes()
        out: dict[str, Any] = {"t": round(time.time(), 3), "cores": self.cores}
        if cpu and self.cpu and cpu[1] > self.cpu[1]:
            out["cpu_pct"] = round(100.0 * (cpu[0] - self.cpu[0]) / (cpu[1] - self.cpu[1]), 1)
        out.update(memory())
        out.update(disk(self.run_dir))
        span = now - self.at
        if net and self.net and span > 0:
            out["net_rx_bps"] = round((net[0] - self.net[0]) / span)
            out["net_tx_bps"] = round((net[1] - self.net[1]) / span)
        gpus = self.gpus.sample()
        if gpus:
            out["gpus"] = gpus
        self.cpu, self.net, self.at = cpu, net, now
        return out


def run(run_dir: str, every: float) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    parent = os.getppid()
    path = os.path.join(run_dir, "logs", "metrics.jsonl")
    sampler = Sampler(run_dir)
    written, limit = 0, MAX_BYTES
    deadline = time.monotonic() + min(every, 1.0)  # the first sample soon: the live view wants it
    while not stop and os.getppid() == parent:
        time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
        if time.monotonic() < deadline:
            continue
        line = (json.dumps(sampler.sample(), separators=(",", ":")) + "\n").encode()
        try:
            with open(path, "ab") as f:
                f.write(line)
        except OSError:
            pass  # a full disk: the job's own error is what matters; try again next time
        written += len(line)
        if written > limit:
            every, limit = every * 2, limit + MAX_BYTES
        deadline = time.monotonic() + every  # never a burst of catch-up samples after a stall
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: metrics.py RUN_DIR EVERY_S", file=sys.stderr)
        return 2
    try:
        every = float(argv[2])
    except ValueError:
        print(f"metrics.py: EVERY_S must be a number of seconds, got {argv[2]!r}", file=sys.stderr)
        return 2
    return run(os.path.abspath(argv[1]), every)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
