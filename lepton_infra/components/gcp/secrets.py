"""Each GCP node's SSH host private key in Secret Manager, readable by that node's service account
alone, and the first-boot commands that fetch it (so no instance metadata ever holds the key)."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
from pulumi_gcp import secretmanager

from lepton_infra.components.gcp.apis import after
from lepton_infra.components.gcp.names import gcp_slug
from lepton_infra.components.secret_fetch import fetch_command


class GcpHostKeySecret(pulumi.ComponentResource):
    """One node's SSH host private key as a Secret Manager secret (automatic replication), so no
    instance metadata holds it (metadata is readable by roles/viewer and by every process on the
    node). Only `reader` (that node's service account, granted by `allow_reader` once the account
    exists) gets secretAccessor, on this secret alone; the node fetches it at first boot with its
    metadata-server token."""

    secret: secretmanager.Secret
    version: secretmanager.SecretVersion
    reader: secretmanager.SecretIamMember
    version_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        project: str,
        secret_id: str,
        private_key: pulumi.Input[str],
        labels: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:gcp:HostKeySecret", name, None, opts)
        self._project = project
        self._opts = opts
        self._stem = stem = gcp_slug(name)
        self.secret = secretmanager.Secret(
            f"{stem}-secret",
            secretmanager.SecretArgs(
                project=project,
                secret_id=secret_id,
                replication=secretmanager.SecretReplicationArgs(
                    auto=secretmanager.SecretReplicationAutoArgs()
                ),
                labels=dict(labels),
            ),
            opts=after(self, opts),
        )
        self.version = secretmanager.SecretVersion(
            f"{stem}-version",
            secretmanager.SecretVersionArgs(
                secret=self.secret.id, secret_data=pulumi.Output.secret(private_key)
            ),
            opts=after(self, opts),
        )
        self.version_name = self.secret.secret_id.apply(
            lambda sid: f"projects/{project}/secrets/{sid}/versions/latest"
        )
        self.register_outputs({"secret": self.secret.id})

    def allow_reader(self, email: pulumi.Input[str]) -> secretmanager.SecretIamMember:
        """Grant the service account `email` secretAccessor on this secret alone. A child of this
        component (as it always was), registered once the account exists."""
        self.reader = secretmanager.SecretIamMember(
            f"{self._stem}-reader",
            secretmanager.SecretIamMemberArgs(
                project=self._project,
                secret_id=self.secret.secret_id,
                role="roles/secretmanager.secretAccessor",
                member=pulumi.Output.from_input(email).apply(lambda e: f"serviceAccount:{e}"),
            ),
            opts=after(self, self._opts),
        )
        return self.reader

    def fetch(self) -> pulumi.Output[str]:
        """The shell that prints this key on the node at first boot."""
        return self.version_name.apply(host_key_fetch)


def host_key_fetch(version_name: str) -> str:
    """The `host_key_fetch` commands of a GCP node: its secret's latest version, read with the
    node's service-account token from the metadata server."""
    return fetch_command("gcp", version_name)
