"""A deterministic, learnable CIFAR-shaped stand-in for demos and tests where the real data set
cannot be downloaded. Used only when asked for (`--data synthetic`).

Each class is a fixed smooth colour template; a sample is a random 32x32 crop of its class's 40x40
template, times a random contrast, plus brightness and gaussian noise, quantised to uint8. Template
amplitude against noise sets the difficulty: with the job's defaults the loss falls visibly within
the first epoch; fainter templates leave a large-batch run at chance for a whole epoch, more noise
makes the set unlearnable, less makes it trivial."""

from __future__ import annotations

import numpy as np
from cifar import ImageSet, Transform

CHUNK = 1000  # samples per seeded chunk: a sample does not depend on how many were asked for
TEMPLATE = 40
COARSE = 5  # template smoothness: a 5x5 random grid, bilinearly upsampled
CONTRAST = (0.6, 1.4)
BRIGHTNESS = 0.15
NOISE = 0.5
AMPLITUDE = 0.7


def _templates(seed: int) -> np.ndarray:
    """10 smooth colour images (10, 3, 40, 40) with values in [0, 255], one per class."""
    pattern = np.random.default_rng([seed, 0]).uniform(-0.5, 0.5, size=(10, 3, COARSE, COARSE))
    coarse = 0.5 + AMPLITUDE * pattern.astype(np.float32)  # mid-grey plus a class pattern
    # Bilinear upsampling in numpy, so the bytes do not depend on torch's version.
    pos = np.linspace(0.0, COARSE - 1, TEMPLATE, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), COARSE - 2)
    frac = (pos - lo).astype(np.float32)
    rows = coarse[:, :, lo, :] * (1 - frac)[:, None] + coarse[:, :, lo + 1, :] * frac[:, None]
    return (rows[:, :, :, lo] * (1 - frac) + rows[:, :, :, lo + 1] * frac) * np.float32(255.0)


def synthetic_arrays(n: int, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images (n, 3, 32, 32) and int64 labels, deterministic in (seed, split). Generated in
    seeded chunks, so fewer samples are a prefix of more and memory stays small."""
    windows = np.lib.stride_tricks.sliding_window_view(_templates(seed), (32, 32), axis=(2, 3))
    shifts = TEMPLATE - 32 + 1
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    # Reused float32 buffers: touching fresh memory is slow, and this loop is most of a short run's start.
    x = np.empty((CHUNK, 3, 32, 32), dtype=np.float32)
    noise = np.empty_like(x)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, split, chunk])
        y, dy, dx = (rng.integers(0, k, size=CHUNK) for k in (10, shifts, shifts))  # whole chunks
        contrast = rng.uniform(*CONTRAST, size=CHUNK).astype(np.float32)
        brightness = rng.uniform(-BRIGHTNESS, BRIGHTNESS, size=CHUNK).astype(np.float32) * 255
        rng.standard_normal(out=noise, dtype=np.float32)
        np.multiply(windows[y, :, dy, dx], contrast[:, None, None, None], out=x)
        x += brightness[:, None, None, None]
        noise *= NOISE * 255.0
        x += noise
        np.clip(x, 0.0, 255.0, out=x)
        np.rint(x, out=x)
        take = min(CHUNK, n - start)
        images[start : start + take] = x[:take]  # float to uint8 on assignment (already clipped)
        labels[start : start + take] = y[:take]
    return images, labels


class SyntheticCIFAR10(ImageSet):
    """The synthetic set in the CIFAR10 dataset's shape: split 1 is training, split 2 is test."""

    def __init__(self, n: int, seed: int, train: bool = True, transform: Transform | None = None) -> None:
        super().__init__(*synthetic_arrays(n, seed, 1 if train else 2), transform)
