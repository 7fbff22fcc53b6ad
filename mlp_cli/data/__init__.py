"""The data layer: datasets in memory as uint8 images, batches as float32 for the engine.

    splits = load_splits(cfg.data, cfg.seed, ("train", "val"))
    norm = normalization(splits["train"], cfg.data)
    for x, y in batches(splits["train"], 128, train=True, rng=rng, normalization=norm, augment=cfg.data.augment):
        ...
"""

from mlp_cli.data.pipeline import Split, batches, center_crop, crop_and_flip, normalization, normalize
from mlp_cli.data.sources import load_splits, split_indices

__all__ = ["Split", "batches", "center_crop", "crop_and_flip", "load_splits", "normalization", "normalize",
           "split_indices"]
