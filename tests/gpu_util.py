"""Helpers for the GPU tests (import only from tests marked `gpu`)."""

from __future__ import annotations

import contextlib

import numpy

from cupy_dwconv import _kernels, _params, reference


def cupy():
    import cupy as cp

    return cp


def to_gpu(a):
    return cupy().asarray(a)


class NaNOutputs:
    """Replaces the library's output allocator: every buffer a kernel will write starts
    as NaN, so an element a kernel fails to write stays NaN and fails the comparison.
    `allocated` records the buffers, so a test can check its results are those buffers."""

    def __init__(self):
        self.allocated = []

    def __call__(self, cp, shape, dtype):
        a = cp.full(shape, numpy.nan, dtype=dtype)
        self.allocated.append(a)
        return a

    def owns(self, array):
        return any(array.data.ptr == a.data.ptr for a in self.allocated)


def reference_forward(x, w, b, **kw):
    """float64 reference on the exact (possibly 16-bit) input values."""
    return reference.depthwise_conv2d(
        x.astype(numpy.float64), w.astype(numpy.float64), None if b is None else b.astype(numpy.float64), **kw
    )


def reference_backward(go, x, w, **kw):
    return reference.depthwise_conv2d_backward(
        go.astype(numpy.float64), x.astype(numpy.float64), w.astype(numpy.float64), **kw
    )


def run_conv_launch(launch, x_g, w_g, b_g, out_shape, dtype):
    """Run one conv plan directly (any family, bypassing the heuristics) into a
    NaN-filled output; returns the output array."""
    cp = cupy()
    out = cp.full(out_shape, numpy.nan, dtype=dtype)
    dev = x_g.device.id
    launch(dev, (x_g, w_g, numpy.uint64(0) if b_g is None else b_g, out))
    return out


def forced_forward(x_g, w_g, b_g, p, dtype_name, kind, **kwargs):
    pr = _kernels.forward_problem(p)
    launch = _kernels.plan_conv(pr, dtype_name, x_g.data.ptr % 16, force=(kind, kwargs))
    if launch is None:
        return None, None
    return run_conv_launch(launch, x_g, w_g, b_g, p.out_shape, x_g.dtype), launch


def forced_grad_input(go_g, w_g, p, dtype_name, kind, **kwargs):
    pr = _kernels.grad_input_problem(p)
    launch = _kernels.plan_conv(pr, dtype_name, go_g.data.ptr % 16, force=(kind, kwargs))
    if launch is None:
        return None, None
    return run_conv_launch(launch, go_g, w_g, None, p.x_shape, go_g.dtype), launch


def forced_wgrad(x_g, go_g, p, dtype_name, force=None, reduce=None):
    """Both stages of a weight-gradient plan (`force` picks stage 1's family, `reduce` is
    passed to _kernels.reduce_launch to replace stage 2's plan)."""
    cp = cupy()
    s1, chunks, s2 = _kernels.plan_wgrad(p, dtype_name, x_g.data.ptr, go_g.data.ptr, force=force)
    if reduce is not None:
        s2 = _kernels.reduce_launch(p, dtype_name, chunks, **reduce)
    gw = cp.full(p.weight_shape, numpy.nan, dtype=x_g.dtype)
    gb = cp.full((p.CM,), numpy.nan, dtype=x_g.dtype)
    partial = cp.full((p.CM, chunks, p.KH * p.KW + 1), numpy.nan, dtype=_kernels.ACC_DTYPE[dtype_name])
    dev = x_g.device.id
    s1(dev, (x_g, go_g, partial))
    s2(dev, (partial, gw, gb))
    return gw, gb, s1 if reduce is None else s2


def forced_backward(x_g, go_g, w_g, p, dtype_name, reduce_kernel=False, **kwargs):
    """The fused backward with forced launch parameters, into NaN-filled outputs:
    (grad_x, grad_weight, grad_bias, stage-1 launch), or None where the kernel does not
    take the problem. The kernel finishes grad_weight and grad_bias itself, as the library
    runs it (fresh zeroed counters, checked to be zero again afterwards), or with
    `reduce_kernel` leaves that to its wgrad_reduce stage."""
    from cupy_dwconv import _api

    cp = cupy()
    plan = _kernels.plan_backward(p, dtype_name, x_g.data.ptr, go_g.data.ptr, force=kwargs)
    if plan is None:
        return None
    s1, chunks, s2 = plan
    gx = cp.full(p.x_shape, numpy.nan, dtype=x_g.dtype)
    gw = cp.full(p.weight_shape, numpy.nan, dtype=x_g.dtype)
    gb = cp.full((p.CM,), numpy.nan, dtype=x_g.dtype)
    partial = cp.full((p.CM, chunks, p.KH * p.KW + 1), numpy.nan, dtype=_kernels.ACC_DTYPE[dtype_name])
    dev = x_g.device.id
    if reduce_kernel:
        s1(dev, (x_g, go_g, w_g, gx, partial, _api._NULL, _api._NULL, _api._NULL))
        s2(dev, (partial, gw, gb))
    else:
        counters = cp.zeros((p.CM,), dtype=cp.uint32)
        s1(dev, (x_g, go_g, w_g, gx, partial, counters, gw, gb))
        assert int(counters.max()) == 0, "the closing step left a counter set"
    return gx, gw, gb, s1


@contextlib.contextmanager
def no_launch(monkeypatch):
    """Fail if any kernel plan is requested inside the block."""

    def boom(*a, **k):
        raise AssertionError("a kernel was planned for an empty problem")

    for name in ("plan_forward", "plan_grad_input", "plan_wgrad", "plan_backward"):
        monkeypatch.setattr(_kernels, name, boom)
    yield


def params(x_shape, w_shape, bias, stride, padding, dilation):
    return _params.conv_params(x_shape, w_shape, (w_shape[0],) if bias else None, stride, padding, dilation)


def random_cases(n, seed, dtypes, max_h, max_w, bias):
    """A seeded random grid of valid problems: kernels 1x1 .. 9x9 (asymmetric too),
    strides 1-3, dilations 1-3, padding int / pair / ((t, b), (l, r)) / 'same' / 'valid',
    multiplier 1-3, odd and even sizes, dtypes in rotation; bias on or off at random when
    `bias` is set."""
    rng = numpy.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        KH, KW = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        dh, dw = int(rng.choice([1, 1, 2, 3])), int(rng.choice([1, 1, 2, 3]))
        H, W = int(rng.integers(5, max_h)), int(rng.integers(5, max_w))
        kind = rng.integers(0, 5)
        if kind == 0:
            padding = int(rng.integers(0, 4))
        elif kind == 1:
            padding = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        elif kind == 2:
            padding = tuple((int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in range(2))
        elif kind == 3:
            padding, sh, sw = "same", 1, 1
        else:
            padding = "valid"
        c = dict(N=int(rng.integers(1, 4)), C=int(rng.integers(1, 6)), H=H, W=W, M=int(rng.integers(1, 4)),
                 KH=KH, KW=KW, stride=(sh, sw), padding=padding, dilation=(dh, dw),
                 dtype=dtypes[len(cases) % len(dtypes)])
        if bias:
            c["bias"] = bool(rng.integers(0, 2))
        try:
            _params.conv_params((c["N"], c["C"], H, W), (c["C"] * c["M"], 1, KH, KW), None,
                                c["stride"], padding, c["dilation"])
        except ValueError:
            continue  # the kernel does not fit: the error path is tested elsewhere
        cases.append(c)
    return cases


def case_id(c):
    return "{dtype}-{N}x{C}x{H}x{W}-M{M}-k{KH}x{KW}-s{stride}-p{padding}-d{dilation}".format(**c).replace(" ", "") + (
        f"-b{c['bias']}" if "bias" in c else "")
