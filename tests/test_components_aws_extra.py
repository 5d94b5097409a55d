"""More of the AWS graph under mocks, for what tests/test_components_aws.py leaves open: the pool's
region reaching every regional resource, image and zone choices, IPv6 SSH sources, misspelled
`extra` keys failing before anything is registered, spot shutdown, and AWS's user-data size limit."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from lepton_infra.components import aws
from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs, TrainingClusterArgs
from lepton_infra.components.aws import plan as aws_plan
from lepton_infra.components.cloudinit import render_cloud_init
from lepton_infra.components.neutral import TrainingCluster
from lepton_infra.errors import ConfigError

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"
INSTANCE = "aws:ec2/instance:Instance"
SSM = "aws:ssm/getParameter:getParameter"
# IAM is global: its resources take no region.
GLOBAL_TYPES = {
    "aws:iam/role:Role",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/instanceProfile:InstanceProfile",
}
# AWS refuses user data over 16 KB (EC2 RunInstances UserData limit).
USER_DATA_LIMIT = 16 * 1024


def pool_args(**overrides: Any) -> GpuVmPoolArgs:
    base: dict[str, Any] = {
        "cloud": "aws",
        "accelerator": "T4",
        "nodes": 1,
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
        "ssh_public_key": PUBKEY,
        "cluster": "demo",
        "env": "dev",
    }
    base.update(overrides)
    return GpuVmPoolArgs(**base)


def regional(rec: harness.Recorder) -> list[harness.Recorded]:
    return [r for r in rec.resources if r.type.startswith("aws:") and r.type not in GLOBAL_TYPES]


def test_a_pool_region_other_than_the_providers_reaches_every_regional_resource_and_the_ami_lookup() -> None:
    def program() -> None:
        store = aws.AwsObjectStore("s", ObjectStoreArgs(cloud="aws", region="us-west-2", retention_days=7))
        queue = aws.AwsJobQueue("q", JobQueueArgs(cloud="aws", region="us-west-2"))
        aws.AwsGpuVmPool("p", pool_args(region="us-west-2", spot=True), store=store, queue=queue)

    _, rec = harness.build(program)  # the provider's own region (aws:region) is us-east-1
    resources = regional(rec)
    assert {r.type for r in resources} >= {
        INSTANCE,
        "aws:ec2/vpc:Vpc",
        "aws:ec2/subnet:Subnet",
        "aws:ec2/securityGroup:SecurityGroup",
        "aws:ec2/internetGateway:InternetGateway",
        "aws:ec2/routeTable:RouteTable",
        "aws:s3/bucket:Bucket",
        "aws:s3/bucketPolicy:BucketPolicy",
        "aws:kms/key:Key",
        "aws:sqs/queue:Queue",
    }
    assert {r.name: r.inputs.get("region") for r in resources} == {r.name: "us-west-2" for r in resources}
    assert [c for c in rec.calls if c[0] == SSM] == [
        (SSM, {"name": aws.DEEP_LEARNING_AMI_PARAMETER, "region": "us-west-2"})
    ]


def test_training_cluster_region_reaches_the_aws_resources() -> None:
    args = TrainingClusterArgs(
        cloud="aws",
        accelerator="L4",
        region="us-east-2",
        allowed_ssh_cidrs=["203.0.113.0/24"],
        ssh_public_key=PUBKEY,
    )
    _, rec = harness.build(lambda: {"inventory": TrainingCluster("c", args).inventory})
    assert {r.inputs.get("region") for r in regional(rec)} == {"us-east-2"}
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["instanceType"] == "g6.xlarge"


def test_a_cluster_checks_its_aws_arguments_once_and_looks_up_image_and_zone_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The AWS checks ran twice per cluster (the neutral layer's, then the pool's own); the cluster's
    one plan is now handed down, and the AMI and zone are looked up once for all its nodes."""
    zone_checks: list[Any] = []
    real_check = aws_plan.check_zone
    monkeypatch.setattr(aws_plan, "check_zone", lambda *a: zone_checks.append(a) or real_check(*a))
    args = TrainingClusterArgs(
        cloud="aws", accelerator="T4", nodes=3, allowed_ssh_cidrs=["203.0.113.0/24"], ssh_public_key=PUBKEY
    )
    _, rec = harness.build(lambda: {"inventory": TrainingCluster("c", args).inventory})
    assert len(rec.of(INSTANCE)) == 3
    assert zone_checks == [(None, "us-east-1")]  # no zone given; the provider's region
    invokes = [token for token, _ in rec.calls]
    assert invokes.count(SSM) == 1
    assert invokes.count("aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings") == 1


def test_an_ami_id_image_is_used_as_is_without_a_lookup() -> None:
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("p", pool_args(image="ami-0a1b2c3d4e5f67890")))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["ami"] == "ami-0a1b2c3d4e5f67890"
    assert not [c for c in rec.calls if c[0] == SSM]


def test_an_ssm_parameter_image_is_looked_up() -> None:
    param = "/my-org/images/gpu-training/latest"  # the user's own parameter holding an AMI id
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("p", pool_args(image=param)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["ami"] == harness.DEEP_LEARNING_AMI  # what the mocked parameter holds
    assert [c[1]["name"] for c in rec.calls if c[0] == SSM] == [param]


def test_the_default_image_is_the_pytorch_dlami_and_the_inventory_names_its_python() -> None:
    from lepton_infra.components.images import default_image

    row = default_image("aws")
    assert row is not None and row.python == "/opt/pytorch/bin/python"
    assert "oss-nvidia-driver-gpu-pytorch-" in row.image and row.image.endswith("/latest/ami-id")
    args = TrainingClusterArgs(
        cloud="aws", accelerator="T4", region="us-east-1", allowed_ssh_cidrs=["203.0.113.0/24"]
    )
    out, rec = harness.build(lambda: {"inventory": TrainingCluster("c", args).inventory})
    assert [c[1]["name"] for c in rec.calls if c[0] == SSM] == [row.image]
    assert json.loads(out["inventory"])["python"] == "/opt/pytorch/bin/python"
    # The user's interpreter wins; an image not in the table gets python3.
    for image, python, expected in (
        (None, "/opt/venv/bin/python", "/opt/venv/bin/python"),
        ("ami-0a1b2c3d4e5f67890", None, "python3"),
    ):
        args = TrainingClusterArgs(
            cloud="aws",
            accelerator="T4",
            region="us-east-1",
            allowed_ssh_cidrs=["203.0.113.0/24"],
            image=image,
            python=python,
        )
        out, _ = harness.build(lambda a=args: {"inventory": TrainingCluster("c", a).inventory})
        assert json.loads(out["inventory"])["python"] == expected


def test_a_public_parameter_missing_from_the_image_table_fails_as_on_aws() -> None:
    """The mocks answer AWS's public parameters only for the table's names (a typo fails)."""
    typo = "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-2404/latest/ami-id"
    with pytest.raises(Exception, match="ParameterNotFound"):
        harness.build(
            lambda: {
                "ids": pulumi.Output.all(
                    *[i.id for i in aws.AwsGpuVmPool("p", pool_args(image=typo)).instances]
                )
            }
        )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"image": "ubuntu-22.04"}, r"image is 'ubuntu-22.04'; allowed on aws: an AMI id"),
        ({"image": "ami-xyz"}, "image is 'ami-xyz'"),
        ({"zone": "us-west-2a"}, r"zone is 'us-west-2a'; allowed on aws: .*us-east-1a"),
        ({"region": "us-west-2", "zone": "us-east-1a"}, r"zone is 'us-east-1a'.*us-west-2a"),
        ({"zone": "a"}, "zone is 'a'"),
        ({"allowed_ssh_cidrs": ["2001:db8::/32"]}, "only IPv6 ranges"),
        ({"extra": {"monitorin": True}}, "monitorin"),
        ({"extra": {"root_block_device": {"volume_sise": 10}}}, "volume_sise"),
        # Any depth, lists of blocks included (not only the blocks we set ourselves).
        ({"extra": {"ebs_block_devices": [{"device_nam": "/dev/sdf"}]}}, "device_nam"),
        (
            {"extra": {"capacity_reservation_specification": {"capacity_reservation_target": {"id": "x"}}}},
            "'id'",
        ),
    ],
)
def test_bad_aws_pool_choices_fail_before_any_resource(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        harness.build(lambda: aws.AwsGpuVmPool("bad", pool_args(**overrides)))
    assert harness.MOCKS.resources == []


def test_a_zone_in_the_region_places_the_subnet() -> None:
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("p", pool_args(zone="us-east-1b")))
    (subnet,) = rec.of("aws:ec2/subnet:Subnet")
    assert subnet.inputs["availabilityZone"] == "us-east-1b"


def test_ipv6_ssh_sources_are_dropped_and_do_not_earn_a_public_ip() -> None:
    # A public IPv6 range next to a VPN's IPv4 range: the nodes (IPv4 only) stay private.
    cidrs = ["10.8.0.0/16", "2001:db8::/32"]
    out, rec = harness.build(
        lambda: {"host": aws.AwsGpuVmPool("p", pool_args(allowed_ssh_cidrs=cidrs)).nodes[0].host}
    )
    (sg,) = rec.of("aws:ec2/securityGroup:SecurityGroup")
    ssh = sg.inputs["ingress"][0]
    assert ssh["cidrBlocks"] == ["10.8.0.0/16"] and "ipv6CidrBlocks" not in ssh
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["associatePublicIpAddress"] is False
    assert out["host"].startswith("10.")
    # Private nodes leave through the NAT gateway: their route table has no internet gateway route.
    (route,) = rec.named("p-net-routes").inputs["routes"]
    assert "gatewayId" not in route and route["natGatewayId"] == rec.named("p-net-nat").id


def test_a_network_built_directly_lists_ipv4_and_ipv6_ssh_sources_separately() -> None:
    def program() -> None:
        aws.AwsNetwork(
            "n", allowed_ssh_cidrs=["203.0.113.0/24", "2001:db8::/32"], public=True, tags={"k": "v"}
        )

    _, rec = harness.build(program)
    (sg,) = rec.of("aws:ec2/securityGroup:SecurityGroup")
    ssh = sg.inputs["ingress"][0]
    assert ssh["cidrBlocks"] == ["203.0.113.0/24"] and ssh["ipv6CidrBlocks"] == ["2001:db8::/32"]


@pytest.mark.parametrize(
    ("build", "typo"),
    [
        (
            lambda: aws.AwsObjectStore("s", ObjectStoreArgs(cloud="aws", extra={"forse_destroy": True})),
            "forse",
        ),
        (lambda: aws.AwsJobQueue("q", JobQueueArgs(cloud="aws", extra={"delay_secs": 5})), "delay_secs"),
    ],
)
def test_a_misspelled_store_or_queue_extra_key_fails_before_any_resource(build: Any, typo: str) -> None:
    with pytest.raises(ConfigError, match=f"{typo}.*allowed keys:"):
        harness.build(build)
    assert harness.MOCKS.resources == []


def test_store_and_queue_extra_reach_the_bucket_and_queue() -> None:
    def program() -> None:
        aws.AwsObjectStore("s", ObjectStoreArgs(cloud="aws", extra={"object_lock_enabled": True}))
        aws.AwsJobQueue("q", JobQueueArgs(cloud="aws", extra={"delay_seconds": 5}))

    _, rec = harness.build(program)
    (bucket,) = rec.of("aws:s3/bucket:Bucket")
    assert bucket.inputs["objectLockEnabled"] is True and bucket.inputs["tags"]["lepton:cluster"] == "s"
    main = rec.named("q-queue")
    assert main.inputs["delaySeconds"] == 5 and "redrivePolicy" in main.inputs


def test_without_versioning_or_retention_no_such_configuration_is_made() -> None:
    _, rec = harness.build(lambda: aws.AwsObjectStore("s", ObjectStoreArgs(cloud="aws", versioning=False)))
    assert not rec.of("aws:s3/bucketVersioning:BucketVersioning")
    assert not rec.of("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert rec.of("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")


def test_a_pool_without_store_or_queue_gets_a_role_allowed_only_its_host_key() -> None:
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("p", pool_args()))
    assert rec.of("aws:iam/role:Role") and rec.of("aws:iam/instanceProfile:InstanceProfile")
    (policy,) = rec.of("aws:iam/rolePolicy:RolePolicy")
    actions = [s["Action"] for s in json.loads(policy.inputs["policy"])["Statement"]]
    assert actions == ["secretsmanager:GetSecretValue", "kms:Decrypt"]
    assert not rec.of("aws:iam/rolePolicyAttachment:RolePolicyAttachment")


def test_a_store_from_another_cloud_is_refused() -> None:
    with pytest.raises(ConfigError, match="store is a object; an AWS pool"):
        harness.build(lambda: aws.AwsGpuVmPool("p", pool_args(), store=object()))  # type: ignore[arg-type]


def test_a_spot_node_powered_off_by_its_watchdog_terminates_and_an_on_demand_one_stops() -> None:
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("s", pool_args(spot=True)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["instanceInitiatedShutdownBehavior"] == "terminate"
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("o", pool_args()))
    (inst,) = rec.of(INSTANCE)
    assert "instanceInitiatedShutdownBehavior" not in inst.inputs  # EC2's default: stop


def test_two_pools_in_one_program_register_no_clashing_names() -> None:
    def program() -> None:
        aws.AwsGpuVmPool("a", pool_args(nodes=2))
        aws.AwsGpuVmPool("b", pool_args(nodes=2))

    _, rec = harness.build(program)
    keys = [(r.type, r.name) for r in rec.resources]
    assert len(keys) == len(set(keys))
    assert len(rec.of(INSTANCE)) == 4


def _openssh_keys(key: Any) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def test_user_data_with_real_keys_fits_the_ec2_limit() -> None:
    _, host_public = _openssh_keys(ed25519.Ed25519PrivateKey.generate())
    # The longest login key a user plausibly has: RSA 4096 with a long comment.
    _, login = _openssh_keys(rsa.generate_private_key(public_exponent=65537, key_size=4096))
    arn = "arn:aws:secretsmanager:ap-southeast-2:123456789012:secret:" + "n" * 200 + "-AbCdEf"
    text = render_cloud_init(
        user="lepton",
        authorized_key=f"{login} {'someone@' + 'x' * 80}",
        host_public_key=host_public,
        host_key_fetch=aws.host_key_fetch(arn),
        idle_shutdown_minutes=60,
        max_lifetime_hours=24,
        cluster="c" * 63,
    )
    assert arn in text and login in text and "PRIVATE KEY" not in text
    assert len(text.encode()) < USER_DATA_LIMIT - 4096  # room left for what a cloud or `extra` adds


# EC2 accepts only these characters in a VPC security group's and its rules' descriptions; anything
# else fails at deploy time, never under mocks, so check the text here.
_SG_TEXT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._-:/()#,@[]+=&;{}!$*")


def test_security_group_descriptions_use_only_characters_ec2_accepts() -> None:
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("p", pool_args()))
    (sg,) = rec.of("aws:ec2/securityGroup:SecurityGroup")
    texts = [sg.inputs["description"]] + [
        rule["description"] for rule in sg.inputs["ingress"] + sg.inputs["egress"]
    ]
    for text in texts:
        assert 0 < len(text) <= 255 and set(text) <= _SG_TEXT, text
