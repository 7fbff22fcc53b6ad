"""Forward + backward time of the engine against the same PyTorch model on this CPU.

    python benchmarks/engine_speed.py [--repeats 7] [--threads 2]

Times one training step's forward and backward (loss included, no optimizer update) of the
practical's MLP (784-100-10 tanh, batch 64) and CIFAR-10 net (batch 128), float32, and prints
the median of each and the ratio mlp-cli / PyTorch (below 1 means mlp-cli is faster).
Run it alone: another CPU-heavy process on the machine makes the numbers meaningless.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mlp_cli import config, shapes
from mlp_cli.interop import torch_sequential
from mlp_cli.nn.losses import softmax_cross_entropy
from mlp_cli.nn.execution import Execution
from mlp_cli.nn.model import build
from mlp_cli.nn.parallel import single_threaded_blas
from mlp_cli.train import check_network

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def architecture(config_name: str) -> list[dict]:
    """The network of a shipped config, as the trainer builds it."""
    return shapes.architecture(check_network(config.load(CONFIGS / config_name))[1])


def time_ours(arch, x, y, repeats, inner):
    model = build(arch, execution=Execution.from_env())  # MLP_CLI_THREADS, as `mlp-cli train` reads it
    model.skip_input_gradient()  # as in training

    def step():
        logits = model.forward(x)
        _, d = softmax_cross_entropy(logits, y)
        model.backward(d)

    with single_threaded_blas():  # as in training
        return measure(step, repeats, inner)


def time_torch(arch, x, y, repeats, inner):
    model = torch_sequential(arch)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xt), yt).backward()

    return measure(step, repeats, inner)


def measure(step, repeats, inner):
    step()  # warm-up: allocations, thread pools
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            step()
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}")
    cases = [("mlp 784-100-10, batch 64", architecture("mnist_mlp.yaml"), (64, 1, 28, 28), 200),
             ("cifar10 net, batch 128", architecture("cifar10_cnn.yaml"), (128, 3, 32, 32), 3)]
    for name, arch, shape, inner in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.integers(0, 10, shape[0])
        ours = time_ours(arch, x, y, args.repeats, inner)
        theirs = time_torch(arch, x, y, args.repeats, inner)
        print(f"{name:28s} mlp-cli {1e3 * ours:8.2f} ms   pytorch {1e3 * theirs:8.2f} ms   "
              f"ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
