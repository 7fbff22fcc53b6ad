"""How far apart the fast and the reference engine get over the same training, and why.

    python benchmarks/engine_drift.py --config cifar10_cnn_improved --images /tmp/cifar10-jpeg/train \
        [--steps 8] [--batch 128] [--seed 0]

Trains three copies of a shipped config's network from the same initial weights on the same
batches (no augmentation; dropout masks shared): the fast engine and the reference engine in
float32, and the reference in float64 (the exact computation, to float32's eyes). After every
step it prints the largest weight difference (of its tensor's largest magnitude) of fast against
reference, and of the float32 reference against the float64 one, and how many max-pooling
windows (with a positive maximum, so that the choice matters) chose a different element.

What it shows: a window whose two largest inputs are closer than float32 rounding (a near tie)
is decided by the rounding of the arithmetic before it, so two correct float32 computations
summing in different orders route its gradient to different inputs. The float32 reference does
this against the float64 one as the fast engine does against the reference; one such window
moves a convolution's gradient by about 1e-3 of its largest entry, and from then on the runs
part ways. With --images, any image folder (<class>/<file>); without, noise images.
Measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mlp_cli import config, shapes
from mlp_cli.nn import reference as R
from mlp_cli.nn.execution import Execution
from mlp_cli.nn.losses import loss_function
from mlp_cli.nn.optim import Optimizer
from mlp_cli.train import build_network, check_network

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def batches(folder: str | None, input_shape, count: int, seed: int):
    """count images of input_shape (C, H, W), standardized per channel, and their labels: from an
    image folder (center-cropped or padded to size) or, without one, noise."""
    rng = np.random.default_rng(seed)
    C, H, W = input_shape
    if folder is None:
        return rng.standard_normal((count, C, H, W)).astype(np.float32), rng.integers(0, 10, count)
    from PIL import Image

    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    files = sorted(f for c in classes for f in (Path(folder) / c).iterdir())
    pick = rng.choice(len(files), count, replace=False)
    images = []
    for i in pick:
        image = np.asarray(Image.open(files[i]).convert("RGB" if C == 3 else "L"), np.float32) / 255
        image = image.reshape(*image.shape[:2], C).transpose(2, 0, 1)
        top, left = (image.shape[1] - H) // 2, (image.shape[2] - W) // 2
        images.append(image[:, top:top + H, left:left + W])
    x = np.stack(images)
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    return x, np.array([classes.index(files[i].parent.name) for i in pick])


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-30))


def record_pool_inputs(model, seen: dict, name: str):
    """Keep what each max-pooling layer after a ReLU sees, after the ReLU: the fast engine pools
    before its ReLU (model._execution_order), which chooses the same element wherever the maximum
    is positive. (After a tanh the two orders differ where tanh rounds a window's inputs to one
    value, near +-1, where the gradient is about 0 either way: not counted.)"""
    layers = model.layers
    for i, layer in enumerate(layers):
        if type(layer).__name__ == "MaxPool2d" and i > 0 and type(layers[i - 1]).__name__ == "ReLU":
            def forward(x, i=i, inner=layer.forward):
                seen[name, i] = np.maximum(np.asarray(x, np.float64), 0)
                return inner(x)
            layer.forward = forward


def pool_choices(seen, hyper) -> dict:
    """(run, layer) -> (pooled, which window element each output took), from what the layer saw."""
    out = {}
    for (name, i), x in seen.items():
        pooled, (_, first, *_) = R.maxpool2d_forward(x, **hyper[i])
        out[name, i] = pooled, first
    return out


def differing_choices(choices, a, b) -> dict[int, int]:
    """Per max-pooling layer: the windows with a positive maximum where runs a and b chose differently."""
    return {i: int(((first != choices[b, i][1]) & (pooled > 0)).sum())
            for (name, i), (pooled, first) in choices.items() if name == a}


class Float32Draws:
    """A generator that draws dropout masks from float32 numbers whatever the dtype asked, so that
    the float64 run drops the same units as the float32 ones (reference.dropout_forward draws in
    the input's precision, and the two streams differ)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def random(self, shape, dtype=np.float64):
        return self.rng.random(shape, dtype=np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_cnn_improved")
    parser.add_argument("--images", help="an image folder (<class>/<file>); default: noise")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = config.load(CONFIGS / f"{args.config}.yaml")
    input_shape, infos = check_network(cfg, batch_size=args.batch)
    arch = shapes.architecture(infos)
    x_all, y_all = batches(args.images, input_shape, args.batch * args.steps, args.seed)
    runs, seen = {}, {}
    for name, engine, dtype in (("fast", "fast", np.float32), ("ref32", "reference", np.float32),
                                ("ref64", "reference", np.float64)):
        model = build_network(cfg, arch, dtype=dtype, execution=Execution(engine=engine)).train()
        model.skip_input_gradient()
        record_pool_inputs(model, seen, name)
        runs[name] = model, Optimizer(cfg.optim, model.execution), dtype
    runs["ref64"][0].load_state_dict({k: v.astype(np.float64) for k, v in runs["ref32"][0].state_dict().items()})
    hyper = {i: layer.hyper for i, layer in enumerate(runs["ref32"][0].layers) if hasattr(layer, "hyper")}
    print(f"{args.config}, batch {args.batch}, {args.images or 'noise'}: step, worst weight "
          "difference (and its tensor) fast-ref32 and ref32-ref64, max-pool windows (after a ReLU) "
          "choosing differently, per pooling layer")
    for step in range(args.steps):
        x, y = x_all[step * args.batch:(step + 1) * args.batch], y_all[step * args.batch:(step + 1) * args.batch]
        for model, optimizer, dtype in runs.values():
            rng = np.random.default_rng([args.seed, step])
            model.set_rng(rng if dtype == np.float32 else Float32Draws(rng))
            logits = model.forward(x.astype(dtype))
            _, dlogits = loss_function(model.execution)(logits, y, cfg.train.label_smoothing)
            model.backward(dlogits)
            optimizer.step(model.named_params(), model.named_grads(), cfg.optim.lr)
        states = {name: run[0].state_dict() for name, run in runs.items()}
        worst = {pair: max((relative(states[pair[0]][k], states[pair[1]][k]), k) for k in states["ref32"]
                           if states["ref32"][k].dtype.kind == "f")
                 for pair in (("fast", "ref32"), ("ref32", "ref64"))}
        choices = pool_choices(seen, hyper)
        print(f"{step + 1:3d}  " + "  ".join(f"{e:.1e} {k:11s}" for e, k in worst.values()) +
              f"  fast-ref32 {differing_choices(choices, 'fast', 'ref32')}"
              f"  ref32-ref64 {differing_choices(choices, 'ref32', 'ref64')}", flush=True)


if __name__ == "__main__":
    main()
