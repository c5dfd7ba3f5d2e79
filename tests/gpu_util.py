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


def to_host64(a):
    return cupy().asnumpy(a).astype(numpy.float64)


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


def forced_wgrad(x_g, go_g, p, dtype_name, force=None):
    cp = cupy()
    s1, chunks, s2 = _kernels.plan_wgrad(p, dtype_name, x_g.data.ptr % 16 == 0, go_g.data.ptr % 16 == 0, force=force)
    gw = cp.full(p.weight_shape, numpy.nan, dtype=x_g.dtype)
    gb = cp.full((p.CM,), numpy.nan, dtype=x_g.dtype)
    partial = cp.full((p.CM, chunks, p.KH * p.KW + 1), numpy.nan, dtype=_kernels.ACC_DTYPE[dtype_name])
    dev = x_g.device.id
    s1(dev, (x_g, go_g, partial))
    s2(dev, (partial, gw, gb))
    return gw, gb, s1


@contextlib.contextmanager
def no_launch(monkeypatch):
    """Fail if any kernel plan is requested inside the block."""

    def boom(*a, **k):
        raise AssertionError("a kernel was planned for an empty problem")

    for name in ("plan_forward", "plan_grad_input", "plan_wgrad"):
        monkeypatch.setattr(_kernels, name, boom)
    yield


def params(x_shape, w_shape, bias, stride, padding, dilation):
    return _params.conv_params(x_shape, w_shape, (w_shape[0],) if bias else None, stride, padding, dilation)
