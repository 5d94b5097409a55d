"""GCP resource names: stems every child's logical name is built from, and the few names GCP wants
unique per project (service account IDs, network tags, secret IDs), derived from the component's
name, the GCP project and the stack so re-running keeps them and two stacks never share one."""

from __future__ import annotations

import hashlib
import re

import pulumi


def gcp_slug(name: str, max_len: int = 40) -> str:
    """`name` as a GCP resource-name stem: lowercase letters, digits and hyphens, starting with a
    letter. Child logical names use it, so Pulumi's auto-names (stem + random suffix) are valid."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    slug = re.sub(r"-{2,}", "-", slug).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"l-{slug}".rstrip("-")
    return slug[:max_len].rstrip("-")


def stable_suffix(name: str, project: str) -> str:
    """Six hex digits, deterministic per (GCP project, Pulumi project, stack, component name): two
    stacks in one GCP project never share a service account ID or network tag, and re-running keeps
    the same names."""
    key = f"{project}/{pulumi.get_project()}/{pulumi.get_stack()}/{name}"
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def service_account_id(name: str, project: str) -> str:
    """An `account_id` (6-30 chars, `[a-z][-a-z0-9]*[a-z0-9]`) unique to this component and stack."""
    return f"{gcp_slug(name, 23)}-{stable_suffix(name, project)}"


def node_tag(name: str, project: str) -> str:
    """The network tag on the pool's instances; the firewall rules target exactly this tag."""
    return f"{gcp_slug(name, 45)}-node-{stable_suffix(name, project)}"


def host_key_secret_id(name: str, project: str, i: int) -> str:
    """The Secret Manager ID of node `i`'s host key in pool `name` (unique per project and stack)."""
    return f"{gcp_slug(name, 40)}-{stable_suffix(name, project)}-host-key-{i}"
