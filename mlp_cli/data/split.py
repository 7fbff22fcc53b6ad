"""The `Split` container, the seeded validation split carved from a training set, and the seeded
subset of what is left that data.train_size asks for."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlp_cli.errors import DataError, UsageError

VAL_SEED = 0x5EED  # mixed with the config's seed: np.random.default_rng([seed, VAL_SEED])
TRAIN_SEED = 0x7EA1  # the same for data.train_size's subset, drawn independently of the validation split


@dataclass
class Split:
    """One split of a data set, compact in memory.

    x: images as uint8 (N, H, W, C), C-contiguous (channels last); feature data (circles): float32 (N, D).
    y: int64 (N,) class indices into `classes`.
    """

    x: np.ndarray
    y: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    def subset(self, index: np.ndarray) -> "Split":
        """The examples at `index` (an integer array), copied into compact arrays."""
        return Split(np.ascontiguousarray(self.x[index]), np.ascontiguousarray(self.y[index]), list(self.classes))


def val_count(val_size: float, n: int) -> int:
    """How many of `n` training examples go to validation: `val_size` if >= 1, else round(val_size * n)."""
    if val_size <= 0:
        return 0
    count = int(val_size) if val_size >= 1 else int(round(val_size * n))
    if count >= n:
        raise DataError(
            f"data.val_size={val_size:g} asks for {count} validation examples but the training set has only {n}; "
            "use a smaller count or a fraction below 1 (e.g. data.val_size=0.1)")
    return count


def split_indices(n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) index arrays into a training set of `n` examples, each sorted, disjoint, together all of it.

    The validation examples are the first ones of a permutation seeded from (seed, VAL_SEED): the
    same seed always gives the same split, whatever else the run draws.
    """
    count = val_count(val_size, n)
    perm = np.random.default_rng([int(seed), VAL_SEED]).permutation(n)
    return np.sort(perm[count:]), np.sort(perm[:count])


def train_count(train_size: float, n: int, total: int) -> int:
    """How many of the `n` training examples that the validation split left (of `total`) to keep:
    `train_size` if >= 1, else round(train_size * n). UsageError (exit 2) if that is none or more than `n`."""
    count = int(train_size) if train_size >= 1 else int(round(train_size * n))
    left = f"the training split has {n:,} examples" + (
        f" left after the validation split ({total - n:,} of {total:,})" if n != total else "")
    if count > n:
        raise UsageError(f"invalid config: data.train_size={train_size:g} asks for {count:,} training examples but "
                         f"{left}; use a count up to {n} or a fraction below 1 (e.g. data.train_size=0.1)")
    if count < 1:
        raise UsageError(f"invalid config: data.train_size={train_size:g} keeps no example: {left}; use a larger "
                         f"fraction or a count (e.g. data.train_size={min(n, 100)})")
    return count


def train_subset(train: np.ndarray, train_size: float | None, seed: int, total: int) -> np.ndarray:
    """The sorted indices of `train` (the training examples of `total`, after the validation split)
    that data.train_size keeps: a permutation seeded from (seed, TRAIN_SEED), so the same seed
    always keeps the same examples, and the validation split does not depend on train_size."""
    if train_size is None:
        return train
    count = train_count(train_size, len(train), total)
    perm = np.random.default_rng([int(seed), TRAIN_SEED]).permutation(len(train))
    return train[np.sort(perm[:count])]
