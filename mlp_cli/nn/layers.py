"""Layers: each a forward/backward pair written by hand in NumPy.

Conventions (see docs/design.md):
- 4-D inputs and outputs are NCHW *logically*. Internally the conv and pooling layers work
  channels-last (NHWC), because then an im2col row is one contiguous run of kh*kw*C numbers
  and the matrix product writes NHWC directly. A layer returns `out_nhwc.transpose(0, 3, 1, 2)`,
  an NCHW view of channels-last memory, and the next layer's `x.transpose(0, 2, 3, 1)` gets
  the NHWC array back for free.
- `params` and `grads` use PyTorch's names and layouts (Linear weight (out, in), Conv2d weight
  (out, in, kh, kw)); `buffers` holds BatchNorm's running statistics.
- Everything follows the dtype of the parameters (float32 in training, float64 in gradient checks).
- Python loops run over kernel offsets only, never over examples or output pixels.
"""

from __future__ import annotations

import numpy as np

from mlp_cli.nn import compiled_kernels
from mlp_cli.nn.arrays import column_sums as _column_sums
from mlp_cli.nn.arrays import nchw as _nchw
from mlp_cli.nn.arrays import nhwc as _nhwc
from mlp_cli.nn.arrays import pair as _pair
from mlp_cli.nn.arrays import window as _window
from mlp_cli.nn.conv import band, cost, dft, im2col
from mlp_cli.nn.execution import Execution
from mlp_cli.nn.parallel import ordered_sum, over_batch
from mlp_cli.shapes import conv_output_size, pool_output_size


class Layer:
    """Base class: no parameters, identity in train and eval mode alike.

    `execution` (execution.py) says how the layer runs: its threads, whether compiled kernels may
    run, the convolution method. The network builder gives every layer the entry point's one."""

    def __init__(self, execution: Execution | None = None):
        self.execution = execution if execution is not None else Execution()
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        # The first layer of a network never needs dx; skipping it saves a large product.
        self.needs_input_grad = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _over(self, fn, n, size, uses_blas=False) -> list:
        """parallel.over_batch on this layer's threads."""
        return over_batch(fn, n, size, uses_blas, threads=self.execution.threads)

    def _set_grad(self, name, parts):
        """grads[name] = the ordered sum of `parts` (partial sums over batch ranges), written
        in place into the existing gradient array (see _grad_buffer)."""
        ordered_sum(parts, out=self._grad_buffer(name, parts[0].shape, parts[0].dtype))

    def _grad_buffer(self, name, shape, dtype):
        """grads[name], to be written in place: the existing array when it has this shape and
        dtype (it may be a view of the network's one flat gradient buffer, model.build, which
        the optimizer updates from in whole passes), else a new one."""
        grad = self.grads.get(name)
        if grad is None or grad.shape != shape or grad.dtype != dtype:
            grad = self.grads[name] = np.empty(shape, dtype)
        return grad

    def _scratch(self, name, shape, dtype, zero=False):
        """A buffer kept between calls (never handed out), so big arrays are not re-allocated
        and page-faulted in every step. A zeroed buffer stays zero where it is never written."""
        buf = self.__dict__.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            self.__dict__[name] = buf
        return buf


# ----------------------------------------------------------------------------- Linear
def _matmul_work(n, out_features, in_features) -> int:
    """A product's size in over_batch's units (elements touched): below ~16M multiply-adds
    a thread hand-off costs more than it saves."""
    return n * out_features * in_features // 256


class Linear(Layer):
    """Fully connected layer y = x W^T + b (torch.nn.Linear).

    In the practical's notation for one example, h~ = W_h x + b_h; a batch stacks examples as rows.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32,
                 execution: Execution | None = None):
        super().__init__(execution)
        self.params["weight"] = np.zeros((out_features, in_features), dtype)
        if bias:
            self.params["bias"] = np.zeros(out_features, dtype)

    def forward(self, x):
        """x: (N, in) -> out: (N, out)."""
        self.x = x
        weight, bias = self.params["weight"], self.params.get("bias")
        out = np.empty((x.shape[0], weight.shape[0]), weight.dtype)

        # Threads take ranges of output features (columns of out), not of the batch: each then
        # reads its own part of the weight once instead of all of it (a 1024x1000 weight is 4 MB,
        # more than a batch of 32 rows), and every output is the same sum as on one thread.
        def run(f0, f1):
            np.matmul(x, weight[f0:f1].T, out=out[:, f0:f1])
            if bias is not None:
                out[:, f0:f1] += bias[f0:f1]

        self._over(run, weight.shape[0], _matmul_work(x.shape[0], *weight.shape), uses_blas=True)
        return out

    def backward(self, dout):
        """dout: (N, out) -> dx: (N, in); grads weight (out, in), bias (out,).

        Seed, batched (rows are examples, dout already carries the 1/N of the mean loss):
          grad W_y = (y^ - y) h^T            -> dW = dout^T x
          grad b_y = y^ - y                  -> db = sum over the batch of dout
          W_y^T (y^ - y), the factor of grad h~ -> dx = dout W
        Threads take ranges of output features for dW and db and of input features for dx, so
        no thread's partial sum over the batch has to be added to another's.
        """
        weight, x = self.params["weight"], self.x
        work = _matmul_work(x.shape[0], *weight.shape)
        grad = self._grad_buffer("weight", weight.shape, dout.dtype)
        grad_bias = self._grad_buffer("bias", weight.shape[:1], dout.dtype) if "bias" in self.params else None

        def weight_part(f0, f1):
            np.matmul(dout[:, f0:f1].T, x, out=grad[f0:f1])
            if grad_bias is not None:
                dout[:, f0:f1].sum(axis=0, out=grad_bias[f0:f1])

        self._over(weight_part, weight.shape[0], work, uses_blas=True)
        if not self.needs_input_grad:
            return None
        dx = np.empty(x.shape, dout.dtype)
        self._over(lambda i0, i1: np.matmul(dout, weight[:, i0:i1], out=dx[:, i0:i1]), weight.shape[1], work,
                   uses_blas=True)
        return dx


# ----------------------------------------------------------------------------- Conv2d
class Conv2d(Layer):
    """2-D convolution (torch.nn.Conv2d, groups=1): a dispatcher over the algorithms of conv/.

    Three algorithms, one chosen per input size: "im2col" (conv/im2col.py: every window copied
    into a row, one matrix product), "band" (conv/band.py: B neighbouring outputs per product row
    and a banded weight matrix: wide products for thin layers such as LeNet-5's first) and "dft"
    (conv/dft.py, stride 1 only: through the Fourier transform, 3-4x fewer operations for the
    practical's 5x5 layers). The layer's execution.conv_method names one, or "auto" takes the one
    of least modelled time (conv/cost.py). Each algorithm instance owns its buffers and what its
    forward leaves for its backward; the layer keeps one per input size (`algorithm` is the last
    forward's). The weight stays in PyTorch's (F, C, kh, kw) layout.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, dtype=np.float32, execution: Execution | None = None):
        super().__init__(execution)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        kh, kw = self.kernel_size
        self.params["weight"] = np.zeros((out_channels, in_channels, kh, kw), dtype)
        if bias:
            self.params["bias"] = np.zeros(out_channels, dtype)
        self._algorithms: dict = {}
        self.algorithm = None

    def output_size(self, h, w):
        return tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                     zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))

    def _algorithm_for(self, H, W, dtype):
        """The algorithm instance for this input size: made on first use, by the execution's
        conv_method ("auto": the least modelled time, conv/cost.py)."""
        key = (H, W, np.dtype(dtype), self.needs_input_grad)
        if key in self._algorithms:
            return self._algorithms[key]
        O, C = self.params["weight"].shape[:2]
        geometry = (H, W, self.kernel_size, self.stride, self.padding, self.dilation, C, O, self.needs_input_grad)
        method = self.execution.conv_method
        methods = ("im2col", "band", "dft") if method == "auto" else (method,)
        if method == "dft" and self.stride != (1, 1):
            methods = ("im2col",)  # the DFT computes every output: stride 1 only
        method, B = cost.choose(*geometry, methods=methods)
        hyper = (self.kernel_size, self.stride, self.padding, self.dilation, self.execution.threads)
        if method == "dft":
            algorithm = dft.DFT(*hyper, H, W, dtype)
        elif method == "band":
            algorithm = band.Band(*hyper, B)
        else:
            algorithm = im2col.Im2col(*hyper)
        self._algorithms[key] = algorithm
        return algorithm

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, F, Ho, Wo) with Ho = floor((H + 2p - d(k-1) - 1)/s) + 1."""
        xh = _nhwc(x)
        _, H, W, _ = xh.shape
        self.algorithm = self._algorithm_for(H, W, xh.dtype)
        return _nchw(self.algorithm.forward(xh, self.params["weight"], self.params.get("bias")))

    def backward(self, dout):
        """dout: (N, F, Ho, Wo) -> dx: (N, C, H, W); grads weight (F, C, kh, kw), bias (F,)."""
        dx, weight_parts, bias_parts = self.algorithm.backward(_nhwc(dout), self.params["weight"],
                                                               "bias" in self.params, self.needs_input_grad)
        self._set_grad("weight", weight_parts)
        if bias_parts is not None:
            self._set_grad("bias", bias_parts)
        return None if dx is None else _nchw(dx)


# ----------------------------------------------------------------------------- pooling
class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 execution: Execution | None = None):
        super().__init__(execution)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.ceil_mode = ceil_mode

    def _geometry(self, H, W):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        Ho = pool_output_size(H, kh, sh, ph, dh, self.ceil_mode)
        Wo = pool_output_size(W, kw, sw, pw, dw, self.ceil_mode)
        # With ceil_mode the last window may reach past the right padding: pad a little more.
        Hp = max(H + 2 * ph, (Ho - 1) * sh + dh * (kh - 1) + 1)
        Wp = max(W + 2 * pw, (Wo - 1) * sw + dw * (kw - 1) + 1)
        return Ho, Wo, Hp, Wp

    def _padded(self, xh, Hp, Wp, fill):
        N, H, W, C = xh.shape
        ph, pw = self.padding
        if (Hp, Wp) == (H, W):
            return xh
        xp = np.full((N, Hp, Wp, C), fill, xh.dtype)
        xp[:, ph:ph + H, pw:pw + W, :] = xh
        return xp

    def _offsets(self, Ho, Wo):
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, (slice(None), _window(i, dh, sh, Ho), _window(j, dw, sw, Wo), slice(None))


class MaxPool2d(_Pool2d):
    """Max pooling (torch.nn.MaxPool2d): padding counts as -inf, ties go to the first maximum.

    A 2x2 window with stride 2 over an even-sized input runs the compiled kernels of compiled.py
    where Numba is installed and the layer's execution allows them (`execution.compiled`), other
    windows the NumPy code below, which is the reference: the two give identical results."""

    has_compiled_kernels = True

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, C, Ho, Wo)."""
        xh = _nhwc(x)
        N, H, W, C = xh.shape
        Ho, Wo, Hp, Wp = self._geometry(H, W)
        xp = self._padded(xh, Hp, Wp, -np.inf)
        out = np.empty((N, Ho, Wo, C), xh.dtype)
        use_kernel = self._compiled_applies(H, W)
        if use_kernel:
            xp = np.ascontiguousarray(xp)

        first = np.empty(out.shape, np.uint8) if use_kernel else None

        def pool(b0, b1):
            o = out[b0:b1]
            if use_kernel:
                compiled_kernels().maxpool2x2_forward(xp[b0:b1], o, first[b0:b1])
                return
            for k, window in self._offsets(Ho, Wo):
                v = xp[b0:b1][window]
                if k == 0:
                    o[...] = v
                else:
                    np.maximum(o, v, out=o)

        self._over(pool, N, xp.size)
        # The kernel's backward needs only `first` (which input of each window takes its
        # gradient), not the input and output: 1 byte per output instead of 5 input and output numbers read.
        self.xp, self.out = (None, None) if use_kernel else (xp, out)
        self.first, self.geometry, self.in_shape = first, (Ho, Wo, Hp, Wp), xh.shape
        return _nchw(out)

    def argmax_offsets(self) -> np.ndarray:
        """After forward: (N, Ho, Wo, C) index i*kw + j of the kernel offset holding each window's
        first maximum (what decides where backward routes the gradient)."""
        if self.first is not None:  # the compiled forward's routing: 0-3, or 4 for none
            return np.where(self.first < 4, self.first, -1).astype(np.int16)
        Ho, Wo = self.geometry[:2]
        found = np.full(self.out.shape, -1, np.int16)
        for k, window in self._offsets(Ho, Wo):
            np.copyto(found, k, where=(found < 0) & (self.xp[window] == self.out))
        return found

    def kinks(self):
        """Where each window's gradient went in the last forward (what gradcheck watches)."""
        return self.argmax_offsets()

    def _compiled_applies(self, H, W) -> bool:
        return (self.execution.compiled and self.kernel_size == (2, 2) and self.stride == (2, 2)
                and self.padding == (0, 0) and self.dilation == (1, 1) and H % 2 == 0 and W % 2 == 0
                and compiled_kernels() is not None)

    def backward(self, dout):
        """dout: (N, C, Ho, Wo) -> dx: (N, C, H, W), routed to the first maximum of each window
        (scanning the window row by row, as PyTorch does)."""
        N, H, W, C = self.in_shape
        Ho, Wo, Hp, Wp = self.geometry
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dh = _nhwc(dout)
        if self.first is not None:
            first, d = self.first, np.ascontiguousarray(dh)
            dx = np.empty((N, H, W, C), dout.dtype)
            kernel = compiled_kernels().maxpool2x2_backward
            self._over(lambda b0, b1: kernel(first[b0:b1], d[b0:b1], dx[b0:b1]), N, dx.size)
            self.first = None
            return _nchw(dx)
        # Windows that tile the (padded) input, like 2x2 with stride 2, touch every input once:
        # each offset's share is written straight into place, with no zeroing and no sums.
        tiling = (sh, sw) == (kh, kw) and self.dilation == (1, 1) and (Hp, Wp) == (Ho * sh, Wo * sw)
        dxp = np.empty((N, Hp, Wp, C), dout.dtype) if tiling else np.zeros((N, Hp, Wp, C), dout.dtype)

        block = max(1, (1 << 16) // (Ho * Wo * C))  # images whose masks stay in cache

        def route(b0, b1):
            for c0 in range(b0, b1, block):
                c1 = min(c0 + block, b1)
                d, o, xp, dx = dh[c0:c1], self.out[c0:c1], self.xp[c0:c1], dxp[c0:c1]
                hit, unrouted = np.empty(o.shape, bool), None  # windows whose maximum is still unfound
                for k, window in self._offsets(Ho, Wo):
                    np.equal(xp[window], o, out=hit)
                    if unrouted is None:
                        unrouted = ~hit
                    else:
                        hit &= unrouted
                        np.greater(unrouted, hit, out=unrouted)  # unrouted and not hit
                    if tiling:
                        np.multiply(d, hit, out=dx[window])
                    else:
                        dx[window] += d * hit

        self._over(route, N, dxp.size)
        self.xp = self.out = None
        return _nchw(dxp[:, ph:ph + H, pw:pw + W, :])


class AvgPool2d(_Pool2d):
    """Average pooling (torch.nn.AvgPool2d with count_include_pad=True).

    The divisor of a window counts the zero padding but not the part of a ceil_mode window
    that lies beyond the right padding, exactly as PyTorch does.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, execution: Execution | None = None):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, execution)

    def _divisor(self, H, W, Ho, Wo, dtype):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        hs = np.arange(Ho) * sh - ph
        ws = np.arange(Wo) * sw - pw
        rows = np.minimum(hs + kh, H + ph) - hs
        cols = np.minimum(ws + kw, W + pw) - ws
        return (rows[:, None] * cols[None, :]).astype(dtype)[None, :, :, None]  # (1, Ho, Wo, 1)

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, C, Ho, Wo)."""
        xh = _nhwc(x)
        N, H, W, C = xh.shape
        Ho, Wo, Hp, Wp = self._geometry(H, W)
        xp = self._padded(xh, Hp, Wp, 0)
        out = np.zeros((N, Ho, Wo, C), xh.dtype)
        for _, window in self._offsets(Ho, Wo):
            out += xp[window]
        self.divisor = self._divisor(H, W, Ho, Wo, xh.dtype)
        out /= self.divisor
        self.geometry, self.in_shape = (Ho, Wo, Hp, Wp), xh.shape
        return _nchw(out)

    def backward(self, dout):
        """dout: (N, C, Ho, Wo) -> dx: (N, C, H, W), each window's gradient shared evenly."""
        N, H, W, C = self.in_shape
        Ho, Wo, Hp, Wp = self.geometry
        ph, pw = self.padding
        share = _nhwc(dout) / self.divisor
        dxp = np.zeros((N, Hp, Wp, C), dout.dtype)
        for _, window in self._offsets(Ho, Wo):
            dxp[window] += share
        return _nchw(dxp[:, ph:ph + H, pw:pw + W, :])


# ----------------------------------------------------------------------------- activations
def _elementwise(fn, *arrays, threads: int):
    """fn(*slices, out=slice) over batch ranges in parallel on `threads`; out has the shape and
    memory layout of arrays[0]."""
    out = np.empty_like(arrays[0])

    def run(b0, b1):
        fn(*(a[b0:b1] for a in arrays), out=out[b0:b1])

    over_batch(run, len(out), out.size, threads=threads)
    return out


def _relu_backward(dout, y, out):
    np.multiply(dout, y > 0, out=out)


def _tanh_backward(dout, y, out):
    # grad h~ = (1 - tanh^2(h~)) * grad h: the practical's grad h~ line, element-wise
    np.multiply(y, y, out=out)
    np.subtract(1, out, out=out)
    out *= dout


class ReLU(Layer):
    """max(x, 0), element-wise; any shape."""

    def forward(self, x):
        self.out = _elementwise(lambda a, out: np.maximum(a, 0, out=out), x, threads=self.execution.threads)
        return self.out

    def backward(self, dout):
        return _elementwise(_relu_backward, dout, self.out, threads=self.execution.threads)

    def kinks(self):
        """Which inputs were above zero in the last forward (what gradcheck watches)."""
        return self.out > 0


class Tanh(Layer):
    """tanh, element-wise; any shape. The practical: h = tanh(h~), and dh/dh~ = 1 - tanh^2(h~)."""

    def forward(self, x):
        self.out = _elementwise(lambda a, out: np.tanh(a, out=out), x, threads=self.execution.threads)
        return self.out

    def backward(self, dout):
        return _elementwise(_tanh_backward, dout, self.out, threads=self.execution.threads)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), element-wise; computed without overflow for large |x|."""

    def forward(self, x):
        self.out = np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)
        return self.out

    def backward(self, dout):
        return dout * self.out * (1 - self.out)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in PyTorch's (C, H, W) order; other shapes: (N, ...) -> (N, -1)."""

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(self.in_shape)


class Dropout(Layer):
    """Inverted dropout (torch.nn.Dropout): in training, zero each element with probability p and
    scale the rest by 1/(1-p); identity in eval mode. Masks come from `self.rng`, a
    numpy Generator the owner sets (Sequential.set_rng)."""

    def __init__(self, p=0.5, execution: Execution | None = None):
        super().__init__(execution)
        self.p = float(p)
        self.rng = np.random.default_rng(0)

    def forward(self, x):
        if not self.training or self.p == 0:
            self.mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64) >= self.p
        self.mask = keep.astype(x.dtype) * x.dtype.type(1 / (1 - self.p))
        return x * self.mask

    def backward(self, dout):
        return dout if self.mask is None else dout * self.mask


class _BatchNorm(Layer):
    """Batch normalization over the channel axis (torch.nn.BatchNorm1d/2d conventions):
    batch statistics in training (biased variance to normalize, unbiased for the running
    estimate), running statistics in eval; running = (1 - momentum) * running + momentum * batch.

    In training, where Numba is installed and the execution allows them (`execution.compiled`),
    the compiled kernels of compiled.py
    run on C-contiguous rows: a few whole passes instead of the NumPy reference's many, with the
    per-channel sums in float64 (so equal to the reference to rounding, not to the bit)."""

    has_compiled_kernels = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32, execution: Execution | None = None):
        super().__init__(execution)
        self.eps, self.momentum = float(eps), float(momentum)
        self.params["weight"] = np.ones(num_features, dtype)
        self.params["bias"] = np.zeros(num_features, dtype)
        self.buffers["running_mean"] = np.zeros(num_features, dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype)
        self.buffers["num_batches_tracked"] = np.zeros((), np.int64)

    def _forward_2d(self, x):
        """x: (M, C) rows of channel values -> (M, C). Sums over rows run in parallel ranges."""
        gamma, beta = self.params["weight"], self.params["bias"]
        M, C = x.shape
        out = np.empty_like(x)
        if not self.training:
            scale = gamma / np.sqrt(self.buffers["running_var"] + self.eps)
            shift = beta - self.buffers["running_mean"] * scale
            self._over(lambda r0, r1: np.add(x[r0:r1] * scale, shift, out=out[r0:r1]), M, x.size)
            self.centered, self.inv_std, self.eval_scale, self.mean = None, None, scale, None
            return out
        kernels = compiled_kernels() if self.execution.compiled and x.flags.c_contiguous else None
        if kernels is not None:
            return self._forward_compiled(x, out, kernels)
        # Element-wise work on rows of k*C numbers ("wide"), with the per-channel vectors tiled
        # k times: NumPy's loops are several times faster on long rows than on rows of C.
        k = _widening(M, C)
        xw, outw = x.reshape(M // k, k * C), out.reshape(M // k, k * C)
        centered = self._scratch("_centered", xw.shape, x.dtype)
        mean = _fold(ordered_sum(self._over(lambda r0, r1: _column_sums(xw[r0:r1]), len(xw), x.size)), C) / M
        mean_w = np.tile(mean, k)

        def center(r0, r1):
            total = 0
            for c0, c1 in _row_chunks(r0, r1, k * C):
                np.subtract(xw[c0:c1], mean_w, out=centered[c0:c1])
                total = total + _column_sums(np.square(centered[c0:c1]))
            return total

        var = _fold(ordered_sum(self._over(center, len(xw), x.size)), C) / M  # biased: used to normalize
        inv_std = 1 / np.sqrt(var + self.eps)
        scale_w, beta_w = np.tile(gamma * inv_std, k), np.tile(beta, k)

        def normalize(r0, r1):
            np.multiply(centered[r0:r1], scale_w, out=outw[r0:r1])
            outw[r0:r1] += beta_w

        self._over(normalize, len(xw), x.size)
        self._update_running(mean, var, M)
        # Backward needs xhat = centered * inv_std; keeping the centered values saves a pass.
        self.centered, self.inv_std, self.mean = centered, inv_std, None
        return out

    def _forward_compiled(self, x, out, kernels):
        """The training forward by compiled.py's kernels: sums, centered squares, normalize."""
        M, dtype = len(x), x.dtype
        mean64 = ordered_sum(self._over(lambda r0, r1: kernels.batchnorm_sums(x[r0:r1]), M, x.size)) / M
        var64 = ordered_sum(self._over(lambda r0, r1: kernels.batchnorm_sums(x[r0:r1], mean64), M, x.size)) / M
        mean, var = mean64.astype(dtype), var64.astype(dtype)
        inv_std = 1 / np.sqrt(var + self.eps)
        scale, beta = self.params["weight"] * inv_std, self.params["bias"]
        self._over(lambda r0, r1: kernels.batchnorm_normalize(x[r0:r1], mean, scale, beta, out[r0:r1]), M, x.size)
        self._update_running(mean, var, M)
        # Backward recomputes x - mean from x (kept in x2d), which costs less than storing it.
        self.centered, self.inv_std, self.mean = None, inv_std, mean
        return out

    def _update_running(self, mean, var, M):
        m = self.momentum
        self.buffers["running_mean"] *= 1 - m
        self.buffers["running_mean"] += m * mean
        self.buffers["running_var"] *= 1 - m
        self.buffers["running_var"] += m * var * (M / max(M - 1, 1))  # unbiased, as PyTorch keeps it
        self.buffers["num_batches_tracked"] += 1

    def _backward_2d(self, dout):
        """dout: (M, C) -> dx: (M, C); grads weight and bias (C,)."""
        gamma = self.params["weight"]
        if self.mean is not None:
            return self._backward_compiled(dout)
        if self.centered is None:  # eval mode: an affine map
            self._set_grad("bias", [dout.sum(axis=0)])
            xhat = (self.x2d - self.buffers["running_mean"]) / np.sqrt(self.buffers["running_var"] + self.eps)
            self._set_grad("weight", [(dout * xhat).sum(axis=0)])
            return dout * self.eval_scale
        centered, inv_std, (M, C) = self.centered, self.inv_std, dout.shape
        k = centered.shape[1] // C
        dout_w = np.ascontiguousarray(dout).reshape(M // k, k * C)

        def sums(r0, r1):
            dbeta = dcentered = 0
            for c0, c1 in _row_chunks(r0, r1, k * C):
                dbeta = dbeta + _column_sums(dout_w[c0:c1])
                dcentered = dcentered + _column_sums(dout_w[c0:c1] * centered[c0:c1])
            return dbeta, dcentered

        parts = self._over(sums, len(dout_w), dout.size)
        dbeta = _fold(ordered_sum([p[0] for p in parts]), C)
        dgamma = _fold(ordered_sum([p[1] for p in parts]), C) * inv_std
        self._set_grad("bias", [dbeta])
        self._set_grad("weight", [dgamma])
        # d/dx of gamma * (x - mean) / std with mean and std taken over the same batch:
        # dx = gamma / std * (dout - mean(dout) - xhat * mean(dout * xhat))
        scale = gamma * inv_std
        scale_w, shift_w = np.tile(scale, k), np.tile(scale * dbeta / M, k)
        xhat_factor_w = np.tile(inv_std * dgamma / M, k)  # xhat * mean(dout * xhat) = centered * this
        dx = np.empty((M // k, k * C), dout.dtype)

        def run(r0, r1):
            for c0, c1 in _row_chunks(r0, r1, k * C):
                d = dx[c0:c1]
                np.multiply(centered[c0:c1], xhat_factor_w, out=d)
                np.subtract(dout_w[c0:c1], d, out=d)
                d *= scale_w
                d -= shift_w

        self._over(run, len(dout_w), dout.size)
        self.centered = None
        return dx.reshape(M, C)

    def _backward_compiled(self, dout):
        """The training backward by compiled.py's kernels (the same formula as _backward_2d)."""
        kernels, x, mean, inv_std = compiled_kernels(), self.x2d, self.mean, self.inv_std
        d, (M, C), dtype = np.ascontiguousarray(dout), dout.shape, dout.dtype
        parts = self._over(lambda r0, r1: kernels.batchnorm_backward_sums(x[r0:r1], mean, d[r0:r1]), M, d.size)
        dbeta = ordered_sum([p[0] for p in parts]).astype(dtype)
        dgamma = ordered_sum([p[1] for p in parts]).astype(dtype) * inv_std
        self._set_grad("bias", [dbeta])
        self._set_grad("weight", [dgamma])
        scale = self.params["weight"] * inv_std
        shift, xhat_factor = scale * dbeta / M, inv_std * dgamma / M
        dx = np.empty((M, C), dtype)
        self._over(lambda r0, r1: kernels.batchnorm_backward_dx(x[r0:r1], mean, d[r0:r1], xhat_factor, scale, shift,
                                                                dx[r0:r1]), M, d.size)
        self.mean = None
        return dx


def _widening(M: int, C: int) -> int:
    """The largest k, a power of two dividing M, with k*C at most about 1024."""
    k = 1
    while M % (2 * k) == 0 and 2 * k * C <= 1024:
        k *= 2
    return k


def _fold(wide_sums: np.ndarray, C: int) -> np.ndarray:
    """(k*C,) sums of wide rows -> (C,) per-channel sums."""
    return wide_sums.reshape(-1, C).sum(axis=0)


def _row_chunks(r0, r1, columns, elements=1 << 16):
    """Ranges of rows of about `elements` numbers, so that a chunk's temporaries stay in cache."""
    step = max(1, elements // max(columns, 1))
    for c0 in range(r0, r1, step):
        yield c0, min(c0 + step, r1)


class BatchNorm1d(_BatchNorm):
    def forward(self, x):
        """x: (N, C) -> (N, C)."""
        self.x2d = x
        return self._forward_2d(x)

    def backward(self, dout):
        return self._backward_2d(dout)


class BatchNorm2d(_BatchNorm):
    def forward(self, x):
        """x: (N, C, H, W) -> (N, C, H, W); statistics per channel over N, H and W."""
        xh = _nhwc(x)
        self.nhwc_shape = xh.shape
        self.x2d = xh.reshape(-1, xh.shape[3])
        return _nchw(self._forward_2d(self.x2d).reshape(self.nhwc_shape))

    def backward(self, dout):
        d2 = _nhwc(dout).reshape(-1, dout.shape[1])
        return _nchw(self._backward_2d(d2).reshape(self.nhwc_shape))
