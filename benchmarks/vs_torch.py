"""mlp-cli against PyTorch on this CPU, each side in its own fresh process, as a per-example ratio.

    python benchmarks/vs_torch.py                          # every case, 3 epochs a process, 2 rounds
    python benchmarks/vs_torch.py --cases lenet5,mlp --epochs 5 --rounds 3
    python benchmarks/vs_torch.py --cifar-examples 0       # whole CIFAR-10 epochs (45,000 images)
    taskset -c 1 python benchmarks/vs_torch.py --threads 1 --cases mlp   # one core, one thread a side

For each case the two sides run alternately (mlp-cli, PyTorch, mlp-cli, PyTorch, ... for
`--rounds` rounds), each in a new Python process that trains `--epochs` epochs, so neither
side's threads, allocations or warm caches touch the other. The ratio is mlp-cli / PyTorch of
the median time per training example over all epochs of all rounds (below 1: mlp-cli faster).

- mlp-cli's side is `mlp-cli train` itself (train.fit on the config, in a temporary run
  directory) and its time is what metrics.csv records in `seconds`: the training loop of an
  epoch over the train split (the validation examples held out), batching, augmentation,
  normalization, forward, backward and optimizer step included; validation and checkpoints not.
- PyTorch's side: torch.nn.Sequential rebuilt from the same architecture and initial weights
  (mlp_cli.interop), the same optimizer settings and learning rate, batch size and number of
  examples; the train split normalized (and center-cropped where the config crops) into one
  float32 tensor in memory beforehand, then a plain loop: shuffle, index a batch, forward,
  cross-entropy, backward, step. torch.set_num_threads(--threads), MLP_CLI_THREADS=--threads on
  our side (2 by default).
- "eval": the 10,000 test images through the CIFAR-10 net, mlp-cli's evaluation (batching and
  normalization included, as `mlp-cli eval` does) against PyTorch's forward under
  torch.no_grad() on a pre-normalized tensor; eval_batch_size of the config on both sides.

Data: MNIST is the real MNIST ($MLP_CLI_DATA, default /work/shared/datasets). The CIFAR-10
cases use random uint8 images of CIFAR-10's shape and count instead of the real set: the time
of these networks does not depend on the pixel values (no data-dependent branches besides max
pooling's and ReLU's, which random images exercise as real ones do), and the benchmark then
needs no data set. The CIFAR cases train on `--cifar-examples` images per epoch (default
10,000; 0: the whole 45,000) to keep the matrix under half an hour; per-example times do not
depend on it beyond warm-up.

The table: per-epoch and per-example times of each side, and effective GFLOP/s: the
direct-convolution (and dense) multiply-adds of the network times 2 over the time, counting a
training example as 3 forward passes (forward, input gradient, weight gradient) and an
evaluated one as 1. Beside it, the float32 matrix-product peak of this machine measured in the
same run (2048x2048 products, NumPy/OpenBLAS and PyTorch, 2 threads each).
Run it alone: another CPU-heavy process makes every timing meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
NO_AUGMENT = ["data.augment.crop=null", "data.augment.crop_padding=0", "data.augment.hflip=false"]
# name: (config, overrides, data)
CASES = {
    "lenet5": ("mnist_lenet5.yaml", NO_AUGMENT, "mnist"),
    "mlp": ("mnist_mlp.yaml", NO_AUGMENT, "mnist"),  # its random shifts would be ours alone (PyTorch's loop has none)
    "cifar": ("cifar10_cnn.yaml", [], "synthetic"),
    "cifar-improved": ("cifar10_cnn_improved.yaml", [], "synthetic"),
    "cifar-b32": ("cifar10_cnn.yaml", ["train.batch_size=32"], "synthetic"),
    "cifar-b512": ("cifar10_cnn.yaml", ["train.batch_size=512"], "synthetic"),
    "cifar-64x64": ("cifar10_cnn.yaml", ["data.dataset=imagefolder", "data.root=/nonexistent",
                                         "data.image_size=[64,64]"], "synthetic"),
    "eval": ("cifar10_cnn.yaml", [], "synthetic"),
}
RESULT = "RESULT "


# ----------------------------------------------------------------------------- data and model
def load_config(case, epochs):
    from mlp_cli import config

    name, overrides, _ = CASES[case]
    return config.load(CONFIGS / name, [*overrides, f"train.epochs={epochs}", "train.plots=false"])


def use_synthetic_data(cifar_examples):
    """Replace the data loader with random uint8 images of the configured size: 50,000 training
    images (or `cifar_examples` plus the validation split) and 10,000 test images."""
    from mlp_cli import data
    from mlp_cli.data.split import Split

    def fake_load(data_cfg, train):
        h, w = data_cfg.image_size or (32, 32)
        val = int(data_cfg.val_size)
        n = (cifar_examples + val if cifar_examples else 50000) if train else 10000
        rng = np.random.default_rng(1 if train else 2)
        return Split(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 10, n),
                     [str(i) for i in range(10)])

    data._load = fake_load


def setup_data(case, cifar_examples):
    if CASES[case][2] == "synthetic":
        use_synthetic_data(cifar_examples)
    else:
        os.environ.setdefault("MLP_CLI_DATA", "/work/shared/datasets")


def multiply_adds(cfg) -> int:
    """Forward multiply-adds of one example: direct convolution and dense products (shapes.LayerInfo.macs)."""
    from mlp_cli.train import check_network

    return sum(info.macs for info in check_network(cfg)[1])


# ----------------------------------------------------------------------------- the two sides
def ours(case, epochs, cifar_examples):
    """Per-epoch seconds of `mlp-cli train` (metrics.csv) and the number of training examples."""
    import csv

    from mlp_cli import train

    setup_data(case, cifar_examples)
    cfg = load_config(case, epochs)
    if case == "eval":
        return ours_eval(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        result = train.fit(cfg, Path(tmp) / "run", console=train.Console(quiet=True))
        with open(Path(tmp) / "run" / "metrics.csv") as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    from mlp_cli.data import load_splits

    n = len(load_splits(cfg.data, cfg.seed, ("train",))["train"])
    assert result.epochs == epochs
    return seconds, n


def ours_eval(cfg, repeats=5):
    from mlp_cli import shapes
    from mlp_cli.data import load_splits, normalization
    from mlp_cli.evaluate import evaluate
    from mlp_cli.nn.parallel import single_threaded_blas
    from mlp_cli.train import build_network, check_network

    splits = load_splits(cfg.data, cfg.seed, ("train", "test"))
    norm = normalization(splits["train"], cfg.data)
    model = build_network(cfg, shapes.architecture(check_network(cfg)[1]))
    model.skip_input_gradient()  # as checkpoint.load_model sets a network up
    seconds = []
    with single_threaded_blas():  # as `mlp-cli eval` runs
        for _ in range(repeats):
            start = time.perf_counter()
            evaluate(model, splits["test"], batch_size=cfg.train.eval_batch_size, normalization=norm,
                     augment=cfg.data.augment)
            seconds.append(time.perf_counter() - start)
    return seconds, len(splits["test"])


def tensors(split, cfg, norm):
    """The split normalized (center-cropped where the config crops) as float32 NCHW and int64 tensors."""
    import torch

    from mlp_cli.data import batches

    xs = [np.ascontiguousarray(x) for x, _ in batches(split, 4096, train=False, rng=None, normalization=norm,
                                                        augment=cfg.data.augment)]
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(split.y.astype(np.int64))


def theirs(case, epochs, cifar_examples):
    import torch

    from mlp_cli import shapes
    from mlp_cli.data import load_splits, normalization
    from mlp_cli.interop import torch_sequential
    from mlp_cli.nn.optim import lr_at
    from mlp_cli.train import build_network, check_network

    torch.set_num_threads(int(os.environ["MLP_CLI_THREADS"]))
    setup_data(case, cifar_examples)
    cfg = load_config(case, epochs)
    splits = load_splits(cfg.data, cfg.seed, ("train", "test") if case == "eval" else ("train",))
    norm = normalization(splits["train"], cfg.data)
    arch = shapes.architecture(check_network(cfg)[1])
    net = torch_sequential(arch, build_network(cfg, arch).state_dict())
    if case == "eval":
        x, _ = tensors(splits["test"], cfg, norm)
        net.eval()
        seconds = []
        with torch.no_grad():
            for _ in range(5):
                start = time.perf_counter()
                for i in range(0, len(x), cfg.train.eval_batch_size):
                    net(x[i:i + cfg.train.eval_batch_size])
                seconds.append(time.perf_counter() - start)
        return seconds, len(x)
    x, y = tensors(splits["train"], cfg, norm)
    o = cfg.optim
    if o.name == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                              weight_decay=o.weight_decay)
    else:
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        opt = cls(net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    B, seconds = cfg.train.batch_size, []
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, o.lr, o.schedule, epochs)  # equal to torch's own schedulers
        net.train()
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), B):
            index = order[i:i + B]
            loss = torch.nn.functional.cross_entropy(net(x[index]), y[index], label_smoothing=cfg.train.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    return seconds, len(x)


def peaks():
    """float32 matrix-product GFLOP/s of NumPy (OpenBLAS) and PyTorch on 2 threads, 2048^3 products."""
    import torch

    torch.set_num_threads(2)
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    out = {}
    for name, mm, arg in [("numpy", np.matmul, a), ("torch", torch.mm, torch.from_numpy(a))]:
        mm(arg, arg)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            mm(arg, arg)
            times.append(time.perf_counter() - start)
        out[name] = 2 * 2048**3 / min(times) / 1e9
    return out


# ----------------------------------------------------------------------------- driver
def child(args):
    if args.side == "peak":
        print(RESULT + json.dumps(peaks()), flush=True)
        return
    fn = ours if args.side == "ours" else theirs
    seconds, n = fn(args.case, args.epochs, args.cifar_examples)
    print(RESULT + json.dumps({"seconds": seconds, "examples": n}), flush=True)


def run_child(side, case, args):
    cmd = [sys.executable, __file__, "--side", side, "--case", case, "--epochs", str(args.epochs),
           "--cifar-examples", str(args.cifar_examples)]
    env = {**os.environ, "MLP_CLI_THREADS": str(args.threads)}  # both sides: see theirs()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if out.returncode != 0 or not lines:
        sys.exit(f"{side} side of {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (eval: passes over the test set) per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per side, alternating")
    parser.add_argument("--cifar-examples", type=int, default=10000,
                        help="training images per epoch in the CIFAR cases (0: the whole 45,000)")
    parser.add_argument("--threads", type=int, default=2, help="threads of each side (MLP_CLI_THREADS, torch)")
    parser.add_argument("--side", choices=["ours", "theirs", "peak"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    import platform

    peak = run_child("peak", "", args)
    print(f"{platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; {args.epochs} epochs x {args.rounds} "
          f"rounds per side, {args.threads} thread(s) a side; float32 matmul peak (2 threads): numpy {peak['numpy']:.0f} GFLOP/s, "
          f"torch {peak['torch']:.0f} GFLOP/s", flush=True)
    header = (f"{'case':15s} {'ratio':>6s} {'mlp-cli s':>10s} {'torch s':>8s} {'mlp-cli us/ex':>13s} "
              f"{'torch us/ex':>11s} {'mlp-cli GF/s':>12s} {'torch GF/s':>10s}")
    print(header, flush=True)
    for case in cases:
        per_example = {"ours": [], "theirs": []}
        per_epoch = {"ours": [], "theirs": []}
        for _ in range(args.rounds):
            for side in ("ours", "theirs"):
                r = run_child(side, case, args)
                per_epoch[side] += r["seconds"]
                per_example[side] += [s / r["examples"] for s in r["seconds"]]
        a, b = (statistics.median(per_example[s]) for s in ("ours", "theirs"))
        flops = 2 * multiply_adds(load_config(case, 1)) * (1 if case == "eval" else 3)
        print(f"{case:15s} {a / b:6.2f} {statistics.median(per_epoch['ours']):10.3f} "
              f"{statistics.median(per_epoch['theirs']):8.3f} {1e6 * a:13.2f} {1e6 * b:11.2f} "
              f"{flops / a / 1e9:12.1f} {flops / b / 1e9:10.1f}", flush=True)
    print("ratio: mlp-cli / PyTorch time per example, medians over all epochs; s: median seconds per epoch "
          "(eval: per pass over the 10,000 test images)")


if __name__ == "__main__":
    main()
