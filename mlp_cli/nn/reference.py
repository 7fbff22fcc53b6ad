"""The reference engine: every layer, the loss and the optimizers as the practical derives them.

Read this module first. Each layer is a pair of small pure functions in the style of cs231n's
layers, written in the practical's notation (the derivation in the course material):

    out, cache = linear_forward(x, W, b)        h~ = W_h x + b_h, one row of x per example
    dx, dW, db = linear_backward(dout, cache)   grad W_h = grad h~ x^T, grad b_h = grad h~, ...

`dout` is always dl/d(out), the gradient of the loss with respect to the layer's output, and
every backward returns the gradients with respect to the layer's input and to each of its
parameters, in the order the forward takes them. The loss is the mean over the batch, so the
1/N is in dl/dy~ (softmax_cross_entropy) and every gradient after it carries it.

Plain NumPy only: no threads, no compiled kernels, no buffers kept from one call to the next,
nothing from the fast engine (layers.py, conv/, compiled.py), which departs from these functions
for speed and is tested equal to them. Arrays keep the dtype they come in (float32 in training,
float64 in gradient checks). Images are (N, C, H, W); sizes of a 2-D layer (kernel, stride,
padding, dilation) are an int or an (h, w) pair, as in PyTorch.

At the end, the reference layers: thin classes that hold a layer's parameters and call its pair,
so that a whole network (model.build with the reference engine) trains on these functions.
"""

from __future__ import annotations

import math

import numpy as np


def _pair(v) -> tuple[int, int]:
    """An int or an (h, w) pair -> (h, w)."""
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ----------------------------------------------------------------------------- output sizes
def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """floor((x + 2p - d(k - 1) - 1) / s) + 1: the outputs a kernel spanning d(k - 1) + 1 inputs
    has room for, moving s at a time over the padded input (PyTorch's rule)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """The conv rule, or with ceil_mode the practical's ceil((x + 2p - k) / s) + 1, except that a
    last window which would start in the right padding is dropped (as PyTorch does)."""
    if not ceil_mode:
        return conv_output_size(size, kernel, stride, padding, dilation)
    out = math.ceil((size + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


# ----------------------------------------------------------------------------- linear
def linear_forward(x, W, b):
    """A fully connected layer: h~ = W_h x + b_h for each example x (a row of the batch).

    x: (N, D) inputs, W: (M, D), b: (M,) or None -> out: (N, M) = x W^T + b.
    """
    out = x @ W.T
    if b is not None:
        out = out + b
    return out, (x, W, b is not None)


def linear_backward(dout, cache):
    """dout: (N, M) -> dx: (N, D), dW: (M, D), db: (M,) or None.

    For one example, with y~ = W_y h + b_y: grad W_y = (y^ - y) h^T, grad b_y = y^ - y, and the
    input's gradient W_y^T (y^ - y). With dout_n = dl/dy~_n for example n (it already holds the 1/N
    of the mean loss), the batch sums the examples' gradients:
        dW = sum_n dout_n x_n^T = dout^T x,   db = sum_n dout_n,   dx_n = W^T dout_n, i.e. dx = dout W.
    """
    x, W, has_bias = cache
    dx = dout @ W
    dW = dout.T @ x
    db = dout.sum(axis=0) if has_bias else None
    return dx, dW, db


# ----------------------------------------------------------------------------- activations
def tanh_forward(x):
    """h = tanh(h~), element-wise; any shape."""
    h = np.tanh(x)
    return h, h


def tanh_backward(dout, cache):
    """grad h~ = (1 - tanh^2(h~)) * grad h, element-wise (cache: h = tanh(h~))."""
    h = cache
    return (1 - h * h) * dout


def relu_forward(x):
    """max(x, 0), element-wise; any shape."""
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    """The gradient passes where x > 0 and stops where x <= 0 (the derivative at 0 taken as 0)."""
    x = cache
    return dout * (x > 0)


def sigmoid_forward(x):
    """sigma(x) = 1 / (1 + e^-x), written as (1 + tanh(x / 2)) / 2, which never overflows."""
    s = 0.5 * (1 + np.tanh(x / 2))
    return s, s


def sigmoid_backward(dout, cache):
    """sigma'(x) = sigma(x) (1 - sigma(x))."""
    s = cache
    return dout * s * (1 - s)


def flatten_forward(x):
    """(N, C, H, W) -> (N, C*H*W), each example's numbers in (C, H, W) order, as PyTorch's Flatten."""
    return x.reshape(len(x), -1), x.shape


def flatten_backward(dout, cache):
    """The same numbers, put back in the input's shape."""
    return dout.reshape(cache)


# ----------------------------------------------------------------------------- convolution
def conv2d_forward(x, W, b, stride=1, padding=0, dilation=1):
    """A 2-D convolution (PyTorch's Conv2d, which is a cross-correlation): every output pixel is
    a weighted sum of the k x k input window under it, over all input channels, plus a bias.

        out[n, f, i, j] = b[f] + sum_{c, a, e} W[f, c, a, e] * xp[n, c, i*s + a*d, j*s + e*d]

    with xp the input zero-padded by p on each side. Done here as a loop over the kernel's offsets
    (a, e): each adds one (F, C) matrix times the inputs that offset sees under every output.

    x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None -> out: (N, F, Ho, Wo) with
    Ho = floor((H + 2p - d(k - 1) - 1) / s) + 1 (the same along the width).
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    Ho, Wo = conv_output_size(H, kh, sh, ph, dh), conv_output_size(Wd, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((N, F, Ho, Wo), x.dtype)
    for a in range(kh):
        for e in range(kw):
            seen = _offset_view(xp, a * dh, e * dw, sh, sw, Ho, Wo)  # (N, C, Ho, Wo)
            out += np.einsum("nchw,fc->nfhw", seen, W[:, :, a, e], optimize=True)
    if b is not None:
        out += b[None, :, None, None]
    return out, (xp, W, b is not None, (sh, sw), (ph, pw), (dh, dw))


def conv2d_backward(dout, cache):
    """dout: (N, F, Ho, Wo) -> dx: (N, C, H, W), dW: (F, C, kh, kw), db: (F,) or None.

    Each output was sum W[f, c, a, e] * xp[n, c, i*s + a*d, j*s + e*d] + b[f], so
        dW[f, c, a, e] = sum_{n, i, j} dout[n, f, i, j] * xp[n, c, i*s + a*d, j*s + e*d]
        db[f]          = sum_{n, i, j} dout[n, f, i, j]
        dxp[n, c, y, z] = sum of dout[n, f, i, j] * W[f, c, a, e] over every (f, i, j, a, e) whose
                          window position (i*s + a*d, j*s + e*d) is (y, z),
    which for stride 1 is the convolution of dout (padded by d(k - 1) - p) with the kernel flipped
    in both directions: dx = dout * rot180(W). Here, as the transpose of the forward's loop: each
    offset sends dout back through its (F, C) matrix to the inputs it read. dx is dxp without the
    padding.
    """
    xp, W, has_bias, (sh, sw), (ph, pw), (dh, dw) = cache
    _, _, Ho, Wo = dout.shape
    _, _, kh, kw = W.shape
    dxp = np.zeros_like(xp)
    dW = np.zeros_like(W)
    for a in range(kh):
        for e in range(kw):
            seen = _offset_view(xp, a * dh, e * dw, sh, sw, Ho, Wo)
            dW[:, :, a, e] = np.einsum("nfhw,nchw->fc", dout, seen, optimize=True)
            back = np.einsum("nfhw,fc->nchw", dout, W[:, :, a, e], optimize=True)
            _offset_view(dxp, a * dh, e * dw, sh, sw, Ho, Wo)[...] += back
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    H, Wd = xp.shape[2] - 2 * ph, xp.shape[3] - 2 * pw
    return dxp[:, :, ph:ph + H, pw:pw + Wd], dW, db


def _offset_view(xp, top, left, sh, sw, Ho, Wo):
    """The (N, C, Ho, Wo) view of xp that kernel offset (top, left) sees under every output."""
    return xp[:, :, top:top + sh * (Ho - 1) + 1:sh, left:left + sw * (Wo - 1) + 1:sw]


# ----------------------------------------------------------------------------- pooling
def _pool_geometry(shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Sizes of a pooling layer: ((kh, kw), (sh, sw), (ph, pw), (dh, dw)), (Ho, Wo) and the padded
    size (Hp, Wp), which with ceil_mode reaches as far as the last window does."""
    k, p, d = _pair(kernel_size), _pair(padding), _pair(dilation)
    s = _pair(kernel_size if stride is None else stride)
    H, W = shape[2], shape[3]
    Ho = pool_output_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    Wo = pool_output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    Hp = max(H + 2 * p[0], (Ho - 1) * s[0] + d[0] * (k[0] - 1) + 1)
    Wp = max(W + 2 * p[1], (Wo - 1) * s[1] + d[1] * (k[1] - 1) + 1)
    return (k, s, p, d), (Ho, Wo), (Hp, Wp)


def _window(i, j, k, s, d):
    """The rows and columns (slices into the padded input) of output (i, j)'s window."""
    return (slice(i * s[0], i * s[0] + d[0] * (k[0] - 1) + 1, d[0]),
            slice(j * s[1], j * s[1] + d[1] * (k[1] - 1) + 1, d[1]))


def maxpool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling: each output is the largest input of its window (padding never wins: it counts
    as -inf). x: (N, C, H, W) -> out: (N, C, Ho, Wo); the cache keeps, for every output, which
    entry of its window (row by row) held the first maximum."""
    (k, s, p, d), (Ho, Wo), (Hp, Wp) = _pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    N, C, H, W = x.shape
    xp = np.full((N, C, Hp, Wp), -np.inf, x.dtype)
    xp[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    out = np.empty((N, C, Ho, Wo), x.dtype)
    first = np.empty((N, C, Ho, Wo), np.int64)
    for i in range(Ho):
        for j in range(Wo):
            rows, cols = _window(i, j, k, s, d)
            window = xp[:, :, rows, cols].reshape(N, C, -1)
            first[:, :, i, j] = window.argmax(axis=2)  # the first maximum, as PyTorch picks it
            out[:, :, i, j] = window.max(axis=2)
    return out, (x.shape, first, (k, s, p, d), (Hp, Wp))


def maxpool2d_backward(dout, cache):
    """dout: (N, C, Ho, Wo) -> dx: (N, C, H, W). The maximum is the only input of its window that
    the output depends on, so each output's gradient goes to that one input (the first maximum on
    a tie); inputs that are the maximum of several windows collect all of their gradients."""
    (N, C, H, W), first, (k, s, p, d), (Hp, Wp) = cache
    dxp = np.zeros((N, C, Hp, Wp), dout.dtype)
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            a, e = np.divmod(first[:, :, i, j], k[1])  # the maximum's row and column in the window
            dxp[n, c, i * s[0] + a * d[0], j * s[1] + e * d[1]] += dout[:, :, i, j]
    return dxp[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


def avgpool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Average pooling (PyTorch's AvgPool2d, count_include_pad=True): each output is the sum of its
    window divided by the window's size counting the zero padding but not what lies beyond it
    (a ceil_mode window can hang over the right padding). x: (N, C, H, W) -> out: (N, C, Ho, Wo)."""
    (k, s, p, d), (Ho, Wo), (Hp, Wp) = _pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    N, C, H, W = x.shape
    xp = np.zeros((N, C, Hp, Wp), x.dtype)
    xp[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    out = np.empty((N, C, Ho, Wo), x.dtype)
    divisor = np.empty((Ho, Wo), x.dtype)
    for i in range(Ho):
        for j in range(Wo):
            rows, cols = _window(i, j, k, s, d)
            divisor[i, j] = (min(rows.stop, H + 2 * p[0]) - rows.start) * (min(cols.stop, W + 2 * p[1]) - cols.start)
            out[:, :, i, j] = xp[:, :, rows, cols].sum(axis=(2, 3)) / divisor[i, j]
    return out, (x.shape, divisor, (k, s, p, d), (Hp, Wp))


def avgpool2d_backward(dout, cache):
    """dout: (N, C, Ho, Wo) -> dx: (N, C, H, W): every input of a window gets the window's gradient
    divided by the same divisor."""
    (N, C, H, W), divisor, (k, s, p, d), (Hp, Wp) = cache
    dxp = np.zeros((N, C, Hp, Wp), dout.dtype)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            rows, cols = _window(i, j, k, s, d)
            dxp[:, :, rows, cols] += (dout[:, :, i, j] / divisor[i, j])[:, :, None, None]
    return dxp[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


# ----------------------------------------------------------------------------- batch norm
def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1, eps=1e-5):
    """Batch normalization of each channel (PyTorch's BatchNorm1d on (N, C), BatchNorm2d on
    (N, C, H, W), where a channel's statistics run over N, H and W):

        training:   mu, var = the batch's mean and (biased) variance of the channel
        evaluation: mu, var = the running estimates
        xhat = (x - mu) / sqrt(var + eps),   out = gamma * xhat + beta

    Returns out (x's shape), the cache, and the running estimates after this batch: in training
    (1 - momentum) * running + momentum * batch, with the unbiased variance (m / (m - 1) * var, m
    values per channel) as PyTorch keeps it; unchanged in evaluation.
    """
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)  # a channel's vector against x
    if training:
        m = x.size // x.shape[1]
        mu, var = x.mean(axis=axes), x.var(axis=axes)
        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var = (1 - momentum) * running_var + momentum * var * (m / max(m - 1, 1))
    else:
        mu, var = running_mean, running_var
    inv_std = 1 / np.sqrt(var + eps)
    xhat = (x - mu.reshape(shape)) * inv_std.reshape(shape)
    out = gamma.reshape(shape) * xhat + beta.reshape(shape)
    return out, (xhat, gamma, inv_std, training, axes, shape), (running_mean, running_var)


def batchnorm_backward(dout, cache):
    """dout: x's shape -> dx: x's shape, dgamma: (C,), dbeta: (C,).

        dbeta = sum dout,   dgamma = sum dout * xhat      (sums over a channel's m values)
    In training mu and var depend on x too; with g = gamma * dout, and means over a channel's values,
        dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
    In evaluation mu and var are constants: dx = gamma * dout / sqrt(var + eps).
    """
    xhat, gamma, inv_std, training, axes, shape = cache
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    g = dout * gamma.reshape(shape)
    if training:
        g = g - g.mean(axis=axes).reshape(shape) - xhat * (g * xhat).mean(axis=axes).reshape(shape)
    return g * inv_std.reshape(shape), dgamma, dbeta


# ----------------------------------------------------------------------------- dropout
def dropout_forward(x, p, rng, training=True):
    """Inverted dropout (PyTorch's Dropout): in training each element is kept with probability
    1 - p and scaled by 1 / (1 - p), so that its expected value is unchanged; in evaluation the
    identity. The keep mask is drawn as rng.random(x.shape) >= p, in x's float precision.
    x: any shape -> out: x's shape; the cache is the mask (None for the identity)."""
    if not training or p == 0:
        return x, None
    keep = rng.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1 / (1 - p))
    return x * mask, mask


def dropout_backward(dout, cache):
    """The kept elements pass their gradient, scaled alike; the dropped ones pass none."""
    mask = cache
    return dout if mask is None else dout * mask


# ----------------------------------------------------------------------------- the loss
def softmax(logits):
    """y^ = softmax(y~): y^_i = e^{y~_i} / sum_k e^{y~_k}, per row of (N, K) scores. The row's
    maximum is subtracted first (the quotient is the same), so no exponential overflows."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(logits):
    """log y^ = y~ - log sum_k e^{y~_k}, by log-sum-exp (never the log of a rounded softmax)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """The mean over the batch of l = -sum_i y_i log y^_i = -y~_c + log sum_k e^{y~_k}, and its
    gradient dl/dy~ = (y^ - y) / N.

    logits: (N, K) scores y~ (never softmax outputs), labels: (N,) classes c. The target y is the
    one-hot vector of c, or with label smoothing eps, (1 - eps) one_hot(c) + eps / K (as PyTorch).
    Returns (loss as a Python float, dlogits (N, K) in the logits' dtype).
    """
    N, K = logits.shape
    y = np.full((N, K), label_smoothing / K)
    y[np.arange(N), labels] += 1 - label_smoothing
    loss = -(y * log_softmax(logits)).sum() / N
    dlogits = (softmax(logits) - y) / N
    return float(loss), dlogits.astype(logits.dtype)


# ----------------------------------------------------------------------------- optimizers
def sgd_update(w, dw, state, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """One step of stochastic gradient descent (PyTorch's SGD, dampening 0) on one parameter.

        g = dw + weight_decay * w
        v = g on the first step, momentum * v + g after      (state["momentum_buffer"], with momentum)
        w_new = w - lr * (g + momentum * v)   with Nesterov,   w - lr * v   otherwise
    Without momentum, w_new = w - lr * g. Returns (w_new, the new state); changes nothing in place.
    """
    g = dw + weight_decay * w if weight_decay else dw
    if not momentum:
        return w - lr * g, {}
    v = g if "momentum_buffer" not in state else momentum * state["momentum_buffer"] + g
    step = g + momentum * v if nesterov else v
    return w - lr * step, {"momentum_buffer": v}


def adam_update(w, dw, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False):
    """One step of Adam (PyTorch's Adam, amsgrad off), or AdamW when the weight decay is decoupled:

        t = t + 1
        g = dw + weight_decay * w        (Adam: L2 in the gradient)
        w = w * (1 - lr * weight_decay)  (AdamW: decay applied to the weight instead), g = dw
        m = beta1 * m + (1 - beta1) * g,     v = beta2 * v + (1 - beta2) * g^2
        w_new = w - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    state holds "step" (t), "exp_avg" (m) and "exp_avg_sq" (v); empty before the first step.
    Returns (w_new, the new state); changes nothing in place.
    """
    beta1, beta2 = betas
    t = state.get("step", 0) + 1
    m = state.get("exp_avg", np.zeros_like(w))
    v = state.get("exp_avg_sq", np.zeros_like(w))
    if decoupled_weight_decay:
        w, g = w * (1 - lr * weight_decay), dw
    else:
        g = dw + weight_decay * w if weight_decay else dw
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    w_new = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w_new, {"step": t, "exp_avg": m, "exp_avg_sq": v}


def adamw_update(w, dw, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    """AdamW: Adam with the weight decay applied to the weight (see adam_update)."""
    return adam_update(w, dw, state, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                       decoupled_weight_decay=True)


# ----------------------------------------------------------------------------- reference layers
class Layer:
    """A layer of the reference network: its parameters (`params`, PyTorch's names), their
    gradients after `backward` (`grads`), running statistics (`buffers`), and the cache that
    `forward` leaves for `backward`. The arithmetic is the module's pair of functions."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self.needs_input_grad = True  # kept for the network's interface; the reference always computes dx
        self.cache = None

    def _set_grads(self, **grads):
        for name, grad in grads.items():
            if name in self.params:
                self.grads[name] = grad


class Linear(Layer):
    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.params["weight"] = np.zeros((out_features, in_features), dtype)
        if bias:
            self.params["bias"] = np.zeros(out_features, dtype)

    def forward(self, x):
        out, self.cache = linear_forward(x, self.params["weight"], self.params.get("bias"))
        return out

    def backward(self, dout):
        dx, dW, db = linear_backward(dout, self.cache)
        self._set_grads(weight=dW, bias=db)
        return dx


class Conv2d(Layer):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 dtype=np.float32):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.params["weight"] = np.zeros((out_channels, in_channels, kh, kw), dtype)
        if bias:
            self.params["bias"] = np.zeros(out_channels, dtype)

    def forward(self, x):
        out, self.cache = conv2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride,
                                         self.padding, self.dilation)
        return out

    def backward(self, dout):
        dx, dW, db = conv2d_backward(dout, self.cache)
        self._set_grads(weight=dW, bias=db)
        return dx


class MaxPool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.hyper = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                          ceil_mode=ceil_mode)

    def forward(self, x):
        out, self.cache = maxpool2d_forward(x, **self.hyper)
        return out

    def backward(self, dout):
        return maxpool2d_backward(dout, self.cache)

    def kinks(self):
        """Which entry of each window held the maximum in the last forward."""
        return self.cache[1]


class AvgPool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.hyper = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)

    def forward(self, x):
        out, self.cache = avgpool2d_forward(x, **self.hyper)
        return out

    def backward(self, dout):
        return avgpool2d_backward(dout, self.cache)


class _BatchNorm(Layer):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.params["weight"] = np.ones(num_features, dtype)
        self.params["bias"] = np.zeros(num_features, dtype)
        self.buffers["running_mean"] = np.zeros(num_features, dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype)
        self.buffers["num_batches_tracked"] = np.zeros((), np.int64)

    def forward(self, x):
        b = self.buffers
        out, self.cache, (mean, var) = batchnorm_forward(
            x, self.params["weight"], self.params["bias"], b["running_mean"], b["running_var"],
            training=self.training, momentum=self.momentum, eps=self.eps)
        if self.training:  # in place: the network's state dict holds these very arrays
            b["running_mean"][...] = mean
            b["running_var"][...] = var
            b["num_batches_tracked"] += 1
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = batchnorm_backward(dout, self.cache)
        self._set_grads(weight=dgamma, bias=dbeta)
        return dx


class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, C) features."""


class BatchNorm2d(_BatchNorm):
    """Batch norm of (N, C, H, W) images, per channel."""


class Dropout(Layer):
    def __init__(self, p=0.5):
        super().__init__()
        self.p = float(p)
        self.rng = np.random.default_rng(0)  # the network's owner sets the run's generator

    def forward(self, x):
        out, self.cache = dropout_forward(x, self.p, self.rng, self.training)
        return out

    def backward(self, dout):
        return dropout_backward(dout, self.cache)


class ReLU(Layer):
    def forward(self, x):
        out, self.cache = relu_forward(x)
        return out

    def backward(self, dout):
        return relu_backward(dout, self.cache)

    def kinks(self):
        """Which inputs were above zero in the last forward."""
        return self.cache > 0


class Tanh(Layer):
    def forward(self, x):
        out, self.cache = tanh_forward(x)
        return out

    def backward(self, dout):
        return tanh_backward(dout, self.cache)


class Sigmoid(Layer):
    def forward(self, x):
        out, self.cache = sigmoid_forward(x)
        return out

    def backward(self, dout):
        return sigmoid_backward(dout, self.cache)


class Flatten(Layer):
    def forward(self, x):
        out, self.cache = flatten_forward(x)
        return out

    def backward(self, dout):
        return flatten_backward(dout, self.cache)
