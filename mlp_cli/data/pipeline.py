"""From uint8 images in memory to normalized float32 batches: statistics, augmentation, batching.

Images stay uint8 (N, H, W, C) for the whole run. Each batch is gathered, cropped and flipped in
one fancy-indexing gather (vectorized over the batch, no loop over images), normalized in
float32 as u8 * scale[c] + shift[c], then cut out (a zeroed square per image, when configured). The engine gets the NCHW view of a channels-last float32
array (`a.transpose(0, 3, 1, 2)` of a C-contiguous (B, H, W, C) array), the layout its conv
layers work in.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mlp_cli.data.split import Split

_STATS_CHUNK = 2048  # images per chunk for the channel statistics (no float copy of the data set)


def is_image(split: Split) -> bool:
    return split.x.ndim == 4


# ----------------------------------------------------------------------------- statistics
def normalization(train: Split, data_cfg) -> dict:
    """{"mean": [...], "std": [...]} per channel of the training pixels scaled to [0, 1].

    Identity (mean 0, std 1) when data.normalize is false, and always for feature data (circles),
    which is already centered. Exact: counts the 256 values of each channel, chunk by chunk, then
    takes the population mean and std in float64. A constant channel gets std 1.
    """
    if not is_image(train):
        d = int(train.x.shape[1])
        return {"mean": [0.0] * d, "std": [1.0] * d}
    channels = int(train.x.shape[3])
    if not data_cfg.normalize or len(train) == 0:
        return {"mean": [0.0] * channels, "std": [1.0] * channels}
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(train), _STATS_CHUNK):
        chunk = train.x[start:start + _STATS_CHUNK]
        for c in range(channels):  # one channel at a time is faster than one bincount of offset values
            counts[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
    counts = counts.astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum(axis=1)
    mean = counts @ values / n
    var = counts @ (values ** 2) / n - mean ** 2
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _scale_shift(normalization: dict | None, width: int, image: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x_u8 / 255 - mean) / std == x_u8 * scale + shift per channel, in float32 (features: no / 255)."""
    if normalization is None:
        mean, std = np.zeros(width), np.ones(width)
    else:
        mean = np.asarray(normalization["mean"], dtype=np.float64)
        std = np.asarray(normalization["std"], dtype=np.float64)
        if mean.shape != (width,) or std.shape != (width,):
            raise ValueError(f"normalization has {mean.size} means and {std.size} stds for data with {width} channels")
    unit = 255.0 if image else 1.0
    return (1.0 / (unit * std)).astype(np.float32), (-mean / std).astype(np.float32)


def normalize(images: np.ndarray, normalization: dict | None) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W), the NCHW view of a C-contiguous (B, H, W, C) array."""
    return _normalize(images, *_scale_shift(normalization, images.shape[3], image=True))


def _normalize(images: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # Each image as one row of H*W*C numbers, the per-channel factors tiled along it: the same
    # float32 operations as u8 * scale[c] + shift[c], but NumPy's loops run over whole rows, not
    # over an innermost axis of C = 3 numbers (7x faster for RGB batches).
    b, h, w, c = images.shape
    if c > 1:  # one channel: its factors broadcast as scalars, faster still
        scale, shift = np.tile(scale, h * w), np.tile(shift, h * w)
    out = np.empty((b, h * w * c), dtype=np.float32)
    np.multiply(images.reshape(b, -1), scale, out=out)
    out += shift
    return out.reshape(images.shape).transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------------- augmentation
def crop_and_flip(images: np.ndarray, rng: np.random.Generator, augment, index: np.ndarray | None = None) -> np.ndarray:
    """Random crops (after zero padding by augment.crop_padding) and horizontal flips (augment.hflip,
    probability 0.5), drawn per image from `rng` in this order: top offsets, left offsets, flips.

    images: uint8 (N, H, W, C); `index` picks the batch from it (all of it when None). Returns a
    C-contiguous (B, crop, crop, C) array (crop defaults to the image size), made by one gather:
    out[k, i, j] = padded[k, oy[k] + i, ox[k] + (crop - 1 - j if flip[k] else j)].
    Only the batch is padded, never the data set; without padding the gather reads the data set directly.
    """
    if index is None:
        index = np.arange(len(images))
    index = np.asarray(index)
    b = len(index)
    _, h, w, c = images.shape
    pad = int(getattr(augment, "crop_padding", 0) or 0)
    crop = getattr(augment, "crop", None)
    ch, cw = (int(crop), int(crop)) if crop else (h, w)
    if ch > h + 2 * pad or cw > w + 2 * pad:
        raise ValueError(f"data.augment.crop {crop} is larger than the images ({h}x{w}, padded by {pad})")
    if pad:
        source = np.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=images.dtype)
        source[:, pad:pad + h, pad:pad + w] = images[index]
        batch = np.arange(b)
    elif images.flags.c_contiguous:
        source, batch = images, index  # gather straight from the data set
    else:
        source, batch = np.ascontiguousarray(images[index]), np.arange(b)
    oy = rng.integers(0, source.shape[1] - ch + 1, b)
    ox = rng.integers(0, source.shape[2] - cw + 1, b)
    flip = rng.random(b) < 0.5 if getattr(augment, "hflip", False) else np.zeros(b, dtype=bool)
    if c == 1:
        # Single-channel images (MNIST): each crop is one window of a sliding-window view, gathered
        # whole, then the flipped ones reversed; twice as fast as the pixel gather below for them
        # (which wins for RGB). Same result.
        out = np.empty((b, ch, cw, 1), dtype=source.dtype)
        out[..., 0] = sliding_window_view(source[..., 0], (ch, cw), axis=(1, 2))[batch, oy, ox]
        if flip.any():
            out[flip] = out[flip, :, ::-1]
        return out
    rows = oy[:, None] + np.arange(ch)
    ar = np.arange(cw)
    cols = np.where(flip[:, None], ox[:, None] + (cw - 1) - ar, ox[:, None] + ar)
    # The gather source[batch[:, None, None], rows[:, :, None], cols[:, None, :]], done as one np.take
    # with flat pixel indices over the pixels seen as opaque C-byte items (copies whole pixels, not
    # bytes): the same result, about 3x faster than numpy's multi-index fancy indexing.
    hs, ws = source.shape[1:3]
    pixels = source.view(np.dtype((np.void, c * source.itemsize))).reshape(-1)
    flat = (batch.astype(np.intp) * (hs * ws))[:, None, None] + (rows * ws)[:, :, None] + cols[:, None, :]
    return pixels.take(flat).view(source.dtype).reshape(b, ch, cw, c)


def cutout(x: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Cutout (DeVries & Taylor 2017): zero one size x size square, all channels, of each image, in place.

    x: float32 (B, C, H, W), normalized, so zero is the mean colour. Centres (cy, cx) are drawn per
    image from `rng`, rows then columns, uniformly over the H x W pixels; the square covers rows
    [cy - size // 2, cy - size // 2 + size) and the same columns, clipped at the borders (so a square
    near an edge is smaller). The mask comes from broadcast comparisons: no loop over the images.
    """
    b, _, h, w = x.shape
    if size >= h or size >= w:
        raise ValueError(f"data.augment.cutout {size} is not smaller than the images ({h}x{w})")
    top = rng.integers(0, h, b) - size // 2
    left = rng.integers(0, w, b) - size // 2
    rows, cols = np.arange(h), np.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (B, W)
    # copyto writes +0.0 (x * ~mask would leave -0.0 where x < 0) and keeps x's memory layout.
    np.copyto(x, 0, where=(in_rows[:, :, None] & in_cols[:, None, :])[:, None])
    return x


def mirror(x: np.ndarray) -> np.ndarray:
    """The horizontal mirror of float32 (B, C, H, W) images, in the layout the engine gets: the NCHW
    view of a C-contiguous (B, H, W, C) array (x itself may be any view)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)[:, :, ::-1]).transpose(0, 3, 1, 2)


def center_crop(images: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 (B, H, W, C) -> the central (B, size, size, C) window, a view.

    Offsets (H - size) // 2 and (W - size) // 2: on an odd margin the extra row/column is left at the
    bottom/right (as `mlp-cli predict` crops).
    """
    if not size:
        return images
    h, w = images.shape[1:3]
    if size > h or size > w:
        raise ValueError(f"data.augment.crop {size} is larger than the images ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size]


# ----------------------------------------------------------------------------- batches
def batches(split: Split, batch_size: int, *, train: bool, rng: np.random.Generator | None,
            normalization: dict | None, augment=None):
    """Yield (x, y) batches; y int64 (B,); the last batch may be short.

    Images: x float32 (B, C, H, W), the NCHW view of a C-contiguous (B, H, W, C) array.
    Features (circles): x float32 (B, D).
    train=True: order from rng.permutation, then per batch the random crops and flips of `augment`
    (see crop_and_flip) and, after normalization, its cutout squares (see cutout), all drawn from
    `rng` in that order, so a config without cutout draws exactly what it drew before cutout existed. train=False: in order, no randomness, center crop to
    augment.crop when set. `normalization` is the dict of `normalization()` (None: identity).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if train and rng is None:
        raise ValueError("batches(train=True) needs a numpy Generator for the shuffling and augmentation")
    n = len(split)
    order = rng.permutation(n) if train else None
    if not is_image(split):
        scale, shift = _scale_shift(normalization, split.x.shape[1], image=False)
        identity = bool(np.all(scale == 1) and np.all(shift == 0))
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size] if train else slice(start, start + batch_size)
            x = np.asarray(split.x[index], dtype=np.float32)
            if not identity:
                x = x * scale + shift
            yield x, split.y[index]
        return
    crop = getattr(augment, "crop", None)
    augmenting = train and bool(crop or getattr(augment, "crop_padding", 0) or getattr(augment, "hflip", False))
    holes = getattr(augment, "cutout", None) if train else None
    scale, shift = _scale_shift(normalization, split.x.shape[3], image=True)  # once, not per batch
    for start in range(0, n, batch_size):
        if train:
            index = order[start:start + batch_size]
            u8 = crop_and_flip(split.x, rng, augment, index) if augmenting else split.x[index]
            y = split.y[index]
        else:
            u8 = center_crop(split.x[start:start + batch_size], crop)
            y = split.y[start:start + batch_size]
        x = _normalize(u8, scale, shift)
        if holes:
            cutout(x, rng, holes)
        yield x, y
