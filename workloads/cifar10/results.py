"""What rank 0 leaves in the output dir and reads back to resume: files written atomically, so a
reader (the controller, a resume) never sees half of one; the checkpoint check; the loss plot."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a rename within a folder is atomic


def save(obj: Any, path: Path) -> None:
    """JSON for a .json path, torch.save otherwise."""
    if path.suffix == ".json":
        atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())
        return
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def read_checkpoint(resume: str, out_dir: Path, data: dict[str, Any]) -> tuple[str | None, Any]:
    """(error, checkpoint) for `--resume [PATH]`: "auto" is the output dir's checkpoint.pt if there
    is one. A checkpoint from other data is an error: resuming on it would mix two experiments."""
    path = out_dir / "checkpoint.pt" if resume == "auto" else Path(resume).expanduser()
    if not path.is_file():
        if resume != "auto":
            return f"--resume {resume!r}: no such checkpoint file", None
        print(f"--resume: no checkpoint at {path}, starting from scratch", flush=True)
        return None, None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    print(f"resuming from {path} (epoch {ckpt['epoch']} done)", flush=True)
    for key, value in ckpt.get("data", {}).items():
        if key in ("kind", "seed", "train_samples", "test_samples") and value != data.get(key):
            return (
                f"--resume: the checkpoint was trained with data {key}={value!r}, this run has "
                f"{data.get(key)!r}; use the same data arguments or another --output-dir"
            ), None
    return None, ckpt


def describe_data(data: dict[str, Any]) -> str:
    """What the model was trained on, for every title and table: the synthetic stand-in reaches
    ~0.99 accuracy, which a reader must never take for a CIFAR-10 result."""
    if data.get("kind") == "synthetic":
        return f"SYNTHETIC CIFAR-shaped data (not CIFAR-10, seed {data.get('seed')})"
    return "real CIFAR-10"


def plot(path: Path, title: str, curve: list[list[float]], epochs: list[dict[str, Any]]) -> bool:
    """Training loss against step and test accuracy per epoch. Skipped (False, with a message)
    without matplotlib: the plot is a nicety, metrics.json is what matters."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # nodes have no display
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping loss_curve.png", flush=True)
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([p[0] for p in curve], [p[1] for p in curve], color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="training loss (cross-entropy)", title="loss")
    ticks = [e["epoch"] for e in epochs]  # whole epochs only
    ax_acc.plot(ticks, [e["test_accuracy"] for e in epochs], "o-", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(0, 1), xticks=ticks)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: training loss and test accuracy")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return True
