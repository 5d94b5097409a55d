"""The accelerator catalog: its vendored rows are internally consistent with the clouds' instance
families, and the lookup API finds every offer and explains what is available when it cannot."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

from lepton_infra.catalog import (
    ACCELERATORS,
    CLOUDS,
    TABLE_COLUMNS,
    CatalogEntry,
    catalog_table_rows,
    cheapest,
    choices,
    entries,
    lookup,
    to_json,
)
from lepton_infra.errors import ConfigError


def _gcp_g2_gpus(m: re.Match[str]) -> int:
    # g2-standard-4/8/12/16/32 carry one L4; 24, 48 and 96 carry 2, 4 and 8 (vCPUs / 12).
    vcpus = int(m.group(1))
    return {24: 2, 48: 4, 96: 8}.get(vcpus, 1)


# (cloud, regex, accelerator, gpus as a function of the match or None when the GPU count is not in
# the name). Written from the clouds' public instance-type documentation, independently of the CSV.
FAMILY_RULES: list[tuple[str, str, str, object]] = [
    ("aws", r"g4dn\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)", "T4", lambda m: 1),
    ("aws", r"g4dn\.12xlarge", "T4", lambda m: 4),
    ("aws", r"g4dn\.metal", "T4", lambda m: 8),
    ("aws", r"g5\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)", "A10G", lambda m: 1),
    ("aws", r"g5\.(12|24)xlarge", "A10G", lambda m: 4),
    ("aws", r"g5\.48xlarge", "A10G", lambda m: 8),
    ("aws", r"g6\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)", "L4", lambda m: 1),
    ("aws", r"g6\.(12|24)xlarge", "L4", lambda m: 4),
    ("aws", r"g6\.48xlarge", "L4", lambda m: 8),
    ("aws", r"p4d\.24xlarge", "A100-40GB", lambda m: 8),
    ("aws", r"p4de\.24xlarge", "A100-80GB", lambda m: 8),
    ("aws", r"p5\.48xlarge", "H100", lambda m: 8),
    ("gcp", r"n1-(standard|highmem)-(\d+)", "T4", None),
    ("gcp", r"g2-standard-(\d+)", "L4", _gcp_g2_gpus),
    ("gcp", r"a2-highgpu-(\d+)g", "A100-40GB", lambda m: int(m.group(1))),
    ("gcp", r"a2-megagpu-16g", "A100-40GB", lambda m: 16),
    ("gcp", r"a2-ultragpu-(\d+)g", "A100-80GB", lambda m: int(m.group(1))),
    ("gcp", r"a3-(highgpu|megagpu|edgegpu)-(\d+)g", "H100", lambda m: int(m.group(2))),
    ("azure", r"Standard_NC(\d+)as_T4_v3", "T4", lambda m: 4 if m.group(1) == "64" else 1),
    ("azure", r"Standard_NC(\d+)ads_A100_v4", "A100-80GB", lambda m: int(m.group(1)) // 24),
    ("azure", r"Standard_ND96asr_v4", "A100-40GB", lambda m: 8),
    ("azure", r"Standard_ND96amsr_A100_v4", "A100-80GB", lambda m: 8),
    ("azure", r"Standard_ND96isr_H100_v5", "H100", lambda m: 8),
]


def _rule_for(e: CatalogEntry) -> tuple[str, object]:
    for cloud, pattern, accel, gpus in FAMILY_RULES:
        m = re.fullmatch(pattern, e.instance_type)
        if cloud == e.cloud and m:
            return accel, (gpus(m) if callable(gpus) else None)
    raise AssertionError(f"{e.cloud} {e.instance_type} matches no known GPU family")


@pytest.mark.parametrize("entry", entries(), ids=lambda e: f"{e.cloud}-{e.instance_type}")
def test_every_row_is_the_right_family_and_gpu_count(entry: CatalogEntry) -> None:
    accel, gpus = _rule_for(entry)
    assert entry.accelerator == accel
    if gpus is not None:
        assert entry.gpus == gpus
    # The family column is the instance type's family, not free text.
    if entry.cloud in ("aws", "gcp"):
        assert re.split(r"[.-]", entry.instance_type)[0] == entry.family
    else:
        # Standard_NC4as_T4_v3 -> family NCasT4_v3 (the size digits dropped).
        stem = re.sub(r"^Standard_(N[CDV])\d+", r"\1", entry.instance_type)
        assert stem.replace("_", "") == entry.family.replace("_", "")


def test_gcp_attached_gpus_only_on_n1_and_fit_the_machine() -> None:
    for e in entries():
        if e.cloud == "gcp" and e.family == "n1":
            assert e.gcp_accelerator_type == "nvidia-tesla-t4"
            # N1 with T4: 1, 2 or 4 GPUs, and the machine needs vCPUs to drive them.
            assert e.gpus in (1, 2, 4)
            assert e.vcpus >= 4 * e.gpus
        else:
            assert e.gcp_accelerator_type is None, f"{e.instance_type} bundles its GPUs"


def test_rows_are_unique_per_cloud_accelerator_and_gpu_count() -> None:
    keys = [(e.cloud, e.accelerator, e.gpus) for e in entries()]
    assert len(keys) == len(set(keys))
    types = [(e.cloud, e.instance_type) for e in entries()]
    assert len(types) == len(set(types))


def test_prices_are_sane_and_dated() -> None:
    for e in entries():
        assert e.cloud in CLOUDS and e.accelerator in ACCELERATORS
        assert e.vcpus > 0 and e.memory_gib > 0 and e.regions
        assert isinstance(e.price_read_on, date) and e.price_read_on <= date.today()
        assert e.on_demand_usd is None or e.on_demand_usd >= 0
        assert e.spot_usd is None or e.spot_usd >= 0
        if e.spot_usd is not None and e.on_demand_usd is not None:
            assert e.spot_usd <= e.on_demand_usd, e.instance_type


def test_azure_a10_is_not_sold_as_a10g() -> None:
    assert not choices(cloud="azure", accelerator="A10G")
    with pytest.raises(ConfigError) as err:
        lookup("azure", "A10G", 1)
    msg = str(err.value)
    assert "'A10G'" in msg and "azure offers" in msg and "T4" in msg and "aws" in msg


OFFERS = sorted({(e.cloud, e.accelerator, e.gpus) for e in entries()})


@pytest.mark.parametrize(("cloud", "accelerator", "gpus"), OFFERS)
def test_lookup_finds_every_offer_in_each_of_its_regions(cloud: str, accelerator: str, gpus: int) -> None:
    entry = lookup(cloud, accelerator, gpus)
    assert (entry.cloud, entry.accelerator, entry.gpus) == (cloud, accelerator, gpus)
    for region in entry.regions:
        assert lookup(cloud, accelerator, gpus, region=region) == entry


def test_every_accelerator_exists_somewhere_and_where_expected() -> None:
    where = {a: sorted({e.cloud for e in entries() if e.accelerator == a}) for a in ACCELERATORS}
    assert where == {
        "T4": ["aws", "azure", "gcp"],
        "L4": ["aws", "gcp"],
        "A10G": ["aws"],
        "A100-40GB": ["aws", "azure", "gcp"],
        "A100-80GB": ["aws", "azure", "gcp"],
        "H100": ["aws", "azure", "gcp"],
    }


def test_names_are_accepted_in_any_case_and_canonicalised() -> None:
    assert lookup("AWS", "t4", 1).accelerator == "T4"
    assert lookup("gcp", "a100-80gb", 8).instance_type == "a2-ultragpu-8g"
    assert lookup("Azure", "h100", 8).instance_type == "Standard_ND96isr_H100_v5"


def test_unknown_cloud_names_the_value_and_the_clouds() -> None:
    with pytest.raises(ConfigError, match=r"unknown cloud 'oracle'.*aws, gcp, azure"):
        lookup("oracle", "T4", 1)


def test_unknown_accelerator_names_the_value_and_the_accelerators() -> None:
    with pytest.raises(ConfigError, match=r"unknown accelerator 'V100'.*T4, L4, A10G, A100-40GB"):
        lookup("aws", "V100", 1)
    with pytest.raises(ConfigError, match="unknown accelerator"):
        choices(accelerator="K80")


def test_gpu_count_not_offered_lists_the_counts_that_are() -> None:
    with pytest.raises(
        ConfigError, match=r"3 x A10G per node is not offered on aws; GPU counts offered: 1, 4, 8"
    ):
        lookup("aws", "A10G", 3)


def test_region_not_offered_lists_the_regions_that_are() -> None:
    with pytest.raises(ConfigError) as err:
        lookup("gcp", "T4", 1, region="us-east-1")
    assert "'us-east-1'" in str(err.value)
    for region in lookup("gcp", "T4", 1).regions:
        assert region in str(err.value)


def test_choices_filters_combine() -> None:
    assert {e.cloud for e in choices(accelerator="H100")} == set(CLOUDS)
    eight_h100_gcp = choices(cloud="gcp", accelerator="H100", gpus=8)
    assert [e.instance_type for e in eight_h100_gcp] == ["a3-highgpu-8g"]
    assert all("eastus" in e.regions for e in choices(region="eastus"))
    assert choices() == list(entries())


def test_cheapest_picks_the_lowest_price_for_the_mode() -> None:
    for accel in ACCELERATORS:
        for gpus in sorted({e.gpus for e in entries() if e.accelerator == accel}):
            for spot in (False, True):
                priced = [
                    e.hourly_usd(spot)
                    for e in entries()
                    if e.accelerator == accel and e.gpus == gpus and e.hourly_usd(spot) is not None
                ]
                if not priced:
                    with pytest.raises(ConfigError, match="no .* price known"):
                        cheapest(accel, gpus, spot=spot)
                    continue
                assert cheapest(accel, gpus, spot=spot).hourly_usd(spot) == min(priced)


def test_cheapest_respects_clouds_and_region() -> None:
    assert cheapest("H100", 8, clouds=["gcp"]).cloud == "gcp"
    assert cheapest("T4", 1, region="westeurope").cloud == "azure"
    with pytest.raises(ConfigError, match="no spot price known for 8 x H100"):
        cheapest("H100", 8, spot=True, clouds=["aws"])


def test_table_rows_and_json_show_every_entry() -> None:
    rows = catalog_table_rows(entries())
    assert len(rows) == len(entries())
    assert all(tuple(r) == TABLE_COLUMNS for r in rows)
    p5 = next(r for r in rows if r["instance_type"] == "p5.48xlarge")
    assert p5["spot_usd"] == "-" and p5["gpus"] == "8"
    data = json.loads(to_json(choices(cloud="gcp", accelerator="T4")))
    assert [d["gpus"] for d in data] == [1, 2, 4]
    assert data[0]["gcp_accelerator_type"] == "nvidia-tesla-t4"
    assert data[0]["price_read_on"] == "2025-05-01"


@pytest.mark.parametrize(
    ("accelerator", "pre_cut_usd"), [("A100-40GB", 32.7726), ("A100-80GB", 40.9657), ("H100", 98.32)]
)
def test_aws_p4_and_p5_prices_are_the_ones_after_the_june_2025_cut(
    accelerator: str, pre_cut_usd: float
) -> None:
    """AWS cut P4 (about a third) and P5 (about 45%) on-demand prices in June 2025."""
    entry = lookup("aws", accelerator, 8)
    assert entry.price_read_on >= date(2025, 6, 5)
    assert entry.on_demand_usd is not None and 0.5 * pre_cut_usd < entry.on_demand_usd < 0.7 * pre_cut_usd
