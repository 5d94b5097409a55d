"""Each node's SSH host private key in the pool's Key Vault, readable by that node's identity alone
(`AzureHostKeySecrets`), and the first-boot commands that fetch it (`host_key_fetch`)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.keyvault as keyvault
import pulumi_random as random

from lepton_infra.components.azure.arm import (
    ROLE_KEY_VAULT_SECRETS_USER,
    client_config,
    grant_role,
    role_definition_id,
)
from lepton_infra.components.common import child, compact_name, typed_args
from lepton_infra.components.secret_fetch import fetch_command


class AzureHostKeySecrets(pulumi.ComponentResource):
    """The pool's Key Vault (RBAC authorization, no access policies) with each node's SSH host
    private key as its own secret, so custom data never holds it (VM custom data is readable
    through the instance metadata service by every process on the node). Each secret is readable
    ("Key Vault Secrets User", scoped to that secret alone) only by its node's identity, which
    fetches it at first boot with an IMDS token. The vault's name carries a random suffix: Azure
    keeps a deleted vault's name for its soft-delete retention, so a recreated pool needs a new one.

    The readers are granted once the nodes' identities exist (`grant_readers`, or `readers` here),
    and are this component's children like the secrets they read."""

    vault: keyvault.Vault
    secrets: list[keyvault.Secret]
    readers: list[authorization.RoleAssignment]
    locations: list[pulumi.Output[Sequence[str]]]

    def __init__(
        self,
        name: str,
        *,
        resource_group_name: pulumi.Input[str],
        location: str,
        tags: Mapping[str, str],
        private_keys: Sequence[pulumi.Input[str]],
        readers: Sequence[pulumi.Input[str]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:azure:HostKeySecrets", name, None, opts)
        self._name = name
        self._config = client_config(self)
        suffix = random.RandomString(
            f"{name}-kv-suffix",
            random.RandomStringArgs(length=6, special=False, upper=False, numeric=True),
            opts=child(self),
        )
        vault_name = pulumi.Output.concat(
            compact_name(f"kv{name}", 18, salt=pulumi.get_stack()), suffix.result
        )
        self.vault = keyvault.Vault(
            f"{name}-kv",
            typed_args(
                keyvault.VaultArgs,
                {
                    "resource_group_name": resource_group_name,
                    "location": location,
                    "vault_name": vault_name,
                    "properties": {
                        "tenant_id": self._config.tenant_id,
                        "sku": {"family": "A", "name": "standard"},
                        "enable_rbac_authorization": True,
                        "soft_delete_retention_in_days": 7,  # Azure's minimum
                        "enabled_for_deployment": False,
                        "enabled_for_template_deployment": False,
                        "enabled_for_disk_encryption": False,
                    },
                    "tags": dict(tags),
                },
            ),
            opts=child(self),
        )
        self.secrets, self.readers, self.locations = [], [], []
        for i, private_key in enumerate(private_keys):
            secret_name = f"node-{i}-host-key"
            secret = keyvault.Secret(
                f"{name}-{i}-host-key",
                keyvault.SecretArgs(
                    resource_group_name=resource_group_name,
                    vault_name=self.vault.name,
                    secret_name=secret_name,
                    properties=keyvault.SecretPropertiesArgs(
                        value=pulumi.Output.secret(private_key), content_type="application/x-openssh-key"
                    ),
                    tags=dict(tags),
                ),
                opts=child(self),
            )
            self.secrets.append(secret)
            # (vault URI, secret name), resolved once the secret exists.
            self.locations.append(
                pulumi.Output.all(self.vault.properties.vault_uri, secret.id).apply(
                    functools.partial(_location, secret_name)
                )
            )
        if readers is not None:
            self.grant_readers(readers)

    def grant_readers(self, principals: Sequence[pulumi.Input[str]]) -> list[pulumi.Output[str]]:
        """Secret `i` readable by `principals[i]` alone; returns per node the first-boot commands
        that print its key. Completes the component (its outputs are registered here)."""
        subscription = self._config.subscription_id
        for i, (secret, principal) in enumerate(zip(self.secrets, principals, strict=True)):
            self.readers.append(
                grant_role(
                    self,
                    f"{self._name}-{i}-host-key-reader",
                    principal_id=principal,
                    role=role_definition_id(subscription, ROLE_KEY_VAULT_SECRETS_USER),
                    scope=secret.id,  # this secret alone, not the vault
                    description=f"lepton node {i} of {self._name}: read its own SSH host key",
                )
            )
        self.register_outputs({"vault": self.vault.id})
        return [where.apply(host_key_fetch) for where in self.locations]


def _location(secret_name: str, values: list[Any]) -> list[str]:
    """(vault URI, secret name): the secret's id in `values` only makes the fetch wait for it."""
    return [str(values[0]), secret_name]


def host_key_fetch(location: Sequence[str]) -> str:
    """The `host_key_fetch` commands of an Azure node: `location` is (vault URI, secret name)."""
    vault_uri, secret_name = location
    return fetch_command("azure", vault_uri, secret_name)
