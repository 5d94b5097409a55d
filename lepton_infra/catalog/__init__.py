"""Vendored, dated GPU accelerator catalog and its lookup API (see `catalog.py`)."""

from lepton_infra.catalog.catalog import (
    ACCELERATORS,
    CLOUDS,
    TABLE_COLUMNS,
    CatalogEntry,
    canonical_accelerator,
    canonical_cloud,
    catalog_table_rows,
    cheapest,
    choices,
    entries,
    gpu_instance_types,
    lookup,
    rich_table,
    to_json,
)

__all__ = [
    "ACCELERATORS",
    "CLOUDS",
    "TABLE_COLUMNS",
    "CatalogEntry",
    "canonical_accelerator",
    "canonical_cloud",
    "catalog_table_rows",
    "cheapest",
    "choices",
    "entries",
    "gpu_instance_types",
    "lookup",
    "rich_table",
    "to_json",
]
