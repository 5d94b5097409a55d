"""The Pulumi program: one TrainingCluster per stack, configured by `lepton:*` keys in
`stacks/Pulumi.<env>.yaml`. Every key is validated before any resource exists, so a typo fails
`pulumi preview` with one clear message instead of a half-built graph."""

from __future__ import annotations

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from lepton_infra import config as stack_config
from lepton_infra.components import TrainingCluster
from lepton_infra.errors import ConfigError


class StackConfigError(ConfigError, pulumi.RunError):
    """A bad `lepton:*` value. Also a pulumi.RunError, which `pulumi preview`/`up` print as the
    message alone (as for Pulumi's own config errors) instead of a traceback with program source."""


raw = {spec.name: pulumi.Config(stack_config.NAMESPACE).get(spec.name) for spec in stack_config.KEYS}
unknown = [
    key.split(":", 1)[1]
    for key in {*CONFIG.get(), *get_config_env()}  # every key set for the stack, to reject typos
    if key.startswith(f"{stack_config.NAMESPACE}:") and key.split(":", 1)[1] not in raw
]
try:
    validated = stack_config.parse(
        {**{k: v for k, v in raw.items() if v is not None}, **dict.fromkeys(unknown, "")},
        cluster=pulumi.get_project() + "-" + pulumi.get_stack(),
        env=pulumi.get_stack(),
    )
except ConfigError as exc:
    raise StackConfigError(str(exc)) from None

cluster = TrainingCluster(pulumi.get_stack(), validated.args)

pulumi.export("inventory", cluster.inventory)
pulumi.export("store_url", cluster.store_url)
pulumi.export("queue_url", cluster.queue_url)
pulumi.export("hourly_cost_usd", validated.hourly_cost_usd)
if cluster.private_key is not None:
    pulumi.export("private_key", cluster.private_key)
