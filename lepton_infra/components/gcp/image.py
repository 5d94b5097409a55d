"""The image a GCP node boots: the default (a Deep Learning VM family), the forms `image` may take,
and the family resolved to its current image at deploy time, so the instance names one version."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pulumi
from pulumi_gcp import compute

from lepton_infra.components.common import new_node_image
from lepton_infra.errors import ConfigError

# Deep Learning VM image with PyTorch and a preinstalled NVIDIA driver. Ubuntu on purpose: GCE's
# Ubuntu images run cloud-init, which reads the `user-data` metadata key; the Debian-based DLVM
# families do not run cloud-init, so our user, pinned host key and watchdog would never be installed.
DEFAULT_IMAGE_PROJECT = "deeplearning-platform-release"
DEFAULT_IMAGE_FAMILY = "pytorch-2-9-cu129-ubuntu-2204-nvidia-580"
DEFAULT_IMAGE = f"projects/{DEFAULT_IMAGE_PROJECT}/global/images/family/{DEFAULT_IMAGE_FAMILY}"

_IMAGE_RE = re.compile(r"^[A-Za-z0-9._:/-]+$")
_FAMILY_RE = re.compile(
    r"^(?:(?:https://(?:www|compute)\.googleapis\.com/compute/v1/)?projects/(?P<project>[^/]+)/global/images/)?"
    r"family/(?P<family>[^/]+)$"
)


def check_image(image: str | None) -> None:
    """Every form GCE accepts (`projects/P/global/images/family/F`, `P/F`, `family/F`, an image name,
    an image URL) is made of these characters; a space or other stray character is a typo."""
    if image is not None and (not isinstance(image, str) or not _IMAGE_RE.match(image)):
        raise ConfigError(
            f"image is {image!r}; allowed on gcp: an image or image family like {DEFAULT_IMAGE!r}, "
            "'<project>/<image>', 'family/<family>' or an image URL"
        )


def boot_image(
    image: str | None, project: str, parent: pulumi.Resource, apis: Sequence[pulumi.Resource] = ()
) -> tuple[pulumi.Output[str], list[str]]:
    """The exact image a new node boots, and the instances' `ignore_changes`. An image family (the
    default is one) is resolved here to its current image (`compute.get_image`), so the instance
    names one version, which `up` logs; when the family moves on, running nodes keep theirs. The
    look-up waits for the APIs the pool enables (`apis`): on a fresh project the Compute API
    answers it only once it is on."""
    source = image or DEFAULT_IMAGE
    family = _FAMILY_RE.match(source)
    exact: pulumi.Input[str] = source
    if family is not None:
        exact = compute.get_image_output(
            family=family["family"],
            project=family["project"] or project,
            opts=pulumi.InvokeOutputOptions(parent=parent, depends_on=list(apis) or None),
        ).self_link
    return new_node_image(
        "gcp",
        exact,
        moving=family is not None,
        image_property="bootDisk.initializeParams.image",
        source=source,
        parent=parent,
    )
