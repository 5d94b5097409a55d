"""The seed's CIFAR-10 LeNet training job, fixed and made real: runs alone or under torchrun (DDP).

This file is shipped to nodes on its own: it imports only the standard library, torch and numpy
(matplotlib lazily, for the plot). Nothing from `lepton_infra`.

    python train.py                                     # synthetic data, the seed's settings
    python train.py --data cifar10 --data-dir ~/data    # the official "python version" of CIFAR-10
    torchrun --nproc-per-node 2 train.py --batch-size 16 --epochs 2

Results go to $LEPTON_OUTPUT_DIR (or --output-dir): metrics.json, model.pt, loss_curve.png and a
checkpoint.pt after each epoch. Rank 0 also prints machine-readable progress lines
`LEPTON_PROGRESS {"epoch": 1, "epochs": 2, "step": 400, "steps": 3125, "loss": 1.23}`.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import pickle
import socket
import sys
import tarfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset
from torch.utils.data.distributed import DistributedSampler

JOB_NAME = "cifar10-lenet"
PROGRESS_TAG = "LEPTON_PROGRESS"
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
FAULT_EXIT_CODE = 17  # --fail-at-step: what the workload layer's fault tests look for

# Synthetic data recipe (see FACTS.md). Template amplitude against noise sets the difficulty. Measured
# with lr 0.001: 2 ranks x batch 16 go from loss 2.30 to ~0.12 and test accuracy ~0.97 in two epochs
# (the demo); the seed's batch 4 reaches ~0.99 after one. Fainter templates keep a large-batch run
# stuck at 2.30 for its whole first epoch; more noise makes it unlearnable, less makes it trivial.
SYNTH_CHUNK = 1000  # samples per seeded chunk: results do not depend on the total asked for
SYNTH_TEMPLATE = 40  # templates are 40x40, samples are random 32x32 crops of them
SYNTH_COARSE = 5  # template smoothness: a 5x5 random grid, bilinearly upsampled
SYNTH_CONTRAST = (0.6, 1.4)
SYNTH_BRIGHTNESS = 0.15
SYNTH_NOISE = 0.5
SYNTH_AMPLITUDE = 0.7


class SetupError(Exception):
    """Bad input found after argument parsing (data set missing or malformed, no CUDA, a checkpoint
    that does not fit): reported as one clear line and exit code 2, like an argparse error."""


# --------------------------------------------------------------------------- model (the seed's)


class Net(nn.Module):
    """The seed's LeNet: conv 3->6 5x5, max-pool 2, conv 6->16 5x5, fc 400->120->84->10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # the seed's x.view(-1, 400), without its silent reshape of bad input
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """Images as uint8 (N, 3, 32, 32) in CIFAR's channel-first layout, labels as int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _smooth_templates(seed: int) -> np.ndarray:
    """10 fixed smooth colour images (10, 3, 40, 40) in [0, 1], one per class."""
    rng = np.random.default_rng([seed, 0])
    coarse = rng.uniform(-0.5, 0.5, size=(10, 3, SYNTH_COARSE, SYNTH_COARSE)).astype(np.float32)
    coarse = 0.5 + SYNTH_AMPLITUDE * coarse  # mid-grey plus a class pattern of limited contrast
    # Bilinear upsampling by hand: numpy has no resize, and torch's would tie bytes to torch's version.
    pos = np.linspace(0.0, SYNTH_COARSE - 1, SYNTH_TEMPLATE, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), SYNTH_COARSE - 2)
    frac = (pos - lo).astype(np.float32)
    rows = coarse[:, :, lo, :] * (1 - frac)[:, None] + coarse[:, :, lo + 1, :] * frac[:, None]
    return rows[:, :, :, lo] * (1 - frac) + rows[:, :, :, lo + 1] * frac


def synthetic_split(n: int, seed: int, split: int) -> Dataset:
    """`n` CIFAR-shaped samples: random shifted crops of the class templates, times a random
    contrast, plus brightness and gaussian noise, quantised to uint8. Deterministic in (seed, split);
    generated in fixed-size chunks, each with its own seeded generator, so asking for fewer samples
    gives a prefix of the larger set and memory stays small."""
    templates = _smooth_templates(seed) * np.float32(255.0)
    side = 32
    shifts = SYNTH_TEMPLATE - side + 1
    # (10, 3, shifts, shifts, 32, 32): every crop of every template, as a view (no copy).
    windows = np.lib.stride_tricks.sliding_window_view(templates, (side, side), axis=(2, 3))
    images = np.empty((n, 3, side, side), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    # Reused float32 buffers: fresh memory is slow to touch here, and this loop is most of a short
    # run's start-up time.
    x = np.empty((SYNTH_CHUNK, 3, side, side), dtype=np.float32)
    noise = np.empty_like(x)
    for chunk, start in enumerate(range(0, n, SYNTH_CHUNK)):
        rng = np.random.default_rng([seed, split, chunk])
        size = SYNTH_CHUNK  # always draw a whole chunk so a prefix is independent of n
        y = rng.integers(0, 10, size=size)
        dy = rng.integers(0, shifts, size=size)
        dx = rng.integers(0, shifts, size=size)
        contrast = rng.uniform(*SYNTH_CONTRAST, size=size).astype(np.float32)
        brightness = rng.uniform(-SYNTH_BRIGHTNESS, SYNTH_BRIGHTNESS, size=size).astype(np.float32) * 255
        rng.standard_normal(out=noise, dtype=np.float32)
        np.multiply(windows[y, :, dy, dx], contrast[:, None, None, None], out=x)
        x += brightness[:, None, None, None]
        noise *= SYNTH_NOISE * 255.0
        x += noise
        np.clip(x, 0.0, 255.0, out=x)
        np.rint(x, out=x)
        take = min(SYNTH_CHUNK, n - start)
        images[start : start + take] = x[:take]  # float -> uint8 on assignment (already clipped)
        labels[start : start + take] = y[:take]
    return Dataset(images, labels)


def synthetic_cifar10(train_samples: int, test_samples: int, seed: int) -> tuple[Dataset, Dataset]:
    """The synthetic train and test sets: same class templates, independent samples."""
    return synthetic_split(train_samples, seed, 1), synthetic_split(test_samples, seed, 2)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles; loading one must not be able to run arbitrary code, so only
    the numpy classes an array needs may be constructed."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle (re-packed sets)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise SetupError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")
        return super().find_class(module, name)


def _read_batch(raw: bytes, name: str) -> Dataset:
    try:
        # The official files were pickled by Python 2: their keys are bytes (b'data', b'labels').
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except SetupError:
        raise
    except Exception as exc:
        raise SetupError(f"CIFAR-10 batch {name!r} is not a readable pickle: {exc}") from exc
    if not isinstance(batch, dict):
        raise SetupError(f"CIFAR-10 batch {name!r} holds a {type(batch).__name__}, expected a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise SetupError(f"CIFAR-10 batch {name!r} lacks 'data' or 'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise SetupError(
            f"CIFAR-10 batch {name!r}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise SetupError(f"CIFAR-10 batch {name!r}: 'labels' must be {data.shape[0]} integers in 0..9")
    # Each row is 1024 red, 1024 green, 1024 blue values, row-major: exactly (3, 32, 32).
    return Dataset(data.reshape(-1, 3, 32, 32), labels)


def _concat(parts: list[Dataset]) -> Dataset:
    return Dataset(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def _locate_cifar(path: Path) -> Path:
    """The folder holding data_batch_1..5/test_batch, or the official tarball, given either of them
    or a folder containing one of them."""
    if not path.exists():
        raise SetupError(
            f"--data-dir {str(path)!r} does not exist; expected CIFAR-10's python version there "
            f"(a {CIFAR_DIRNAME}/ folder or {CIFAR_TARBALL}); no download is attempted"
        )
    if path.is_file():
        return path
    for candidate in (path, path / CIFAR_DIRNAME):
        if (candidate / TEST_BATCH).is_file():
            return candidate
    if (path / CIFAR_TARBALL).is_file():
        return path / CIFAR_TARBALL
    raise SetupError(
        f"--data-dir {str(path)!r} holds no CIFAR-10 python version: expected {TEST_BATCH} and "
        f"data_batch_1..5 in it or in {CIFAR_DIRNAME}/, or {CIFAR_TARBALL}"
    )


def load_cifar10(data_dir: str | os.PathLike[str]) -> tuple[Dataset, Dataset]:
    """CIFAR-10's official "python version", from the extracted folder or the .tar.gz, with numpy."""
    source = _locate_cifar(Path(data_dir).expanduser())
    wanted = (*TRAIN_BATCHES, TEST_BATCH)
    raw: dict[str, bytes] = {}
    if source.is_dir():
        for name in wanted:
            file = source / name
            if not file.is_file():
                raise SetupError(f"CIFAR-10 file {str(file)!r} is missing")
            raw[name] = file.read_bytes()
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        extracted = tar.extractfile(member)
                        assert extracted is not None  # a regular file always extracts
                        raw[base] = extracted.read()
        except tarfile.TarError as exc:
            raise SetupError(f"{str(source)!r} is not a readable tar archive: {exc}") from exc
        missing = [name for name in wanted if name not in raw]
        if missing:
            raise SetupError(f"{str(source)!r} lacks CIFAR-10 member(s): {', '.join(missing)}")
    train = _concat([_read_batch(raw[name], name) for name in TRAIN_BATCHES])
    return train, _read_batch(raw[TEST_BATCH], TEST_BATCH)


def _first(data: Dataset, n: int | None) -> Dataset:
    return data if n is None or n >= len(data) else Dataset(data.images[:n], data.labels[:n])


def load_data(args: argparse.Namespace) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """The train and test sets the arguments ask for, plus a description for metrics.json."""
    if args.data == "synthetic":
        n_train = args.train_samples if args.train_samples is not None else 50_000
        n_test = args.test_samples if args.test_samples is not None else 10_000
        train, test = synthetic_cifar10(n_train, n_test, args.seed)
        info: dict[str, Any] = {"kind": "synthetic", "seed": args.seed}
    else:
        train, test = load_cifar10(args.data_dir)
        train, test = _first(train, args.train_samples), _first(test, args.test_samples)
        info = {"kind": "cifar10", "data_dir": str(args.data_dir)}
    info.update(train_samples=len(train), test_samples=len(test))
    return train, test, info


def to_inputs(images: torch.Tensor) -> torch.Tensor:
    """The seed's only preprocessing, ToTensor: uint8 pixels to float in [0, 1]. No Normalize."""
    return images.float().div_(255.0)


# --------------------------------------------------------------------------- distributed set-up


@dataclass
class Dist:
    """Where this process sits: rank, world size, device; `enabled` when under torchrun."""

    enabled: bool
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as exc:
        raise SetupError(f"environment variable {name}={value!r} is not an integer") from exc


def choose_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SetupError(
            "--device cuda was asked for but torch sees no CUDA device; use --device auto or cpu"
        )
    if requested == "cuda" or torch.cuda.is_available():
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def default_threads(local_world_size: int) -> int:
    """OMP_NUM_THREADS if set, else this machine's cores split among the processes on it."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def setup_distributed(args: argparse.Namespace) -> Dist:
    """Join torchrun's process group when its environment is there; otherwise a world of one."""
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", 1)
    torch.set_num_threads(args.threads or default_threads(local_world_size))
    device = choose_device(args.device, local_rank)
    backend = None
    if under_torchrun:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=args.dist_timeout),
            device_id=device if device.type == "cuda" else None,
        )
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Dist(under_torchrun, rank, local_rank, world_size, local_world_size, device, backend)


def all_sum(values: list[float], ctx: Dist) -> list[float]:
    """Element-wise sum over all ranks (identity when alone)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def broadcast_from_main(obj: Any, ctx: Dist) -> Any:
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- output files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader (or a resume) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def plot_loss_curve(path: Path, curve: list[list[float]], epochs: list[dict[str, Any]]) -> bool:
    """loss_curve.png: training loss against step, test accuracy per epoch. False (with a message)
    when matplotlib is not installed: the plot is a nicety, the metrics are what matter."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # nodes have no display
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping loss_curve.png", flush=True)
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if curve:
        ax_loss.plot([p[0] for p in curve], [p[1] for p in curve], color="tab:blue")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (cross-entropy)")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_acc.plot([e["epoch"] for e in epochs], [e["test_accuracy"] for e in epochs], "o-", color="tab:green")
    ax_acc.set_xticks([e["epoch"] for e in epochs])  # whole epochs only
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("test accuracy")
    ax_acc.grid(alpha=0.3)
    fig.suptitle(f"{JOB_NAME}: training loss and test accuracy")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


# --------------------------------------------------------------------------- training


def batches(indices: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], ctx: Dist) -> tuple[float, int]:
    """Accuracy over the whole test set, and how many samples that was: each rank scores a disjoint
    stride of it and the counts are summed."""
    model.eval()
    images, labels = test
    mine = torch.arange(ctx.rank, len(labels), ctx.world_size)
    correct = 0
    for idx in batches(mine, 1000):
        predicted = model(to_inputs(images[idx].to(ctx.device))).argmax(dim=1)
        correct += int((predicted == labels[idx].to(ctx.device)).sum().item())
    model.train()
    total_correct, total = all_sum([float(correct), float(len(mine))], ctx)
    return total_correct / max(1.0, total), int(total)


def progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
    record = {"epoch": epoch, "epochs": epochs, "step": step, "steps": steps, "loss": round(loss, 4)}
    print(f"{PROGRESS_TAG} {json.dumps(record)}", flush=True)


def load_checkpoint(
    args: argparse.Namespace, out_dir: Path, data_info: dict[str, Any], ctx: Dist
) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint (it is only on rank 0's disk) and hands it to every rank."""
    ckpt: dict[str, Any] | None = None
    error: str | None = None
    if ctx.is_main and args.resume is not None:
        path = out_dir / "checkpoint.pt" if args.resume == "auto" else Path(args.resume).expanduser()
        if path.is_file():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            print(f"resuming from {path} (epoch {ckpt['epoch']} done)", flush=True)
        elif args.resume == "auto":
            print(f"--resume: no checkpoint at {path}, starting from scratch", flush=True)
        else:
            error = f"--resume {args.resume!r}: no such checkpoint file"
        # Resuming on other data would silently mix two experiments: refuse instead.
        saved = ckpt.get("data", {}) if ckpt else {}
        for key in ("kind", "seed", "train_samples", "test_samples"):
            if key in saved and saved[key] != data_info.get(key):
                error = (
                    f"--resume: the checkpoint was trained with data {key}={saved[key]!r}, this run "
                    f"has {data_info.get(key)!r}; use the same data arguments or another --output-dir"
                )
                break
    error, ckpt = broadcast_from_main((error, ckpt), ctx)
    if error:
        raise SetupError(error)
    return ckpt


def train(args: argparse.Namespace, ctx: Dist) -> dict[str, Any]:
    out_dir = Path(args.output_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        # An early sign of life: torch import, rendezvous and data generation take seconds, and a
        # user watching the stream should know the job is up before the first loss line.
        print(f"{JOB_NAME}: {ctx.world_size} process(es) up; preparing {args.data} data", flush=True)
    t_data = time.perf_counter()
    train_set, test_set, data_info = load_data(args)
    data_s = time.perf_counter() - t_data
    train_x = torch.from_numpy(train_set.images).to(ctx.device)
    train_y = torch.from_numpy(train_set.labels).to(ctx.device)
    test = (torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels))

    torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    net = Net()
    ckpt = load_checkpoint(args, out_dir, data_info, ctx)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
    net.to(ctx.device)
    model: nn.Module = net
    if ctx.enabled:
        model = DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])

    # The sampler with one replica is a seeded shuffle, so alone and distributed share one path.
    # It only needs the data set's length; batches are then sliced from the in-memory tensors.
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        TensorDataset(train_y), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed
    )
    steps = math.ceil(len(sampler) / args.batch_size)  # equal on every rank: the sampler pads
    start_epoch = int(ckpt["epoch"]) if ckpt else 0
    history: list[dict[str, Any]] = list(ckpt["metrics"]["epochs"]) if ckpt else []
    curve: list[list[float]] = [list(p) for p in ckpt["curve"]] if ckpt else []
    global_step = start_epoch * steps
    curve_every = max(1, steps // 50)  # ~50 points per epoch for the plot
    metrics: dict[str, Any] = {
        "job": JOB_NAME,
        "status": "running",
        "epochs": history,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "backend": ctx.backend,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "hostname": socket.gethostname(),
        "data": data_info,
        "data_load_s": round(data_s, 3),
        "steps_per_epoch": steps,
        "global_batch_size": args.batch_size * ctx.world_size,
        "resumed_from_epoch": start_epoch if ckpt else None,
        "args": vars(args),
    }
    if ctx.is_main:
        print(
            f"{JOB_NAME}: world_size={ctx.world_size} device={ctx.device} backend={ctx.backend or '-'} "
            f"threads={torch.get_num_threads()} data={data_info['kind']} train={len(train_set)} "
            f"test={len(test_set)} batch={args.batch_size} steps/epoch={steps} epochs={args.epochs} "
            f"(data ready in {data_s:.1f}s)",
            flush=True,
        )
    if start_epoch >= args.epochs and ctx.is_main:
        print(f"checkpoint already has {start_epoch} epoch(s) of {args.epochs}: nothing to train", flush=True)

    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64, device=ctx.device)
        t0 = time.perf_counter()
        running = epoch_sum = curve_sum = since_progress_sum = 0.0
        curve_n = since_progress_n = samples = 0
        last_progress = t0
        for i, idx in enumerate(batches(order, args.batch_size)):
            global_step += 1
            if (
                args.fail_at_step is not None
                and global_step == args.fail_at_step
                and ctx.rank == args.fail_rank
            ):
                print(
                    f"--fail-at-step {global_step}: rank {ctx.rank} exits with code {FAULT_EXIT_CODE}",
                    flush=True,
                )
                sys.stderr.flush()
                os._exit(FAULT_EXIT_CODE)  # like a crash: no clean-up, peers see the rank vanish
            inputs, labels = to_inputs(train_x[idx]), train_y[idx]
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            value = loss.item()
            samples += len(idx)
            running += value
            epoch_sum += value
            curve_sum += value
            curve_n += 1
            since_progress_sum += value
            since_progress_n += 1
            if curve_n == curve_every:
                curve.append([global_step, round(curve_sum / curve_n, 5)])
                curve_sum, curve_n = 0.0, 0
            at_log = (i + 1) % args.log_every == 0
            if at_log and ctx.is_main:
                print(
                    f"[{epoch + 1}, {i + 1:5d}] loss: {running / args.log_every:.3f}", flush=True
                )  # the seed's format
            if at_log:
                running = 0.0
            now = time.perf_counter()
            if ctx.is_main and i + 1 < steps and (at_log or now - last_progress >= args.progress_interval):
                progress(epoch + 1, args.epochs, i + 1, steps, since_progress_sum / since_progress_n)
                since_progress_sum, since_progress_n, last_progress = 0.0, 0, now
            if args.sleep_per_step:
                time.sleep(args.sleep_per_step)
        if curve_n:
            curve.append([global_step, round(curve_sum / curve_n, 5)])
        train_s = time.perf_counter() - t0
        loss_sum, step_count, sample_count = all_sum([epoch_sum, float(steps), float(samples)], ctx)
        train_loss = loss_sum / step_count
        accuracy, evaluated = evaluate(net, test, ctx)
        wall_s = time.perf_counter() - t0
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(train_loss, 5),
                "test_accuracy": round(accuracy, 5),
                "samples_per_s": round(sample_count / train_s, 1),
                "train_time_s": round(train_s, 3),
                "wall_time_s": round(wall_s, 3),
                "steps": steps,
                "test_samples_evaluated": evaluated,
            }
        )
        if ctx.is_main:
            progress(epoch + 1, args.epochs, steps, steps, train_loss)
            print(
                f"epoch {epoch + 1}/{args.epochs}: train_loss={train_loss:.3f} test_acc={accuracy:.3f} "
                f"samples/s={sample_count / train_s:.0f} time={wall_s:.1f}s",
                flush=True,
            )
            metrics["final_test_accuracy"] = round(accuracy, 5)
            metrics["final_train_loss"] = round(train_loss, 5)
            checkpoint = {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "metrics": {"epochs": history},
                "curve": curve,
                "data": data_info,
            }
            atomic_torch_save(checkpoint, out_dir / "checkpoint.pt")
            write_json(out_dir / "metrics.json", metrics)

    if ctx.is_main:
        metrics["status"] = "completed"
        if history:
            metrics["final_test_accuracy"] = history[-1]["test_accuracy"]
            metrics["final_train_loss"] = history[-1]["train_loss"]
        metrics["loss_curve"] = curve
        metrics["total_train_time_s"] = round(sum(e["train_time_s"] for e in history), 3)
        atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out_dir / "model.pt")
        write_json(out_dir / "metrics.json", metrics)
        plotted = plot_loss_curve(out_dir / "loss_curve.png", curve, history)
        written = ["metrics.json", "model.pt", "checkpoint.pt"] + (["loss_curve.png"] if plotted else [])
        print(f"results in {out_dir.resolve()}/: {', '.join(written)}", flush=True)
    return metrics


# --------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description=(
            "Train the seed's CIFAR-10 LeNet (conv 3->6 5x5, max-pool 2, conv 6->16 5x5, fc 400->120->84->10). "
            "Alone it runs single-process; under torchrun it uses DistributedDataParallel (gloo on CPU, "
            "nccl on GPU). Preprocessing is the seed's ToTensor only: pixels scaled to [0, 1], no Normalize."
        ),
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        choices=("auto", "synthetic", "cifar10"),
        default="auto",
        help="synthetic: a deterministic, learnable CIFAR-shaped set generated from --seed (offline); "
        "cifar10: the official python version from --data-dir; auto: cifar10 when --data-dir or "
        "$LEPTON_DATA_DIR is given, else synthetic",
    )
    data.add_argument(
        "--data-dir",
        default=os.environ.get("LEPTON_DATA_DIR") or None,
        help="CIFAR-10 python version: the extracted cifar-10-batches-py/ folder, the folder containing "
        "it, or cifar-10-python.tar.gz (default: $LEPTON_DATA_DIR). Nothing is downloaded",
    )
    data.add_argument(
        "--train-samples",
        type=_positive_int,
        default=None,
        help="training samples (default: 50000; for cifar10 the first N of the training set)",
    )
    data.add_argument(
        "--test-samples", type=_positive_int, default=None, help="test samples (default: 10000)"
    )
    train = p.add_argument_group("training (defaults are the seed's)")
    train.add_argument("--epochs", type=_positive_int, default=2, help="epochs (default: %(default)s)")
    train.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4,
        help="mini-batch size per process (default: %(default)s)",
    )
    train.add_argument(
        "--lr", type=_positive_float, default=0.001, help="SGD learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--momentum", type=_non_negative_float, default=0.9, help="SGD momentum (default: %(default)s)"
    )
    train.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="seed for weights, shuffling and synthetic data (default: %(default)s)",
    )
    run = p.add_argument_group("running")
    run.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when available (default: %(default)s)",
    )
    run.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads per process (default: $OMP_NUM_THREADS if set, else cores // processes on this node)",
    )
    run.add_argument(
        "--output-dir",
        default=os.environ.get("LEPTON_OUTPUT_DIR") or "outputs",
        help="where rank 0 writes metrics.json, model.pt, loss_curve.png, checkpoint.pt (default: $LEPTON_OUTPUT_DIR or ./outputs)",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="continue from a checkpoint: without PATH the output dir's checkpoint.pt if there is one "
        "(else start fresh); with PATH that file, which must exist",
    )
    run.add_argument(
        "--log-every",
        type=_positive_int,
        default=2000,
        help="print '[epoch, step] loss: x' every N mini-batches (default: %(default)s)",
    )
    run.add_argument(
        "--progress-interval",
        type=_non_negative_float,
        default=2.0,
        help="seconds between LEPTON_PROGRESS lines (also printed at each log line and epoch end) (default: %(default)s)",
    )
    run.add_argument(
        "--dist-timeout",
        type=_positive_float,
        default=120.0,
        help="seconds to wait for the process group to form and for each collective (default: %(default)s)",
    )
    test = p.add_argument_group("testing aids")
    test.add_argument(
        "--fail-at-step",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"for fault-injection tests: the process of rank --fail-rank exits with code {FAULT_EXIT_CODE} at global step N",
    )
    test.add_argument(
        "--fail-rank",
        type=_non_negative_int,
        default=0,
        metavar="R",
        help="rank that --fail-at-step kills (default: %(default)s)",
    )
    test.add_argument(
        "--sleep-per-step",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="for tests: sleep after every step so a run lasts long enough to interrupt (default: %(default)s)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data == "auto":
        args.data = "cifar10" if args.data_dir else "synthetic"
    if args.data == "cifar10" and not args.data_dir:
        parser.error(
            "--data cifar10 needs --data-dir DIR (or $LEPTON_DATA_DIR): the folder or .tar.gz of CIFAR-10's python version"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx: Dist | None = None
    code = 0
    try:
        ctx = setup_distributed(args)
        train(args, ctx)
    except SetupError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except KeyboardInterrupt:
        print("train.py: interrupted", file=sys.stderr, flush=True)
        code = 130
    except Exception:
        rank = f"rank {ctx.rank}" if ctx else "set-up"
        print(f"train.py: {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # Explicitly, also on errors: a rank that leaves the group implicitly at interpreter exit can
        # leave its peers waiting at torchrun's exit barrier for minutes (FACTS.md).
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
