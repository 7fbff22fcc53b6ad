"""The execution settings (nn/execution.py): one object per entry point, read from the environment
once, handed to every layer; no setting lives in a module or a class."""

import numpy as np
import pytest

from mlp_cli.nn import layers as L
from mlp_cli.nn.execution import Execution, ExecutionError
from mlp_cli.nn.model import build

ARCH = [{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3}, {"type": "ReLU"},
        {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}, {"type": "Linear", "in_features": 18,
                                                                        "out_features": 3}]


def test_from_env_reads_the_threads_once_and_nothing_else():
    assert Execution.from_env({"MLP_CLI_THREADS": "3"}) == Execution(threads=3)
    assert Execution.from_env({"MLP_CLI_THREADS": "0"}).threads == 1
    assert Execution.from_env({}, engine="reference").engine == "reference"
    assert Execution.from_env({}).threads >= 1
    with pytest.raises(ExecutionError, match="MLP_CLI_THREADS='two' is not a number of threads"):
        Execution.from_env({"MLP_CLI_THREADS": "two"})
    with pytest.raises(ExecutionError, match="unknown engine"):
        Execution(engine="slow")
    with pytest.raises(ExecutionError, match="unknown convolution method"):
        Execution(conv_method="fft")
    assert Execution(threads=2).record() == {"engine": "fast", "threads": 2}


def test_every_layer_runs_as_its_own_execution_says():
    """Two networks of different settings side by side in one process: each keeps its own."""
    a = build(ARCH, execution=Execution(threads=2, conv_method="im2col", compiled=False))
    b = build(ARCH, execution=Execution(threads=1, conv_method="band"))
    assert {layer.execution for layer in a.layers} == {Execution(threads=2, conv_method="im2col", compiled=False)}
    assert {layer.execution for layer in b.layers} == {Execution(threads=1, conv_method="band")}
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-5, atol=1e-6)
    for cls in (L.Conv2d, L.MaxPool2d, L._BatchNorm):  # no class-wide switches left
        assert not {"method", "use_compiled"} & set(vars(cls))
