"""A run on a real sshd node reaches a queue and a bucket outside us-east-1 (moto, eu-west-1) with
nothing on the node but an endpoint and credentials, as a cloud node has them from its identity: the
region comes from the inventory, as every cloud's stack writes it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from lepton_infra.data import open_store
from lepton_infra.data.emulators import Emulator
from lepton_infra.inventory import Inventory
from lepton_infra.local import LocalPool
from lepton_infra.workload import run_job

JOB = """\
import os, sys
import boto3
boto3.client("sqs").send_message(QueueUrl=sys.argv[1], MessageBody=os.environ["LEPTON_NODE_NAME"])
with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "done.txt"), "w") as f:
    f.write(boto3.session.Session().region_name)
"""


@pytest.mark.slow
def test_node_clients_reach_a_queue_and_bucket_outside_us_east_1(
    local_pool: LocalPool, moto_emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in moto_emulator.env.items():  # the controller: the deployer's own profile
        monkeypatch.setenv(key, value)
    region = moto_emulator.env["AWS_DEFAULT_REGION"]
    assert region != "us-east-1"
    bucket = f"lepton-region-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    queue = boto3.client("sqs").create_queue(QueueName=f"lepton-region-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    pool = Inventory.load(local_pool.inventory_path)
    inventory = pool.model_copy(
        update={"cloud": "aws", "region": region, "store": f"s3://{bucket}/p", "nodes": pool.nodes[:1]}
    )
    # What a node has without being told: where the service is and who it is, not the region.
    node_env = {k: v for k, v in moto_emulator.env.items() if k != "AWS_DEFAULT_REGION"}
    workload = tmp_path / "wl"
    workload.mkdir()
    (workload / "train.py").write_text(JOB)

    result = run_job(inventory, workload, [queue], run_id="eu", runs_dir=tmp_path / "runs", env=node_env)

    log = (tmp_path / "runs" / "eu" / "node-0" / "logs" / "node.log").read_text()
    assert result.status == "succeeded", log
    got = boto3.client("sqs").receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in got] == ["node-0"]
    # The node's uploader put its results into the eu-west-1 bucket too.
    stored = open_store(inventory.store or "").manifest("runs/eu/node-0")
    assert stored is not None and "output/done.txt" in stored["files"]
    assert (tmp_path / "runs" / "eu" / "node-0" / "output" / "done.txt").read_text() == region


def test_controller_opens_the_clusters_store_and_queue_in_the_clusters_region(
    local_pool: LocalPool, moto_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployer's own profile names another region (us-east-1); the inventory's wins."""
    from lepton_infra.workload.sweep import open_plane

    for key, value in moto_emulator.env.items():
        monkeypatch.setenv(key, value)
    region = moto_emulator.env["AWS_DEFAULT_REGION"]
    bucket = f"lepton-region-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    sqs, name = boto3.client("sqs"), f"lepton-region-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 5})
    queue = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    inventory = Inventory.load(local_pool.inventory_path).model_copy(
        update={"cloud": "aws", "region": region, "store": f"s3://{bucket}/p", "queue": queue}
    )
    store, opened = open_plane(inventory)  # checks both: a queue looked up in us-east-1 does not exist
    opened.send('{"probe": 1}')
    assert store.url == f"s3://{bucket}/p"
    got = boto3.client("sqs", region_name=region).receive_message(QueueUrl=queue, WaitTimeSeconds=1)
    assert [m["Body"] for m in got.get("Messages", [])] == ['{"probe": 1}']
