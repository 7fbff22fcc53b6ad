"""Shape inference for the layer specs of a config, with PyTorch's exact arithmetic.

Pure Python (no numpy, no torch, no pydantic), so `mlp-cli convshape` answers at once and
`train` can reject a network whose shapes do not fit before it loads any data.

Shapes are per example, without the batch dimension: `[C, H, W]` for images, `[features]` once
flat. Output sizes follow PyTorch:

- Conv2d: floor((x + 2p - d(k-1) - 1)/s) + 1; the padded input must be at least the dilated
  kernel d(k-1) + 1.
- MaxPool2d/AvgPool2d: the same with ceil in place of floor when ceil_mode=True, except that a
  last window which would start in the right padding is dropped; PyTorch also requires
  padding <= kernel_size // 2 and an output of at least 1.
- The practical's formula ceil((2p + x - k)/s + 1) is `practical_output_size`, kept to explain the
  difference (it is pooling's ceil_mode rule without the drop).

What is counted:

- `params`: what `sum(p.numel() for p in module.parameters())` gives (BatchNorm: weight and
  bias, 2*C; its running statistics are buffers, not parameters).
- `macs`: multiply-adds per image of the weights of Conv2d (out_h*out_w*out_c * in_c*kh*kw)
  and Linear (in*out). Biases, activations, pooling and batch norm are not counted.
- `receptive_field` and `jump`: per spatial axis [h, w], in input pixels: the size of the
  input window one output value sees, and the distance in input pixels between neighbouring
  outputs. None once the data is flat.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from mlp_cli import registry as R
from mlp_cli.errors import ShapeError

BYTES_PER_FLOAT32 = 4


@dataclass
class LayerInfo:
    """One resolved layer: what it is in PyTorch's vocabulary and the shapes around it."""

    index: int
    name: str  # the torch.nn.Sequential child name, str(index): also the checkpoint tensor prefix
    type: str  # the PyTorch class name
    arch: dict  # exactly the torch.nn class's keyword arguments, plus "type"
    input_shape: list[int]
    output_shape: list[int]
    params: int = 0
    macs: int = 0  # multiply-adds per image of conv/linear weights
    receptive_field: list[int] | None = None  # [h, w] in input pixels; None once flat
    jump: list[int] | None = None  # [h, w] input pixels between neighbouring outputs
    notes: list[str] = field(default_factory=list)  # e.g. what ceil_mode changed


# ----------------------------------------------------------------------------- one axis
def _check_axis(what: str, kernel, stride, padding, dilation) -> None:
    for name, value, low in (("kernel", kernel, 1), ("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ShapeError(f"{what}: {name} must be an integer >= {low}, got {value!r}")


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """The span of a dilated kernel: d(k-1) + 1."""
    return dilation * (kernel - 1) + 1


def _floor_len(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _ceil_len(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    # PyTorch's pooling_output_shape_pad_lr with ceil_mode=True.
    out = (size + 2 * padding - dilation * (kernel - 1) - 1 + stride - 1) // stride + 1
    if (out - 1) * stride >= size + padding:  # the last window would start in the right padding
        out -= 1
    return out


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """nn.Conv2d's output size along one axis: floor((x + 2p - d(k-1) - 1)/s) + 1.

    Raises ShapeError when the dilated kernel is larger than the padded input (PyTorch: "Kernel
    size can't be greater than actual input size").
    """
    _check_axis("conv", kernel, stride, padding, dilation)
    if size + 2 * padding < effective_kernel(kernel, dilation):
        raise ShapeError(_too_big_axis(size, kernel, padding, dilation))
    return _floor_len(size, kernel, stride, padding, dilation)


def pool_output_size(size: int, kernel: int, stride: int | None = None, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """nn.MaxPool2d/AvgPool2d's output size along one axis (stride None means the kernel size).

    ceil_mode=True rounds up but drops a last window that would start in the right padding.
    Raises ShapeError where PyTorch raises: padding above kernel_size // 2, or an output below 1.
    """
    stride = kernel if stride is None else stride
    _check_axis("pool", kernel, stride, padding, dilation)
    if padding > kernel // 2:
        raise ShapeError(_pool_padding_message(padding, kernel))
    out = (_ceil_len if ceil_mode else _floor_len)(size, kernel, stride, padding, dilation)
    if out < 1:
        raise ShapeError(_too_big_axis(size, kernel, padding, dilation))
    return out


def floor_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """floor((x + 2p - d(k-1) - 1)/s) + 1 alone, without validity checks (may be < 1)."""
    _check_axis("floor", kernel, stride, padding, dilation)
    return _floor_len(size, kernel, stride, padding, dilation)


def practical_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """The practical's formula ceil((2p + x - k)/s + 1), with k the dilated kernel d(k-1) + 1.

    It over-counts by one whenever s does not divide x + 2p - k. No validity checks.
    """
    span = effective_kernel(kernel, dilation)
    return -(-(2 * padding + size - span) // stride) + 1


def _too_big_axis(size, kernel, padding, dilation) -> str:
    span = effective_kernel(kernel, dilation)
    dil = f" (dilation {dilation}: spans {span})" if dilation != 1 else ""
    return f"kernel {kernel}{dil} is larger than the padded input {size + 2 * padding} ({size} plus padding {padding} on each side)"


def _pool_padding_message(padding, kernel) -> str:
    return (f"padding {_fmt(padding)} is more than half of kernel {_fmt(kernel)}; "
            f"PyTorch requires padding <= kernel_size // 2")


# ----------------------------------------------------------------------------- data
def _field(obj, name, default=None):
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def dataset_input_shape(data_cfg) -> list[int]:
    """The shape one example has when it reaches the net, from the config's `data` section alone.

    circles [2]; mnist, fashion-mnist [1, 28, 28]; cifar10, cifar100 [3, 32, 32]; imagefolder
    [channels, *image_size]. With `augment.crop` set, H and W are the crop size (random crops in
    training, center crops at evaluation), and an `augment.cutout` square must be smaller than them.
    Accepts the pydantic `Data` model or a plain dict.
    """
    dataset = _field(data_cfg, "dataset")
    known = R.dataset(dataset) if isinstance(dataset, str) else None
    if known is not None and known.shape is None:  # an image folder
        image_size = _field(data_cfg, "image_size")
        if image_size is None:
            raise ShapeError("data.image_size is not known yet: it is read from the images (data.resolve) "
                             "or set in the config, for example image_size: [32, 32]")
        h, w = _pair(image_size, "data.image_size")
        shape = [int(_field(data_cfg, "channels") or 3), h, w]
    elif known is not None:
        shape = list(known.shape)
    else:
        raise ShapeError(f"unknown dataset {dataset!r}; allowed: {', '.join(R.DATASET_NAMES)}")
    crop = _field(_field(data_cfg, "augment") or {}, "crop")
    pad = _field(_field(data_cfg, "augment") or {}, "crop_padding") or 0
    if len(shape) == 3 and pad > min(shape[1], shape[2]):
        raise ShapeError(f"data.augment.crop_padding {pad} is more than the {dataset} images' size "
                         f"({shape[1]}x{shape[2]}): the random crops would be mostly padding; use a few pixels")
    if crop is not None:
        if len(shape) != 3:
            raise ShapeError(f"data.augment.crop applies to images, but {dataset} gives {shape[0]} features per example; remove crop")
        if crop > shape[1] or crop > shape[2]:
            raise ShapeError(f"data.augment.crop {crop} is larger than the {dataset} images ({shape[1]}x{shape[2]}); "
                             f"the center crop at evaluation needs crop <= {min(shape[1], shape[2])}")
        shape[1] = shape[2] = int(crop)
    cutout = _field(_field(data_cfg, "augment") or {}, "cutout")
    if cutout is not None and len(shape) == 3 and cutout >= min(shape[1], shape[2]):
        raise ShapeError(f"data.augment.cutout {cutout} is not smaller than the images the network gets "
                         f"({shape[1]}x{shape[2]}{', after the crop' if crop is not None else ''}): it would blank "
                         f"them whole; use a fraction of the side, e.g. data.augment.cutout={max(1, min(shape[1], shape[2]) // 2)}")
    return shape


# ----------------------------------------------------------------------------- helpers
def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ShapeError(f"{what}: expected an integer or a pair [h, w], got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise ShapeError(f"{what}: expected an integer or a pair [h, w], got {value!r}")


def _compact(pair: Sequence[int]):
    """PyTorch-style size: an int when square, else [h, w]."""
    return pair[0] if pair[0] == pair[1] else [pair[0], pair[1]]


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"
    return str(value)


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_input_shape(shape) -> list[int]:
    try:
        shape = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise ShapeError(f"input shape must be [C, H, W] or [features], got {shape!r}") from None
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise ShapeError(f"input shape must be [C, H, W] or [features] with positive sizes, got {shape}")
    return shape


# ----------------------------------------------------------------------------- layers
class _Ctx:
    """Where a layer sits, for error messages."""

    def __init__(self, where: str, source: str):
        self.where = where  # "layer 3 (MaxPool2d)"
        self.source = source  # "layer 2 (ReLU)" or "the input"

    def error(self, message: str) -> ShapeError:
        return ShapeError(f"{self.where}: {message}")


def _get_pair(spec, key, default, what, low):
    value = spec.get(key)
    if value is None:
        value = default
    h, w = _pair(value, f"{what}: {key}")
    if h < low or w < low:
        raise ShapeError(f"{what}: {key} must be >= {low}, got {_fmt((h, w))}")
    return h, w


def _need_image(ctx: _Ctx, shape) -> None:
    if len(shape) != 3:
        if ctx.source.startswith("the input"):
            hint = "conv and pooling layers need an image dataset"
        else:
            hint = "conv and pooling layers must come before {type: flatten}"
        raise ctx.error(f"needs a [C, H, W] input but receives {shape[0]} flat features from {ctx.source}; {hint}")


def _spatial(ctx: _Ctx, spec, shape, rf, jump, *, is_pool: bool, dilates: bool = True):
    """Shared by Conv2d, MaxPool2d, AvgPool2d: output H, W, arch sizes, receptive field and jump.
    `is_pool`: a pooling layer (stride defaults to the kernel, ceil_mode allowed); `dilates`: it
    takes a dilation (AvgPool2d does not)."""
    c, h, w = shape
    if spec.get("kernel_size") is None:
        raise ctx.error("kernel_size is required")
    kernel = _get_pair(spec, "kernel_size", None, ctx.where, 1)
    stride = _get_pair(spec, "stride", kernel if is_pool else 1, ctx.where, 1)
    padding = _get_pair(spec, "padding", 0, ctx.where, 0)
    dilation = _get_pair(spec, "dilation", 1, ctx.where, 1)
    if not dilates and dilation != (1, 1):
        raise ctx.error("AvgPool2d has no dilation; remove it or use maxpool2d")
    ceil_mode = bool(spec.get("ceil_mode", False)) if is_pool else False
    if not is_pool and spec.get("ceil_mode"):
        raise ctx.error("nn.Conv2d has no ceil_mode; remove it (ceil_mode belongs to pooling layers)")

    if is_pool and (padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2):
        raise ctx.error(_pool_padding_message(_compact(padding), _compact(kernel))
                        + f" ({_fmt([kernel[0] // 2, kernel[1] // 2])} here)")
    span = (effective_kernel(kernel[0], dilation[0]), effective_kernel(kernel[1], dilation[1]))
    padded = (h + 2 * padding[0], w + 2 * padding[1])
    size = _ceil_len if ceil_mode else _floor_len
    oh = size(h, kernel[0], stride[0], padding[0], dilation[0])
    ow = size(w, kernel[1], stride[1], padding[1], dilation[1])
    # nn.Conv2d needs the padded input to hold the dilated kernel; pooling only needs an output
    # of at least 1 (with ceil_mode a last partial window may hang over the padded input).
    too_big = (oh < 1 or ow < 1) if is_pool else (padded[0] < span[0] or padded[1] < span[1])
    if too_big:
        dil = f" (dilation {_fmt(dilation)}: spans {_fmt(span)})" if dilation != (1, 1) else ""
        pad = f" plus padding {_fmt(padding)} on each side" if padding != (0, 0) else ""
        origin = f"the {h}x{w} input" if ctx.source.startswith("the input") else f"a {h}x{w} input from {ctx.source}"
        raise ctx.error(f"kernel {_fmt(kernel)}{dil} is larger than the padded input {padded[0]}x{padded[1]} "
                        f"({origin}{pad}); use a smaller kernel or more padding, or downsample less before it")
    new_rf = [rf[i] + (span[i] - 1) * jump[i] for i in range(2)]
    new_jump = [jump[i] * stride[i] for i in range(2)]
    return (oh, ow), kernel, stride, padding, dilation, ceil_mode, new_rf, new_jump


def _layer(index: int, spec: Mapping[str, Any], shape: list[int], rf, jump, ctx: _Ctx) -> LayerInfo:
    kind = R.layer_type(spec.get("type", ""))
    info = LayerInfo(index=index, name=str(index), type=kind.torch, arch={"type": kind.torch}, input_shape=list(shape),
                     output_shape=list(shape), receptive_field=rf and list(rf), jump=jump and list(jump))
    globals()[kind.shape](spec, shape, ctx, info)  # the layer type's shape rule, named in registry.py
    return info


# ----------------------------------------------------------------------------- the shape rules
# One per layer type (registry.py names it): from the layer's spec and its input shape, fill in
# its LayerInfo (arch, output shape, parameters, multiply-adds, receptive field and jump, notes)
# or raise ShapeError through ctx. `info` arrives with the input's shape, receptive field and jump.
def conv2d_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    _need_image(ctx, shape)
    c = shape[0]
    out_c = _count(spec, "out_channels", ctx)
    _inferred(spec, "in_channels", c, "channels", ctx)
    (oh, ow), k, s, p, d, _, info.receptive_field, info.jump = _spatial(ctx, spec, shape, info.receptive_field,
                                                                       info.jump, is_pool=False)
    bias = bool(spec.get("bias", True))
    info.arch.update(in_channels=c, out_channels=out_c, kernel_size=_compact(k), stride=_compact(s),
                     padding=_compact(p), dilation=_compact(d), bias=bias)
    info.output_shape = [out_c, oh, ow]
    info.params = out_c * c * k[0] * k[1] + (out_c if bias else 0)
    info.macs = oh * ow * out_c * c * k[0] * k[1]


def _count(spec, key: str, ctx: _Ctx) -> int:
    """The layer's `key`, an integer >= 1 (out_channels, out_features)."""
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ctx.error(f"{key} must be an integer >= 1, got {value!r}")
    return value


def _inferred(spec, key: str, actual: int, what: str, ctx: _Ctx) -> None:
    """An inferred size (in_channels, in_features) that the config may give: it must be `actual`."""
    given = spec.get(key)
    if given is not None and given != actual:
        raise ctx.error(f"expects {key}={given} but receives {actual} {what} from {ctx.source}; "
                        f"set {key} to {actual} or remove it")


def maxpool2d_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    _pool(spec, shape, ctx, info, dilates=True)


def avgpool2d_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    _pool(spec, shape, ctx, info, dilates=False)


def _pool(spec, shape, ctx: _Ctx, info: LayerInfo, *, dilates: bool) -> None:
    _need_image(ctx, shape)
    (oh, ow), k, s, p, d, ceil_mode, info.receptive_field, info.jump = _spatial(
        ctx, spec, shape, info.receptive_field, info.jump, is_pool=True, dilates=dilates)
    info.arch.update(kernel_size=_compact(k), stride=_compact(s), padding=_compact(p))
    if dilates:
        info.arch["dilation"] = _compact(d)
    info.arch["ceil_mode"] = ceil_mode
    info.output_shape = [shape[0], oh, ow]
    if ceil_mode:
        fh = _floor_len(shape[1], k[0], s[0], p[0], d[0])
        fw = _floor_len(shape[2], k[1], s[1], p[1], d[1])
        if (fh, fw) != (oh, ow):
            info.notes.append(f"ceil_mode gives {oh}x{ow} where floor would give {fh}x{fw}")


def linear_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    if len(shape) != 1:
        raise ctx.error(f"receives a [C, H, W] input {_shape_str(shape)} from {ctx.source}; "
                        f"add {{type: flatten}} before it")
    n = shape[0]
    out_f = _count(spec, "out_features", ctx)
    _inferred(spec, "in_features", n, "features", ctx)
    bias = bool(spec.get("bias", True))
    info.arch.update(in_features=n, out_features=out_f, bias=bias)
    info.output_shape = [out_f]
    info.params = n * out_f + (out_f if bias else 0)
    info.macs = n * out_f
    info.receptive_field = info.jump = None


def flatten_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    info.output_shape = [_prod(shape)]
    info.receptive_field = info.jump = None


def batchnorm1d_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    if len(shape) != 1:
        raise ctx.error(f"receives a [C, H, W] input {_shape_str(shape)} from {ctx.source}; "
                        f"use {{type: batchnorm2d}} on images, or put batchnorm1d after the flatten")
    _batchnorm(spec, shape, ctx, info, "features")


def batchnorm2d_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    if len(shape) != 3:
        raise ctx.error(f"needs a [C, H, W] input but receives {shape[0]} flat features from {ctx.source}; "
                        f"use {{type: batchnorm1d}} on flat features")
    _batchnorm(spec, shape, ctx, info, "channels")


def _batchnorm(spec, shape, ctx: _Ctx, info: LayerInfo, what: str) -> None:
    n = shape[0]
    given = spec.get("num_features")
    if given is not None and given != n:
        raise ctx.error(f"expects num_features={given} but receives {n} {what} from {ctx.source}; "
                        f"set num_features to {n} or remove it")
    eps = spec.get("eps")
    momentum = spec.get("momentum")
    info.arch.update(num_features=n, eps=1e-5 if eps is None else eps, momentum=0.1 if momentum is None else momentum)
    info.params = 2 * n


def dropout_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    p = spec.get("p")
    info.arch["p"] = 0.5 if p is None else p


def elementwise_shape(spec, shape, ctx: _Ctx, info: LayerInfo) -> None:
    """ReLU, Tanh, Sigmoid: shape, receptive field and jump pass through."""


def resolve(input_shape: Sequence[int], layers: Sequence[Mapping[str, Any]]) -> list[LayerInfo]:
    """Infer every layer's shapes, parameters and receptive field, or raise ShapeError.

    `layers` are the config's layer specs as plain dicts (`[l.model_dump() for l in
    cfg.model.layers]`): lower-case `type`, pool `stride` None meaning the kernel size, optional
    in_features/in_channels/num_features that must match when given. Builds no arrays.
    """
    shape = _check_input_shape(input_shape)
    rf = [1, 1] if len(shape) == 3 else None
    jump = [1, 1] if len(shape) == 3 else None
    infos: list[LayerInfo] = []
    for index, spec in enumerate(layers):
        if not isinstance(spec, Mapping):
            raise ShapeError(f"layer {index}: expected a mapping with a 'type', got {spec!r}")
        kind = R.layer_type(spec.get("type", ""))
        if kind is None:
            raise ShapeError(f"layer {index}: unknown layer type {spec.get('type')!r}; allowed: {', '.join(R.LAYER_NAMES)}")
        if index == 0:
            source = f"the input {_shape_str(shape)}"
        else:
            prev = infos[-1]
            source = f"layer {prev.index} ({prev.type})"
        ctx = _Ctx(f"layer {index} ({kind.torch})", source)
        info = _layer(index, spec, shape, rf, jump, ctx)
        infos.append(info)
        shape, rf, jump = info.output_shape, info.receptive_field, info.jump
    return infos


def resolve_layer(input_shape: Sequence[int], spec: Mapping[str, Any]) -> LayerInfo:
    """One layer on its own (for `convshape` without a config): errors name the layer type only."""
    shape = _check_input_shape(input_shape)
    kind = R.layer_type(spec.get("type", ""))
    if kind is None:
        raise ShapeError(f"unknown layer type {spec.get('type')!r}; allowed: {', '.join(R.LAYER_NAMES)}")
    rf = [1, 1] if len(shape) == 3 else None
    ctx = _Ctx(kind.torch, f"the input {_shape_str(shape)}")
    return _layer(0, spec, shape, rf, rf and list(rf), ctx)


# ----------------------------------------------------------------------------- results
def architecture(infos: Sequence[LayerInfo]) -> list[dict]:
    """The architecture in PyTorch's vocabulary: `nn.Sequential(*[getattr(nn, d.pop("type"))(**d) ...])`."""
    return [copy.deepcopy(info.arch) for info in infos]


def total_params(infos: Sequence[LayerInfo]) -> int:
    return sum(info.params for info in infos)


def total_macs(infos: Sequence[LayerInfo]) -> int:
    """Multiply-adds per image of all conv and linear weights."""
    return sum(info.macs for info in infos)


def param_bytes(infos: Sequence[LayerInfo], bytes_per_value: int = BYTES_PER_FLOAT32) -> int:
    """Memory of the parameters (float32 by default); BatchNorm's running statistics not included."""
    return total_params(infos) * bytes_per_value


def activation_bytes(input_shape: Sequence[int], infos: Sequence[LayerInfo], batch_size: int,
                     bytes_per_value: int = BYTES_PER_FLOAT32) -> int:
    """Memory of one batch's forward activations: the input plus every layer's output (float32).

    An upper bound for inference (which could free outputs as it goes) and roughly what the
    backward pass keeps; gradients of the activations come on top during training.
    """
    values = _prod(input_shape) + sum(_prod(info.output_shape) for info in infos)
    return values * batch_size * bytes_per_value


def training_bytes(input_shape: Sequence[int], infos: Sequence[LayerInfo], batch_size: int, *,
                   eval_batch_size: int = 0, state_copies: int = 2, bytes_per_value: int = BYTES_PER_FLOAT32) -> int:
    """A lower bound of the memory training takes: the parameters `state_copies` times (weights,
    gradients, the optimizer's buffers) and a training batch's activations twice (the outputs the
    backward pass keeps, and their gradients), or an evaluation batch's once if that is more.
    Temporary buffers (im2col, the DFT) come on top."""
    activations = max(2 * activation_bytes(input_shape, infos, batch_size, bytes_per_value),
                      activation_bytes(input_shape, infos, eval_batch_size, bytes_per_value))
    return total_params(infos) * state_copies * bytes_per_value + activations
