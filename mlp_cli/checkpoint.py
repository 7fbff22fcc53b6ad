"""Checkpoints: safetensors files that PyTorch can load, with everything needed to use them.

Tensors are the state dict of the equivalent torch.nn.Sequential. The metadata holds, as JSON
strings: `architecture` (PyTorch-vocabulary layer dicts), `input_shape` ([C, H, W] or
[features]), `normalization` (per-channel mean and std of [0, 1] pixels), `classes`, `config`
(the resolved run config) and `epoch`.

Resuming also needs the optimizer state: `training_state_bytes` makes the file that goes
beside the weights (`last.optim.safetensors`), with the epoch it belongs to and the best-so-far
bookkeeping. Random state needs no saving: every epoch's generators are derived from (seed, epoch).

This module only turns networks into bytes and back; where the bytes go, and how a set of files
is committed together, is the run directory's business (rundir.py).
"""

from __future__ import annotations

import json
import struct
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


# The safetensors format (https://github.com/huggingface/safetensors#format): an 8-byte little-endian
# header length, a JSON header naming each tensor's dtype, shape and byte range (plus string
# metadata), padded with spaces to 8 bytes, then the tensors' bytes. The library's own writer
# orders the metadata differently on every call (a Rust HashMap), so two checkpoints of the same
# weights would differ in bytes; this writer sorts everything, and the library reads what it writes.
_SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                       "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _tensor_bytes(tensors: dict[str, np.ndarray], metadata: dict) -> bytes:
    header = {"__metadata__": {k: json.dumps(metadata[k]) for k in sorted(metadata)}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name], order="C")  # keeps 0-d arrays 0-d
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        data = array.tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


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


def model_bytes(model, *, architecture, input_shape, normalization, classes, config, epoch) -> bytes:
    """The .safetensors file of a network: its state dict and the metadata that describes it."""
    metadata = {
        "format": FORMAT, "architecture": architecture, "input_shape": list(input_shape),
        "normalization": normalization, "classes": list(classes), "config": config, "epoch": int(epoch),
    }
    return _tensor_bytes(model.state_dict(), metadata)


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


def load_model(ckpt: Checkpoint, execution=None):
    """Build the engine network recorded in a checkpoint and load its weights (eval mode), run as
    `execution` says (an nn.execution.Execution; default: Execution.from_env())."""
    from mlp_cli.nn.execution import Execution
    from mlp_cli.nn.model import build

    try:
        model = build(ckpt.architecture, execution=execution if execution is not None else Execution.from_env())
        model.load_state_dict(ckpt.state)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint tensors do not fit its architecture: {e}") from None
    # Set up as training sets it up (the first layer's input gradient is never needed), so that
    # each conv layer takes the same method as in training and gives the same logits to the bit.
    return model.skip_input_gradient().eval()


def training_state_bytes(optimizer_state: dict[str, np.ndarray], *, epoch: int, info: dict) -> bytes:
    """last.optim.safetensors: the optimizer's state after `epoch`, with `info` (best-so-far) as metadata."""
    return _tensor_bytes(optimizer_state, {"epoch": int(epoch), **info})


def load_training_state(path) -> tuple[dict[str, np.ndarray], dict]:
    return _load_tensors(path)
