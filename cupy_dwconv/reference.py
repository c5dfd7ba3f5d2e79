"""NumPy reference for depthwise 2-D convolution: the oracle the CUDA kernels are checked against.

Same signatures as the GPU functions, on NumPy arrays. Arithmetic is float64 whatever
the input dtype; results are returned in x's dtype. Vectorized per kernel tap: one
strided slice of the padded input per (kh, kw), so the cost is KH*KW passes over the
output. Never imports cupy.
"""

from __future__ import annotations

import numpy

from . import _params

__all__ = ["depthwise_conv2d", "depthwise_conv2d_backward"]


def _as_numpy(value, name):
    if not isinstance(value, numpy.ndarray):
        kind = type(value).__module__.split(".")[0]
        if kind in ("cupy", "torch", "jax", "jaxlib"):
            raise TypeError(
                f"{name}: expected a numpy.ndarray (the reference runs on the CPU), got a {type(value).__module__}."
                f"{type(value).__name__}; use cupy_dwconv.depthwise_conv2d for GPU arrays or convert with .get() / numpy.asarray"
            )
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(value).__name__}")
    return value


def _tap_slices(p, kh, kw):
    """Slices of the padded input read by tap (kh, kw) for every output position."""
    h0 = kh * p.DH
    w0 = kw * p.DW
    return (
        slice(h0, h0 + (p.OH - 1) * p.SH + 1, p.SH),
        slice(w0, w0 + (p.OW - 1) * p.SW + 1, p.SW),
    )


def _padded(x64, p):
    return numpy.pad(x64, ((0, 0), (0, 0), (p.PT, p.PB), (p.PL, p.PR)))


def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise 2-D convolution on NumPy arrays (float64 accumulation).

    x: (N, C, H, W); weight: (C*M, 1, KH, KW); bias: (C*M,) or None
    -> (N, C*M, OH, OW) in x's dtype. Output channel o reads input channel o // M;
    equal to torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups=C).
    """
    x = _as_numpy(x, "x")
    weight = _as_numpy(weight, "weight")
    if bias is not None:
        bias = _as_numpy(bias, "bias")
    _params.check_dtypes(x=x.dtype, weight=weight.dtype, bias=None if bias is None else bias.dtype)
    p = _params.conv_params(
        x.shape,
        weight.shape,
        None if bias is None else bias.shape,
        stride,
        padding,
        dilation,
    )
    out = numpy.zeros(p.out_shape, numpy.float64)
    if out.size:
        # Repeat each input channel M times so that channel o of xr is input channel o // M.
        xr = _padded(x.astype(numpy.float64), p)[:, numpy.arange(p.CM) // p.M]
        w64 = weight.astype(numpy.float64)
        for kh in range(p.KH):
            for kw in range(p.KW):
                sh, sw = _tap_slices(p, kh, kw)
                out += xr[:, :, sh, sw] * w64[None, :, 0, kh, kw, None, None]
        if bias is not None:
            out += bias.astype(numpy.float64)[None, :, None, None]
    return out.astype(x.dtype, copy=False)


def depthwise_conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, needs=(True, True, True)):
    """Gradients of depthwise_conv2d with respect to x, weight and bias (float64 accumulation).

    grad_output: (N, C*M, OH, OW); x: (N, C, H, W); weight: (C*M, 1, KH, KW)
    -> (grad_x (N, C, H, W), grad_weight (C*M, 1, KH, KW), grad_bias (C*M,)), each in x's
    dtype, or None where `needs` says False.
    """
    grad_output = _as_numpy(grad_output, "grad_output")
    x = _as_numpy(x, "x")
    weight = _as_numpy(weight, "weight")
    needs = _params.check_needs(needs)
    _params.check_dtypes(x=x.dtype, weight=weight.dtype, grad_output=grad_output.dtype)
    p = _params.backward_params(
        grad_output.shape,
        x.shape,
        weight.shape,
        stride,
        padding,
        dilation,
    )
    go = grad_output.astype(numpy.float64)
    w64 = weight.astype(numpy.float64)
    gx = gw = gb = None
    if needs[0]:
        # Scatter every tap back onto the padded input, then fold the M copies of each channel.
        gxp = numpy.zeros((p.N, p.CM, p.H + p.PT + p.PB, p.W + p.PL + p.PR))
        if go.size:
            for kh in range(p.KH):
                for kw in range(p.KW):
                    sh, sw = _tap_slices(p, kh, kw)
                    gxp[:, :, sh, sw] += go * w64[None, :, 0, kh, kw, None, None]
        gxp = gxp.reshape(p.N, p.C, p.M, *gxp.shape[2:]).sum(axis=2)
        gx = gxp[:, :, p.PT : p.PT + p.H, p.PL : p.PL + p.W].astype(x.dtype)
    if needs[1]:
        gw = numpy.zeros(p.weight_shape)
        if go.size:
            xr = _padded(x.astype(numpy.float64), p)[:, numpy.arange(p.CM) // p.M]
            for kh in range(p.KH):
                for kw in range(p.KW):
                    sh, sw = _tap_slices(p, kh, kw)
                    gw[:, 0, kh, kw] = numpy.einsum("nchw,nchw->c", go, xr[:, :, sh, sw])
        gw = gw.astype(x.dtype)
    if needs[2]:
        gb = go.sum(axis=(0, 2, 3)).astype(x.dtype)
    return gx, gw, gb
