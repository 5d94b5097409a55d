"""Each node's SSH host private key on AWS: a Secrets Manager secret per node under the pool's own
KMS key, whose resource policy admits that node's role alone (and the deployer), and the shell a
node runs at first boot to print its key."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_aws.kms as kms
import pulumi_aws.secretsmanager as secretsmanager

from lepton_infra.components.common import child
from lepton_infra.components.secret_fetch import node_script


def host_key_fetch(secret_arn: str) -> str:
    """The shell commands (cloudinit's `host_key_fetch` hook) that print a node's host private key
    from Secrets Manager with the instance role's IMDSv2 credentials: a stdlib-only fetcher run by
    the image's python3 (no AWS CLI needed), told the secret's ARN, which is no secret. The fetcher
    goes without its docstrings: AWS user data is limited to 16 KB."""
    fetcher = node_script("aws_fetch_secret.py")
    return f"python3 - {shlex.quote(secret_arn)} <<'LEPTON_PY'\n{fetcher}\nLEPTON_PY"


class AwsHostKeySecrets(pulumi.ComponentResource):
    """Each node's SSH host private key as its own Secrets Manager secret, encrypted with a key of
    the pool's own (rotating, customer-managed KMS key), so user data never holds it. Reading one
    takes `secretsmanager:GetSecretValue` on that secret and `kms:Decrypt` on this key through
    Secrets Manager: each node's role gets exactly its own (see `AwsNodeIdentity`); AWS's
    ReadOnlyAccess has neither, and each secret's resource policy (`admit_only`) denies every other
    principal but the deployer, so a broad `GetSecretValue` elsewhere in the account cannot read it
    either. With a shared, existing instance profile (`identity`), the resource policies and the key
    policy admit that profile's role instead (then every node of the pool can read every node's
    key). Deleted without a recovery window: a destroyed pool's keys are dead, and a fixed window
    would only block a redeploy."""

    key: kms.Key
    secrets: list[secretsmanager.Secret]
    versions: list[secretsmanager.SecretVersion]
    policies: list[secretsmanager.SecretPolicy]

    def __init__(
        self,
        name: str,
        *,
        private_keys: Sequence[pulumi.Input[str]],
        tags: Mapping[str, str],
        region: str | None,
        shared_role_arn: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:aws:HostKeySecrets", name, None, opts)
        self._name = name
        account = aws.get_caller_identity_output()
        partition = aws.get_partition_output()
        self.key = kms.Key(
            f"{name}-key",
            description="lepton: encrypts the pool's SSH host keys",
            enable_key_rotation=True,
            deletion_window_in_days=7,
            policy=pulumi.Output.all(account.account_id, partition.partition, shared_role_arn).apply(
                lambda v: json.dumps(_host_key_key_policy(v[0], v[1], v[2]))
            ),
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        self.secrets, self.versions, self.policies = [], [], []
        for i, private_key in enumerate(private_keys):
            secret = secretsmanager.Secret(
                f"{name}-{i}",
                description=f"lepton: SSH host private key of node {i}, read by that node at first boot",
                kms_key_id=self.key.arn,
                recovery_window_in_days=0,
                tags=dict(tags),
                region=region,
                opts=child(self),
            )
            self.versions.append(
                secretsmanager.SecretVersion(
                    f"{name}-{i}-value",
                    secret_id=secret.arn,
                    secret_string=pulumi.Output.secret(private_key),
                    region=region,
                    opts=child(self),
                )
            )
            self.secrets.append(secret)
        self.register_outputs({"secret_arns": [s.arn for s in self.secrets], "key_arn": self.key.arn})

    def admit_only(
        self, readers: Sequence[tuple[pulumi.Input[str], pulumi.Input[str]]], region: str | None
    ) -> None:
        """Each secret's resource policy: only its reader (`readers[i]`: that node's role ARN and
        unique id) and the deploying principal may read it. An identity policy elsewhere in the
        account granting a broad `secretsmanager:GetSecretValue` (AWS's own SecretsManagerReadWrite,
        a client's read-only role) would otherwise read every node's host key: the explicit Deny
        here wins over any Allow. The deployer stays admitted because `pulumi refresh` reads the
        value back. Matched on `aws:userid` (a role's unique id, then `:<session>`), which, unlike
        an ARN, names an assumed role's session and cannot be re-created with the same value."""
        deployer = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).user_id
        for i, (secret, (role_arn, role_id)) in enumerate(zip(self.secrets, readers, strict=True)):
            self.policies.append(
                secretsmanager.SecretPolicy(
                    f"{self._name}-{i}-policy",
                    secret_arn=secret.arn,
                    block_public_policy=True,
                    policy=pulumi.Output.all(secret.arn, role_arn, role_id, deployer).apply(
                        lambda v: json.dumps(host_key_secret_policy(v[0], v[1], v[2], v[3]))
                    ),
                    region=region,
                    opts=child(self),
                )
            )


def _userid_pattern(user_id: str) -> str:
    """`aws:userid` of a principal as STS reports it: a role's `<unique id>:<session>` becomes
    `<unique id>:*` (every session of that role); an IAM user's id or the account id is exact."""
    return user_id.split(":", 1)[0] + ":*" if ":" in user_id else user_id


def host_key_secret_policy(
    secret_arn: str, role_arn: str, role_id: str, deployer_user_id: str
) -> dict[str, Any]:
    """A host-key secret's resource policy: its node's role may read it, and nobody else but the
    deploying principal may, whatever their identity policies say (see `admit_only`)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "NodeReadsItsHostKey",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": "secretsmanager:GetSecretValue",
                "Resource": secret_arn,
            },
            {
                "Sid": "NobodyElseReadsIt",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": secret_arn,
                "Condition": {
                    "StringNotLike": {"aws:userid": [f"{role_id}:*", _userid_pattern(deployer_user_id)]}
                },
            },
        ],
    }


def _host_key_key_policy(account: str, partition: str, shared_role_arn: str | None) -> dict[str, Any]:
    """The host-key KMS key's policy: the account's IAM policies decide (AWS's default key policy,
    which keeps the key manageable); a shared existing role may decrypt through Secrets Manager."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AccountIamPoliciesDecide",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    if shared_role_arn:
        statements.append(
            {
                "Sid": "NodesDecryptTheirHostKeys",
                "Effect": "Allow",
                "Principal": {"AWS": shared_role_arn},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"StringLike": {"kms:ViaService": "secretsmanager.*.amazonaws.com"}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}
