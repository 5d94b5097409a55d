"""What a run costs: the inventory's price per node-hour (the catalog price the stack computed, spot
or on-demand as the pool runs; 0 on the local pool) x nodes x the run's wall time, from its
record's creation (the nodes are held from the first connection) to its last node's end, or to
now while it runs. No price in the inventory: the cost is unknown (None), never 0."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable
from typing import Any

from lepton_infra.errors import ConfigError
from lepton_infra.inventory import Price


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def run_cost(
    price: Price | None, nodes: int, created: str | None, ended: Iterable[str | None], *, running: bool
) -> dict[str, Any] | None:
    """run.json's `cost`: {"usd", "usd_per_node_hour", "market", "nodes", "hours", "final"}.
    `ended` are the nodes' end times; while `running`, the span ends now (`final` false)."""
    start = _ts(created)
    if price is None or start is None:
        return None
    ends = [t for t in map(_ts, ended) if t is not None]
    end = time.time() if running or not ends else max(ends)
    hours = max(0.0, end - start) / 3600.0
    return {
        "usd": round(price.usd_per_node_hour * nodes * hours, 4),
        "usd_per_node_hour": price.usd_per_node_hour,
        "market": price.market,
        "nodes": nodes,
        "hours": round(hours, 4),
        "final": not running,
    }


def so_far(cost: dict[str, Any] | None, created: str | None) -> dict[str, Any] | None:
    """A running run's recorded cost brought up to now (its price and nodes as recorded)."""
    if not cost or cost.get("final"):
        return cost
    start = _ts(created)
    if start is None:
        return cost
    hours = max(0.0, time.time() - start) / 3600.0
    usd = round(float(cost["usd_per_node_hour"]) * int(cost["nodes"]) * hours, 4)
    return {**cost, "usd": usd, "hours": round(hours, 4)}


def money(cost: dict[str, Any] | None) -> str:
    """`$0.0123 (spot)`, or `-` when unknown."""
    if not cost or not isinstance(cost.get("usd"), int | float):
        return "-"
    usd = float(cost["usd"])
    shown = f"${usd:,.2f}" if usd >= 1 else f"${usd:.4f}"
    return f"{shown} ({cost.get('market')})" if cost.get("market") else shown


_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str) -> float:
    """`7d`, `12h`, `30m`, `2w`, `90s` as an epoch time that many seconds ago."""
    found = _SINCE.match(value.strip())
    if not found:
        raise ConfigError(
            f"--since {value!r} is not a duration: use a number and a unit, e.g. 30m, 12h, 7d, 2w"
        )
    return time.time() - int(found.group(1)) * _UNIT_S[found.group(2)]


def created_after(created: str | None, since: float) -> bool:
    ts = _ts(created)
    return ts is not None and ts >= since
