"""The Google APIs a component calls, enabled on request (`extra={"enable_apis": True}`) before its
first resource, for a fresh project; and the child options that keep every resource after them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
from pulumi_gcp import projects

from lepton_infra.components.common import child
from lepton_infra.errors import ConfigError

# The services each component calls. A new project has Cloud Storage on but not Compute Engine,
# Pub/Sub, Secret Manager or IAM, and creating anything of a disabled service fails with
# SERVICE_DISABLED; Cloud Resource Manager answers the project-number lookup of the queue.
POOL_APIS = ("compute.googleapis.com", "iam.googleapis.com", "secretmanager.googleapis.com")
STORE_APIS = ("storage.googleapis.com",)
QUEUE_APIS = ("pubsub.googleapis.com", "cloudresourcemanager.googleapis.com")


def pop_enable_apis(extra: dict[str, Any]) -> bool:
    """Take the GCP-only switch `extra["enable_apis"]` out of `extra` (it is no provider argument)."""
    value = extra.pop("enable_apis", False)
    if not isinstance(value, bool):
        raise ConfigError(f"extra['enable_apis'] is {value!r}; allowed: true or false")
    return value


def enable_apis(parent: pulumi.Resource, stem: str, project: str, services: Sequence[str]) -> list[Any]:
    """One `projects.Service` per API, under `parent`. They are never disabled on destroy: other
    workloads of the project may use the same APIs, and turning one off would break them."""
    return [
        projects.Service(
            f"{stem}-api-{service.split('.')[0]}",
            projects.ServiceArgs(
                project=project,
                service=service,
                disable_on_destroy=False,
                disable_dependent_services=False,
            ),
            opts=child(parent),
        )
        for service in services
    ]


def after(parent: pulumi.Resource, opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Child options that keep the `depends_on` a component was given (Pulumi does not pass a
    component's dependencies on to its children), so enabled APIs come before every resource."""
    return child(parent, depends_on=opts.depends_on if opts is not None else None)
