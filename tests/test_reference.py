"""The NumPy reference (cupy_dwconv.reference) against independent oracles: explicit
Python loops on tiny float64 problems, scipy.signal.correlate2d, and finite differences."""

from __future__ import annotations

import itertools
import time
import zlib

import numpy
import pytest

from conftest import DTYPES, numpy_dtype, random_array
from cupy_dwconv import _params, reference

# ---------------------------------------------------------------------------------------
# Loop oracles: index arithmetic written out per output element, no padding buffer.


def _norm(x_shape, w_shape, stride, padding, dilation):
    return _params.conv_params(x_shape, w_shape, None, stride, padding, dilation)


def loop_forward(x, w, b, stride, padding, dilation):
    p = _norm(x.shape, w.shape, stride, padding, dilation)
    out = numpy.zeros(p.out_shape)
    for n, o, oh, ow in itertools.product(range(p.N), range(p.CM), range(p.OH), range(p.OW)):
        c = o // p.M
        acc = 0.0 if b is None else float(b[o])
        for kh in range(p.KH):
            ih = oh * p.SH - p.PT + kh * p.DH
            if not 0 <= ih < p.H:
                continue
            for kw in range(p.KW):
                iw = ow * p.SW - p.PL + kw * p.DW
                if 0 <= iw < p.W:
                    acc += float(x[n, c, ih, iw]) * float(w[o, 0, kh, kw])
        out[n, o, oh, ow] = acc
    return out


def loop_backward(go, x, w, stride, padding, dilation):
    p = _norm(x.shape, w.shape, stride, padding, dilation)
    gx = numpy.zeros(p.x_shape)
    gw = numpy.zeros(p.weight_shape)
    gb = numpy.zeros(p.CM)
    for n, o, oh, ow in itertools.product(range(p.N), range(p.CM), range(p.OH), range(p.OW)):
        c = o // p.M
        g = float(go[n, o, oh, ow])
        gb[o] += g
        for kh in range(p.KH):
            ih = oh * p.SH - p.PT + kh * p.DH
            if not 0 <= ih < p.H:
                continue
            for kw in range(p.KW):
                iw = ow * p.SW - p.PL + kw * p.DW
                if 0 <= iw < p.W:
                    gx[n, c, ih, iw] += g * float(w[o, 0, kh, kw])
                    gw[o, 0, kh, kw] += g * float(x[n, c, ih, iw])
    return gx, gw, gb


# ---------------------------------------------------------------------------------------
# The grid: every kernel meets every stride and dilation; padding, multiplier, bias and
# the input size rotate so that each of them meets many kernels.

KERNELS = [(1, 3), (3, 1), (2, 5), (3, 7), (2, 2), (1, 1)]
STRIDES = [1, 2, 3, (1, 2), (3, 1)]
DILATIONS = [1, 2, 3, (2, 1)]
PADDINGS = [0, ((1, 0), (2, 3)), "same", (2, 1), ((0, 2), (1, 0)), "valid"]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _grid():
    rng = numpy.random.default_rng(2024)  # fixed: the same grid on every run
    cases = []
    for kernel, stride, dilation in itertools.product(KERNELS, STRIDES, DILATIONS):
        padding = PADDINGS[rng.integers(len(PADDINGS))]
        if padding == "same" and stride != 1:
            padding = ((1, 1), (0, 2))
        m = int(rng.integers(1, 4))
        bias = bool(rng.integers(2))
        (kh, kw), (dh, dw) = kernel, _pair(dilation)
        # A few rows / columns more than the dilated kernel: odd and even sizes.
        h = dh * (kh - 1) + 1 + int(rng.integers(0, 5))
        w = dw * (kw - 1) + 1 + int(rng.integers(0, 5))
        cases.append((kernel, stride, dilation, padding, m, bias, (h, w)))
    return cases


def _seed(*values):
    return zlib.crc32(repr(values).encode())


GRID = _grid()


def _ids(cases):
    return [f"k{k[0]}x{k[1]}-s{s}-d{d}-p{p}-m{m}-{'b' if b else 'nb'}-{hw[0]}x{hw[1]}" for k, s, d, p, m, b, hw in cases]


@pytest.mark.parametrize("kernel, stride, dilation, padding, m, bias, hw", GRID, ids=_ids(GRID))
def test_forward_against_loops(kernel, stride, dilation, padding, m, bias, hw):
    rng = numpy.random.default_rng(_seed(kernel, stride, dilation, padding, m, bias, hw))
    n, c = 2, 2
    x = random_array(rng, (n, c) + hw, "float64")
    w = random_array(rng, (c * m, 1) + kernel, "float64")
    b = random_array(rng, (c * m,), "float64") if bias else None
    out = reference.depthwise_conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    expected = loop_forward(x, w, b, stride, padding, dilation)
    assert out.dtype == numpy.float64
    assert out.shape == expected.shape
    numpy.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kernel, stride, dilation, padding, m, bias, hw", GRID[::2], ids=_ids(GRID[::2]))
def test_backward_against_loops(kernel, stride, dilation, padding, m, bias, hw):
    rng = numpy.random.default_rng(_seed(kernel, stride, dilation, padding, m, bias, hw))
    n, c = 2, 2
    x = random_array(rng, (n, c) + hw, "float64")
    w = random_array(rng, (c * m, 1) + kernel, "float64")
    p = _norm(x.shape, w.shape, stride, padding, dilation)
    go = random_array(rng, p.out_shape, "float64")
    gx, gw, gb = reference.depthwise_conv2d_backward(go, x, w, stride=stride, padding=padding, dilation=dilation)
    egx, egw, egb = loop_backward(go, x, w, stride, padding, dilation)
    for got, exp in ((gx, egx), (gw, egw), (gb, egb)):
        assert got.dtype == numpy.float64 and got.shape == exp.shape
        numpy.testing.assert_allclose(got, exp, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# scipy.signal.correlate2d, per channel (stride 1, dilation 1)


@pytest.mark.parametrize(
    "kernel, padding, m, bias",
    [
        ((3, 3), 1, 1, True),
        ((1, 7), (0, 3), 2, False),
        ((7, 1), ((3, 3), (0, 0)), 1, True),
        ((3, 7), 0, 3, True),
        ((5, 2), "same", 2, False),
        ((4, 4), "same", 1, True),
        ((2, 5), ((0, 3), (4, 1)), 3, True),
        ((7, 7), 3, 1, False),
    ],
)
def test_forward_against_scipy(kernel, padding, m, bias):
    signal = pytest.importorskip("scipy.signal", reason="the comparison with correlate2d needs scipy")
    rng = numpy.random.default_rng(_seed(kernel, padding, m, bias))
    n, c, h, w_ = 2, 3, 19, 23
    x = random_array(rng, (n, c, h, w_), "float64")
    w = random_array(rng, (c * m, 1) + kernel, "float64")
    b = random_array(rng, (c * m,), "float64") if bias else None
    out = reference.depthwise_conv2d(x, w, b, stride=1, padding=padding)
    p = _norm(x.shape, w.shape, 1, padding, 1)
    xp = numpy.pad(x, ((0, 0), (0, 0), (p.PT, p.PB), (p.PL, p.PR)))
    expected = numpy.empty(p.out_shape)
    for i in range(n):
        for o in range(c * m):
            expected[i, o] = signal.correlate2d(xp[i, o // m], w[o, 0], mode="valid") + (0.0 if b is None else b[o])
    numpy.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Finite differences (float64): the function is linear in each argument, so central
# differences are exact up to rounding.


@pytest.mark.parametrize(
    "kernel, stride, dilation, padding, m",
    [((3, 3), 1, 1, 1, 1), ((2, 3), (2, 1), (1, 2), ((1, 0), (2, 1)), 2), ((3, 2), 3, 2, 2, 3), ((2, 2), 1, 1, "same", 1)],
)
def test_backward_finite_differences(kernel, stride, dilation, padding, m):
    rng = numpy.random.default_rng(_seed(kernel, stride, dilation, padding, m))
    x = random_array(rng, (2, 2, 6, 7), "float64")
    w = random_array(rng, (2 * m, 1) + kernel, "float64")
    b = random_array(rng, (2 * m,), "float64")
    p = _norm(x.shape, w.shape, stride, padding, dilation)
    g = random_array(rng, p.out_shape, "float64")  # loss = sum(g * forward)

    def loss(x_, w_, b_):
        return float((reference.depthwise_conv2d(x_, w_, b_, stride, padding, dilation) * g).sum())

    gx, gw, gb = reference.depthwise_conv2d_backward(g, x, w, stride, padding, dilation)
    eps = 1e-3
    for name, arr, grad in (("x", x, gx), ("weight", w, gw), ("bias", b, gb)):
        fd = numpy.empty(arr.shape)
        for idx in numpy.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = {"x": x, "weight": w, "bias": b}
            args_m = dict(args_p)
            args_p[name], args_m[name] = plus, minus
            fd[idx] = (loss(args_p["x"], args_p["weight"], args_p["bias"]) - loss(args_m["x"], args_m["weight"], args_m["bias"])) / (2 * eps)
        numpy.testing.assert_allclose(grad, fd, rtol=1e-8, atol=1e-8, err_msg=f"grad of {name}")


# ---------------------------------------------------------------------------------------
# needs, empty shapes, dtypes, layouts


@pytest.mark.parametrize("needs", list(itertools.product([False, True], repeat=3)))
def test_needs(needs):
    rng = numpy.random.default_rng(7)
    x = random_array(rng, (2, 3, 8, 9), "float64")
    w = random_array(rng, (6, 1, 3, 2), "float64")
    go = random_array(rng, (2, 6, 8, 9), "float64")
    full = reference.depthwise_conv2d_backward(go, x, w, 1, "same", 1)
    got = reference.depthwise_conv2d_backward(go, x, w, 1, "same", 1, needs=needs)
    for want, g, f in zip(needs, got, full):
        if want:
            numpy.testing.assert_array_equal(g, f)
        else:
            assert g is None


def test_empty_batch():
    rng = numpy.random.default_rng(8)
    x = random_array(rng, (0, 3, 8, 9), "float32")
    w = random_array(rng, (6, 1, 3, 3), "float32")
    b = random_array(rng, (6,), "float32")
    out = reference.depthwise_conv2d(x, w, b, padding=1)
    assert out.shape == (0, 6, 8, 9) and out.dtype == numpy.float32
    go = numpy.empty((0, 6, 8, 9), numpy.float32)
    gx, gw, gb = reference.depthwise_conv2d_backward(go, x, w, padding=1)
    assert gx.shape == (0, 3, 8, 9) and gx.dtype == numpy.float32
    assert gw.shape == (6, 1, 3, 3) and gw.dtype == numpy.float32 and not gw.any()
    assert gb.shape == (6,) and gb.dtype == numpy.float32 and not gb.any()


def test_empty_channels():
    rng = numpy.random.default_rng(9)
    x = random_array(rng, (2, 0, 8, 9), "float64")
    w = random_array(rng, (0, 1, 3, 3), "float64")
    out = reference.depthwise_conv2d(x, w, stride=2)
    assert out.shape == (2, 0, 3, 4)
    gx, gw, gb = reference.depthwise_conv2d_backward(numpy.empty((2, 0, 3, 4)), x, w, stride=2)
    assert gx.shape == (2, 0, 8, 9) and gw.shape == (0, 1, 3, 3) and gb.shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtypes(dtype):
    """Float64 arithmetic, one rounding to x's dtype at the end."""
    rng = numpy.random.default_rng(10)
    x = random_array(rng, (2, 4, 9, 11), dtype)
    w = random_array(rng, (8, 1, 3, 5), dtype)
    b = random_array(rng, (8,), dtype)
    out = reference.depthwise_conv2d(x, w, b, padding="same")
    assert out.dtype == numpy_dtype(dtype)
    ref64 = reference.depthwise_conv2d(x.astype(numpy.float64), w.astype(numpy.float64), b.astype(numpy.float64), padding="same")
    numpy.testing.assert_array_equal(out, ref64.astype(numpy_dtype(dtype)))

    go = random_array(rng, out.shape, dtype)
    grads = reference.depthwise_conv2d_backward(go, x, w, padding="same")
    grads64 = reference.depthwise_conv2d_backward(
        go.astype(numpy.float64), x.astype(numpy.float64), w.astype(numpy.float64), padding="same"
    )
    for g, g64 in zip(grads, grads64):
        assert g.dtype == numpy_dtype(dtype)
        numpy.testing.assert_array_equal(g, g64.astype(numpy_dtype(dtype)))


def test_non_contiguous_inputs():
    rng = numpy.random.default_rng(11)
    x = random_array(rng, (2, 9, 3, 10), "float32").transpose(0, 2, 1, 3)[:, :, 1:8, ::2]
    w = random_array(rng, (3, 2, 5, 1), "float32").transpose(0, 3, 2, 1)[:, :, :, ::-1]
    b = random_array(rng, (6,), "float32")[::2]
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or b.flags.c_contiguous)
    out = reference.depthwise_conv2d(x, w, b, padding=(2, 1))
    expected = reference.depthwise_conv2d(*(numpy.ascontiguousarray(a) for a in (x, w, b)), padding=(2, 1))
    numpy.testing.assert_array_equal(out, expected)
    go = random_array(rng, out.shape[::-1], "float32").T
    got = reference.depthwise_conv2d_backward(go, x, w, padding=(2, 1))
    exp = reference.depthwise_conv2d_backward(*(numpy.ascontiguousarray(a) for a in (go, x, w)), padding=(2, 1))
    for g, e in zip(got, exp):
        numpy.testing.assert_array_equal(g, e)


def test_forward_is_vectorized():
    """A guard against per-element Python loops, not a benchmark."""
    rng = numpy.random.default_rng(12)
    x = random_array(rng, (4, 32, 64, 64), "float32")
    w = random_array(rng, (32, 1, 7, 7), "float32")
    b = random_array(rng, (32,), "float32")
    t0 = time.perf_counter()
    out = reference.depthwise_conv2d(x, w, b, padding="same")
    elapsed = time.perf_counter() - t0
    assert out.shape == (4, 32, 64, 64)
    assert elapsed < 1.0, f"reference forward took {elapsed:.2f} s"


def test_backward_is_vectorized():
    rng = numpy.random.default_rng(13)
    x = random_array(rng, (4, 32, 64, 64), "float32")
    w = random_array(rng, (32, 1, 7, 7), "float32")
    go = random_array(rng, (4, 32, 64, 64), "float32")
    t0 = time.perf_counter()
    gx, gw, gb = reference.depthwise_conv2d_backward(go, x, w, padding="same")
    elapsed = time.perf_counter() - t0
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (32,)
    assert elapsed < 3.0, f"reference backward took {elapsed:.2f} s"


# ---------------------------------------------------------------------------------------
# Argument errors specific to the reference (the shared ones are in test_params.py)


class _FakeGpuArray:
    """Looks like a CuPy array by module name only."""

    __module__ = "cupy._core.core"


@pytest.mark.parametrize("bad", [[[1.0]], 1.0, None, _FakeGpuArray()])
@pytest.mark.parametrize("position", ["x", "weight", "bias"])
def test_forward_refuses_non_numpy(bad, position):
    if bad is None and position == "bias":
        return  # bias=None is valid
    rng = numpy.random.default_rng(14)
    args = dict(
        x=random_array(rng, (1, 2, 5, 5), "float32"),
        weight=random_array(rng, (2, 1, 3, 3), "float32"),
        bias=random_array(rng, (2,), "float32"),
    )
    args[position] = bad
    with pytest.raises(TypeError, match=rf"^{position}: expected a numpy\.ndarray") as info:
        reference.depthwise_conv2d(**args)
    assert type(bad).__name__ in str(info.value)
    if isinstance(bad, _FakeGpuArray):
        assert "cupy_dwconv.depthwise_conv2d" in str(info.value)


@pytest.mark.parametrize("position", ["grad_output", "x", "weight"])
def test_backward_refuses_non_numpy(position):
    rng = numpy.random.default_rng(15)
    args = dict(
        grad_output=random_array(rng, (1, 2, 3, 3), "float32"),
        x=random_array(rng, (1, 2, 5, 5), "float32"),
        weight=random_array(rng, (2, 1, 3, 3), "float32"),
    )
    args[position] = args[position].tolist()
    with pytest.raises(TypeError, match=rf"^{position}: expected a numpy\.ndarray, got list"):
        reference.depthwise_conv2d_backward(**args)


def test_reference_reports_argument_errors():
    rng = numpy.random.default_rng(16)
    x = random_array(rng, (1, 2, 5, 5), "float32")
    w = random_array(rng, (2, 1, 3, 3), "float32")
    with pytest.raises(TypeError, match=r"weight: expected dtype float32 \(the dtype of x\), got float64"):
        reference.depthwise_conv2d(x, w.astype(numpy.float64))
    with pytest.raises(TypeError, match=r"x: expected dtype .*got int32"):
        reference.depthwise_conv2d(x.astype(numpy.int32), w.astype(numpy.int32))
    with pytest.raises(TypeError, match=r"stride\[1\]: expected an int, got True \(bool\)"):
        reference.depthwise_conv2d(x, w, stride=(1, True))
    with pytest.raises(TypeError, match=r"needs: expected a tuple of three bools"):
        reference.depthwise_conv2d_backward(random_array(rng, (1, 2, 3, 3), "float32"), x, w, needs=(1, 1, 1))
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(1, 2, 3, 3\)"):
        reference.depthwise_conv2d_backward(random_array(rng, (1, 2, 5, 5), "float32"), x, w)
