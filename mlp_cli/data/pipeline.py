"""From uint8 images in memory to normalized float32 batches: splits, statistics, augmentation.

Images stay uint8 (N, H, W, C) for the whole run; each batch is cropped, flipped and
normalized on its own, vectorized over the batch, and handed to the engine as the NCHW view
of a channels-last float32 array (the layout the conv layers work in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_STATS_CHUNK = 4096  # images per chunk when computing channel statistics (no full float copy)


@dataclass
class Split:
    """One split of a dataset: x uint8 (N, H, W, C) images or float32 (N, D) features; y int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> "Split":
        return Split(self.x[index], self.y[index], self.classes)


def is_image(split: Split) -> bool:
    return split.x.ndim == 4


def normalization(train: Split, data_cfg) -> dict:
    """Per-channel mean and std of the training pixels scaled to [0, 1] (identity when
    data.normalize is off, and for feature data such as circles, which is already centered)."""
    if not is_image(train):
        d = train.x.shape[1]
        return {"mean": [0.0] * d, "std": [1.0] * d}
    channels = train.x.shape[3]
    if not data_cfg.normalize or len(train) == 0:
        return {"mean": [0.0] * channels, "std": [1.0] * channels}
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(train), _STATS_CHUNK):
        chunk = train.x[start:start + _STATS_CHUNK].reshape(-1, channels).astype(np.float32)
        total += chunk.sum(axis=0, dtype=np.float64)
        squares += np.square(chunk).sum(axis=0, dtype=np.float64)
    n = train.x[..., 0].size
    mean = total / n / 255
    std = np.sqrt(np.maximum(squares / n / 255**2 - mean**2, 0))
    std = np.where(std > 1e-8, std, 1.0)  # a constant channel: leave it unscaled
    return {"mean": mean.tolist(), "std": std.tolist()}


def _scale_shift(normalization: dict) -> tuple[np.ndarray, np.ndarray]:
    """(u8 / 255 - mean) / std == u8 * scale + shift, per channel, in float32."""
    mean = np.asarray(normalization["mean"], np.float64)
    std = np.asarray(normalization["std"], np.float64)
    return (1 / (255 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def normalize(images: np.ndarray, normalization: dict) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W), the NCHW view of channels-last memory."""
    scale, shift = _scale_shift(normalization)
    out = np.multiply(images, scale, dtype=np.float32)
    out += shift
    return out.transpose(0, 3, 1, 2)


def crop_and_flip(images: np.ndarray, rng: np.random.Generator, augment) -> np.ndarray:
    """Random crops (after zero padding) and horizontal flips, one gather for the whole batch.

    images: uint8 (B, H, W, C) -> (B, crop, crop, C); the crop defaults to the image size.
    """
    B, H, W, C = images.shape
    pad = augment.crop_padding
    ch = cw = augment.crop or None
    ch, cw = (ch or H), (cw or W)
    if pad:
        padded = np.zeros((B, H + 2 * pad, W + 2 * pad, C), images.dtype)
        padded[:, pad:pad + H, pad:pad + W] = images
    else:
        padded = images
    oy = rng.integers(0, padded.shape[1] - ch + 1, B)
    ox = rng.integers(0, padded.shape[2] - cw + 1, B)
    flip = rng.random(B) < 0.5 if augment.hflip else np.zeros(B, bool)
    rows = oy[:, None] + np.arange(ch)
    ar = np.arange(cw)
    cols = np.where(flip[:, None], ox[:, None] + cw - 1 - ar, ox[:, None] + ar)
    return padded[np.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop(images: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 (B, H, W, C) -> (B, size, size, C), the central window (top-left on odd margins, as torchvision)."""
    if not size:
        return images
    H, W = images.shape[1:3]
    top, left = int(round((H - size) / 2.0)), int(round((W - size) / 2.0))
    return images[:, top:top + size, left:left + size]


def batches(split: Split, batch_size: int, *, train: bool, rng: np.random.Generator | None, normalization: dict,
            augment):
    """Yield (x, y) batches: x float32 (B, C, H, W) (NCHW view of NHWC memory) or (B, D); y int64 (B,).

    Training: shuffled, randomly cropped and flipped as `augment` says, all drawn from `rng`.
    Evaluation: in order, center-cropped to augment.crop, no randomness. The last batch may be short.
    """
    n = len(split)
    order = rng.permutation(n) if train else None
    augmenting = train and (augment.crop or augment.crop_padding or augment.hflip)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size] if train else slice(start, start + batch_size)
        x, y = split.x[index], split.y[index]
        if not is_image(split):
            yield x.astype(np.float32, copy=False), y
            continue
        if augmenting:
            x = crop_and_flip(x, rng, augment)
        elif augment.crop:
            x = center_crop(x, augment.crop)
        yield normalize(x, normalization), y
