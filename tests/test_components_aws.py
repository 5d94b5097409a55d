"""The AWS resource graph under mocks: what gets created, how it is wired, and every secure default
(README "Deploy") as it appears in the resource inputs."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pulumi
import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pytest

from lepton_infra.components import aws
from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs, TrainingClusterArgs
from lepton_infra.components.neutral import TrainingCluster
from lepton_infra.errors import ConfigError

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"
INSTANCE = "aws:ec2/instance:Instance"
SG = "aws:ec2/securityGroup:SecurityGroup"
SECRET = "aws:secretsmanager/secret:Secret"


def pool_args(**overrides: Any) -> GpuVmPoolArgs:
    base: dict[str, Any] = {
        "cloud": "aws",
        "accelerator": "T4",
        "nodes": 2,
        "region": "us-east-1",
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
        "ssh_public_key": PUBKEY,
        "cluster": "demo",
        "env": "dev",
    }
    base.update(overrides)
    return GpuVmPoolArgs(**base)


def cluster(**pool_overrides: Any) -> dict[str, Any]:
    store = aws.AwsObjectStore(
        "demo-store", ObjectStoreArgs(cloud="aws", retention_days=30, cluster="demo", env="dev")
    )
    queue = aws.AwsJobQueue(
        "demo-queue", JobQueueArgs(cloud="aws", max_receive_count=4, cluster="demo", env="dev")
    )
    pool = aws.AwsGpuVmPool("demo", pool_args(**pool_overrides), store=store, queue=queue)
    return {
        "store_url": store.url,
        "queue_url": queue.url,
        "dlq_url": queue.dead_letter_url,
        "hosts": pulumi.Output.all(*[n.host for n in pool.nodes]),
        "private_ips": pulumi.Output.all(*[n.private_ip for n in pool.nodes]),
        "sg_id": pool.network.security_group.id,
        "subnet_id": pool.network.subnet_id,
        "vpc_id": pool.network.vpc_id,
        "profiles": pulumi.Output.all(*[i.instance_profile_name for i in pool.identities]),
    }


@pytest.fixture(scope="module")
def built() -> tuple[dict[str, Any], harness.Recorder]:
    return harness.build(cluster)


def test_instances_sit_in_the_subnet_behind_the_security_group_with_the_profile(built: Any) -> None:
    out, rec = built
    (vpc,) = rec.of("aws:ec2/vpc:Vpc")
    (subnet,) = rec.of("aws:ec2/subnet:Subnet")
    assert out["vpc_id"] == vpc.id and subnet.inputs["vpcId"] == vpc.id
    instances = rec.of(INSTANCE)
    assert len(instances) == 2
    # One identity per node (each may read only its own host key).
    assert [rec.named(f"demo-node-{i}").inputs["iamInstanceProfile"] for i in range(2)] == out["profiles"]
    assert len(set(out["profiles"])) == 2
    for inst in instances:
        assert inst.inputs["subnetId"] == out["subnet_id"]
        assert inst.inputs["vpcSecurityGroupIds"] == [out["sg_id"]]
        assert inst.inputs["instanceType"] == "g4dn.xlarge"
        assert inst.inputs["ami"] == harness.DEEP_LEARNING_AMI
    assert (
        "aws:ssm/getParameter:getParameter",
        {"name": aws.DEEP_LEARNING_AMI_PARAMETER, "region": "us-east-1"},
    ) in rec.calls


def test_ssh_only_from_allowed_networks_and_all_traffic_only_between_members(built: Any) -> None:
    _, rec = built
    (sg,) = rec.of(SG)
    ssh, members = sg.inputs["ingress"]
    assert (ssh["fromPort"], ssh["toPort"], ssh["protocol"]) == (22, 22, "tcp")
    assert ssh["cidrBlocks"] == ["203.0.113.0/24"] and "ipv6CidrBlocks" not in ssh
    assert members["self"] is True and members["protocol"] == "-1" and "cidrBlocks" not in members


def test_imdsv2_encrypted_root_and_pinned_host_key_per_node(built: Any) -> None:
    _, rec = built
    keys = rec.of("tls:index/privateKey:PrivateKey")
    assert len(keys) == 2 and all(k.inputs["algorithm"] == "ED25519" for k in keys)
    user_datas = []
    for inst in rec.of(INSTANCE):
        assert inst.inputs["metadataOptions"] == {
            "httpEndpoint": "enabled",
            "httpTokens": "required",
            "httpPutResponseHopLimit": 1,
        }
        root = inst.inputs["rootBlockDevice"]
        assert root["encrypted"] is True and root["volumeType"] == "gp3" and root["volumeSize"] == 200
        assert "instanceMarketOptions" not in inst.inputs
        user_datas.append(inst.inputs["userData"])
        assert PUBKEY in inst.inputs["userData"] and "ssh_pwauth: false" in inst.inputs["userData"]
    for key in keys:
        assert sum(key.outputs["publicKeyOpenssh"].strip() in u for u in user_datas) == 1


def test_public_ip_only_when_ssh_comes_from_outside_private_space(built: Any) -> None:
    out, rec = built
    assert all(i.inputs["associatePublicIpAddress"] is True for i in rec.of(INSTANCE))
    assert rec.of("aws:ec2/internetGateway:InternetGateway")
    assert all(h.startswith("203.0.113.") for h in out["hosts"])
    out, rec = harness.build(lambda: cluster(allowed_ssh_cidrs=["10.8.0.0/16"], private_egress="endpoints"))
    assert all(i.inputs["associatePublicIpAddress"] is False for i in rec.of(INSTANCE))
    assert not rec.of("aws:ec2/internetGateway:InternetGateway")
    assert out["hosts"] == out["private_ips"]


def test_bucket_is_private_encrypted_tls_only_versioned_and_expiring(built: Any) -> None:
    out, rec = built
    (bucket,) = rec.of("aws:s3/bucket:Bucket")
    assert out["store_url"] == f"s3://{bucket.id}"
    (pab,) = rec.of("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        pab.inputs[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    (own,) = rec.of("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert own.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    (sse,) = rec.of("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    key = rec.named("demo-store-key")
    rule = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    assert rule["sseAlgorithm"] == "aws:kms" and rule["kmsMasterKeyId"] == key.outputs["arn"]
    assert key.inputs["enableKeyRotation"] is True
    (policy,) = rec.of("aws:s3/bucketPolicy:BucketPolicy")
    (deny,) = json.loads(policy.inputs["policy"])["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    (versioning,) = rec.of("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    (life,) = rec.of("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert life.inputs["rules"][0]["expiration"]["days"] == 30
    for guard in (pab, own, sse, policy, versioning, life):
        assert guard.inputs["bucket"] == bucket.id


def test_queue_is_encrypted_and_dead_letters_after_max_receives(built: Any) -> None:
    out, rec = built
    queues = {q.name: q for q in rec.of("aws:sqs/queue:Queue")}
    main, dlq = queues["demo-queue-queue"], queues["demo-queue-dlq"]
    assert main.inputs["sqsManagedSseEnabled"] is True and dlq.inputs["sqsManagedSseEnabled"] is True
    assert json.loads(main.inputs["redrivePolicy"]) == {
        "deadLetterTargetArn": dlq.outputs["arn"],
        "maxReceiveCount": 4,
    }
    assert out["queue_url"] == main.outputs["url"] and out["dlq_url"] == dlq.outputs["url"]


def test_each_node_identity_may_touch_exactly_the_bucket_key_queues_and_its_own_host_key(built: Any) -> None:
    _, rec = built
    roles = rec.of("aws:iam/role:Role")
    assert len(roles) == 2
    for role in roles:
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
        assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    (bucket,) = rec.of("aws:s3/bucket:Bucket")
    store_key, host_key_key = (rec.named(n) for n in ("demo-store-key", "demo-hostkeys-key"))
    arns = {q.outputs["arn"] for q in rec.of("aws:sqs/queue:Queue")}
    bucket_arn = bucket.outputs["arn"]
    secrets = [rec.named(f"demo-hostkeys-{i}").outputs["arn"] for i in range(2)]
    assert len(rec.of("aws:iam/rolePolicy:RolePolicy")) == 2
    for i in range(2):
        policy = rec.named(f"demo-identity-{i}-data-access")
        assert policy.inputs["role"] == rec.named(f"demo-identity-{i}-role").id
        resources: set[str] = set()
        actions: dict[str, set[str]] = {}
        for statement in json.loads(policy.inputs["policy"])["Statement"]:
            assert statement["Effect"] == "Allow" and "*" not in json.dumps(statement["Action"])
            found = statement["Resource"]
            resources.update(found if isinstance(found, list) else [found])
            for arn in found if isinstance(found, list) else [found]:
                listed = statement["Action"]
                actions.setdefault(arn, set()).update(listed if isinstance(listed, list) else [listed])
        # Exactly what the data plane's clients call (store, sweep queue, dead-lettering).
        assert actions[bucket_arn] == {"s3:ListBucket", "s3:GetBucketLocation"}
        assert actions[f"{bucket_arn}/*"] == {
            "s3:GetObject",
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
        }
        assert len(arns) == 2, "the queue and its dead-letter queue"
        for arn in arns:
            assert actions[arn] == {
                "sqs:SendMessage",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
            }
            if statement["Resource"] == host_key_key.outputs["arn"]:
                assert statement["Action"] == "kms:Decrypt"
                assert statement["Condition"]["StringEquals"] == {
                    "kms:EncryptionContext:SecretARN": secrets[i]
                }
        assert resources == {
            bucket_arn,
            f"{bucket_arn}/*",
            store_key.outputs["arn"],
            *arns,
            secrets[i],
            host_key_key.outputs["arn"],
        }


def test_host_private_keys_live_only_in_their_own_kms_encrypted_secret(built: Any) -> None:
    _, rec = built
    host_key_key = rec.named("demo-hostkeys-key")
    assert host_key_key.inputs["enableKeyRotation"] is True
    key_policy = json.loads(host_key_key.inputs["policy"])["Statement"]
    assert [s["Principal"] for s in key_policy] == [{"AWS": f"arn:aws:iam::{harness.AWS_ACCOUNT}:root"}]
    for i in range(2):
        inst = rec.named(f"demo-node-{i}")
        secret = rec.named(f"demo-hostkeys-{i}")
        assert secret.inputs["kmsKeyId"] == host_key_key.outputs["arn"]
        assert secret.inputs["recoveryWindowInDays"] == 0
        version = rec.named(f"demo-hostkeys-{i}-value")
        assert version.inputs["secretId"] == secret.outputs["arn"]
        assert version.inputs["secretString"] == rec.named(f"demo-hostkey-{i}").outputs["privateKeyOpenssh"]
        # The node's user data names its own secret (to fetch it) and holds no key material.
        assert secret.outputs["arn"] in inst.inputs["userData"]
        assert all(s.outputs["arn"] not in inst.inputs["userData"] for s in rec.of(SECRET) if s is not secret)
        assert "PRIVATE KEY" not in inst.inputs["userData"]


def _may_read(policy: dict[str, Any], user_id: str) -> bool:
    """Whether a principal (`aws:userid`) is left able to GetSecretValue by a secret's resource
    policy, as IAM evaluates it: an explicit Deny that applies wins over any Allow anywhere."""
    for statement in policy["Statement"]:
        if statement["Effect"] == "Deny" and statement["Action"] == "secretsmanager:GetSecretValue":
            patterns = statement["Condition"]["StringNotLike"]["aws:userid"]
            if not any(fnmatch.fnmatchcase(user_id, p) for p in patterns):
                return False
    return True


def test_a_host_key_is_readable_only_by_its_node_and_the_deployer_whatever_else_is_granted(
    built: Any,
) -> None:
    """AWS's own read-only client policies carry a broad GetSecretValue: only each secret's resource
    policy can keep them off a node's host private key."""
    _, rec = built
    policies = {p.inputs["secretArn"]: p for p in rec.of("aws:secretsmanager/secretPolicy:SecretPolicy")}
    deployer = f"{harness.DEPLOYER_ROLE_ID}:{harness.DEPLOYER_SESSION}"
    for i in range(2):
        secret = rec.named(f"demo-hostkeys-{i}")
        policy_record = policies[secret.outputs["arn"]]
        assert policy_record.inputs["blockPublicPolicy"] is True
        policy = json.loads(policy_record.inputs["policy"])
        own, other = (rec.named(f"demo-identity-{n}-role") for n in (i, 1 - i))
        assert _may_read(policy, f"{own.outputs['uniqueId']}:i-0123456789abcdef0")
        assert not _may_read(policy, f"{other.outputs['uniqueId']}:i-0fedcba9876543210")
        assert not _may_read(policy, "AROAREADONLYCLIENT01:alice")  # a broad read-only role
        assert _may_read(policy, deployer)  # `pulumi refresh` reads the value back
        (allow,) = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
        assert allow["Principal"] == {"AWS": own.outputs["arn"]}
        # The node starts only once its secret is locked down.
        assert policy_record.name in rec.named(f"demo-node-{i}").depends_on


def test_every_resource_carries_cluster_and_env_tags_and_nodes_carry_the_watchdog(built: Any) -> None:
    _, rec = built
    tagged = [r for r in rec.resources if r.type.startswith("aws:") and "tags" in r.inputs]
    assert len(tagged) >= 10
    for r in tagged:
        assert r.inputs["tags"]["lepton:cluster"] == "demo" and r.inputs["tags"]["lepton:env"] == "dev", (
            r.name
        )
    for inst in rec.of(INSTANCE):
        assert inst.inputs["tags"]["lepton:idle-shutdown-minutes"] == "60"
        assert inst.inputs["tags"]["lepton:max-lifetime-hours"] == "24"


def test_spot_is_one_time_and_terminates() -> None:
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("spot", pool_args(nodes=1, spot=True)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["instanceMarketOptions"] == {
        "marketType": "spot",
        "spotOptions": {"spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"},
    }


def test_extra_is_merged_into_every_instance_and_a_misspelled_key_is_refused() -> None:
    extra = {"metadata_options": {"http_put_response_hop_limit": 2}, "monitoring": True}
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("x", pool_args(nodes=1, extra=extra)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["monitoring"] is True
    assert inst.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 2
    assert inst.inputs["metadataOptions"]["httpTokens"] == "required"  # the rest of ours stays
    with pytest.raises(ConfigError, match="http_tokenz"):
        harness.build(
            lambda: aws.AwsGpuVmPool("y", pool_args(extra={"metadata_options": {"http_tokenz": "optional"}}))
        )


def test_existing_network_and_profile_are_reused_not_created() -> None:
    args = pool_args(
        nodes=1, network={"vpc_id": "vpc-1", "subnet_id": "subnet-1"}, identity={"instance_profile": "p"}
    )
    _, rec = harness.build(lambda: aws.AwsGpuVmPool("reuse", args))
    assert not rec.of("aws:ec2/vpc:Vpc") and not rec.of("aws:iam/role:Role")
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["subnetId"] == "subnet-1" and inst.inputs["iamInstanceProfile"] == "p"
    # The existing profile's role (looked up) is granted the host key by the secret and the key.
    role_arn = f"arn:aws:iam::{harness.AWS_ACCOUNT}:role/p-role"
    (secret_policy,) = rec.of("aws:secretsmanager/secretPolicy:SecretPolicy")
    grant, deny = json.loads(secret_policy.inputs["policy"])["Statement"]
    assert grant["Principal"] == {"AWS": role_arn} and grant["Action"] == "secretsmanager:GetSecretValue"
    assert deny["Condition"]["StringNotLike"]["aws:userid"][0] == "AROAEXAMPLE:*"  # the shared role's id
    assert grant["Resource"] == rec.of(SECRET)[0].outputs["arn"] and secret_policy.inputs["blockPublicPolicy"]
    statements = json.loads(rec.named("reuse-hostkeys-key").inputs["policy"])["Statement"]
    assert statements[1]["Principal"] == {"AWS": role_arn} and statements[1]["Action"] == "kms:Decrypt"
    with pytest.raises(ConfigError, match="network for aws"):
        harness.build(lambda: aws.AwsGpuVmPool("bad", pool_args(network={"subnet": "s"})))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"allowed_ssh_cidrs": ["0.0.0.0/0"]}, "allow_world_ssh"),
        ({"allowed_ssh_cidrs": []}, "allowed_ssh_cidrs is empty"),
        ({"accelerator": "A10G", "gpus_per_node": 2}, "GPU counts offered"),
        ({"region": "ap-south-2"}, "regions offered"),
        ({"nodes": 0}, "nodes is 0"),
    ],
)
def test_bad_pool_args_fail_before_any_resource(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        harness.build(lambda: aws.AwsGpuVmPool("bad", pool_args(**overrides)))
    assert harness.MOCKS.resources == []


def test_training_cluster_on_aws_passes_every_mandatory_policy_rule() -> None:
    policy_harness = pytest.importorskip("policy_harness")
    args = TrainingClusterArgs(
        cloud="aws",
        accelerator="A100-40GB",
        gpus_per_node=8,
        nodes=2,
        region="us-east-1",
        allowed_ssh_cidrs=["203.0.113.0/24"],
        spot=True,
    )
    out, rec = harness.build(lambda: {"inventory": TrainingCluster("prod", args).inventory})
    inventory = json.loads(out["inventory"])
    assert [n["name"] for n in inventory["nodes"]] == ["node-0", "node-1"]
    assert inventory["store"].startswith("s3://") and inventory["queue"].startswith("https://sqs.")
    records = [policy_harness.Recorded(r.type, r.name, r.inputs, None, r.id) for r in rec.resources]
    assert policy_harness.mandatory(policy_harness.analyze(records)) == []
