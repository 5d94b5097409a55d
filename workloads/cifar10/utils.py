"""The plumbing torchvision's reference scripts keep in their utils.py: joining torchrun's process
group, sums over ranks, and an average meter that does not sync with the GPU every step."""

from __future__ import annotations

import argparse
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class SetupError(Exception):
    """Bad input found after argument parsing (no CUDA, a checkpoint that does not fit): one line, exit 2."""


class AverageMeter:
    """Sum and count of a per-step value, the sum kept on the device: `update` costs no host sync
    (a `.item()` per step would stall a GPU every step); reading `avg` syncs, so only log points do."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sum, self.count = torch.zeros((), dtype=torch.float64, device=self.device), 0

    def update(self, value: torch.Tensor) -> None:
        self.sum += value.detach()
        self.count += 1

    def mean(self) -> torch.Tensor:
        return self.sum / max(1, self.count)

    @property
    def avg(self) -> float:
        return float(self.mean())


@dataclass
class Dist:
    """Where this process sits; `enabled` when under torchrun."""

    enabled: bool
    rank: int
    world_size: int
    device: torch.device
    backend: str | None


def setup_distributed(args: argparse.Namespace) -> Dist:
    """Join torchrun's process group when its environment is there; otherwise a world of one."""
    enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    # torchrun leaves OMP_NUM_THREADS unset with one process per node: split the cores ourselves, or
    # processes sharing a machine fight over them.
    omp = os.environ.get("OMP_NUM_THREADS", "")
    cores = int(omp) if omp.isdigit() and int(omp) > 0 else len(os.sched_getaffinity(0)) // local_world
    torch.set_num_threads(args.threads or max(1, cores))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SetupError(
            "--device cuda was asked for but torch sees no CUDA device; use --device auto or cpu"
        )
    device = torch.device("cpu")
    if args.device != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    if not enabled:
        return Dist(False, 0, 1, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=args.dist_timeout)
    dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    return Dist(True, dist.get_rank(), dist.get_world_size(), device, backend)


def all_sum(values: list[float], ctx: Dist) -> list[float]:
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()
