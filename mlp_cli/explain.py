"""`mlp-cli explain`: the practical's derivation, written out for a config's network and checked.

For every layer in order: the forward equation with the shapes of the config filled in (and for
conv and pooling layers the output-size formula with its numbers), then the backward equations
(the gradient of the mean loss with respect to the layer's input and to each of its parameters),
and at the end the softmax cross-entropy loss. Every backward equation is checked numerically:
the reference engine's pair (mlp_cli/nn/reference.py) runs in float64 on a small random batch with
a random upstream gradient G, and the gradient it returns is compared with central differences of
sum(out * G) at up to SAMPLES entries per tensor, with gradcheck's relative error (the largest
difference relative to the tensor's scale) and its threshold 1e-6. An equation that holds for a
random G holds for the gradient the next layer sends back, so the expanded forms (the practical's
grad W_y = (y^ - y) h^T / N, ...) carry the check of the layer's equation.

For the practical's MNIST MLP (flatten, linear, tanh, linear) the symbols are the practical's own
(x, h~, h, y~, y^, W_h, b_h, W_y, b_y); other nets are numbered: a^(k) is layer k's output (k from
1), x = a^(0) the input, W^(k), b^(k), gamma^(k), beta^(k) layer k's parameters.

The result is `{"layers": [{"name", "type", "input_shape", "output_shape", "params",
"equations": [{"name", "latex", "text", "rel_error"}]}]}`, rel_error None for an equation that is
not a gradient. Plain NumPy: no torch, nothing read or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mlp_cli import shapes
from mlp_cli.gradcheck import SCALE_FLOOR, central_difference
from mlp_cli.nn import reference as ref
from mlp_cli.registry import AVGPOOL2D, BATCHNORM1D, BATCHNORM2D, CONV2D, DROPOUT, FLATTEN, LINEAR, MAXPOOL2D, RELU, SIGMOID, TANH

THRESHOLD = 1e-6  # gradcheck's default threshold
SAMPLES = 12  # entries checked per tensor (gradcheck's default), besides one direction over all
STEP = 1e-6  # central differences' h, as gradcheck
BN1D_BATCH = 4  # the fewest examples a BatchNorm1d check runs on (see explain())


# ----------------------------------------------------------------------------- symbols
@dataclass(frozen=True)
class Sym:
    """A symbol in both spellings: Unicode for the terminal, LaTeX for markdown."""

    text: str
    latex: str

    @property
    def n(self) -> "Sym":
        """The symbol for example n of the batch."""
        return Sym(self.text + "ₙ", self.latex + "_n")

    @property
    def grad(self) -> "Sym":
        """dl/d(symbol)."""
        return Sym(f"∂l/∂{self.text}", rf"\frac{{\partial l}}{{\partial {self.latex}}}")

    def at(self, text_idx: str, latex_idx: str | None = None) -> "Sym":
        """An entry: a[n,f,i,j]."""
        return Sym(f"{self.text}[{text_idx}]", f"{self.latex}_{{{latex_idx or text_idx}}}")


_SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _numbered(base_text: str, base_latex: str, k: int) -> Sym:
    return Sym(f"{base_text}⁽{str(k).translate(_SUP)}⁾", f"{base_latex}^{{({k})}}")


PRACTICAL = {  # the practical's names: outputs of flatten, linear, tanh, linear; their parameters
    "outputs": [Sym("x", "x"), Sym("h̃", r"\tilde{h}"), Sym("h", "h"), Sym("ỹ", r"\tilde{y}")],
    "params": [{}, {"W": Sym("W_h", "W_h"), "b": Sym("b_h", "b_h")}, {},
               {"W": Sym("W_y", "W_y"), "b": Sym("b_y", "b_y")}],
}
PARAM_NAMES = {"W": ("W", "W"), "b": ("b", "b"), "gamma": ("γ", r"\gamma"), "beta": ("β", r"\beta")}


def is_practical(infos) -> bool:
    """The practical's MLP: (flatten,) linear, tanh, linear."""
    types = [i.type for i in infos]
    return types in ([FLATTEN.torch, LINEAR.torch, TANH.torch, LINEAR.torch], [LINEAR.torch, TANH.torch, LINEAR.torch])


def notation(infos) -> tuple[list[Sym], list[Sym], list[dict[str, Sym]]]:
    """Each layer's input symbol, output symbol and parameter symbols."""
    if is_practical(infos):
        skip = 4 - len(infos)
        outs = PRACTICAL["outputs"][skip:]
        params = PRACTICAL["params"][skip:]
        first = Sym("X", "X") if skip == 0 else Sym("x", "x")  # the image before the flatten
        return [first, *outs[:-1]], outs, params
    outs = [_numbered("a", "a", k + 1) for k in range(len(infos))]
    params = [{key: _numbered(t, l, k + 1) for key, (t, l) in PARAM_NAMES.items()} for k in range(len(infos))]
    return [Sym("x", "x"), *outs[:-1]], outs, params


# ----------------------------------------------------------------------------- equations
def _eq(name: str, text: str, latex: str, check: str | None = None) -> dict:
    """An equation; `check` names the tensor whose gradient it states (filled in as rel_error)."""
    return {"name": name, "latex": latex, "text": text, "rel_error": None, "_check": check}


def _base(latex: str) -> str:
    """A LaTeX symbol ready for another superscript: W^{(3)} -> {W^{(3)}} (a double exponent is an error)."""
    return f"{{{latex}}}" if "^" in latex else latex


def _dims(shape) -> tuple[str, str]:
    text = "×".join(str(s) for s in shape)
    return text, r" \times ".join(str(s) for s in shape)


def _where(pairs) -> tuple[str, str]:
    """'W_h: 100×784, x: 784' and its LaTeX 'W_h \\in R^{100 x 784}, ...'."""
    text = ", ".join(f"{s.text}: {_dims(shape)[0]}" for s, shape in pairs)
    latex = r",\quad ".join(rf"{s.latex} \in \mathbb{{R}}^{{{_dims(shape)[1]}}}" for s, shape in pairs)
    return text, latex


def _linear(info, x: Sym, a: Sym, p, ctx) -> list[dict]:
    W, b = p["W"], p["b"]
    M, D = info.arch["out_features"], info.arch["in_features"]
    bias = info.arch["bias"]
    wt, wl = _where([(W, [M, D]), (x, [D])] + ([(b, [M])] if bias else []) + [(a, [M])])
    plus_t, plus_l = (f" + {b.text}", f" + {b.latex}") if bias else ("", "")
    eqs = [_eq("forward", f"{a.text} = {W.text} {x.text}{plus_t}     ({wt}; one example, N = {ctx['N']} in the batch)",
               rf"{a.latex} = {W.latex} {x.latex}{plus_l}, \qquad {wl}")]
    up_t, up_l = a.n.grad.text, a.n.grad.latex
    if ctx["last"]:  # the layer right before the loss: dl/dy~_n = (y^_n - y_n)/N
        up_t, up_l = "(ŷₙ − yₙ)/N", r"\frac{1}{N}(\hat{y}_n - y_n)"
    eqs.append(_eq(f"gradient of {W.text}", f"{W.grad.text} = Σₙ {up_t} {x.n.text}ᵀ     ({M}×{D})",
                   rf"{W.grad.latex} = \sum_n {up_l}\, {_base(x.n.latex)}^\top \in \mathbb{{R}}^{{{M} \times {D}}}", "W"))
    if bias:
        eqs.append(_eq(f"gradient of {b.text}", f"{b.grad.text} = Σₙ {up_t}     ({M})",
                       rf"{b.grad.latex} = \sum_n {up_l}", "b"))
    eqs.append(_eq(f"gradient of {x.text}", f"{x.n.grad.text} = {W.text}ᵀ {up_t}     ({D})",
                   rf"{x.n.grad.latex} = {_base(W.latex)}^\top {up_l}", "x"))
    return eqs


ACTIVATIONS = {  # forward (text, latex), derivative (text, latex) in terms of the input u
    TANH.torch: (("tanh({u})", r"\tanh({u})"), ("(1 − tanh²({u}))", r"(1 - \tanh^2({u}))")),
    RELU.torch: (("max({u}, 0)", r"\max({u}, 0)"), ("1[{u} > 0]", r"\mathbb{{1}}[{u} > 0]")),
    SIGMOID.torch: (("σ({u}) = 1/(1 + e^(−{u}))", r"\sigma({u}) = \frac{{1}}{{1 + e^{{-{u}}}}}"),
                ("σ({u})(1 − σ({u}))", r"\sigma({u})(1 - \sigma({u}))")),
}


def _activation(info, x: Sym, a: Sym, p, ctx) -> list[dict]:
    (ft, fl), (dt, dl) = ACTIVATIONS[info.type]
    dims = _dims(info.input_shape)
    eqs = [_eq("forward", f"{a.text} = {ft.format(u=x.text)}     (element-wise, {dims[0]})",
               rf"{a.latex} = {fl.format(u=x.latex)}, \qquad {a.latex} \in \mathbb{{R}}^{{{dims[1]}}}"),
           _eq(f"gradient of {x.text}", f"{x.grad.text} = {dt.format(u=x.text)} ⊙ {a.grad.text}",
               rf"{x.grad.latex} = {dl.format(u=x.latex)} \odot {a.grad.latex}", "x")]
    if ctx.get("practical") and info.type == TANH.torch:  # the practical's chained form, through W_y to the loss
        eqs.append(_eq(f"gradient of {x.text}, to the loss", f"{x.n.grad.text} = (1 − tanh²({x.n.text})) ⊙ W_yᵀ (ŷₙ − yₙ)/N",
                       rf"{x.n.grad.latex} = (1 - \tanh^2({x.n.latex})) \odot W_y^\top \frac{{1}}{{N}}(\hat{{y}}_n - y_n)", "x"))
    return eqs


def _flatten(info, x: Sym, a: Sym, p, ctx) -> list[dict]:
    it, il = _dims(info.input_shape)
    return [_eq("forward", f"{a.text} = vec({x.text})     ({it} → {info.output_shape[0]}, in (C, H, W) order)",
                rf"{a.latex} = \mathrm{{vec}}({x.latex}), \qquad {il} \to {info.output_shape[0]}"),
            _eq(f"gradient of {x.text}", f"{x.grad.text} = reshape({a.grad.text}, {it})",
                rf"{x.grad.latex} = \mathrm{{reshape}}\left({a.grad.latex}, {il}\right)", "x")]


def _size_eqs(info) -> list[dict]:
    """The output-size formula per axis with the numbers in, and the practical's where it differs."""
    from mlp_cli import convshape as cs  # its formulas, so that explain says what convshape says

    k, s, p = (shapes._pair(info.arch[key], key) for key in ("kernel_size", "stride", "padding"))
    d = shapes._pair(info.arch.get("dilation", 1), "dilation")
    ceil = info.arch.get("ceil_mode", False)
    eqs = []
    for axis, i, x in (("H", 0, info.input_shape[1]), ("W", 1, info.input_shape[2])):
        args = (x, k[i], s[i], p[i], d[i])
        out = info.output_shape[1 + i]
        text = (cs.ceil_formula if ceil else cs.floor_formula)(*args)
        lb, rb = (r"\left\lceil", r"\right\rceil") if ceil else (r"\left\lfloor", r"\right\rfloor")
        latex = (rf"{axis}_{{out}} = {lb} \frac{{{x} + 2 \cdot {p[i]} - {d[i]}({k[i]} - 1) - 1}}{{{s[i]}}} {rb} + 1"
                 + (rf" - 1 = {out}" if ceil and (out != (x + 2 * p[i] - d[i] * (k[i] - 1) - 1 + s[i] - 1) // s[i] + 1)
                    else f" = {out}"))
        eqs.append(_eq(f"output {axis}", f"{axis}_out = {text}", latex))
        practical = shapes.practical_output_size(*args)
        if practical != out:
            span = shapes.effective_kernel(k[i], d[i])
            eqs.append(_eq(f"output {axis}, the practical's formula",
                           f"{axis}_out = {cs.practical_formula(*args)} (not PyTorch's {out})",
                           rf"\left\lceil \frac{{2 \cdot {p[i]} + {x} - {span}}}{{{s[i]}}} + 1 \right\rceil = {practical}"
                           rf" \neq {out} \text{{ (PyTorch)}}"))
        if (k[i], s[i], p[i], d[i], x) == (k[1 - i], s[1 - i], p[1 - i], d[1 - i], info.input_shape[2 - i]):
            for eq in eqs:  # one axis stands for both
                eq["name"] = eq["name"].replace("output H", "output H = W")
            break
    return eqs


def _k(k: int, var: str) -> str:
    """k times an index: '2i', or 'i' for 1."""
    return var if k == 1 else f"{k}{var}"


def _div(expr: str, s: int) -> str:
    return expr if s == 1 else f"({expr})/{s}"


def _conv(info, x: Sym, a: Sym, p, ctx) -> list[dict]:
    W, b = p["W"], p["b"]
    C, H, Wd = info.input_shape
    F, Ho, Wo = info.output_shape
    (kh, kw), (sh, sw) = (shapes._pair(info.arch[key], key) for key in ("kernel_size", "stride"))
    (ph, pw), (dh, dw) = (shapes._pair(info.arch[key], key) for key in ("padding", "dilation"))
    bias = info.arch["bias"]
    wt, wl = _where([(W, [F, C, kh, kw]), (x, [C, H, Wd])] + ([(b, [F])] if bias else []) + [(a, [F, Ho, Wo])])
    row_t, col_t = f"{_k(sh, 'i')} + {_k(dh, 'u')}", f"{_k(sw, 'j')} + {_k(dw, 'v')}"
    back_y, back_z = _div(f"y − {_k(dh, 'u')}", sh), _div(f"z − {_k(dw, 'v')}", sw)
    xp = Sym(f"{x.text}ᵖ", rf"{_base(x.latex)}^{{\mathrm{{pad}}}}")
    bt, bl = (f"{b.text}[f] + ", f"{b.latex}_f + ") if bias else ("", "")
    eqs = [_eq("forward", f"{a.text}[f,i,j] = {bt}Σ_c,u,v {W.text}[f,c,u,v] {xp.text}[c, {row_t}, {col_t}]     "
                          f"({xp.text}: {x.text} zero-padded by {ph}×{pw}; {wt})",
               rf"{a.latex}_{{f,i,j}} = {bl}\sum_{{c,u,v}} {W.latex}_{{f,c,u,v}}\, {xp.latex}_{{c,\,{row_t},\,{col_t}}},"
               rf" \qquad {wl}")]
    eqs += _size_eqs(info)
    g = a.grad
    eqs.append(_eq(f"gradient of {W.text}", f"{W.grad.text}[f,c,u,v] = Σ_n,i,j {g.text}[n,f,i,j] {xp.text}[n,c, {row_t}, {col_t}]"
                   f"     (the correlation of the input with {g.text}; {F}×{C}×{kh}×{kw})",
                   rf"{W.grad.latex}_{{f,c,u,v}} = \sum_{{n,i,j}} {g.latex}_{{n,f,i,j}}\, {xp.latex}_{{n,c,\,{row_t},\,{col_t}}}", "W"))
    if bias:
        eqs.append(_eq(f"gradient of {b.text}", f"{b.grad.text}[f] = Σ_n,i,j {g.text}[n,f,i,j]",
                       rf"{b.grad.latex}_f = \sum_{{n,i,j}} {g.latex}_{{n,f,i,j}}", "b"))
    eqs.append(_eq(f"gradient of {x.text}",
                   f"{xp.grad.text}[n,c,y,z] = Σ_f,u,v {W.text}[f,c,u,v] {g.text}[n,f,{back_y},{back_z}]"
                   f" over the integer positions inside {Ho}×{Wo}; {x.grad.text} = {xp.grad.text} without the padding",
                   rf"\frac{{\partial l}}{{\partial {xp.latex}_{{n,c,y,z}}}} = \sum_{{f,u,v}} {W.latex}_{{f,c,u,v}}\,"
                   rf" {g.latex}_{{n,f,\,{back_y.replace('−', '-')},\,{back_z.replace('−', '-')}}}", "x"))
    eqs.append(_eq(f"gradient of {x.text} as a convolution",
                   f"{x.grad.text} = crop_{ph}×{pw}( dilate_{sh}×{sw}({g.text}) ∗full rot180({W.text}) ), the full convolution of"
                   f" {g.text} (stride-dilated: {sh - 1}×{sw - 1} zeros between entries) with the kernel flipped in both"
                   f" directions (dilated by {dh}×{dw}), summed over f, without the padding {ph}×{pw}",
                   rf"{x.grad.latex} = \mathrm{{crop}}_{{{ph},{pw}}}\left(\mathrm{{dilate}}_{{{sh},{sw}}}\left({g.latex}\right)"
                   rf" \ast_{{\mathrm{{full}}}} \mathrm{{rot180}}({W.latex})\right)", "x"))
    return eqs


def _pool(info, x: Sym, a: Sym, p, ctx) -> list[dict]:
    (kh, kw), (sh, sw), (ph, pw) = (shapes._pair(info.arch[key], key) for key in ("kernel_size", "stride", "padding"))
    dh, dw = shapes._pair(info.arch.get("dilation", 1), "dilation")
    C, Ho, Wo = info.output_shape
    rt = f"{_k(sh, 'i')}{f' − {ph}' if ph else ''} + {_k(dh, 'u')}"  # in the unpadded input's coordinates
    ct = f"{_k(sw, 'j')}{f' − {pw}' if pw else ''} + {_k(dw, 'v')}"
    rows_t = f"rows {rt}, columns {ct}, u < {kh}, v < {kw}"
    rows_l = rf"\{{({rt.replace('−', '-')},\ {ct.replace('−', '-')}) : u < {kh},\ v < {kw}\}}"
    g = a.grad
    dims = _dims([C, Ho, Wo])
    if info.type == MAXPOOL2D.torch:
        eqs = [_eq("forward", f"{a.text}[c,i,j] = max over the window R(i,j) of {x.text}[c, ·, ·], R(i,j) = {rows_t}"
                              f" (padding counts as −∞; {a.text}: {dims[0]})",
                   rf"{a.latex}_{{c,i,j}} = \max_{{(y,z) \in R(i,j)}} {x.latex}_{{c,y,z}}, \quad R(i,j) = {rows_l}")]
        back = [_eq(f"gradient of {x.text}", f"{x.grad.text}[n,c,y,z] = Σ over the windows (i,j) whose maximum is at (y,z)"
                                            f" of {g.text}[n,c,i,j]: each window's gradient goes to its argmax, the rest get 0",
                    rf"{x.grad.latex}_{{n,c,y,z}} = \sum_{{(i,j):\, (y,z) = \arg\max_{{R(i,j)}} {x.latex}_{{n,c}}}}"
                    rf" {g.latex}_{{n,c,i,j}}", "x")]
    else:
        size = kh * kw
        eqs = [_eq("forward", f"{a.text}[c,i,j] = (1/{size}) Σ over the window R(i,j) of {x.text}[c, ·, ·], R(i,j) = {rows_t}"
                              f" (zero padding counted; a ceil_mode window past the padding divides by fewer)",
                   rf"{a.latex}_{{c,i,j}} = \frac{{1}}{{{size}}} \sum_{{(y,z) \in R(i,j)}} {x.latex}_{{c,y,z}},"
                   rf" \quad R(i,j) = {rows_l}")]
        back = [_eq(f"gradient of {x.text}", f"{x.grad.text}[n,c,y,z] = Σ over the windows (i,j) containing (y,z) of"
                                            f" {g.text}[n,c,i,j]/{size}: each window's gradient is spread evenly, 1/k² = 1/{size}",
                    rf"{x.grad.latex}_{{n,c,y,z}} = \sum_{{(i,j):\,(y,z) \in R(i,j)}} \frac{{1}}{{{size}}}"
                    rf" {g.latex}_{{n,c,i,j}}", "x")]
    return eqs + _size_eqs(info) + back


def _batchnorm(info, x: Sym, a: Sym, p, ctx) -> list[dict]:
    gm, bt = p["gamma"], p["beta"]
    C = info.input_shape[0]
    m = ctx["N"] * (info.input_shape[1] * info.input_shape[2] if info.type == BATCHNORM2D.torch else 1)
    over = "n, y, z" if info.type == BATCHNORM2D.torch else "n"
    eps = info.arch["eps"]
    xh = Sym("x̂", r"\hat{x}")
    g = a.grad
    return [
        _eq("batch statistics", f"μ_c = mean over ({over}) of {x.text}, σ²_c = biased variance, per channel c < {C}"
                                f" (m = {m} values each in the check, training mode)",
            rf"\mu_c = \frac{{1}}{{m}} \sum_{{{over}}} {x.latex}, \quad \sigma^2_c = \frac{{1}}{{m}} \sum_{{{over}}}"
            rf" ({x.latex} - \mu_c)^2, \quad m = {m}"),
        _eq("forward", f"x̂ = ({x.text} − μ)/√(σ² + {eps:g}),  {a.text} = {gm.text} ⊙ x̂ + {bt.text}     ({gm.text}, {bt.text}: {C})",
            rf"\hat{{x}} = \frac{{{x.latex} - \mu}}{{\sqrt{{\sigma^2 + {eps:g}}}}}, \quad {a.latex} = {gm.latex} \odot \hat{{x}} + {bt.latex}"),
        _eq(f"gradient of {bt.text}", f"{bt.grad.text}_c = Σ_({over}) {g.text}", rf"{bt.grad.latex}_c = \sum_{{{over}}} {g.latex}", "beta"),
        _eq(f"gradient of {gm.text}", f"{gm.grad.text}_c = Σ_({over}) {g.text} ⊙ x̂",
            rf"{gm.grad.latex}_c = \sum_{{{over}}} {g.latex} \odot \hat{{x}}", "gamma"),
        _eq(f"gradient of {x.text}", f"{x.grad.text} = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂))/√(σ² + {eps:g}), g = {gm.text} ⊙ {g.text},"
                                     f" means per channel over ({over}): μ and σ² depend on {x.text} too",
            rf"{x.grad.latex} = \frac{{g - \overline{{g}} - {xh.latex} \odot \overline{{g \odot {xh.latex}}}}}{{\sqrt{{\sigma^2 + {eps:g}}}}},"
            rf" \quad g = {gm.latex} \odot {g.latex}", "x"),
    ]


def _dropout(info, x: Sym, a: Sym, p, ctx) -> list[dict]:
    q = info.arch["p"]
    keep = 1 / (1 - q) if q < 1 else float("inf")
    return [_eq("forward", f"{a.text} = m ⊙ {x.text},  m = 1[u ≥ {q:g}]/(1 − {q:g}): 0 or {keep:g}, u uniform, one draw per"
                           " element and batch (training; the identity in evaluation)",
                rf"{a.latex} = m \odot {x.latex}, \quad m = \frac{{\mathbb{{1}}[u \geq {q:g}]}}{{1 - {q:g}}} \in \{{0, {keep:g}\}}"),
            _eq(f"gradient of {x.text}", f"{x.grad.text} = m ⊙ {a.grad.text}     (the same mask)",
                rf"{x.grad.latex} = m \odot {a.grad.latex}", "x")]


BUILDERS: dict[str, Callable] = {
    LINEAR.torch: _linear, CONV2D.torch: _conv, MAXPOOL2D.torch: _pool, AVGPOOL2D.torch: _pool, BATCHNORM1D.torch: _batchnorm,
    BATCHNORM2D.torch: _batchnorm, DROPOUT.torch: _dropout, RELU.torch: _activation, TANH.torch: _activation,
    SIGMOID.torch: _activation, FLATTEN.torch: _flatten,
}


def _loss_eqs(logits: Sym, K: int, smoothing: float, N: int, practical: bool) -> list[dict]:
    yt, yl = "y", "y"
    eqs = []
    if not practical:
        eqs.append(_eq("logits", f"ỹ = {logits.text}     ({K} classes)", rf"\tilde{{y}} = {logits.latex} \in \mathbb{{R}}^{{{K}}}"))
    eqs.append(_eq("softmax", f"ŷᵢ = e^ỹᵢ / Σₖ e^ỹₖ     (ŷ: {K})", r"\hat{y}_i = \frac{e^{\tilde{y}_i}}{\sum_k e^{\tilde{y}_k}}"))
    if smoothing:
        eqs.append(_eq("label smoothing", f"y = (1 − ε) onehot(c) + ε/K = {1 - smoothing:g}·onehot(c) + {smoothing / K:g}"
                                          f"     (ε = {smoothing:g}, K = {K})",
                       rf"y = (1 - \varepsilon)\,\mathrm{{onehot}}(c) + \frac{{\varepsilon}}{{K}}"
                       rf" = {1 - smoothing:g}\,\mathrm{{onehot}}(c) + {smoothing / K:g}"))
    else:
        eqs.append(_eq("target", f"y = onehot(c)     ({K})", r"y = \mathrm{onehot}(c)"))
    eqs.append(_eq("loss", f"l = −(1/N) Σₙ Σᵢ {yt}ₙᵢ log ŷₙᵢ     (the mean over the batch, N = {N})",
                   rf"l = -\frac{{1}}{{N}} \sum_n \sum_i {yl}_{{n,i}} \log \hat{{y}}_{{n,i}}"))
    eqs.append(_eq("gradient of ỹ", "∂l/∂ỹₙ = (ŷₙ − yₙ)/N", r"\frac{\partial l}{\partial \tilde{y}_n} = \frac{1}{N}(\hat{y}_n - y_n)", "logits"))
    return eqs


# ----------------------------------------------------------------------------- numerical checks
def _sampled_error(f: Callable[[], float], array: np.ndarray, analytic: np.ndarray, rng) -> float:
    """gradcheck's relative error of `analytic` against central differences of f: at SAMPLES random
    entries, and along one random unit direction v (entries +-1/sqrt(m)) over the whole tensor, so
    that an error confined to a few entries shows too. The larger of the two."""
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array), "the checked arrays must be contiguous"
    idx = rng.choice(flat.size, min(SAMPLES, flat.size), replace=False)
    numeric = np.empty(len(idx))
    for j, i in enumerate(idx):
        numeric[j] = central_difference(f, flat, i, STEP)
    a = np.asarray(analytic, dtype=np.float64).reshape(-1)
    scale = max(np.abs(a).max(initial=0.0), np.abs(numeric).max(initial=0.0), SCALE_FLOOR)
    entry_error = float(np.abs(a[idx] - numeric).max(initial=0.0) / scale)
    v = rng.choice(np.array([-1.0, 1.0]), size=flat.size) / np.sqrt(flat.size)
    saved = flat.copy()
    flat += STEP * v
    up = f()
    flat[:] = saved - STEP * v
    down = f()
    flat[:] = saved
    along = (up - down) / (2 * STEP)
    direction_error = abs(float(a @ v) - along) / max(scale, abs(along))
    return max(entry_error, direction_error)


def _input(shape, kind: str, rng) -> np.ndarray:
    """A random input whose entries keep away from kinks: ReLU's 0, max-pool ties (distinct values)."""
    if kind == MAXPOOL2D.torch:
        # Within each image plane (no window spans two) distinct values at least 5e-5 apart, so
        # that no step of 1e-6 changes an argmax, and within about [0, 5] whatever the batch, so
        # that the rounding of f (a sum over the whole batch) stays far below h.
        planes, size = int(np.prod(shape[:-2])), int(np.prod(shape[-2:]))
        spacing = max(min(1e-2, 5 / size), 1e-4)
        order = np.argsort(rng.random((planes, size)), axis=1)  # a permutation per plane
        return ((order + rng.uniform(0, 0.5, (planes, size))) * spacing).reshape(shape)
    x = rng.standard_normal(shape)
    if kind in (BATCHNORM1D.torch, BATCHNORM2D.torch):
        # Examples spread evenly over [0, 4]: the variance of two close values would amplify
        # rounding, and a spread growing with the batch would shrink dx (1/sigma) below it.
        n = shape[0]
        x += (4 * np.arange(n) / max(n - 1, 1)).reshape(-1, *[1] * (len(shape) - 1))
    if kind == RELU.torch:
        x[np.abs(x) < 0.01] += 0.1
    return x


def _pieces(info, batch: int, rng):
    """The layer's arrays (input first) and its reference pair as forward(arrays) -> (out, cache),
    backward(G, cache) -> the gradients in the arrays' order."""
    t, arch = info.type, info.arch
    arrays = {"x": _input((batch, *info.input_shape), t, rng)}
    if t == LINEAR.torch:
        arrays["W"] = rng.standard_normal((arch["out_features"], arch["in_features"])) / np.sqrt(arch["in_features"])
        if arch["bias"]:
            arrays["b"] = rng.standard_normal(arch["out_features"])
        return arrays, lambda A: ref.linear_forward(A["x"], A["W"], A.get("b")), ref.linear_backward
    if t == CONV2D.torch:
        kh, kw = shapes._pair(arch["kernel_size"], "kernel_size")
        fan_in = arch["in_channels"] * kh * kw
        arrays["W"] = rng.standard_normal((arch["out_channels"], arch["in_channels"], kh, kw)) / np.sqrt(fan_in)
        if arch["bias"]:
            arrays["b"] = rng.standard_normal(arch["out_channels"])
        geo = {key: arch[key] for key in ("stride", "padding", "dilation")}
        return arrays, lambda A: ref.conv2d_forward(A["x"], A["W"], A.get("b"), **geo), ref.conv2d_backward
    if t in (MAXPOOL2D.torch, AVGPOOL2D.torch):
        geo = {key: arch[key] for key in ("kernel_size", "stride", "padding", "ceil_mode")}
        if t == MAXPOOL2D.torch:
            return arrays, lambda A: ref.maxpool2d_forward(A["x"], dilation=arch["dilation"], **geo), \
                lambda G, c: (ref.maxpool2d_backward(G, c),)
        return arrays, lambda A: ref.avgpool2d_forward(A["x"], **geo), lambda G, c: (ref.avgpool2d_backward(G, c),)
    if t in (BATCHNORM1D.torch, BATCHNORM2D.torch):
        C = info.input_shape[0]
        arrays["gamma"] = 1 + 0.1 * rng.standard_normal(C)
        arrays["beta"] = 0.1 * rng.standard_normal(C)
        stats = (np.zeros(C), np.ones(C))

        def forward(A):
            out, cache, _ = ref.batchnorm_forward(A["x"], A["gamma"], A["beta"], *stats, training=True,
                                                  momentum=arch["momentum"], eps=arch["eps"])
            return out, cache
        return arrays, forward, ref.batchnorm_backward
    if t == DROPOUT.torch:
        seed = int(rng.integers(2**31))  # a fresh generator with one seed: the same mask at every call
        return arrays, lambda A: ref.dropout_forward(A["x"], arch["p"], np.random.default_rng(seed), True), \
            lambda G, c: (ref.dropout_backward(G, c),)
    pair = {RELU.torch: (ref.relu_forward, ref.relu_backward), TANH.torch: (ref.tanh_forward, ref.tanh_backward),
            SIGMOID.torch: (ref.sigmoid_forward, ref.sigmoid_backward),
            FLATTEN.torch: (ref.flatten_forward, ref.flatten_backward)}[t]
    return arrays, lambda A: pair[0](A["x"]), lambda G, c: (pair[1](G, c),)


def check_layer(info, batch: int, rng) -> dict[str, float]:
    """Relative error of the reference backward of one layer, per tensor ('x', 'W', 'b', ...)."""
    arrays, forward, backward = _pieces(info, batch, rng)
    out, cache = forward(arrays)
    upstream = rng.standard_normal(out.shape)
    grads = backward(upstream, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    f = lambda: float((forward(arrays)[0] * upstream).sum())  # noqa: E731
    return {name: _sampled_error(f, arrays[name], g, rng) for name, g in zip(arrays, grads)}


def check_loss(K: int, batch: int, smoothing: float, rng) -> dict[str, float]:
    logits = rng.standard_normal((batch, K))
    labels = rng.integers(K, size=batch)
    _, dlogits = ref.softmax_cross_entropy(logits, labels, smoothing)
    f = lambda: ref.softmax_cross_entropy(logits, labels, smoothing)[0]  # noqa: E731
    return {"logits": _sampled_error(f, logits, dlogits, rng)}


# ----------------------------------------------------------------------------- the whole net
def explain(input_shape, layer_specs, *, batch: int = 2, label_smoothing: float = 0.0, seed: int = 0) -> dict:
    """The derivation of a network: {"layers": [...]} as the module's docstring says.

    layer_specs are the config's layer dicts (shapes.resolve's input); raises ShapeError for
    shapes that do not fit or an unknown layer type.
    """
    infos = shapes.resolve(input_shape, layer_specs)
    rng = np.random.default_rng(seed)
    ins, outs, params = notation(infos)
    practical = is_practical(infos)
    layers = []
    for k, info in enumerate(infos):
        # BatchNorm1d on 2 examples gives x^ = +-1 whatever x: its input gradient vanishes and the
        # check would measure rounding only, so it is checked on BN1D_BATCH examples at least.
        n = max(batch, BN1D_BATCH) if info.type == BATCHNORM1D.torch else batch
        ctx = {"N": n, "last": k == len(infos) - 1, "practical": practical}
        eqs = BUILDERS[info.type](info, ins[k], outs[k], params[k], ctx)
        layers.append(_entry(info.name, info.type, info.input_shape, info.output_shape, info.params, eqs,
                             check_layer(info, n, rng)))
    K = infos[-1].output_shape[0] if infos and len(infos[-1].output_shape) == 1 else None
    if K is None:
        raise shapes.ShapeError("the loss needs flat class scores: end the network with {type: linear}")
    eqs = _loss_eqs(outs[-1], K, label_smoothing, batch, practical)
    layers.append(_entry("loss", "SoftmaxCrossEntropy", [K], [], 0, eqs, check_loss(K, batch, label_smoothing, rng)))
    return {"layers": layers}


def _entry(name, type_, input_shape, output_shape, params, eqs, errors) -> dict:
    for eq in eqs:
        check = eq.pop("_check")
        if check is not None:
            eq["rel_error"] = errors[check]
    return {"name": name, "type": type_, "input_shape": list(input_shape), "output_shape": list(output_shape),
            "params": params, "equations": eqs}


def explain_config(cfg, *, batch: int = 2, seed: int = 0) -> dict:
    """explain() for a loaded config: its dataset's input shape, its layers, its label smoothing."""
    return explain(shapes.dataset_input_shape(cfg.data), [layer.model_dump() for layer in cfg.model.layers],
                   batch=batch, label_smoothing=cfg.train.label_smoothing, seed=seed)


def failures(result: dict) -> list[tuple[str, dict]]:
    """(where: 'layer 4 (MaxPool2d)' or 'the loss', equation) of every check above THRESHOLD (or not a number)."""
    return [(f"layer {k + 1} ({layer['type']})" if layer["name"] != "loss" else "the loss", eq)
            for k, layer in enumerate(result["layers"]) for eq in layer["equations"]
            if eq["rel_error"] is not None and not eq["rel_error"] <= THRESHOLD]


# ----------------------------------------------------------------------------- renderers
def _width(text: str) -> int:
    """Columns on a terminal: combining marks (the tilde of h̃) take none."""
    import unicodedata

    return sum(not unicodedata.combining(c) for c in text)


def _verdict(eq: dict) -> str:
    return "ok" if eq["rel_error"] <= THRESHOLD else "FAIL"


def _shape_text(shape) -> str:
    return "×".join(str(s) for s in shape) if shape else "scalar"


def _title(layer: dict, k: int, total: int) -> str:
    if layer["name"] == "loss":
        return f"loss: softmax cross-entropy on {layer['input_shape'][0]} class scores"
    params = f", {layer['params']:,} parameters" if layer["params"] else ""
    return (f"layer {k + 1}/{total} ({layer['type']}): {_shape_text(layer['input_shape'])} → "
            f"{_shape_text(layer['output_shape'])}{params}")


def to_text(result: dict) -> str:
    """For the terminal: each layer's equations, names aligned, the check's error and verdict at the right."""
    layers = result["layers"]
    width = max(_width(eq["name"]) for layer in layers for eq in layer["equations"])
    lines = []
    for k, layer in enumerate(layers):
        lines.append(_title(layer, k, len(layers) - 1))
        for eq in layer["equations"]:
            check = "" if eq["rel_error"] is None else f"     [rel. error {eq['rel_error']:.1e} {_verdict(eq)}]"
            lines.append(f"  {eq['name']}{' ' * (width - _width(eq['name']))}  {eq['text']}{check}")
        lines.append("")
    checks = [eq for layer in layers for eq in layer["equations"] if eq["rel_error"] is not None]
    bad = failures(result)
    lines.append(f"{len(checks) - len(bad)} of {len(checks)} backward equations agree with central differences "
                 f"(relative error <= {THRESHOLD:g}, float64, reference engine)")
    return "\n".join(lines)


def to_markdown(result: dict) -> str:
    """For GitHub and Jupyter: a heading per layer, each equation in $$ lines, a check table under each gradient."""
    layers = result["layers"]
    out = []
    for k, layer in enumerate(layers):
        out += [f"### {_title(layer, k, len(layers) - 1)}", ""]
        for eq in layer["equations"]:
            out += [f"**{eq['name']}**", "", "$$", eq["latex"], "$$", ""]
            if eq["rel_error"] is not None:
                out += ["| rel. error | pass |", "|---|---|",
                        f"| {eq['rel_error']:.1e} | {'yes' if eq['rel_error'] <= THRESHOLD else 'NO'} |", ""]
    return "\n".join(out).rstrip() + "\n"


def to_json(result: dict) -> str:
    import json

    return json.dumps(result, indent=2, ensure_ascii=False)


FORMATS = {"text": to_text, "markdown": to_markdown, "json": to_json}
