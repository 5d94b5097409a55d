"""A GCP node's identity: its own service account (or an existing one), allowed exactly the pool's
bucket and queue through resource-level IAM members, never a project-level role."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_gcp import pubsub, serviceaccount, storage

from lepton_infra.components.common import unwrap
from lepton_infra.components.gcp.apis import after
from lepton_infra.components.gcp.names import gcp_slug, service_account_id


class GcpNodeIdentity(pulumi.ComponentResource):
    """The nodes' service account (a dedicated one unless an existing email is given), granted
    exactly what the data plane's clients call, each as a resource-level IAM member (no
    project-level role): the bucket (objectAdmin); publisher on the jobs and dead-letter topics
    (enqueue; the client dead-letters a bad message itself); subscriber on both subscriptions (pull,
    extend, ack; reading dead letters); viewer on the subscription (GetSubscription: its dead-letter
    policy) and on the dead-letter topic (ListTopicSubscriptions needs pubsub.topics.get there)."""

    account: serviceaccount.Account | None
    email: pulumi.Output[str]
    bucket_member: storage.BucketIAMMember | None
    subscriber_member: pubsub.SubscriptionIAMMember | None
    publisher_member: pubsub.TopicIAMMember | None
    queue_members: list[pulumi.Resource]

    def __init__(
        self,
        name: str,
        *,
        project: str,
        store: Any = None,
        queue: Any = None,
        service_account_email: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lepton:gcp:NodeIdentity", name, None, opts)
        stem = gcp_slug(name)
        store, queue = unwrap(store), unwrap(queue)
        if service_account_email is None:
            self.account = serviceaccount.Account(
                f"{stem}-sa",
                serviceaccount.AccountArgs(
                    project=project,
                    account_id=service_account_id(name, project),
                    display_name=f"lepton nodes of {name}"[:100],
                    description="Dedicated identity of lepton GPU nodes: only its cluster's bucket and queue.",
                ),
                opts=after(self, opts),
            )
            self.email = self.account.email
        else:
            self.account = None
            self.email = pulumi.Output.from_input(service_account_email)
        member = self.email.apply(lambda e: f"serviceAccount:{e}")
        self.bucket_member = None
        if store is not None:
            self.bucket_member = storage.BucketIAMMember(
                f"{stem}-bucket-rw",
                storage.BucketIAMMemberArgs(
                    bucket=store.bucket.name, role="roles/storage.objectAdmin", member=member
                ),
                opts=after(self, opts),
            )
        self.subscriber_member = None
        self.publisher_member = None
        self.queue_members = []
        if queue is not None:

            def on_subscription(suffix: str, subscription: Any, role: str) -> pubsub.SubscriptionIAMMember:
                return pubsub.SubscriptionIAMMember(
                    f"{stem}-{suffix}",
                    pubsub.SubscriptionIAMMemberArgs(
                        project=project, subscription=subscription.name, role=role, member=member
                    ),
                    opts=after(self, opts),
                )

            def on_topic(suffix: str, topic: Any, role: str) -> pubsub.TopicIAMMember:
                return pubsub.TopicIAMMember(
                    f"{stem}-{suffix}",
                    pubsub.TopicIAMMemberArgs(project=project, topic=topic.name, role=role, member=member),
                    opts=after(self, opts),
                )

            self.subscriber_member = on_subscription(
                "queue-sub", queue.subscription, "roles/pubsub.subscriber"
            )
            self.publisher_member = on_topic("queue-pub", queue.topic, "roles/pubsub.publisher")
            self.queue_members = [
                self.subscriber_member,
                self.publisher_member,
                on_subscription("queue-view", queue.subscription, "roles/pubsub.viewer"),
                on_topic("dlq-pub", queue.dead_letter_topic, "roles/pubsub.publisher"),
                on_topic("dlq-view", queue.dead_letter_topic, "roles/pubsub.viewer"),
                on_subscription("dlq-sub", queue.dead_letter_subscription, "roles/pubsub.subscriber"),
            ]
        self.register_outputs({"email": self.email})
