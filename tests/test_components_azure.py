"""Azure components under Pulumi mocks: the resource graph is wired (subnet in the VNet with the NSG,
NICs in the subnet with the NSG and the pool's application security group, VMs on their NIC with the
managed identity, role assignments on exactly the cluster's container and queues) and every Azure
secure default (README "Deploy") is in the resource inputs."""

from __future__ import annotations

import base64
import ipaddress
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest

# The shared harness sets the mocks on import: it must come before any component module.
import pulumi_harness as harness  # isort: skip

import pulumi_azure_native.resources as resources  # noqa: E402

from lepton_infra.components import azure  # noqa: E402  (after the harness has set the mocks)
from lepton_infra.components.args import (  # noqa: E402
    GpuVmPoolArgs,
    JobQueueArgs,
    ObjectStoreArgs,
    TrainingClusterArgs,
)
from lepton_infra.components.common import ssh_needs_public_ip  # noqa: E402
from lepton_infra.errors import ConfigError  # noqa: E402

Recorder, build = harness.Recorder, harness.build
SUBSCRIPTION = harness.AZURE_SUBSCRIPTION

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 user@test"
CIDR = "203.0.113.0/24"

RG = "azure-native:resources:ResourceGroup"
VNET = "azure-native:network:VirtualNetwork"
SUBNET = "azure-native:network:Subnet"
NSG = "azure-native:network:NetworkSecurityGroup"
ASG = "azure-native:network:ApplicationSecurityGroup"
PIP = "azure-native:network:PublicIPAddress"
NIC = "azure-native:network:NetworkInterface"
VM = "azure-native:compute:VirtualMachine"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
ROLE = "azure-native:authorization:RoleAssignment"
ROLE_DEF = "azure-native:authorization:RoleDefinition"
VAULT = "azure-native:keyvault:Vault"
KV_SECRET = "azure-native:keyvault:Secret"
ACCOUNT = "azure-native:storage:StorageAccount"
BLOB_SERVICE = "azure-native:storage:BlobServiceProperties"
CONTAINER = "azure-native:storage:BlobContainer"
LIFECYCLE = "azure-native:storage:ManagementPolicy"
QUEUE = "azure-native:storage:Queue"


def role_id(guid: str) -> str:
    return f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def vms_in_node_order(rec: Recorder) -> list[Any]:
    return sorted(rec.of(VM), key=lambda r: int(r.name.rsplit("-", 1)[1]))


def by_node(rec: Recorder, typ: str) -> list[Any]:
    return sorted(rec.of(typ), key=lambda r: int(r.name.rsplit("-", 1)[1]))


def user_data(vm: Any) -> str:
    return base64.b64decode(vm.inputs["osProfile"]["customData"]).decode()


def pool_args(**overrides: Any) -> GpuVmPoolArgs:
    base: dict[str, Any] = {
        "cloud": "azure",
        "accelerator": "T4",
        "gpus_per_node": 1,
        "nodes": 2,
        "region": "eastus",
        "allowed_ssh_cidrs": [CIDR],
        "ssh_public_key": PUBKEY,
        "cluster": "demo",
        "env": "dev",
    }
    base.update(overrides)
    return GpuVmPoolArgs(**base)


def one_pool(**overrides: Any) -> tuple[dict[str, Any], Recorder]:
    """A one-node pool on its own; returns its nodes' resolved hosts and private IPs."""

    def make() -> dict[str, Any]:
        pool = azure.AzureGpuVmPool("p", pool_args(**{"nodes": 1, **overrides}))
        return {
            "hosts": pulumi.Output.all(*[n.host for n in pool.nodes]),
            "private_ips": pulumi.Output.all(*[n.private_ip for n in pool.nodes]),
        }

    return build(make)


def full_cluster(**pool_overrides: Any) -> Callable[[], dict[str, Any]]:
    """Store + queue + pool wired the way TrainingCluster wires them."""

    def make() -> dict[str, Any]:
        store = azure.AzureObjectStore(
            "demo-store",
            ObjectStoreArgs(cloud="azure", region="eastus", retention_days=30, cluster="demo", env="dev"),
        )
        queue = azure.AzureJobQueue(
            "demo-queue",
            JobQueueArgs(
                cloud="azure", visibility_timeout_s=120, max_receive_count=7, cluster="demo", env="dev"
            ),
        )
        pool = azure.AzureGpuVmPool("demo", pool_args(**pool_overrides), store=store, queue=queue)
        return {
            "store_url": store.url,
            "store_account": store.account_name,
            "queue_url": queue.url,
            "queue_account": queue.account_name,
            "dead_letter_url": queue.dead_letter_url,
            "hosts": pulumi.Output.all(*[n.host for n in pool.nodes]),
            "private_ips": pulumi.Output.all(*[n.private_ip for n in pool.nodes]),
            "host_keys": pulumi.Output.all(*[n.host_key for n in pool.nodes]),
            "identity_ids": pulumi.Output.all(*[i.id for i in pool.identities]),
            "principal_ids": pulumi.Output.all(*[i.principal_id for i in pool.identities]),
        }

    return make


@pytest.fixture(scope="module")
def cluster() -> tuple[dict[str, Any], Recorder]:
    return build(full_cluster())


# --------------------------------------------------------------------------- network


def test_the_subnet_lives_in_the_vnet_and_carries_the_nsg(cluster: tuple[dict[str, Any], Recorder]) -> None:
    _, rec = cluster
    (vnet,) = rec.of(VNET)
    (subnet,) = rec.of(SUBNET)
    (nsg,) = rec.of(NSG)
    assert vnet.inputs["addressSpace"] == {"addressPrefixes": [azure.VNET_CIDR]}
    assert subnet.inputs["virtualNetworkName"] == vnet.outputs["name"]
    assert subnet.inputs["resourceGroupName"] == vnet.inputs["resourceGroupName"]
    assert subnet.inputs["addressPrefix"] == azure.SUBNET_CIDR
    assert subnet.inputs["networkSecurityGroup"]["id"] == nsg.id


def test_nsg_allows_ssh_only_from_the_allowed_cidrs_all_traffic_between_nodes_and_denies_the_rest(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    (nsg,) = rec.of(NSG)
    (asg,) = rec.of(ASG)
    rules = {r["name"]: r for r in nsg.inputs["securityRules"]}
    assert sorted(rules) == ["lepton-deny-all-inbound", "lepton-pool", "lepton-ssh"]
    ssh, pool, deny = rules["lepton-ssh"], rules["lepton-pool"], rules["lepton-deny-all-inbound"]
    assert ssh["direction"] == "Inbound" and ssh["access"] == "Allow" and ssh["protocol"] == "Tcp"
    assert ssh["sourceAddressPrefixes"] == [CIDR]
    assert "sourceAddressPrefix" not in ssh
    assert ssh["destinationPortRange"] == "22"
    assert ssh["destinationApplicationSecurityGroups"] == [{"id": asg.id}]
    # Node-to-node traffic is matched by the pool's application security group, not the VNet range.
    assert pool["access"] == "Allow" and pool["protocol"] == "*"
    assert pool["sourceApplicationSecurityGroups"] == [{"id": asg.id}]
    assert pool["destinationApplicationSecurityGroups"] == [{"id": asg.id}]
    assert "sourceAddressPrefix" not in pool and "sourceAddressPrefixes" not in pool
    # The explicit deny sits below both allows and above Azure's defaults (AllowVnetInBound is 65000).
    assert deny["direction"] == "Inbound" and deny["access"] == "Deny"
    assert deny["sourceAddressPrefix"] == "*" and deny["destinationPortRange"] == "*"
    assert ssh["priority"] < pool["priority"] < deny["priority"] <= 4096
    assert not [r for r in rules.values() if r["direction"] == "Outbound"]


def test_nics_sit_in_the_subnet_behind_the_nsg_in_the_pool_group_with_a_standard_static_ip(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    (subnet,) = rec.of(SUBNET)
    (nsg,) = rec.of(NSG)
    (asg,) = rec.of(ASG)
    nics, pips = by_node(rec, NIC), by_node(rec, PIP)
    assert len(nics) == 2 and len(pips) == 2
    for nic, pip in zip(nics, pips, strict=True):
        assert nic.inputs["networkSecurityGroup"] == {"id": nsg.id}
        (ipc,) = nic.inputs["ipConfigurations"]
        assert ipc["subnet"]["id"] == subnet.id
        assert ipc["publicIPAddress"] == {"id": pip.id}
        assert ipc["applicationSecurityGroups"] == [{"id": asg.id}]
        assert pip.inputs["sku"] == {"name": "Standard", "tier": "Regional"}
        assert pip.inputs["publicIPAllocationMethod"] == "Static"
    # The inventory gets the public address as host and the NIC's address as private_ip.
    assert out["hosts"] == [p.outputs["ipAddress"] for p in pips]
    assert out["private_ips"] == [n.outputs["ipConfigurations"][0]["privateIPAddress"] for n in nics]


def test_ssh_only_from_internal_networks_gets_no_public_ip_and_the_private_address_as_host() -> None:
    out, rec = one_pool(allowed_ssh_cidrs=["10.8.0.0/16", "100.64.0.0/10"])
    assert [p.name for p in rec.of(PIP)] == ["p-nat-ip"], "only the NAT gateway's address, no node's"
    (nic,) = rec.of(NIC)
    assert "publicIPAddress" not in nic.inputs["ipConfigurations"][0]
    assert out["hosts"] == out["private_ips"] == [nic.outputs["ipConfigurations"][0]["privateIPAddress"]]


def test_a_pool_without_region_uses_the_default_location_and_leaves_the_callers_spec_alone() -> None:
    spec = pool_args(nodes=1, region=None)

    def make() -> dict[str, Any]:
        azure.AzureGpuVmPool("p", spec)
        return {}

    _, rec = build(make)
    (vm,) = rec.of(VM)
    assert vm.inputs["location"] == azure.DEFAULT_LOCATION
    assert spec.region is None, "the component must not write its defaults into the caller's spec"


def test_an_existing_subnet_and_resource_group_are_reused_and_the_nics_still_get_the_nsg() -> None:
    subnet_id = (
        "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/shared/subnets/gpu"
    )
    _, rec = one_pool(network={"subnet_id": subnet_id, "resource_group_name": "ml-team"})
    assert rec.of(VNET) == [] and rec.of(SUBNET) == [] and rec.of(RG) == []
    (nic,) = rec.of(NIC)
    (nsg,) = rec.of(NSG)
    assert nic.inputs["ipConfigurations"][0]["subnet"]["id"] == subnet_id
    assert nic.inputs["networkSecurityGroup"] == {"id": nsg.id}
    assert {
        r.inputs.get("resourceGroupName") for r in rec.resources if r.type.startswith("azure-native:")
    } - {None} == {"ml-team"}
    # The watchdog's role is defined for that existing group.
    (stop_role,) = rec.of(ROLE_DEF)
    assert stop_role.inputs["assignableScopes"] == [f"/subscriptions/{SUBSCRIPTION}/resourceGroups/ml-team"]


# --------------------------------------------------------------------------- virtual machines


def test_vms_boot_from_their_own_nic_with_the_managed_identity(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    identities = sorted(rec.of(IDENTITY), key=lambda r: r.name)
    assert [i.name for i in identities] == ["demo-0-identity", "demo-1-identity"]
    assert out["identity_ids"] == [i.id for i in identities]
    for vm, nic, identity in zip(vms_in_node_order(rec), by_node(rec, NIC), identities, strict=True):
        assert vm.inputs["networkProfile"] == {"networkInterfaces": [{"id": nic.id, "primary": True}]}
        # Its own identity and no other (so IMDS needs no client id on the node).
        assert vm.inputs["identity"] == {"type": "UserAssigned", "userAssignedIdentities": [identity.id]}
        assert vm.inputs["location"] == "eastus"


def test_password_login_is_off_and_only_the_users_key_gets_in(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    for vm in rec.of(VM):
        os_profile = vm.inputs["osProfile"]
        assert "adminPassword" not in os_profile
        assert os_profile["adminUsername"] == "lepton"
        linux = os_profile["linuxConfiguration"]
        assert linux["disablePasswordAuthentication"] is True
        assert linux["ssh"]["publicKeys"] == [
            {"keyData": PUBKEY, "path": "/home/lepton/.ssh/authorized_keys"}
        ]


def test_each_vm_boots_cloud_init_with_its_own_pinned_host_key_and_the_watchdog(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    for vm, host_key in zip(vms_in_node_order(rec), out["host_keys"], strict=True):
        text = user_data(vm)
        assert text.startswith("#cloud-config\n")
        assert PUBKEY in text
        assert host_key.strip() in text, "each node's cloud-init installs that node's own host key"
        assert "ssh_pwauth: false" in text
        assert "lepton-watchdog.timer" in text
    assert len(set(out["host_keys"])) == 2


def test_vm_size_comes_from_the_catalog_on_the_hpc_dsvm_with_a_premium_disk_deleted_with_the_vm(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    for vm in rec.of(VM):
        assert vm.inputs["hardwareProfile"] == {"vmSize": "Standard_NC4as_T4_v3"}
        storage_profile = vm.inputs["storageProfile"]
        assert storage_profile["imageReference"] == {
            "publisher": "microsoft-dsvm",
            "offer": "ubuntu-hpc",
            "sku": "2204",
            "version": "latest",
        }
        disk = storage_profile["osDisk"]
        assert disk["createOption"] == "FromImage"
        assert disk["deleteOption"] == "Delete"
        assert disk["diskSizeGB"] == 200
        assert disk["managedDisk"] == {"storageAccountType": "Premium_LRS"}


def test_on_demand_vms_are_regular_and_spot_vms_are_deleted_on_eviction(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    for vm in rec.of(VM):
        assert vm.inputs["priority"] == "Regular"
        assert "evictionPolicy" not in vm.inputs and "billingProfile" not in vm.inputs
    _, rec = one_pool(spot=True)
    (vm,) = rec.of(VM)
    assert vm.inputs["priority"] == "Spot"
    assert vm.inputs["evictionPolicy"] == "Delete"
    assert vm.inputs["billingProfile"] == {"maxPrice": -1}


def test_encryption_at_host_is_off_by_default_and_on_when_asked(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    assert all("securityProfile" not in vm.inputs for vm in rec.of(VM))
    _, rec = build(lambda: azure.AzureGpuVmPool("eah", pool_args(nodes=1), encryption_at_host=True))
    assert rec.of(VM)[0].inputs["securityProfile"] == {"encryptionAtHost": True}


def test_tags_carry_cluster_and_env_everywhere_and_the_watchdog_settings_on_vms(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    taggable = (RG, VNET, NSG, ASG, PIP, NIC, VM, IDENTITY, ACCOUNT)
    tagged = [r for r in rec.resources if r.type in taggable]
    assert len(tagged) == 3 + 1 + 1 + 1 + 2 + 2 + 2 + 2 + 2  # one identity per node
    for r in tagged:
        assert r.inputs["tags"]["lepton:cluster"] == "demo", r.name
        assert r.inputs["tags"]["lepton:env"] == "dev", r.name
    for vm in rec.of(VM):
        assert vm.inputs["tags"]["lepton:idle-shutdown-minutes"] == "60"
        assert vm.inputs["tags"]["lepton:max-lifetime-hours"] == "24"


def test_child_names_derive_from_the_component_name(cluster: tuple[dict[str, Any], Recorder]) -> None:
    # So two pools (or stores) in one stack never clash.
    _, rec = cluster
    for r in rec.resources:
        assert r.name.startswith(("demo", "demo-store", "demo-queue")), r.name


# --------------------------------------------------------------------------- identity


def test_the_identity_is_granted_exactly_the_container_and_the_queues(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    (container,) = rec.of(CONTAINER)
    (stop_role,) = rec.of(ROLE_DEF)
    queues = {q.inputs["queueName"]: q for q in rec.of(QUEUE)}
    vms = vms_in_node_order(rec)
    secrets = sorted(rec.of(KV_SECRET), key=lambda r: r.inputs["secretName"])
    for node, principal in enumerate(out["principal_ids"]):
        grants = sorted(
            (g.inputs["scope"], g.inputs["roleDefinitionId"])
            for g in rec.of(ROLE)
            if g.inputs["principalId"] == principal
        )
        assert grants == sorted(
            [
                (container.id, role_id(azure.ROLE_BLOB_DATA_CONTRIBUTOR)),
                (queues["demo-queue"].id, role_id(azure.ROLE_QUEUE_DATA_CONTRIBUTOR)),
                (queues["demo-queue-poison"].id, role_id(azure.ROLE_QUEUE_DATA_CONTRIBUTOR)),
                (vms[node].id, stop_role.id),  # its own VM, no other
                (secrets[node].id, role_id(azure.ROLE_KEY_VAULT_SECRETS_USER)),  # its own host key
            ]
        )
    assert len(rec.of(ROLE)) == 2 * 5
    for g in rec.of(ROLE):
        assert g.inputs["principalType"] == "ServicePrincipal"
    # Never an account, resource group or the subscription: only the container and the queues.
    broad = {r.id for r in rec.of(ACCOUNT) + rec.of(RG)} | {f"/subscriptions/{SUBSCRIPTION}"}
    assert not {g.inputs["scope"] for g in rec.of(ROLE)} & broad
    # The role definitions are built from the subscription the provider reports.
    assert ("azure-native:authorization:getClientConfig", {}) in rec.calls


def test_an_existing_identity_is_used_and_granted_the_same_resources() -> None:
    ident = "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/trainer"

    def make() -> dict[str, Any]:
        store = azure.AzureObjectStore("s", ObjectStoreArgs(cloud="azure"))
        identity = {"user_assigned_identity_id": ident, "principal_id": "1111"}
        azure.AzureGpuVmPool("own", pool_args(nodes=1, identity=identity), store=store)
        return {}

    _, rec = build(make)
    assert rec.of(IDENTITY) == []
    assert rec.of(VM)[0].inputs["identity"]["userAssignedIdentities"] == [ident]
    assert sorted((g.inputs["principalId"], g.inputs["scope"]) for g in rec.of(ROLE)) == sorted(
        [("1111", rec.of(CONTAINER)[0].id), ("1111", rec.of(VM)[0].id), ("1111", rec.of(KV_SECRET)[0].id)]
    )


def test_an_existing_identity_without_principal_id_is_looked_up() -> None:
    ident = "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/trainer"
    _, rec = one_pool(identity={"user_assigned_identity_id": ident})
    assert (
        "azure-native:managedidentity:getUserAssignedIdentity",
        {"resourceGroupName": "ids", "resourceName": "trainer"},
    ) in rec.calls


# --------------------------------------------------------------------------- storage


def test_every_storage_account_is_https_only_tls12_private_keyless_and_double_encrypted(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    accounts = rec.of(ACCOUNT)
    assert len(accounts) == 2  # one for the store, one for the queue: same settings from one helper
    for account in accounts:
        a = account.inputs
        assert a["kind"] == "StorageV2"
        assert a["sku"] == {"name": "Standard_LRS"}
        assert a["enableHttpsTrafficOnly"] is True
        assert a["minimumTlsVersion"] == "TLS1_2"
        assert a["allowBlobPublicAccess"] is False
        assert a["allowSharedKeyAccess"] is False
        assert a["defaultToOAuthAuthentication"] is True
        assert a["encryption"]["keySource"] == "Microsoft.Storage"
        assert a["encryption"]["requireInfrastructureEncryption"] is True
        assert a["encryption"]["services"]["blob"]["enabled"] is True
        assert a["encryption"]["services"]["queue"]["enabled"] is True


def test_storage_account_names_are_valid_stable_and_distinct(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    names = [a.inputs["accountName"] for a in rec.of(ACCOUNT)]
    assert sorted(names) == sorted([out["store_account"], out["queue_account"]])
    assert len(set(names)) == 2
    for n in names:
        assert re.fullmatch(r"[a-z0-9]{3,24}", n), n
    assert azure.storage_account_name("demo-store", SUBSCRIPTION) == out["store_account"]
    assert azure.storage_account_name("demo-store", "another-subscription") != out["store_account"]
    long = azure.storage_account_name("A_Very-Long.Cluster-Name-For-Training-Data", SUBSCRIPTION)
    assert re.fullmatch(r"[a-z0-9]{3,24}", long)


def test_the_store_is_a_private_versioned_container_that_expires_after_retention(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    account = next(a for a in rec.of(ACCOUNT) if a.name == "demo-store-account")
    (container,) = rec.of(CONTAINER)
    (service,) = rec.of(BLOB_SERVICE)
    (policy,) = rec.of(LIFECYCLE)
    assert container.inputs["publicAccess"] == "None"
    assert container.inputs["accountName"] == account.inputs["accountName"]
    assert service.inputs["accountName"] == account.inputs["accountName"]
    assert service.inputs["isVersioningEnabled"] is True
    assert service.inputs["deleteRetentionPolicy"] == {"enabled": True, "days": 7}
    assert policy.inputs["managementPolicyName"] == "default"
    (rule,) = policy.inputs["policy"]["rules"]
    assert rule["enabled"] is True
    assert rule["definition"]["filters"]["prefixMatch"] == [f"{container.inputs['containerName']}/"]
    actions = rule["definition"]["actions"]
    assert actions["baseBlob"]["delete"] == {"daysAfterModificationGreaterThan": 30}
    assert actions["version"]["delete"] == {"daysAfterCreationGreaterThan": 30}
    assert out["store_url"] == f"az://{account.inputs['accountName']}/{container.inputs['containerName']}"


def test_a_store_without_retention_has_no_lifecycle_and_versioning_can_be_off() -> None:
    _, rec = build(lambda: azure.AzureObjectStore("plain", ObjectStoreArgs(cloud="azure", versioning=False)))
    assert rec.of(LIFECYCLE) == []
    assert rec.of(BLOB_SERVICE)[0].inputs["isVersioningEnabled"] is False


def test_store_extra_loosens_the_account_and_can_name_an_existing_resource_group() -> None:
    extra = {
        "resource_group_name": "data-rg",
        "allow_shared_key_access": True,
        "sku": {"name": "Standard_ZRS"},
    }
    _, rec = build(lambda: azure.AzureObjectStore("x", ObjectStoreArgs(cloud="azure", extra=extra)))
    assert rec.of(RG) == []
    (account,) = rec.of(ACCOUNT)
    assert account.inputs["resourceGroupName"] == "data-rg"
    assert account.inputs["allowSharedKeyAccess"] is True
    assert account.inputs["sku"] == {"name": "Standard_ZRS"}
    assert account.inputs["minimumTlsVersion"] == "TLS1_2"  # the rest stays


def test_the_queue_has_a_poison_queue_and_carries_the_client_settings() -> None:
    out, rec = build(
        lambda: (lambda q: {"url": q.url, "dead": q.dead_letter_url, "account": q.account_name})(
            azure.AzureJobQueue(
                "jobs", JobQueueArgs(cloud="azure", visibility_timeout_s=120, max_receive_count=7)
            )
        )
    )
    queues = {q.inputs["queueName"]: q for q in rec.of(QUEUE)}
    assert sorted(queues) == ["jobs", "jobs-poison"]
    (account,) = rec.of(ACCOUNT)
    for q in queues.values():
        assert q.inputs["accountName"] == account.inputs["accountName"]
    assert queues["jobs"].inputs["metadata"] == {
        "lepton_cluster": "jobs",
        "lepton_visibility_timeout_s": "120",
        "lepton_max_receive_count": "7",
        "lepton_poison_queue": "jobs-poison",
    }
    assert out["url"] == f"https://{out['account']}.queue.core.windows.net/jobs"
    assert out["dead"] == f"https://{out['account']}.queue.core.windows.net/jobs-poison"


# --------------------------------------------------------------------------- extra and images


def test_extra_is_deep_merged_into_every_vm() -> None:
    extra = {
        "security_profile": {"encryption_at_host": True},
        "os_profile": {"linux_configuration": {"patch_settings": {"patch_mode": "AutomaticByPlatform"}}},
        "storage_profile": {"os_disk": {"caching": "ReadOnly"}},
        "license_type": "RHEL_BYOS",
    }
    _, rec = one_pool(extra=extra)
    (vm,) = rec.of(VM)
    assert vm.inputs["securityProfile"] == {"encryptionAtHost": True}
    assert vm.inputs["licenseType"] == "RHEL_BYOS"
    linux = vm.inputs["osProfile"]["linuxConfiguration"]
    assert linux["patchSettings"] == {"patchMode": "AutomaticByPlatform"}
    assert linux["disablePasswordAuthentication"] is True, "our settings stay where the user said nothing"
    assert vm.inputs["storageProfile"]["osDisk"]["caching"] == "ReadOnly"
    assert vm.inputs["storageProfile"]["osDisk"]["deleteOption"] == "Delete"


@pytest.mark.parametrize(
    "extra, named",
    [
        (
            {"os_profile": {"linux_configuration": {"disable_pasword_authentication": False}}},
            "disable_pasword",
        ),
        ({"security_profil": {}}, "security_profil"),
        ({"network_profile": {"network_interfaces": [{"idd": "x"}]}}, "idd"),
    ],
)
def test_a_misspelled_extra_key_is_a_config_error_naming_it_before_any_resource(
    extra: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        one_pool(extra=extra)
    assert harness.MOCKS.resources == []


def test_a_misspelled_store_or_queue_extra_key_fails_before_any_resource() -> None:
    with pytest.raises(ConfigError, match="allow_shared_key_acess"):
        build(
            lambda: azure.AzureObjectStore(
                "s", ObjectStoreArgs(cloud="azure", extra={"allow_shared_key_acess": True})
            )
        )
    assert harness.MOCKS.resources == []
    with pytest.raises(ConfigError, match="encryption"):
        build(
            lambda: azure.AzureJobQueue(
                "q", JobQueueArgs(cloud="azure", extra={"encryption": {"key_sorce": "x"}})
            )
        )
    assert harness.MOCKS.resources == []


def test_image_overrides_take_a_urn_or_an_image_resource_id() -> None:
    _, rec = one_pool(image="Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.202401010")
    assert rec.of(VM)[0].inputs["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-jammy",
        "sku": "22_04-lts-gen2",
        "version": "22.04.202401010",
    }
    gallery = (
        "/subscriptions/s/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0"
    )
    _, rec = one_pool(image=gallery)
    assert rec.of(VM)[0].inputs["storageProfile"]["imageReference"] == {"id": gallery}


def test_zone_pins_the_vm_and_its_public_ip() -> None:
    _, rec = one_pool(zone="2")
    assert rec.of(VM)[0].inputs["zones"] == ["2"]
    assert rec.of(PIP)[0].inputs["zones"] == ["2"]


# --------------------------------------------------------------------------- Azure-specific config errors


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image": "microsoft-dsvm/ubuntu-hpc/2204"}, r"image is .*publisher:offer:sku:version"),
        ({"image": "a:b::latest"}, "publisher:offer:sku:version"),
        ({"zone": "eastus-1"}, r"zone is 'eastus-1'; allowed on azure: '1', '2' or '3'"),
        ({"region": "East US"}, r"region 'East US' is not an Azure location name"),
        ({"user": "admin"}, "Azure reserves"),
        ({"network": {"vpc_id": "vpc-1"}}, r"network on azure .*unknown: vpc_id"),
        ({"network": {"subnet_id": "subnet-123"}}, r"network\['subnet_id'\] is 'subnet-123'"),
        ({"identity": {"service_account_email": "x@y"}}, "user_assigned_identity_id"),
        ({"identity": {"user_assigned_identity_id": "trainer"}}, r"identity\['user_assigned_identity_id'\]"),
        ({"region": "brazilsouth"}, "brazilsouth"),  # the catalog offers no T4 there
    ],
)
def test_azure_specific_bad_input_is_a_config_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        one_pool(**overrides)


def test_a_store_of_another_cloud_is_refused() -> None:
    class NotAzure:
        url = None

    with pytest.raises(ConfigError, match="an Azure pool can only be granted an Azure store"):
        build(lambda: azure.AzureGpuVmPool("x", pool_args(nodes=1), store=NotAzure()))


def test_helpers_give_valid_azure_names_and_public_ip_decisions() -> None:
    assert azure.azure_slug("Demo_Cluster--Store") == "demo-cluster-store"
    assert azure.azure_slug("x") == "lepton-x"
    assert len(azure.azure_slug("a" * 100, 56)) == 56
    assert ssh_needs_public_ip(["203.0.113.0/24"]) is True  # documentation range = "an office"
    assert ssh_needs_public_ip(["10.0.0.0/8", "192.168.1.0/24"]) is False
    assert ssh_needs_public_ip(["10.0.0.0/8", "198.51.100.7/32"]) is True
    assert all(ipaddress.ip_network(c) for c in (azure.VNET_CIDR, azure.SUBNET_CIDR))


# --------------------------------------------------------------------------- neutral layer and policy


def test_the_neutral_training_cluster_on_azure_yields_a_valid_inventory() -> None:
    from lepton_infra.components import TrainingCluster
    from lepton_infra.inventory import Inventory

    def make() -> dict[str, Any]:
        args = TrainingClusterArgs(
            cloud="azure",
            accelerator="T4",
            nodes=2,
            region="eastus",
            spot=True,
            allowed_ssh_cidrs=[CIDR],
            cluster="demo",
            env="dev",
        )
        tc = TrainingCluster("demo", args)
        return {"inventory": tc.inventory, "store": tc.store_url, "queue": tc.queue_url}

    out, rec = build(make)
    inventory = Inventory.from_json(out["inventory"])
    assert inventory.cloud == "azure"
    assert len(inventory.nodes) == 2
    assert out["store"].startswith("az://") and out["queue"].startswith("https://")
    (vm0, vm1) = vms_in_node_order(rec)
    # The generated login key is what the VMs accept.
    assert vm0.inputs["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"].startswith(
        "ssh-ed25519"
    )
    assert {"lepton:compute:GpuVmPool", "lepton:storage:ObjectStore", "lepton:queue:JobQueue"} <= rec.types()
    # Per node: container, queue, poison queue, its host key secret, and the watchdog's right to
    # delete its own Spot VM.
    assert len(rec.of(ROLE)) == 2 * 5
    (stop_role,) = rec.of(ROLE_DEF)
    assert stop_role.inputs["permissions"] == [{"actions": [azure.ACTION_DEALLOCATE, azure.ACTION_DELETE]}], (
        "Spot VMs are deleted when idle"
    )


def test_the_azure_cluster_passes_the_projects_policy_pack(cluster: tuple[dict[str, Any], Recorder]) -> None:
    policy_harness = pytest.importorskip("policy_harness")
    _, rec = cluster
    records = [policy_harness.Recorded(r.type, r.name, r.inputs, None, r.id) for r in rec.resources]
    findings = policy_harness.analyze(records)
    assert policy_harness.mandatory(findings) == []
    assert findings == []


def test_ipv6_ssh_sources_are_dropped_and_alone_refused_because_nodes_are_ipv4_only() -> None:
    _, rec = one_pool(allowed_ssh_cidrs=[CIDR, "2001:db8::/32"])
    rules = {r["name"]: r for r in rec.of(NSG)[0].inputs["securityRules"]}
    assert rules["lepton-ssh"]["sourceAddressPrefixes"] == [CIDR]
    with pytest.raises(ConfigError, match="only IPv6"):
        one_pool(allowed_ssh_cidrs=["2001:db8::/32"])


def test_store_queue_and_pool_can_share_one_resource_group() -> None:
    def make() -> dict[str, Any]:
        group = resources.ResourceGroup("shared", resources.ResourceGroupArgs(location="eastus"))
        in_group = {"resource_group_name": group.name}
        store = azure.AzureObjectStore("s", ObjectStoreArgs(cloud="azure", extra=in_group))
        queue = azure.AzureJobQueue("q", JobQueueArgs(cloud="azure", extra=in_group))
        azure.AzureGpuVmPool("p", pool_args(nodes=1, network=in_group), store=store, queue=queue)
        return {"group": group.name}

    out, rec = build(make)
    assert [g.name for g in rec.of(RG)] == ["shared"]
    groups = {r.inputs.get("resourceGroupName") for r in rec.resources if r.type.startswith("azure-native:")}
    assert groups - {None} == {out["group"]}


# --------------------------------------------------------------------------- egress and placement

NAT = "azure-native:network:NatGateway"
AVSET = "azure-native:compute:AvailabilitySet"
PPG = "azure-native:compute:ProximityPlacementGroup"


def test_the_subnet_has_no_default_outbound_access_and_a_public_pool_no_nat(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    (subnet,) = rec.of(SUBNET)
    assert subnet.inputs["defaultOutboundAccess"] is False, "Azure is retiring implicit outbound access"
    assert "natGateway" not in subnet.inputs
    assert rec.of(NAT) == []


def test_a_private_pool_goes_out_through_a_nat_gateway_on_its_subnet() -> None:
    _, rec = one_pool(allowed_ssh_cidrs=["10.8.0.0/16"])
    (nat,) = rec.of(NAT)
    (subnet,) = rec.of(SUBNET)
    (nat_ip,) = rec.of(PIP)  # the NAT's address is the only public IP: the node has none
    assert subnet.inputs["natGateway"] == {"id": nat.id}
    assert subnet.inputs["defaultOutboundAccess"] is False
    assert nat.inputs["sku"] == {"name": "Standard"}
    assert nat.inputs["publicIpAddresses"] == [{"id": nat_ip.id}]
    assert nat_ip.inputs["sku"] == {"name": "Standard", "tier": "Regional"}
    assert "publicIPAddress" not in rec.of(NIC)[0].inputs["ipConfigurations"][0]


def test_an_existing_subnet_keeps_its_own_egress() -> None:
    subnet_id = (
        "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/shared/subnets/gpu"
    )
    _, rec = one_pool(allowed_ssh_cidrs=["10.8.0.0/16"], network={"subnet_id": subnet_id})
    assert rec.of(NAT) == [] and rec.of(SUBNET) == []


def test_every_nic_has_accelerated_networking(cluster: tuple[dict[str, Any], Recorder]) -> None:
    _, rec = cluster
    assert [n.inputs["enableAcceleratedNetworking"] for n in rec.of(NIC)] == [True, True]


@pytest.mark.parametrize(("accelerator", "gpus"), [("A100-40GB", 8), ("A100-80GB", 8), ("H100", 8)])
def test_multi_node_nd_pools_share_one_availability_set_for_infiniband(accelerator: str, gpus: int) -> None:
    _, rec = build(
        lambda: azure.AzureGpuVmPool("nd", pool_args(accelerator=accelerator, gpus_per_node=gpus, nodes=2))
    )
    (avset,) = rec.of(AVSET)
    (ppg,) = rec.of(PPG)
    assert avset.inputs["proximityPlacementGroup"] == {"id": ppg.id}
    assert avset.inputs["platformFaultDomainCount"] == 1
    assert avset.inputs["sku"] == {"name": "Aligned"}
    vms = rec.of(VM)
    assert len(vms) == 2
    for vm in vms:
        assert vm.inputs["availabilitySet"] == {"id": avset.id}
        assert vm.inputs["proximityPlacementGroup"] == {"id": ppg.id}
        assert vm.inputs["hardwareProfile"]["vmSize"].startswith("Standard_ND96")
    assert all(n.inputs["enableAcceleratedNetworking"] is True for n in rec.of(NIC))


@pytest.mark.parametrize(
    ("accelerator", "gpus", "nodes"), [("A100-40GB", 8, 1), ("T4", 1, 3), ("A100-80GB", 4, 2)]
)
def test_single_nodes_and_non_infiniband_sizes_get_no_availability_set(
    accelerator: str, gpus: int, nodes: int
) -> None:
    _, rec = build(
        lambda: azure.AzureGpuVmPool(
            "nc", pool_args(accelerator=accelerator, gpus_per_node=gpus, nodes=nodes)
        )
    )
    assert rec.of(AVSET) == [] and rec.of(PPG) == []
    assert all("availabilitySet" not in vm.inputs for vm in rec.of(VM))


def test_a_zone_with_a_multi_node_nd_pool_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="availability set cannot be zonal"):
        build(
            lambda: azure.AzureGpuVmPool(
                "nd", pool_args(accelerator="H100", gpus_per_node=8, nodes=2, zone="1")
            )
        )


def test_the_plan_decides_location_catalog_row_and_placement_without_registering_or_calling_azure() -> None:
    planned: dict[str, Any] = {}

    def make() -> dict[str, Any]:
        planned["plan"] = azure.AzureGpuVmPool.plan(
            "nd", pool_args(accelerator="H100", gpus_per_node=8, nodes=2)
        )
        return {}

    _, rec = build(make)
    plan = planned["plan"]
    assert rec.resources == [] and rec.calls == [], "a plan registers nothing and invokes nothing"
    assert plan.region == plan.cloud.location == "eastus"
    assert plan.entry.instance_type.startswith("Standard_ND96")
    assert plan.cloud.infiniband and plan.cloud.zones is None
    assert plan.cloud.image == azure.DEFAULT_IMAGE and plan.cloud.image_moves, "the default image is `latest`"
    assert plan.boot is not None and azure.INSTALL_TORCH_PATH in plan.boot.runcmd


def test_a_cluster_plans_its_azure_pool_once_and_the_pool_uses_that_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lepton_infra.components import TrainingCluster
    from lepton_infra.components.azure import pool as pool_module

    planned: list[str] = []
    real = pool_module.plan_azure_pool

    def counting(name: str, args: GpuVmPoolArgs) -> Any:
        planned.append(name)
        return real(name, args)

    monkeypatch.setattr(pool_module, "plan_azure_pool", counting)
    args = TrainingClusterArgs(
        cloud="azure",
        accelerator="T4",
        nodes=1,
        region="eastus",
        allowed_ssh_cidrs=[CIDR],
        ssh_public_key=PUBKEY,
    )
    _, rec = build(lambda: TrainingCluster("demo", args))
    assert planned == ["demo-pool"]
    assert len(rec.of(VM)) == 1


def test_preview_registers_the_same_graph_as_an_update() -> None:
    _, up = build(full_cluster())
    _, preview = build(full_cluster(), preview=True)
    assert sorted((r.type, r.name) for r in preview.resources) == sorted(
        (r.type, r.name) for r in up.resources
    )


# --------------------------------------------------------------------------- the watchdog stops the bill


def test_the_watchdog_role_may_only_deallocate_and_is_assigned_on_each_vm_alone(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    (stop_role,) = rec.of(ROLE_DEF)
    (pool_rg,) = [r for r in rec.of(RG) if r.name == "demo-rg"]
    assert stop_role.inputs["roleType"] == "CustomRole"
    assert stop_role.inputs["permissions"] == [
        {"actions": ["Microsoft.Compute/virtualMachines/deallocate/action"]}
    ]
    assert stop_role.inputs["assignableScopes"] == [pool_rg.id] == [stop_role.inputs["scope"]]
    assert stop_role.inputs["roleName"].startswith("lepton vm stop ")
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", stop_role.inputs["roleDefinitionId"]
    )
    stops = [g for g in rec.of(ROLE) if g.inputs["roleDefinitionId"] == stop_role.id]
    assert sorted(g.inputs["scope"] for g in stops) == sorted(vm.id for vm in rec.of(VM))
    identities = {i.outputs["principalId"] for i in rec.of(IDENTITY)}
    assert {g.inputs["principalId"] for g in stops} == identities and len(stops) == 2


def test_watchdog_role_names_differ_between_stacks() -> None:
    _, a = one_pool()
    _, b = build(lambda: azure.AzureGpuVmPool("p", pool_args(nodes=1)), stack="other")
    assert a.of(ROLE_DEF)[0].inputs["roleName"] != b.of(ROLE_DEF)[0].inputs["roleName"]
    assert a.of(ROLE_DEF)[0].inputs["roleDefinitionId"] != b.of(ROLE_DEF)[0].inputs["roleDefinitionId"]


# --------------------------------------------------------------------------- host keys via Key Vault


def test_each_nodes_host_key_is_a_key_vault_secret_only_that_nodes_identity_can_read(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    out, rec = cluster
    (vault,) = rec.of(VAULT)
    props = vault.inputs["properties"]
    assert props["enableRbacAuthorization"] is True and "accessPolicies" not in props
    assert props["tenantId"] == harness.AZURE_TENANT
    assert props["sku"] == {"family": "A", "name": "standard"}
    assert re.fullmatch(r"[a-z][a-z0-9]{2,23}", vault.inputs["vaultName"]), "3-24 alphanumerics"
    secrets = sorted(rec.of(KV_SECRET), key=lambda r: r.inputs["secretName"])
    assert [s.inputs["secretName"] for s in secrets] == ["node-0-host-key", "node-1-host-key"]
    readers = [
        g for g in rec.of(ROLE) if g.inputs["roleDefinitionId"] == role_id(azure.ROLE_KEY_VAULT_SECRETS_USER)
    ]
    for i, secret in enumerate(secrets):
        assert secret.inputs["vaultName"] == vault.outputs["name"]
        assert (
            secret.inputs["properties"]["value"]
            == rec.named(f"demo-hostkey-{i}").outputs["privateKeyOpenssh"]
        )
        (reader,) = [g for g in readers if g.inputs["scope"] == secret.id]  # the secret, not the vault
        assert reader.inputs["principalId"] == out["principal_ids"][i]
    assert vault.id not in {g.inputs["scope"] for g in rec.of(ROLE)}


def test_custom_data_holds_no_key_and_first_boot_fetches_the_nodes_own_secret(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    _, rec = cluster
    (vault,) = rec.of(VAULT)
    uri = vault.outputs["properties"]["vaultUri"]
    for i, vm in enumerate(vms_in_node_order(rec)):
        text = user_data(vm)
        assert "PRIVATE KEY" not in text and "PRIVATE KEY" not in str(vm.inputs)
        assert f"python3 - azure {uri} node-{i}-host-key <<'LEPTON_PY'" in text
        assert f"demo-{i}-host-key-reader" in vm.depends_on, "readable before the VM boots"


def test_the_watchdog_on_azure_runs_the_stop_command_instead_of_a_guest_poweroff(
    cluster: tuple[dict[str, Any], Recorder],
) -> None:
    import yaml

    _, rec = cluster
    for vm in rec.of(VM):
        doc = yaml.safe_load(user_data(vm))
        files = {f["path"]: f for f in doc["write_files"]}
        dropin = files["/etc/systemd/system/lepton-watchdog.service.d/50-azure-stop.conf"]["content"]
        assert (
            dropin
            == '[Service]\nEnvironment="LEPTON_POWEROFF=/usr/local/sbin/lepton-azure-stop deallocate"\n'
        )
        stop = files[azure.STOP_PATH]
        assert stop["permissions"] == "0755" and stop["content"].startswith("#!/usr/bin/env python3\n")
        assert "/deallocate?api-version=" in stop["content"]


def test_spot_nodes_delete_themselves_when_idle() -> None:
    _, rec = one_pool(spot=True)
    assert 'LEPTON_POWEROFF=/usr/local/sbin/lepton-azure-stop delete"' in user_data(rec.of(VM)[0])


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs the cloud-init package")
def test_azure_custom_data_passes_cloud_inits_own_schema_and_fits_azures_limit(
    cluster: tuple[dict[str, Any], Recorder], tmp_path: Path
) -> None:
    _, rec = cluster
    vm = rec.of(VM)[0]
    assert len(vm.inputs["osProfile"]["customData"]) <= 87380, (
        "Azure: custom data at most 64 KB before base64"
    )
    doc = tmp_path / "user-data.yaml"
    doc.write_text(user_data(vm))
    out = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(doc)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_stop_grants_wait_for_their_role_and_keep_one_name_across_runs() -> None:
    """A new custom role definition is not visible to role assignments at once: the VM (minutes of
    provisioning) comes after the definition and the grant after the VM, and a re-run after a
    RoleDefinitionDoesNotExist failure PUTs the same assignment (stable name) instead of a second."""
    _, first = build(lambda: azure.AzureGpuVmPool("p", pool_args(nodes=2)))
    _, again = build(lambda: azure.AzureGpuVmPool("p", pool_args(nodes=2)))
    (stop_role,) = first.of(ROLE_DEF)
    grants = {g.name: g for g in first.of(ROLE) if g.inputs["roleDefinitionId"] == stop_role.id}
    names = {g.name: g.inputs["roleAssignmentName"] for g in again.of(ROLE) if g.name in grants}
    assert {n: g.inputs["roleAssignmentName"] for n, g in grants.items()} == names
    assert len(set(names.values())) == 2 and all(uuid.UUID(v).version == 5 for v in names.values())
    for i in range(2):
        (vm,) = [v for v in first.of(VM) if v.name == f"p-{i}"]
        assert stop_role.name in vm.depends_on
        assert {stop_role.name, f"p-{i}"} <= set(grants[f"p-{i}-stop"].depends_on)
        assert grants[f"p-{i}-stop"].inputs["principalType"] == "ServicePrincipal"
