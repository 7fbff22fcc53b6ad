"""Time a convolution's training step (forward + backward) by each method, beside the model.

    python benchmarks/conv_methods.py [--batch 128] [--runs 7] [--threads 1]

For each layer shape of the shipped configs (and a few others) prints the time of im2col, the
DFT and the banded product (at its modelled best block width), then what `convcost` models for
each (relative, scaled to the measured im2col time) and the method Conv2d's "auto" takes.
The model was fitted with `--threads 1` pinned to one core (`taskset -c 1`): single-core
timings are the least disturbed by other work on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

# (name, C, O, H, kernel, padding, first layer?)
SHAPES = [
    ("cifar conv1", 3, 32, 32, 5, 2, True),
    ("cifar conv2", 32, 64, 16, 5, 2, False),
    ("cifar conv3", 64, 64, 8, 5, 2, False),
    ("improved conv1", 3, 32, 28, 5, 2, True),
    ("improved conv2", 32, 64, 14, 5, 2, False),
    ("improved conv3", 64, 64, 7, 5, 2, False),
    ("lenet conv1", 1, 6, 28, 5, 2, True),
    ("lenet conv2", 6, 16, 14, 5, 0, False),
    ("cifar 64x64 conv1", 3, 32, 64, 5, 2, True),
    ("cifar 64x64 conv2", 32, 64, 32, 5, 2, False),
    ("3x3 64->64 at 16", 64, 64, 16, 3, 1, False),
    ("3x3 16->32 at 32", 16, 32, 32, 3, 1, False),
    ("3x3 3->16 at 96", 3, 16, 96, 3, 1, True),
]
METHODS = ("im2col", "dft", "band")


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
    parser.add_argument("--threads", type=int, help="the engine's threads (MLP_CLI_THREADS)")
    args = parser.parse_args()
    if args.threads:
        os.environ["MLP_CLI_THREADS"] = str(args.threads)
    from mlp_cli.nn.conv import cost as convcost
    from mlp_cli.nn.execution import Execution
    from mlp_cli.nn.layers import Conv2d
    from mlp_cli.nn.parallel import single_threaded_blas

    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, median of {args.runs} steps, ms; model: convcost's times scaled to im2col's")
    print(f"{'layer':20s} {'im2col':>8s} {'dft':>8s} {'band':>10s} | {'model im2col':>12s} {'dft':>6s} {'band':>6s}  auto")
    with single_threaded_blas():
        for name, C, O, H, k, pad, first in SHAPES:
            x = rng.standard_normal((args.batch, C, H, H)).astype(np.float32)
            measured, modelled = {}, {}
            geometry = (H, H, (k, k), (1, 1), (pad, pad), (1, 1), C, O, not first)
            for method in METHODS:
                layer = Conv2d(C, O, k, padding=pad, execution=Execution.from_env(conv_method=method))
                layer.needs_input_grad = not first
                layer.params["weight"][...] = rng.standard_normal(layer.params["weight"].shape) * 0.1
                dout = np.ones_like(layer.forward(x))
                measured[method] = step_time(layer, x, dout, args.runs)
                chosen, B = convcost.choose(*geometry, methods=(method,))
                modelled[method] = _model(convcost, chosen, B, H, k, pad, C, O, first)
                if method == "band":
                    band_label = f"B={layer.algorithm.B}"
            scale = measured["im2col"] / modelled["im2col"]
            auto, B = convcost.choose(*geometry)
            print(f"{name:20s} {measured['im2col']:8.2f} {measured['dft']:8.2f} {measured['band']:7.2f} {band_label:>4s} | "
                  f"{modelled['im2col'] * scale:12.2f} {modelled['dft'] * scale:6.2f} {modelled['band'] * scale:6.2f}  "
                  f"{auto}{'' if B is None else f' B={B}'}")


def _model(convcost, method, B, H, k, pad, C, O, first):
    Ho = H + 2 * pad - k + 1
    if method == "im2col":
        return convcost.im2col_ns(Ho, Ho, (k, k), (1, 1), C, O, not first)
    if method == "band":
        return convcost.band_ns(Ho, Ho, B, (k, k), (1, 1), (1, 1), C, O, not first)
    return convcost.dft_ns(H, H, (k, k), (pad, pad), (1, 1), C, O, not first)


if __name__ == "__main__":
    main()
