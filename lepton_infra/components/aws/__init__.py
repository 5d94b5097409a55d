"""AWS: a GPU pool of EC2 instances with IMDSv2 and pinned host keys, an S3 bucket locked down (block
public access x4, owner-enforced, SSE-KMS, TLS-only, versioned) and an SQS queue with a dead-letter
queue. The neutral layer (`components.pool.build_pool`) drives the pool's sequence; each module here
is one of AWS's parts:

- `plan`: the checks and decisions made before anything is registered (`AwsPlan`).
- `network`: VPC, subnet, the way out (internet or NAT gateway, or endpoints only), security group.
- `placement`: the availability zone, and for EFA types the placement group and EFA interfaces.
- `secrets`: each node's host key in Secrets Manager, readable by that node's role alone.
- `identity`: each node's IAM role and instance profile, allowed exactly the bucket and queue.
- `instance`: a node's `ec2.InstanceArgs` (secure defaults, image, `extra`).
- `pool`: `AwsGpuVmPool`, the hooks that hand each step to the modules above.
- `store`, `queue`: `AwsObjectStore`, `AwsJobQueue`."""

from lepton_infra.components.aws.identity import AwsNodeIdentity
from lepton_infra.components.aws.network import NAT_SUBNET_CIDR, SUBNET_CIDR, VPC_CIDR, AwsNetwork
from lepton_infra.components.aws.placement import EFA_NETWORK_CARDS
from lepton_infra.components.aws.plan import DEEP_LEARNING_AMI_PARAMETER, AwsPlan
from lepton_infra.components.aws.pool import AwsGpuVmPool
from lepton_infra.components.aws.queue import AwsJobQueue
from lepton_infra.components.aws.secrets import AwsHostKeySecrets, host_key_fetch, host_key_secret_policy
from lepton_infra.components.aws.store import AwsObjectStore

__all__ = [
    "DEEP_LEARNING_AMI_PARAMETER",
    "EFA_NETWORK_CARDS",
    "NAT_SUBNET_CIDR",
    "SUBNET_CIDR",
    "VPC_CIDR",
    "AwsGpuVmPool",
    "AwsHostKeySecrets",
    "AwsJobQueue",
    "AwsNetwork",
    "AwsNodeIdentity",
    "AwsObjectStore",
    "AwsPlan",
    "host_key_fetch",
    "host_key_secret_policy",
]
