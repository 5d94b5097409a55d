"""A node's identity on AWS: an IAM role and instance profile allowed exactly the pool's bucket,
queue and that node's own host key (or an existing instance profile, used as it is)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_aws.iam as iam
import pulumi_aws.kms as kms
import pulumi_aws.secretsmanager as secretsmanager

from lepton_infra.components.aws.queue import AwsJobQueue
from lepton_infra.components.aws.store import AwsObjectStore
from lepton_infra.components.common import child


class AwsNodeIdentity(pulumi.ComponentResource):
    """An IAM role (EC2 trust) + instance profile whose only permissions are the cluster's bucket
    (and its KMS key), queue (and its dead-letter queue) and, when given, one node's host-key
    secret (and `kms:Decrypt` of it through Secrets Manager). Nothing account-wide. The pool makes
    one per node, so no node can read another's host key."""

    instance_profile_name: pulumi.Output[str]
    role: iam.Role | None
    policy: iam.RolePolicy | None

    def __init__(
        self,
        name: str,
        *,
        tags: Mapping[str, str],
        store: AwsObjectStore | None = None,
        queue: AwsJobQueue | None = None,
        host_key_secret: secretsmanager.Secret | None = None,
        host_key_kms: kms.Key | None = None,
        existing_profile: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:aws:NodeIdentity", name, None, opts)
        self.role = self.policy = None
        if existing_profile is not None:
            self.instance_profile_name = pulumi.Output.from_input(existing_profile)
            self.register_outputs({"instance_profile": self.instance_profile_name})
            return
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        self.role = iam.Role(
            f"{name}-role", assume_role_policy=json.dumps(trust), tags=dict(tags), opts=child(self)
        )
        grants: list[pulumi.Output[Any]] = []
        if store is not None:
            grants.append(
                pulumi.Output.all(store.arn, store.kms_key.arn).apply(
                    lambda a: [
                        {
                            "Effect": "Allow",
                            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                            "Resource": a[0],
                        },
                        {
                            "Effect": "Allow",
                            "Action": [
                                "s3:GetObject",
                                "s3:PutObject",
                                "s3:DeleteObject",
                                "s3:AbortMultipartUpload",
                            ],
                            "Resource": f"{a[0]}/*",
                        },
                        {
                            "Effect": "Allow",
                            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                            "Resource": a[1],
                        },
                    ]
                )
            )
        if queue is not None:
            grants.append(
                pulumi.Output.all(queue.queue.arn, queue.dead_letter_queue.arn).apply(
                    lambda a: [
                        {
                            "Effect": "Allow",
                            "Action": [
                                "sqs:ReceiveMessage",
                                "sqs:DeleteMessage",
                                "sqs:ChangeMessageVisibility",
                                "sqs:SendMessage",
                                "sqs:GetQueueAttributes",
                                "sqs:GetQueueUrl",
                            ],
                            "Resource": [a[0], a[1]],
                        }
                    ]
                )
            )
        if host_key_secret is not None and host_key_kms is not None:
            grants.append(
                pulumi.Output.all(host_key_secret.arn, host_key_kms.arn).apply(
                    lambda a: [
                        {
                            "Sid": "ReadOwnHostKey",
                            "Effect": "Allow",
                            "Action": "secretsmanager:GetSecretValue",
                            "Resource": a[0],
                        },
                        {
                            "Sid": "DecryptOwnHostKey",
                            "Effect": "Allow",
                            "Action": "kms:Decrypt",
                            "Resource": a[1],
                            # Secrets Manager names the secret in the encryption context.
                            "Condition": {
                                "StringEquals": {"kms:EncryptionContext:SecretARN": a[0]},
                                "StringLike": {"kms:ViaService": "secretsmanager.*.amazonaws.com"},
                            },
                        },
                    ]
                )
            )
        if grants:
            self.policy = iam.RolePolicy(
                f"{name}-data-access",
                role=self.role.id,
                policy=pulumi.Output.all(*grants).apply(
                    lambda parts: json.dumps(
                        {"Version": "2012-10-17", "Statement": [s for part in parts for s in part]}
                    )
                ),
                opts=child(self),
            )
        profile = iam.InstanceProfile(
            f"{name}-profile", role=self.role.name, tags=dict(tags), opts=child(self)
        )
        self.instance_profile_name = profile.name
        self.register_outputs({"instance_profile": self.instance_profile_name, "role_arn": self.role.arn})
