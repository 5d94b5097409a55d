"""The policy pack's rules, called the way the Pulumi engine calls them: each rule's `validate` with
`ResourceValidationArgs` / `StackValidationArgs` whose props are camelCase wire inputs wrapped in
pulumi-policy's unknown-checking proxy. `policy/__main__.py` is never imported (it would start the
analyzer's gRPC server and block)."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "policy"))

from lepton_policy import rules  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))

LIFE = {rules.TAG_MAX_LIFETIME_HOURS: "24", rules.TAG_IDLE_SHUTDOWN_MINUTES: "30"}
TAGS = {rules.TAG_CLUSTER: "dev", rules.TAG_ENV: "dev"}
LABELS = {rules.LABEL_CLUSTER: "dev", rules.LABEL_ENV: "dev"}
GCP_LIFE = {rules.LABEL_MAX_LIFETIME_HOURS: "24", rules.LABEL_IDLE_SHUTDOWN_MINUTES: "30"}


def _opts() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def _urn(resource_type: str, name: str) -> str:
    return f"urn:pulumi:test::lepton-infra::{resource_type}::{name}"


def violations(
    policy: ResourceValidationPolicy,
    resource_type: str,
    props: Mapping[str, Any],
    *,
    provider_props: Mapping[str, Any] | None = None,
) -> list[str]:
    """Messages the rule reports for one resource (empty list: it passes)."""
    provider = (
        PolicyProviderResource(
            "pulumi:providers:aws", unknown_checking_proxy(dict(provider_props)), "urn:p", "p"
        )
        if provider_props is not None
        else None
    )
    args = ResourceValidationArgs(
        resource_type,
        unknown_checking_proxy(json.loads(json.dumps(props))),
        _urn(resource_type, "r"),
        "r",
        _opts(),
        provider,
        {},
    )
    out: list[str] = []
    policy.validate(args, lambda message, urn=None: out.append(message))
    return out


def stack_resource(
    resource_type: str, name: str, props: Mapping[str, Any], deps: list[PolicyResource] | None = None
) -> PolicyResource:
    return PolicyResource(
        resource_type,
        unknown_checking_proxy(json.loads(json.dumps(props))),
        _urn(resource_type, name),
        name,
        _opts(),
        None,
        None,
        list(deps or []),
        {},
    )


def stack_violations(
    policy: StackValidationPolicy, resources: list[PolicyResource], config: Mapping[str, Any] | None = None
) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    policy.validate(
        StackValidationArgs(resources, config), lambda message, urn=None: out.append((message, urn))
    )
    return out


# --------------------------------------------------------------------------- the pack's shape


def test_every_rule_has_a_unique_name_and_an_explicit_enforcement_level() -> None:
    names = [p.name for p in rules.POLICIES]
    assert len(names) == len(set(names))
    assert all(n.startswith("lepton-") for n in names)
    levels = {p.name: p.enforcement_level for p in rules.POLICIES}
    assert all(level in (EnforcementLevel.MANDATORY, EnforcementLevel.ADVISORY) for level in levels.values())
    assert levels["lepton-queue-dead-letter"] == EnforcementLevel.ADVISORY
    assert levels["lepton-no-world-admin-ports"] == EnforcementLevel.MANDATORY


def test_readme_documents_every_rule_and_tag_name() -> None:
    readme = (ROOT / "policy" / "README.md").read_text()
    for p in rules.POLICIES:
        assert f"`{p.name}`" in readme
    for tag in (
        rules.TAG_CLUSTER,
        rules.TAG_ENV,
        rules.TAG_MAX_LIFETIME_HOURS,
        rules.TAG_IDLE_SHUTDOWN_MINUTES,
        rules.LABEL_CLUSTER,
        rules.LABEL_ENV,
        rules.LABEL_MAX_LIFETIME_HOURS,
        rules.LABEL_IDLE_SHUTDOWN_MINUTES,
    ):
        assert f"`{tag}`" in readme


# --------------------------------------------------------------------------- SSH / RDP


P = rules.no_world_admin_ports


def test_aws_security_group_ssh_from_a_cidr_passes_and_from_the_world_fails() -> None:
    ok = {"ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["203.0.113.0/24"]}]}
    assert violations(P, rules.AWS_SG, ok) == []
    bad = {"ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}]}
    assert violations(P, rules.AWS_SG, bad) == ["ingress[0] opens SSH (22) to 0.0.0.0/0"]
    all_ports_v6 = {"ingress": [{"protocol": "-1", "fromPort": 0, "toPort": 0, "ipv6CidrBlocks": ["::/0"]}]}
    assert violations(P, rules.AWS_SG, all_ports_v6) == ["ingress[0] opens SSH (22), RDP (3389) to ::/0"]
    https_world = {
        "ingress": [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]}]
    }
    assert violations(P, rules.AWS_SG, https_world) == []


def test_aws_standalone_rules_with_world_rdp_fail() -> None:
    rdp = {
        "ipProtocol": "tcp",
        "fromPort": 3389,
        "toPort": 3389,
        "cidrIpv4": "0.0.0.0/0",
        "securityGroupId": "sg",
    }
    assert violations(P, rules.AWS_SG_INGRESS_RULE, rdp) == ["ingress rule opens RDP (3389) to 0.0.0.0/0"]
    assert violations(P, rules.AWS_SG_INGRESS_RULE, {**rdp, "cidrIpv4": "10.0.0.0/16"}) == []
    ranged = {"type": "ingress", "protocol": "tcp", "fromPort": 20, "toPort": 30, "cidrBlocks": ["0.0.0.0/0"]}
    assert violations(P, rules.AWS_SG_RULE, ranged) == ["ingress rule opens SSH (22) to 0.0.0.0/0"]
    assert violations(P, rules.AWS_SG_RULE, {**ranged, "type": "egress"}) == []


def test_gcp_firewall_world_ssh_fails_including_when_no_source_is_given() -> None:
    ok = {
        "direction": "INGRESS",
        "sourceRanges": ["198.51.100.7/32"],
        "allows": [{"protocol": "tcp", "ports": ["22"]}],
    }
    assert violations(P, rules.GCP_FIREWALL, ok) == []
    world = {**ok, "sourceRanges": ["0.0.0.0/0"]}
    assert violations(P, rules.GCP_FIREWALL, world) == ["firewall allows SSH (22) from 0.0.0.0/0"]
    no_source = {"allows": [{"protocol": "tcp", "ports": ["3000-4000"]}]}
    assert violations(P, rules.GCP_FIREWALL, no_source) == [
        "firewall allows RDP (3389) from 0.0.0.0/0 (no source given)"
    ]
    internal = {"sourceTags": ["lepton-node"], "allows": [{"protocol": "all"}]}
    assert violations(P, rules.GCP_FIREWALL, internal) == []


def test_azure_nsg_and_security_rule_world_ssh_fail() -> None:
    rule = {
        "name": "ssh",
        "direction": "Inbound",
        "access": "Allow",
        "protocol": "Tcp",
        "sourceAddressPrefix": "203.0.113.0/24",
        "destinationPortRange": "22",
        "priority": 100,
    }
    assert violations(P, rules.AZ_NSG, {"securityRules": [rule]}) == []
    world = {**rule, "sourceAddressPrefix": "Internet"}
    assert violations(P, rules.AZ_NSG, {"securityRules": [world]}) == [
        "security rule 'ssh' allows SSH (22) from Internet"
    ]
    star = {**rule, "sourceAddressPrefix": "*", "destinationPortRange": "*", "name": "any"}
    assert violations(P, rules.AZ_SECURITY_RULE, star) == [
        "security rule 'any' allows SSH (22), RDP (3389) from *"
    ]
    assert violations(P, rules.AZ_SECURITY_RULE, {**star, "access": "Deny"}) == []


# --------------------------------------------------------------------------- storage


def test_s3_public_access_block_needs_all_four_flags() -> None:
    four = {
        "bucket": "b",
        **dict.fromkeys(
            ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"), True
        ),
    }
    assert violations(rules.storage_not_public, rules.AWS_BUCKET_PAB, four) == []
    three = {**four, "restrictPublicBuckets": False}
    assert violations(rules.storage_not_public, rules.AWS_BUCKET_PAB, three) == [
        "public access block must set all four flags true; not true: restrictPublicBuckets"
    ]
    assert violations(rules.storage_not_public, rules.AWS_BUCKET, {"acl": "public-read"})


def test_gcs_bucket_needs_uniform_access_and_enforced_public_access_prevention() -> None:
    ok = {"uniformBucketLevelAccess": True, "publicAccessPrevention": "enforced", "location": "US"}
    assert violations(rules.storage_not_public, rules.GCP_BUCKET, ok) == []
    bad = {"location": "US", "publicAccessPrevention": "inherited"}
    assert violations(rules.storage_not_public, rules.GCP_BUCKET, bad) == [
        "uniformBucketLevelAccess must be true (no per-object ACLs)",
        "publicAccessPrevention must be 'enforced', got 'inherited'",
    ]


AZ_STORAGE_OK = {
    "allowBlobPublicAccess": False,
    "enableHttpsTrafficOnly": True,
    "minimumTlsVersion": "TLS1_2",
    "kind": "StorageV2",
}


def test_azure_storage_account_public_blobs_and_plain_http_fail() -> None:
    assert violations(rules.storage_not_public, rules.AZ_STORAGE_ACCOUNT, AZ_STORAGE_OK) == []
    assert violations(rules.storage_tls_only, rules.AZ_STORAGE_ACCOUNT, AZ_STORAGE_OK) == []
    loose = {
        "kind": "StorageV2",
        "allowBlobPublicAccess": True,
        "enableHttpsTrafficOnly": False,
        "minimumTlsVersion": "TLS1_0",
    }
    assert violations(rules.storage_not_public, rules.AZ_STORAGE_ACCOUNT, loose) == [
        "allowBlobPublicAccess must be false, got True"
    ]
    assert violations(rules.storage_tls_only, rules.AZ_STORAGE_ACCOUNT, loose) == [
        "enableHttpsTrafficOnly must be true, got False",
        "minimumTlsVersion must be TLS1_2 or newer, got 'TLS1_0'",
    ]


def test_s3_encryption_config_needs_a_real_algorithm() -> None:
    kms = {"bucket": "b", "rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]}
    assert violations(rules.storage_encrypted, rules.AWS_BUCKET_SSE, kms) == []
    assert violations(rules.storage_encrypted, rules.AWS_BUCKET_SSE, {"bucket": "b", "rules": []})
    assert violations(rules.storage_encrypted, rules.AWS_SQS_QUEUE, {"sqsManagedSseEnabled": False})
    assert violations(rules.storage_encrypted, rules.AWS_SQS_QUEUE, {"kmsMasterKeyId": "alias/aws/sqs"}) == []


TLS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ],
}


def test_s3_bucket_policy_must_deny_insecure_transport() -> None:
    ok = {"bucket": "b", "policy": json.dumps(TLS_POLICY)}
    assert violations(rules.storage_tls_only, rules.AWS_BUCKET_POLICY, ok) == []
    allow_only = {
        "bucket": "b",
        "policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject"}]}),
    }
    assert violations(rules.storage_tls_only, rules.AWS_BUCKET_POLICY, allow_only) == [
        "bucket policy has no Deny statement on aws:SecureTransport = false"
    ]


# --------------------------------------------------------------------------- IMDSv2


@pytest.mark.parametrize("resource_type", [rules.AWS_INSTANCE, rules.AWS_LAUNCH_TEMPLATE])
def test_imdsv2_required_on_instances_and_launch_templates(resource_type: str) -> None:
    ok = {
        "instanceType": "t3.micro",
        "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1},
    }
    assert violations(rules.imdsv2_required, resource_type, ok) == []
    v1 = {"instanceType": "t3.micro", "metadataOptions": {"httpTokens": "optional"}}
    assert violations(rules.imdsv2_required, resource_type, v1) == [
        "metadataOptions.httpTokens must be 'required' (IMDSv2), got 'optional'"
    ]
    assert violations(rules.imdsv2_required, resource_type, {"instanceType": "t3.micro"})
    assert (
        violations(rules.imdsv2_required, resource_type, {"metadataOptions": {"httpEndpoint": "disabled"}})
        == []
    )


# --------------------------------------------------------------------------- no key in boot data

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("resource_type", "props"),
    [
        (rules.AWS_INSTANCE, {"userData": f"#cloud-config\nssh_keys:\n  ed25519_private: |\n{KEY}"}),
        (rules.GCP_INSTANCE, {"metadata": {"user-data": KEY}}),
        (rules.AZ_VM, {"osProfile": {"customData": base64.b64encode(KEY.encode()).decode()}}),
    ],
)
def test_a_private_key_in_user_data_metadata_or_custom_data_is_flagged(
    resource_type: str, props: dict[str, Any]
) -> None:
    (message,) = violations(rules.no_key_in_boot_data, resource_type, props)
    assert "holds a private key" in message
    public_only = {k: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI pinned" for k in props}
    assert violations(rules.no_key_in_boot_data, resource_type, public_only) == []


# --------------------------------------------------------------------------- GPU catalog


def test_aws_gpu_types_must_be_catalog_rows() -> None:
    assert violations(rules.gpu_from_catalog, rules.AWS_INSTANCE, {"instanceType": "g4dn.xlarge"}) == []
    assert violations(rules.gpu_from_catalog, rules.AWS_INSTANCE, {"instanceType": "m5.large"}) == []
    [msg] = violations(rules.gpu_from_catalog, rules.AWS_INSTANCE, {"instanceType": "p3.2xlarge"})
    assert "'p3.2xlarge' is not in the lepton catalog for aws" in msg and "g4dn.xlarge" in msg


def test_gcp_gpu_machine_and_attached_accelerators_must_match_a_catalog_row() -> None:
    n1 = {
        "machineType": "n1-standard-4",
        "guestAccelerators": [
            {"type": "projects/p/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4", "count": 1}
        ],
    }
    assert violations(rules.gpu_from_catalog, rules.GCP_INSTANCE, n1) == []
    assert violations(rules.gpu_from_catalog, rules.GCP_INSTANCE, {"machineType": "a2-highgpu-8g"}) == []
    assert violations(rules.gpu_from_catalog, rules.GCP_INSTANCE, {"machineType": "e2-medium"}) == []
    v100 = {"machineType": "n1-standard-8", "guestAccelerators": [{"type": "nvidia-tesla-v100", "count": 1}]}
    [msg] = violations(rules.gpu_from_catalog, rules.GCP_INSTANCE, v100)
    assert "n1-standard-8 + 1 x nvidia-tesla-v100" in msg and "n1-standard-8 + 2 x nvidia-tesla-t4" in msg
    assert violations(rules.gpu_from_catalog, rules.GCP_INSTANCE, {"machineType": "a3-megagpu-8g"})


def test_azure_gpu_sizes_on_vms_and_scale_sets_must_be_catalog_rows() -> None:
    ok_vm = {"hardwareProfile": {"vmSize": "Standard_NC4as_T4_v3"}}
    assert violations(rules.gpu_from_catalog, rules.AZ_VM, ok_vm) == []
    assert (
        violations(rules.gpu_from_catalog, rules.AZ_VM, {"hardwareProfile": {"vmSize": "Standard_D4s_v5"}})
        == []
    )
    a10 = {"hardwareProfile": {"vmSize": "Standard_NV36ads_A10_v5"}}
    assert violations(rules.gpu_from_catalog, rules.AZ_VM, a10)
    vmss = {"sku": {"name": "Standard_NC6s_v3", "capacity": 2}}
    assert violations(rules.gpu_from_catalog, rules.AZ_VMSS, vmss)


# --------------------------------------------------------------------------- tags


def test_aws_tags_present_pass_and_missing_fail_unless_the_provider_adds_them() -> None:
    assert (
        violations(rules.required_tags, "aws:ec2/vpc:Vpc", {"cidrBlock": "10.0.0.0/16", "tags": TAGS}) == []
    )
    assert violations(rules.required_tags, "aws:ec2/vpc:Vpc", {"tags": {rules.TAG_CLUSTER: "dev"}}) == [
        "missing tags: lepton:env"
    ]
    assert violations(rules.required_tags, rules.AWS_SQS_QUEUE, {}) == [
        "missing tags: lepton:cluster, lepton:env"
    ]
    defaults = {"defaultTags": {"tags": TAGS}}
    assert violations(rules.required_tags, rules.AWS_SQS_QUEUE, {}, provider_props=defaults) == []
    # Untaggable sub-resources are not asked for tags.
    assert violations(rules.required_tags, rules.AWS_BUCKET_PAB, {"bucket": "b"}) == []


def test_aws_launch_template_tags_may_sit_in_its_instance_tag_specification() -> None:
    lt = {"tagSpecifications": [{"resourceType": "instance", "tags": TAGS}]}
    assert violations(rules.required_tags, rules.AWS_LAUNCH_TEMPLATE, lt) == []


def test_gcp_uses_labels_with_dashes() -> None:
    assert violations(rules.required_tags, rules.GCP_BUCKET, {"labels": LABELS}) == []
    assert violations(rules.required_tags, rules.GCP_BUCKET, {"labels": TAGS}) == [
        "missing labels: lepton-cluster, lepton-env"
    ]
    assert violations(rules.required_tags, rules.GCP_FIREWALL, {}) == []  # firewalls take no labels


def test_azure_tags_required_on_vms_and_storage() -> None:
    assert violations(rules.required_tags, rules.AZ_STORAGE_ACCOUNT, {"tags": TAGS}) == []
    assert violations(
        rules.required_tags, rules.AZ_VM, {"tags": {rules.TAG_CLUSTER: "dev", rules.TAG_ENV: ""}}
    ) == ["missing tags: lepton:env"]


# --------------------------------------------------------------------------- lifetime limits


def test_aws_spot_and_gpu_instances_need_a_lifetime_or_idle_limit() -> None:
    gpu = {"instanceType": "g4dn.xlarge", "tags": TAGS}
    assert violations(rules.lifetime_limit, rules.AWS_INSTANCE, {**gpu, "tags": {**TAGS, **LIFE}}) == []
    assert violations(rules.lifetime_limit, rules.AWS_INSTANCE, gpu) == [
        "GPU VM has no lifetime/idle limit: set lepton:max-lifetime-hours and/or lepton:idle-shutdown-minutes"
    ]
    spot_cpu = {"instanceType": "c5.large", "instanceMarketOptions": {"marketType": "spot"}}
    assert violations(rules.lifetime_limit, rules.AWS_INSTANCE, spot_cpu)[0].startswith("spot VM")
    assert violations(rules.lifetime_limit, rules.AWS_INSTANCE, {"instanceType": "c5.large"}) == []
    bad_value = {**gpu, "tags": {rules.TAG_MAX_LIFETIME_HOURS: "forever"}}
    assert "lepton:max-lifetime-hours must be a positive whole number, got 'forever'" in violations(
        rules.lifetime_limit, rules.AWS_INSTANCE, bad_value
    )


def test_gcp_spot_vm_needs_lifetime_labels() -> None:
    spot = {"machineType": "e2-standard-4", "scheduling": {"provisioningModel": "SPOT", "preemptible": True}}
    assert violations(rules.lifetime_limit, rules.GCP_INSTANCE, {**spot, "labels": GCP_LIFE}) == []
    [msg] = violations(rules.lifetime_limit, rules.GCP_INSTANCE, {**spot, "labels": LABELS})
    assert "lepton-max-lifetime-hours" in msg


def test_azure_spot_vm_needs_lifetime_tags() -> None:
    vm = {"hardwareProfile": {"vmSize": "Standard_D4s_v5"}, "priority": "Spot", "evictionPolicy": "Delete"}
    assert (
        violations(rules.lifetime_limit, rules.AZ_VM, {**vm, "tags": {rules.TAG_IDLE_SHUTDOWN_MINUTES: "30"}})
        == []
    )
    assert violations(rules.lifetime_limit, rules.AZ_VM, vm)


# --------------------------------------------------------------------------- queues (advisory)


def test_queues_without_dead_letter_are_reported() -> None:
    assert (
        violations(rules.queue_dead_letter, rules.AWS_SQS_QUEUE, {"redrivePolicy": '{"maxReceiveCount":5}'})
        == []
    )
    assert violations(rules.queue_dead_letter, rules.AWS_SQS_QUEUE, {})
    assert (
        violations(
            rules.queue_dead_letter, rules.GCP_SUBSCRIPTION, {"deadLetterPolicy": {"maxDeliveryAttempts": 5}}
        )
        == []
    )
    assert violations(rules.queue_dead_letter, rules.GCP_SUBSCRIPTION, {"topic": "t"})


# --------------------------------------------------------------------------- preview unknowns


def test_unknown_values_surface_as_pulumi_policy_unknowns_not_as_passes() -> None:
    from pulumi_policy.proxy import UnknownValueError

    unknown = {
        "ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": [UNKNOWN_STRING_VALUE]}]
    }
    with pytest.raises(UnknownValueError):
        violations(P, rules.AWS_SG, unknown)


# --------------------------------------------------------------------------- stack rules

PAB_ALL = dict.fromkeys(
    ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"), True
)
SSE = {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]}


def test_s3_bucket_with_all_three_guards_passes_linked_by_dependency_or_name() -> None:
    bucket = stack_resource(rules.AWS_BUCKET, "store", {"bucket": "lepton-store-1", "tags": TAGS})
    by_dep = [
        bucket,
        stack_resource(rules.AWS_BUCKET_PAB, "pab", {**PAB_ALL, "bucket": UNKNOWN_STRING_VALUE}, [bucket]),
        stack_resource(rules.AWS_BUCKET_SSE, "sse", {**SSE, "bucket": "lepton-store-1"}),
        stack_resource(
            rules.AWS_BUCKET_POLICY, "tls", {"bucket": "lepton-store-1", "policy": json.dumps(TLS_POLICY)}
        ),
    ]
    assert stack_violations(rules.aws_buckets_guarded, by_dep) == []


def test_s3_bucket_guards_linked_only_by_dependency_pass_during_preview() -> None:
    """In a real preview the bucket name and the policy document (built from the ARN) are unknown;
    the engine still passes dependencies, which is enough to see the guards are there."""
    bucket = stack_resource(rules.AWS_BUCKET, "store", {"bucket": UNKNOWN_STRING_VALUE})
    guards = [
        stack_resource(rules.AWS_BUCKET_PAB, "pab", {**PAB_ALL, "bucket": UNKNOWN_STRING_VALUE}, [bucket]),
        stack_resource(rules.AWS_BUCKET_SSE, "sse", {**SSE, "bucket": UNKNOWN_STRING_VALUE}, [bucket]),
        stack_resource(
            rules.AWS_BUCKET_POLICY,
            "tls",
            {"bucket": UNKNOWN_STRING_VALUE, "policy": UNKNOWN_STRING_VALUE},
            [bucket],
        ),
    ]
    assert stack_violations(rules.aws_buckets_guarded, [bucket, *guards]) == []
    [(msg, _)] = stack_violations(rules.aws_buckets_guarded, [bucket, *guards[:2]])
    assert msg == "S3 bucket 'store' is missing: TLS-only BucketPolicy"


def test_s3_bucket_alone_is_reported_with_what_it_lacks() -> None:
    bucket = stack_resource(rules.AWS_BUCKET, "store", {"bucket": "lepton-store-1"})
    other = stack_resource(rules.AWS_BUCKET_PAB, "pab", {**PAB_ALL, "bucket": "someone-else"})
    assert stack_violations(rules.aws_buckets_guarded, [bucket, other]) == [
        (
            "S3 bucket 'store' is missing: BucketPublicAccessBlock, BucketServerSideEncryptionConfiguration, "
            "TLS-only BucketPolicy",
            bucket.urn,
        )
    ]


def test_gpu_budget_counts_gpus_across_clouds_against_max_gpus() -> None:
    resources = [
        stack_resource(rules.AWS_INSTANCE, "a0", {"instanceType": "p5.48xlarge"}),
        stack_resource(rules.AWS_INSTANCE, "a1", {"instanceType": "p5.48xlarge"}),
        stack_resource(rules.AWS_INSTANCE, "cpu", {"instanceType": "t3.micro"}),
        stack_resource(
            rules.GCP_INSTANCE,
            "g0",
            {"machineType": "n1-standard-16", "guestAccelerators": [{"type": "nvidia-tesla-t4", "count": 4}]},
        ),
        stack_resource(rules.AZ_VMSS, "z", {"sku": {"name": "Standard_NC24ads_A100_v4", "capacity": 3}}),
        stack_resource(
            rules.AWS_LAUNCH_TEMPLATE, "lt", {"instanceType": "p5.48xlarge"}
        ),  # a template runs nothing
    ]
    assert sum(rules.gpus_of(r.resource_type, r.props) for r in resources) == 8 + 8 + 4 + 3
    assert stack_violations(rules.max_gpus, resources) == []  # default 64
    [(msg, urn)] = stack_violations(rules.max_gpus, resources, {"maxGpus": 16})
    assert msg.startswith("stack runs 23 GPUs, more than maxGpus=16") and "a0=8" in msg and urn is None


# --------------------------------------------------------------------------- the real pack server


def _struct(props: Mapping[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update(dict(props))
    return s


def test_pack_server_lists_every_rule_and_reports_over_grpc_like_the_engine_sees_it() -> None:
    """Start `policy/__main__.py` as the Pulumi CLI does and talk to it over the analyzer protocol."""
    import subprocess

    import grpc
    from google.protobuf import empty_pb2
    from pulumi.runtime import proto
    from pulumi.runtime.proto import analyzer_pb2_grpc

    server = subprocess.Popen(
        [sys.executable, "__main__.py"],
        cwd=ROOT / "policy",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()  # the analyzer prints its port, then serves
        assert port.isdigit(), server.stderr.read() if server.stderr else port
        stub = analyzer_pb2_grpc.AnalyzerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
        assert info.name == "lepton-infra"
        assert [p.name for p in info.policies] == [p.name for p in rules.POLICIES]

        sg = {
            "ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}],
            "tags": TAGS,
        }
        urn = _urn(rules.AWS_SG, "sg")
        response = stub.Analyze(
            proto.AnalyzeRequest(type=rules.AWS_SG, properties=_struct(sg), urn=urn, name="sg"), timeout=30
        )
        [diag] = response.diagnostics
        assert diag.policyName == "lepton-no-world-admin-ports"
        assert diag.enforcementLevel == proto.MANDATORY
        assert "opens SSH (22) to 0.0.0.0/0" in diag.message

        # The stack rule reads maxGpus from the policy config the CLI sends.
        config = proto.ConfigureAnalyzerRequest()
        config.policyConfig["lepton-max-gpus"].properties.update({"maxGpus": 8})
        config.policyConfig["lepton-max-gpus"].enforcementLevel = proto.MANDATORY
        stub.Configure(config, timeout=30)
        gpu = proto.AnalyzerResource(
            type=rules.AWS_INSTANCE,
            properties=_struct({"instanceType": "p5.48xlarge"}),
            urn=_urn(rules.AWS_INSTANCE, "n0"),
            name="n0",
        )
        stack = stub.AnalyzeStack(proto.AnalyzeStackRequest(resources=[gpu, gpu]), timeout=30)
        messages = [d.message for d in stack.diagnostics if d.policyName == "lepton-max-gpus"]
        assert len(messages) == 1 and "stack runs 16 GPUs, more than maxGpus=8" in messages[0]
    finally:
        server.terminate()
        server.wait(timeout=10)


# --------------------------------------------------------------------------- whole programs under mocks


def test_insecure_fixture_stack_reports_each_planted_violation() -> None:
    from policy_harness import analyze, mandatory, run_program

    resources = run_program(ROOT / "tests" / "fixtures" / "insecure_stack.py", {"aws:region": "us-east-1"})
    assert {r.type for r in resources} >= {
        rules.AWS_SG,
        rules.AWS_BUCKET,
        rules.AWS_BUCKET_PAB,
        rules.AWS_INSTANCE,
    }
    found = {(f.policy, f.resource) for f in mandatory(analyze(resources))}
    assert found == {
        ("lepton-no-world-admin-ports", "ssh-world"),
        ("lepton-storage-not-public", "public-bucket-pab"),
        ("lepton-imdsv2-required", "imdsv1-gpu"),
        ("lepton-gpu-from-catalog", "imdsv1-gpu"),
        ("lepton-lifetime-limit", "imdsv1-gpu"),
        ("lepton-required-tags", "untagged-vpc"),
        ("lepton-aws-buckets-guarded", "public-bucket"),
    }
    [guard] = [f for f in analyze(resources) if f.policy == "lepton-aws-buckets-guarded"]
    # The public access block exists (it is just wrong); encryption and the TLS policy are missing.
    assert "BucketPublicAccessBlock" not in guard.message
    assert "BucketServerSideEncryptionConfiguration" in guard.message and "TLS-only" in guard.message


STACK_FILES = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))


@pytest.mark.skipif(
    not (ROOT / "__main__.py").exists() or not STACK_FILES, reason="no Pulumi program or stack files yet"
)
@pytest.mark.parametrize(
    "stack_file", STACK_FILES, ids=lambda p: p.name.removeprefix("Pulumi.").removesuffix(".yaml")
)
def test_every_stack_passes_every_mandatory_rule(stack_file: Path) -> None:
    from policy_harness import analyze, mandatory, run_program, stack_config

    stack = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
    config = stack_config(stack_file)
    cloud = str(config.get("lepton:cloud"))
    if importlib.util.find_spec(f"lepton_infra.components.{cloud}") is None:
        pytest.skip(f"lepton_infra/components/{cloud}.py is not there yet")
    region = str(config.get("lepton:region") or config.get("aws:region") or "us-east-1")
    resources = run_program(ROOT / "__main__.py", config, stack=stack, region=region)
    assert any(rules.vm_shape(r.type, r.inputs) for r in resources), "the stack created no VM"
    assert mandatory(analyze(resources)) == []
