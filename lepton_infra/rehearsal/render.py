"""A cluster's first-boot material exactly as its component produces it: a `TrainingCluster` built
under Pulumi's mocks (no cloud, no CLI), with real ed25519 keys where the program generates keys, so
the rehearsal can boot each node's very user data and serve each node's very secret.

Runs in a process of its own (`python -m lepton_infra.rehearsal.render CLOUD NODES [PYTHON]`,
JSON on stdout): the mocks are process-wide and must be set before any component module is
imported, which a caller that has already imported components (a test session) cannot undo."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from typing import Any

import pulumi

PROJECT = "lepton-rehearsal"  # GCP project
ACCOUNT = "123456789012"  # AWS account (moto's default, so moto finds the secrets by ARN)
SUBSCRIPTION = "00000000-0000-0000-0000-00000000reh1"
TENANT = "00000000-0000-0000-0000-00000000ten1"
REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}
_SECRET_SIG = "4dabf18193072939515e22adb298388d"  # pulumi's wire marker for a secret value


def _plain(value: Any) -> Any:
    """Inputs as plain JSON values, secrets unwrapped (the node gets the value, not the marker)."""
    if isinstance(value, dict):
        if _SECRET_SIG in value and "value" in value:
            return _plain(value["value"])
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _ed25519(seed: str) -> tuple[str, str]:
    """(private key in OpenSSH format, public key line): a real pair, fixed per seed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"rehearsal-{seed}".encode()).digest())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode() + "\n"


class Mocks(pulumi.runtime.Mocks):
    """Plausible outputs for every resource a TrainingCluster registers, recorded with its inputs."""

    def __init__(self) -> None:
        self.resources: list[tuple[str, str, dict[str, Any], dict[str, Any], str]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        typ, name = args.typ, args.name
        inputs = _plain(json.loads(json.dumps(dict(args.inputs), default=str)))
        state: dict[str, Any] = dict(inputs)
        idx = len(self.resources)
        rid = f"{name}-id"
        state.setdefault("name", f"{name}-{idx:04x}")
        if typ.startswith("aws:"):
            state.setdefault("arn", f"arn:aws:{typ.split(':')[1].split('/')[0]}:us-east-1:{ACCOUNT}:{name}")
        if typ == "aws:s3/bucket:Bucket":
            state["bucket"] = rid = f"{name}-{idx:04x}"
            state["arn"] = f"arn:aws:s3:::{rid}"
        if typ == "aws:sqs/queue:Queue":
            state["url"] = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{state['name']}"
        if typ == "aws:secretsmanager/secret:Secret":
            state["arn"] = rid = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{state['name']}-AbCdEf"
        if typ == "aws:ec2/instance:Instance":
            state["privateIp"] = f"10.0.1.{10 + idx}"
            state["publicIp"] = f"203.0.113.{idx % 250 + 1}" if inputs.get("associatePublicIpAddress") else ""
        if typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{inputs['accountId']}@{PROJECT}.iam.gserviceaccount.com"
        if typ.startswith("gcp:compute/"):
            state["selfLink"] = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/{name}"
        if typ == "gcp:compute/instance:Instance":
            state["networkInterfaces"] = [
                dict(
                    nic,
                    networkIp=f"10.42.0.{idx}",
                    accessConfigs=[dict(c, natIp="203.0.113.9") for c in nic.get("accessConfigs", [])],
                )
                for nic in inputs.get("networkInterfaces", [])
            ]
        if typ.startswith("azure-native:"):
            rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/{typ.split(':')[1]}/{name}"
            state["id"] = rid
            if typ == "azure-native:keyvault:Vault":
                state["name"] = inputs["vaultName"]
                state["properties"] = {
                    **state.get("properties", {}),
                    "vaultUri": f"https://{inputs['vaultName']}.vault.azure.net/",
                }
            if typ == "azure-native:network:NetworkInterface":
                state["ipConfigurations"] = [
                    dict(c, privateIPAddress=f"10.43.0.{idx % 250 + 4}")
                    for c in inputs.get("ipConfigurations", [])
                ]
            if typ == "azure-native:network:PublicIPAddress":
                state["ipAddress"] = f"198.51.100.{idx % 250 + 1}"
            if typ == "azure-native:managedidentity:UserAssignedIdentity":
                state["principalId"], state["clientId"] = f"principal-{idx}", f"client-{idx}"
            identity = state.get("identity")
            if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
                state["identity"] = {
                    **identity,
                    "userAssignedIdentities": {i: {} for i in identity["userAssignedIdentities"]},
                }
        if typ == "random:index/randomString:RandomString":
            state["result"] = hashlib.sha256(name.encode()).hexdigest()[: int(inputs.get("length", 8))]
        if typ == "tls:index/privateKey:PrivateKey":
            private, public = _ed25519(name)
            state.update(publicKeyOpenssh=public, privateKeyOpenssh=private, privateKeyPem=private)
        self.resources.append((typ, name, inputs, state, rid))
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        token, inputs = args.token, _plain(dict(args.args))
        answers: dict[str, dict[str, Any]] = {
            "gcp:organizations/getProject:getProject": {"number": "123456789012", "projectId": PROJECT},
            "aws:ssm/getParameter:getParameter": {
                "name": inputs.get("name"),
                "value": "ami-0123456789abcdef0",
                "type": "String",
                "id": inputs.get("name"),
            },
            "aws:index/getAvailabilityZones:getAvailabilityZones": {
                "names": ["us-east-1a", "us-east-1b"],
                "zoneIds": ["use1-az1", "use1-az2"],
            },
            "aws:index/getCallerIdentity:getCallerIdentity": {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:root",
                "userId": "x",
            },
            "aws:index/getRegion:getRegion": {"name": "us-east-1", "region": "us-east-1", "id": "us-east-1"},
            "aws:index/getPartition:getPartition": {"partition": "aws", "dnsSuffix": "amazonaws.com"},
            "azure-native:authorization:getClientConfig": {
                "subscriptionId": SUBSCRIPTION,
                "tenantId": TENANT,
                "clientId": "c",
                "objectId": "o",
            },
        }
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            wanted = next(f["values"][0] for f in inputs.get("filters", []) if f["name"] == "instance-type")
            return {
                "id": "us-east-1",
                "instanceTypes": [wanted],
                "locations": ["us-east-1a"],
                "locationTypes": ["availability-zone"],
            }
        return answers.get(token, {})

    # ------------------------------------------------------------------ what the rehearsal needs
    def of(self, typ: str) -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
        found = [(n, i, s, r) for t, n, i, s, r in self.resources if t == typ]
        return sorted(found, key=lambda r: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", r[0])])


def _instances(cloud: str, mocks: Mocks) -> list[dict[str, Any]]:
    """Per node: its user data as the instance resource carries it, what its metadata server must
    say about it, and who it is (the identity its IMDS hands out)."""
    nodes = []
    if cloud == "aws":
        for name, inputs, _, _ in mocks.of("aws:ec2/instance:Instance"):
            nodes.append(
                {"resource": name, "user_data": inputs["userData"], "role": inputs["iamInstanceProfile"]}
            )
    elif cloud == "gcp":
        for name, inputs, _, _ in mocks.of("gcp:compute/instance:Instance"):
            meta = inputs["metadata"]
            nodes.append(
                {
                    "resource": name,
                    "user_data": meta["user-data"],
                    "metadata": meta,
                    "service_account": inputs["serviceAccount"]["email"],
                }
            )
    else:
        for name, inputs, _, rid in mocks.of("azure-native:compute:VirtualMachine"):
            text = base64.b64decode(inputs["osProfile"]["customData"]).decode()
            nodes.append(
                {
                    "resource": name,
                    "user_data": text,
                    "resource_id": rid,
                    "custom_data": inputs["osProfile"]["customData"],
                }
            )
    return nodes


def _secrets(cloud: str, mocks: Mocks) -> dict[str, str]:
    """The secret store's content as the program writes it: where each secret lives -> its value."""
    if cloud == "aws":
        return {
            i["secretId"]: i["secretString"]
            for _, i, _, _ in mocks.of("aws:secretsmanager/secretVersion:SecretVersion")
        }
    if cloud == "gcp":
        ids = {rid: i["secretId"] for _, i, _, rid in mocks.of("gcp:secretmanager/secret:Secret")}
        return {
            f"projects/{PROJECT}/secrets/{ids[i['secret']]}": i["secretData"]
            for _, i, _, _ in mocks.of("gcp:secretmanager/secretVersion:SecretVersion")
        }
    return {
        f"{i['vaultName']}/{i['secretName']}": i["properties"]["value"]
        for _, i, _, _ in mocks.of("azure-native:keyvault:Secret")
    }


def render(cloud: str, nodes: int, python: str | None = None) -> dict[str, Any]:
    """Build the cluster under mocks; return the first-boot material (see the module docstring)."""
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="lepton", stack="rehearsal", preview=False)
    pulumi.runtime.set_all_config({"gcp:project": PROJECT, "aws:region": REGION["aws"]})
    from lepton_infra.components import TrainingCluster, TrainingClusterArgs  # after set_mocks

    spec: dict[str, Any] = {
        "cloud": cloud,
        "accelerator": "T4",
        "nodes": nodes,
        "region": REGION[cloud],
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
        "cluster": f"rehearsal-{cloud}",
        "env": "rehearsal",
    }
    if python is not None:
        spec["python"] = python
    box: dict[str, Any] = {}

    @pulumi.runtime.test  # type: ignore[misc]
    def program() -> Any:
        cluster = TrainingCluster(f"rh-{cloud}", TrainingClusterArgs(**spec))
        return pulumi.Output.all(cluster.inventory, cluster.private_key).apply(
            lambda v: box.update(inventory=json.loads(v[0]), private_key=v[1])
        )

    program()
    return {"cloud": cloud, **box, "nodes": _instances(cloud, mocks), "secrets": _secrets(cloud, mocks)}


if __name__ == "__main__":
    print(json.dumps(render(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)))
