"""The data layer: data sets in memory as uint8 images, batches as float32 for the engine.

    splits = load_splits(cfg.data, cfg.seed, ("train", "val"))
    norm = normalization(splits["train"], cfg.data)
    for x, y in batches(splits["train"], 128, train=True, rng=rng, normalization=norm, augment=cfg.data.augment):
        ...

Sources: circles (generated, circles.py), mnist / fashion-mnist / cifar10 / cifar100 (torchvision,
sources.py), imagefolder (cached decode, imagefolder.py). Batching, augmentation and normalization:
pipeline.py. The validation split: split.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlp_cli import registry as R
from mlp_cli.data.pipeline import batches, center_crop, crop_and_flip, cutout, mirror, normalization, normalize
from mlp_cli.data.split import Split, split_indices, train_subset

__all__ = ["Split", "batches", "center_crop", "crop_and_flip", "cutout", "load_splits", "mirror",
           "normalization", "normalize", "resolve", "resolve_config", "split_indices"]

SPLITS = ("train", "val", "test")


def resolve(data_cfg):
    """The data section as a run records it, with what it leaves open filled in: the absolute root
    the files are read from (so that `eval` finds them from any folder or shell, whatever
    MLP_CLI_DATA says there), and for an image folder its channels and, without data.image_size,
    the size all its images share (ConfigError when they differ). Circles reads no files."""
    source = R.dataset(data_cfg.dataset).source
    if source == R.GENERATED:
        return data_cfg
    root = os.path.abspath(data_cfg.resolved_root())
    update = {"root": root}
    if source == R.FOLDER:
        from mlp_cli.data.imagefolder import common_image_size

        update["channels"] = data_cfg.channels or 3
        update["image_size"] = data_cfg.image_size or common_image_size(Path(root))
    return data_cfg.model_copy(update=update)


def resolve_config(cfg):
    """`cfg` with its data section resolved (see `resolve`)."""
    return cfg.model_copy(update={"data": resolve(cfg.data)})


def load_splits(data_cfg, seed: int, splits=SPLITS) -> dict[str, Split]:
    """The requested splits of the data set `data_cfg` (the config's `data` section) describes.

    "val" is carved from the training set: data.val_size examples (a count if >= 1, else a fraction),
    picked by a permutation seeded from `seed` (the same every time); "train" is the rest, or with
    data.train_size that many of the rest (a count, or a fraction of the rest), picked the same way
    (UsageError if it asks for none or for more than there are). With
    val_size 0, "val" is an empty Split (len 0, same dtype and example shape). "test" is the data
    set's own test set, never used for "val". Only what is asked is loaded: ("test",) does not read
    the training files. Raises DataError when the data cannot be found or read.
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SPLITS)}")
    out = {}
    if "train" in splits or "val" in splits:
        full = _load(data_cfg, train=True)
        train_idx, val_idx = split_indices(len(full), data_cfg.val_size, seed)
        if "train" in splits:
            train_idx = train_subset(train_idx, data_cfg.train_size, seed, len(full))
            out["train"] = full if len(train_idx) == len(full) else full.subset(train_idx)
        if "val" in splits:
            out["val"] = full.subset(val_idx)
        del full
    if "test" in splits:
        out["test"] = _load(data_cfg, train=False)
    return {name: out[name] for name in splits}


def _load(data_cfg, train: bool) -> Split:
    source = R.dataset(data_cfg.dataset).source
    if source == R.GENERATED:
        from mlp_cli.data.circles import CLASSES, make_circles

        x, y = make_circles()[0 if train else 1]
        return Split(x, y, list(CLASSES))
    if source == R.FOLDER:
        from mlp_cli.data.imagefolder import load_imagefolder

        return load_imagefolder(data_cfg, "train" if train else "test")
    from mlp_cli.data.sources import load_torchvision

    return load_torchvision(data_cfg.dataset, data_cfg.resolved_root(), train)
