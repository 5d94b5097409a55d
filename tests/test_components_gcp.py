"""GCP components under Pulumi mocks: the resource graph is wired (subnet in the VPC, instances in the
subnet carrying the firewall's tag, the dedicated service account on the instances and bound only on
the cluster's bucket and queue) and every GCP secure default (README "Deploy") is in the resource inputs."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest

# The shared harness sets the mocks on import: it must come before any component module.
harness = pytest.importorskip(
    "pulumi_harness", reason="tests/pulumi_harness.py (the shared mocks) is not there yet"
)
GCP_PROJECT, Recorder, build = harness.GCP_PROJECT, harness.Recorder, harness.build

from lepton_infra.components import gcp  # noqa: E402  (after the harness has set the mocks)
from lepton_infra.components.args import GpuVmPoolArgs, JobQueueArgs, ObjectStoreArgs  # noqa: E402
from lepton_infra.errors import ConfigError  # noqa: E402

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 user@test"
CIDR = "203.0.113.0/24"

INSTANCE = "gcp:compute/instance:Instance"
FIREWALL = "gcp:compute/firewall:Firewall"
NETWORK = "gcp:compute/network:Network"
SUBNET = "gcp:compute/subnetwork:Subnetwork"
ACCOUNT = "gcp:serviceaccount/account:Account"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
TOPIC = "gcp:pubsub/topic:Topic"
SUBSCRIPTION = "gcp:pubsub/subscription:Subscription"
SUB_MEMBER = "gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember"
TOPIC_MEMBER = "gcp:pubsub/topicIAMMember:TopicIAMMember"
SECRET = "gcp:secretmanager/secret:Secret"
SECRET_VERSION = "gcp:secretmanager/secretVersion:SecretVersion"
SECRET_MEMBER = "gcp:secretmanager/secretIamMember:SecretIamMember"


def instances_in_node_order(rec: Recorder) -> list[Any]:
    """The pool's instances sorted by node index (registration order is not guaranteed)."""
    return sorted(rec.of(INSTANCE), key=lambda r: int(r.name.rsplit("-", 1)[1]))


def pool_args(**overrides: Any) -> GpuVmPoolArgs:
    base: dict[str, Any] = {
        "cloud": "gcp",
        "accelerator": "T4",
        "gpus_per_node": 1,
        "nodes": 2,
        "region": "us-central1",
        "allowed_ssh_cidrs": [CIDR],
        "ssh_public_key": PUBKEY,
        "cluster": "demo",
        "env": "dev",
    }
    base.update(overrides)
    return GpuVmPoolArgs(**base)


def full_cluster(**pool_overrides: Any) -> Callable[[], dict[str, Any]]:
    """Store + queue + pool wired the way TrainingCluster wires them."""

    def make() -> dict[str, Any]:
        store = gcp.GcpObjectStore(
            "demo-store", ObjectStoreArgs(cloud="gcp", region="us-central1", cluster="demo", env="dev")
        )
        queue = gcp.GcpJobQueue("demo-queue", JobQueueArgs(cloud="gcp", cluster="demo", env="dev"))
        pool = gcp.GcpGpuVmPool("demo", pool_args(**pool_overrides), store=store, queue=queue)
        return {
            "store_url": store.url,
            "queue_url": queue.url,
            "dead_letter_url": queue.dead_letter_url,
            "hosts": pulumi.Output.all(*[n.host for n in pool.nodes]),
            "private_ips": pulumi.Output.all(*[n.private_ip for n in pool.nodes]),
            "host_keys": pulumi.Output.all(*[n.host_key for n in pool.nodes]),
            "sa_emails": pulumi.Output.all(*[i.email for i in pool.identities]),
            "tag": pool.network.tag,
        }

    return make


@pytest.fixture(scope="module")
def cluster() -> tuple[dict[str, Any], Recorder]:
    return build(full_cluster())


# --------------------------------------------------------------------------- network


def test_vpc_is_custom_mode_and_the_subnet_lives_in_it(cluster: tuple[dict[str, Any], Recorder]) -> None:
    _, rec = cluster
    (vpc,) = rec.of(NETWORK)
    (subnet,) = rec.of(SUBNET)
    assert vpc.inputs["autoCreateSubnetworks"] is False
    assert subnet.inputs["network"] == vpc.id
    assert subnet.inputs["region"] == "us-central1"
    assert subnet.inputs["privateIpGoogleAccess"] is True


def test_firewall_allows_ssh_only_from_allowed_cidrs_and_everything_only_between_nodes(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    (vpc,) = rec.of(NETWORK)
    rules = rec.of(FIREWALL)
    assert len(rules) == 2, "exactly SSH-from-allowed-CIDRs and node-to-node: nothing else is opened"
    by_name = {r.name: r.inputs for r in rules}
    ssh = next(v for k, v in by_name.items() if k.endswith("-ssh"))
    internal = next(v for k, v in by_name.items() if k.endswith("-internal"))
    for rule in (ssh, internal):
        assert rule["network"] == vpc.outputs["selfLink"]
        assert rule["direction"] == "INGRESS"
        assert rule["targetTags"] == [out["tag"]]
    assert ssh["sourceRanges"] == [CIDR]
    assert ssh["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert "sourceTags" not in ssh
    assert internal["allows"] == [{"protocol": "all"}]
    assert internal["sourceTags"] == [out["tag"]]
    assert "sourceRanges" not in internal, "node-to-node traffic is matched by tag, never by address range"


def test_ipv6_ssh_sources_alone_are_refused_because_nodes_are_ipv4_only() -> None:
    with pytest.raises(ConfigError, match="only IPv6"):
        build(lambda: gcp.GcpGpuVmPool("v6", pool_args(allowed_ssh_cidrs=["2001:db8::/32"])))


# --------------------------------------------------------------------------- instances


def test_instances_sit_in_the_subnet_with_the_firewall_tag_and_an_external_ip(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    (subnet,) = rec.of(SUBNET)
    instances = instances_in_node_order(rec)
    assert len(instances) == 2
    for inst in instances:
        (nic,) = inst.inputs["networkInterfaces"]
        assert nic["subnetwork"] == subnet.outputs["selfLink"]
        assert nic["accessConfigs"] == [{"networkTier": "PREMIUM"}]
        assert inst.inputs["tags"] == [out["tag"]]
        assert inst.inputs["zone"] == "us-central1-a"
    # The inventory gets the external address as host and the subnet address as private_ip.
    assert out["hosts"] == [rec.nat_ip(i.name) for i in instances]
    assert out["private_ips"] == [rec.network_ip(i.name) for i in instances]


def test_gpu_instances_terminate_on_host_maintenance_and_are_shielded_without_secure_boot(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    for inst in rec.of(INSTANCE):
        sched = inst.inputs["scheduling"]
        assert sched["onHostMaintenance"] == "TERMINATE"
        assert sched["automaticRestart"] is False
        assert sched["provisioningModel"] == "STANDARD"
        assert sched["preemptible"] is False
        # Secure Boot would refuse the unsigned NVIDIA driver (no GPU); measured boot stays on.
        assert inst.inputs["shieldedInstanceConfig"] == {
            "enableSecureBoot": False,
            "enableVtpm": True,
            "enableIntegrityMonitoring": True,
        }


def test_secure_boot_can_be_turned_back_on_through_extra_for_a_signed_driver_image() -> None:
    extra = {"shielded_instance_config": {"enable_secure_boot": True}}
    _, rec = build(lambda: gcp.GcpGpuVmPool("signed", pool_args(nodes=1, extra=extra)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["shieldedInstanceConfig"]["enableSecureBoot"] is True
    assert inst.inputs["shieldedInstanceConfig"]["enableVtpm"] is True


def test_os_login_is_off_and_only_cloud_init_installs_keys(cluster: tuple[dict[str, Any], Recorder]) -> None:
    out, rec = cluster
    for inst, host_key in zip(instances_in_node_order(rec), out["host_keys"], strict=True):
        meta = inst.inputs["metadata"]
        assert meta["enable-oslogin"] == "FALSE"
        assert meta["block-project-ssh-keys"] == "TRUE"
        assert "ssh-keys" not in meta and "sshKeys" not in meta
        user_data = meta["user-data"]
        assert user_data.startswith("#cloud-config")
        assert PUBKEY in user_data
        assert host_key.strip() in user_data, (
            "each node's cloud-init installs that node's own pinned host key"
        )
    assert len(set(out["host_keys"])) == 2


def test_t4_comes_from_n1_with_attached_accelerators_and_the_deep_learning_image(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    for inst in rec.of(INSTANCE):
        assert inst.inputs["machineType"] == "n1-standard-4"
        assert inst.inputs["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 1}]
        disk = inst.inputs["bootDisk"]
        assert disk["autoDelete"] is True
        params = disk["initializeParams"]
        # The default family, resolved to the one image version it names today (the mocks' answer).
        assert params["image"] == (
            "https://www.googleapis.com/compute/v1/projects/deeplearning-platform-release/global/images/"
            f"{gcp.DEFAULT_IMAGE_FAMILY}-{harness.GCP_IMAGE_VERSION}"
        )
        assert params["size"] == 200
        assert params["type"] == "pd-balanced"


def test_bundled_gpu_machine_types_attach_no_accelerators() -> None:
    _, rec = build(lambda: gcp.GcpGpuVmPool("l4", pool_args(accelerator="L4", gpus_per_node=4, nodes=1)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["machineType"] == "g2-standard-48"
    assert "guestAccelerators" not in inst.inputs


def test_spot_nodes_are_spot_preemptible_and_deleted_on_preemption() -> None:
    _, rec = build(lambda: gcp.GcpGpuVmPool("spot", pool_args(spot=True, nodes=1)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["scheduling"] == {
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
        "provisioningModel": "SPOT",
        "preemptible": True,
        "instanceTerminationAction": "DELETE",
    }


def test_labels_carry_cluster_env_and_watchdog_settings_everywhere(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    labelled = rec.of(INSTANCE) + rec.of(BUCKET) + rec.of(TOPIC) + rec.of(SUBSCRIPTION)
    assert len(labelled) == 2 + 1 + 2 + 2
    for r in labelled:
        labels = r.inputs["labels"]
        assert labels["lepton-cluster"] == "demo", r.name
        assert labels["lepton-env"] == "dev", r.name
        assert all(":" not in k for k in labels), "GCP label keys take no colon"
    for inst in rec.of(INSTANCE):
        for labels in (inst.inputs["labels"], inst.inputs["bootDisk"]["initializeParams"]["labels"]):
            assert labels["lepton-idle-shutdown-minutes"] == "60"
            assert labels["lepton-max-lifetime-hours"] == "24"


def test_zone_defaults_to_an_existing_zone_of_the_region() -> None:
    _, rec = build(lambda: gcp.GcpGpuVmPool("east", pool_args(region="us-east1", nodes=1)))
    assert rec.of(INSTANCE)[0].inputs["zone"] == "us-east1-c"  # us-east1 has no zone a
    _, rec = build(lambda: gcp.GcpGpuVmPool("zoned", pool_args(region=None, zone="europe-west4-b", nodes=1)))
    assert rec.of(INSTANCE)[0].inputs["zone"] == "europe-west4-b"
    assert rec.of(SUBNET)[0].inputs["region"] == "europe-west4"


def test_extra_is_merged_into_every_instance() -> None:
    extra = {
        "shielded_instance_config": {"enable_integrity_monitoring": False},
        "min_cpu_platform": "Intel Skylake",
        "metadata": {"serial-port-logging-enable": "TRUE"},
        "boot_disk": {"initialize_params": {"type": "pd-ssd"}},
    }
    _, rec = build(lambda: gcp.GcpGpuVmPool("x", pool_args(nodes=1, extra=extra)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["minCpuPlatform"] == "Intel Skylake"
    # Deep merge: the user's keys win, ours stay where the user said nothing.
    assert inst.inputs["shieldedInstanceConfig"]["enableIntegrityMonitoring"] is False
    assert inst.inputs["shieldedInstanceConfig"]["enableVtpm"] is True
    assert inst.inputs["metadata"]["serial-port-logging-enable"] == "TRUE"
    assert inst.inputs["metadata"]["enable-oslogin"] == "FALSE"
    assert inst.inputs["bootDisk"]["initializeParams"]["type"] == "pd-ssd"
    assert inst.inputs["bootDisk"]["initializeParams"]["size"] == 200


def test_a_misspelled_extra_key_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="enable_secure_bot"):
        build(
            lambda: gcp.GcpGpuVmPool(
                "typo", pool_args(nodes=1, extra={"shielded_instance_config": {"enable_secure_bot": False}})
            )
        )


def test_an_existing_network_is_reused_and_still_firewalled() -> None:
    network = {
        "network": "projects/p/global/networks/shared",
        "subnetwork": "projects/p/regions/us-central1/subnetworks/gpu",
    }
    out, rec = build(
        lambda: {"tag": gcp.GcpGpuVmPool("reuse", pool_args(nodes=1, network=network)).network.tag}
    )
    assert rec.of(NETWORK) == [] and rec.of(SUBNET) == []
    assert {r.inputs["network"] for r in rec.of(FIREWALL)} == {network["network"]}
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["networkInterfaces"][0]["subnetwork"] == network["subnetwork"]
    assert inst.inputs["tags"] == [out["tag"]]


# --------------------------------------------------------------------------- identity


def test_nodes_run_as_a_dedicated_service_account_with_the_cloud_platform_scope(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    accounts = rec.of(ACCOUNT)
    assert sorted(out["sa_emails"]) == sorted(a.outputs["email"] for a in accounts)
    assert len(set(out["sa_emails"])) == 2, "one service account per node"
    for inst, email in zip(instances_in_node_order(rec), out["sa_emails"], strict=True):
        assert inst.inputs["serviceAccount"] == {
            "email": email,
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        }


def test_service_account_is_granted_exactly_its_bucket_and_queue(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    """Exactly what the data plane's clients call: objects in the bucket; publish to the jobs and
    dead-letter topics; pull/ack on both subscriptions; get the subscription (its dead-letter
    policy); list the dead-letter topic's subscriptions (pubsub.topics.get, in roles/pubsub.viewer)."""
    out, rec = cluster
    (bucket,) = rec.of(BUCKET)
    jobs_sub = next(s for s in rec.of(SUBSCRIPTION) if "deadLetterPolicy" in s.inputs)
    dead_sub = next(s for s in rec.of(SUBSCRIPTION) if "deadLetterPolicy" not in s.inputs)
    jobs_topic = next(t for t in rec.of(TOPIC) if t.id == jobs_sub.inputs["topic"])
    dead_topic = next(t for t in rec.of(TOPIC) if t.id == dead_sub.inputs["topic"])
    for email in out["sa_emails"]:
        member = f"serviceAccount:{email}"
        grants = [r for r in rec.resources if r.type.endswith("IAMMember") and r.inputs["member"] == member]
        on = {
            (
                g.type,
                g.inputs.get("bucket") or g.inputs.get("subscription") or g.inputs.get("topic"),
                g.inputs["role"],
            )
            for g in grants
        }
        assert len(grants) == len(on) == 7
        assert on == {
            (BUCKET_MEMBER, bucket.outputs["name"], "roles/storage.objectAdmin"),
            (TOPIC_MEMBER, jobs_topic.outputs["name"], "roles/pubsub.publisher"),
            (TOPIC_MEMBER, dead_topic.outputs["name"], "roles/pubsub.publisher"),
            (TOPIC_MEMBER, dead_topic.outputs["name"], "roles/pubsub.viewer"),
            (SUB_MEMBER, jobs_sub.outputs["name"], "roles/pubsub.subscriber"),
            (SUB_MEMBER, jobs_sub.outputs["name"], "roles/pubsub.viewer"),
            (SUB_MEMBER, dead_sub.outputs["name"], "roles/pubsub.subscriber"),
        }
    # No project-, folder- or organization-level grant anywhere in the graph.
    assert not [
        r for r in rec.resources if r.type.startswith(("gcp:projects/", "gcp:organizations/", "gcp:folder/"))
    ]


def test_an_existing_service_account_is_used_and_granted_the_same_resources() -> None:
    email = "trainer@other-proj.iam.gserviceaccount.com"

    def make() -> dict[str, Any]:
        store = gcp.GcpObjectStore("s", ObjectStoreArgs(cloud="gcp"))
        gcp.GcpGpuVmPool("own", pool_args(nodes=1, identity={"service_account_email": email}), store=store)
        return {}

    _, rec = build(make)
    assert rec.of(ACCOUNT) == []
    assert rec.of(INSTANCE)[0].inputs["serviceAccount"]["email"] == email
    assert [m.inputs["member"] for m in rec.of(BUCKET_MEMBER)] == [f"serviceAccount:{email}"]


# --------------------------------------------------------------------------- object store


def test_bucket_is_private_uniform_versioned_and_expires_after_retention() -> None:
    out, rec = build(
        lambda: {
            "url": gcp.GcpObjectStore(
                "data",
                ObjectStoreArgs(cloud="gcp", region="europe-west4", retention_days=30, cluster="c", env="e"),
            ).url
        }
    )
    (bucket,) = rec.of(BUCKET)
    b = bucket.inputs
    assert b["uniformBucketLevelAccess"] is True
    assert b["publicAccessPrevention"] == "enforced"
    assert b["versioning"] == {"enabled": True}
    assert b["location"] == "EUROPE-WEST4"
    assert b["forceDestroy"] is False
    assert b["project"] == GCP_PROJECT
    assert "encryption" not in b, "Google-managed encryption at rest unless a CMEK is asked for"
    assert b["lifecycleRules"] == [
        {"action": {"type": "Delete"}, "condition": {"age": 30}},
        {"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": 30, "withState": "ARCHIVED"}},
    ]
    assert out["url"] == f"gs://{bucket.outputs['name']}"


def test_bucket_cmek_comes_through_extra() -> None:
    key = "projects/p/locations/us-central1/keyRings/r/cryptoKeys/k"
    _, rec = build(
        lambda: gcp.GcpObjectStore(
            "k", ObjectStoreArgs(cloud="gcp", extra={"encryption": {"default_kms_key_name": key}})
        )
    )
    assert rec.of(BUCKET)[0].inputs["encryption"] == {"defaultKmsKeyName": key}
    assert "lifecycleRules" not in rec.of(BUCKET)[0].inputs


# --------------------------------------------------------------------------- job queue


def test_queue_dead_letters_after_max_receive_count_and_keeps_dead_letters() -> None:
    out, rec = build(
        lambda: (lambda q: {"url": q.url, "dead": q.dead_letter_url, "topic": q.topic_url})(
            gcp.GcpJobQueue("jobs", JobQueueArgs(cloud="gcp", visibility_timeout_s=120, max_receive_count=7))
        )
    )
    topics = rec.of(TOPIC)
    subs = rec.of(SUBSCRIPTION)
    assert len(topics) == 2 and len(subs) == 2
    main = next(s for s in subs if "deadLetterPolicy" in s.inputs)
    dead_sub = next(s for s in subs if s is not main)
    dead_topic = next(t for t in topics if t.id == main.inputs["deadLetterPolicy"]["deadLetterTopic"])
    main_topic = next(t for t in topics if t is not dead_topic)
    assert main.inputs["topic"] == main_topic.id
    assert main.inputs["ackDeadlineSeconds"] == 120
    assert main.inputs["deadLetterPolicy"]["maxDeliveryAttempts"] == 7
    assert main.inputs["expirationPolicy"] == {"ttl": ""}, "a job queue must not expire after 31 idle days"
    assert dead_sub.inputs["topic"] == dead_topic.id, "dead letters need a subscription or Pub/Sub drops them"
    assert out["url"] == f"projects/{GCP_PROJECT}/subscriptions/{main.outputs['name']}"
    assert out["dead"] == f"projects/{GCP_PROJECT}/subscriptions/{dead_sub.outputs['name']}"
    assert out["topic"] == f"projects/{GCP_PROJECT}/topics/{main_topic.outputs['name']}"
    # Google-managed encryption at rest by default (Pub/Sub always encrypts; no CMEK unless asked).
    assert all("kmsKeyName" not in t.inputs for t in topics)
    # The Pub/Sub service agent may move messages: publish to the dead-letter topic, ack the source.
    agent = f"serviceAccount:service-{rec.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    agent_grants = {
        (r.type, r.inputs["role"])
        for r in rec.resources
        if r.type.endswith("IAMMember") and r.inputs["member"] == agent
    }
    assert agent_grants == {(TOPIC_MEMBER, "roles/pubsub.publisher"), (SUB_MEMBER, "roles/pubsub.subscriber")}


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("max_receive_count", 4, "5 to 100"),
        ("max_receive_count", 101, "5 to 100"),
        ("visibility_timeout_s", 5, "10 to 600"),
        ("visibility_timeout_s", 601, "10 to 600"),
    ],
)
def test_queue_limits_outside_pubsub_ranges_are_config_errors(field: str, value: int, allowed: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}={value}.*{allowed}"):
        build(lambda: gcp.GcpJobQueue("q", JobQueueArgs(cloud="gcp", **{field: value})))


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zone": "us-central1"}, "zone 'us-central1' is not a GCP zone"),
        ({"zone": "uscentral1-a"}, "not a GCP zone"),
        ({"zone": "europe-west4-a"}, "zone 'europe-west4-a' is not in region 'us-central1'"),
        ({"region": "us-central1-a"}, "region 'us-central1-a' is not a GCP region"),
        ({"region": "US_CENTRAL1"}, "not a GCP region"),
        ({"network": {"network": "n"}}, "missing: \\['subnetwork'\\]"),
        ({"network": {"subnetwork": "gpu"}}, "self link"),
        (
            {"network": {"subnetwork": "projects/p/regions/europe-west4/subnetworks/gpu"}},
            "region 'europe-west4', but the pool is in 'us-central1'",
        ),
        ({"network": {"network": "n", "subnetwork": "s", "vpc_id": "v"}}, "unknown: \\['vpc_id'\\]"),
        ({"identity": {"instance_profile": "x"}}, "service_account_email"),
        ({"identity": {"service_account_email": "not-an-email"}}, "not-an-email"),
    ],
)
def test_bad_gcp_pool_settings_are_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(lambda: gcp.GcpGpuVmPool("bad", pool_args(**overrides)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"extra": {"machine_typ": "n1-standard-4"}}, "machine_typ.*allowed keys"),
        ({"extra": {"boot_disk": {"initialize_params": {"sise": 10}}}}, "sise"),
        # Any depth, lists of blocks included (not only the blocks we set ourselves).
        (
            {
                "extra": {
                    "scheduling": {"node_affinities": [{"keyy": "k", "operator": "IN", "values": ["v"]}]}
                }
            },
            "keyy",
        ),
        (
            {"extra": {"network_interfaces": [{"alias_ip_ranges": [{"ip_cidr_rang": "10.0.0.0/24"}]}]}},
            "ip_cidr_rang",
        ),
        ({"allowed_ssh_cidrs": ["2001:db8::/32"]}, "only IPv6"),
        ({"zone": "europe-west4-a"}, "not in region"),
    ],
)
def test_bad_gcp_pool_choices_fail_before_any_resource(overrides: dict[str, Any], message: str) -> None:
    """The pool is planned before it registers anything: a misspelled `extra` key (probed against
    the instance's arguments) fails with no network or service account half-created."""
    with pytest.raises(ConfigError, match=message):
        build(lambda: gcp.GcpGpuVmPool("bad", pool_args(**overrides)))
    assert harness.MOCKS.resources == []
    from lepton_infra.components.neutral import check_pool_args  # what `lepton_infra.config` runs

    with pytest.raises(ConfigError, match=message):
        check_pool_args(pool_args(**overrides))


def test_a_store_of_another_cloud_is_refused_naming_what_a_gcp_pool_takes() -> None:
    from lepton_infra.components.neutral import ObjectStore

    def make() -> None:
        store = ObjectStore("s3", ObjectStoreArgs(cloud="aws", region="us-east-1"))
        gcp.GcpGpuVmPool("p", pool_args(nodes=1), store=store)

    with pytest.raises(
        ConfigError,
        match="store is a AwsObjectStore; a GCP pool can only be granted a GCP store .GcpObjectStore",
    ):
        build(make)


def test_ipv6_ssh_sources_beside_ipv4_ones_are_warned_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    _, rec = build(
        lambda: gcp.GcpGpuVmPool("p", pool_args(nodes=1, allowed_ssh_cidrs=[CIDR, "2001:db8::/32"]))
    )
    assert [w for w in warnings if "IPv6" in w] == [
        "gcp: ignoring IPv6 SSH sources ['2001:db8::/32']: the pool's nodes are IPv4-only"
    ]
    ssh = next(r for r in rec.of(FIREWALL) if r.name.endswith("-ssh"))
    assert ssh.inputs["sourceRanges"] == [CIDR]


def test_a_missing_project_is_a_config_error_saying_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pulumi.Config, "get", lambda self, key, *a, **k: None)
    with pytest.raises(ConfigError, match="gcp:project"):
        gcp.resolve_project({})
    assert gcp.resolve_project({"project": "from-extra-1"}) == "from-extra-1"
    with pytest.raises(ConfigError, match="Bad_Project"):
        gcp.resolve_project({"project": "Bad_Project"})


def test_names_are_valid_gcp_names_whatever_the_component_name() -> None:
    assert gcp.gcp_slug("Dev_GCP cluster!") == "dev-gcp-cluster"
    assert gcp.gcp_slug("1st") == "l-1st"
    sa = gcp.service_account_id("A_Very_Long_Cluster_Name_That_Goes_On_And_On", "proj-123456")
    assert 6 <= len(sa) <= 30 and sa[0].isalpha() and sa[-1].isalnum()
    tag = gcp.node_tag("x" * 100, "proj-123456")
    assert len(tag) <= 63


# --------------------------------------------------------------------------- the project's policy pack


def test_the_gcp_cluster_passes_the_projects_policy_pack(cluster: tuple[dict[str, Any], Recorder]) -> None:
    policy_harness = pytest.importorskip("policy_harness")
    _, rec = cluster
    records = [policy_harness.Recorded(r.type, r.name, r.inputs, None, r.id) for r in rec.resources]
    findings = policy_harness.analyze(records)
    assert policy_harness.mandatory(findings) == []
    # The one advisory note we accept: the dead-letter subscription has no dead-letter policy of its
    # own (it is the end of the line; giving it one would only move poison messages in a circle).
    others = [f for f in findings if not (f.type == SUBSCRIPTION and "deadLetterPolicy" in f.message)]
    assert others == []


# --------------------------------------------------------------------------- public IP, project APIs


def test_ssh_only_from_internal_ranges_gets_no_external_ip_and_the_private_address_as_host() -> None:
    def make() -> dict[str, Any]:
        pool = gcp.GcpGpuVmPool("vpn", pool_args(allowed_ssh_cidrs=["10.8.0.0/16"]))
        return {
            "hosts": pulumi.Output.all(*[n.host for n in pool.nodes]),
            "private_ips": pulumi.Output.all(*[n.private_ip for n in pool.nodes]),
        }

    out, rec = build(make)
    for inst in rec.of(INSTANCE):
        assert inst.inputs["networkInterfaces"][0].get("accessConfigs", []) == []
    assert out["hosts"] == out["private_ips"]
    # The SSH rule still admits the VPN range (the internal address is reachable from it).
    ssh = next(r for r in rec.of(FIREWALL) if r.name.endswith("-ssh"))
    assert ssh.inputs["sourceRanges"] == ["10.8.0.0/16"]


def test_one_public_ssh_source_among_internal_ones_gives_external_ips() -> None:
    _, rec = build(
        lambda: gcp.GcpGpuVmPool("mixed", pool_args(nodes=1, allowed_ssh_cidrs=["10.8.0.0/16", CIDR]))
    )
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["networkInterfaces"][0]["accessConfigs"] == [{"networkTier": "PREMIUM"}]


SERVICE = "gcp:projects/service:Service"


def test_apis_are_left_alone_unless_asked(cluster: tuple[dict[str, Any], Recorder]) -> None:
    _, rec = cluster
    assert rec.of(SERVICE) == []


def test_enable_apis_turns_on_each_components_apis_first_and_never_disables_them() -> None:
    def make() -> dict[str, Any]:
        on = {"enable_apis": True}
        store = gcp.GcpObjectStore("s", ObjectStoreArgs(cloud="gcp", extra=on))
        queue = gcp.GcpJobQueue("q", JobQueueArgs(cloud="gcp", extra=on))
        gcp.GcpGpuVmPool("p", pool_args(nodes=1, extra=on), store=store, queue=queue)
        return {}

    _, rec = build(make)
    services = rec.of(SERVICE)
    assert sorted(s.inputs["service"] for s in services) == sorted(
        ["storage.googleapis.com", "pubsub.googleapis.com", "cloudresourcemanager.googleapis.com"]
        + ["compute.googleapis.com", "iam.googleapis.com", "secretmanager.googleapis.com"]
    )
    for service in services:
        assert service.inputs["project"] == GCP_PROJECT
        assert service.inputs["disableOnDestroy"] is False, "other workloads of the project may use it"
    names = {s.inputs["service"]: s.name for s in services}
    (inst,) = rec.of(INSTANCE)
    assert names["compute.googleapis.com"] in inst.depends_on
    (vpc,) = rec.of(NETWORK)
    assert names["compute.googleapis.com"] in vpc.depends_on, "the network is created after the API too"
    (account,) = rec.of(ACCOUNT)
    assert names["iam.googleapis.com"] in account.depends_on
    (secret,) = rec.of(SECRET)
    assert names["secretmanager.googleapis.com"] in secret.depends_on
    (bucket,) = rec.of(BUCKET)
    assert names["storage.googleapis.com"] in bucket.depends_on
    for topic in rec.of(TOPIC):
        assert names["pubsub.googleapis.com"] in topic.depends_on
    # The switch is ours, not the provider's: it reaches no resource's arguments.
    assert all("enableApis" not in r.inputs for r in rec.resources)


def test_enable_apis_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="enable_apis"):
        gcp.GcpGpuVmPool.plan("p", pool_args(extra={"enable_apis": "yes"}))


# --------------------------------------------------------------------------- preview


def test_preview_registers_the_same_graph_as_an_update() -> None:
    """`pulumi preview` (pull requests) must show every resource `pulumi up` would create: nothing
    is created inside an apply that only runs once values are known."""
    _, up = build(full_cluster())
    _, preview = build(full_cluster(), preview=True)
    assert sorted((r.type, r.name) for r in preview.resources) == sorted(
        (r.type, r.name) for r in up.resources
    )


# --------------------------------------------------------------------------- private pools, placement

ROUTER = "gcp:compute/router:Router"
ROUTER_NAT = "gcp:compute/routerNat:RouterNat"
POLICY = "gcp:compute/resourcePolicy:ResourcePolicy"


def test_a_public_pool_needs_no_nat(cluster: tuple[dict[str, Any], Recorder]) -> None:
    _, rec = cluster
    assert rec.of(ROUTER) == [] and rec.of(ROUTER_NAT) == []


def test_a_private_pool_gets_cloud_nat_and_private_google_access_on_its_own_subnet() -> None:
    _, rec = build(lambda: gcp.GcpGpuVmPool("priv", pool_args(nodes=1, allowed_ssh_cidrs=["10.8.0.0/16"])))
    (vpc,) = rec.of(NETWORK)
    (subnet,) = rec.of(SUBNET)
    (router,) = rec.of(ROUTER)
    (nat,) = rec.of(ROUTER_NAT)
    assert subnet.inputs["privateIpGoogleAccess"] is True, "GCS, Pub/Sub, Secret Manager without NAT"
    assert router.inputs["network"] == vpc.outputs["selfLink"]
    assert router.inputs["region"] == nat.inputs["region"] == "us-central1"
    assert nat.inputs["router"] == router.outputs["name"]
    assert nat.inputs["natIpAllocateOption"] == "AUTO_ONLY"
    assert nat.inputs["sourceSubnetworkIpRangesToNat"] == "LIST_OF_SUBNETWORKS"
    assert nat.inputs["subnetworks"] == [{"name": subnet.id, "sourceIpRangesToNats": ["ALL_IP_RANGES"]}]


def test_an_existing_subnetwork_alone_is_used_with_its_vpc_looked_up_and_no_nat_added() -> None:
    link = "https://www.googleapis.com/compute/v1/projects/host-proj/regions/us-central1/subnetworks/gpu"
    _, rec = build(
        lambda: gcp.GcpGpuVmPool(
            "byo", pool_args(nodes=1, allowed_ssh_cidrs=["10.8.0.0/16"], network={"subnetwork": link})
        )
    )
    assert rec.of(NETWORK) == [] and rec.of(SUBNET) == [] and rec.of(ROUTER_NAT) == []
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["networkInterfaces"][0]["subnetwork"] == link
    lookups = [args for token, args in rec.calls if token == "gcp:compute/getSubnetwork:getSubnetwork"]
    assert lookups == [{"selfLink": link}]
    assert {r.inputs["network"] for r in rec.of(FIREWALL)} == {harness.SUBNETWORK_VPC}


@pytest.mark.parametrize(("accelerator", "gpus"), [("A100-40GB", 8), ("A100-80GB", 4), ("H100", 8)])
def test_multi_node_a100_and_h100_pools_are_placed_compactly(accelerator: str, gpus: int) -> None:
    _, rec = build(
        lambda: gcp.GcpGpuVmPool("big", pool_args(accelerator=accelerator, gpus_per_node=gpus, nodes=3))
    )
    (policy,) = rec.of(POLICY)
    assert policy.inputs["region"] == "us-central1"
    assert policy.inputs["groupPlacementPolicy"] == {"collocation": "COLLOCATED", "vmCount": 3}
    instances = rec.of(INSTANCE)
    assert len(instances) == 3
    for inst in instances:
        assert inst.inputs["resourcePolicies"] == policy.outputs["selfLink"]


@pytest.mark.parametrize(("accelerator", "gpus", "nodes"), [("A100-40GB", 8, 1), ("T4", 1, 4), ("L4", 8, 2)])
def test_single_nodes_and_other_families_get_no_placement_policy(
    accelerator: str, gpus: int, nodes: int
) -> None:
    _, rec = build(
        lambda: gcp.GcpGpuVmPool("small", pool_args(accelerator=accelerator, gpus_per_node=gpus, nodes=nodes))
    )
    assert rec.of(POLICY) == []
    assert all("resourcePolicies" not in i.inputs for i in rec.of(INSTANCE))


# --------------------------------------------------------------------------- host keys via Secret Manager


def test_each_nodes_host_key_is_a_secret_only_that_nodes_account_can_read(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    secrets = sorted(rec.of(SECRET), key=lambda r: r.inputs["secretId"])
    versions = {v.inputs["secret"]: v for v in rec.of(SECRET_VERSION)}
    readers = {m.inputs["secretId"]: m for m in rec.of(SECRET_MEMBER)}
    assert len(secrets) == len(versions) == len(readers) == 2
    for i, (secret, email) in enumerate(zip(secrets, out["sa_emails"], strict=True)):
        assert secret.inputs["secretId"].endswith(f"-host-key-{i}")
        assert secret.inputs["replication"] == {"auto": {}}
        assert secret.inputs["labels"]["lepton-cluster"] == "demo"
        assert (
            versions[secret.id].inputs["secretData"]
            == rec.named(f"demo-hostkey-{i}").outputs["privateKeyOpenssh"]
        )
        reader = readers[secret.outputs["secretId"]]
        assert reader.inputs["role"] == "roles/secretmanager.secretAccessor"
        assert reader.inputs["member"] == f"serviceAccount:{email}", "that node's account and no other"


def test_instance_metadata_holds_no_key_and_first_boot_fetches_its_own_secret(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    secrets = sorted(rec.of(SECRET), key=lambda r: r.inputs["secretId"])
    for inst, secret in zip(instances_in_node_order(rec), secrets, strict=True):
        text = str(inst.inputs)
        assert "PRIVATE KEY" not in text
        user_data = inst.inputs["metadata"]["user-data"]
        version = f"projects/{GCP_PROJECT}/secrets/{secret.outputs['secretId']}/versions/latest"
        assert f"python3 - gcp {version} <<'LEPTON_PY'" in user_data
        # The secret is readable before the instance boots: the first fetch can succeed.
        assert {n for n in inst.depends_on if "host-key" in n} >= {
            next(v.name for v in rec.of(SECRET_VERSION) if v.inputs["secret"] == secret.id),
            next(m.name for m in rec.of(SECRET_MEMBER) if m.inputs["secretId"] == secret.outputs["secretId"]),
        }


def test_the_guest_agent_is_told_to_keep_the_pinned_host_key(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    yaml = pytest.importorskip("yaml")
    _, rec = cluster
    for inst in rec.of(INSTANCE):
        doc = yaml.safe_load(inst.inputs["metadata"]["user-data"])
        files = {f["path"]: f["content"] for f in doc["write_files"]}
        config = files["/etc/default/instance_configs.cfg"]
        assert "[InstanceSetup]" in config and "set_host_keys = false" in config
        assert doc["ssh_deletekeys"] is False, "cloud-init keeps the key the bootcmd installed"


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs the cloud-init package")
def test_gcp_user_data_passes_cloud_inits_own_schema(
    cluster: tuple[dict[str, Any], Recorder], tmp_path: Path
) -> None:
    _, rec = cluster
    doc = tmp_path / "user-data.yaml"
    doc.write_text(rec.of(INSTANCE)[0].inputs["metadata"]["user-data"])
    out = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(doc)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_an_existing_service_account_reads_every_nodes_secret() -> None:
    email = "trainer@other-proj.iam.gserviceaccount.com"
    _, rec = build(
        lambda: gcp.GcpGpuVmPool("own", pool_args(nodes=2, identity={"service_account_email": email}))
    )
    assert [m.inputs["member"] for m in rec.of(SECRET_MEMBER)] == [f"serviceAccount:{email}"] * 2


def test_lepton_enable_apis_turns_on_every_api_the_cluster_calls_and_only_on_gcp() -> None:
    """A fresh project fails with SERVICE_DISABLED unless the stack can ask for its APIs."""
    from lepton_infra import config as stack_config
    from lepton_infra.components.neutral import TrainingCluster

    raw: dict[str, Any] = {
        "cloud": "gcp",
        "accelerator": "T4",
        "region": "us-central1",
        "allowedSshCidrs": '["203.0.113.0/24"]',
        "enableApis": "true",
    }
    args = stack_config.parse(raw, cluster="c", env="dev").args
    _, rec = build(lambda: TrainingCluster("c", args))
    services = rec.of(SERVICE)
    assert {s.inputs["service"] for s in services} >= {
        f"{api}.googleapis.com" for api in ("compute", "iam", "secretmanager", "pubsub", "storage")
    }
    assert all(s.inputs["disableOnDestroy"] is False for s in services)
    (inst,) = rec.of(INSTANCE)
    assert any(s.name in inst.depends_on for s in services if s.inputs["service"] == "compute.googleapis.com")
    with pytest.raises(ConfigError, match=r"lepton:enableApis is true, but cloud is 'aws'"):
        stack_config.parse({**raw, "cloud": "aws", "region": "us-east-1"}, cluster="c", env="dev")


def test_a3_nodes_use_gvnic_and_other_families_keep_the_default_nic() -> None:
    _, rec = build(lambda: gcp.GcpGpuVmPool("h", pool_args(accelerator="H100", gpus_per_node=8, nodes=1)))
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["machineType"].startswith("a3-")
    assert [n["nicType"] for n in inst.inputs["networkInterfaces"]] == ["GVNIC"]
    _, rec = build(lambda: gcp.GcpGpuVmPool("t", pool_args(nodes=1)))
    assert all("nicType" not in n for i in rec.of(INSTANCE) for n in i.inputs["networkInterfaces"])


def test_on_a_fresh_project_the_image_look_up_waits_for_the_compute_api() -> None:
    """GCE answers `getImage` (the default family's current version) only once the Compute API is
    on: with enable_apis the look-up waits for the pool's `projects.Service`."""
    harness.MOCKS.fresh_gcp_project = True
    try:
        _, rec = build(lambda: gcp.GcpGpuVmPool("p", pool_args(nodes=1, extra={"enable_apis": True})))
    finally:
        harness.MOCKS.fresh_gcp_project = False
    (inst,) = rec.of(INSTANCE)
    assert inst.inputs["bootDisk"]["initializeParams"]["image"].endswith(harness.GCP_IMAGE_VERSION)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gcp.GcpObjectStore("s", ObjectStoreArgs(cloud="gcp", extra={"cors": [{"orign": ["*"]}]})),
        lambda: gcp.GcpJobQueue(
            "q", JobQueueArgs(cloud="gcp", extra={"retry_policy": {"minimum_backof": "5s"}})
        ),
    ],
)
def test_a_misspelled_nested_store_or_queue_extra_key_is_a_config_error(make: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError, match="(orign|minimum_backof).*allowed keys:"):
        build(make)
