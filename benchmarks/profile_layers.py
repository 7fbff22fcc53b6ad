"""Where a training step's time goes: forward and backward of each layer, loss, optimizer, data.

    python benchmarks/profile_layers.py configs/cifar10_cnn.yaml [--steps 10]

Runs `--steps` training steps on random data of the config's input shape (batch size from the
config) and prints the median time of each layer's forward and backward, the loss, the
optimizer update and the data pipeline (a batch of uint8 images cropped, flipped and
normalized as the config says), per step and extrapolated to an epoch of 50,000 images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np

from mlp_cli import config, shapes
from mlp_cli.data import Split, batches
from mlp_cli.nn.layers import Conv2d
from mlp_cli.nn.losses import softmax_cross_entropy
from mlp_cli.nn.optim import Optimizer
from mlp_cli.nn.parallel import single_threaded_blas
from mlp_cli.train import build_network, check_network


def label(i, layer):
    """'3 Conv2d' and, for a convolution, the method it took: '3 Conv2d dft', '0 Conv2d band B=7'."""
    name = f"{i:2d} {type(layer).__name__}"
    if isinstance(layer, Conv2d):
        algorithm = layer.algorithm
        name += f" {algorithm.name}" + (f" B={algorithm.B}" if algorithm.name == "band" else "")
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--epoch-size", type=int, default=50_000)
    args = parser.parse_args()

    cfg = config.load(args.config)
    model = build_network(cfg, shapes.architecture(check_network(cfg)[1]))
    model.skip_input_gradient()
    optimizer = Optimizer(cfg.optim)
    B = cfg.train.batch_size
    rng = np.random.default_rng(0)

    native = shapes.dataset_input_shape(cfg.data.model_copy(update={"augment": config.Augment()}))
    if len(native) == 3:
        c, h, w = native
        images = rng.integers(0, 256, (B * (args.steps + 1), h, w, c), dtype=np.uint8)
    else:
        images = rng.standard_normal((B * (args.steps + 1), native[0])).astype(np.float32)
    split = Split(images, rng.integers(0, 10, len(images)), [str(i) for i in range(10)])
    norm = {"mean": [0.5] * (native[0] if len(native) == 3 else 1), "std": [0.25] * (native[0] if len(native) == 3 else 1)}

    times = defaultdict(list)
    it = batches(split, B, train=True, rng=rng, normalization=norm, augment=cfg.data.augment)
    blas = single_threaded_blas()  # as in training
    blas.__enter__()
    for step in range(args.steps + 1):
        t = time.perf_counter()
        x, y = next(it)
        times["data"].append(time.perf_counter() - t)
        for i in model.order:  # the order Sequential runs them in
            t = time.perf_counter()
            x = model.layers[i].forward(x)
            times[f"{label(i, model.layers[i])} forward"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, d = softmax_cross_entropy(x, y)
        times["loss"].append(time.perf_counter() - t)
        for i in reversed(model.order):
            if d is None:  # the layers before the first parametric one get no gradient
                break
            t = time.perf_counter()
            d = model.layers[i].backward(d)
            times[f"{label(i, model.layers[i])} backward"].append(time.perf_counter() - t)
        t = time.perf_counter()
        optimizer.step(model.named_params(), model.named_grads(), cfg.optim.lr)
        times["optimizer"].append(time.perf_counter() - t)

    per_epoch = args.epoch_size / B
    medians = {k: statistics.median(v[1:]) for k, v in times.items()}  # drop the warm-up step
    total = sum(medians.values())
    print(f"{args.config}: batch {B}, {args.steps} steps; milliseconds per step and seconds per epoch of {args.epoch_size}")
    for name, t in sorted(medians.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {1e3 * t:8.2f} ms  {t * per_epoch:7.2f} s  {100 * t / total:5.1f}%")
    print(f"  {'total':28s} {1e3 * total:8.2f} ms  {total * per_epoch:7.2f} s")


if __name__ == "__main__":
    main()
