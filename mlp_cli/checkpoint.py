"""Checkpoints: safetensors files that PyTorch can load, with everything needed to use them.

Tensors are the state dict of the equivalent torch.nn.Sequential. The metadata holds, as JSON
strings: `architecture` (PyTorch-vocabulary layer dicts), `input_shape` ([C, H, W] or
[features]), `normalization` (per-channel mean and std of [0, 1] pixels), `classes`, `config`
(the resolved run config) and `epoch`.

Resuming also needs the optimizer state: `save_training_state` writes it beside the weights
(`last.optim.safetensors` next to `last.safetensors`), with the epoch it belongs to, so a
mismatched pair is detected. Random state needs no saving: every epoch's generators are
derived from (seed, epoch).

Every file is written to a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlp_cli.errors import CheckpointError

FORMAT = "mlp-cli/1"
REQUIRED = ("architecture", "input_shape", "normalization", "classes", "config")


@dataclass
class Checkpoint:
    state: dict[str, np.ndarray]
    metadata: dict

    @property
    def architecture(self) -> list[dict]:
        return self.metadata["architecture"]

    @property
    def input_shape(self) -> list[int]:
        return self.metadata["input_shape"]

    @property
    def normalization(self) -> dict:
        return self.metadata["normalization"]

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]

    @property
    def config(self) -> dict:
        return self.metadata["config"]


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _save_tensors(path, tensors: dict[str, np.ndarray], metadata: dict) -> None:
    from safetensors.numpy import save_file

    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}  # keeps 0-d arrays 0-d
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


def _load_tensors(path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass a .safetensors file from a run directory "
                              "(e.g. runs/NAME/best.safetensors)")
    try:
        with safe_open(str(path), framework="np") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = {k: json.loads(v) for k, v in raw_meta.items()}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated or corrupted?): {e}") from None
    return tensors, metadata


def save(path, model, *, architecture, input_shape, normalization, classes, config, epoch, extra=None) -> None:
    metadata = {
        "format": FORMAT, "architecture": architecture, "input_shape": list(input_shape),
        "normalization": normalization, "classes": list(classes), "config": config, "epoch": int(epoch),
        **(extra or {}),
    }
    _save_tensors(path, model.state_dict(), metadata)


def load(path) -> Checkpoint:
    tensors, metadata = _load_tensors(path)
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        raise CheckpointError(f"{path}: not an mlp-cli checkpoint (metadata lacks {', '.join(missing)})")
    damaged = _damaged_metadata(metadata)
    if damaged:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({damaged}); use a checkpoint that mlp-cli train wrote")
    return Checkpoint(tensors, metadata)


def _damaged_metadata(meta: dict) -> str | None:
    """What is wrong with the metadata's types and sizes, or None: a checkpoint is user input."""
    def numbers(v, n):
        return isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v)

    shape, norm = meta["input_shape"], meta["normalization"]
    if not (isinstance(meta["architecture"], list) and meta["architecture"]
            and all(isinstance(d, dict) and isinstance(d.get("type"), str) for d in meta["architecture"])):
        return "architecture: a list of layers expected"
    if not (isinstance(shape, list) and len(shape) in (1, 3) and all(isinstance(v, int) and v >= 1 for v in shape)):
        return f"input_shape {shape!r}: [C, H, W] or [features] expected"
    if not (isinstance(norm, dict) and numbers(norm.get("mean"), shape[0]) and numbers(norm.get("std"), shape[0])):
        return f"normalization: a mean and a std per channel ({shape[0]}) expected"
    if not (isinstance(meta["classes"], list) and len(meta["classes"]) >= 2):
        return "classes: a list of class names expected"
    if not isinstance(meta["config"], dict):
        return "config: the run's config expected"
    return None


def load_model(ckpt: Checkpoint):
    """Build the engine network recorded in a checkpoint and load its weights (eval mode)."""
    from mlp_cli.nn.model import build

    try:
        model = build(ckpt.architecture)
        model.load_state_dict(ckpt.state)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint tensors do not fit its architecture: {e}") from None
    # Set up as training sets it up (the first layer's input gradient is never needed), so that
    # each conv layer takes the same method as in training and gives the same logits to the bit.
    return model.skip_input_gradient().eval()


def optimizer_path(weights_path) -> Path:
    p = Path(weights_path)
    return p.with_name(p.name.replace(".safetensors", ".optim.safetensors"))


def save_training_state(weights_path, optimizer_state: dict[str, np.ndarray], *, epoch: int, info: dict) -> None:
    _save_tensors(optimizer_path(weights_path), optimizer_state, {"epoch": int(epoch), **info})


def load_training_state(weights_path) -> tuple[dict[str, np.ndarray], dict]:
    return _load_tensors(optimizer_path(weights_path))
