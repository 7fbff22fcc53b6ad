"""Sequential container and the builder that turns an architecture into layers: the fast ones
(layers.py) or, with Execution(engine="reference"), the reference ones (reference.py)."""

from __future__ import annotations

import numpy as np

from mlp_cli import registry
from mlp_cli.nn import init as initializers
from mlp_cli.nn import layers as L
from mlp_cli.nn import reference as R
from mlp_cli.nn.execution import Execution

LAYERS = {t.torch: getattr(L, t.fast) for t in registry.LAYER_TYPES}  # the architecture's type -> the fast class
# The same names, constructor arguments and interface:
REFERENCE_LAYERS = {t.torch: getattr(R, t.reference) for t in registry.LAYER_TYPES}
_TAKES_DTYPE = tuple(t.torch for t in registry.LAYER_TYPES if t.floats)
_INITIALIZED = tuple(t.torch for t in registry.LAYER_TYPES if t.weights)  # model.init sets their weight and bias
_DROPOUT = (L.Dropout, R.Dropout)


class Sequential:
    """Layers applied in order, with PyTorch's state-dict names ("0.weight", "3.running_mean")."""

    def __init__(self, layers: list[L.Layer]):
        self.layers = layers
        self.order = _execution_order(layers)
        self.execution = Execution()  # how build made the layers run

    def train(self):
        for layer in self.layers:
            layer.training = True
        return self

    def eval(self):
        for layer in self.layers:
            layer.training = False
        return self

    def set_rng(self, rng: np.random.Generator):
        """Give the random layers (dropout) the generator to draw their masks from."""
        for layer in self.layers:
            if isinstance(layer, _DROPOUT):
                layer.rng = rng

    def forward(self, x):
        for i in self.order:
            x = self.layers[i].forward(x)
        return x

    __call__ = forward

    def backward(self, dout):
        """Back-propagate dL/d(output); returns dL/d(input), or None once a layer skipped it
        (see skip_input_gradient)."""
        for i in reversed(self.order):
            dout = self.layers[i].backward(dout)
            if dout is None:
                break
        return dout

    def skip_input_gradient(self):
        """In training nothing needs dL/d(input): let the first layer with parameters skip its
        input gradient (a large product for a first conv) and stop the backward pass there."""
        for layer in self.layers:
            if layer.params:
                layer.needs_input_grad = False
                break
        return self

    def named_params(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    def named_grads(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.grads.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers, in PyTorch's order and names."""
        state = {}
        for i, layer in enumerate(self.layers):
            for k, v in layer.params.items():
                state[f"{i}.{k}"] = v
            for k, v in layer.buffers.items():
                state[f"{i}.{k}"] = v
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]):
        """Copy arrays into the existing parameters (shapes must match; dtypes are converted)."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, target in own.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"{name}: shape {value.shape} in the state dict, {target.shape} in the network")
            target[...] = value


# Increasing element-wise maps that commute with max pooling: max(f(x)) = f(max(x)).
_MONOTONE = (L.ReLU, L.Tanh)


def _execution_order(layers: list[L.Layer]) -> list[int]:
    """The order to run the layers in: as given, except that a ReLU or Tanh followed by a max
    pooling runs after it, on a quarter of the numbers (for 2x2 windows).

    ReLU: max(relu(x)) = relu(max(x)) exactly, and the gradients agree exactly too (a window
    whose maximum is <= 0 passes no gradient either way). Tanh is increasing, so
    max(tanh(x)) = tanh(max(x)) as well (NumPy's float32 tanh is monotone but for two
    one-ulp steps in (1e-8, 20)), and the gradient (1 - tanh^2) * dout goes to the same window
    element, except where tanh rounds two different inputs of one window to the same value:
    the given order then routes it to the first of them, this order to the larger input (the
    exact derivative's choice); the value routed is the same. Names and indices (state dicts,
    gradcheck) keep the given order. Only the fast layers are reordered: the reference runs as given."""
    order = list(range(len(layers)))
    i = 0
    while i < len(order) - 1:
        if type(layers[order[i]]) in _MONOTONE and type(layers[order[i + 1]]) is L.MaxPool2d:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2
        else:
            i += 1
    return order


def build(architecture: list[dict], *, rng: np.random.Generator | None = None, weight_init: str = "default",
          init_std: float | None = None, bias_init: str = "default", dtype=np.float32,
          execution: Execution | None = None) -> Sequential:
    """Build a Sequential from an architecture (PyTorch-vocabulary dicts, see docs/design.md),
    initializing Linear and Conv2d weights with `weight_init` and biases with `bias_init`.
    Every layer runs as `execution` says (default: Execution(), the fast engine on one thread);
    the reference engine's layers take the same initial weights from `rng`, in the same order."""
    rng = rng if rng is not None else np.random.default_rng(0)
    execution = execution if execution is not None else Execution()
    layers = []
    for spec in architecture:
        spec = dict(spec)
        kind = spec.pop("type")
        if kind in _TAKES_DTYPE:
            spec["dtype"] = dtype
        if execution.reference:
            layer = REFERENCE_LAYERS[kind](**spec)
        else:
            layer = LAYERS[kind](**spec, execution=execution)
        if kind in _INITIALIZED:
            w = layer.params["weight"]
            w[...] = initializers.init_weight(w.shape, weight_init, rng, dtype, init_std)
            if "bias" in layer.params:
                layer.params["bias"][...] = initializers.init_bias(w.shape, bias_init, rng, dtype)
        layers.append(layer)
    model = Sequential(layers)
    model.execution = execution
    # The reference keeps each array on its own, as its functions return them.
    return model if execution.reference else _flatten(model)


def _flatten(model: Sequential) -> Sequential:
    """Make every parameter a view of one contiguous array, and every gradient a view of a second
    one laid out alike (layers write their gradients in place), so the optimizer can update the
    whole network in a few passes over two arrays instead of several small calls per parameter
    (optim.Optimizer.step). Names, shapes and values do not change."""
    params = model.named_params()
    if not params or len({p.dtype for p in params.values()}) != 1:
        return model
    dtype = next(iter(params.values())).dtype
    total = sum(p.size for p in params.values())
    flat_params, flat_grads = np.empty(total, dtype), np.zeros(total, dtype)
    offset = 0
    for layer in model.layers:
        for name, p in layer.params.items():
            view = flat_params[offset:offset + p.size].reshape(p.shape)
            view[...] = p
            layer.params[name] = view
            layer.grads[name] = flat_grads[offset:offset + p.size].reshape(p.shape)
            offset += p.size
    return model
