"""Every layer type and every data set, once: the one list the rest of the tool reads.

A layer type has a config spelling (`type: conv2d`), a PyTorch class (the architecture's
"type", what checkpoints and `interop` speak), the pydantic class of its keys (config.py), its
shape rule (shapes.py), its fast class (nn/layers.py) and its reference class (nn/reference.py);
the last two are named like PyTorch's. A data set has a name, its number of classes, the shape
one example has, and where its examples come from (generated, torchvision's files, a folder of
images). Adding either is one row here, plus the named parts where they live; the tests check
that each name is spelled out in this module only and that every named part exists.

Pure Python, no imports: config, shapes and `mlp-cli convshape` read it without numpy or torch.
The parts are named, not imported, so that importing this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerType:
    name: str  # the config's spelling, lower case (PyTorch's spelling is accepted too)
    torch: str  # torch.nn.<torch>: the architecture's "type"; the fast and reference classes share the name
    schema: str  # mlp_cli.config.<schema>: the pydantic class of its keys
    shape: str  # mlp_cli.shapes.<shape>: its shape rule
    weights: bool = False  # has a weight (and bias) that model.init initializes
    floats: bool = False  # holds float arrays (parameters or running statistics) in the run's dtype

    @property
    def fast(self) -> str:
        """Its class in mlp_cli.nn.layers."""
        return self.torch

    @property
    def reference(self) -> str:
        """Its class in mlp_cli.nn.reference."""
        return self.torch


LINEAR = LayerType("linear", "Linear", schema="Linear", shape="linear_shape", weights=True, floats=True)
CONV2D = LayerType("conv2d", "Conv2d", schema="Conv2d", shape="conv2d_shape", weights=True, floats=True)
MAXPOOL2D = LayerType("maxpool2d", "MaxPool2d", schema="MaxPool2d", shape="maxpool2d_shape")
AVGPOOL2D = LayerType("avgpool2d", "AvgPool2d", schema="AvgPool2d", shape="avgpool2d_shape")
RELU = LayerType("relu", "ReLU", schema="Activation", shape="elementwise_shape")
TANH = LayerType("tanh", "Tanh", schema="Activation", shape="elementwise_shape")
SIGMOID = LayerType("sigmoid", "Sigmoid", schema="Activation", shape="elementwise_shape")
FLATTEN = LayerType("flatten", "Flatten", schema="Activation", shape="flatten_shape")
DROPOUT = LayerType("dropout", "Dropout", schema="Dropout", shape="dropout_shape")
BATCHNORM1D = LayerType("batchnorm1d", "BatchNorm1d", schema="BatchNorm", shape="batchnorm1d_shape", floats=True)
BATCHNORM2D = LayerType("batchnorm2d", "BatchNorm2d", schema="BatchNorm", shape="batchnorm2d_shape", floats=True)

LAYER_TYPES = (LINEAR, CONV2D, MAXPOOL2D, AVGPOOL2D, RELU, TANH, SIGMOID, FLATTEN, DROPOUT, BATCHNORM1D, BATCHNORM2D)
LAYER_NAMES = tuple(t.name for t in LAYER_TYPES)
BY_NAME = {t.name: t for t in LAYER_TYPES}  # config spelling -> LayerType
BY_TORCH = {t.torch: t for t in LAYER_TYPES}  # PyTorch class name -> LayerType


def layer_type(name: str) -> LayerType | None:
    """The layer type of a config's `type` (either spelling: conv2d or Conv2d), None if there is none."""
    return BY_NAME.get(str(name).lower())


def schemas(schema: str) -> tuple[str, ...]:
    """The names of the layer types whose keys the pydantic class `schema` describes."""
    return tuple(t.name for t in LAYER_TYPES if t.schema == schema)


# ----------------------------------------------------------------------------- data sets
# Where a data set's examples come from, and so which module of mlp_cli.data loads them.
GENERATED = "generated"  # made from a fixed seed: data/circles.py
TORCHVISION = "torchvision"  # torchvision's files, read by data/sources.py
FOLDER = "folder"  # a folder of images, one subfolder per class: data/imagefolder.py


@dataclass(frozen=True)
class Dataset:
    name: str  # the config's data.dataset
    source: str  # GENERATED, TORCHVISION or FOLDER
    classes: int | None = None  # None: as many as the folder has
    shape: tuple[int, ...] | None = None  # one example as the net gets it: (C, H, W) or (features,); None: from the images
    torchvision: str | None = None  # torchvision.datasets.<torchvision>

    @property
    def images(self) -> bool:
        return self.shape is None or len(self.shape) == 3


CIRCLES = Dataset("circles", GENERATED, classes=2, shape=(2,))
MNIST = Dataset("mnist", TORCHVISION, classes=10, shape=(1, 28, 28), torchvision="MNIST")
FASHION_MNIST = Dataset("fashion-mnist", TORCHVISION, classes=10, shape=(1, 28, 28), torchvision="FashionMNIST")
CIFAR10 = Dataset("cifar10", TORCHVISION, classes=10, shape=(3, 32, 32), torchvision="CIFAR10")
CIFAR100 = Dataset("cifar100", TORCHVISION, classes=100, shape=(3, 32, 32), torchvision="CIFAR100")
IMAGEFOLDER = Dataset("imagefolder", FOLDER)

DATASETS = (CIRCLES, MNIST, FASHION_MNIST, CIFAR10, CIFAR100, IMAGEFOLDER)
DATASET_NAMES = tuple(d.name for d in DATASETS)
DATASETS_BY_NAME = {d.name: d for d in DATASETS}
# The shape each data set of fixed shape gives the net, before augmentation: [C, H, W] or [features].
DATASET_SHAPES = {d.name: list(d.shape) for d in DATASETS if d.shape is not None}
NUM_CLASSES = {d.name: d.classes for d in DATASETS if d.classes is not None}


def dataset(name: str) -> Dataset | None:
    return DATASETS_BY_NAME.get(name)
