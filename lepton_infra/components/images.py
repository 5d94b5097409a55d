"""Which image each cloud's nodes boot, and which interpreter on it has torch: one table for all
three clouds, each row with the date it was read and where. The pools take their default image from
here and the inventory its `python`, so the two cannot drift apart; the test mocks answer image
look-ups (SSM parameters, image families) only for names in this table, as the real clouds would
fail for a name that does not exist. Pure data: imports no Pulumi."""

from __future__ import annotations

from dataclasses import dataclass

from lepton_infra.errors import ConfigError


@dataclass(frozen=True)
class NodeImage:
    """One image and its interpreter. `image` is what the pool passes to the cloud: an SSM
    parameter holding an AMI id (AWS), an image family (GCP), a publisher:offer:sku:version URN
    (Azure). `torch` is the torch version the image carries, or how it gets one."""

    cloud: str
    image: str
    python: str
    torch: str
    read_on: str  # YYYY-MM-DD
    source: str  # where the image and its torch were read
    python_source: str  # where the interpreter's path was read (or how the node makes it)
    default: bool = False


# AWS: the DLAMI parameter name is the AMI's name without "Deep", "Learning" and "AMI"
# (https://docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html). The x86_64 PyTorch 2.9
# DLAMI supports G4dn, G5, G6, G6e, P4, P4de, P5, P5e, P5en and keeps torch in /opt/pytorch. (The
# Base DLAMI, the old default, has the driver and CUDA but no torch.) The GCP and Azure rows
# are those pools' defaults.
_DLAMI_PYTORCH_29 = (
    "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04/latest/ami-id"
)

IMAGES: tuple[NodeImage, ...] = (
    NodeImage(
        cloud="aws",
        image=_DLAMI_PYTORCH_29,
        python="/opt/pytorch/bin/python",
        torch="2.9",
        read_on="2026-12-02",
        source="https://docs.amazonaws.cn/dlami/latest/devguide/aws-deep-learning-ami-gpupt29oss-ul2404-2026-03-20.md",
        python_source="the same release notes, `python_location: /opt/pytorch/bin/python` (read 2026-12-05)",
        default=True,
    ),
    # GCP: Deep Learning VM family (Google: deeplearning-platform-release). The family's torch is the
    # image's own; the pool makes /opt/lepton/bin/python at first boot for whichever interpreter of
    # the image imports torch (gcp.FIND_PYTHON), since Google's pages do not name it. Pinned by
    # version at deploy time: the pool resolves the family to its current image (`compute.getImage`,
    # `<family>-v<YYYYMMDD>`), the instance names that image, `up` logs it, and running nodes keep it
    # when the family moves on; `lepton:image` set to such a versioned image pins it for good.
    NodeImage(
        cloud="gcp",
        image="projects/deeplearning-platform-release/global/images/family/pytorch-2-9-cu129-ubuntu-2204-nvidia-580",
        python="/opt/lepton/bin/python",
        torch="2.9 (the image's own)",
        read_on="2026-12-02",
        source="https://cloud.google.com/deep-learning-vm/docs/images",
        python_source="not documented: searched at first boot in gcp.PYTHON_PLACES (logged in the boot log)",
        default=True,
    ),
    # Azure: the HPC image has the NVIDIA driver, CUDA, NCCL, MPI and InfiniBand drivers but no
    # torch; the pool installs azure.TORCH_PIN into this venv at first boot (azure.INSTALL_TORCH).
    NodeImage(
        cloud="azure",
        image="microsoft-dsvm:ubuntu-hpc:2204:latest",
        python="/opt/lepton/venv/bin/python",
        torch="2.9.1+cu126, installed at first boot",
        read_on="2026-12-02",
        source="https://github.com/Azure/azhpc-images",
        python_source="made by the pool at first boot (azure.INSTALL_TORCH)",
        default=True,
    ),
)


def default_image(cloud: str) -> NodeImage | None:
    """The row a pool on `cloud` boots when no `image` is given (None: the cloud has no row yet)."""
    return next((row for row in IMAGES if row.cloud == cloud and row.default), None)


def image_row(cloud: str, image: str | None) -> NodeImage | None:
    """The row for `image` on `cloud` (the default row for None); None for an image not in the table.
    A pinned version of a row's moving image is that row: a GCP image `<family>-v<date>` of the
    row's family, an Azure URN with the row's publisher:offer:sku and any version."""
    if image is None:
        return default_image(cloud)
    return next((row for row in IMAGES if row.cloud == cloud and _same_image(row.image, image)), None)


def _same_image(row: str, image: str) -> bool:
    if row == image:
        return True
    if "/family/" in row:  # GCP: Deep Learning VM images are named <family>-v<YYYYMMDD>
        project, family = row.split("/global/images/family/")
        return image.removeprefix("https://www.googleapis.com/compute/v1/").startswith(
            f"{project}/global/images/{family}-v"
        )
    if row.count(":") == 3:  # Azure URN: publisher:offer:sku:version
        return image.count(":") == 3 and image.rsplit(":", 1)[0].lower() == row.rsplit(":", 1)[0].lower()
    return False


def python_for(cloud: str, image: str | None, python: str | None) -> str:
    """The inventory's `python`: the user's choice, else the table's interpreter for the image, else
    `python3` (an image not in the table; the preflight then says whether it has torch)."""
    if python is not None:
        if not isinstance(python, str) or not python.strip():
            raise ConfigError(f"python is {python!r}; allowed: the interpreter on the nodes, e.g. 'python3'")
        return python
    row = image_row(cloud, image)
    return row.python if row is not None else "python3"
