"""One training epoch in mlp-cli and in PyTorch, side by side on this CPU, as a ratio.

    python benchmarks/epoch_vs_torch.py configs/cifar10_cnn.yaml [--runs 3] [--data synthetic|real]
    python benchmarks/epoch_vs_torch.py configs/cifar10_cnn_improved.yaml --train-torch \
        data.dataset=imagefolder data.root=/tmp/cifar10-jpeg 'data.image_size=[32,32]'

Timing mode (default): both sides train the config's network, from the same initial weights,
for one epoch over the same batches (the mlp-cli data pipeline: shuffling, crops, flips,
normalization, float32), with the same optimizer settings and 2 threads; each epoch's time is
its training loop alone, data preparation included. Prints the median of `--runs` epochs of
each and the ratio mlp-cli / PyTorch (below 1: mlp-cli is faster).

`--data synthetic` (default) uses random uint8 images of the dataset's size and number, so no
dataset is needed; `--data real` loads the config's data.

`--train-torch` trains the whole recipe in PyTorch instead (all epochs, the config's schedule,
the same batches as mlp-cli would draw, crops, flips and cutout included; label smoothing,
train.ema and data.augment.test_hflip done the same way in torch) and reports the test accuracy
of the epoch with the best validation accuracy: the reference that mlp-cli's own run of the
config is compared with.
Run it alone: another CPU-heavy process makes every timing meaningless.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time

import numpy as np
import torch

from mlp_cli import config, shapes
from mlp_cli.data import Split, batches, load_splits, normalization, resolve_config
from mlp_cli.evaluate import metrics_from_logits
from mlp_cli.interop import torch_sequential
from mlp_cli.nn.losses import softmax_cross_entropy
from mlp_cli.nn.optim import Optimizer, lr_at
from mlp_cli.nn.parallel import single_threaded_blas
from mlp_cli.train import build_network, check_network

TRAIN_SIZES = {"mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000, "cifar100": 50000, "imagefolder": 50000}


def synthetic_splits(cfg):
    """Random images with the dataset's shape and training-set size (after the validation split)."""
    native = shapes.dataset_input_shape(cfg.data.model_copy(update={"augment": config.Augment()}))
    n = TRAIN_SIZES.get(cfg.data.dataset, 50000)
    n_val = int(cfg.data.val_size) if cfg.data.val_size >= 1 else int(round(cfg.data.val_size * n))
    rng = np.random.default_rng(0)
    classes = [str(i) for i in range(check_network(cfg)[1][-1].output_shape[0])]
    if len(native) == 1:
        x = rng.standard_normal((n - n_val, native[0])).astype(np.float32)
    else:
        c, h, w = native
        x = rng.integers(0, 256, (n - n_val, h, w, c), dtype=np.uint8)
    return Split(x, rng.integers(0, len(classes), len(x)), classes)


def ours_epoch(model, optimizer, split, cfg, norm, epoch):
    with single_threaded_blas():  # as in mlp-cli train
        return _ours_epoch(model, optimizer, split, cfg, norm, epoch)


def _ours_epoch(model, optimizer, split, cfg, norm, epoch):
    lr = lr_at(epoch, cfg.optim.lr, cfg.optim.schedule, cfg.train.epochs)
    model.train()
    model.set_rng(np.random.default_rng([cfg.seed, epoch, 2]))
    start = time.perf_counter()
    for x, y in batches(split, cfg.train.batch_size, train=True, rng=np.random.default_rng([cfg.seed, epoch, 1]),
                        normalization=norm, augment=cfg.data.augment):
        logits = model.forward(x)
        _, d = softmax_cross_entropy(logits, y, cfg.train.label_smoothing)
        model.backward(d)
        optimizer.step(model.named_params(), model.named_grads(), lr)
    return time.perf_counter() - start


def torch_optimizer(net, cfg):
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def torch_ema_update(ema_net, net, decay):
    """mlp-cli's train.ema in torch: every float parameter and buffer lerped towards the trained
    one with weight 1 - decay after each step (the average starts as the initial weights)."""
    with torch.no_grad():
        for avg, cur in zip(list(ema_net.parameters()) + list(ema_net.buffers()),
                            list(net.parameters()) + list(net.buffers())):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1 - decay)
            else:
                avg.copy_(cur)


def torch_epoch(net, opt, split, cfg, norm, epoch, ema_net=None):
    lr = lr_at(epoch, cfg.optim.lr, cfg.optim.schedule, cfg.train.epochs)  # equal to torch's schedulers
    for group in opt.param_groups:
        group["lr"] = lr
    net.train()
    start = time.perf_counter()
    for x, y in batches(split, cfg.train.batch_size, train=True, rng=np.random.default_rng([cfg.seed, epoch, 1]),
                        normalization=norm, augment=cfg.data.augment):
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        loss = torch.nn.functional.cross_entropy(net(xt), yt, label_smoothing=cfg.train.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema_net is not None:
            torch_ema_update(ema_net, net, cfg.train.ema)
    return time.perf_counter() - start


def torch_logits(net, split, cfg, norm):
    """Eval-mode logits; with data.augment.test_hflip the mean of the image's and its mirror's."""
    net.eval()
    flip = getattr(cfg.data.augment, "test_hflip", False)
    out = []
    with torch.no_grad():
        for x, _ in batches(split, cfg.train.eval_batch_size, train=False, rng=None, normalization=norm,
                            augment=cfg.data.augment):
            xt = torch.from_numpy(np.ascontiguousarray(x))
            logits = net(xt)
            if flip:
                logits = (logits + net(torch.flip(xt, dims=[3]))) / 2
            out.append(logits.numpy())
    return np.concatenate(out)


def setup(cfg):
    arch = shapes.architecture(check_network(cfg)[1])
    model = build_network(cfg, arch)
    model.skip_input_gradient()
    net = torch_sequential(arch, model.state_dict())
    return model, net


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--runs", type=int, default=3, help="epochs timed on each side (median reported)")
    parser.add_argument("--data", choices=["synthetic", "real"], default="synthetic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-torch", action="store_true", help="train the whole recipe in PyTorch, report test accuracy")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options
    torch.set_num_threads(args.threads)
    cfg = resolve_config(config.load(args.config, args.overrides))  # an image folder's size, as train does
    print(f"{args.config}: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"numpy {np.__version__}", flush=True)

    if args.train_torch:
        return train_torch(cfg)

    if args.data == "real":
        split = load_splits(cfg.data, cfg.seed, ("train",))["train"]
    else:
        split = synthetic_splits(cfg)
    norm = normalization(split, cfg.data)  # identity for feature data, as training does
    model, net = setup(cfg)
    optimizer, opt = Optimizer(cfg.optim), torch_optimizer(net, cfg)
    ours, theirs = [], []
    for epoch in range(args.runs):  # alternate, so both sides see the same machine conditions
        ours.append(ours_epoch(model, optimizer, split, cfg, norm, epoch))
        theirs.append(torch_epoch(net, opt, split, cfg, norm, epoch))
        print(f"  epoch {epoch + 1}: mlp-cli {ours[-1]:7.2f} s   pytorch {theirs[-1]:7.2f} s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{len(split)} images, batch {cfg.train.batch_size}: median epoch mlp-cli {a:.2f} s, pytorch {b:.2f} s, "
          f"ratio {a / b:.2f}")


def train_torch(cfg):
    splits = load_splits(cfg.data, cfg.seed, ("train", "val", "test"))
    norm = normalization(splits["train"], cfg.data)
    _, net = setup(cfg)
    opt = torch_optimizer(net, cfg)
    ema_net = copy.deepcopy(net) if cfg.train.ema else None
    evaluated = ema_net if ema_net is not None else net
    best = (-1.0, math.inf, None)
    for epoch in range(cfg.train.epochs):
        seconds = torch_epoch(net, opt, splits["train"], cfg, norm, epoch, ema_net)
        val = metrics_from_logits(torch_logits(evaluated, splits["val"], cfg, norm), splits["val"].y,
                                  len(splits["val"].classes))
        test = metrics_from_logits(torch_logits(evaluated, splits["test"], cfg, norm), splits["test"].y,
                                   len(splits["test"].classes))
        if (val["accuracy"], -val["loss"]) > (best[0], -best[1]):
            best = (val["accuracy"], val["loss"], (epoch + 1, test["accuracy"]))
        print(f"  pytorch epoch {epoch + 1}: val acc {val['accuracy']:.4f}, test acc {test['accuracy']:.4f}, "
              f"{seconds:.1f} s", flush=True)
    epoch, test_acc = best[2]
    print(f"pytorch reference: best val acc {best[0]:.4f} at epoch {epoch}, test acc {test_acc:.4f}")


if __name__ == "__main__":
    main()
