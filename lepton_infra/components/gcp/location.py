"""Where GCP resources go: the project (spelled out, since URLs and grants name it), the region
and the zone, each checked for its shape so a typo fails with what was meant, before anything runs.
The store, the queue and the pool all ask here."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import pulumi

from lepton_infra.errors import ConfigError

DEFAULT_REGION = "us-central1"

# Zones do not all end in "-a": these regions have no zone a. Other regions default to "<region>-a".
_ZONE_OVERRIDES = {"us-east1": "us-east1-c", "europe-west1": "europe-west1-b"}

_REGION_RE = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")
_ZONE_RE = re.compile(r"^(?P<region>[a-z]+(?:-[a-z]+)+[0-9]+)-[a-z]$")
_PROJECT_ENV_VARS = ("GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
_PROJECT_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$|^[a-z0-9.-]+:[a-z][-a-z0-9]{4,28}[a-z0-9]$")


def resolve_project(extra: Mapping[str, Any] | None = None) -> str:
    """The GCP project every resource goes into: `extra["project"]`, else the `gcp:project` stack
    config, else the environment variables the provider itself reads. Required, because the queue's
    URL and the Pub/Sub service agent's grants need it spelled out."""
    candidates: list[tuple[str, str | None]] = [
        ("extra['project']", (extra or {}).get("project")),
        ("gcp:project config", pulumi.Config("gcp").get("project")),
    ]
    candidates += [(f"${var}", os.environ.get(var)) for var in _PROJECT_ENV_VARS]
    for source, value in candidates:
        if value:
            if not isinstance(value, str) or not _PROJECT_RE.match(value):
                raise ConfigError(
                    f"GCP project from {source} is {value!r}: a project ID is 6-30 characters of "
                    "lowercase letters, digits and hyphens, starting with a letter"
                )
            return value
    raise ConfigError(
        "no GCP project: set it with `pulumi config set gcp:project <project-id>`, pass "
        "extra={'project': '<project-id>'}, or export GOOGLE_PROJECT"
    )


def resolve_region(region: str | None, zone: str | None = None) -> str:
    """The region to use: `region`, else the zone's region, else `gcp:region` config, else
    us-central1. ConfigError when the format is wrong or the zone lies in another region."""
    if zone is not None:
        zone_region = zone_region_of(zone)
        if region is not None and check_region(region) != zone_region:
            raise ConfigError(
                f"zone {zone!r} is not in region {region!r}: use a zone named {region}-<letter>"
            )
        return zone_region
    if region is not None:
        return check_region(region)
    configured = pulumi.Config("gcp").get("region")
    return check_region(configured) if configured else DEFAULT_REGION


def check_region(region: str) -> str:
    """`region` unchanged if it looks like a GCP region (`us-central1`), else ConfigError."""
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise ConfigError(
            f"region {region!r} is not a GCP region name: expected lowercase words and a number, "
            "like 'us-central1' or 'europe-west4' (a zone such as 'us-central1-a' goes in `zone`)"
        )
    return region


def zone_region_of(zone: str) -> str:
    """`"us-central1-a"` -> `"us-central1"`; ConfigError for anything not shaped like a zone."""
    match = _ZONE_RE.match(zone) if isinstance(zone, str) else None
    if match is None:
        raise ConfigError(
            f"zone {zone!r} is not a GCP zone name: expected '<region>-<letter>', like 'us-central1-a'"
        )
    return match.group("region")


def default_zone(region: str) -> str:
    """A zone of `region` that exists: `<region>-a`, except for regions that have no zone a."""
    return _ZONE_OVERRIDES.get(region, f"{region}-a")
