"""A Pub/Sub job queue: topic and pull subscription with a dead-letter topic (and its subscription,
so dead letters are kept), within Pub/Sub's own limits, and the grants its service agent needs."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_gcp import organizations, pubsub

from lepton_infra.components.args import JobQueueArgs
from lepton_infra.components.common import child, cluster_env, gcp_labels, merge_extra, tags_for, typed_args
from lepton_infra.components.gcp.apis import QUEUE_APIS, enable_apis, pop_enable_apis
from lepton_infra.components.gcp.location import resolve_project
from lepton_infra.components.gcp.names import gcp_slug
from lepton_infra.errors import ConfigError

# Pub/Sub's own limits (API reference): ack deadline 10..600 s, max delivery attempts 5..100.
ACK_DEADLINE_RANGE = (10, 600)
DELIVERY_ATTEMPTS_RANGE = (5, 100)
# Seven days, Pub/Sub's maximum retention for unacknowledged messages.
MESSAGE_RETENTION = "604800s"


def check_queue_limits(visibility_timeout_s: int, max_receive_count: int) -> None:
    """ConfigError unless both fit Pub/Sub's ranges (ack deadline 10-600 s, 5-100 deliveries)."""
    lo, hi = ACK_DEADLINE_RANGE
    if isinstance(visibility_timeout_s, bool) or not isinstance(visibility_timeout_s, int):
        raise ConfigError(
            f"visibility_timeout_s must be a whole number of seconds, got {visibility_timeout_s!r}"
        )
    if not lo <= visibility_timeout_s <= hi:
        raise ConfigError(
            f"visibility_timeout_s={visibility_timeout_s} is outside what Pub/Sub allows for a "
            f"subscription's ack deadline: {lo} to {hi} seconds"
        )
    lo, hi = DELIVERY_ATTEMPTS_RANGE
    if isinstance(max_receive_count, bool) or not isinstance(max_receive_count, int):
        raise ConfigError(f"max_receive_count must be a whole number, got {max_receive_count!r}")
    if not lo <= max_receive_count <= hi:
        raise ConfigError(
            f"max_receive_count={max_receive_count} is outside what Pub/Sub allows for a dead-letter "
            f"policy's max_delivery_attempts: {lo} to {hi}"
        )


class GcpJobQueue(pulumi.ComponentResource):
    """A Pub/Sub topic and pull subscription (ack deadline = `visibility_timeout_s`) with a dead-letter
    topic after `max_receive_count` deliveries, and a subscription on that topic so dead letters are
    kept (Pub/Sub drops messages published to a topic nobody subscribes to). Pub/Sub encrypts at rest
    with Google-managed keys by default; a CMEK via `extra={"kms_key_name": ...}` (applied to both
    topics). Other `extra` keys go to the main subscription.

    Outputs: `url` (`projects/<p>/subscriptions/<name>`, what consumers pull from), `topic_url`
    (`projects/<p>/topics/<name>`, where producers publish) and `dead_letter_url` (the dead-letter
    subscription's path)."""

    topic: pubsub.Topic
    subscription: pubsub.Subscription
    dead_letter_topic: pubsub.Topic
    dead_letter_subscription: pubsub.Subscription
    apis: list[Any]
    url: pulumi.Output[str]
    topic_url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lepton:gcp:JobQueue", name, None, opts)
        extra = dict(args.extra or {})
        project = resolve_project(extra)
        check_queue_limits(args.visibility_timeout_s, args.max_receive_count)
        kms_key_name = extra.pop("kms_key_name", None)
        self.apis = enable_apis(self, gcp_slug(name), project, QUEUE_APIS) if pop_enable_apis(extra) else []
        labels = gcp_labels(tags_for(*cluster_env(args, name), args.tags))
        stem = gcp_slug(name)
        never_expire = pubsub.SubscriptionExpirationPolicyArgs(ttl="")

        self.topic = pubsub.Topic(
            f"{stem}-jobs",
            pubsub.TopicArgs(project=project, labels=labels, kms_key_name=kms_key_name),
            opts=child(self, depends_on=self.apis),
        )
        self.dead_letter_topic = pubsub.Topic(
            f"{stem}-dead",
            pubsub.TopicArgs(project=project, labels=labels, kms_key_name=kms_key_name),
            opts=child(self, depends_on=self.apis),
        )
        self.dead_letter_subscription = pubsub.Subscription(
            f"{stem}-dead",
            pubsub.SubscriptionArgs(
                project=project,
                topic=self.dead_letter_topic.id,
                labels=labels,
                ack_deadline_seconds=args.visibility_timeout_s,
                message_retention_duration=MESSAGE_RETENTION,
                expiration_policy=never_expire,
            ),
            opts=child(self, depends_on=self.apis),
        )
        base: dict[str, Any] = {
            "project": project,
            "topic": self.topic.id,
            "labels": labels,
            "ack_deadline_seconds": args.visibility_timeout_s,
            "message_retention_duration": MESSAGE_RETENTION,
            # Pub/Sub deletes a subscription after 31 idle days by default; a job queue must not vanish.
            "expiration_policy": {"ttl": ""},
            "dead_letter_policy": {
                "dead_letter_topic": self.dead_letter_topic.id,
                "max_delivery_attempts": args.max_receive_count,
            },
            # Back off between redeliveries so a poison message does not spin until it dead-letters.
            "retry_policy": {"minimum_backoff": "10s", "maximum_backoff": "600s"},
        }
        spec = {k: v for k, v in merge_extra(base, extra).items() if v is not None}
        self.subscription = pubsub.Subscription(
            f"{stem}-jobs",
            typed_args(pubsub.SubscriptionArgs, spec),
            opts=child(self, depends_on=self.apis),
        )

        # Dead-lettering is done by the project's Pub/Sub service agent: it must be allowed to publish
        # to the dead-letter topic and to ack on the source subscription, or messages never move.
        project_number = organizations.get_project_output(
            project_id=project, opts=pulumi.InvokeOutputOptions(parent=self, depends_on=self.apis)
        ).number
        agent = project_number.apply(
            lambda n: f"serviceAccount:service-{n}@gcp-sa-pubsub.iam.gserviceaccount.com"
        )
        self.agent_publisher = pubsub.TopicIAMMember(
            f"{stem}-dead-pub",
            pubsub.TopicIAMMemberArgs(
                project=project,
                topic=self.dead_letter_topic.name,
                role="roles/pubsub.publisher",
                member=agent,
            ),
            opts=child(self, depends_on=self.apis),
        )
        self.agent_subscriber = pubsub.SubscriptionIAMMember(
            f"{stem}-jobs-agent",
            pubsub.SubscriptionIAMMemberArgs(
                project=project,
                subscription=self.subscription.name,
                role="roles/pubsub.subscriber",
                member=agent,
            ),
            opts=child(self, depends_on=self.apis),
        )

        self.url = self.subscription.name.apply(lambda n: f"projects/{project}/subscriptions/{n}")
        self.topic_url = self.topic.name.apply(lambda n: f"projects/{project}/topics/{n}")
        self.dead_letter_url = self.dead_letter_subscription.name.apply(
            lambda n: f"projects/{project}/subscriptions/{n}"
        )
        self.register_outputs(
            {"url": self.url, "topic_url": self.topic_url, "dead_letter_url": self.dead_letter_url}
        )
