"""lepton-infra's components as a Pulumi component package, for programs in any Pulumi language.

`TrainingCluster`, `ObjectStore` and `JobQueue` are served by
`pulumi.provider.experimental.component_provider_host`; the schema (package `lepton-infra`,
tokens `lepton-infra:index:<Name>`) is inferred from the TypedDicts in `inputs.py` and the output
annotations in `components.py`. The plugin directory users `pulumi package add` is `provider/`
at the repository root; `python -m lepton_infra.provider` runs the same host.
"""

import json
from typing import Any

import pulumi

from lepton_infra import __version__

PACKAGE = "lepton-infra"
"""Package name in the schema: resource tokens are `lepton-infra:index:<Component>`."""


def components() -> "list[type[pulumi.ComponentResource]]":
    """The wrapper classes the package serves, in schema order."""
    from lepton_infra.provider.components import JobQueue, ObjectStore, TrainingCluster

    return [TrainingCluster, ObjectStore, JobQueue]


def schema() -> dict[str, Any]:
    """The package schema exactly as the running plugin returns it to `pulumi package get-schema`.

    Built by the SDK's own `ComponentProvider` (analyzer + schema generator), offline: no CLI,
    no engine, no cloud.
    """
    from pulumi.provider.experimental.component import ComponentProvider

    provider = ComponentProvider(components(), PACKAGE, None, __version__)
    if provider.schema is None:
        raise RuntimeError("the component provider produced no schema")
    doc: dict[str, Any] = json.loads(provider.schema)
    return doc


def serve() -> None:
    """Run the component provider (called by the Pulumi language host with the engine address)."""
    from pulumi.provider.experimental import component_provider_host

    component_provider_host(components=components(), name=PACKAGE, version=__version__)
