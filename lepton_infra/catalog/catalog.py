"""The accelerator catalog: which instance type gives N GPUs of a kind on which cloud, at what price.

The data is a vendored CSV (`accelerators.csv`, shipped as package data) with the date each row's
price was read from the cloud's public pricing page. It is dated reference data, not a live price
feed: prices are per node and hour (for GCP N1 rows the VM plus its attached GPUs), in USD, for the
first region listed; spot prices are approximate snapshots and move daily. An empty cell means the
price is unknown (or spot capacity is not generally offered), never zero. `regions` is a curated
subset (a few common regions per cloud where the type is offered), not every region that has it.

Azure's NVadsA10_v5 family carries an NVIDIA A10, which is not AWS's A10G (different memory and
clocks); we do not file it under `A10G`, so `A10G` exists on AWS only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

from lepton_infra.errors import ConfigError

ACCELERATORS: tuple[str, ...] = ("T4", "L4", "A10G", "A100-40GB", "A100-80GB", "H100")
CLOUDS: tuple[str, ...] = ("aws", "gcp", "azure")

_CSV_NAME = "accelerators.csv"


@dataclass(frozen=True)
class CatalogEntry:
    """One way to get `gpus` x `accelerator` per node on `cloud`."""

    cloud: str
    accelerator: str
    gpus: int
    instance_type: str
    vcpus: int
    memory_gib: float
    on_demand_usd: float | None
    spot_usd: float | None
    regions: tuple[str, ...]
    price_read_on: date
    # GCP N1 VMs get their GPUs attached as guest accelerators of this type; None where the machine
    # type bundles its GPUs (g2, a2, a3) and on other clouds.
    gcp_accelerator_type: str | None
    family: str
    source: str = ""

    def hourly_usd(self, spot: bool) -> float | None:
        """Price of one node for one hour, spot or on-demand; None when the catalog does not know it."""
        return self.spot_usd if spot else self.on_demand_usd

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dates as ISO strings, regions as a list)."""
        return {
            "cloud": self.cloud,
            "accelerator": self.accelerator,
            "gpus": self.gpus,
            "instance_type": self.instance_type,
            "family": self.family,
            "gcp_accelerator_type": self.gcp_accelerator_type,
            "vcpus": self.vcpus,
            "memory_gib": self.memory_gib,
            "on_demand_usd": self.on_demand_usd,
            "spot_usd": self.spot_usd,
            "regions": list(self.regions),
            "price_read_on": self.price_read_on.isoformat(),
            "source": self.source,
        }


def _price(cell: str) -> float | None:
    cell = cell.strip()
    return float(cell) if cell else None


def _parse(text: str) -> tuple[CatalogEntry, ...]:
    rows: list[CatalogEntry] = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append(
            CatalogEntry(
                cloud=row["cloud"].strip(),
                accelerator=row["accelerator"].strip(),
                gpus=int(row["gpus"]),
                instance_type=row["instance_type"].strip(),
                vcpus=int(row["vcpus"]),
                memory_gib=float(row["memory_gib"]),
                on_demand_usd=_price(row["on_demand_usd"]),
                spot_usd=_price(row["spot_usd"]),
                regions=tuple(r.strip() for r in row["regions"].split(";") if r.strip()),
                price_read_on=date.fromisoformat(row["price_read_on"].strip()),
                gcp_accelerator_type=row["gcp_accelerator_type"].strip() or None,
                family=row["family"].strip(),
                source=row.get("source", "").strip(),
            )
        )
    return tuple(rows)


@cache
def entries() -> tuple[CatalogEntry, ...]:
    """Every catalog row, in file order (loaded once)."""
    text = resources.files("lepton_infra.catalog").joinpath(_CSV_NAME).read_text(encoding="utf-8")
    return _parse(text)


def canonical_cloud(cloud: str) -> str:
    """`"AWS"` -> `"aws"`; ConfigError naming the value and the clouds we support otherwise."""
    value = str(cloud).strip().lower()
    if value not in CLOUDS:
        raise ConfigError(f"unknown cloud {cloud!r}: choose one of {', '.join(CLOUDS)}")
    return value


def canonical_accelerator(accelerator: str) -> str:
    """`"a100-80gb"` -> `"A100-80GB"`; ConfigError naming the value and the accelerators we know."""
    key = str(accelerator).strip().upper().replace("_", "-")
    for name in ACCELERATORS:
        if name.upper() == key:
            return name
    raise ConfigError(f"unknown accelerator {accelerator!r}: choose one of {', '.join(ACCELERATORS)}")


def _offer_summary(rows: Iterable[CatalogEntry]) -> str:
    """`"T4 (1, 4, 8 GPUs), L4 (1, 4, 8 GPUs)"`: what a cloud offers, for error messages."""
    counts: dict[str, list[int]] = {}
    for e in rows:
        counts.setdefault(e.accelerator, []).append(e.gpus)
    ordered = [a for a in ACCELERATORS if a in counts]
    return ", ".join(f"{a} ({', '.join(str(n) for n in sorted(set(counts[a])))} GPUs)" for a in ordered)


def choices(
    cloud: str | None = None,
    accelerator: str | None = None,
    gpus: int | None = None,
    region: str | None = None,
) -> list[CatalogEntry]:
    """Rows matching every filter given (None = any). Names are canonicalised; unknown ones raise."""
    c = canonical_cloud(cloud) if cloud is not None else None
    a = canonical_accelerator(accelerator) if accelerator is not None else None
    return [
        e
        for e in entries()
        if (c is None or e.cloud == c)
        and (a is None or e.accelerator == a)
        and (gpus is None or e.gpus == gpus)
        and (region is None or region in e.regions)
    ]


def lookup(cloud: str, accelerator: str, gpus: int, region: str | None = None) -> CatalogEntry:
    """The catalog row for `gpus` x `accelerator` per node on `cloud` (and offered in `region`).

    Raises ConfigError saying what is available instead: the clouds, the accelerators that cloud
    offers, the GPU counts for that accelerator there, or the regions of the matching row."""
    c = canonical_cloud(cloud)
    a = canonical_accelerator(accelerator)
    on_cloud = [e for e in entries() if e.cloud == c]
    of_kind = [e for e in on_cloud if e.accelerator == a]
    if not of_kind:
        elsewhere = sorted({e.cloud for e in entries() if e.accelerator == a})
        raise ConfigError(
            f"accelerator {a!r} is not offered on {c} in the catalog; {c} offers: {_offer_summary(on_cloud)}"
            + (f" ({a} is available on: {', '.join(elsewhere)})" if elsewhere else "")
        )
    if isinstance(gpus, bool) or not isinstance(gpus, int):
        raise ConfigError(f"gpus per node must be an integer, got {gpus!r}")
    matches = [e for e in of_kind if e.gpus == gpus]
    if not matches:
        offered = ", ".join(str(n) for n in sorted({e.gpus for e in of_kind}))
        raise ConfigError(f"{gpus} x {a} per node is not offered on {c}; GPU counts offered: {offered}")
    if region is not None:
        in_region = [e for e in matches if region in e.regions]
        if not in_region:
            regions = sorted({r for e in matches for r in e.regions})
            raise ConfigError(
                f"region {region!r} does not offer {gpus} x {a} on {c} in the catalog; "
                f"regions offered: {', '.join(regions)}"
            )
        matches = in_region
    return _cheapest_of(matches, spot=False)


def _cheapest_of(rows: Sequence[CatalogEntry], *, spot: bool) -> CatalogEntry:
    # Unknown prices sort last; ties keep catalog order (stable sort), so results are deterministic.
    return sorted(rows, key=lambda e: (e.hourly_usd(spot) is None, e.hourly_usd(spot) or 0.0))[0]


def cheapest(
    accelerator: str,
    gpus: int,
    *,
    spot: bool = False,
    clouds: Iterable[str] | None = None,
    region: str | None = None,
) -> CatalogEntry:
    """The lowest-priced row for `gpus` x `accelerator` per node across `clouds` (default: all).

    Only rows with a known price for the chosen mode (spot or on-demand) compete."""
    a = canonical_accelerator(accelerator)
    wanted = tuple(canonical_cloud(c) for c in clouds) if clouds is not None else CLOUDS
    candidates = [
        e
        for e in entries()
        if e.cloud in wanted
        and e.accelerator == a
        and e.gpus == gpus
        and (region is None or region in e.regions)
        and e.hourly_usd(spot) is not None
    ]
    if not candidates:
        offered = sorted({(e.cloud, e.gpus) for e in entries() if e.accelerator == a and e.cloud in wanted})
        mode = "spot" if spot else "on-demand"
        where = f" in region {region!r}" if region else ""
        raise ConfigError(
            f"no {mode} price known for {gpus} x {a} on {', '.join(wanted)}{where}; the catalog offers "
            + (", ".join(f"{cl}: {n} GPUs" for cl, n in offered) or "nothing for that accelerator there")
        )
    return _cheapest_of(candidates, spot=spot)


# --- rendering helpers for `lepton-infra catalog` -------------------------------------------------

TABLE_COLUMNS: tuple[str, ...] = (
    "cloud",
    "accelerator",
    "gpus",
    "instance_type",
    "vcpus",
    "memory_gib",
    "on_demand_usd",
    "spot_usd",
    "regions",
    "price_read_on",
)


def _money(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def catalog_table_rows(rows: Iterable[CatalogEntry]) -> list[dict[str, str]]:
    """Rows as display strings keyed by TABLE_COLUMNS (unknown prices shown as "-")."""
    out: list[dict[str, str]] = []
    for e in rows:
        out.append(
            {
                "cloud": e.cloud,
                "accelerator": e.accelerator,
                "gpus": str(e.gpus),
                "instance_type": e.instance_type,
                "vcpus": str(e.vcpus),
                "memory_gib": f"{e.memory_gib:g}",
                "on_demand_usd": _money(e.on_demand_usd),
                "spot_usd": _money(e.spot_usd),
                "regions": ", ".join(e.regions),
                "price_read_on": e.price_read_on.isoformat(),
            }
        )
    return out


def to_json(rows: Iterable[CatalogEntry]) -> str:
    """A JSON array of rows (numbers stay numbers, unknown prices are null)."""
    return json.dumps([e.to_dict() for e in rows], indent=2)


def gpu_instance_types() -> dict[tuple[str, str], CatalogEntry]:
    """(cloud, instance_type) -> row; for GCP N1 rows the key is the machine type (the GPU count
    comes from the attached accelerators), so several rows may share an N1 machine type key only
    if the CSV had duplicates, which the tests forbid."""
    return {(e.cloud, e.instance_type): e for e in entries()}


def rich_table(rows: Iterable[CatalogEntry], title: str | None = None) -> Any:
    """A `rich.table.Table` of the rows, for `lepton-infra catalog` (rich is imported only here)."""
    from rich.table import Table

    table = Table(title=title or "GPU catalog (reference prices, USD per node-hour)")
    numeric = {"gpus", "vcpus", "memory_gib", "on_demand_usd", "spot_usd"}
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="right" if col in numeric else "left")
    for row in catalog_table_rows(rows):
        table.add_row(*(row[col] for col in TABLE_COLUMNS))
    return table
