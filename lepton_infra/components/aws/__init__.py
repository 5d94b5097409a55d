"""AWS implementations: VPC + security group, an IAM role allowed exactly one bucket and one queue,
an S3 bucket locked down (block public access x4, owner-enforced, SSE-KMS, TLS-only, versioned),
an SQS queue with a dead-letter queue, and EC2 GPU instances with IMDSv2 and pinned host keys.

Shared logic (validation, tags, cloud-init, host keys, `extra`) comes from the neutral layer."""

from __future__ import annotations

import ast
import functools
import ipaddress
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_aws.ec2 as ec2
import pulumi_aws.iam as iam
import pulumi_aws.kms as kms
import pulumi_aws.s3 as s3
import pulumi_aws.secretsmanager as secretsmanager
import pulumi_aws.sqs as sqs
import pulumi_aws.ssm as ssm

from lepton_infra.catalog import CatalogEntry, lookup
from lepton_infra.components import images
from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs
from lepton_infra.components.common import (
    PoolNode,
    child,
    cluster_env,
    ipv4_ssh_cidrs,
    merge_extra,
    new_node_image,
    pool_tags,
    ssh_needs_public_ip,
    tags_for,
    typed_args,
)
from lepton_infra.components.pool import launch_nodes, node_host_keys, node_identities, pool_outputs
from lepton_infra.errors import ConfigError
from lepton_infra.node import source as node_source

# AWS's public SSM parameter for the current PyTorch Deep Learning AMI (the image table's default row:
# torch in /opt/pytorch/bin/python, which the inventory names).
DEEP_LEARNING_AMI_PARAMETER = images.default_image("aws").image  # type: ignore[union-attr]
VPC_CIDR = "10.40.0.0/16"
SUBNET_CIDR = "10.40.1.0/24"
NAT_SUBNET_CIDR = "10.40.0.0/28"  # the NAT gateway's own public subnet
_NETWORK_KEYS = frozenset({"subnet_id", "vpc_id"})
# Network cards (one EFA interface each) of the catalog's EFA instance types, from EC2's instance
# type specifications: p4d/p4de.24xlarge have 4, p5.48xlarge 32.
EFA_NETWORK_CARDS = {"p4d.24xlarge": 4, "p4de.24xlarge": 4, "p5.48xlarge": 32}
_IDENTITY_KEYS = frozenset({"instance_profile"})
_AMI_RE = re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
# A zone is its region plus a letter; Local/Wavelength Zones add a location in between
# (us-west-2-lax-1a).
_ZONE_RE = re.compile(r"^(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)(?:-[a-z]+-[0-9]+)?[a-z]$")


def _region(args: Any) -> str | None:
    """The region the resources go to: `args.region`, else the provider's (`aws:region`)."""
    return args.region or pulumi.Config("aws").get("region")


def _check_zone(zone: str | None, region: str | None) -> None:
    """A zone must lie in the pool's region, or the subnet and every node fail at deploy time."""
    if zone is None:
        return
    match = _ZONE_RE.match(zone)
    if not match or (region is not None and match["region"] != region):
        where = f"{region}a, {region}b, ..." if region else "us-east-1a"
        raise ConfigError(
            f"zone is {zone!r}; allowed on aws: an availability zone of the pool's region ({where})"
        )


def _ami(image: str | None, region: str | None) -> pulumi.Input[str]:
    """`image` as an AMI id, or the AMI an SSM parameter names (AWS's public Deep Learning AMI
    parameter by default, so new nodes get the current AMI without a code change)."""
    parameter = DEEP_LEARNING_AMI_PARAMETER
    if image is not None:
        if _AMI_RE.match(image):
            return image
        if not image.startswith("/"):
            raise ConfigError(
                f"image is {image!r}; allowed on aws: an AMI id like ami-0123456789abcdef0, or an SSM "
                f"parameter holding one, starting with '/' (default {DEEP_LEARNING_AMI_PARAMETER})"
            )
        parameter = image
    return ssm.get_parameter_output(name=parameter, region=region).value


def _check_keys(
    value: Mapping[str, Any] | None, allowed: frozenset[str], field_name: str
) -> dict[str, Any] | None:
    if value is None:
        return None
    keys = set(value)
    if not keys or not keys <= allowed or (field_name == "network" and keys != allowed):
        raise ConfigError(
            f"{field_name} for aws is {dict(value)!r}; allowed keys: {', '.join(sorted(allowed))}"
            + (" (both)" if field_name == "network" else "")
        )
    return dict(value)


class AwsNetwork(pulumi.ComponentResource):
    """A VPC and subnet (unless `existing` names them) and the pool's security group: SSH only from
    `allowed_ssh_cidrs`, everything between members of the group (NCCL/gloo, and EFA's traffic,
    which must be allowed to and from the group itself), nothing else in.

    A VPC made here always gets an S3 gateway endpoint (free; bucket traffic stays inside AWS).
    Nodes with public IPs leave through an internet gateway. Private nodes (no public IP) leave by
    `private_egress`: "nat", a NAT gateway in a small public subnet (package mirrors, pip, and every
    AWS API), or "endpoints", no internet at all, only interface endpoints for SQS and Secrets
    Manager (the queue and the host keys) beside the S3 gateway endpoint. An existing network
    (`existing`) is used as it is: its routes and endpoints are its owner's."""

    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    security_group: ec2.SecurityGroup
    vpc: ec2.Vpc | None
    subnet: ec2.Subnet | None
    endpoints: list[ec2.VpcEndpoint]
    nat_gateway: ec2.NatGateway | None

    def __init__(
        self,
        name: str,
        *,
        allowed_ssh_cidrs: Sequence[str],
        public: bool,
        tags: Mapping[str, str],
        zone: pulumi.Input[str] | None = None,
        region: str | None = None,
        existing: Mapping[str, Any] | None = None,
        private_egress: str = "nat",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:aws:Network", name, None, opts)
        self.vpc = self.subnet = self.nat_gateway = None
        self.endpoints = []
        if existing:
            self.vpc_id = pulumi.Output.from_input(existing["vpc_id"])
            self.subnet_id = pulumi.Output.from_input(existing["subnet_id"])
        else:
            self._build(name, public=public, tags=tags, zone=zone, region=region, egress=private_egress)
        v4 = [c for c in allowed_ssh_cidrs if ipaddress.ip_network(c).version == 4]
        v6 = [c for c in allowed_ssh_cidrs if ipaddress.ip_network(c).version == 6]
        self.security_group = ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=self.vpc_id,
            description="lepton GPU pool: SSH from allowed networks, all traffic between pool members",
            ingress=[
                ec2.SecurityGroupIngressArgs(
                    description="SSH from allowed networks",
                    protocol="tcp",
                    from_port=22,
                    to_port=22,
                    cidr_blocks=v4 or None,
                    ipv6_cidr_blocks=v6 or None,
                ),
                ec2.SecurityGroupIngressArgs(
                    description="pool members (NCCL/gloo rendezvous and collectives, EFA)",
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    self=True,
                ),
            ],
            egress=[
                ec2.SecurityGroupEgressArgs(
                    description="package mirrors, the bucket and the queue",
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    cidr_blocks=["0.0.0.0/0"],
                    ipv6_cidr_blocks=["::/0"],
                ),
                # EFA's OS-bypass traffic is not IP: it needs a rule naming the group itself.
                ec2.SecurityGroupEgressArgs(
                    description="pool members (EFA)",
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    self=True,
                ),
            ],
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        if self.vpc is not None and not public and private_egress == "endpoints":
            self._interface_endpoints(name, tags=tags, region=region)
        self.register_outputs(
            {"vpc_id": self.vpc_id, "subnet_id": self.subnet_id, "security_group_id": self.security_group.id}
        )

    def _build(
        self,
        name: str,
        *,
        public: bool,
        tags: Mapping[str, str],
        zone: pulumi.Input[str] | None,
        region: str | None,
        egress: str,
    ) -> None:
        """The VPC, the nodes' subnet and its route table, and the way out (see the class docstring)."""
        self.vpc = ec2.Vpc(
            f"{name}-vpc",
            cidr_block=VPC_CIDR,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # interface endpoints' private DNS needs both
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        self.subnet = ec2.Subnet(
            f"{name}-subnet",
            vpc_id=self.vpc.id,
            cidr_block=SUBNET_CIDR,
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        self.vpc_id, self.subnet_id = self.vpc.id, self.subnet.id
        default_route: list[ec2.RouteTableRouteArgs] = []
        if public or egress == "nat":
            gateway = ec2.InternetGateway(
                f"{name}-igw", vpc_id=self.vpc.id, tags=dict(tags), region=region, opts=child(self)
            )
            if public:
                default_route = [ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)]
            else:
                self.nat_gateway = self._nat(name, gateway, tags=tags, zone=zone, region=region)
                default_route = [
                    ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=self.nat_gateway.id)
                ]
        routes = ec2.RouteTable(
            f"{name}-routes",
            vpc_id=self.vpc.id,
            routes=default_route,
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        ec2.RouteTableAssociation(
            f"{name}-routes-assoc",
            subnet_id=self.subnet.id,
            route_table_id=routes.id,
            region=region,
            opts=child(self),
        )
        self.endpoints.append(
            ec2.VpcEndpoint(
                f"{name}-s3",
                vpc_id=self.vpc.id,
                service_name=_service_name("s3", region),
                vpc_endpoint_type="Gateway",
                route_table_ids=[routes.id],
                tags=dict(tags),
                region=region,
                opts=child(self),
            )
        )

    def _nat(
        self,
        name: str,
        gateway: ec2.InternetGateway,
        *,
        tags: Mapping[str, str],
        zone: pulumi.Input[str] | None,
        region: str | None,
    ) -> ec2.NatGateway:
        """A NAT gateway with its own address in a small public subnet beside the nodes' one."""
        assert self.vpc is not None
        public_subnet = ec2.Subnet(
            f"{name}-nat-subnet",
            vpc_id=self.vpc.id,
            cidr_block=NAT_SUBNET_CIDR,
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        public_routes = ec2.RouteTable(
            f"{name}-nat-routes",
            vpc_id=self.vpc.id,
            routes=[ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        ec2.RouteTableAssociation(
            f"{name}-nat-routes-assoc",
            subnet_id=public_subnet.id,
            route_table_id=public_routes.id,
            region=region,
            opts=child(self),
        )
        address = ec2.Eip(f"{name}-nat-ip", domain="vpc", tags=dict(tags), region=region, opts=child(self))
        return ec2.NatGateway(
            f"{name}-nat",
            allocation_id=address.allocation_id,
            subnet_id=public_subnet.id,
            connectivity_type="public",
            tags=dict(tags),
            region=region,
            opts=child(self, depends_on=[gateway]),
        )

    def _interface_endpoints(self, name: str, *, tags: Mapping[str, str], region: str | None) -> None:
        """SQS (the queue) and Secrets Manager (the host keys) inside the VPC, for nodes without a
        way to the internet; HTTPS from the VPC only."""
        assert self.vpc is not None
        endpoint_sg = ec2.SecurityGroup(
            f"{name}-endpoints-sg",
            vpc_id=self.vpc_id,
            description="lepton GPU pool: HTTPS from the VPC to its AWS service endpoints",
            ingress=[
                ec2.SecurityGroupIngressArgs(
                    description="HTTPS from the VPC",
                    protocol="tcp",
                    from_port=443,
                    to_port=443,
                    cidr_blocks=[VPC_CIDR],
                )
            ],
            tags=dict(tags),
            region=region,
            opts=child(self),
        )
        for service in ("sqs", "secretsmanager"):
            self.endpoints.append(
                ec2.VpcEndpoint(
                    f"{name}-{service}",
                    vpc_id=self.vpc_id,
                    service_name=_service_name(service, region),
                    vpc_endpoint_type="Interface",
                    subnet_ids=[self.subnet_id],
                    security_group_ids=[endpoint_sg.id],
                    private_dns_enabled=True,
                    tags=dict(tags),
                    region=region,
                    opts=child(self),
                )
            )


def _service_name(service: str, region: str | None) -> pulumi.Output[str]:
    """`com.amazonaws.<region>.<service>`, the region being the pool's or else the provider's."""
    where = pulumi.Output.from_input(region) if region else aws.get_region_output().region
    return where.apply(lambda r: f"com.amazonaws.{r}.{service}")


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


class AwsJobQueue(pulumi.ComponentResource):
    """An SQS queue with server-side encryption and a dead-letter queue: a message received
    `max_receive_count` times without being deleted moves there. Outputs `url`, `dead_letter_url`."""

    url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]
    queue: sqs.Queue
    dead_letter_queue: sqs.Queue

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        cluster, env = cluster_env(args, name)
        tags = tags_for(cluster, env, args.tags)
        region = args.region
        base: dict[str, Any] = {
            "sqs_managed_sse_enabled": True,
            "visibility_timeout_seconds": args.visibility_timeout_s,
            "message_retention_seconds": 4 * 24 * 3600,
            "redrive_policy": None,  # set below, once the dead-letter queue exists
            "tags": tags,
            "region": region,
        }
        # A misspelled `extra` key fails here, before any resource exists.
        typed_args(sqs.QueueArgs, merge_extra(base, args.extra))
        super().__init__("lepton:aws:JobQueue", name, None, opts)
        self.dead_letter_queue = sqs.Queue(
            f"{name}-dlq",
            sqs_managed_sse_enabled=True,
            message_retention_seconds=14 * 24 * 3600,
            tags=tags,
            region=region,
            opts=child(self),
        )
        max_receives = args.max_receive_count
        base["redrive_policy"] = self.dead_letter_queue.arn.apply(
            lambda arn: json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
        )
        self.queue = sqs.Queue(
            f"{name}-queue", typed_args(sqs.QueueArgs, merge_extra(base, args.extra)), opts=child(self)
        )
        self.url = self.queue.url
        self.dead_letter_url = self.dead_letter_queue.url
        self.register_outputs({"url": self.url, "dead_letter_url": self.dead_letter_url})


def host_key_fetch(secret_arn: str) -> str:
    """The shell commands (cloudinit's `host_key_fetch` hook) that print a node's host private key
    from Secrets Manager with the instance role's IMDSv2 credentials: a stdlib-only fetcher run by
    the image's python3 (no AWS CLI needed), told the secret's ARN, which is no secret."""
    return f"python3 - {shlex.quote(secret_arn)} <<'LEPTON_PY'\n{_fetcher_source()}\nLEPTON_PY"


@functools.cache
def _fetcher_source() -> str:
    """aws_fetch_secret.py without its docstrings (user data is limited to 16 KB)."""
    tree = ast.parse(node_source("aws_fetch_secret.py"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                body.pop(0)
    return ast.unparse(tree)


class AwsHostKeySecrets(pulumi.ComponentResource):
    """Each node's SSH host private key as its own Secrets Manager secret, encrypted with a key of
    the pool's own (rotating, customer-managed KMS key), so user data never holds it. Reading one
    takes `secretsmanager:GetSecretValue` on that secret and `kms:Decrypt` on this key through
    Secrets Manager: each node's role gets exactly its own (see `AwsNodeIdentity`); AWS's
    ReadOnlyAccess has neither, and each secret's resource policy (`admit_only`) denies every other
    principal but the deployer, so a broad `GetSecretValue` elsewhere in the account cannot read it
    either. With a shared, existing instance profile (`identity`), the resource policies and the key
    policy admit that profile's role instead (then every node of the pool can read every node's key). Deleted without a recovery window: a destroyed pool's keys are
    dead, and a fixed window would only block a redeploy."""

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


def _instance_spec(args: GpuVmPoolArgs, entry: CatalogEntry, *, ami: Any, public: bool) -> dict[str, Any]:
    """An instance's settings that do not depend on other resources (the pool adds subnet, security
    group, profile, user data and tags): IMDSv2 only with hop limit 1 (containers cannot reach the
    role's credentials), an encrypted gp3 root volume, a public IP only when needed, and spot as
    one-time/terminate (a reclaimed node never comes back half-configured; the watchdog's poweroff
    ends it too, since a one-time spot instance cannot be stopped)."""
    spec: dict[str, Any] = {
        "ami": ami,
        "instance_type": entry.instance_type,
        "associate_public_ip_address": public,
        "metadata_options": {
            "http_endpoint": "enabled",
            "http_tokens": "required",
            "http_put_response_hop_limit": 1,
        },
        "root_block_device": {
            "encrypted": True,
            "volume_type": "gp3",
            "volume_size": args.disk_gb,
            "delete_on_termination": True,
        },
        "region": args.region,
    }
    if args.spot:
        spec["instance_market_options"] = {
            "market_type": "spot",
            "spot_options": {
                "spot_instance_type": "one-time",
                "instance_interruption_behavior": "terminate",
            },
        }
        spec["instance_initiated_shutdown_behavior"] = "terminate"
    return spec


def _instance_args(spec: Mapping[str, Any]) -> ec2.InstanceArgs:
    """`spec` (ours merged with `extra`) as typed provider args, nested blocks included, so a
    misspelled key raises ConfigError naming it instead of being sent to AWS."""
    spec = dict(spec)
    spec["metadata_options"] = typed_args(ec2.InstanceMetadataOptionsArgs, spec.get("metadata_options"))
    spec["root_block_device"] = typed_args(ec2.InstanceRootBlockDeviceArgs, spec.get("root_block_device"))
    if isinstance(spec.get("launch_template"), Mapping):
        spec["launch_template"] = typed_args(ec2.InstanceLaunchTemplateArgs, spec["launch_template"])
    market = spec.get("instance_market_options")
    if isinstance(market, Mapping):
        market = dict(market)
        market["spot_options"] = typed_args(
            ec2.InstanceInstanceMarketOptionsSpotOptionsArgs, market.get("spot_options")
        )
        spec["instance_market_options"] = typed_args(ec2.InstanceInstanceMarketOptionsArgs, market)
    return typed_args(ec2.InstanceArgs, spec)  # type: ignore[no-any-return]


class AwsGpuVmPool(pulumi.ComponentResource):
    """`nodes` EC2 instances of the catalog's instance type, in their own VPC unless `args.network`
    names one, with an identity allowed exactly `store` and `queue`. Secure defaults: IMDSv2 only
    (hop limit 1, so containers cannot steal the role), encrypted gp3 root volume, a public IP only
    when SSH is allowed from outside private address space, spot as one-time/terminate (a reclaimed
    node never comes back half-configured). `extra` is merged into every `ec2.Instance`'s args."""

    network: AwsNetwork
    zone: pulumi.Output[str] | None
    placement_group: ec2.PlacementGroup | None
    launch_template: ec2.LaunchTemplate | None
    identities: list[AwsNodeIdentity]
    host_key_secrets: AwsHostKeySecrets
    instances: list[ec2.Instance]
    host_keys: list[Any]
    nodes: list[PoolNode]
    entry: CatalogEntry

    def __init__(
        self,
        name: str,
        args: GpuVmPoolArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        store: AwsObjectStore | None = None,
        queue: AwsJobQueue | None = None,
    ) -> None:
        existing_network = _check_keys(args.network, _NETWORK_KEYS, "network")
        existing_identity = _check_keys(args.identity, _IDENTITY_KEYS, "identity")
        self.entry = entry = args.validate()  # the catalog row; the spec is valid
        for what, given, cls in (("store", store, AwsObjectStore), ("queue", queue, AwsJobQueue)):
            if given is not None and not isinstance(given, cls):
                raise ConfigError(
                    f"{what} is a {type(given).__name__}; an AWS pool can only be granted an AWS {what} "
                    f"({cls.__name__} or a neutral one with cloud='aws')"
                )
        _check_zone(args.zone, _region(args))
        # The nodes have IPv4 addresses only: IPv6 sources are dropped (with a warning), only-IPv6
        # is an error (nobody could log in), and the public-IP decision looks at IPv4 sources alone.
        ssh_sources = ipv4_ssh_cidrs(args.allowed_ssh_cidrs, "aws")
        # A misspelled `extra` key fails here, before any resource exists.
        _instance_args(merge_extra(_instance_spec(args, entry, ami="ami-probe", public=False), args.extra))
        ami_source = _ami(args.image, args.region)
        super().__init__("lepton:aws:GpuVmPool", name, None, opts)
        # An SSM parameter (the default) moves to each new DLAMI: running nodes keep their AMI.
        ami, keep_image = new_node_image(
            "aws",
            ami_source,
            moving=args.image is None or args.image.startswith("/"),
            image_property="ami",
            source=args.image or DEEP_LEARNING_AMI_PARAMETER,
            parent=self,
        )
        cluster, env = cluster_env(args, name)
        tags, node_tags = pool_tags(args, cluster, env)
        public = ssh_needs_public_ip(ssh_sources)
        self.zone = _pool_zone(args, entry, existing_network, self)
        self.network = AwsNetwork(
            f"{name}-net",
            allowed_ssh_cidrs=ssh_sources,
            public=public,
            tags=tags,
            zone=self.zone,
            region=args.region,
            existing=existing_network,
            private_egress=args.private_egress,
            opts=child(self),
        )
        # P4/P5: one cluster placement group (nodes on one network spine) and EFA interfaces, so NCCL
        # runs over EFA instead of falling back to plain TCP sockets.
        efa_cards = EFA_NETWORK_CARDS.get(entry.instance_type, 0)
        self.placement_group = self.launch_template = None
        if efa_cards:
            self.placement_group = ec2.PlacementGroup(
                f"{name}-placement", strategy="cluster", tags=dict(tags), region=args.region, opts=child(self)
            )
            self.launch_template = self._efa_template(name, efa_cards, tags=tags, region=args.region)
        self.addresses: list[ec2.Eip] = []
        self.host_keys = node_host_keys(name, args.nodes, self)
        profile = (existing_identity or {}).get("instance_profile")
        shared = (
            iam.get_instance_profile_output(name=profile, opts=pulumi.InvokeOptions(parent=self))
            if profile is not None
            else None
        )
        shared_role = shared.role_arn if shared is not None else None
        self.host_key_secrets = AwsHostKeySecrets(
            f"{name}-hostkeys",
            private_keys=[k.private_key_openssh for k in self.host_keys],
            tags=tags,
            region=args.region,
            shared_role_arn=shared_role,
            opts=child(self),
        )
        secrets = self.host_key_secrets
        self.identities = node_identities(
            args.nodes,
            profile,
            lambda i: (
                AwsNodeIdentity(f"{name}-identity", tags=tags, existing_profile=profile, opts=child(self))
                if i is None
                else AwsNodeIdentity(
                    f"{name}-identity-{i}",
                    tags=tags,
                    store=store,
                    queue=queue,
                    host_key_secret=secrets.secrets[i],
                    host_key_kms=secrets.key,
                    opts=child(self),
                )
            ),
        )
        # Each node's secret admits its own role (or the shared one) and the deployer, nobody else.
        secrets.admit_only(
            [
                (shared.role_arn, shared.role_id)
                if shared is not None
                else (identity.role.arn, identity.role.unique_id)  # type: ignore[union-attr]
                for identity in self.identities
            ],
            args.region,
        )
        self.instances = []

        def launch(i: int, user_data: pulumi.Output[str]) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
            identity = self.identities[i]
            spec = _instance_spec(args, entry, ami=ami, public=public)
            spec.update(
                iam_instance_profile=identity.instance_profile_name,
                user_data=user_data,
                tags={**node_tags, "Name": f"{cluster}-node-{i}"},
                volume_tags=dict(tags),
            )
            if self.launch_template is not None and self.placement_group is not None:
                # The template's EFA interfaces carry the subnet and security group; an instance
                # with several network cards cannot be given a public IP at launch (an EIP below).
                del spec["associate_public_ip_address"]
                spec.update(
                    launch_template={"id": self.launch_template.id, "version": "$Latest"},
                    placement_group=self.placement_group.name,
                )
            else:
                spec.update(
                    subnet_id=self.network.subnet_id,
                    vpc_security_group_ids=[self.network.security_group.id],
                )
            # The node reads its key at first boot: the value and the grant exist before it starts.
            ready: list[pulumi.Resource] = [secrets.versions[i], *secrets.policies[i : i + 1]]
            if identity.policy is not None:
                ready.append(identity.policy)
            instance = ec2.Instance(
                f"{name}-node-{i}",
                _instance_args(merge_extra(spec, args.extra)),
                opts=child(self, depends_on=ready, ignore_changes=keep_image),
            )
            self.instances.append(instance)
            host = instance.public_ip if public else instance.private_ip
            if public and self.launch_template is not None:
                # On the primary network interface, not `instance=`: AssociateAddress refuses an
                # instance with several interfaces ("InvalidInstanceID: There are multiple
                # interfaces attached to instance"), which every EFA node has.
                address = ec2.Eip(
                    f"{name}-node-{i}-ip",
                    domain="vpc",
                    network_interface=instance.primary_network_interface_id,
                    tags=dict(tags),
                    region=args.region,
                    opts=child(self),
                )
                self.addresses.append(address)
                host = address.public_ip
            return host, instance.private_ip

        self.nodes = launch_nodes(
            args,
            cloud="aws",
            cluster=cluster,
            host_keys=self.host_keys,
            fetch=[secret.arn.apply(host_key_fetch) for secret in secrets.secrets],
            launch=launch,
        )
        self.register_outputs(pool_outputs(self.nodes, instance_type=entry.instance_type, zone=self.zone))

    def _efa_template(
        self, name: str, cards: int, *, tags: Mapping[str, str], region: str | None
    ) -> ec2.LaunchTemplate:
        """One EFA interface per network card (the first is the instance's primary interface), in the
        pool's subnet and security group."""
        return ec2.LaunchTemplate(
            f"{name}-efa",
            description="lepton GPU pool: EFA interfaces on every network card",
            # The instances set IMDSv2 themselves; the template says the same for anything else
            # launched from it.
            metadata_options=ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            network_interfaces=[
                ec2.LaunchTemplateNetworkInterfaceArgs(
                    network_card_index=card,
                    device_index=0 if card == 0 else 1,
                    interface_type="efa",
                    subnet_id=self.network.subnet_id,
                    security_groups=[self.network.security_group.id],
                    delete_on_termination="true",
                )
                for card in range(cards)
            ],
            tags=dict(tags),
            region=region,
            opts=child(self),
        )


def _pool_zone(
    args: GpuVmPoolArgs, entry: CatalogEntry, existing_network: Mapping[str, Any] | None, parent: Any
) -> pulumi.Output[str] | None:
    """The availability zone of the pool: the user's `zone`; else, for a network made here, the
    first (by name) zone of the region that offers the instance type, as EC2 reports it
    (`DescribeInstanceTypeOfferings`), logged so the user sees which; an existing subnet fixes its
    own zone (None here)."""
    if args.zone is not None:
        return pulumi.Output.from_input(args.zone)
    if existing_network:
        return None
    offers = ec2.get_instance_type_offerings_output(
        location_type="availability-zone",
        filters=[ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=[entry.instance_type])],
        region=args.region,
        opts=pulumi.InvokeOutputOptions(parent=parent),
    )
    where = args.region or "the provider's region"

    def pick(zones: list[str] | None) -> str:
        if not zones:
            raise ConfigError(
                f"accelerator {entry.accelerator} x{entry.gpus} ({entry.instance_type}) is offered in no "
                f"availability zone of {where}; allowed: another region (lepton:region) or accelerator"
            )
        zone = sorted(zones)[0]
        pulumi.log.info(
            f"aws: {entry.instance_type} is offered in {', '.join(sorted(zones))} of {where}; the pool "
            f"goes to {zone} (set zone to choose another)",
            resource=parent,
        )
        return zone

    return offers.locations.apply(pick)


def check_pool_args(args: GpuVmPoolArgs) -> None:
    """AWS's own pool checks, which register nothing (the neutral layer runs them before a cluster's
    first resource): `network`/`identity` keys, the zone in the region, the image's form, and
    `extra` against ec2.InstanceArgs. AwsGpuVmPool repeats them for direct users."""
    _check_keys(args.network, _NETWORK_KEYS, "network")
    _check_keys(args.identity, _IDENTITY_KEYS, "identity")
    _check_zone(args.zone, _region(args))
    if args.image is not None and not args.image.startswith("/"):
        _ami(args.image, args.region)  # an AMI id passes as is; anything else but a parameter raises
    entry = lookup("aws", args.accelerator, args.gpus_per_node, args.region)
    _instance_args(merge_extra(_instance_spec(args, entry, ami="ami-probe", public=False), args.extra))
