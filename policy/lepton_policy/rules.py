"""The lepton-infra policy rules (pulumi-policy), importable without starting a policy server.

`policy/__main__.py` only hands `POLICIES` to `PolicyPack(...)`; tests import this module and call
each rule's `validate` directly. Rules read resource inputs by their wire (camelCase) names, the
same shape `pulumi preview` sends and Pulumi mocks record. See policy/README.md for the tag names
our components set and which rules are mandatory.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from lepton_infra.catalog import CatalogEntry, entries

# --------------------------------------------------------------------------- tag names (contract)
# Our components put these on every resource they create; the policy checks them. AWS and Azure
# take ':' in tag keys, GCP label keys allow only [a-z0-9_-], hence the second spelling.
TAG_CLUSTER = "lepton:cluster"
TAG_ENV = "lepton:env"
TAG_MAX_LIFETIME_HOURS = "lepton:max-lifetime-hours"
TAG_IDLE_SHUTDOWN_MINUTES = "lepton:idle-shutdown-minutes"
LABEL_CLUSTER = "lepton-cluster"
LABEL_ENV = "lepton-env"
LABEL_MAX_LIFETIME_HOURS = "lepton-max-lifetime-hours"
LABEL_IDLE_SHUTDOWN_MINUTES = "lepton-idle-shutdown-minutes"

DEFAULT_MAX_GPUS = 64

ADMIN_PORTS = {22: "SSH", 3389: "RDP"}
# Azure accepts service tags and '*' where others take CIDRs.
WORLD_SOURCES = {"0.0.0.0/0", "::/0", "*", "internet", "any", "0.0.0.0", "::"}

# --------------------------------------------------------------------------- resource type tokens
AWS_INSTANCE = "aws:ec2/instance:Instance"
AWS_LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
AWS_SPOT_REQUEST = "aws:ec2/spotInstanceRequest:SpotInstanceRequest"
AWS_SG = "aws:ec2/securityGroup:SecurityGroup"
AWS_SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
AWS_SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
AWS_BUCKET = "aws:s3/bucket:Bucket"
AWS_BUCKET_V2 = "aws:s3/bucketV2:BucketV2"
AWS_BUCKET_PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
AWS_BUCKET_SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
AWS_BUCKET_SSE_V2 = (
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2"
)
AWS_BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
AWS_BUCKET_ACL = "aws:s3/bucketAcl:BucketAcl"
AWS_BUCKET_ACL_V2 = "aws:s3/bucketAclV2:BucketAclV2"
AWS_SQS_QUEUE = "aws:sqs/queue:Queue"
GCP_INSTANCE = "gcp:compute/instance:Instance"
GCP_INSTANCE_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GCP_REGION_INSTANCE_TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"
GCP_FIREWALL = "gcp:compute/firewall:Firewall"
GCP_BUCKET = "gcp:storage/bucket:Bucket"
GCP_TOPIC = "gcp:pubsub/topic:Topic"
GCP_SUBSCRIPTION = "gcp:pubsub/subscription:Subscription"
AZ_NSG = "azure-native:network:NetworkSecurityGroup"
AZ_SECURITY_RULE = "azure-native:network:SecurityRule"
AZ_STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
AZ_VM = "azure-native:compute:VirtualMachine"
AZ_VMSS = "azure-native:compute:VirtualMachineScaleSet"

AWS_BUCKETS = (AWS_BUCKET, AWS_BUCKET_V2)
AWS_VMS = (AWS_INSTANCE, AWS_LAUNCH_TEMPLATE, AWS_SPOT_REQUEST)
GCP_VMS = (GCP_INSTANCE, GCP_INSTANCE_TEMPLATE, GCP_REGION_INSTANCE_TEMPLATE)
AZ_VMS = (AZ_VM, AZ_VMSS)
VM_TYPES = AWS_VMS + GCP_VMS + AZ_VMS

# Resource types our components create that can carry tags/labels, and the property holding them.
# Types that cannot be tagged (GCP networks/firewalls/service accounts, Azure subnets/containers/
# queues, S3 sub-resources) are deliberately absent: the rule must be satisfiable.
TAGGED_TYPES: dict[str, str] = {
    **{
        t: "tags"
        for t in (
            AWS_INSTANCE,
            AWS_LAUNCH_TEMPLATE,
            AWS_SPOT_REQUEST,
            "aws:ec2/vpc:Vpc",
            "aws:ec2/subnet:Subnet",
            AWS_SG,
            "aws:ec2/internetGateway:InternetGateway",
            "aws:ec2/routeTable:RouteTable",
            "aws:ec2/keyPair:KeyPair",
            "aws:ebs/volume:Volume",
            AWS_BUCKET,
            AWS_BUCKET_V2,
            AWS_SQS_QUEUE,
            "aws:iam/role:Role",
            "aws:iam/instanceProfile:InstanceProfile",
            "aws:kms/key:Key",
        )
    },
    **{
        t: "labels"
        for t in (
            GCP_INSTANCE,
            GCP_INSTANCE_TEMPLATE,
            GCP_REGION_INSTANCE_TEMPLATE,
            "gcp:compute/disk:Disk",
            GCP_BUCKET,
            GCP_TOPIC,
            GCP_SUBSCRIPTION,
        )
    },
    **{
        t: "tags"
        for t in (
            "azure-native:resources:ResourceGroup",
            "azure-native:network:VirtualNetwork",
            AZ_NSG,
            "azure-native:network:NetworkInterface",
            "azure-native:network:PublicIPAddress",
            AZ_VM,
            AZ_VMSS,
            "azure-native:compute:Disk",
            AZ_STORAGE_ACCOUNT,
            "azure-native:managedidentity:UserAssignedIdentity",
        )
    },
}


# --------------------------------------------------------------------------- small readers


def get(obj: Any, *path: str | int, default: Any = None) -> Any:
    """`props["a"]["b"][0]` or `default` when any step is missing (works on pulumi-policy proxies)."""
    cur = obj
    for key in path:
        if isinstance(key, int):
            if not _is_list(cur) or key >= len(cur):
                return default
            cur = cur[key]
        else:
            if not isinstance(cur, Mapping) or key not in cur:
                return default
            cur = cur[key]
        if cur is None:
            return default
    return cur


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def as_list(value: Any) -> list[Any]:
    """None -> [], a scalar -> [it], a sequence -> list of it."""
    if value is None:
        return []
    if _is_list(value):
        return [value[i] for i in range(len(value))]
    return [value]


def _truthy(value: Any) -> bool:
    # Wire values are usually real booleans; strings can appear through `extra` or YAML programs.
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _is_world(source: Any) -> bool:
    if not isinstance(source, str):
        return False
    s = source.strip().lower()
    if s in WORLD_SOURCES:
        return True
    try:
        return ipaddress.ip_network(s, strict=False).prefixlen == 0
    except ValueError:
        return False


def _ports_in_range(lo: int, hi: int) -> list[int]:
    return [p for p in ADMIN_PORTS if lo <= p <= hi]


def _port_spec_hits(spec: Any) -> list[int]:
    """Admin ports covered by a port spec such as 22, "22", "20-30", "*" or None (= all)."""
    if spec is None:
        return list(ADMIN_PORTS)
    s = str(spec).strip()
    if s in ("*", "", "all", "any"):
        return list(ADMIN_PORTS)
    try:
        if "-" in s:
            lo, _, hi = s.partition("-")
            return _ports_in_range(int(lo), int(hi))
        return _ports_in_range(int(float(s)), int(float(s)))
    except ValueError:
        return []  # not a port spec the cloud would accept either


def _names(ports: Iterable[int]) -> str:
    return ", ".join(f"{ADMIN_PORTS[p]} ({p})" for p in sorted(set(ports)))


def _tags_of(resource_type: str, props: Mapping[str, Any]) -> dict[str, Any]:
    """The tags/labels a resource carries (AWS launch templates: also their instance tag specs)."""
    key = TAGGED_TYPES.get(resource_type) or ("labels" if resource_type.startswith("gcp:") else "tags")
    tags: dict[str, Any] = dict(get(props, key, default={}) or {})
    if resource_type == AWS_LAUNCH_TEMPLATE:
        for spec in as_list(get(props, "tagSpecifications")):
            if get(spec, "resourceType") == "instance":
                tags.update(dict(get(spec, "tags", default={}) or {}))
    return tags


def _provider_default_tags(args: ResourceValidationArgs) -> dict[str, Any]:
    """Tags a provider adds to everything (AWS `defaultTags.tags`, GCP `defaultLabels`)."""
    provider = args.provider
    if provider is None:
        return {}
    props = provider.props or {}
    tags = get(props, "defaultTags") or get(props, "defaultLabels") or {}
    if isinstance(tags, str):  # provider inputs arrive JSON-encoded
        try:
            tags = json.loads(tags)
        except ValueError:
            return {}
    if isinstance(tags, Mapping) and isinstance(tags.get("tags"), Mapping):
        tags = tags["tags"]  # AWS nests them: defaultTags: {tags: {...}}
    return dict(tags) if isinstance(tags, Mapping) else {}


def _last_segment(value: Any) -> str:
    # GCP accepts both "n1-standard-4" and ".../zones/z/machineTypes/n1-standard-4".
    return str(value).rstrip("/").rsplit("/", 1)[-1] if value is not None else ""


# --------------------------------------------------------------------------- GPU recognition


@dataclass(frozen=True)
class GpuShape:
    """What a VM resource asks for: its cloud, instance/machine type, attached GPUs, node count."""

    cloud: str
    instance_type: str
    attached_type: str | None  # GCP guest accelerator type
    attached_count: int
    nodes: int  # VMSS capacity; 1 for single VMs and templates


_AWS_GPU_RE = re.compile(r"^[gp]\d[a-z0-9-]*\.", re.IGNORECASE)
_GCP_GPU_RE = re.compile(r"^(g\d|a\d)-", re.IGNORECASE)
_AZURE_GPU_RE = re.compile(r"^standard_n", re.IGNORECASE)


def vm_shape(resource_type: str, props: Mapping[str, Any]) -> GpuShape | None:
    """The instance type of a VM-like resource, or None when the resource is not a VM."""
    if resource_type in AWS_VMS:
        return GpuShape("aws", str(get(props, "instanceType", default="")), None, 0, 1)
    if resource_type in GCP_VMS:
        machine = _last_segment(get(props, "machineType"))
        attached = [a for a in as_list(get(props, "guestAccelerators")) if a is not None]
        count = sum(int(get(a, "count", default=1)) for a in attached)
        kinds = {_last_segment(get(a, "type")) for a in attached}
        kind = ",".join(sorted(kinds)) if kinds else None
        return GpuShape("gcp", machine, kind, count, 1)
    if resource_type == AZ_VM:
        return GpuShape("azure", str(get(props, "hardwareProfile", "vmSize", default="")), None, 0, 1)
    if resource_type == AZ_VMSS:
        nodes = int(get(props, "sku", "capacity", default=1))
        return GpuShape("azure", str(get(props, "sku", "name", default="")), None, 0, nodes)
    return None


def looks_like_gpu(shape: GpuShape) -> bool:
    """Whether the type would give GPUs: AWS g*/p* families, GCP attached GPUs or g2/a2/a3-style
    machine types, Azure Standard_N* sizes."""
    if shape.cloud == "aws":
        return bool(_AWS_GPU_RE.match(shape.instance_type))
    if shape.cloud == "gcp":
        return shape.attached_count > 0 or bool(_GCP_GPU_RE.match(shape.instance_type))
    return bool(_AZURE_GPU_RE.match(shape.instance_type))


def catalog_entry_for(shape: GpuShape) -> CatalogEntry | None:
    """The catalog row this shape is, or None when it is not in the catalog."""
    for e in entries():
        if e.cloud != shape.cloud:
            continue
        if shape.cloud == "azure":
            if e.instance_type.lower() == shape.instance_type.lower():
                return e
            continue
        if e.instance_type != shape.instance_type:
            continue
        if e.gcp_accelerator_type is None:
            # Bundled GPUs (AWS, GCP g2/a2/a3): nothing extra may be attached on top.
            if shape.attached_count == 0:
                return e
        elif shape.attached_type == e.gcp_accelerator_type and shape.attached_count == e.gpus:
            return e
    return None


def gpus_of(resource_type: str, props: Mapping[str, Any]) -> int:
    """GPUs a resource will run (nodes x GPUs per node); 0 for non-VMs and CPU VMs.

    A GPU-looking type that is not in the catalog counts its attached GPUs, or 1 per node, so the
    budget guard never undercounts to zero (the catalog rule reports it separately)."""
    shape = vm_shape(resource_type, props)
    if shape is None or not looks_like_gpu(shape):
        return 0
    # Launch/instance templates describe nodes; the instances they start are counted where they exist.
    if resource_type in (AWS_LAUNCH_TEMPLATE, GCP_INSTANCE_TEMPLATE, GCP_REGION_INSTANCE_TEMPLATE):
        return 0
    entry = catalog_entry_for(shape)
    per_node = entry.gpus if entry else max(shape.attached_count, 1)
    return per_node * shape.nodes


def is_spot(resource_type: str, props: Mapping[str, Any]) -> bool:
    """Spot/preemptible: AWS instanceMarketOptions, GCP scheduling, Azure priority."""
    if resource_type == AWS_SPOT_REQUEST:
        return True
    if resource_type in (AWS_INSTANCE, AWS_LAUNCH_TEMPLATE):
        return str(get(props, "instanceMarketOptions", "marketType", default="")).lower() == "spot"
    if resource_type in GCP_VMS:
        sched = get(props, "scheduling", default={})
        return (
            _truthy(get(sched, "preemptible"))
            or str(get(sched, "provisioningModel", default="")).upper() == "SPOT"
        )
    if resource_type == AZ_VM:
        return str(get(props, "priority", default="")).lower() == "spot"
    if resource_type == AZ_VMSS:
        return str(get(props, "virtualMachineProfile", "priority", default="")).lower() == "spot"
    return False


# --------------------------------------------------------------------------- rule: admin ports


def _aws_rule_hits(protocol: Any, from_port: Any, to_port: Any) -> list[int]:
    proto = str(protocol if protocol is not None else "-1").lower()
    if proto in ("-1", "all"):
        return list(ADMIN_PORTS)
    if proto not in ("tcp", "6"):
        return []  # SSH and RDP are TCP; RDP's UDP transport needs TCP 3389 first
    lo = int(from_port if from_port is not None else 0)
    hi = int(to_port if to_port is not None else 65535)
    return _ports_in_range(lo, hi)


def _aws_sources_world(rule: Mapping[str, Any], *keys: str) -> list[str]:
    return [s for k in keys for s in as_list(get(rule, k)) if _is_world(s)]


def check_world_admin_ports(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Messages for every SSH/RDP ingress open to the whole internet."""
    out: list[str] = []
    if resource_type == AWS_SG:
        for i, rule in enumerate(as_list(get(props, "ingress"))):
            world = _aws_sources_world(rule, "cidrBlocks", "ipv6CidrBlocks")
            hits = _aws_rule_hits(get(rule, "protocol"), get(rule, "fromPort"), get(rule, "toPort"))
            if world and hits:
                out.append(f"ingress[{i}] opens {_names(hits)} to {', '.join(world)}")
    elif resource_type == AWS_SG_RULE:
        if str(get(props, "type", default="")).lower() == "ingress":
            world = _aws_sources_world(props, "cidrBlocks", "ipv6CidrBlocks")
            hits = _aws_rule_hits(get(props, "protocol"), get(props, "fromPort"), get(props, "toPort"))
            if world and hits:
                out.append(f"ingress rule opens {_names(hits)} to {', '.join(world)}")
    elif resource_type == AWS_SG_INGRESS_RULE:
        world = _aws_sources_world(props, "cidrIpv4", "cidrIpv6")
        hits = _aws_rule_hits(get(props, "ipProtocol"), get(props, "fromPort"), get(props, "toPort"))
        if world and hits:
            out.append(f"ingress rule opens {_names(hits)} to {', '.join(world)}")
    elif resource_type == GCP_FIREWALL:
        if str(get(props, "direction", default="INGRESS")).upper() != "INGRESS" or _truthy(
            get(props, "disabled")
        ):
            return out
        ranges = as_list(get(props, "sourceRanges"))
        # With no source at all, GCP applies the rule to 0.0.0.0/0.
        if (
            not ranges
            and not as_list(get(props, "sourceTags"))
            and not as_list(get(props, "sourceServiceAccounts"))
        ):
            world = ["0.0.0.0/0 (no source given)"]
        else:
            world = [r for r in ranges if _is_world(r)]
        if not world:
            return out
        allowed: set[int] = set()
        for allow in as_list(get(props, "allows")):
            proto = str(get(allow, "protocol", default="")).lower()
            if proto not in ("tcp", "all", "6"):
                continue
            ports = as_list(get(allow, "ports"))
            for spec in ports or [None]:
                allowed.update(_port_spec_hits(spec))
        if allowed:
            out.append(f"firewall allows {_names(allowed)} from {', '.join(world)}")
    elif resource_type in (AZ_NSG, AZ_SECURITY_RULE):
        rules = as_list(get(props, "securityRules")) if resource_type == AZ_NSG else [props]
        for rule in rules:
            inner = get(rule, "properties", default=rule)  # tolerate the ARM nesting
            if str(get(inner, "direction", default="")).lower() != "inbound":
                continue
            if str(get(inner, "access", default="")).lower() != "allow":
                continue
            if str(get(inner, "protocol", default="*")).lower() not in ("tcp", "*"):
                continue
            sources = as_list(get(inner, "sourceAddressPrefix")) + as_list(
                get(inner, "sourceAddressPrefixes")
            )
            world = [s for s in sources if _is_world(s)]
            if not world:
                continue
            specs = as_list(get(inner, "destinationPortRange")) + as_list(get(inner, "destinationPortRanges"))
            hits = sorted({p for spec in specs for p in _port_spec_hits(spec)})
            if hits:
                name = get(rule, "name", default=get(props, "securityRuleName", default="?"))
                out.append(f"security rule {name!r} allows {_names(hits)} from {', '.join(world)}")
    return out


# --------------------------------------------------------------------------- rule: storage


def check_storage_not_public(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if resource_type == AWS_BUCKET_PAB:
        keys = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        off = [k for k in keys if not _truthy(get(props, k))]
        if off:
            out.append(f"public access block must set all four flags true; not true: {', '.join(off)}")
    elif resource_type in AWS_BUCKETS + (AWS_BUCKET_ACL, AWS_BUCKET_ACL_V2):
        acl = str(get(props, "acl", default="")).lower()
        if acl in ("public-read", "public-read-write", "authenticated-read"):
            out.append(f"bucket ACL {acl!r} makes objects readable outside the account")
    elif resource_type == GCP_BUCKET:
        if not _truthy(get(props, "uniformBucketLevelAccess")):
            out.append("uniformBucketLevelAccess must be true (no per-object ACLs)")
        pap = get(props, "publicAccessPrevention")
        if str(pap).lower() != "enforced":
            out.append(f"publicAccessPrevention must be 'enforced', got {pap!r}")
    elif resource_type == AZ_STORAGE_ACCOUNT:
        value = get(props, "allowBlobPublicAccess")
        # Required explicitly: the default differs between Azure API versions.
        if not (value is False or str(value).lower() == "false"):
            out.append(f"allowBlobPublicAccess must be false, got {value!r}")
    return out


_SSE_ALGORITHMS = {"aws:kms", "aws:kms:dsse", "aes256"}


def check_storage_encrypted(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if resource_type in (AWS_BUCKET_SSE, AWS_BUCKET_SSE_V2):
        algos = [
            str(get(r, "applyServerSideEncryptionByDefault", "sseAlgorithm", default="")).lower()
            for r in as_list(get(props, "rules"))
        ]
        if not any(a in _SSE_ALGORITHMS for a in algos):
            out.append(
                f"no default encryption rule (sseAlgorithm aws:kms or AES256); got {algos or 'no rules'}"
            )
    elif resource_type == AWS_SQS_QUEUE:
        if not get(props, "kmsMasterKeyId") and get(props, "sqsManagedSseEnabled") is False:
            out.append("queue has neither kmsMasterKeyId nor sqsManagedSseEnabled")
    # GCS and Azure Storage encrypt at rest always; there is nothing to switch off.
    return out


def _policy_document(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        try:
            doc = json.loads(value)
        except ValueError:
            return None
        return doc if isinstance(doc, Mapping) else None
    return None


def denies_insecure_transport(policy: Any) -> bool:
    """Whether a bucket policy has Deny ... Condition Bool aws:SecureTransport = false."""
    doc = _policy_document(policy)
    if doc is None:
        return False
    for stmt in as_list(get(doc, "Statement")):
        if str(get(stmt, "Effect", default="")).lower() != "deny":
            continue
        cond = get(stmt, "Condition", default={})
        for op in ("Bool", "BoolIfExists"):
            value = get(cond, op, "aws:SecureTransport")
            if value is not None and str(value).lower() == "false":
                return True
    return False


def check_storage_tls_only(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if resource_type == AWS_BUCKET_POLICY:
        if not denies_insecure_transport(get(props, "policy")):
            out.append("bucket policy has no Deny statement on aws:SecureTransport = false")
    elif resource_type == AZ_STORAGE_ACCOUNT:
        if not _truthy(get(props, "enableHttpsTrafficOnly")):
            out.append(f"enableHttpsTrafficOnly must be true, got {get(props, 'enableHttpsTrafficOnly')!r}")
        tls = str(get(props, "minimumTlsVersion", default=""))
        if tls not in ("TLS1_2", "TLS1_3"):
            out.append(f"minimumTlsVersion must be TLS1_2 or newer, got {tls or None!r}")
    return out


# --------------------------------------------------------------------------- rule: IMDSv2


def check_imdsv2(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type not in AWS_VMS:
        return []
    meta = get(props, "metadataOptions", default={})
    if str(get(meta, "httpEndpoint", default="enabled")).lower() == "disabled":
        return []  # no metadata service at all is stricter still
    tokens = get(meta, "httpTokens")
    if tokens != "required":
        return [f"metadataOptions.httpTokens must be 'required' (IMDSv2), got {tokens!r}"]
    return []


# --------------------------------------------------------------------------- rule: no key in user data

# Where a VM's boot data sits; read-only roles and every process on the node can read it.
_BOOT_DATA = {
    AWS_INSTANCE: (("userData",), ("userDataBase64",)),
    AWS_LAUNCH_TEMPLATE: (("userData",),),
    AWS_SPOT_REQUEST: (("userData",), ("userDataBase64",)),
    GCP_INSTANCE: (("metadata",), ("metadataStartupScript",)),
    GCP_INSTANCE_TEMPLATE: (("metadata",), ("metadataStartupScript",)),
    AZ_VM: (("osProfile", "customData"), ("userData",)),
    AZ_VMSS: (("virtualMachineProfile", "osProfile", "customData"), ("virtualMachineProfile", "userData")),
}


def _texts(value: Any) -> list[str]:
    """Every string in `value`, plus the decoded text of strings that are base64 (user data and
    Azure custom data often are)."""
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _texts(v)]
    if _is_list(value):
        return [t for v in value for t in _texts(v)]
    if not isinstance(value, str):
        return []
    out = [value]
    try:
        out.append(base64.b64decode(value, validate=True).decode("utf-8", "replace"))
    except (binascii.Error, ValueError):
        pass
    return out


def check_no_key_in_boot_data(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """No private key in user data / metadata / custom data: deliver it through a secret store."""
    found = []
    for path in _BOOT_DATA.get(resource_type, ()):
        if any("PRIVATE KEY" in t for t in _texts(get(props, *path))):
            found.append(
                f"{'.'.join(path)} holds a private key; read-only roles and the node's metadata service "
                "can read it: deliver it through the cloud's secret store"
            )
    return found


# --------------------------------------------------------------------------- rule: GPU catalog


def check_gpu_from_catalog(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    shape = vm_shape(resource_type, props)
    if shape is None or not looks_like_gpu(shape) or catalog_entry_for(shape) is not None:
        return []
    offered = sorted(
        f"{e.instance_type}" + (f" + {e.gpus} x {e.gcp_accelerator_type}" if e.gcp_accelerator_type else "")
        for e in entries()
        if e.cloud == shape.cloud
    )
    asked = shape.instance_type + (
        f" + {shape.attached_count} x {shape.attached_type}" if shape.attached_count else ""
    )
    return [
        f"GPU type {asked!r} is not in the lepton catalog for {shape.cloud}; catalog types: {', '.join(offered)}"
    ]


# --------------------------------------------------------------------------- rule: tags


def required_tag_keys(resource_type: str) -> tuple[str, str]:
    return (LABEL_CLUSTER, LABEL_ENV) if resource_type.startswith("gcp:") else (TAG_CLUSTER, TAG_ENV)


def check_required_tags(
    resource_type: str, props: Mapping[str, Any], default_tags: Mapping[str, Any] | None = None
) -> list[str]:
    if resource_type not in TAGGED_TYPES:
        return []
    tags = dict(default_tags or {})
    tags.update(_tags_of(resource_type, props))
    missing = [k for k in required_tag_keys(resource_type) if not str(tags.get(k) or "").strip()]
    if missing:
        kind = "labels" if resource_type.startswith("gcp:") else "tags"
        return [f"missing {kind}: {', '.join(missing)}"]
    return []


# --------------------------------------------------------------------------- rule: lifetime limit


def _positive_int(value: Any) -> bool:
    try:
        return int(str(value).strip()) > 0
    except ValueError:
        return False


def check_lifetime_limit(
    resource_type: str, props: Mapping[str, Any], default_tags: Mapping[str, Any] | None = None
) -> list[str]:
    """Spot VMs and GPU VMs must carry a max-lifetime or idle-shutdown setting (the watchdog's)."""
    shape = vm_shape(resource_type, props)
    if shape is None:
        return []
    spot = is_spot(resource_type, props)
    if not spot and not looks_like_gpu(shape):
        return []
    tags = dict(default_tags or {})
    tags.update(_tags_of(resource_type, props))
    keys = (
        (LABEL_MAX_LIFETIME_HOURS, LABEL_IDLE_SHUTDOWN_MINUTES)
        if shape.cloud == "gcp"
        else (TAG_MAX_LIFETIME_HOURS, TAG_IDLE_SHUTDOWN_MINUTES)
    )
    out: list[str] = []
    for k in keys:
        if k in tags and not _positive_int(tags[k]):
            out.append(f"{k} must be a positive whole number, got {tags[k]!r}")
    if not any(k in tags and _positive_int(tags[k]) for k in keys):
        what = "spot" if spot else "GPU"
        out.append(f"{what} VM has no lifetime/idle limit: set {keys[0]} and/or {keys[1]}")
    return out


# --------------------------------------------------------------------------- rule: queues (advisory)


def check_queue_dead_letter(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type == AWS_SQS_QUEUE:
        if get(props, "redrivePolicy") is None and get(props, "redriveAllowPolicy") is None:
            return ["queue has no redrivePolicy (dead-letter queue): poison messages would loop forever"]
    elif resource_type == GCP_SUBSCRIPTION:
        if get(props, "deadLetterPolicy") is None:
            return ["subscription has no deadLetterPolicy: poison messages would loop forever"]
    return []


# --------------------------------------------------------------------------- stack rules


def _resource_refs(resource: Any) -> set[str]:
    """Identifiers another resource may use to point at this bucket (urn, id, name)."""
    refs = {resource.urn}
    for key in ("id", "bucket", "arn"):
        try:
            value = get(resource.props, key)
        except Exception:  # unknown during preview: the URN still links via dependencies
            value = None
        if isinstance(value, str) and value:
            refs.add(value)
    return refs


def _points_at(resource: Any, refs: set[str]) -> bool:
    deps = {d.urn for d in getattr(resource, "dependencies", []) or []}
    for ds in (getattr(resource, "property_dependencies", {}) or {}).values():
        deps.update(d.urn for d in ds)
    if deps & refs:
        return True
    try:
        target = get(resource.props, "bucket")
    except Exception:
        return False
    return isinstance(target, str) and target in refs


def _tls_only_or_unknown(props: Mapping[str, Any]) -> bool:
    """A policy document that denies plain HTTP, or one not known yet (during preview it is usually
    built from the bucket's ARN; `lepton-storage-tls-only` checks its content once it is known)."""
    try:
        return denies_insecure_transport(get(props, "policy"))
    except UnknownValueError:
        return True


def check_aws_buckets_guarded(resources: Sequence[Any]) -> list[tuple[str, str]]:
    """(message, bucket urn) for S3 buckets lacking a public-access block, encryption or TLS policy."""
    out: list[tuple[str, str]] = []
    for bucket in resources:
        if bucket.resource_type not in AWS_BUCKETS:
            continue
        refs = _resource_refs(bucket)
        attached = [r for r in resources if r is not bucket and _points_at(r, refs)]
        kinds = {r.resource_type for r in attached}
        missing = []
        if AWS_BUCKET_PAB not in kinds:
            missing.append("BucketPublicAccessBlock")
        inline_sse = get(bucket.props, "serverSideEncryptionConfiguration") is not None
        if not inline_sse and not kinds & {AWS_BUCKET_SSE, AWS_BUCKET_SSE_V2}:
            missing.append("BucketServerSideEncryptionConfiguration")
        policies = [r.props for r in attached if r.resource_type == AWS_BUCKET_POLICY] + [bucket.props]
        if not any(_tls_only_or_unknown(p) for p in policies):
            missing.append("TLS-only BucketPolicy")
        if missing:
            out.append((f"S3 bucket {bucket.name!r} is missing: {', '.join(missing)}", bucket.urn))
    return out


def check_max_gpus(resources: Sequence[Any], max_gpus: int) -> list[str]:
    counted = [(r.name, gpus_of(r.resource_type, r.props)) for r in resources]
    total = sum(n for _, n in counted)
    if total > max_gpus:
        top = ", ".join(f"{name}={n}" for name, n in counted if n)
        return [
            f"stack runs {total} GPUs, more than maxGpus={max_gpus} ({top}); raise maxGpus in the policy config"
        ]
    return []


# --------------------------------------------------------------------------- wiring as policies


ResourceCheck = Callable[[str, Mapping[str, Any]], list[str]]


def _resource_validate(check: ResourceCheck) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(args.resource_type, args.props):
            report_violation(message, None)

    return validate


def _tagged_validate(
    check: Callable[[str, Mapping[str, Any], Mapping[str, Any] | None], list[str]],
) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(args.resource_type, args.props, _provider_default_tags(args)):
            report_violation(message, None)

    return validate


def _validate_buckets(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    for message, urn in check_aws_buckets_guarded(args.resources):
        report_violation(message, urn)


def _validate_max_gpus(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    config = args.get_config() or {}
    limit = int(config.get("maxGpus", DEFAULT_MAX_GPUS))
    for message in check_max_gpus(args.resources, limit):
        report_violation(message, None)


MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY

no_world_admin_ports = ResourceValidationPolicy(
    name="lepton-no-world-admin-ports",
    description="SSH (22) and RDP (3389) must not be open to 0.0.0.0/0 or ::/0.",
    enforcement_level=MANDATORY,
    validate=_resource_validate(check_world_admin_ports),
)
storage_not_public = ResourceValidationPolicy(
    name="lepton-storage-not-public",
    description="Buckets block public access (S3 block-public-access x4, GCS uniform access + public "
    "access prevention enforced, Azure allowBlobPublicAccess false).",
    enforcement_level=MANDATORY,
    validate=_resource_validate(check_storage_not_public),
)
storage_encrypted = ResourceValidationPolicy(
    name="lepton-storage-encrypted",
    description="Bucket default encryption (S3 SSE-KMS/AES256) and queue encryption stay on.",
    enforcement_level=MANDATORY,
    validate=_resource_validate(check_storage_encrypted),
)
storage_tls_only = ResourceValidationPolicy(
    name="lepton-storage-tls-only",
    description="Storage is reachable over TLS only (S3 policy denies aws:SecureTransport=false; "
    "Azure HTTPS-only with TLS 1.2+).",
    enforcement_level=MANDATORY,
    validate=_resource_validate(check_storage_tls_only),
)
imdsv2_required = ResourceValidationPolicy(
    name="lepton-imdsv2-required",
    description="EC2 instances and launch templates require IMDSv2 (metadataOptions.httpTokens=required).",
    enforcement_level=MANDATORY,
    validate=_resource_validate(check_imdsv2),
)
no_key_in_boot_data = ResourceValidationPolicy(
    name="lepton-no-private-key-in-boot-data",
    description="VM user data, instance metadata and custom data hold no private key (secret stores do).",
    enforcement_level=MANDATORY,
    validate=_resource_validate(check_no_key_in_boot_data),
)
gpu_from_catalog = ResourceValidationPolicy(
    name="lepton-gpu-from-catalog",
    description="GPU instance types must be rows of the lepton accelerator catalog.",
    enforcement_level=MANDATORY,
    validate=_resource_validate(check_gpu_from_catalog),
)
required_tags = ResourceValidationPolicy(
    name="lepton-required-tags",
    description=f"Resources carry {TAG_CLUSTER} and {TAG_ENV} tags (GCP labels {LABEL_CLUSTER}, {LABEL_ENV}).",
    enforcement_level=MANDATORY,
    validate=_tagged_validate(check_required_tags),
)
lifetime_limit = ResourceValidationPolicy(
    name="lepton-lifetime-limit",
    description=f"Spot and GPU VMs carry {TAG_MAX_LIFETIME_HOURS} and/or {TAG_IDLE_SHUTDOWN_MINUTES} "
    f"(GCP labels {LABEL_MAX_LIFETIME_HOURS}, {LABEL_IDLE_SHUTDOWN_MINUTES}).",
    enforcement_level=MANDATORY,
    validate=_tagged_validate(check_lifetime_limit),
)
queue_dead_letter = ResourceValidationPolicy(
    name="lepton-queue-dead-letter",
    description="Job queues have a dead-letter queue (SQS redrive, Pub/Sub deadLetterPolicy).",
    enforcement_level=ADVISORY,
    validate=_resource_validate(check_queue_dead_letter),
)
aws_buckets_guarded = StackValidationPolicy(
    name="lepton-aws-buckets-guarded",
    description="Every S3 bucket has a public access block, default encryption and a TLS-only policy.",
    enforcement_level=MANDATORY,
    validate=_validate_buckets,
)
max_gpus = StackValidationPolicy(
    name="lepton-max-gpus",
    description=f"The stack runs at most maxGpus GPUs in total (default {DEFAULT_MAX_GPUS}).",
    enforcement_level=MANDATORY,
    config_schema=PolicyConfigSchema(
        properties={"maxGpus": {"type": "integer", "minimum": 0, "default": DEFAULT_MAX_GPUS}}
    ),
    validate=_validate_max_gpus,
)

RESOURCE_POLICIES: list[ResourceValidationPolicy] = [
    no_world_admin_ports,
    storage_not_public,
    storage_encrypted,
    storage_tls_only,
    imdsv2_required,
    no_key_in_boot_data,
    gpu_from_catalog,
    required_tags,
    lifetime_limit,
    queue_dead_letter,
]
STACK_POLICIES: list[StackValidationPolicy] = [aws_buckets_guarded, max_gpus]
POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [*RESOURCE_POLICIES, *STACK_POLICIES]
