"""data.augment.test_hflip: evaluation averages the logits of each image and of its mirror."""

import numpy as np

from mlp_cli.config import Augment
from mlp_cli.data import Split, normalize
from mlp_cli.evaluate import predict
from mlp_cli.nn.model import build

NORM = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
ARCH = [{"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "BatchNorm2d", "num_features": 4}, {"type": "ReLU"},
        {"type": "MaxPool2d", "kernel_size": 2, "stride": 2}, {"type": "Flatten"},
        {"type": "Linear", "in_features": 4 * 3 * 4, "out_features": 5}]


def images(n=13, h=6, w=8, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 5, n), list("abcde"))


def logits(model, split, test_hflip, batch_size=64):
    return predict(model, split, batch_size=batch_size, normalization=NORM, augment=Augment(test_hflip=test_hflip))


def test_a_mirror_symmetric_network_gives_the_same_logits():
    arch = [{"type": "Flatten"}, {"type": "Linear", "in_features": 3 * 6 * 8, "out_features": 5}]
    model = build(arch, rng=np.random.default_rng(1))
    weight = model.layers[1].params["weight"]
    asymmetric = weight.copy()
    w4 = weight.reshape(5, 3, 6, 8)  # Flatten takes (C, H, W) order, as in PyTorch
    w4[...] = (w4 + w4[..., ::-1]) / 2  # the same weight for a pixel and its mirror
    split = images()
    np.testing.assert_allclose(logits(model, split, True), logits(model, split, False), rtol=1e-5, atol=1e-5)
    weight[...] = asymmetric  # a control: without the symmetry the averaging changes the logits
    assert np.abs(logits(model, split, True) - logits(model, split, False)).max() > 1e-2


def test_flip_averaged_logits_are_the_mean_of_two_independent_passes():
    model = build(ARCH, rng=np.random.default_rng(2))
    split = images(n=13)
    plain = model.eval().forward(normalize(split.x, NORM))
    mirrored = model.forward(normalize(np.ascontiguousarray(split.x[:, :, ::-1]), NORM))  # mirrored as uint8
    got = logits(model, split, True)
    np.testing.assert_allclose(got, (plain + mirrored) / 2, rtol=1e-6, atol=1e-6)
    assert np.abs(got - plain).max() > 1e-3
    # batch by batch the same (each batch mirrored in its own layout)
    np.testing.assert_allclose(logits(model, split, True, batch_size=4), got, rtol=1e-6, atol=1e-6)
