"""The data plane's client packages a node needs, pinned, one list per cloud, in this one place: the
first boot installs them (`components/node_clients.py`), and the workload layer brings them to a node
that lacks them (`workload/clients.py`, e.g. a private node with no package index). The node-side
uploader, the sweep worker and `train.py --data-dir <store URL>` import them with the inventory's
interpreter.

Why these: obstore talks to S3, GCS and Azure Blob for results (all clouds); GCS also goes through
google-cloud-storage (`lepton_infra.data.store_gcs`); the sweep queue needs boto3 (SQS),
google-cloud-pubsub (Pub/Sub) or azure-storage-queue with azure-identity (Azure Storage Queues with
the VM's managed identity). Each version lies inside pyproject.toml's range for the same package
(a test checks), so nodes run what the test suite runs. Pure data."""

from __future__ import annotations

# Exact versions (first boot must be reproducible): those the test suite ran against when they were
# pinned (2026-12-02), each inside pyproject.toml's range.
ALL_CLOUDS: tuple[str, ...] = ("obstore==0.12.1",)
PER_CLOUD: dict[str, tuple[str, ...]] = {
    "aws": ("boto3==1.44.8",),
    "gcp": ("google-cloud-storage==3.17.1", "google-cloud-pubsub==2.39.0"),
    "azure": ("azure-storage-queue==12.18.1", "azure-identity==1.27.0"),
}


def packages(cloud: str) -> tuple[str, ...]:
    """The pinned requirements a node on `cloud` installs (`name==version`)."""
    if cloud not in PER_CLOUD:
        raise ValueError(f"cloud is {cloud!r}; allowed: {', '.join(sorted(PER_CLOUD))}")
    return ALL_CLOUDS + PER_CLOUD[cloud]
