"""Image drift on all three clouds: a published image must not replace running nodes. A moving
source (the default image, an SSM parameter, an image family, Azure's `latest`) is ignored on
existing instances and `up` logs which image new nodes get; an exactly pinned `lepton:image` is
not ignored (changing it is a deliberate replacement)."""

from __future__ import annotations

import logging
from typing import Any

import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pytest

from lepton_infra import config as stack_config
from lepton_infra.components.args import GpuVmPoolArgs
from lepton_infra.components.neutral import GpuVmPool
from lepton_infra.errors import ConfigError

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHCQx1eQeZq2SmnHk9VTWMekJK/k6sMZI28G16hWO2r0 me@laptop"
CLOUDS: dict[str, tuple[str, str, str, str]] = {
    # cloud: (region, instance token, the image property ignored, an exact pin)
    "aws": ("us-east-1", "aws:ec2/instance:Instance", "ami", "ami-0fedcba9876543210"),
    "gcp": (
        "us-central1",
        "gcp:compute/instance:Instance",
        "bootDisk.initializeParams.image",
        "projects/deeplearning-platform-release/global/images/pytorch-2-9-cu129-ubuntu-2204-nvidia-580-v20261101",
    ),
    "azure": (
        "eastus",
        "azure-native:compute:VirtualMachine",
        "storageProfile.imageReference",
        "microsoft-dsvm:ubuntu-hpc:2204:22.04.2026110101",
    ),
}


def build_pool(cloud: str, image: str | None) -> harness.Recorder:
    region = CLOUDS[cloud][0]
    args = GpuVmPoolArgs(
        cloud=cloud,
        accelerator="T4",
        region=region,
        allowed_ssh_cidrs=["203.0.113.0/24"],
        ssh_public_key=PUBKEY,
        image=image,
    )
    return harness.build(lambda: GpuVmPool("p", args))[1]


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_a_new_default_image_leaves_running_nodes_alone_and_up_says_what_new_nodes_get(
    cloud: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, token, image_property, _ = CLOUDS[cloud]
    with caplog.at_level(logging.INFO):
        rec = build_pool(cloud, None)
    (node,) = rec.of(token)
    assert image_property in node.ignore_changes
    (said,) = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{cloud}: new nodes boot")
    ]
    assert "running nodes keep the image they were created with" in said
    if cloud == "aws":  # the AMI the DLAMI parameter names today
        assert said.startswith(f"aws: new nodes boot {harness.DEEP_LEARNING_AMI} (from /aws/service/")
    if cloud == "gcp":  # the family resolved to one version, which the instance names
        assert harness.GCP_IMAGE_VERSION in said and "(from projects/" in said
        assert node.inputs["bootDisk"]["initializeParams"]["image"].endswith(harness.GCP_IMAGE_VERSION)


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_an_image_pinned_in_lepton_image_is_used_as_is_and_not_ignored(
    cloud: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, token, image_property, pin = CLOUDS[cloud]
    with caplog.at_level(logging.INFO):
        rec = build_pool(cloud, pin)
    (node,) = rec.of(token)
    assert image_property not in node.ignore_changes
    assert any(f"new nodes boot {pin}; pinned by lepton:image" in r.getMessage() for r in caplog.records)


def test_lepton_image_is_checked_per_cloud_naming_the_key() -> None:
    raw: dict[str, Any] = {
        "cloud": "aws",
        "accelerator": "T4",
        "region": "us-east-1",
        "allowedSshCidrs": '["203.0.113.0/24"]',
        "image": "ubuntu-latest",
    }
    with pytest.raises(ConfigError, match=r"lepton:image is 'ubuntu-latest'; allowed on aws: an AMI id"):
        stack_config.parse(raw, cluster="c", env="dev")
    args = stack_config.parse({**raw, "image": "ami-0fedcba9876543210"}, cluster="c", env="dev").args
    assert args.image == "ami-0fedcba9876543210"


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_a_pinned_version_of_the_default_image_keeps_the_default_interpreter(cloud: str) -> None:
    from lepton_infra.components.images import default_image, python_for

    pin = CLOUDS[cloud][3]
    assert python_for(cloud, pin, None) == default_image(cloud).python  # type: ignore[union-attr]
    assert (
        python_for(cloud, pin.replace("pytorch-2-9", "tf-2-9").replace("ubuntu-hpc", "other"), None)
        == "python3"
    )
