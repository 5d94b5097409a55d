"""Shared Pulumi mocks for the component tests: every resource the real component code registers is
recorded (type token, logical name, inputs) and given plausible outputs, and the invokes our
components make are answered. Importing this module sets the mocks, so test modules import it
BEFORE any component module (resources registered before `set_mocks` bypass the mocks, and a
test that records nothing then passes vacuously).

    _, rec = build(lambda: GcpGpuVmPool("demo", args))      # resolved outputs, recorded resources
    rec.of("gcp:compute/instance:Instance")                  # the instances' records
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi

from lepton_infra.components.images import IMAGES

GCP_PROJECT = "lepton-test-project"
AWS_REGION = "us-east-1"
AWS_ACCOUNT = "123456789012"
DEPLOYER_ROLE, DEPLOYER_ROLE_ID, DEPLOYER_SESSION = "lepton-deployer", "AROADEPLOYER00000001", "ci-run-42"
AZURE_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
AZURE_TENANT = "00000000-0000-0000-0000-0000000000aa"
DEEP_LEARNING_AMI = "ami-0123456789abcdef0"
# Where EC2 offers an instance type (DescribeInstanceTypeOfferings); others: zones a and b.
OFFERED_ZONES: dict[str, list[str]] = {"p5.48xlarge": [f"{AWS_REGION}c"], "p4de.24xlarge": []}
# AWS's public SSM parameters the mocks know: exactly the image table's AWS rows.
PUBLIC_PARAMETERS = frozenset(row.image for row in IMAGES if row.cloud == "aws")
# GCP image families the mocks resolve (the image table's GCP rows), and the version they answer.
IMAGE_FAMILIES = frozenset(row.image for row in IMAGES if row.cloud == "gcp" and "/family/" in row.image)
GCP_IMAGE_VERSION = "v20261201"
# The VPC that `gcp.compute.get_subnetwork` says any looked-up subnet belongs to.
SUBNETWORK_VPC = "https://www.googleapis.com/compute/v1/projects/host-proj/global/networks/shared"


_SECRET_SIG = "4dabf18193072939515e22adb298388d"  # pulumi's wire marker for a secret value


def _unwrap(value: Any) -> Any:
    """Secret inputs reach mocks wrapped as {sig: ..., value: ...}; tests assert on the value."""
    if isinstance(value, dict):
        if _SECRET_SIG in value and "value" in value:
            return _unwrap(value["value"])
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    return _unwrap(json.loads(json.dumps(value, default=str)))


def _ed25519_public_key(seed: str) -> str:
    """A real (parseable) ed25519 public key line, stable per seed: the inventory checks host keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"host-key-{seed}".encode()).digest())
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode() + "\n"


@dataclass
class Recorded:
    """One registered resource: what the program asked for (`inputs`) and what the mock returned."""

    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    id: str
    provider: str | None = None  # the explicit provider reference, if any (the policy harness needs it)
    # Logical names of the resources this one waits for (explicit depends_on and inputs' sources).
    depends_on: list[str] = field(default_factory=list)
    # The resource option `ignore_changes`, as the engine receives it (wire names).
    ignore_changes: list[str] = field(default_factory=list)
    # The URN the engine gives it: its type prefixed by every ancestor's but the stack's.
    urn: str = ""


@dataclass
class Recorder(pulumi.runtime.Mocks):
    """Records resources and answers invokes with fixed, plausible values."""

    resources: list[Recorded] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    project_number: str = "123456789012"
    # (type, name) -> dependencies of a registration in flight (monitor calls may run on threads).
    pending_dependencies: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    pending_ignores: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # A fresh GCP project: Compute Engine calls fail with SERVICE_DISABLED until a registered
    # `projects.Service` has turned the API on (tests set it, and reset it, around one build).
    fresh_gcp_project: bool = False
    # Derive the mocks' made-up ids and addresses from each resource's type and name instead of
    # its registration order, so a refactor that registers the same resources in another order
    # sees the same inputs (the resource snapshot test sets it around its builds).
    stable_ids: bool = False
    pending_urns: dict[tuple[str, str], str] = field(default_factory=dict)
    # The mock monitor's URN of each registration -> the engine's (whose type names every ancestor).
    engine_urns: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ queries for tests
    def of(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str) -> Recorded:
        return next(r for r in self.resources if r.name == name)

    def types(self) -> set[str]:
        return {r.type for r in self.resources}

    def _inst(self, name: str) -> Recorded:
        return self.named(name)

    def nat_ip(self, name: str) -> str:
        return str(self._inst(name).outputs["networkInterfaces"][0]["accessConfigs"][0]["natIp"])

    def network_ip(self, name: str) -> str:
        return str(self._inst(name).outputs["networkInterfaces"][0]["networkIp"])

    # ------------------------------------------------------------------ Mocks protocol
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = _plain(dict(args.inputs))
        state: dict[str, Any] = dict(inputs)
        idx = len(self.resources)
        if self.stable_ids:
            idx = int(hashlib.sha256(f"{args.typ}|{args.name}".encode()).hexdigest()[:6], 16) % 240
        typ, name = args.typ, args.name
        rid = f"{name}-id"
        state.setdefault("name", f"{name}-{idx:07x}")
        if typ.startswith("aws:"):
            service = typ.split(":")[1].split("/")[0]
            state.setdefault("arn", f"arn:aws:{service}:{AWS_REGION}:{AWS_ACCOUNT}:{name}")
        if typ == "aws:s3/bucket:Bucket":
            state.setdefault("bucket", f"{name}-{idx:07x}")
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
            rid = state["bucket"]  # as on AWS: a bucket's id is its name
        if typ == "aws:sqs/queue:Queue":
            state["url"] = f"https://sqs.{AWS_REGION}.amazonaws.com/{AWS_ACCOUNT}/{state['name']}"
            state["arn"] = f"arn:aws:sqs:{AWS_REGION}:{AWS_ACCOUNT}:{state['name']}"
        if typ == "aws:ec2/instance:Instance":
            state["privateIp"] = f"10.0.1.{10 + idx}"
            state["primaryNetworkInterfaceId"] = f"eni-{idx:017x}"
            state["publicIp"] = f"203.0.113.{idx % 250 + 1}" if inputs.get("associatePublicIpAddress") else ""
        if typ == "aws:secretsmanager/secret:Secret":
            state["arn"] = f"arn:aws:secretsmanager:{AWS_REGION}:{AWS_ACCOUNT}:secret:{state['name']}-AbCdEf"
            rid = state["arn"]  # as on AWS: a secret's id is its ARN
        if typ == "aws:ec2/eip:Eip":
            self._refuse_eip_on_multi_interface_instance(inputs)
            state["publicIp"] = f"198.51.100.{idx % 250 + 1}"
            state["allocationId"] = f"eipalloc-{idx:08d}"
        if typ == "aws:kms/key:Key":
            rid = f"key-{idx:08d}"
        if typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::{AWS_ACCOUNT}:role/{state['name']}"
            # IAM's unique id of a role: AROA + 17 characters (what `aws:userid` starts with).
            state["uniqueId"] = "AROA" + hashlib.sha256(name.encode()).hexdigest()[:17].upper()
        if typ == "gcp:serviceaccount/account:Account":
            state["email"] = (
                f"{inputs['accountId']}@{inputs.get('project', GCP_PROJECT)}.iam.gserviceaccount.com"
            )
        if typ.startswith("gcp:compute/"):
            state["selfLink"] = (
                f"https://www.googleapis.com/compute/v1/projects/{inputs.get('project', GCP_PROJECT)}/{name}"
            )
        if typ == "gcp:compute/instance:Instance":
            if str(inputs.get("machineType", "")).startswith("a3-") and any(
                nic.get("nicType") != "GVNIC" for nic in inputs.get("networkInterfaces", [])
            ):
                # GCE refuses A3 VMs on VirtIO-Net: the machine series offers only gVNIC.
                raise ValueError(
                    f"Invalid value for field 'resource.networkInterfaces': {inputs['machineType']} requires gVNIC"
                )
            state["networkInterfaces"] = [
                dict(
                    nic,
                    networkIp=f"10.42.0.{idx}",
                    accessConfigs=[
                        dict(c, natIp=f"203.0.113.{idx % 250 + 1}") for c in nic.get("accessConfigs", [])
                    ],
                )
                for nic in inputs.get("networkInterfaces", [])
            ]
        if typ.startswith("azure-native:"):
            rid = (
                f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/rg/providers/{typ.split(':')[1]}/{name}"
            )
            state["id"] = rid
            if typ == "azure-native:network:NetworkInterface":
                state["ipConfigurations"] = [
                    dict(c, privateIPAddress=f"10.43.0.{idx % 250 + 4}")
                    for c in inputs.get("ipConfigurations", [])
                ]
            identity = state.get("identity")
            if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
                # Inputs take a list of ids; the API answers with a map keyed by id.
                state["identity"] = {
                    **identity,
                    "userAssignedIdentities": {i: {} for i in identity["userAssignedIdentities"]},
                }
            if typ == "azure-native:network:PublicIPAddress":
                state["ipAddress"] = f"198.51.100.{idx % 250 + 1}"
            if typ == "azure-native:keyvault:Vault":
                state["properties"] = {
                    **state.get("properties", {}),
                    "vaultUri": f"https://{inputs.get('vaultName')}.vault.azure.net/",
                }
            if typ == "azure-native:managedidentity:UserAssignedIdentity":
                state["principalId"] = f"principal-{idx}"
                state["clientId"] = f"client-{idx}"
        if typ == "random:index/randomString:RandomString":
            state["result"] = hashlib.sha256(name.encode()).hexdigest()[: int(inputs.get("length", 8))]
        if typ == "tls:index/privateKey:PrivateKey":
            # Seeded by the logical name: registrations may run on threads, so `idx` can repeat.
            state["publicKeyOpenssh"] = _ed25519_public_key(name)
            state["privateKeyOpenssh"] = (
                f"-----BEGIN OPENSSH PRIVATE KEY-----\nkey-{name}\n-----END OPENSSH PRIVATE KEY-----\n"
            )
            state["privateKeyPem"] = state["privateKeyOpenssh"]
        deps = self.pending_dependencies.pop((typ, name), [])
        ignores = self.pending_ignores.pop((typ, name), [])
        urn = self.pending_urns.pop((typ, name), "")
        self.resources.append(
            Recorded(typ, name, inputs, state, rid, args.provider or None, deps, ignores, urn)
        )
        return rid, state

    def _refuse_eip_on_multi_interface_instance(self, inputs: dict[str, Any]) -> None:
        """As EC2's AssociateAddress does: an address given `instance=` for an instance with more
        than one network interface (here: launched from a template declaring several) is refused;
        such an instance takes its address on a network interface."""
        instance_id = inputs.get("instance")
        if not instance_id:
            return
        instance = next((r for r in self.resources if r.id == instance_id), None)
        template_id = ((instance.inputs if instance else {}).get("launchTemplate") or {}).get("id")
        template = next((r for r in self.resources if r.id == template_id), None) if template_id else None
        if template is not None and len(template.inputs.get("networkInterfaces", [])) > 1:
            raise ValueError(
                f"InvalidInstanceID: There are multiple interfaces attached to instance '{instance_id}'. "
                "Please specify an interface ID for the operation instead."
            )

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        token, inputs = args.token, _plain(dict(args.args))
        self.calls.append((token, inputs))
        if token == "gcp:organizations/getProject:getProject":
            return {"number": self.project_number, "projectId": GCP_PROJECT}
        if token == "gcp:compute/getSubnetwork:getSubnetwork":
            link = str(inputs.get("selfLink", ""))
            return {"selfLink": link, "name": link.rsplit("/", 1)[-1], "network": SUBNETWORK_VPC}
        if token == "gcp:compute/getImage:getImage":
            if self.fresh_gcp_project and not any(
                r.type == "gcp:projects/service:Service"
                and r.inputs.get("service") == "compute.googleapis.com"
                for r in self.resources
            ):
                raise ValueError(
                    f"SERVICE_DISABLED: Compute Engine API has not been used in project {GCP_PROJECT} "
                    "before or it is disabled"
                )
            family = f"projects/{inputs.get('project')}/global/images/family/{inputs.get('family')}"
            if family not in IMAGE_FAMILIES:
                # GCE answers a family that does not exist (or has no image) with a 404.
                raise ValueError(f"notFound: image family {family} (not in lepton_infra.components.images)")
            name = f"{inputs['family']}-{GCP_IMAGE_VERSION}"
            link = f"https://www.googleapis.com/compute/v1/projects/{inputs['project']}/global/images/{name}"
            return {"name": name, "selfLink": link, "family": inputs["family"], "project": inputs["project"]}
        if token == "aws:ssm/getParameter:getParameter":
            name = str(inputs.get("name"))
            if name.startswith("/aws/service/") and name not in PUBLIC_PARAMETERS:
                # AWS answers a public parameter that does not exist with ParameterNotFound.
                raise ValueError(f"ParameterNotFound: {name} (not in lepton_infra.components.images)")
            return {
                "name": inputs.get("name"),
                "value": DEEP_LEARNING_AMI,
                "type": "String",
                "id": inputs.get("name"),
            }
        if token == "aws:iam/getInstanceProfile:getInstanceProfile":
            role = f"{inputs.get('name')}-role"
            return {
                "name": inputs.get("name"),
                "roleName": role,
                "roleArn": f"arn:aws:iam::{AWS_ACCOUNT}:role/{role}",
                "arn": f"arn:aws:iam::{AWS_ACCOUNT}:instance-profile/{inputs.get('name')}",
                "id": inputs.get("name"),
                "path": "/",
                "roleId": "AROAEXAMPLE",
                "createDate": "2025-01-01T00:00:00Z",
            }
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            (wanted,) = [f["values"][0] for f in inputs.get("filters", []) if f["name"] == "instance-type"]
            zones = OFFERED_ZONES.get(wanted, [f"{AWS_REGION}b", f"{AWS_REGION}a"])
            return {
                "id": AWS_REGION,
                "instanceTypes": [wanted] * len(zones),
                "locations": zones,
                "locationTypes": ["availability-zone"] * len(zones),
            }
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": [f"{AWS_REGION}a", f"{AWS_REGION}b"], "zoneIds": ["use1-az1", "use1-az2"]}
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            # As STS answers a deployer that assumed a role (CI through OIDC, SSO): role id + session.
            return {
                "accountId": AWS_ACCOUNT,
                "arn": f"arn:aws:sts::{AWS_ACCOUNT}:assumed-role/{DEPLOYER_ROLE}/{DEPLOYER_SESSION}",
                "userId": f"{DEPLOYER_ROLE_ID}:{DEPLOYER_SESSION}",
            }
        if token == "aws:index/getRegion:getRegion":
            return {"name": AWS_REGION, "region": AWS_REGION, "id": AWS_REGION}
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
        if token == "azure-native:authorization:getClientConfig":
            return {
                "subscriptionId": AZURE_SUBSCRIPTION,
                "tenantId": AZURE_TENANT,
                "clientId": "c",
                "objectId": "o",
            }
        return {}


MOCKS = Recorder()

_register_resource = pulumi.runtime.mocks.MockMonitor.RegisterResource


def _engine_urn(mocks: Recorder, monitor: Any, request: Any) -> str:
    """The URN the Pulumi engine would give this registration. The mock monitor's own qualifies the
    type with the parent's type only; the engine's with the parent's whole qualified type (every
    ancestor but the root stack), which is what moving a resource under another component changes."""
    mock_urn = monitor.make_urn(request.parent, request.type, request.name)
    typ = request.type
    parent = mocks.engine_urns.get(request.parent, "")
    if parent:
        typ = parent.split("::")[2] + "$" + typ
    urn = "urn:pulumi:" + "::".join([pulumi.get_stack(), pulumi.get_project(), typ, request.name])
    if request.type != "pulumi:pulumi:Stack":
        mocks.engine_urns[mock_urn] = urn
    return urn


def _register_recording_dependencies(self: Any, request: Any) -> Any:
    """The mock monitor's RegisterResource, after noting the request's dependencies (URNs end in
    the logical name) for the `new_resource` call it makes with the same type and name."""
    mocks = getattr(self, "mocks", None)
    if isinstance(mocks, Recorder):
        mocks.pending_dependencies[(request.type, request.name)] = sorted(
            {str(u).rsplit("::", 1)[-1] for u in request.dependencies}
        )
        mocks.pending_ignores[(request.type, request.name)] = list(request.ignoreChanges)
        mocks.pending_urns[(request.type, request.name)] = _engine_urn(mocks, self, request)
    return _register_resource(self, request)


pulumi.runtime.mocks.MockMonitor.RegisterResource = _register_recording_dependencies  # type: ignore[method-assign]


def install(
    mocks: Recorder = MOCKS,
    *,
    stack: str = "test",
    config: dict[str, str] | None = None,
    preview: bool = False,
) -> None:
    """(Re)install the mocks: other harnesses in the same pytest process may have set their own.
    `preview=True` runs the program as `pulumi preview` does (the graph must be whole then too)."""
    pulumi.runtime.set_mocks(mocks, project="lepton-infra", stack=stack, preview=preview)
    pulumi.runtime.set_all_config({"gcp:project": GCP_PROJECT, "aws:region": AWS_REGION, **(config or {})})


install()


def _settle_event_loop(limit: float = 5.0) -> None:
    """Let the tasks a build left behind finish on the shared event loop, then cancel the rest.

    When a registration fails, Pulumi's `wait_for_rpcs` raises at once and leaves the build's other
    registrations queued. They would run in the NEXT build's loop and land in its fresh record (an
    order-dependent failure CI once hit: a VPC endpoint from one test appeared in the next)."""
    loop = asyncio.get_event_loop()
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    _, still = loop.run_until_complete(asyncio.wait(pending, timeout=limit))
    for task in still:
        task.cancel()
    if still:
        loop.run_until_complete(asyncio.gather(*still, return_exceptions=True))
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


def build(
    fn: Callable[[], Any],
    *,
    stack: str = "test",
    config: dict[str, str] | None = None,
    preview: bool = False,
) -> tuple[dict[str, Any], Recorder]:
    """Run `fn` inside a mocked Pulumi program; return its resolved outputs (when `fn` returns a
    dict of outputs) and a recorder holding exactly the resources it registered. Exceptions raised
    by `fn` (e.g. ConfigError) propagate."""
    MOCKS.resources = []
    MOCKS.calls = []
    MOCKS.engine_urns = {}
    install(MOCKS, stack=stack, config=config, preview=preview)
    box: dict[str, Any] = {}

    @pulumi.runtime.test
    def _run() -> Any:
        outs = fn()
        if isinstance(outs, dict) and outs:
            return pulumi.Output.all(**outs).apply(box.update)
        return None

    try:
        _run()
    finally:
        _settle_event_loop()
    rec = Recorder(
        resources=list(MOCKS.resources),
        calls=list(MOCKS.calls),
        project_number=MOCKS.project_number,
    )
    return box, rec


# The demo pool/cluster the graph tests build, spelled once (a new required field changes one place).
DEMO_REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}


def demo_spec(cloud: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of the tests' demo spec on `cloud`: 2 x T4 in the cloud's demo region, SSH
    from a documentation range, cluster `demo`, env `dev`; `overrides` on top."""
    return {
        "cloud": cloud,
        "accelerator": "T4",
        "nodes": 2,
        "region": DEMO_REGION[cloud],
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
        "cluster": "demo",
        "env": "dev",
        **overrides,
    }
