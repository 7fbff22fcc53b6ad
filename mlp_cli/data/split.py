"""The `Split` container and the seeded validation split carved from a training set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlp_cli.errors import DataError

VAL_SEED = 0x5EED  # mixed with the config's seed: np.random.default_rng([seed, VAL_SEED])


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
