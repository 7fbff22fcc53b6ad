"""Predict the class of image files with a checkpoint: `mlp-cli predict --checkpoint FILE IMAGE...`.

Each image goes through the steps the evaluation pipeline applies to a dataset image:

1. decoded with Pillow and converted to "L" (one channel) or "RGB" (three), as the checkpoint's
   input_shape [C, H, W] asks;
2. resized (bilinear) to the size of the images the network was trained on, when different. For a
   run with `data.augment.crop` that is the dataset's image size (32x32 for CIFAR), and the image is
   then center-cropped to the crop size, as evaluation does; otherwise it is the input H x W;
3. scaled to [0, 1] and normalized per channel with the checkpoint's mean and std, in float32, and
   laid out as the NCHW view of channels-last memory that the data pipeline yields.

The network runs in eval mode; probabilities are the softmax of its logits, averaged with the logits
of the mirrored image when the run set `data.augment.test_hflip` (as evaluation does). An image
that cannot be read does not stop the others: it is reported beside the predictions of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlp_cli.data.imagefolder import read_image
from mlp_cli.data.pipeline import center_crop, normalize
from mlp_cli.errors import UsageError
from mlp_cli.evaluate import forward
from mlp_cli.nn.losses import softmax

BATCH = 256


class NotAnImageModel(UsageError, ValueError):
    """The checkpoint's network does not take images (the CLI exits with code 2)."""


@dataclass
class Geometry:
    channels: int
    resize_to: tuple[int, int]  # (H, W) the image is resized to
    crop: tuple[int, int] | None  # (H, W) of the center crop after resizing, or None


def recorded_augment(ckpt) -> dict:
    """The data.augment section of the checkpoint's recorded config ({} if it has none)."""
    data = ckpt.config.get("data")
    augment = data.get("augment") if isinstance(data, dict) else None
    return augment if isinstance(augment, dict) else {}


def geometry(ckpt) -> Geometry:
    """How an image file becomes the network's input, from the checkpoint's metadata."""
    shape = list(ckpt.input_shape)
    data = ckpt.config.get("data")
    data = data if isinstance(data, dict) else {}
    if len(shape) != 3:
        dataset = data.get("dataset")
        origin = f" ({dataset} data)" if dataset else ""
        raise NotAnImageModel(
            f"this checkpoint's network takes {shape[0] if shape else 0} features per example{origin}, "
            "not images; predict works with checkpoints of image models (input shape [C, H, W])")
    c, h, w = (int(v) for v in shape)
    crop = recorded_augment(ckpt).get("crop")
    if crop:
        try:
            from mlp_cli import shapes

            uncropped = {**data, "augment": {**data["augment"], "crop": None}}
            _, full_h, full_w = shapes.dataset_input_shape(uncropped)
        except Exception:  # an unusual recorded config: fall back to resizing straight to the input
            full_h, full_w = h, w
        if (full_h, full_w) != (h, w) and full_h >= h and full_w >= w:
            return Geometry(c, (full_h, full_w), (h, w))
    return Geometry(c, (h, w), None)


def load_image(path, geo: Geometry) -> np.ndarray:
    """The image as uint8 (H, W, C) of the network's input size (DataError naming it if unreadable)."""
    from PIL import Image

    img = read_image(Path(path), "L" if geo.channels == 1 else "RGB")
    th, tw = geo.resize_to
    if img.size != (tw, th):
        img = img.resize((tw, th), Image.BILINEAR)
    u8 = np.asarray(img, dtype=np.uint8)
    if u8.ndim == 2:
        u8 = u8[:, :, None]
    if geo.crop is not None:  # square: the config's augment.crop
        u8 = center_crop(u8[None], geo.crop[0])[0]
    return np.ascontiguousarray(u8)


def predict_files(checkpoint_path, images, *, top_k: int = 3, execution=None) -> tuple[list[dict], list[str]]:
    """(results, errors): one result per readable image, {"image", "class", "index", "top_k":
    [{"class", "index", "probability"}]}, in the given order, and one message per unreadable one.
    The network runs as `execution` says (default: Execution.from_env())."""
    from mlp_cli import checkpoint
    from mlp_cli.errors import DataError

    ckpt = checkpoint.load(checkpoint_path)
    try:
        geo = geometry(ckpt)
    except NotAnImageModel as e:
        raise NotAnImageModel(f"{checkpoint_path}: {e}") from None
    loaded, errors = [], []
    for path in images:
        try:
            loaded.append((path, load_image(path, geo)))
        except DataError as e:
            errors.append(str(e))
    images = [path for path, _ in loaded]
    arrays = np.stack([a for _, a in loaded]) if loaded else np.zeros((0, 1, 1, geo.channels), np.uint8)
    model = checkpoint.load_model(ckpt, execution)
    test_hflip = bool(recorded_augment(ckpt).get("test_hflip", False))
    probs = np.concatenate([softmax(forward(model, normalize(arrays[i:i + BATCH], ckpt.normalization),
                                            test_hflip=test_hflip))
                            for i in range(0, len(arrays), BATCH)]) if len(arrays) else np.zeros((0, 0))
    classes = [str(c) for c in ckpt.classes]
    if probs.size and probs.shape[1] != len(classes):
        from mlp_cli.errors import CheckpointError

        raise CheckpointError(f"{checkpoint_path}: the network gives {probs.shape[1]} scores but the checkpoint "
                              f"names {len(classes)} classes")
    k = min(top_k, len(classes))
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p, kind="stable")[:k]
        top = [{"class": classes[i], "index": int(i), "probability": float(p[i])} for i in order]
        results.append({"image": str(path), "class": top[0]["class"], "index": top[0]["index"], "top_k": top})
    return results, errors


def format_predictions(results: list[dict]) -> str:
    """One line per image: the predicted class and the top-k probabilities."""
    width = max((len(r["image"]) for r in results), default=0)
    lines = []
    for r in results:
        best = r["top_k"][0]
        rest = ", ".join(f"{t['class']} {100 * t['probability']:.2f}%" for t in r["top_k"])
        lines.append(f"{r['image']:<{width}}  {r['class']} ({100 * best['probability']:.2f}%)"
                     f"   top {len(r['top_k'])}: {rest}")
    return "\n".join(lines)
