"""AWS placement and reachability under mocks: the zone EC2 offers the instance type in, cluster
placement and EFA for P4/P5, the private pools' ways out (NAT gateway or endpoints only), and the
bastion the inventory names."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pytest

from lepton_infra.components import aws
from lepton_infra.components.args import GpuVmPoolArgs, TrainingClusterArgs
from lepton_infra.components.neutral import TrainingCluster
from lepton_infra.errors import ConfigError

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"
BASTION_KEY = " ".join(PUBKEY.split()[:2])  # a valid key line (the same key: only its form matters)
OFFERINGS = "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings"
INSTANCE = "aws:ec2/instance:Instance"


def pool_args(**overrides: Any) -> GpuVmPoolArgs:
    return GpuVmPoolArgs(**harness.demo_spec("aws", ssh_public_key=PUBKEY, **overrides))


def build_pool(**overrides: Any) -> tuple[dict[str, Any], harness.Recorder]:
    def program() -> dict[str, Any]:
        pool = aws.AwsGpuVmPool("p", pool_args(**overrides))
        return {
            "hosts": pulumi.Output.all(*[n.host for n in pool.nodes]),
            "zone": pool.zone if pool.zone is not None else "",
        }

    return harness.build(program)


# ------------------------------------------------------------------------------------------- zone


def test_the_zone_is_one_ec2_offers_the_instance_type_in() -> None:
    out, rec = build_pool()
    ((_, query),) = [c for c in rec.calls if c[0] == OFFERINGS]
    assert query["locationType"] == "availability-zone"
    assert query["filters"] == [{"name": "instance-type", "values": ["g4dn.xlarge"]}]
    assert out["zone"] == "us-east-1a"  # the first by name of the offered zones
    assert rec.named("p-net-subnet").inputs["availabilityZone"] == "us-east-1a"
    out, rec = build_pool(accelerator="H100", gpus_per_node=8)  # offered only in us-east-1c (mocks)
    assert (
        out["zone"] == "us-east-1c" and rec.named("p-net-subnet").inputs["availabilityZone"] == "us-east-1c"
    )


def test_the_users_zone_wins_and_an_existing_subnet_keeps_its_own() -> None:
    out, rec = build_pool(zone="us-east-1d")
    assert out["zone"] == "us-east-1d" and not [c for c in rec.calls if c[0] == OFFERINGS]
    out, rec = build_pool(network={"vpc_id": "vpc-1", "subnet_id": "subnet-1"})
    assert out["zone"] == "" and not [c for c in rec.calls if c[0] == OFFERINGS]


def test_an_instance_type_offered_in_no_zone_of_the_region_is_an_error_naming_the_choice() -> None:
    with pytest.raises(Exception, match=r"p4de.24xlarge\) is offered in no availability zone of us-east-1"):
        build_pool(accelerator="A100-80GB", gpus_per_node=8)


# -------------------------------------------------------------------------------- placement + EFA


def test_p5_nodes_share_a_cluster_placement_group_and_get_an_efa_interface_on_every_card() -> None:
    out, rec = build_pool(accelerator="H100", gpus_per_node=8)
    (group,) = rec.of("aws:ec2/placementGroup:PlacementGroup")
    assert group.inputs["strategy"] == "cluster"
    (template,) = rec.of("aws:ec2/launchTemplate:LaunchTemplate")
    nics = template.inputs["networkInterfaces"]
    assert [n["networkCardIndex"] for n in nics] == list(range(32))
    assert [n["deviceIndex"] for n in nics] == [0] + [1] * 31
    sg, subnet = rec.named("p-net-sg"), rec.named("p-net-subnet")
    assert all(n["interfaceType"] == "efa" for n in nics)
    assert all(n["subnetId"] == subnet.id and n["securityGroups"] == [sg.id] for n in nics)
    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    addresses = rec.of("aws:ec2/eip:Eip")
    for i in range(2):
        inst = rec.named(f"p-node-{i}")
        assert inst.inputs["launchTemplate"] == {"id": template.id, "version": "$Latest"}
        assert inst.inputs["placementGroup"] == group.outputs["name"]
        assert "subnetId" not in inst.inputs and "associatePublicIpAddress" not in inst.inputs
        # Several network cards: no public IP at launch, an Elastic IP on the primary interface
        # instead (the inventory's host); EC2 refuses `instance=` for such an instance.
        (address,) = [
            a
            for a in addresses
            if a.inputs.get("networkInterface") == inst.outputs["primaryNetworkInterfaceId"]
        ]
        assert "instance" not in address.inputs
        assert address.outputs["publicIp"] == out["hosts"][i]
    # EFA needs the group to allow all traffic to and from itself.
    assert {"protocol": "-1", "fromPort": 0, "toPort": 0, "self": True} in [
        {k: e[k] for k in ("protocol", "fromPort", "toPort", "self") if k in e} for e in sg.inputs["egress"]
    ]


def test_p4d_gets_four_efa_interfaces_and_a_t4_pool_neither_placement_nor_efa() -> None:
    _, rec = build_pool(accelerator="A100-40GB", gpus_per_node=8, allowed_ssh_cidrs=["10.0.0.0/8"])
    (template,) = rec.of("aws:ec2/launchTemplate:LaunchTemplate")
    assert len(template.inputs["networkInterfaces"]) == 4
    assert not rec.of("aws:ec2/eip:Eip") or all("instance" not in a.inputs for a in rec.of("aws:ec2/eip:Eip"))
    _, rec = build_pool()
    assert not rec.of("aws:ec2/placementGroup:PlacementGroup")
    assert not rec.of("aws:ec2/launchTemplate:LaunchTemplate")


# --------------------------------------------------------------------------------- private egress


def test_a_private_pool_leaves_through_a_nat_gateway_and_reaches_s3_through_a_gateway_endpoint() -> None:
    out, rec = build_pool(allowed_ssh_cidrs=["10.8.0.0/16"])
    assert all(h.startswith("10.") for h in out["hosts"])
    nat = rec.named("p-net-nat")
    assert nat.inputs["subnetId"] == rec.named("p-net-nat-subnet").id
    assert nat.inputs["allocationId"] == rec.named("p-net-nat-ip").outputs["allocationId"]
    (nat_route,) = rec.named("p-net-nat-routes").inputs["routes"]
    assert nat_route["gatewayId"] == rec.named("p-net-igw").id
    (node_route,) = rec.named("p-net-routes").inputs["routes"]
    assert node_route == {"cidrBlock": "0.0.0.0/0", "natGatewayId": nat.id}
    s3 = rec.named("p-net-s3")
    assert (
        s3.inputs["serviceName"] == "com.amazonaws.us-east-1.s3" and s3.inputs["vpcEndpointType"] == "Gateway"
    )
    assert s3.inputs["routeTableIds"] == [rec.named("p-net-routes").id]
    assert not [
        e for e in rec.of("aws:ec2/vpcEndpoint:VpcEndpoint") if e.inputs["vpcEndpointType"] == "Interface"
    ]


def test_endpoints_only_egress_reaches_the_queue_and_the_host_keys_and_nothing_else() -> None:
    _, rec = build_pool(allowed_ssh_cidrs=["10.8.0.0/16"], private_egress="endpoints")
    assert not rec.of("aws:ec2/internetGateway:InternetGateway") and not rec.of(
        "aws:ec2/natGateway:NatGateway"
    )
    assert rec.named("p-net-routes").inputs.get("routes", []) == []
    endpoints = {e.name: e for e in rec.of("aws:ec2/vpcEndpoint:VpcEndpoint")}
    assert set(endpoints) == {"p-net-s3", "p-net-sqs", "p-net-secretsmanager"}
    endpoint_sg = rec.named("p-net-endpoints-sg")
    ((rule,),) = [endpoint_sg.inputs["ingress"]]
    assert (rule["fromPort"], rule["toPort"], rule["cidrBlocks"]) == (443, 443, [aws.VPC_CIDR])
    for service in ("sqs", "secretsmanager"):
        e = endpoints[f"p-net-{service}"]
        assert e.inputs["serviceName"] == f"com.amazonaws.us-east-1.{service}"
        assert e.inputs["vpcEndpointType"] == "Interface" and e.inputs["privateDnsEnabled"] is True
        assert e.inputs["subnetIds"] == [rec.named("p-net-subnet").id]
        assert e.inputs["securityGroupIds"] == [endpoint_sg.id]


def test_an_existing_network_is_used_as_it_is_and_a_bad_egress_choice_is_refused() -> None:
    _, rec = build_pool(
        allowed_ssh_cidrs=["10.8.0.0/16"], network={"vpc_id": "vpc-1", "subnet_id": "subnet-1"}
    )
    assert not rec.of("aws:ec2/vpcEndpoint:VpcEndpoint") and not rec.of("aws:ec2/natGateway:NatGateway")
    assert all(rec.named(f"p-node-{i}").inputs["subnetId"] == "subnet-1" for i in range(2))
    with pytest.raises(ConfigError, match="private_egress is 'internet'; allowed: nat, endpoints"):
        build_pool(private_egress="internet")


# ---------------------------------------------------------------------------------------- bastion


def cluster_args(**overrides: Any) -> TrainingClusterArgs:
    base: dict[str, Any] = {
        "cloud": "aws",
        "accelerator": "T4",
        "nodes": 1,
        "region": "us-east-1",
        "allowed_ssh_cidrs": ["10.0.5.10/32"],
        "ssh_public_key": PUBKEY,
    }
    base.update(overrides)
    return TrainingClusterArgs(**base)


def test_the_inventory_names_the_users_bastion_pinned_like_the_nodes() -> None:
    jump = {"host": "10.0.5.10", "user": "ops", "host_key": BASTION_KEY + " bastion"}
    out, _ = harness.build(lambda: {"inventory": TrainingCluster("c", cluster_args(jump=jump)).inventory})
    inventory = json.loads(out["inventory"])
    assert inventory["jump"] == {"host": "10.0.5.10", "port": 22, "user": "ops", "host_key": BASTION_KEY}
    assert all(n["host"].startswith("10.") for n in inventory["nodes"])  # private nodes, via the bastion
    out, _ = harness.build(lambda: {"inventory": TrainingCluster("c", cluster_args()).inventory})
    assert "jump" not in json.loads(out["inventory"])


@pytest.mark.parametrize(
    ("jump", "expected"),
    [
        ({"host": "10.9.9.9", "user": "ops", "host_key": BASTION_KEY}, "outside allowed_ssh_cidrs"),
        ({"host": "10.0.5.10", "user": "ops"}, r"jump is .*host_key"),
        ({"host": "10.0.5.10", "user": "ops", "host_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "jump"),
    ],
)
def test_a_bastion_the_nodes_would_refuse_or_a_malformed_one_fails_before_any_resource(
    jump: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        harness.build(lambda: {"inventory": TrainingCluster("c", cluster_args(jump=jump)).inventory})
    assert harness.MOCKS.resources == []


def test_stack_config_takes_the_bastion_as_json_and_the_egress_choice() -> None:
    from lepton_infra import config as stack_config

    raw = {
        "cloud": "aws",
        "accelerator": "T4",
        "region": "us-east-1",
        "allowedSshCidrs": '["10.0.5.10/32"]',
        "sshPublicKey": PUBKEY,
        "privateEgress": "endpoints",
        "jump": json.dumps({"host": "10.0.5.10", "user": "ops", "host_key": BASTION_KEY}),
    }
    args = stack_config.parse(raw, cluster="c", env="dev").args
    assert args.private_egress == "endpoints" and args.jump["user"] == "ops"
    with pytest.raises(ConfigError, match="lepton:jump is"):
        stack_config.parse({**raw, "jump": "{host: x"}, cluster="c", env="dev")


def test_a_public_bastion_reaching_private_nodes_gives_no_node_a_public_ip() -> None:
    """The controller dials the bastion's public address; the nodes see its private one. Only the
    latter belongs in allowed_ssh_cidrs (it is what the firewall checks), so the nodes stay private."""
    jump = {"host": "198.51.100.7", "user": "ops", "host_key": BASTION_KEY, "source_cidr": "10.0.5.0/24"}

    def program() -> dict[str, Any]:
        cluster = TrainingCluster("c", cluster_args(allowed_ssh_cidrs=["10.0.5.0/24"], nodes=2, jump=jump))
        return {"inventory": cluster.inventory}

    out, rec = harness.build(program)
    inventory = json.loads(out["inventory"])
    assert inventory["jump"] == {"host": "198.51.100.7", "port": 22, "user": "ops", "host_key": BASTION_KEY}
    assert all(n["host"] == n["private_ip"] for n in inventory["nodes"])
    assert all(r.inputs["associatePublicIpAddress"] is False for r in rec.of(INSTANCE))
    assert not [e for e in rec.of("aws:ec2/eip:Eip") if "-node-" in e.name]
    ssh_rules = [r for r in rec.named("c-pool-net-sg").inputs["ingress"] if r.get("fromPort") == 22]
    assert [r["cidrBlocks"] for r in ssh_rules] == [["10.0.5.0/24"]]


@pytest.mark.parametrize(
    ("cidrs", "source", "expected"),
    [
        (["10.0.5.0/24"], "10.9.0.0/24", r"jump.source_cidr 10.9.0.0/24 is outside allowed_ssh_cidrs"),
        (["10.0.5.0/24"], "not-a-range", r"jump.source_cidr is 'not-a-range': not a CIDR block"),
        (["10.0.5.0/24", "198.51.100.7/32"], "10.0.5.0/24", r"public address 198.51.100.7.*remove it"),
    ],
)
def test_a_bastion_source_the_firewall_would_refuse_or_that_would_make_nodes_public_is_an_error(
    cidrs: list[str], source: str, expected: str
) -> None:
    jump = {"host": "198.51.100.7", "user": "ops", "host_key": BASTION_KEY, "source_cidr": source}
    with pytest.raises(ConfigError, match=expected):
        cluster_args(allowed_ssh_cidrs=cidrs, jump=jump)


def test_stack_config_brings_its_own_network_through_lepton_network() -> None:
    from lepton_infra import config as stack_config

    raw = {
        "cloud": "aws",
        "accelerator": "T4",
        "region": "us-east-1",
        "allowedSshCidrs": '["10.8.0.0/16"]',
        "network": json.dumps({"vpc_id": "vpc-1", "subnet_id": "subnet-1"}),
    }
    args = stack_config.parse(raw, cluster="c", env="dev").args
    _, rec = harness.build(lambda: {"inventory": TrainingCluster("c", args).inventory})
    assert not rec.of("aws:ec2/vpc:Vpc") and rec.named("c-pool-node-0").inputs["subnetId"] == "subnet-1"
    assert rec.named("c-pool-net-sg").inputs["vpcId"] == "vpc-1"
    with pytest.raises(
        ConfigError, match=r"lepton:network for aws is \{'subnet': 'x'\}; allowed keys: subnet_id, vpc_id"
    ):
        stack_config.parse({**raw, "network": '{"subnet": "x"}'}, cluster="c", env="dev")
