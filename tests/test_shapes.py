"""Shape inference (mlp_cli/shapes.py) against real torch modules and hand computations."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mlp_cli import config, shapes
from mlp_cli.errors import ShapeError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def specs(cfg) -> list[dict]:
    return [layer.model_dump() for layer in cfg.model.layers]


def resolve_config(name: str, overrides=()):
    cfg = config.load(CONFIGS / name, overrides)
    return shapes.resolve(shapes.dataset_input_shape(cfg.data), specs(cfg))


# ----------------------------------------------------------------------------- against torch
def _size(rng: random.Random, low: int, high: int):
    """An int (square) or an (h, w) tuple, as PyTorch accepts both."""
    if rng.random() < 0.5:
        return rng.randint(low, high)
    return rng.randint(low, high), rng.randint(low, high)


def _random_setting(rng: random.Random) -> dict:
    kind = rng.choice(["conv2d", "maxpool2d", "avgpool2d"])
    setting = {
        "type": kind,
        "input": [rng.randint(1, 3), rng.randint(1, 14), rng.randint(1, 14)],
        "kernel_size": _size(rng, 1, 6),
        "padding": _size(rng, 0, 3),
    }
    if kind == "conv2d":
        setting.update(out_channels=rng.randint(1, 4), stride=_size(rng, 1, 4), dilation=_size(rng, 1, 3),
                       bias=rng.random() < 0.7)
    else:
        setting.update(stride=None if rng.random() < 0.25 else _size(rng, 1, 4), ceil_mode=rng.random() < 0.5)
        if kind == "maxpool2d":
            setting["dilation"] = _size(rng, 1, 3)
    return setting


def _torch_module(nn, setting: dict):
    kw = {k: v for k, v in setting.items() if k not in ("type", "input")}
    if setting["type"] == "conv2d":
        return nn.Conv2d(setting["input"][0], **kw)
    if setting["type"] == "maxpool2d":
        return nn.MaxPool2d(**kw)
    return nn.AvgPool2d(**kw)


def _spec(setting: dict) -> dict:
    spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in setting.items() if k != "input"}
    return spec


@pytest.fixture
def torch1():
    """torch on one thread: thousands of tiny ops are slow when threads contend on a busy machine."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def test_output_shapes_and_params_equal_torch_on_random_settings(torch1):
    torch = torch1
    nn = torch.nn
    rng = random.Random(20240601)
    compared = rejected = 0
    kinds = {"conv2d": 0, "maxpool2d": 0, "avgpool2d": 0}
    ceil_compared = 0
    with torch.no_grad():
        while compared < 1200:
            setting = _random_setting(rng)
            c, h, w = setting["input"]
            x = torch.zeros(1, c, h, w)
            try:
                module = _torch_module(nn, setting)
                expected = list(module(x).shape[1:])
            except (RuntimeError, ValueError) as torch_error:
                rejected += 1
                with pytest.raises(ShapeError):
                    shapes.resolve([c, h, w], [_spec(setting)])
                    pytest.fail(f"torch rejects {setting} ({torch_error}) but shapes.resolve accepts it")
                continue
            (info,) = shapes.resolve([c, h, w], [_spec(setting)])
            assert info.output_shape == expected, setting
            assert info.params == sum(p.numel() for p in module.parameters()), setting
            # The arch dict rebuilds the same module: same output shape, same parameter count.
            arch = dict(info.arch)
            rebuilt = getattr(nn, arch.pop("type"))(**arch)
            assert list(rebuilt(x).shape[1:]) == expected, (setting, info.arch)
            assert sum(p.numel() for p in rebuilt.parameters()) == info.params
            # The one-axis helpers agree with the 2-D result.
            k = shapes._pair(setting["kernel_size"], "k")
            s = k if setting.get("stride") is None else shapes._pair(setting["stride"], "s")
            p = shapes._pair(setting["padding"], "p")
            d = shapes._pair(setting.get("dilation", 1), "d")
            for axis, size in ((0, h), (1, w)):
                if setting["type"] == "conv2d":
                    got = shapes.conv_output_size(size, k[axis], s[axis], p[axis], d[axis])
                else:
                    got = shapes.pool_output_size(size, k[axis], s[axis], p[axis], d[axis], setting["ceil_mode"])
                assert got == expected[1 + axis], setting
            compared += 1
            kinds[setting["type"]] += 1
            ceil_compared += bool(setting.get("ceil_mode"))
    assert compared >= 1000
    assert rejected >= 100, "the random settings should also exercise PyTorch's rejections"
    assert min(kinds.values()) >= 200 and ceil_compared >= 100, kinds


def test_pool_rules_at_the_edges():
    # ceil_mode drops a last window that would start in the right padding: 5 + 2*1, k 2, s 2.
    assert shapes.pool_output_size(5, 2, 2, padding=1, ceil_mode=True) == 3
    assert shapes.practical_output_size(5, 2, 2, padding=1) == 4
    # ceil_mode may let a partial last window hang over a too-small input (PyTorch accepts it).
    assert shapes.pool_output_size(2, 3, 2, ceil_mode=True) == 1
    with pytest.raises(ShapeError, match="larger than the padded input"):
        shapes.pool_output_size(2, 3, 2)
    with pytest.raises(ShapeError, match="kernel_size // 2"):
        shapes.pool_output_size(8, 3, 1, padding=2)
    # PyTorch checks padding against the kernel, not the dilated kernel.
    with pytest.raises(ShapeError):
        shapes.pool_output_size(9, 2, 2, padding=2, dilation=3)
    with pytest.raises(ShapeError, match="larger than the padded input"):
        shapes.conv_output_size(5, 3, dilation=3)
    assert shapes.conv_output_size(5, 6, padding=1) == 2


def test_practical_formula_over_counts_when_stride_does_not_divide():
    assert shapes.conv_output_size(28, 5, 2) == 12
    assert shapes.practical_output_size(28, 5, 2) == 13
    assert shapes.conv_output_size(32, 5, 1, 2) == shapes.practical_output_size(32, 5, 1, 2) == 32
    assert shapes.pool_output_size(7, 2, 2, ceil_mode=True) == shapes.practical_output_size(7, 2, 2) == 4


# ----------------------------------------------------------------------------- the configs
def test_cifar10_cnn_parameters():
    infos = resolve_config("cifar10_cnn.yaml")
    weighted = [i.params for i in infos if i.params]
    assert weighted == [2_432, 51_264, 102_464, 1_025_000, 10_010]
    assert shapes.total_params(infos) == 1_191_170
    assert infos[9].output_shape == [1024] and infos[10].arch["in_features"] == 1024
    assert [i.name for i in infos] == [str(n) for n in range(13)]
    # Hand computation: out_h*out_w*out_c*in_c*k*k for convs, in*out for linears.
    assert [i.macs for i in infos if i.macs] == [
        32 * 32 * 32 * 3 * 25, 16 * 16 * 64 * 32 * 25, 8 * 8 * 64 * 64 * 25, 1024 * 1000, 1000 * 10]
    assert shapes.param_bytes(infos) == 1_191_170 * 4
    values = 3 * 32 * 32 + sum(shapes._prod(i.output_shape) for i in infos)
    assert shapes.activation_bytes([3, 32, 32], infos, 128) == values * 128 * 4


def test_mnist_lenet5_by_hand():
    infos = resolve_config("mnist_lenet5.yaml")
    assert shapes.total_params(infos) == 61_706
    by_hand = {
        # name: (output shape, params, multiply-adds, receptive field, jump)
        "0": ([6, 28, 28], 6 * 1 * 25 + 6, 28 * 28 * 6 * 1 * 25, 5, 1),   # conv 5x5 pad 2
        "1": ([6, 28, 28], 0, 0, 5, 1),                                   # tanh
        "2": ([6, 14, 14], 0, 0, 5 + 1 * 1, 2),                           # pool 2: rf + (2-1)*1
        "3": ([16, 10, 10], 16 * 6 * 25 + 16, 10 * 10 * 16 * 6 * 25, 6 + 4 * 2, 2),  # conv 5x5: rf + (5-1)*2
        "4": ([16, 10, 10], 0, 0, 14, 2),
        "5": ([16, 5, 5], 0, 0, 14 + 1 * 2, 4),                           # pool 2: rf + (2-1)*2
        "6": ([400], 0, 0, None, None),
        "7": ([120], 400 * 120 + 120, 400 * 120, None, None),
        "8": ([120], 0, 0, None, None),
        "9": ([84], 120 * 84 + 84, 120 * 84, None, None),
        "10": ([84], 0, 0, None, None),
        "11": ([10], 84 * 10 + 10, 84 * 10, None, None),
    }
    for info in infos:
        shape, params, macs, rf, jump = by_hand[info.name]
        assert info.output_shape == shape, info
        assert info.params == params, info
        assert info.macs == macs, info
        assert info.receptive_field == (None if rf is None else [rf, rf]), info
        assert info.jump == (None if jump is None else [jump, jump]), info
    assert shapes.total_macs(infos) == 117_600 + 240_000 + 48_000 + 10_080 + 840 == 416_520


def test_cifar10_cnn_improved_needs_ceil_mode():
    infos = resolve_config("cifar10_cnn_improved.yaml")
    # Batch norm after each conv adds weight and bias: 2*32 + 2*64 + 2*64.
    assert shapes.total_params(infos) == 1_191_170 + 2 * 32 + 2 * 64 + 2 * 64 == 1_191_490
    assert [i.params for i in infos if i.type == "BatchNorm2d"] == [64, 128, 128]
    assert infos[0].input_shape == [3, 28, 28]  # the crop
    assert infos[7].output_shape == [64, 7, 7]
    assert infos[11].arch["ceil_mode"] is True and infos[11].output_shape == [64, 4, 4]
    assert infos[13].arch["in_features"] == 1024
    assert infos[11].notes  # says that floor would give 3x3

    # Without ceil_mode, fc4 would receive 64*3*3 = 576 features ...
    infos = resolve_config("cifar10_cnn_improved.yaml", ["model.layers.11.ceil_mode=false"])
    assert infos[12].output_shape == [576]
    # ... which an explicit in_features 1024 rejects, naming the layer and the numbers.
    with pytest.raises(ShapeError) as e:
        resolve_config("cifar10_cnn_improved.yaml", ["model.layers.11.ceil_mode=false", "model.layers.13.in_features=1024"])
    assert str(e.value) == ("layer 13 (Linear): expects in_features=1024 but receives 576 features from "
                            "layer 12 (Flatten); set in_features to 576 or remove it")


@pytest.mark.parametrize("name", ["cifar10_cnn_best.yaml", "cifar10_cnn_fast.yaml"])
def test_cifar10_recipes_keep_the_practicals_network(name):
    """The recipes change the training, not the net: the improved net's layers and widths on the
    whole 32x32 image (pad-4 crops), so no ceil_mode, and no dropout (it cost accuracy)."""
    infos = resolve_config(name)
    improved = resolve_config("cifar10_cnn_improved.yaml")
    without_dropout = [i for i in improved if i.type != "Dropout"]
    assert [i.type for i in infos] == [i.type for i in without_dropout]
    assert [i.params for i in infos] == [i.params for i in without_dropout]
    assert shapes.total_params(infos) == 1_191_490
    assert infos[0].input_shape == [3, 32, 32]
    assert [i.output_shape for i in infos if i.type == "MaxPool2d"] == [[32, 16, 16], [64, 8, 8], [64, 4, 4]]
    assert [i.arch["kernel_size"] for i in infos if i.type == "Conv2d"] == [5, 5, 5]


@pytest.mark.parametrize("name", ["circles_mlp.yaml", "mnist_mlp.yaml", "mnist_lenet5.yaml", "cifar10_cnn.yaml",
                                  "cifar10_cnn_improved.yaml", "cifar10_cnn_best.yaml", "cifar10_cnn_fast.yaml"])
def test_architecture_rebuilds_the_same_torch_net(name, torch1):
    torch = torch1
    cfg = config.load(CONFIGS / name)
    shape = shapes.dataset_input_shape(cfg.data)
    infos = shapes.resolve(shape, specs(cfg))
    arch = shapes.architecture(infos)
    net = torch.nn.Sequential(*[getattr(torch.nn, d.pop("type"))(**d) for d in arch]).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, *shape))
    assert list(out.shape[1:]) == infos[-1].output_shape
    assert sum(p.numel() for p in net.parameters()) == shapes.total_params(infos)
    state = net.state_dict()
    for info in infos:  # the name is the checkpoint tensor prefix
        if info.params:
            assert f"{info.name}.weight" in state
    assert shapes.architecture(infos)[0]["type"] == infos[0].type  # architecture() returns copies


# ----------------------------------------------------------------------------- errors
IMG = [3, 32, 32]


def test_linear_on_an_image_asks_for_flatten():
    with pytest.raises(ShapeError, match=r"layer 1 \(Linear\): receives a \[C, H, W\] input \[8, 32, 32\] "
                                         r"from layer 0 \(Conv2d\); add \{type: flatten\} before it"):
        shapes.resolve(IMG, [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                             {"type": "linear", "out_features": 10}])


def test_conv_on_flat_features():
    with pytest.raises(ShapeError, match=r"layer 1 \(Conv2d\): needs a \[C, H, W\] input but receives 3072 flat "
                                         r"features from layer 0 \(Flatten\)"):
        shapes.resolve(IMG, [{"type": "flatten"}, {"type": "conv2d", "out_channels": 8, "kernel_size": 3}])
    with pytest.raises(ShapeError, match=r"layer 0 \(MaxPool2d\).*the input \[2\]"):
        shapes.resolve([2], [{"type": "maxpool2d", "kernel_size": 2}])


def test_kernel_larger_than_padded_input_names_the_layer():
    layers = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3},
              {"type": "maxpool2d", "kernel_size": 2},
              {"type": "relu"},
              {"type": "maxpool2d", "kernel_size": 2}]
    with pytest.raises(ShapeError) as e:
        shapes.resolve([1, 4, 4], layers)
    assert str(e.value).startswith("layer 3 (MaxPool2d): kernel 2 is larger than the padded input 1x1 "
                                   "(a 1x1 input from layer 2 (ReLU))")
    with pytest.raises(ShapeError, match=r"layer 0 \(Conv2d\): kernel 5 \(dilation 2: spans 9\) is larger than "
                                         r"the padded input 8x8 \(the 6x6 input plus padding 1 on each side\)"):
        shapes.resolve([1, 6, 6], [{"type": "conv2d", "out_channels": 1, "kernel_size": 5, "dilation": 2, "padding": 1}])


def test_channel_and_feature_mismatches():
    with pytest.raises(ShapeError, match=r"layer 2 \(Conv2d\): expects in_channels=16 but receives 8 channels from "
                                         r"layer 1 \(ReLU\); set in_channels to 8 or remove it"):
        shapes.resolve(IMG, [{"type": "conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "relu"},
                             {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "in_channels": 16}])
    with pytest.raises(ShapeError, match=r"layer 1 \(BatchNorm2d\): expects num_features=16 but receives 8 channels"):
        shapes.resolve(IMG, [{"type": "conv2d", "out_channels": 8, "kernel_size": 3},
                             {"type": "batchnorm2d", "num_features": 16}])
    with pytest.raises(ShapeError, match=r"layer 1 \(BatchNorm1d\): receives a \[C, H, W\] input"):
        shapes.resolve(IMG, [{"type": "conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "batchnorm1d"}])
    with pytest.raises(ShapeError, match=r"layer 1 \(BatchNorm2d\): needs a \[C, H, W\] input but receives 3072"):
        shapes.resolve(IMG, [{"type": "flatten"}, {"type": "batchnorm2d"}])
    with pytest.raises(ShapeError, match=r"layer 0 \(MaxPool2d\): padding 2 is more than half of kernel 3"):
        shapes.resolve(IMG, [{"type": "maxpool2d", "kernel_size": 3, "padding": 2}])


def test_flat_layers_and_batchnorm1d():
    infos = shapes.resolve([2], [{"type": "linear", "out_features": 10, "in_features": 2},
                                 {"type": "batchnorm1d", "num_features": None, "eps": 1e-5, "momentum": 0.1},
                                 {"type": "dropout", "p": 0.2}, {"type": "sigmoid"}, {"type": "flatten"}])
    assert [i.output_shape for i in infos] == [[10]] * 5
    assert infos[1].params == 20 and infos[1].arch == {"type": "BatchNorm1d", "num_features": 10, "eps": 1e-5,
                                                       "momentum": 0.1}
    assert infos[2].arch == {"type": "Dropout", "p": 0.2}
    assert all(i.receptive_field is None and i.jump is None for i in infos)


def test_non_square_arch_sizes_are_lists():
    (info,) = shapes.resolve([3, 20, 30], [{"type": "conv2d", "out_channels": 2, "kernel_size": [3, 5],
                                            "stride": 2, "padding": [1, 2], "bias": False}])
    assert info.arch == {"type": "Conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": [3, 5], "stride": 2,
                         "padding": [1, 2], "dilation": 1, "bias": False}
    assert info.output_shape == [2, 10, 15] and info.params == 2 * 3 * 15
    assert info.receptive_field == [3, 5] and info.jump == [2, 2]


# ----------------------------------------------------------------------------- data shapes
@pytest.mark.parametrize("data, shape", [
    ({"dataset": "circles"}, [2]),
    ({"dataset": "mnist"}, [1, 28, 28]),
    ({"dataset": "fashion-mnist"}, [1, 28, 28]),
    ({"dataset": "cifar10"}, [3, 32, 32]),
    ({"dataset": "cifar100", "augment": {"crop": 24}}, [3, 24, 24]),
    ({"dataset": "imagefolder", "image_size": [48, 64], "channels": 1}, [1, 48, 64]),
    ({"dataset": "imagefolder", "image_size": [48, 64], "augment": {"crop": 40}}, [3, 40, 40]),
])
def test_dataset_input_shape(data, shape):
    assert shapes.dataset_input_shape(data) == shape


def test_dataset_input_shape_from_the_pydantic_model_and_bad_crops():
    cfg = config.load(CONFIGS / "cifar10_cnn_improved.yaml")
    assert shapes.dataset_input_shape(cfg.data) == [3, 28, 28]
    with pytest.raises(ShapeError, match="crop 40 is larger than the cifar10 images"):
        shapes.dataset_input_shape({"dataset": "cifar10", "augment": {"crop": 40}})
    with pytest.raises(ShapeError, match="applies to images"):
        shapes.dataset_input_shape({"dataset": "circles", "augment": {"crop": 2}})


def test_shapes_imports_nothing_heavy():
    import ast

    tree = ast.parse((Path(shapes.__file__)).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "copy", "dataclasses", "typing", "mlp_cli"}, imported
