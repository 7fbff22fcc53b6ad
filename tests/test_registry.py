"""One registry per concept (mlp_cli/registry.py): every layer type and every data set is spelled
out there and only there, and every part a row names exists where the row says."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import numpy as np
import pytest

from mlp_cli import registry as R

PACKAGE = Path(__file__).resolve().parents[1] / "mlp_cli"
NAMES = [*R.LAYER_NAMES, *(t.torch for t in R.LAYER_TYPES), *R.DATASET_NAMES]


def _string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_each_layer_type_and_data_set_is_spelled_out_in_one_module_only():
    """As a string constant equal to the name (its config spelling or its PyTorch class name):
    a message that mentions a name is free to, a list or a comparison of names is not."""
    owners = {name: [] for name in NAMES}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _string_constants(path) & set(NAMES):
            owners[name].append(str(path.relative_to(PACKAGE)))
    assert {name: where for name, where in owners.items() if where != ["registry.py"]} == {}


def test_every_layer_type_names_parts_that_exist():
    torch_nn = pytest.importorskip("torch.nn")
    from mlp_cli import config, shapes
    from mlp_cli.nn import layers, reference

    for kind in R.LAYER_TYPES:
        schema = getattr(config, kind.schema)
        assert kind.name in typing.get_args(schema.model_fields["type"].annotation), kind
        assert list(schema.model_fields)[0] == "type"  # the first key of a layer in config.yaml
        assert callable(getattr(shapes, kind.shape)), kind
        assert issubclass(getattr(layers, kind.fast), layers.Layer), kind
        assert issubclass(getattr(reference, kind.reference), reference.Layer), kind
        assert issubclass(getattr(torch_nn, kind.torch), torch_nn.Module), kind
    assert config.LAYER_TYPES == R.LAYER_NAMES


# The smallest keys each layer type needs, on a 3x8x8 image or (after `flatten`) on 12 features.
_KEYS = {R.LINEAR: {"out_features": 5}, R.CONV2D: {"out_channels": 4, "kernel_size": 3},
         R.MAXPOOL2D: {"kernel_size": 2}, R.AVGPOOL2D: {"kernel_size": 2}, R.DROPOUT: {"p": 0.25},
         R.BATCHNORM1D: {}, R.BATCHNORM2D: {}, R.RELU: {}, R.TANH: {}, R.SIGMOID: {}, R.FLATTEN: {}}


@pytest.mark.parametrize("kind", R.LAYER_TYPES, ids=lambda t: t.name)
def test_a_new_layer_type_is_checked_through_config_shapes_engine_and_pytorch(kind):
    """A row of the registry alone is enough for a network with the layer to be validated,
    shape-checked, built by the engine and by PyTorch, with the shapes agreeing."""
    torch = pytest.importorskip("torch")
    from mlp_cli import config, shapes
    from mlp_cli.interop import torch_sequential
    from mlp_cli.nn.model import build

    flat = kind in (R.LINEAR, R.BATCHNORM1D)
    layers = ([{"type": "avgpool2d", "kernel_size": 4}, {"type": "flatten"}] if flat else []) + \
        [{"type": kind.name, **_KEYS[kind]}]
    raw = {"data": {"dataset": "cifar10"}, "model": {"layers": layers + [{"type": "flatten"}, {"type": "linear",
           "out_features": 10}]}, "train": {"epochs": 1, "batch_size": 2}, "optim": {"lr": 0.1}}
    cfg = config.validate(raw)
    assert cfg.model.layers[len(layers) - 1].type == kind.name
    infos = shapes.resolve([3, 32, 32], [layer.model_dump() for layer in cfg.model.layers])
    arch = shapes.architecture(infos)
    assert arch[len(layers) - 1]["type"] == kind.torch
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    ours = build(arch).eval()(x)
    theirs = torch_sequential(arch).eval()(torch.from_numpy(x))
    assert ours.shape == tuple(theirs.shape) == (2, 10)


def test_every_data_set_names_its_source_and_its_shape():
    from mlp_cli import shapes
    from mlp_cli.data import circles, sources

    for dataset in R.DATASETS:
        assert dataset.source in (R.GENERATED, R.TORCHVISION, R.FOLDER)
        if dataset.source == R.TORCHVISION:
            assert sources.SOURCES[dataset.name].tv_class == dataset.torchvision
        if dataset.shape is not None:
            assert shapes.dataset_input_shape({"dataset": dataset.name}) == list(dataset.shape)
    assert set(sources.SOURCES) == {d.name for d in R.DATASETS if d.source == R.TORCHVISION}
    assert R.CIRCLES.classes == len(circles.CLASSES)
    torchvision = pytest.importorskip("torchvision.datasets")
    assert all(hasattr(torchvision, d.torchvision) for d in R.DATASETS if d.torchvision)
