"""CIFAR-10 in torchvision's shape (a `CIFAR10` dataset and tensor transforms), written out here:
torchvision's PyPI wheels are built against one torch each and may not import beside a node's
torch, and nodes should need nothing but torch and numpy.

The official "python version" stores each batch as a pickle. Unpickling can run arbitrary code, so
batches are read by an unpickler that may build numpy arrays and nothing else."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of CIFAR-10's training set
STD = (0.2470, 0.2435, 0.2616)
BATCH_DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"

Transform = Callable[[torch.Tensor], torch.Tensor]


class DataError(Exception):
    """The data set is missing or malformed: the job reports it in one line and exits 2."""


class ImageSet(Dataset[tuple[torch.Tensor, int]]):
    """uint8 images (N, 3, 32, 32) and int labels; items are (transform(image), label) as in torchvision."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform | None = None) -> None:
        self.data = torch.from_numpy(np.ascontiguousarray(images))
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.data[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class CIFAR10(ImageSet):
    """CIFAR-10's official python version under `root` (the extracted folder, its parent, or the
    .tar.gz). Nothing is downloaded. `limit` keeps the first N samples (for short runs)."""

    def __init__(
        self, root: Path, train: bool = True, transform: Transform | None = None, limit: int | None = None
    ) -> None:
        names = TRAIN_BATCHES if train else (TEST_BATCH,)
        raw = _read_files(_locate(root), names)
        parts = [read_batch(raw[name], name) for name in names]
        images = np.concatenate([p[0] for p in parts])[:limit]
        super().__init__(images, np.concatenate([p[1] for p in parts])[:limit], transform)


class _ArraysOnly(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")
        return super().find_class(module, name)


def read_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as uint8 images (N, 3, 32, 32) and int64 labels, checked against the format."""
    try:
        # The official files were pickled by Python 2: keys are bytes (b'data', b'labels').
        batch = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"CIFAR-10 batch {name!r} is not a readable pickle: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"CIFAR-10 batch {name!r} is not a dict with b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"CIFAR-10 batch {name!r}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
        )
    if (
        labels.shape != (len(data),)
        or labels.dtype.kind not in "iu"
        or not np.isin(labels, np.arange(10)).all()
    ):
        raise DataError(f"CIFAR-10 batch {name!r}: 'labels' must be {len(data)} integers in 0..9")
    # A row is 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major: (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _locate(root: Path) -> Path:
    """The folder holding the batch files, or the tarball, given either or a folder containing one."""
    if not root.exists():
        raise DataError(f"--data-dir {str(root)!r} does not exist; expected {BATCH_DIR}/ or {TARBALL} there")
    if root.is_file():
        return root
    for candidate in (root, root / BATCH_DIR):
        if (candidate / TEST_BATCH).is_file():
            return candidate
    if (root / TARBALL).is_file():
        return root / TARBALL
    raise DataError(
        f"--data-dir {str(root)!r} holds no CIFAR-10 python version: expected {TEST_BATCH} and "
        f"data_batch_1..5 in it or in {BATCH_DIR}/, or {TARBALL}"
    )


def _read_files(source: Path, names: Sequence[str]) -> dict[str, bytes]:
    raw: dict[str, bytes] = {}
    if source.is_dir():
        raw = {n: (source / n).read_bytes() for n in names if (source / n).is_file()}
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    extracted = tar.extractfile(member) if member.isfile() and base in names else None
                    if extracted is not None:
                        raw[base] = extracted.read()
        except tarfile.TarError as exc:
            raise DataError(f"{str(source)!r} is not a readable tar archive: {exc}") from exc
    missing = [n for n in names if n not in raw]
    if missing:
        raise DataError(f"{str(source)!r} lacks CIFAR-10 file(s): {', '.join(missing)}")
    return raw


# --------------------------------------------------------------------------- transforms (on CHW tensors)


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            image = t(image)
        return image


class RandomCrop:
    """Zero-pad by `padding` on every side, then cut a random `size` x `size` window."""

    def __init__(self, size: int, padding: int) -> None:
        self.size, self.padding = size, padding

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        padded = F.pad(image, [self.padding] * 4)
        top, left = torch.randint(0, padded.shape[-1] - self.size + 1, (2,)).tolist()
        return padded[..., top : top + self.size, left : left + self.size]


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(-1) if torch.rand(()) < self.p else image


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float in [0, 1], as torchvision's ToTensor."""
    return image.float().div_(255.0)


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


def transforms(augment: bool) -> Compose:
    """The usual CIFAR recipe: random crop with 4 pixels of padding and a horizontal flip (when
    `augment`), then scaling to [0, 1] and normalising with the training set's statistics."""
    steps: list[Transform] = [RandomCrop(32, padding=4), RandomHorizontalFlip()] if augment else []
    return Compose([*steps, to_float, Normalize(MEAN, STD)])
