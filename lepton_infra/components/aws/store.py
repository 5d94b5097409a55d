"""The object store on AWS: an S3 bucket with every lock of the README's "Deploy" section."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws.kms as kms
import pulumi_aws.s3 as s3

from lepton_infra.components.args import ObjectStoreArgs
from lepton_infra.components.common import child, cluster_env, merge_extra, tags_for, typed_args


class AwsObjectStore(pulumi.ComponentResource):
    """An S3 bucket nobody outside the account can read: block public access x4, bucket owner
    enforced (no ACLs), SSE-KMS with a rotating key, a policy denying plain HTTP, versioning, and
    expiry after `retention_days`. Output `url` is `s3://<bucket>`."""

    url: pulumi.Output[str]
    bucket: s3.Bucket
    kms_key: kms.Key
    arn: pulumi.Output[str]

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        cluster, env = cluster_env(args, name)
        tags = tags_for(cluster, env, args.tags)
        region = args.region
        # `extra` typed before any resource exists: a misspelled key fails here with the allowed keys.
        bucket_args = typed_args(
            s3.BucketArgs,
            merge_extra({"force_destroy": args.force_destroy, "tags": tags, "region": region}, args.extra),
        )
        super().__init__("lepton:aws:ObjectStore", name, None, opts)
        self.kms_key = kms.Key(
            f"{name}-key",
            description=f"lepton {cluster}: encrypts the object store",
            enable_key_rotation=True,
            deletion_window_in_days=7,
            tags=tags,
            region=region,
            opts=child(self),
        )
        self.bucket = s3.Bucket(f"{name}-bucket", bucket_args, opts=child(self))
        bucket_id = self.bucket.id
        self.arn = self.bucket.arn
        guard = child(self, depends_on=[self.bucket])
        s3.BucketPublicAccessBlock(
            f"{name}-public-access-block",
            bucket=bucket_id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            region=region,
            opts=guard,
        )
        s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket_id,
            rule=s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            region=region,
            opts=guard,
        )
        s3.BucketServerSideEncryptionConfiguration(
            f"{name}-sse",
            bucket=bucket_id,
            rules=[
                s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms", kms_master_key_id=self.kms_key.arn
                    ),
                    bucket_key_enabled=True,
                )
            ],
            region=region,
            opts=guard,
        )
        s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket_id,
            policy=self.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "DenyPlainHttp",
                                "Effect": "Deny",
                                "Principal": "*",
                                "Action": "s3:*",
                                "Resource": [arn, f"{arn}/*"],
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        ],
                    }
                )
            ),
            region=region,
            opts=guard,
        )
        if args.versioning:
            s3.BucketVersioning(
                f"{name}-versioning",
                bucket=bucket_id,
                versioning_configuration=s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
                region=region,
                opts=guard,
            )
        if args.retention_days is not None:
            s3.BucketLifecycleConfiguration(
                f"{name}-retention",
                bucket=bucket_id,
                rules=[
                    s3.BucketLifecycleConfigurationRuleArgs(
                        id="expire",
                        status="Enabled",
                        filter=s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                        expiration=s3.BucketLifecycleConfigurationRuleExpirationArgs(
                            days=args.retention_days
                        ),
                        noncurrent_version_expiration=s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                            noncurrent_days=args.retention_days
                        ),
                    )
                ],
                region=region,
                opts=guard,
            )
        self.url = bucket_id.apply(lambda b: f"s3://{b}")
        self.register_outputs({"url": self.url})
