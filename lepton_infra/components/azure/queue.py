"""`AzureJobQueue`: a storage queue and its `<queue>-poison` queue in their own storage account.

Azure queues have no server-side redrive. The poison queue follows Azure's own convention
(`<queue>-poison`, as Functions/WebJobs use): the data-plane client moves a message whose
`dequeue_count` exceeds `max_receive_count` there, and passes `visibility_timeout_s` on every
receive (Azure has no queue-level visibility timeout). Both numbers are stored as metadata on the
queue, so clients read them from the queue itself. The nodes' identity holds "Storage Queue Data
Contributor" on the queue and on its poison queue, scoped to each queue (`identity.py`)."""

from __future__ import annotations

import pulumi
import pulumi_azure_native.resources as resources
import pulumi_azure_native.storage as storage

from lepton_infra.components.args import JobQueueArgs
from lepton_infra.components.azure.account import account_home, account_inputs
from lepton_infra.components.azure.arm import azure_slug
from lepton_infra.components.common import child

POISON_SUFFIX = "-poison"
QUEUE_ENDPOINT_SUFFIX = "queue.core.windows.net"  # public Azure cloud; sovereign clouds differ


class AzureJobQueue(pulumi.ComponentResource):
    """A storage queue and its `<queue>-poison` queue in their own locked-down storage account.
    Outputs `url` and `dead_letter_url` (`https://<account>.queue.core.windows.net/<queue>`). Azure
    has no server-side redrive: clients honour `visibility_timeout_s` and `max_receive_count` (stored
    as the queue's metadata) and move a message received too often to the poison queue."""

    url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]
    account_name: pulumi.Output[str]
    queue_name: str
    poison_queue_name: str
    resource_group: resources.ResourceGroup | None
    resource_group_name: pulumi.Input[str]
    account: storage.StorageAccount
    queue: storage.Queue
    poison_queue: storage.Queue

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        inputs = account_inputs(args)  # a bad location or `extra` fails before anything is registered
        super().__init__("lepton:azure:JobQueue", name, None, opts)
        home = account_home(self, name, args, inputs)
        self.resource_group, self.resource_group_name = home.resource_group, home.resource_group_name
        self.account, self.account_name = home.account, home.account_name
        # Leave room for the suffix: queue names are at most 63 characters.
        self.queue_name = azure_slug(name, 63 - len(POISON_SUFFIX))
        self.poison_queue_name = self.queue_name + POISON_SUFFIX
        # Metadata names must be C# identifiers (no '-' or ':'); Azure stores them lowercase.
        self.queue = self._queue(
            f"{name}-jobs",
            self.queue_name,
            {
                "lepton_cluster": home.cluster,
                "lepton_visibility_timeout_s": str(args.visibility_timeout_s),
                "lepton_max_receive_count": str(args.max_receive_count),
                "lepton_poison_queue": self.poison_queue_name,
            },
        )
        self.poison_queue = self._queue(
            f"{name}-poison",
            self.poison_queue_name,
            {"lepton_cluster": home.cluster, "lepton_poison_of": self.queue_name},
        )
        self.url = self._url(self.queue, self.queue_name)
        self.dead_letter_url = self._url(self.poison_queue, self.poison_queue_name)
        self.register_outputs({"url": self.url, "dead_letter_url": self.dead_letter_url})

    def _queue(self, resource_name: str, queue_name: str, metadata: dict[str, str]) -> storage.Queue:
        return storage.Queue(
            resource_name,
            storage.QueueArgs(
                account_name=self.account_name,
                resource_group_name=self.resource_group_name,
                queue_name=queue_name,
                metadata=metadata,
            ),
            opts=child(self),
        )

    def _url(self, queue: storage.Queue, queue_name: str) -> pulumi.Output[str]:
        return pulumi.Output.all(self.account_name, queue.id).apply(
            lambda v: f"https://{v[0]}.{QUEUE_ENDPOINT_SUFFIX}/{queue_name}"
        )
