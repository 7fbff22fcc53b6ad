"""`mlp-cli convshape`: the practical's size arithmetic, for one layer and for a whole network.

Formatting only: every function returns a dict or a string; nothing is printed or read here.
The arithmetic is `mlp_cli.shapes` (pure Python), so this module never pulls numpy or torch.
"""

from __future__ import annotations

import csv
import io
import json
import re
from fractions import Fraction
from typing import Sequence

from mlp_cli import registry as R
from mlp_cli import shapes
from mlp_cli.errors import ShapeError

_SEP = re.compile(r"\s*[x×*,]\s*", re.IGNORECASE)


# ----------------------------------------------------------------------------- parsing
def parse_input(text: str) -> tuple[int, int, int]:
    """'28x28x1' -> (28, 28, 1) as (H, W, C); '28x28' means one channel. Raises ValueError."""
    parts = _SEP.split(str(text).strip())
    if len(parts) == 2:
        parts.append("1")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or any(int(p) < 1 for p in parts):
        raise ValueError(f"--input {text!r}: expected HxWxC with positive integers, e.g. 28x28x1 or 32x32x3 (HxW means one channel)")
    h, w, c = (int(p) for p in parts)
    return h, w, c


def parse_size(text: str, option: str, low: int) -> tuple[int, int]:
    """'5' -> (5, 5); '3x5' -> (3, 5) as (h, w). Raises ValueError."""
    parts = _SEP.split(str(text).strip())
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or any(int(p) < low for p in parts):
        raise ValueError(f"{option} {text!r}: expected an integer >= {low} or HxW (e.g. 3 or 3x5)")
    return int(parts[0]), int(parts[1])


# ----------------------------------------------------------------------------- numbers
def _n(value: int) -> str:
    return f"{value:,}"


def _pair_str(pair: Sequence[int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _compact_str(pair: Sequence[int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else _pair_str(pair)


def _decimal(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.2f} MiB"


def floor_formula(x: int, k: int, s: int, p: int, d: int) -> str:
    num = x + 2 * p - d * (k - 1) - 1
    out = num // s + 1
    return (f"floor((x + 2p - d(k-1) - 1)/s) + 1 = floor(({x} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1"
            f" = floor({num}/{s}) + 1 = {out}")


def ceil_formula(x: int, k: int, s: int, p: int, d: int) -> str:
    num = x + 2 * p - d * (k - 1) - 1
    raw = -(-num // s) + 1
    text = (f"ceil((x + 2p - d(k-1) - 1)/s) + 1 = ceil(({x} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1"
            f" = ceil({num}/{s}) + 1 = {raw}")
    if (raw - 1) * s >= x + p:
        text += (f"; the last window would start at (out-1)*s = {(raw - 1) * s} >= x + p = {x + p}, inside the"
                 f" right padding, so PyTorch drops it: {raw - 1}")
    return text


def practical_formula(x: int, k: int, s: int, p: int, d: int) -> str:
    span = shapes.effective_kernel(k, d)
    value = Fraction(2 * p + x - span, s) + 1
    out = shapes.practical_output_size(x, k, s, p, d)
    kk = f"{span} (the dilated kernel d(k-1)+1)" if d != 1 else str(span)
    return f"ceil((2p + x - k)/s + 1) = ceil((2*{p} + {x} - {kk})/{s} + 1) = ceil({_decimal(value)}) = {out}"


# ----------------------------------------------------------------------------- one layer
def layer_report(height: int, width: int, channels: int, kernel: Sequence[int], stride: Sequence[int] | None = None,
                 padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1), filters: int | None = None,
                 ceil_mode: bool = False, pool: str | None = None) -> dict:
    """Everything about one conv or pooling layer on an HxWxC input. Raises ShapeError.

    `pool` is None (nn.Conv2d), "max" or "avg". Stride None means 1 for conv and the kernel size
    for pooling (PyTorch's defaults). ceil_mode is a pooling option: on a conv layer it is a
    ShapeError, since no nn.Conv2d gives the size it would headline.
    """
    kernel, padding, dilation = tuple(kernel), tuple(padding), tuple(dilation)
    stride = tuple(stride) if stride is not None else (kernel if pool else (1, 1))
    if ceil_mode and not pool:
        raise ShapeError("--ceil-mode is an option of pooling layers: nn.Conv2d has no ceil_mode and always rounds "
                         "the output size down; add --pool max (or avg) for a pooling layer, or drop --ceil-mode")
    notes: list[str] = []
    if pool:
        kind = {"max": R.MAXPOOL2D, "avg": R.AVGPOOL2D}[pool]
        if filters is not None and filters != channels:
            notes.append(f"--filters {filters} ignored: a pooling layer keeps the input's {channels} channels")
        spec = {"type": kind.name, "kernel_size": list(kernel), "stride": list(stride), "padding": list(padding),
                "ceil_mode": ceil_mode}
        if kind is R.MAXPOOL2D:
            spec["dilation"] = list(dilation)
        elif dilation != (1, 1):
            raise ShapeError("AvgPool2d has no dilation; remove --dilation or use --pool max")
    else:
        kind = R.CONV2D
        spec = {"type": kind.name, "out_channels": filters or 1, "kernel_size": list(kernel), "stride": list(stride),
                "padding": list(padding), "dilation": list(dilation)}
    info = shapes.resolve_layer([channels, height, width], spec)

    out_c, oh, ow = info.output_shape
    floor_hw = (shapes.floor_output_size(height, kernel[0], stride[0], padding[0], dilation[0]),
                shapes.floor_output_size(width, kernel[1], stride[1], padding[1], dilation[1]))
    practical = (shapes.practical_output_size(height, kernel[0], stride[0], padding[0], dilation[0]),
                 shapes.practical_output_size(width, kernel[1], stride[1], padding[1], dilation[1]))

    rule = ceil_formula if ceil_mode else floor_formula
    formula = {"height": rule(height, kernel[0], stride[0], padding[0], dilation[0]),
               "width": rule(width, kernel[1], stride[1], padding[1], dilation[1])}
    if pool:
        weights, biases = 0, 0
    else:
        weights = kernel[0] * kernel[1] * channels * out_c
        biases = out_c
    macs = oh * ow * out_c * kernel[0] * kernel[1] * channels if not pool else 0
    fc_weights = height * width * channels * oh * ow * out_c
    fc_biases = oh * ow * out_c
    arch = dict(info.arch)
    report = {
        "layer": kind.torch,
        "arch": arch,
        "input_height": height, "input_width": width, "input_channels": channels,
        "kernel": list(kernel), "stride": list(stride), "padding": list(padding), "dilation": list(dilation),
        "ceil_mode": ceil_mode,
        "output_height": oh, "output_width": ow, "output_channels": out_c,
        "weights": weights, "biases": biases, "params": weights + biases,
        "fc_weights": fc_weights, "fc_biases": fc_biases, "fc_params": fc_weights + fc_biases,
        "macs": macs, "fc_macs": fc_weights,
        "floor_height": floor_hw[0], "floor_width": floor_hw[1],
        "practical_ceil_height": practical[0], "practical_ceil_width": practical[1],
        "receptive_field": list(info.receptive_field), "jump": list(info.jump),
        "formula": formula,
        "practical_formula": {"height": practical_formula(height, kernel[0], stride[0], padding[0], dilation[0]),
                              "width": practical_formula(width, kernel[1], stride[1], padding[1], dilation[1])},
        "notes": notes + info.notes,
    }
    return report


def layer_text(r: dict) -> str:
    """The explanation of one layer: the formula with the numbers put in, weights, the FC equivalent."""
    h, w, c = r["input_height"], r["input_width"], r["input_channels"]
    oh, ow, oc = r["output_height"], r["output_width"], r["output_channels"]
    pool = r["layer"] != R.CONV2D.torch
    args = ", ".join(f"{k}={v}" for k, v in r["arch"].items() if k != "type")
    lines = [f"{r['layer']}({args})", f"input  {h}x{w}x{c} (H x W x C)", ""]

    rule = "PyTorch, ceil_mode=True" if r["ceil_mode"] else "PyTorch"
    lines.append(f"Output size ({rule}):")
    same = (h, r["kernel"][0], r["stride"][0], r["padding"][0], r["dilation"][0]) == \
           (w, r["kernel"][1], r["stride"][1], r["padding"][1], r["dilation"][1])
    wrap = lambda text: text.replace("; ", ";\n         ")  # noqa: E731  (the ceil_mode drop on its own line)
    if same:
        lines.append(f"  H = W: {wrap(r['formula']['height'])}")
    else:
        lines.append(f"  H: {wrap(r['formula']['height'])}")
        lines.append(f"  W: {wrap(r['formula']['width'])}")
    lines.append(f"output {oh}x{ow}x{oc} (H x W x C)")
    lines.append("")

    practical = (r["practical_ceil_height"], r["practical_ceil_width"])
    if practical != (oh, ow):
        lines.append(f"The practical's formula (ceil) gives {_pair_str(practical)}, not {_pair_str((oh, ow))}:")
        if same:
            lines.append(f"  H = W: {r['practical_formula']['height']}")
        else:
            lines.append(f"  H: {r['practical_formula']['height']}")
            lines.append(f"  W: {r['practical_formula']['width']}")
        if r["ceil_mode"]:
            lines.append("  The practical's ceil keeps a last window that starts in the right padding; PyTorch's ceil_mode")
            lines.append("  drops it.")
        elif pool:
            lines.append("  It rounds up whenever s does not divide x + 2p - k, counting a last window that does not")
            lines.append("  fit in the padded input. PyTorch floors unless ceil_mode=True (--ceil-mode), which rounds")
            lines.append("  up but drops a last window that would start in the right padding.")
        else:
            lines.append("  It rounds up whenever s does not divide x + 2p - k, counting a last window that does not")
            lines.append("  fit in the padded input. PyTorch floors (nn.Conv2d has no ceil_mode); rounding up is")
            lines.append("  pooling's ceil_mode=True rule, which also drops a last window starting in the padding.")
    else:
        lines.append(f"The practical's formula ceil((2p + x - k)/s + 1) agrees: {_pair_str(practical)}.")
    lines.append("")

    k = r["kernel"]
    if pool:
        lines.append(f"Weights:       none (pooling keeps the input's {c} channel{'s' if c != 1 else ''})")
        lines.append("Parameters:    0")
    else:
        lines.append(f"Weights:       k*k*z*F = {k[0]}*{k[1]}*{c}*{oc} = {_n(r['weights'])}")
        lines.append(f"Biases:        F = {_n(r['biases'])}")
        lines.append(f"Parameters:    {_n(r['params'])}")
        lines.append(f"Multiply-adds: x'*y'*F*k*k*z = {oh}*{ow}*{oc}*{k[0]}*{k[1]}*{c} = {_n(r['macs'])} per image")
    lines.append(f"Receptive field {_compact_str(r['receptive_field'])}, jump {_compact_str(r['jump'])} (input pixels)")
    lines.append("")
    lines.append(f"A fully connected layer with the same {oh}x{ow}x{oc} output:")
    lines.append(f"  weights x*y*z*x'*y'*F = {h}*{w}*{c}*{oh}*{ow}*{oc} = {_n(r['fc_weights'])}")
    lines.append(f"  biases  x'*y'*F = {oh}*{ow}*{oc} = {_n(r['fc_biases'])}")
    ratio = f" ({r['fc_params'] / r['params']:,.0f}x the conv layer's)" if r["params"] else ""
    lines.append(f"  parameters {_n(r['fc_params'])}{ratio}, multiply-adds {_n(r['fc_macs'])} per image")
    if r["notes"]:
        lines.append("")
        lines.extend(f"Note: {note}" for note in r["notes"])
    return "\n".join(lines)


_LAYER_CSV = ("layer", "input_height", "input_width", "input_channels", "output_height", "output_width",
              "output_channels", "weights", "biases", "params", "fc_weights", "fc_biases", "fc_params", "macs",
              "practical_ceil_height", "practical_ceil_width")


def layer_csv(r: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_LAYER_CSV)
    writer.writerow([r[k] for k in _LAYER_CSV])
    return buf.getvalue().rstrip("\n")


# ----------------------------------------------------------------------------- network
def network_report(input_shape: Sequence[int], infos: Sequence[shapes.LayerInfo], batch_size: int,
                   source: str | None = None, dataset: str | None = None) -> dict:
    """The JSON document of `convshape --config`: layers, totals and memory."""
    act = shapes.activation_bytes(input_shape, infos, batch_size)
    par = shapes.param_bytes(infos)
    return {
        "config": source,
        "dataset": dataset,
        "input_shape": list(input_shape),
        "batch_size": batch_size,
        "layers": [
            {"name": i.name, "type": i.type, "input_shape": i.input_shape, "output_shape": i.output_shape,
             "params": i.params, "macs": i.macs, "receptive_field": i.receptive_field, "jump": i.jump,
             "arch": i.arch, "notes": i.notes}
            for i in infos
        ],
        "total_params": shapes.total_params(infos),
        "total_macs": shapes.total_macs(infos),
        "param_bytes": par,
        "activation_bytes": act,
        "total_bytes": par + act,
        "output_shape": list(infos[-1].output_shape) if infos else list(input_shape),
    }


def _shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def network_table(r: dict) -> str:
    """A torchinfo-style table: layer, output shape, parameters, multiply-adds, receptive field, jump."""
    head = ("Layer (type: name)", "Output shape", "Param #", "Mult-adds", "RF", "Jump")
    rows = [("Input", _shape(r["input_shape"]), "--", "--",
             "1" if len(r["input_shape"]) == 3 else "--", "1" if len(r["input_shape"]) == 3 else "--")]
    for layer in r["layers"]:
        rf, jump = layer["receptive_field"], layer["jump"]
        rows.append((f"{layer['type']}: {layer['name']}", _shape(layer["output_shape"]),
                     _n(layer["params"]) if layer["params"] else "--",
                     _n(layer["macs"]) if layer["macs"] else "--",
                     _compact_str(rf) if rf else "--", _compact_str(jump) if jump else "--"))
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    right = (False, False, True, True, True, True)

    def line(row):
        cells = [cell.rjust(wd) if r_ else cell.ljust(wd) for cell, wd, r_ in zip(row, widths, right)]
        return "   ".join(cells).rstrip()

    rule = "=" * len(line(head))
    out = []
    title = r.get("config") or "network"
    where = f" ({r['dataset']})" if r.get("dataset") else ""
    out.append(f"{title}: input {_shape(r['input_shape'])}{where}, batch {r['batch_size']}")
    out += [rule, line(head), rule]
    out += [line(row) for row in rows]
    out.append(rule)
    out.append(f"Total params: {_n(r['total_params'])}")
    out.append(f"Mult-adds per image: {_n(r['total_macs'])} (conv and linear weights)")
    out.append(rule)
    out.append(f"Params size (float32): {_mib(r['param_bytes'])}")
    out.append(f"Activations, one batch of {r['batch_size']} (float32, forward): {_mib(r['activation_bytes'])}")
    out.append(f"Estimated total: {_mib(r['total_bytes'])}")
    out.append(rule)
    notes = [f"{layer['type']}: {layer['name']}: {note}" for layer in r["layers"] for note in layer["notes"]]
    if notes:
        out.extend(f"Note: {note}" for note in notes)
    return "\n".join(out)


_NET_CSV = ("name", "type", "output_shape", "params", "macs", "receptive_field", "jump")


def network_csv(r: dict) -> str:
    """One row per layer; shapes as C x H x W (or the feature count), receptive field and jump as h x w."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_NET_CSV)
    for layer in r["layers"]:
        rf, jump = layer["receptive_field"], layer["jump"]
        writer.writerow([layer["name"], layer["type"], "x".join(str(s) for s in layer["output_shape"]),
                         layer["params"], layer["macs"], _pair_str(rf) if rf else "", _pair_str(jump) if jump else ""])
    return buf.getvalue().rstrip("\n")


def to_json(value, _level: int = 0) -> str:
    """Indented JSON that keeps shapes, pairs and small flat objects (arch dicts) on one line."""
    pad = "  " * _level
    flat = json.dumps(value)
    is_leaf = lambda v: not isinstance(v, (dict, list)) or (  # noqa: E731
        isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v))
    if isinstance(value, list) and all(is_leaf(v) for v in value) and len(flat) <= 100:
        return flat
    if isinstance(value, dict) and _level > 0 and all(is_leaf(v) for v in value.values()) and len(flat) <= 160:
        return flat
    if isinstance(value, dict) and value:
        items = [f"{pad}  {json.dumps(k)}: {to_json(v, _level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value:
        items = [f"{pad}  {to_json(v, _level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return flat
