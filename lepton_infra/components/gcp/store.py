"""A GCS bucket with lepton's secure defaults, the store a cluster's nodes may use."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_gcp import storage

from lepton_infra.components.args import ObjectStoreArgs
from lepton_infra.components.common import child, cluster_env, gcp_labels, merge_extra, tags_for, typed_args
from lepton_infra.components.gcp.apis import STORE_APIS, enable_apis, pop_enable_apis
from lepton_infra.components.gcp.location import resolve_project, resolve_region
from lepton_infra.components.gcp.names import gcp_slug


class GcpObjectStore(pulumi.ComponentResource):
    """A GCS bucket: uniform bucket-level access, public access prevention enforced, versioning,
    optional expiry after `retention_days`, labels. Encrypted at rest with Google-managed keys by
    default; a CMEK via `extra={"encryption": {"default_kms_key_name": ...}}`. Output `url` is
    `gs://<bucket>`."""

    bucket: storage.Bucket
    url: pulumi.Output[str]
    apis: list[Any]

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lepton:gcp:ObjectStore", name, None, opts)
        extra = dict(args.extra or {})
        project = resolve_project(extra)
        self.apis = enable_apis(self, gcp_slug(name), project, STORE_APIS) if pop_enable_apis(extra) else []
        region = resolve_region(args.region)
        retention = args.retention_days
        labels = gcp_labels(tags_for(*cluster_env(args, name), args.tags))
        rules: list[dict[str, Any]] = []
        if retention is not None:
            rules.append({"action": {"type": "Delete"}, "condition": {"age": retention}})
            if args.versioning:
                # Deleting a live object in a versioned bucket only makes it noncurrent: expire those too.
                rules.append(
                    {
                        "action": {"type": "Delete"},
                        "condition": {"days_since_noncurrent_time": retention, "with_state": "ARCHIVED"},
                    }
                )
        base: dict[str, Any] = {
            "project": project,
            "location": region.upper(),
            "uniform_bucket_level_access": True,
            "public_access_prevention": "enforced",
            "versioning": {"enabled": bool(args.versioning)},
            "lifecycle_rules": rules or None,
            "labels": labels,
            "force_destroy": bool(args.force_destroy),
        }
        spec = {k: v for k, v in merge_extra(base, extra).items() if v is not None}
        self.bucket = storage.Bucket(
            f"{gcp_slug(name)}-bucket",
            typed_args(storage.BucketArgs, spec),
            opts=child(self, depends_on=self.apis),
        )
        self.url = self.bucket.name.apply(lambda n: f"gs://{n}")
        self.register_outputs({"url": self.url, "bucket": self.bucket.name})
