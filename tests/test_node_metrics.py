"""The node metrics sampler (lepton_infra/node/metrics.py) run for real as a process, its summaries,
straggler flags, cost, and the TensorBoard files made from its samples."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Inventory, Price
from lepton_infra.workload import cost, metrics, tensorboard

SAMPLER = Path(metrics.__file__).parent.parent / "node" / "metrics.py"
FAKE_NVML = Path(__file__).parent / "fixtures" / "fake_nvml"


def sample_for(tmp_path: Path, env: dict[str, str], samples: int = 2) -> list[dict[str, Any]]:
    """Run the real sampler every 0.2 s until it wrote `samples` lines, then stop it as the agent does."""
    (tmp_path / "logs").mkdir(exist_ok=True)
    out = tmp_path / "logs" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, str(SAMPLER), str(tmp_path), "0.2"], env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 30
        while len(metrics.read_samples(out)) < samples and time.monotonic() < deadline:
            assert proc.poll() is None, "the sampler exited early"
            time.sleep(0.1)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM is its normal end
    return metrics.read_samples(out)


def test_without_a_gpu_the_sampler_writes_node_figures_and_no_gpu_fields(tmp_path: Path) -> None:
    rows = sample_for(tmp_path, {"PYTHONPATH": ""})
    assert len(rows) >= 2
    for row in rows:
        assert "gpus" not in row  # absent, not zero: "no GPU" must not read as "idle GPU"
        assert 0 <= row["mem_used"] <= row["mem_total"] and 0 < row["disk_used"] <= row["disk_total"]
        assert row["cores"] == os.cpu_count()
    later = rows[-1]
    assert 0.0 <= later["cpu_pct"] <= 100.0 and later["net_rx_bps"] >= 0
    summary = metrics.summarise(rows)
    assert summary is not None and not any(k.startswith("gpu") for k in summary)


def test_with_nvml_the_sampler_reports_each_gpu_and_leaves_out_what_one_does_not_support(
    tmp_path: Path,
) -> None:
    rows = sample_for(tmp_path, {"PYTHONPATH": str(FAKE_NVML)})
    gpus = rows[-1]["gpus"]
    assert gpus[0] == {
        "index": 0,
        "util_pct": 90,
        "mem_used": 3 << 30,
        "mem_total": 16 << 30,
        "temp_c": 65,
        "power_w": 212.5,
    }
    assert gpus[1]["util_pct"] == 30 and "power_w" not in gpus[1]  # NotSupported: left out
    summary = metrics.summarise(rows)
    assert summary is not None
    assert summary["gpu_util_pct"] == {"mean": 60.0, "peak": 60.0} and summary["gpus"] == 2
    assert summary["gpu_mem_total"] == 32 << 30 and summary["gpu_power_w"]["peak"] == 212.5


def test_a_library_that_sees_no_gpu_gives_no_gpu_fields(tmp_path: Path) -> None:
    rows = sample_for(tmp_path, {"PYTHONPATH": str(FAKE_NVML), "FAKE_NVML_GPUS": "0"}, samples=1)
    assert rows and all("gpus" not in r for r in rows)


def test_torn_and_foreign_lines_are_skipped_when_reading_samples() -> None:
    data = b'{"t": 1, "cpu_pct": 5}\nnot json\n{"no_t": 1}\n{"t": 2, "cpu'
    assert metrics.parse_lines(data) == [{"t": 1, "cpu_pct": 5}]


def gpu_sample(util: float) -> dict[str, Any]:
    return {"t": 1.0, "gpus": [{"index": 0, "util_pct": util, "mem_used": 1, "mem_total": 2}]}


def test_a_node_whose_gpu_use_or_step_rate_lags_the_others_is_flagged() -> None:
    latest = {"node-0": gpu_sample(95), "node-1": gpu_sample(93), "node-2": gpu_sample(40)}
    assert set(metrics.stragglers(latest)) == {"node-2"}
    assert "GPU use 40" in metrics.stragglers(latest)["node-2"]
    rates = {"node-0": 10.0, "node-1": 4.0, "node-2": 9.5}
    assert set(metrics.stragglers({}, rates)) == {"node-1"}
    # Idle everywhere (the job is loading data) or a single node: nothing to compare, no flag.
    assert metrics.stragglers({"a": gpu_sample(5), "b": gpu_sample(0)}) == {}
    assert metrics.stragglers({"a": gpu_sample(5)}, {"a": 1.0}) == {}
    # CPU-only nodes have no GPU figures: never flagged for GPU use.
    assert metrics.stragglers({"a": {"t": 1, "cpu_pct": 90}, "b": {"t": 1, "cpu_pct": 1}}) == {}


def test_the_board_shows_one_line_per_node_flags_the_straggler_and_the_cost() -> None:
    from lepton_infra.node_view import NodeBoard, node_line

    board = NodeBoard(Price(usd_per_node_hour=3.6, market="on-demand"), nodes=3)
    board.started -= 100  # 100 s into the run: 3 nodes x $3.60/h x 100 s = $0.30
    for node, util in (("node-0", 95), ("node-1", 97), ("node-2", 30)):
        board.sample(
            node, {**gpu_sample(util), "cpu_pct": 50.0, "cores": 8, "mem_used": 2 << 30, "mem_total": 8 << 30}
        )
    text = board.render().plain.splitlines()
    assert text[0] == "  node-0 | GPU  95%  0.0/0.0 GiB | CPU  50% of 8 | RAM  2.0/8.0 GiB"
    assert "STRAGGLER: GPU use 30" in text[2] and "STRAGGLER" not in text[0] + text[1]
    assert text[3].startswith("cost so far $0.30") and "(on-demand), 3 node(s) x $3.60/h" in text[3]
    assert node_line("cpu-node", {"t": 1, "cpu_pct": 12.0, "cores": 2}) == "cpu-node | GPU - | CPU  12% of 2"


def test_on_a_terminal_the_node_lines_live_under_the_bar_and_stay_after_the_run() -> None:
    import io

    from rich.console import Console

    from lepton_infra.display import LiveView

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    view = LiveView(console, price=Price(usd_per_node_hour=0.0, market="local"), nodes=2)
    try:
        view.on_metrics(
            "node-0", {"t": 1, "cpu_pct": 40.0, "cores": 2, "mem_used": 1 << 30, "mem_total": 4 << 30}
        )
        assert view.progress.live.is_started  # the in-place region runs before any progress line
        view.on_progress("node-0", {"epoch": 1, "epochs": 1, "step": 5, "steps": 10, "loss": 0.5})
        view.on_metrics(
            "node-0", {"t": 2, "cpu_pct": 55.0, "cores": 2, "mem_used": 1 << 30, "mem_total": 4 << 30}
        )
        view.progress.refresh()
        live = out.getvalue()
        assert "training" in live and "node-0 | GPU - | CPU  55% of 2 | RAM  1.0/4.0 GiB" in live
    finally:
        view.close()
    # After the run the last figures stay printed (the live region itself is transient).
    assert out.getvalue().rstrip().endswith("cost so far $0.0000 (local), 2 node(s) x $0.00/h")


@pytest.mark.parametrize("bad", [-1, 0.1, 7200, float("nan"), True])
def test_a_bad_sampling_interval_is_refused_naming_the_option(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"--metrics-every.*0 \(off\) or 0.2 to 3600"):
        metrics.check_every(bad)


# --------------------------------------------------------------------------- cost


def test_cost_is_price_times_nodes_times_hours_and_unknown_without_a_price() -> None:
    price = Price(usd_per_node_hour=2.0, market="spot")
    got = cost.run_cost(
        price, 3, "2026-01-01T00:00:00+00:00", ["2026-01-01T00:30:00+00:00", None], running=False
    )
    assert got == {
        "usd": 3.0,
        "usd_per_node_hour": 2.0,
        "market": "spot",
        "nodes": 3,
        "hours": 0.5,
        "final": True,
    }
    assert cost.run_cost(None, 3, "2026-01-01T00:00:00+00:00", [], running=False) is None
    assert cost.money(got) == "$3.00 (spot)" and cost.money(None) == "-"


def test_the_inventory_price_is_validated_naming_the_field() -> None:
    doc = {
        "version": 1,
        "cluster": "c",
        "cloud": "aws",
        "user": "u",
        "nodes": [
            {
                "name": "n",
                "host": "h",
                "private_ip": "10.0.0.1",
                "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO/N8ZsGH8NmL9WhmXg8zGJBer08CIidiFp4G0z0zwKm",
            }
        ],
    }
    assert Inventory.from_dict({**doc, "price": {"usd_per_node_hour": 0.5, "market": "on-demand"}}).price
    with pytest.raises(ConfigError, match=r"price\.usd_per_node_hour.*-1"):
        Inventory.from_dict({**doc, "price": {"usd_per_node_hour": -1, "market": "spot"}})
    with pytest.raises(ConfigError, match=r"price\.market"):
        Inventory.from_dict({**doc, "price": {"usd_per_node_hour": 1, "market": "reserved"}})


def test_since_takes_a_number_and_a_unit() -> None:
    assert time.time() - cost.parse_since("7d") == pytest.approx(7 * 86400, abs=5)
    with pytest.raises(ConfigError, match=r"--since 'week'.*e\.g\. 30m, 12h, 7d"):
        cost.parse_since("week")


# --------------------------------------------------------------------------- TensorBoard files


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """A protobuf message's (field, wire type, value) triples, decoded from scratch."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = struct.unpack_from("<d", data, i)[0], i + 8
        elif wire == 5:
            value, i = struct.unpack_from("<f", data, i)[0], i + 4
        else:
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        out.append((number, wire, value))
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def test_event_files_are_tfrecords_of_events_with_scalar_summaries(tmp_path: Path) -> None:
    writer = tensorboard.EventWriter(tmp_path)
    writer.scalars(7, 1700000000.5, {"node/cpu_pct": 42.5})
    raw = writer.close().read_bytes()
    assert writer.path.name.startswith("events.out.tfevents.")
    events, i = [], 0
    while i < len(raw):
        (length,) = struct.unpack_from("<Q", raw, i)
        # The CRC-32C test vector, then each frame's masked CRCs checked against google_crc32c.
        assert tensorboard.crc32c(b"123456789") == 0xE3069283
        assert struct.unpack_from("<I", raw, i + 8)[0] == tensorboard.masked_crc(raw[i : i + 8])
        data = raw[i + 12 : i + 12 + length]
        assert struct.unpack_from("<I", raw, i + 12 + length)[0] == tensorboard.masked_crc(data)
        events.append(_fields(data))
        i += 16 + length
    assert events[0][2] == (3, 2, b"brain.Event:2")
    scalar = dict((n, v) for n, _, v in events[1])
    assert scalar[1] == 1700000000.5 and scalar[2] == 7
    (value,) = [v for n, _, v in _fields(scalar[5]) if n == 1]
    assert dict((n, v) for n, _, v in _fields(value)) == {1: b"node/cpu_pct", 2: 42.5}


def test_writing_the_tensorboard_files_again_replaces_them(tmp_path: Path) -> None:
    from lepton_infra.workload.report import write_tensorboard

    samples = {"node-0": [{"t": 1.0, "cpu_pct": 5.0}]}
    write_tensorboard(tmp_path, samples, {})
    time.sleep(1.1)  # a new file name (it carries the second)
    write_tensorboard(tmp_path, samples, {})
    assert len(list((tmp_path / "node-0").glob("events.out.tfevents.*"))) == 1


def test_crc32c_matches_an_independent_implementation() -> None:
    google_crc32c = pytest.importorskip("google_crc32c")
    for data in (b"", b"a", bytes(range(256)) * 3):
        assert tensorboard.crc32c(data) == int.from_bytes(google_crc32c.Checksum(data).digest(), "big")
