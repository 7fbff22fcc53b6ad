"""Time a convolution's training step (forward + backward) by im2col and by the DFT method.

    python benchmarks/conv_methods.py [--batch 128] [--runs 7]

For each layer shape of the shipped configs (and a few others) prints both times, their ratio
and the ratio of multiply-adds that `dftconv.cost` predicts, which is what Conv2d's "auto"
choice uses (dftconv.DFT_COST_RATIO). Runs with the engine's threads, as training does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mlp_cli.nn.dftconv import DFT_COST_RATIO, cost
from mlp_cli.nn.layers import Conv2d
from mlp_cli.nn.parallel import single_threaded_blas

# (name, C, O, H, kernel, padding, first layer?)
SHAPES = [
    ("cifar conv1", 3, 32, 32, 5, 2, True),
    ("cifar conv1 (not first)", 3, 32, 32, 5, 2, False),
    ("cifar conv2", 32, 64, 16, 5, 2, False),
    ("cifar conv3", 64, 64, 8, 5, 2, False),
    ("improved conv1", 3, 32, 28, 5, 2, True),
    ("improved conv2", 32, 64, 14, 5, 2, False),
    ("improved conv3", 64, 64, 7, 5, 2, False),
    ("lenet conv1", 1, 6, 28, 5, 2, True),
    ("lenet conv2", 6, 16, 14, 5, 0, False),
    ("3x3 64->64 at 16", 64, 64, 16, 3, 1, False),
    ("3x3 16->32 at 32", 16, 32, 32, 3, 1, False),
    ("5x5 3->16 at 64", 3, 16, 64, 5, 2, True),
    ("3x3 3->16 at 96", 3, 16, 96, 3, 1, True),
]


def step_time(layer, x, dout, runs):
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        layer.forward(x)
        layer.backward(dout)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, median of {args.runs}; auto takes the DFT when the predicted ratio <= "
          f"{DFT_COST_RATIO['first layer']} (first layer) or {DFT_COST_RATIO['other layers']} (others)")
    print(f"{'layer':26s} {'im2col ms':>10s} {'dft ms':>8s} {'measured':>9s} {'predicted':>9s}")
    with single_threaded_blas():
        for name, C, O, H, k, pad, first in SHAPES:
            x = rng.standard_normal((args.batch, C, H, H)).astype(np.float32)
            times = {}
            for method in ("im2col", "dft"):
                layer = Conv2d(C, O, k, padding=pad)
                layer.method, layer.needs_input_grad = method, not first
                layer.params["weight"][...] = rng.standard_normal(layer.params["weight"].shape) * 0.1
                dout = np.ones_like(layer.forward(x))
                times[method] = step_time(layer, x, dout, args.runs)
            dft, im2col = cost(H, H, (k, k), (pad, pad), (1, 1), C, O)
            print(f"{name:26s} {times['im2col']:10.2f} {times['dft']:8.2f} "
                  f"{times['dft'] / times['im2col']:9.2f} {dft / im2col:9.2f}")


if __name__ == "__main__":
    main()
