"""The network of a config: its shapes checked before any data is read, then built from its seed."""

from __future__ import annotations

import numpy as np

from mlp_cli import shapes
from mlp_cli.config import Config, ConfigError
from mlp_cli.registry import NUM_CLASSES


def check_network(cfg: Config, *, batch_size: int | None = None, dtype=np.float32
                  ) -> tuple[list[int], list[shapes.LayerInfo]]:
    """Shape inference of the config's network, before any data is loaded or any weight allocated:
    ShapeError if it does not fit, UsageError if training it (batches of `batch_size`, default
    train.batch_size, in `dtype`) cannot fit in the memory available."""
    from mlp_cli import system

    input_shape = shapes.dataset_input_shape(cfg.data)
    infos = shapes.resolve(input_shape, [layer.model_dump() for layer in cfg.model.layers])
    classes = NUM_CLASSES.get(cfg.data.dataset)
    if classes is not None:
        check_outputs(infos, classes, cfg.data.dataset)
    optimizer_buffers = {"sgd": int(cfg.optim.momentum > 0), "adam": 2, "adamw": 2}[cfg.optim.name]
    needed = shapes.training_bytes(input_shape, infos, batch_size or cfg.train.batch_size,
                                   eval_batch_size=0 if batch_size else cfg.train.eval_batch_size,
                                   state_copies=2 + optimizer_buffers, bytes_per_value=np.dtype(dtype).itemsize)
    biggest = max(infos, key=lambda info: info.params)
    system.check_memory(
        needed, f"invalid config: training this network ({shapes.total_params(infos):,} parameters, "
        f"{biggest.params:,} of them in layer {biggest.index} ({biggest.type}))",
        "use smaller layers, smaller batches or smaller images")
    return input_shape, infos


def build_network(cfg: Config, architecture: list[dict], dtype=np.float32, execution=None):
    """The engine network of a config, initialized from its seed as `mlp-cli train` does, run as
    `execution` says (an nn.execution.Execution; default: Execution.from_env())."""
    from mlp_cli.nn.execution import Execution
    from mlp_cli.nn.model import build

    return build(architecture, rng=np.random.default_rng(cfg.seed), weight_init=cfg.model.init.weight,
                 init_std=cfg.model.init.std, bias_init=cfg.model.init.bias, dtype=dtype,
                 execution=execution if execution is not None else Execution.from_env())


def check_outputs(infos, num_classes: int, dataset: str) -> None:
    out = infos[-1].output_shape
    if list(out) != [num_classes]:
        raise ConfigError(
            f"invalid config: the network ends with output shape {out} but {dataset} has {num_classes} classes; "
            f"make the last layer {{type: linear, out_features: {num_classes}}}")
