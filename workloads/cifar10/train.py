"""The seed's CIFAR-10 LeNet, trained alone or under torchrun (DDP), in the shape of pytorch/examples.

Shipped to nodes with its folder; imports only the standard library, torch, numpy, its sibling
modules (matplotlib lazily, for the plot). Nothing from `lepton_infra`.

    python train.py --data-dir ~/data                   # the official "python version" of CIFAR-10
    python train.py --data synthetic                    # a generated stand-in, only when asked for
    torchrun --nproc-per-node 2 train.py --data synthetic --batch-size 16

Rank 0 writes metrics.json, checkpoint.pt (each epoch), model.pt and loss_curve.png to
$LEPTON_OUTPUT_DIR (or --output-dir) and prints `LEPTON_PROGRESS {"epoch": .., "epochs": ..,
"step": .., "steps": .., "loss": ..}` lines for the controller.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from cifar import CIFAR10, DataError, ImageSet, transforms
from results import describe_data, plot, read_checkpoint, save
from synthetic import SyntheticCIFAR10
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from utils import AverageMeter, Dist, SetupError, all_sum, setup_distributed

JOB_NAME = "cifar10-lenet"
StepHook = Callable[[int, int], None]  # (rank, global step) after each optimizer step
# Channels-last (NHWC) on CUDA, where cuDNN's convolutions (tensor cores under AMP) are fastest in it.
FORMAT = {"cuda": torch.channels_last, "cpu": torch.contiguous_format}


class Net(nn.Module):
    """The seed's LeNet: conv 3->6 5x5, max-pool 2, conv 6->16 5x5, fc 400->120->84->10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv2(self.pool(F.relu(self.conv1(x))))))
        logits: torch.Tensor = self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))))
        return logits


def resolve_data_dir(value: str) -> Path:
    """--data-dir as a local folder; a store URL (s3://, gs://, az://, file://) is fetched once into
    a node-local cache (~/.lepton/data-cache), each file checked against
    the SHA-256 the store's manifest records, and reused by the next run while the manifest is
    unchanged. The fetch is the node client lepton-infra ships with every job ($LEPTON_STORE_CLIENT);
    this file imports nothing of lepton_infra, as nodes do not have it."""
    if "://" not in value:
        return Path(value).expanduser()
    client = os.environ.get("LEPTON_STORE_CLIENT")
    if not client or not os.path.isfile(client):
        raise DataError(
            f"--data-dir {value!r} is a store URL: only a job launched by lepton-infra can fetch it "
            "($LEPTON_STORE_CLIENT names no file); give a local folder instead"
        )
    import importlib.util

    spec = importlib.util.spec_from_file_location("lepton_store_client", client)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = str(Path.home() / ".lepton" / "data-cache")
    try:
        return Path(module.fetch(value, cache))
    except Exception as exc:  # unknown scheme, no manifest, a failed check, no credentials: one line
        raise DataError(f"--data-dir {value!r}: {exc}") from exc


def datasets(args: argparse.Namespace) -> tuple[ImageSet, ImageSet, dict[str, Any]]:
    """Train and test sets, plus a description for metrics.json and the resume check."""
    train: ImageSet
    test: ImageSet
    if args.data == "synthetic":  # its random crops are built in; a flip would change the class pattern
        train = SyntheticCIFAR10(args.train_samples or 50_000, args.seed, True, transforms(augment=False))
        test = SyntheticCIFAR10(args.test_samples or 10_000, args.seed, False, transforms(augment=False))
        info: dict[str, Any] = {"kind": "synthetic", "seed": args.seed}
    else:
        root = resolve_data_dir(args.data_dir)
        train = CIFAR10(root, True, transforms(augment=not args.no_augment), args.train_samples)
        test = CIFAR10(root, False, transforms(augment=False), args.test_samples)
        info = {"kind": "cifar10", "data_dir": str(args.data_dir)}
    return train, test, {**info, "train_samples": len(train), "test_samples": len(test)}


def load_checkpoint(args: argparse.Namespace, out_dir: Path, data: dict[str, Any], ctx: Dist) -> Any:
    """Rank 0 reads the checkpoint (only its disk has one) and hands it to every rank."""
    box = list(read_checkpoint(args.resume, out_dir, data)) if ctx.rank == 0 and args.resume else [None, None]
    if ctx.enabled:
        dist.broadcast_object_list(box, src=0)
    if box[0]:
        raise SetupError(box[0])
    return box[1]


@torch.no_grad()
def evaluate(model: nn.Module, test: ImageSet, ctx: Dist) -> tuple[float, int]:
    """Accuracy over the whole test set: each rank scores a disjoint stride and the counts are summed
    (a DistributedSampler would pad the set with repeats)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    mine = Subset(test, range(ctx.rank, len(test), ctx.world_size))
    for images, labels in DataLoader(mine, batch_size=500):
        images = images.to(ctx.device, memory_format=FORMAT[ctx.device.type], non_blocking=True)
        with torch.autocast(ctx.device.type, enabled=ctx.device.type == "cuda"):
            correct += (model(images).argmax(1) == labels.to(ctx.device)).sum()
    model.train()
    total_correct, total = all_sum([float(correct), float(len(mine))], ctx)
    return total_correct / max(1.0, total), int(total)


def progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
    # "t": when (epoch seconds), so the controller can put loss beside the node metrics over time.
    record = {"epoch": epoch, "epochs": epochs, "step": step, "steps": steps, "loss": round(loss, 4)}
    record["t"] = round(time.time(), 3)
    print(f"LEPTON_PROGRESS {json.dumps(record)}", flush=True)


def train_epoch(
    model: nn.Module, loader: DataLoader[Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    epoch: int, args: argparse.Namespace, ctx: Dist, on_step: StepHook | None,
) -> tuple[AverageMeter, list[tuple[int, torch.Tensor]]]:  # fmt: skip
    """One pass over this rank's shard. Returns the epoch's loss meter and (step, mean loss) points
    for the curve, still on the device: the loop itself never waits for the GPU except to print."""
    epoch_loss, log_loss, progress_loss, curve_loss = (AverageMeter(ctx.device) for _ in range(4))
    steps, curve_every = len(loader), max(1, len(loader) // 50)  # ~50 curve points per epoch
    points: list[tuple[int, torch.Tensor]] = []
    last_progress = time.perf_counter()
    for i, (images, labels) in enumerate(loader, start=1):
        images = images.to(ctx.device, memory_format=FORMAT[ctx.device.type], non_blocking=True)
        labels = labels.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, enabled=scaler.is_enabled()):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        scaler.step(optimizer)
        scaler.update()
        for meter in (epoch_loss, log_loss, progress_loss, curve_loss):
            meter.update(loss)
        if curve_loss.count == curve_every or i == steps:
            points.append((epoch * steps + i, curve_loss.mean()))
            curve_loss.reset()
        logs, now = i % args.log_every == 0, time.perf_counter()
        if ctx.rank == 0 and logs:
            print(f"[{epoch + 1}, {i:5d}] loss: {log_loss.avg:.3f}", flush=True)  # the seed's format
        if ctx.rank == 0 and i < steps and (logs or now - last_progress >= args.progress_interval):
            progress(epoch + 1, args.epochs, i, steps, progress_loss.avg)
            progress_loss.reset()
            last_progress = now
        if logs:
            log_loss.reset()
        if on_step:
            on_step(ctx.rank, epoch * steps + i)
    return epoch_loss, points


def train(args: argparse.Namespace, ctx: Dist, on_step: StepHook | None = None) -> dict[str, Any]:
    main, cuda, out_dir = ctx.rank == 0, ctx.device.type == "cuda", Path(args.output_dir)
    if main:  # a sign of life: rendezvous and data loading take seconds
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"{JOB_NAME}: {ctx.world_size} process(es) up; preparing {args.data} data", flush=True)
    t_data = time.perf_counter()
    train_set, test_set, data = datasets(args)
    data_s = time.perf_counter() - t_data
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, ctx.world_size, ctx.rank, shuffle=True, seed=args.seed
    )
    workers = args.workers if args.workers is not None else (4 if cuda else 0)
    loader = DataLoader(train_set, args.batch_size, sampler=sampler, num_workers=workers, pin_memory=cuda)

    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    net = Net().to(ctx.device, memory_format=FORMAT[ctx.device.type])  # type: ignore[call-overload]
    model = DistributedDataParallel(net, [ctx.device.index] if cuda else None) if ctx.enabled else net
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and args.amp)  # fp16 needs loss scaling
    ckpt = load_checkpoint(args, out_dir, data, ctx)
    if ckpt:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
    start = int(ckpt["epoch"]) if ckpt else 0
    history: list[dict[str, Any]] = ckpt["metrics"]["epochs"] if ckpt else []
    curve: list[list[float]] = ckpt["curve"] if ckpt else []
    steps = len(loader)  # equal on every rank: the sampler pads
    metrics: dict[str, Any] = {
        "job": JOB_NAME, "status": "running", "epochs": history, "world_size": ctx.world_size,
        "device": str(ctx.device), "backend": ctx.backend, "amp": scaler.is_enabled(),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__, "numpy_version": np.__version__,
        "hostname": socket.gethostname(), "data": data, "data_load_s": round(data_s, 3), "steps_per_epoch": steps,
        "global_batch_size": args.batch_size * ctx.world_size, "resumed_from_epoch": start if ckpt else None,
        "args": vars(args),
    }  # fmt: skip
    if main:
        print(
            f"{JOB_NAME}: world_size={ctx.world_size} device={ctx.device} amp={scaler.is_enabled()} "
            f"data={data['kind']} train={len(train_set)} test={len(test_set)} batch={args.batch_size} "
            f"steps/epoch={steps} epochs={args.epochs} (data ready in {data_s:.1f}s)",
            flush=True,
        )
    for epoch in range(start, args.epochs):
        torch.manual_seed(args.seed + epoch)  # after a resume, augmentation as in an uninterrupted run
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        meter, points = train_epoch(model, loader, optimizer, scaler, epoch, args, ctx, on_step)
        loss_sum, step_count = all_sum([float(meter.sum), float(meter.count)], ctx)
        train_s, train_loss = time.perf_counter() - t0, loss_sum / step_count
        curve += [[step, round(float(value), 5)] for step, value in points]
        accuracy, evaluated = evaluate(net, test_set, ctx)
        history.append({
            "epoch": epoch + 1, "train_loss": round(train_loss, 5), "test_accuracy": round(accuracy, 5),
            "samples_per_s": round(len(sampler) * ctx.world_size / train_s, 1), "train_time_s": round(train_s, 3),
            "wall_time_s": round(time.perf_counter() - t0, 3), "steps": steps, "test_samples_evaluated": evaluated,
        })  # fmt: skip
        metrics.update(
            final_test_accuracy=history[-1]["test_accuracy"], final_train_loss=history[-1]["train_loss"]
        )
        if main:
            progress(epoch + 1, args.epochs, steps, steps, train_loss)
            print(
                f"epoch {epoch + 1}/{args.epochs}: train_loss={train_loss:.3f} test_acc={accuracy:.3f} "
                f"samples/s={history[-1]['samples_per_s']:.0f} time={history[-1]['wall_time_s']:.1f}s",
                flush=True,
            )
            save(
                {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "epoch": epoch + 1, "metrics": {"epochs": history}, "curve": curve, "data": data},
                out_dir / "checkpoint.pt",
            )  # fmt: skip
            save(metrics, out_dir / "metrics.json")
    if main:
        if start >= args.epochs:
            print(f"checkpoint already has {start} epoch(s) of {args.epochs}: nothing to train", flush=True)
        total_s = round(sum(e["train_time_s"] for e in history), 3)
        metrics.update(status="completed", loss_curve=curve, total_train_time_s=total_s)
        save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out_dir / "model.pt")
        save(metrics, out_dir / "metrics.json")
        plotted = plot(out_dir / "loss_curve.png", f"{JOB_NAME} on {describe_data(data)}", curve, history)
        written = ["metrics.json", "model.pt", "checkpoint.pt", *(["loss_curve.png"] if plotted else [])]
        print(f"results in {out_dir.resolve()}/: {', '.join(written)}", flush=True)
    return metrics


def number(cast: Callable[[str], Any], low: float, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: `cast(text)`, finite and >= low (> low when strict)."""
    kind = "an integer" if cast is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"expected {kind} {'>' if strict else '>='} {low:g}, got {text!r}"
            )
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    env = os.environ.get
    add("--data", choices=("cifar10", "synthetic"), default="cifar10", help="synthetic: a generated stand-in")
    add("--data-dir", default=env("LEPTON_DATA_DIR"), help="cifar-10-batches-py/, its parent, or the .tar.gz")
    add("--train-samples", type=number(int, 1), help="use the first N (synthetic: 50000 if not given)")
    add("--test-samples", type=number(int, 1), help="use the first N (synthetic: 10000 if not given)")
    add("--no-augment", action="store_true", help="no random crop and flip on cifar10's training set")
    add("--epochs", type=number(int, 1), default=2, help="the seed's")
    add("--batch-size", type=number(int, 1), default=4, help="per process; the seed's")
    add("--lr", type=number(float, 0, strict=True), default=0.001, help="SGD learning rate")
    add("--momentum", type=number(float, 0), default=0.9, help="SGD momentum")
    add("--seed", type=number(int, 0), default=0, help="weights, order, augmentation, synthetic data")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    add("--amp", action=argparse.BooleanOptionalAction, default=True, help="fp16 autocast on CUDA")
    add("--workers", type=number(int, 0), help="DataLoader workers per process (4 on CUDA, 0 on CPU)")
    add("--threads", type=number(int, 1), help="per process ($OMP_NUM_THREADS, else cores / processes)")
    add("--output-dir", default=env("LEPTON_OUTPUT_DIR") or "outputs", help="where rank 0 writes results")
    add("--resume", nargs="?", const="auto", metavar="PATH", help="PATH, or the output dir's checkpoint.pt")
    add("--log-every", type=number(int, 1), default=2000, help="the seed's '[epoch, step] loss' line")
    add("--progress-interval", type=number(float, 0), default=2.0, help="seconds between LEPTON_PROGRESS")
    add("--dist-timeout", type=number(float, 0, strict=True), default=120.0, help="seconds, per collective")
    args = p.parse_args(argv)
    if args.data == "cifar10" and not args.data_dir:
        p.error(
            "no training data: --data-dir DIR (or $LEPTON_DATA_DIR) must hold CIFAR-10's python version; "
            "nothing is downloaded. Pass --data synthetic to train on a generated stand-in instead"
        )
    return args


def main(argv: list[str] | None = None, on_step: StepHook | None = None) -> int:
    args = parse_args(argv)
    try:
        ctx = setup_distributed(args)
        train(args, ctx, on_step)
        if ctx.enabled:
            # Ranks leave together: a rank that tears gloo down while rank 0 is still writing results
            # can abort in gloo's destructor ("terminate called without an active exception"), and
            # then rank 0's torchrun waits out its exit barrier for a peer that is gone.
            dist.barrier()
    except (SetupError, DataError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        # Leave the group explicitly, also on errors: a rank that leaves it at interpreter exit can
        # keep its peers waiting at torchrun's exit barrier for minutes.
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
