"""Google Cloud implementations of the lepton components: a VPC with its firewall, a dedicated node
service account, a GCS bucket, a Pub/Sub queue with a dead-letter topic, and a pool of GPU Compute
Engine instances that boot with the neutral layer's cloud-init.

The neutral layer drives the pool (`components/pool.py`: plan -> network -> host keys -> secrets ->
identities -> grants -> user data -> instances -> outputs); this package supplies GCP's part of each
step, one room per part:

    plan.py       the checks and decisions, once, before anything is registered (`GcpPlan`)
    location.py   project, region and zone (shared by the pool, store and queue)
    names.py      resource-name stems and the per-project unique names
    apis.py       the Google APIs enabled on request (`extra={"enable_apis": True}`)
    network.py    VPC, subnet, Cloud NAT, firewall, compact placement (`GcpNetwork`)
    secrets.py    each node's host key in Secret Manager, readable by that node (`GcpHostKeySecret`)
    identity.py   each node's service account and its grants on the store and queue (`GcpNodeIdentity`)
    image.py      the image a node boots (default family, resolved once per deploy)
    boot.py       GCP's additions to the node's cloud-init (guest agent, python finder)
    instance.py   the instance arguments and the node's addresses
    store.py      `GcpObjectStore` (GCS)
    queue.py      `GcpJobQueue` (Pub/Sub)
    pool.py       `GcpGpuVmPool`, the hooks the neutral sequence calls

`extra={"enable_apis": True}` on a pool, store or queue enables the Google APIs that component
calls (`POOL_APIS`, `STORE_APIS`, `QUEUE_APIS`) before its first resource, for a fresh project; it
needs `serviceusage.services.enable` (e.g. Editor) and never disables an API on destroy.
"""

from lepton_infra.components.gcp.apis import POOL_APIS, QUEUE_APIS, STORE_APIS, enable_apis, pop_enable_apis
from lepton_infra.components.gcp.boot import (
    FIND_PYTHON,
    FIND_PYTHON_PATH,
    GCP_BOOT,
    GUEST_AGENT_CONFIG,
    PYTHON_PLACES,
    PYTHON_WRAPPER,
)
from lepton_infra.components.gcp.identity import GcpNodeIdentity
from lepton_infra.components.gcp.image import (
    DEFAULT_IMAGE,
    DEFAULT_IMAGE_FAMILY,
    DEFAULT_IMAGE_PROJECT,
    boot_image,
    check_image,
)
from lepton_infra.components.gcp.instance import BOOT_DISK_TYPE, CLOUD_PLATFORM_SCOPE, GVNIC_FAMILIES
from lepton_infra.components.gcp.location import (
    DEFAULT_REGION,
    check_region,
    default_zone,
    resolve_project,
    resolve_region,
    zone_region_of,
)
from lepton_infra.components.gcp.names import gcp_slug, host_key_secret_id, node_tag, service_account_id
from lepton_infra.components.gcp.network import (
    COMPACT_PLACEMENT_FAMILIES,
    DEFAULT_SUBNET_CIDR,
    GcpNetwork,
    compact_placement,
)
from lepton_infra.components.gcp.plan import GcpPlan, check_identity_mapping, check_network_mapping, plan_pool
from lepton_infra.components.gcp.pool import GcpGpuVmPool
from lepton_infra.components.gcp.queue import (
    ACK_DEADLINE_RANGE,
    DELIVERY_ATTEMPTS_RANGE,
    MESSAGE_RETENTION,
    GcpJobQueue,
    check_queue_limits,
)
from lepton_infra.components.gcp.secrets import GcpHostKeySecret, host_key_fetch
from lepton_infra.components.gcp.store import GcpObjectStore

__all__ = [
    "ACK_DEADLINE_RANGE",
    "BOOT_DISK_TYPE",
    "CLOUD_PLATFORM_SCOPE",
    "COMPACT_PLACEMENT_FAMILIES",
    "DEFAULT_IMAGE",
    "DEFAULT_IMAGE_FAMILY",
    "DEFAULT_IMAGE_PROJECT",
    "DEFAULT_REGION",
    "DEFAULT_SUBNET_CIDR",
    "DELIVERY_ATTEMPTS_RANGE",
    "FIND_PYTHON",
    "FIND_PYTHON_PATH",
    "GCP_BOOT",
    "GUEST_AGENT_CONFIG",
    "GVNIC_FAMILIES",
    "MESSAGE_RETENTION",
    "POOL_APIS",
    "PYTHON_PLACES",
    "PYTHON_WRAPPER",
    "QUEUE_APIS",
    "STORE_APIS",
    "GcpGpuVmPool",
    "GcpHostKeySecret",
    "GcpJobQueue",
    "GcpNetwork",
    "GcpNodeIdentity",
    "GcpObjectStore",
    "GcpPlan",
    "boot_image",
    "check_identity_mapping",
    "check_image",
    "check_network_mapping",
    "check_queue_limits",
    "check_region",
    "compact_placement",
    "default_zone",
    "enable_apis",
    "gcp_slug",
    "host_key_fetch",
    "host_key_secret_id",
    "node_tag",
    "plan_pool",
    "pop_enable_apis",
    "resolve_project",
    "resolve_region",
    "service_account_id",
    "zone_region_of",
]
