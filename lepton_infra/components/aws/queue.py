"""The job queue on AWS: an encrypted SQS queue with its dead-letter queue."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws.sqs as sqs

from lepton_infra.components.args import JobQueueArgs
from lepton_infra.components.common import child, cluster_env, merge_extra, tags_for, typed_args


class AwsJobQueue(pulumi.ComponentResource):
    """An SQS queue with server-side encryption and a dead-letter queue: a message received
    `max_receive_count` times without being deleted moves there. Outputs `url`, `dead_letter_url`."""

    url: pulumi.Output[str]
    dead_letter_url: pulumi.Output[str]
    queue: sqs.Queue
    dead_letter_queue: sqs.Queue

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        cluster, env = cluster_env(args, name)
        tags = tags_for(cluster, env, args.tags)
        region = args.region
        base: dict[str, Any] = {
            "sqs_managed_sse_enabled": True,
            "visibility_timeout_seconds": args.visibility_timeout_s,
            "message_retention_seconds": 4 * 24 * 3600,
            "redrive_policy": None,  # set below, once the dead-letter queue exists
            "tags": tags,
            "region": region,
        }
        # A misspelled `extra` key fails here, before any resource exists.
        typed_args(sqs.QueueArgs, merge_extra(base, args.extra))
        super().__init__("lepton:aws:JobQueue", name, None, opts)
        self.dead_letter_queue = sqs.Queue(
            f"{name}-dlq",
            sqs_managed_sse_enabled=True,
            message_retention_seconds=14 * 24 * 3600,
            tags=tags,
            region=region,
            opts=child(self),
        )
        max_receives = args.max_receive_count
        base["redrive_policy"] = self.dead_letter_queue.arn.apply(
            lambda arn: json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
        )
        self.queue = sqs.Queue(
            f"{name}-queue", typed_args(sqs.QueueArgs, merge_extra(base, args.extra)), opts=child(self)
        )
        self.url = self.queue.url
        self.dead_letter_url = self.dead_letter_queue.url
        self.register_outputs({"url": self.url, "dead_letter_url": self.dead_letter_url})
