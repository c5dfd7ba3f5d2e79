"""GPU backward pass (grad input, grad weight, grad bias) against the float64 reference,
a float64 finite-difference check, determinism, every kernel family, layouts and edges."""

from __future__ import annotations

import math
import zlib

import numpy
import pytest

from conftest import DTYPES, assert_close, random_array
from gpu_util import case_id, random_cases

pytestmark = pytest.mark.gpu


def _check(rng, N, C, H, W, M, KH, KW, stride, padding, dilation, dtype, needs=(True, True, True), go_view=None):
    import cupy

    import cupy_dwconv
    from cupy_dwconv import _api
    from gpu_util import params, reference_backward, to_gpu

    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C * M, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, stride, padding, dilation)
    go = random_array(rng, p.out_shape, dtype)
    ref = reference_backward(go, x, w, stride=stride, padding=padding, dilation=dilation, needs=needs)
    gog = to_gpu(go)
    if go_view == "strided":
        big = cupy.asarray(random_array(rng, p.out_shape[:3] + (2 * p.OW,), dtype))
        big[..., ::2] = gog
        gog = big[..., ::2]
        assert not gog.flags.c_contiguous
    gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(
        gog, to_gpu(x), to_gpu(w), stride=stride, padding=padding, dilation=dilation, needs=needs
    )
    terms = N * p.OH * p.OW
    for got, exp, n, what, scale in (
        (gx, ref[0], needs[0], "grad_x", math.sqrt(KH * KW * M)),
        (gw, ref[1], needs[1], "grad_weight", math.sqrt(terms)),
        (gb, ref[2], needs[2], "grad_bias", math.sqrt(terms)),
    ):
        if not n:
            assert got is None
            continue
        assert got.dtype == x.dtype and got.flags.c_contiguous and _api._new_output.owns(got)
        assert_close(got.get(), exp, dtype, scale=scale, what=what)
    return p


RANDOM_CASES = random_cases(120, 4321, DTYPES, max_h=36, max_w=60, bias=False)


@pytest.mark.parametrize("c", RANDOM_CASES, ids=case_id)
def test_random_grid(c):
    _check(numpy.random.default_rng(zlib.crc32(str(c).encode())), **c)


SUITE_LIKE = [
    (2, 4, 128, 256, 3, 7, 1, 0, 1),
    (2, 6, 56, 56, 3, 3, 1, 1, 1),
    (2, 4, 112, 112, 3, 3, 2, 1, 1),
    (2, 5, 28, 28, 5, 5, 1, 2, 1),
    (2, 4, 56, 56, 5, 5, 2, 2, 1),
    (2, 4, 56, 56, 7, 7, 1, 3, 1),
    (3, 16, 7, 7, 7, 7, 1, 3, 1),
    (2, 8, 17, 17, 1, 7, 1, (0, 3), 1),
    (2, 4, 64, 64, 3, 3, 1, 2, 2),
    (2, 4, 28, 28, 13, 13, 1, 6, 1),
    (1, 3, 56, 56, 31, 31, 1, 15, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SUITE_LIKE, ids=str)
def test_suite_like(shape, dtype):
    N, C, H, W, KH, KW, s, pad, d = shape
    _check(numpy.random.default_rng(17), N, C, H, W, 1, KH, KW, s, pad, d, dtype)


@pytest.mark.parametrize(
    "shape,dtype",
    [((35, 13, 6), "float32"), ((35, 13, 6), "float64"), ((56, 31, 15), "float32")],
    ids=str,
)
def test_large_kernels_on_many_planes(shape, dtype):
    """The default plans of large kernels once there are planes for two blocks per SM:
    conv_lines with several planes per block, an odd number of planes leaving the last
    block partly empty; forward, grad input and grad weight against the reference."""
    import cupy

    import cupy_dwconv
    from cupy_dwconv import _kernels
    from gpu_util import params, reference_forward, to_gpu

    hw, k, pad = shape
    sms = _kernels.current_sms()
    N, C = 3, -(-2 * sms // 3) | 1  # 3 x odd channels: an odd number of planes >= 2 x SMs
    rng = numpy.random.default_rng(23)
    x = random_array(rng, (N, C, hw, hw), dtype)
    w = random_array(rng, (C, 1, k, k), dtype)
    b = random_array(rng, (C,), dtype)
    p = params(x.shape, w.shape, True, 1, pad, 1)
    launch = _kernels.plan_forward(p, dtype, 0)
    name, args = _kernels.split_expr(launch.expr)
    assert name == "conv_lines"
    assert launch.grid[0] < N * C  # several planes per block
    y = cupy_dwconv.depthwise_conv2d(to_gpu(x), to_gpu(w), to_gpu(b), padding=pad)
    assert_close(y.get(), reference_forward(x, w, b, padding=pad), dtype, scale=k, what="forward")
    _check(rng, N, C, hw, hw, 1, k, k, 1, pad, 1, dtype)


# Default plans chosen from the breadth check beyond the suite (benchmarks/wide.py): large
# kernels on small planes (conv_batch forward and grad input, bwd_batch backward; float32
# past 169 taps keeps the split backward), 16-bit backward rows of at most 32 columns
# (bwd_rows at 3 blocks per SM: 2 columns per lane on rows of partial 8-byte vectors, 4 on
# whole ones), 16-bit rows that take scalar loads (conv_rows at 2 columns per lane up to 9
# taps, 4 beyond), one-row float32 kernels (conv_tile rows of 8), float16 tiles on small
# planes (bwd_tile 2x4 at 3 blocks per SM where bwd_rows declines; the strided grad
# input's 4x4 tiles, checked in test_breadth_strided_half_grad_input). Each case asserts the
# plan, then checks the forward (with bias) and all three gradients against the reference.
BREADTH_CASES = [
    # (N, C, H, W, KH, KW, padding), dtype, forward (family, {argument index: value}), fused backward family
    ((5, 8, 7, 7, 13, 13, 6), "float32", ("conv_batch", {}), "bwd_batch"),
    ((5, 6, 7, 7, 13, 13, 6), "float16", ("conv_batch", {}), "bwd_batch"),
    ((3, 4, 14, 14, 27, 27, 13), "bfloat16", ("conv_batch", {}), "bwd_batch"),
    ((3, 4, 14, 14, 27, 27, 13), "float32", ("conv_batch", {}), None),
    ((3, 5, 16, 16, 9, 9, 4), "float32", ("conv_batch", {}), "bwd_batch"),
    ((3, 5, 14, 14, 3, 3, 1), "float16", ("conv_plane", {}), ("bwd_rows", {1: 2, 12: 3})),
    ((3, 5, 20, 20, 3, 3, 1), "float16", ("conv_rows_async", {}), ("bwd_rows", {1: 4, 12: 3})),
    ((3, 5, 14, 14, 3, 3, 1), "bfloat16", ("conv_plane", {}), ("bwd_rows", {1: 2, 12: 3})),
    ((2, 3, 33, 47, 3, 3, 1), "float16", ("conv_rows", {1: 2}), None),
    ((2, 3, 20, 255, 3, 7, 1), "bfloat16", ("conv_rows", {1: 4}), None),
    ((2, 3, 16, 100, 1, 31, (0, 15)), "float32", ("conv_tile", {8: 1, 9: 8}), "bwd_rows"),
    ((32, 2, 17, 17, 7, 1, (3, 0)), "float16", ("conv_plane", {}), ("bwd_tile", {7: 2, 8: 4, 13: 3, 14: 0})),
    ((32, 2, 17, 17, 1, 7, (0, 3)), "float16", ("conv_plane", {}), ("bwd_tile", {7: 2, 8: 4, 13: 3, 14: 0})),
    ((32, 2, 17, 17, 7, 1, (3, 0)), "bfloat16", ("conv_plane", {}), ("bwd_tile", {7: 2, 8: 4, 13: 3, 14: 0})),
    ((64, 2, 13, 13, 3, 3, 1), "bfloat16", ("conv_plane", {}), ("bwd_tile", {7: 2, 8: 4, 13: 3, 14: 0})),
]


def _family_args(expr, want):
    from cupy_dwconv import _kernels

    name, args = _kernels.split_expr(expr)
    family, fixed = (want, {}) if isinstance(want, str) else want
    return name == family and all(args[i] == str(v) for i, v in fixed.items())


def _check_default_plans(N, C, H, W, KH, KW, s, pad, dtype, forward, backward, seed_key):
    """The dispatcher's forward plan asserted (`forward`: see _family_args) and, unless
    `backward` is Ellipsis, its fused backward plan (None: the split path); then the
    forward with bias and all three gradients against the reference."""
    import cupy_dwconv
    from cupy_dwconv import _kernels
    from gpu_util import params, reference_forward, to_gpu

    rng = numpy.random.default_rng(zlib.crc32(seed_key.encode()))
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C, 1, KH, KW), dtype)
    b = random_array(rng, (C,), dtype)
    p = params(x.shape, w.shape, True, s, pad, 1)
    xg, wg, bg = to_gpu(x), to_gpu(w), to_gpu(b)
    launch = _kernels.plan_forward(p, dtype, xg.data.ptr)
    assert _family_args(launch.expr, forward), launch.expr
    if backward is not Ellipsis:
        fused = _kernels.plan_backward(p, dtype, xg.data.ptr, 0)
        if backward is None:
            assert fused is None, fused[0].expr
        else:
            assert fused is not None and _family_args(fused[0].expr, backward), fused and fused[0].expr
    y = cupy_dwconv.depthwise_conv2d(xg, wg, bg, stride=s, padding=pad)
    ref = reference_forward(x, w, b, stride=s, padding=pad)
    assert_close(y.get(), ref, dtype, scale=math.sqrt(KH * KW), what="forward")
    _check(rng, N, C, H, W, 1, KH, KW, s, pad, 1, dtype)


@pytest.mark.parametrize("shape,dtype,forward,backward", BREADTH_CASES, ids=str)
def test_breadth_default_plans(shape, dtype, forward, backward):
    _check_default_plans(*shape[:6], 1, shape[6], dtype, forward, backward, repr(shape))


# Strided forwards (the dispatcher's choice asserted, then the forward with bias and all
# three gradients against the reference): small input planes on conv_batch (float32: 4
# channels per unit) or 16-bit conv_plane (_kernels._strided_small), float64 on conv_tile;
# 16-bit 4x4 tiles at 3 blocks per SM without the prefetch on larger planes at stride 2
# (_kernels._strided_half_tiles; 2x4 at 400 outputs or fewer), 2x8 on 3x3 with wider rows
# and at stride 3.
STRIDED_FORWARD_CASES = [
    # (N, C, H, W, KH, KW, stride, padding), dtype, forward (family, {argument index: value})
    ((40, 4, 14, 14, 5, 5, 2, 2), "float32", ("conv_batch", {14: 4})),
    ((40, 3, 14, 14, 5, 5, 2, 2), "float16", ("conv_plane", {})),
    ((33, 3, 10, 10, 3, 3, 2, 1), "bfloat16", ("conv_plane", {})),
    ((35, 3, 20, 20, 3, 3, 2, 1), "bfloat16", ("conv_batch", {})),
    ((33, 5, 7, 7, 3, 3, 2, 1), "float16", ("conv_batch", {})),
    ((3, 4, 14, 13, 3, 3, 2, 1), "float64", ("conv_tile", {})),
    ((2, 3, 40, 41, 5, 5, 2, 2), "float16", ("conv_tile", {8: 4, 9: 4, 15: 3, 16: 0})),
    ((2, 3, 30, 32, 3, 3, 2, 1), "bfloat16", ("conv_tile", {8: 2, 9: 4, 15: 3, 16: 0})),
    ((2, 3, 30, 32, 3, 3, 3, 1), "bfloat16", ("conv_tile", {8: 2, 9: 8, 15: 3, 16: 1})),
    ((2, 2, 112, 112, 3, 3, 2, 1), "float16", ("conv_tile", {8: 2, 9: 8, 16: 1})),
]


@pytest.mark.parametrize("shape,dtype,forward", STRIDED_FORWARD_CASES, ids=str)
def test_breadth_strided_forward(shape, dtype, forward):
    _check_default_plans(*shape, dtype, forward, ..., repr((shape, dtype)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(3, 4, 14, 14, 5, 5, 2, 2), (2, 3, 13, 11, 3, 3, 3, 1), (2, 2, 19, 20, 3, 5, 2, 1),
                                   (2, 3, 28, 29, 3, 3, 2, 1), (2, 2, 40, 40, 3, 3, 3, 1)], ids=str)
def test_breadth_strided_half_grad_input(shape, dtype):
    """16-bit grad input at stride 2 and 3 on grad_x planes of at most 40 x 40: the narrow
    tiles at 3 blocks per SM (float32's), then all three gradients against the reference."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    N, C, H, W, KH, KW, s, pad = shape
    p = params((N, C, H, W), (C, 1, KH, KW), False, s, pad, 1)
    name, args = _kernels.split_expr(_kernels.plan_grad_input(p, dtype, 0).expr)
    assert name == "conv_tile" and args[1] == "1" and args[15] == "3", (name, args)
    assert int(args[9]) == s * max(1, 4 // s)  # tile width: float32's, not 8 columns
    _check(numpy.random.default_rng(zlib.crc32(repr(shape).encode())), N, C, H, W, 1, KH, KW, s, pad, 1, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape,tile", [
    # N, C, H, W, KH, KW, stride, padding; (TH, TW, MINB) of wgrad_tile
    ((3, 4, 40, 45, 3, 3, 2, 1), (1, 4, 3)),
    ((2, 3, 112, 113, 3, 3, 2, 1), (1, 8, 2)),
    ((2, 3, 37, 50, 3, 3, 3, 1), (1, 4, 3)),
    ((3, 4, 48, 50, 5, 5, 2, 2), (3, 4, 2)),
    ((4, 3, 28, 27, 5, 5, 2, 2), (4, 4, 2)),
    ((4, 3, 14, 14, 5, 3, 2, (2, 1)), (4, 4, 2)),
], ids=str)
def test_strided_half_weight_gradient_tiles(shape, tile, dtype):
    """The 16-bit weight gradient at stride 2 and 3 takes float32's strided tiles (1x4 at
    3 blocks per SM up to 9 taps, 3x4 at 2 beyond, 4x4 at 2 on planes of at most 400
    outputs; 1x8 at 2 for 3x3 at stride 2 on rows of 56 outputs and more), tails in both
    directions; then all three gradients against the reference."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    N, C, H, W, KH, KW, s, pad = shape
    p = params((N, C, H, W), (C, 1, KH, KW), False, s, pad, 1)
    name, args = _kernels.split_expr(_kernels.plan_wgrad(p, dtype, 0, 0, 90, 132)[0].expr)
    assert name == "wgrad_tile" and (int(args[7]), int(args[8]), int(args[12])) == tile, (name, args)
    _check(numpy.random.default_rng(zlib.crc32(repr(shape).encode())), N, C, H, W, 1, KH, KW, s, pad, 1, dtype)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True), (False, True, True), (True, True, False)])
def test_needs(needs):
    _check(numpy.random.default_rng(8), 2, 3, 20, 30, 2, 3, 5, (2, 1), 1, 1, "float32", needs=needs)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_noncontiguous_grad_output(dtype):
    _check(numpy.random.default_rng(12), 2, 3, 21, 33, 1, 3, 3, 1, 1, 1, dtype, go_view="strided")


def _assert_grads(got, ref, dtype, taps, terms):
    """grad_x, grad_weight and grad_bias (GPU arrays) against the reference's, with the
    per-dtype tolerance scaled by the terms each output sums."""
    assert_close(got[0].get(), ref[0], dtype, scale=math.sqrt(taps), what="grad_x")
    assert_close(got[1].get(), ref[1], dtype, scale=math.sqrt(terms), what="grad_weight")
    assert_close(got[2].get(), ref[2], dtype, scale=math.sqrt(terms), what="grad_bias")


def _misaligned_problem(shape, dtype, offset, seed):
    """Fresh inputs of a stride-1 problem (N, C, H, W, KH, KW, padding) whose x and
    grad_output start `offset` elements into their allocations: (params, x, grad_output,
    weight on the GPU, the reference's three gradients, terms per weight gradient)."""
    import cupy
    from gpu_util import params, reference_backward

    N, C, H, W, KH, KW, pad = shape
    rng = numpy.random.default_rng(seed + offset)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, 1, pad, 1)
    go = random_array(rng, p.out_shape, dtype)
    ref = reference_backward(go, x, w, padding=pad)
    return p, _offset_copy(x, offset), _offset_copy(go, offset), cupy.asarray(w), ref, N * p.OH * p.OW


def _offset_copy(host, offset):
    """A C-contiguous GPU copy of `host` whose data start `offset` elements into its
    allocation, so its pointer is aligned to offset * itemsize bytes only."""
    import cupy

    flat = cupy.empty(host.size + 16, dtype=host.dtype)
    view = flat[offset:offset + host.size].reshape(host.shape)
    view.set(numpy.ascontiguousarray(host))
    assert view.flags.c_contiguous and view.data.ptr % 16 == (offset * host.dtype.itemsize) % 16
    return view


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 2, 4])
@pytest.mark.parametrize(
    "shape", [(2, 3, 19, 44, 3, 3, 0), (2, 3, 18, 40, 3, 5, (1, 2)), (3, 37, 7, 7, 7, 7, 3)], ids=str
)
def test_misaligned_buffers(shape, offset, dtype):
    """Contiguous x and grad_output that start `offset` elements into their allocations,
    with x rows of 44 or 40 elements and grad_output rows of 42 or 40: the tile kernels
    then load 16-, 8- or 4-byte vectors or single elements, chosen from the pointer and
    the row width; forward, grad input and grad weight are checked on each. The 7x7 planes
    take conv_batch (forward; float32 and float64: element loads at any alignment) or
    conv_plane, and conv_plane (grad input: two planes per output plane) and wgrad_plane,
    whose plane runs start at any remainder modulo 16 bytes (scalar head, 16-byte body,
    scalar tail)."""
    import cupy_dwconv
    from gpu_util import params, reference_backward, reference_forward, to_gpu

    N, C, H, W, KH, KW, pad = shape
    rng = numpy.random.default_rng(31 + offset)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (2 * C, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, 1, pad, 1)
    go = random_array(rng, p.out_shape, dtype)
    xg, gog = _offset_copy(x, offset), _offset_copy(go, offset)
    out = cupy_dwconv.depthwise_conv2d(xg, to_gpu(w), padding=pad)
    assert_close(out.get(), reference_forward(x, w, None, padding=pad), dtype, scale=math.sqrt(KH * KW), what="forward")
    gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(gog, xg, to_gpu(w), padding=pad)
    ref = reference_backward(go, x, w, padding=pad)
    terms = N * p.OH * p.OW
    assert_close(gx.get(), ref[0], dtype, scale=math.sqrt(2 * KH * KW), what="grad_x")
    assert_close(gw.get(), ref[1], dtype, scale=math.sqrt(terms), what="grad_weight")
    assert_close(gb.get(), ref[2], dtype, scale=math.sqrt(terms), what="grad_bias")


@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, stride, padding, dilation
        (1, 2, 1, 6, 7, 3, 3, 1, 1, 1),
        (2, 1, 2, 7, 9, 2, 3, (2, 1), ((1, 0), (0, 2)), 1),
        (1, 2, 1, 9, 8, 3, 2, 2, 1, (2, 1)),
    ],
    ids=str,
)
def test_finite_differences_float64(shape):
    """Gradients equal the numerical derivative of the GPU forward (float64, central
    differences) of the scalar sum(forward(x, w, b) * g)."""
    import cupy

    import cupy_dwconv

    N, C, M, H, W, KH, KW, s, pad, d = shape
    rng = numpy.random.default_rng(21)
    x = cupy.asarray(rng.standard_normal((N, C, H, W)))
    w = cupy.asarray(rng.standard_normal((C * M, 1, KH, KW)))
    b = cupy.asarray(rng.standard_normal((C * M,)))
    out = cupy_dwconv.depthwise_conv2d(x, w, b, stride=s, padding=pad, dilation=d)
    g = cupy.asarray(rng.standard_normal(out.shape))
    gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(g, x, w, stride=s, padding=pad, dilation=d)

    def f(x_, w_, b_):
        return float((cupy_dwconv.depthwise_conv2d(x_, w_, b_, stride=s, padding=pad, dilation=d) * g).sum())

    eps = 1e-6
    for arr, grad, name in ((x, gx, "x"), (w, gw, "weight"), (b, gb, "bias")):
        flat = arr.reshape(-1)
        picks = rng.choice(flat.size, size=min(12, flat.size), replace=False)
        for i in picks:
            i = int(i)
            old = float(flat[i])
            flat[i] = old + eps
            fp = f(x, w, b)
            flat[i] = old - eps
            fm = f(x, w, b)
            flat[i] = old
            num = (fp - fm) / (2 * eps)
            got = float(grad.reshape(-1)[i])
            assert abs(num - got) <= 1e-6 * max(1.0, abs(num)), f"d/d{name}[{i}]: numeric {num}, analytic {got}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "shape",
    [(4, 8, 57, 61, 3, 7, 1, 1), (2, 4, 56, 56, 31, 31, 1, 15), (3, 5, 40, 40, 3, 3, 2, 1), (8, 4, 64, 64, 3, 3, 1, 1)],
    ids=str,
)
def test_deterministic(shape, dtype):
    """Two runs on the same inputs give bitwise-identical weight and bias gradients
    (separate kernels, tensor cores, stride 2, and the fused kernel on the last shape)."""
    import cupy

    import cupy_dwconv

    N, C, H, W, KH, KW, s, pad = shape
    rng = numpy.random.default_rng(31)
    x = cupy.asarray(random_array(rng, (N, C, H, W), dtype))
    w = cupy.asarray(random_array(rng, (C, 1, KH, KW), dtype))
    OH = (H + 2 * pad - KH) // s + 1
    OW = (W + 2 * pad - KW) // s + 1
    go = cupy.asarray(random_array(rng, (N, C, OH, OW), dtype))
    r1 = cupy_dwconv.depthwise_conv2d_backward(go, x, w, stride=s, padding=pad)
    r2 = cupy_dwconv.depthwise_conv2d_backward(go, x, w, stride=s, padding=pad)
    if shape[0] == 8:
        from cupy_dwconv import _kernels
        from gpu_util import params

        p = params(x.shape, w.shape, False, s, pad, 1)
        assert _kernels.plan_backward(p, dtype, x.data.ptr, go.data.ptr) is not None
    for a, b_ in zip(r1, r2):
        assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize(
    "shape,launch",
    [
        ((3, 5, 19, 21, 3, 3, 1, 1), dict(th=2, tw=8, chunks=7)),
        ((2, 4, 17, 17, 1, 7, (0, 3), 1), {}),
        ((4, 3, 28, 56, 5, 5, 2, 1), dict(family="rows", chunks=5)),
        ((2, 3, 30, 64, 3, 7, 1, 1), dict(family="rows")),
    ],
    ids=str,
)
def test_fused_closing_step(shape, launch, dtype):
    """The fused kernels finish grad_weight and grad_bias themselves (the last block of a
    channel adds the chunks' rows): bitwise equal to the second-kernel path, counters left
    at zero (checked in forced_backward), and equal again on a second run."""
    from gpu_util import forced_backward, params, to_gpu

    N, C, H, W, KH, KW, pad, dil = shape
    rng = numpy.random.default_rng(41)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, 1, pad, dil)
    go = random_array(rng, p.out_shape, dtype)
    args = (to_gpu(x), to_gpu(go), to_gpu(w), p, dtype)
    fused, fused_again, two_kernels = (forced_backward(*args, reduce_kernel=r, **launch) for r in (False, False, True))
    assert fused is not None, "the fused kernel declined a problem it takes"
    for a, b, c in zip(fused[:3], fused_again[:3], two_kernels[:3]):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_fused_closing_counters_per_stream():
    """The library's closing-step counters: one zeroed buffer per stream, grown for more
    channels, all zero again after the launches; results on other streams equal the
    default stream's bitwise."""
    import cupy

    import cupy_dwconv
    from cupy_dwconv import _api, _kernels
    from gpu_util import params

    rng = numpy.random.default_rng(43)

    def inputs(C):  # planes of 32 x 64: enough tiles per channel for the fused kernel
        return [cupy.asarray(random_array(rng, (8, C, 32, 64), "float32")) for _ in range(2)] + [
            cupy.asarray(random_array(rng, (C, 1, 3, 3), "float32"))]

    x, go, w = inputs(3)
    assert _kernels.plan_backward(params(x.shape, w.shape, False, 1, 1, 1), "float32", 0, 0) is not None
    runs = []
    for stream in (cupy.cuda.Stream.null, cupy.cuda.Stream(), cupy.cuda.Stream()):
        with stream:
            runs.append([a.tobytes() for a in cupy_dwconv.depthwise_conv2d_backward(go, x, w, padding=1)])
            bx, bgo, bw = inputs(1500)  # more channels than the first buffer holds
            cupy_dwconv.depthwise_conv2d_backward(bgo, bx, bw, padding=1)
            stream.synchronize()
    assert runs[1] == runs[0] and runs[2] == runs[0]
    assert all(int(buf.max()) == 0 for buf in _api._COUNTERS.values())
    assert max(buf.size for buf in _api._COUNTERS.values()) >= 1500


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["tile", "smem", "generic"])
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, stride, padding, dilation
        (2, 3, 1, 19, 37, 3, 7, 1, ((1, 0), (3, 2)), 1),
        (1, 2, 2, 23, 41, 5, 3, 2, 2, 1),
        (2, 2, 3, 30, 30, 3, 3, (1, 2), 1, (2, 1)),
        (1, 2, 2, 40, 40, 9, 9, 1, 4, 1),
        (1, 1, 1, 22, 29, 3, 5, 3, (0, 2), (1, 2)),
        (1, 3, 1, 16, 16, 4, 4, 2, 5, 1),  # padding larger than the kernel extent
    ],
    ids=str,
)
def test_grad_input_every_family(shape, kind, dtype):
    from gpu_util import forced_grad_input, params, reference_backward, to_gpu

    N, C, M, H, W, KH, KW, s, pad, d = shape
    rng = numpy.random.default_rng(13)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C * M, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, s, pad, d)
    go = random_array(rng, p.out_shape, dtype)
    kwargs = dict(th=2, tw=4) if kind == "smem" else {}
    gx, launch = forced_grad_input(to_gpu(go), to_gpu(w), p, dtype, kind, **kwargs)
    if gx is None:
        pytest.skip(f"{kind} does not take this shape")
    assert kind in launch.expr
    ref = reference_backward(go, x, w, stride=s, padding=pad, dilation=d, needs=(True, False, False))[0]
    assert_close(gx.get(), ref, dtype, scale=math.sqrt(KH * KW * M))


def _check_forced_grad_input_s1(shape, dtype, kind, **kwargs):
    """Grad input at stride 1 by one forced kernel family (conv_KIND, keyword arguments as
    plan_conv's force) against the reference on fresh random inputs.
    shape: (N, C, M, H, W, KH, KW, padding)."""
    from gpu_util import forced_grad_input, params, reference_backward, to_gpu

    N, C, M, H, W, KH, KW, pad = shape
    rng = numpy.random.default_rng(19)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C * M, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, 1, pad, 1)
    go = random_array(rng, p.out_shape, dtype)
    gx, launch = forced_grad_input(to_gpu(go), to_gpu(w), p, dtype, kind, **kwargs)
    assert gx is not None and f"conv_{kind}" in launch.expr
    ref = reference_backward(go, x, w, stride=1, padding=pad, dilation=1, needs=(True, False, False))[0]
    assert_close(gx.get(), ref, dtype, scale=math.sqrt(KH * KW * M))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("variant", [dict(whole=0, mid=False), dict(whole=1), dict(whole=2), dict(whole=2, tiles_per_block=3)],
                         ids=str)
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, padding: conv_smem's grad input at stride 1 (the rotated
        # kernel), whole planes staged in each way; a multiplier gathers M planes.
        (2, 5, 1, 28, 28, 13, 13, 6),
        (1, 5, 2, 19, 23, 7, 9, ((3, 2), (4, 5))),
    ],
    ids=str,
)
def test_grad_input_smem_staging(shape, variant, dtype):
    _check_forced_grad_input_s1(shape, dtype, "smem", **variant)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, padding: grad input at stride 1 as a correlation with the
        # rotated kernel on tensor cores (multiplier: several grad_output planes per plane).
        (2, 3, 1, 19, 37, 3, 7, ((1, 0), (3, 2))),
        (1, 2, 3, 30, 40, 5, 5, 2),
        (1, 2, 2, 40, 48, 9, 9, 4),
        (1, 3, 1, 16, 16, 4, 4, 5),  # padding larger than the kernel extent: cropped
        (1, 1, 1, 60, 64, 31, 31, 15),
        (2, 2, 2, 21, 30, 3, 3, 1),
    ],
    ids=str,
)
@pytest.mark.parametrize("blocks", [None, 2])
def test_grad_input_mma(shape, blocks, dtype):
    _check_forced_grad_input_s1(shape, dtype, "mma", blocks=blocks)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, padding: grad input at stride 1 on conv_stack (the rotated
        # kernel, 16 images per MMA): a partial image group, asymmetric padding, KW 9,
        # padding past the kernel (cropped), convnext's shape on fewer channels.
        (20, 3, 1, 19, 38, 3, 7, ((1, 0), (3, 3))),
        (16, 2, 1, 30, 40, 5, 5, 2),
        (17, 2, 1, 40, 48, 9, 9, 4),
        (16, 3, 1, 16, 16, 4, 4, ((5, 5), (5, 4))),
        (16, 2, 1, 56, 56, 7, 7, 3),
    ],
    ids=str,
)
@pytest.mark.parametrize("variant", [{}, dict(rb=6, blocks=2)], ids=str)
def test_grad_input_stack(shape, variant, dtype):
    _check_forced_grad_input_s1(shape, dtype, "stack", **variant)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, padding: grad input at stride 1 on conv_mma_rows (the
        # rotated kernel, a block sweeping whole rows): asymmetric padding, KW 9, padding
        # past the kernel (cropped), a 4-byte-copy width, a 16-row kernel.
        (2, 3, 1, 19, 38, 3, 7, ((1, 0), (3, 3))),
        (1, 2, 1, 40, 48, 9, 9, 4),
        (1, 3, 1, 16, 16, 4, 4, ((5, 5), (5, 4))),
        (1, 2, 1, 70, 130, 3, 7, 0),
        (1, 1, 1, 60, 40, 16, 5, (7, 2)),
    ],
    ids=str,
)
@pytest.mark.parametrize("variant", [{}, dict(rb=16, blocks=2)], ids=str)
def test_grad_input_mma_rows(shape, variant, dtype):
    _check_forced_grad_input_s1(shape, dtype, "mma_rows", **variant)


def _check_forced_wgrad(shape, dtype, force, seed, stride=1, dilation=1, reduce=None):
    """Weight and bias gradients of a forced plan against the reference on fresh random
    inputs; returns the stage-1 launch (the stage-2 launch when `reduce` replaces it).
    shape: (N, C, M, H, W, KH, KW, padding)."""
    from gpu_util import forced_wgrad, params, reference_backward, to_gpu

    N, C, M, H, W, KH, KW, pad = shape
    rng = numpy.random.default_rng(seed)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C * M, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, stride, pad, dilation)
    go = random_array(rng, p.out_shape, dtype)
    gw, gb, launch = forced_wgrad(to_gpu(x), to_gpu(go), p, dtype, force=force, reduce=reduce)
    _, rw, rb = reference_backward(go, x, w, stride=stride, padding=pad, dilation=dilation)
    scale = math.sqrt(N * p.OH * p.OW)
    assert_close(gw.get(), rw, dtype, scale=scale, what="grad_weight")
    assert_close(gb.get(), rb, dtype, scale=scale, what="grad_bias")
    return launch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", [dict(staged=True, ob=3), dict(staged=True, ob=1), dict(staged=False)], ids=str)
def test_wgrad_reduce(reduce, dtype):
    """Stage 2 both ways: channels staged in blocks of OB (74 channels: the last block of
    3 holds 2) and one thread per output from global memory."""
    launch = _check_forced_wgrad((3, 37, 2, 11, 13, 3, 5, 1), dtype, None, 31, reduce=reduce)
    assert int(launch.scalars[0]["OB"]) == reduce.get("ob", 0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("force", [None, "generic"])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 1, 19, 37, 3, 7, 1, ((1, 0), (3, 2)), 1),
        (1, 2, 2, 23, 41, 5, 3, 2, 2, 1),
        (2, 2, 3, 30, 30, 3, 3, (1, 2), 1, (2, 1)),
        (1, 3, 1, 16, 16, 4, 4, 2, 5, 1),
    ],
    ids=str,
)
def test_wgrad_every_family(shape, force, dtype):
    N, C, M, H, W, KH, KW, s, pad, d = shape
    launch = _check_forced_wgrad((N, C, M, H, W, KH, KW, pad), dtype, force, 14, stride=s, dilation=d)
    assert ("wgrad_generic" in launch.expr) == (force == "generic")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, padding: stride 1, dilation 1 (wgrad_mma's domain).
        # Staging widths: odd W -> checked input loads; W % 8 == 0 -> 16-byte copies with
        # every SHIFT; even W -> 4-byte copies; grad_output rows likewise by OW.
        (2, 3, 1, 19, 37, 3, 7, ((1, 0), (3, 2))),
        (1, 2, 3, 30, 40, 5, 5, 2),  # multiplier 3
        (1, 2, 2, 40, 48, 9, 9, 4),  # two N blocks
        (1, 1, 1, 60, 64, 31, 31, 15),  # two M blocks, four N blocks
        (2, 2, 1, 21, 30, 16, 3, ((2, 5), (1, 0))),  # KH = 16: the bias row in the second M block
        (3, 2, 1, 7, 7, 7, 7, 3),  # planes smaller than a band
        (1, 1, 1, 12, 70, 3, 32, (1, 12)),
        (2, 2, 2, 33, 24, 1, 1, 0),
        (1, 2, 1, 40, 16, 3, 3, 1),
    ],
    ids=str,
)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"chunks": 1, "blocks_y": 1}, {"bh": 5, "stages": 3}],
    ids=["default", "one-block-per-channel-row", "bh5-stages3"],
)
def test_wgrad_mma(shape, kwargs, dtype):
    """The tensor-core weight-gradient kernel, forced: every staging width and shift,
    M and N blocks, the bias row, tails of bands, many items and several channels per
    block (chunks=1, grid height 1), a deeper ring."""
    launch = _check_forced_wgrad(shape, dtype, ("mma", kwargs), 16)
    assert "wgrad_mma" in launch.expr


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("C, M", [(34000, 2), (66000, 1)])
def test_many_channels_past_grid_limits(C, M, dtype):
    """C*M above 65535 (the weight pass loops channels over the grid's y limit) and N*C
    above 65535 planes for grad input; M = 1 takes the fused kernel, whose blocks loop
    channels the same way."""
    _check(numpy.random.default_rng(19), 2, C, 4, 5, M, 3, 3, 1, 1, 1, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bwd_mma_channels_past_grid_limits(dtype):
    """The fused 16-bit backward on tensor cores loops channels over the grid's y limit
    (66000 channels of 4 x 6 planes, 7x7): the Toeplitz table is rebuilt, the partial rows
    and counters are those of each channel."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    p = params((2, 66000, 4, 6), (66000, 1, 7, 7), False, 1, 3, 1)
    assert "bwd_mma" in _kernels.plan_backward(p, dtype, 0, 0)[0].expr
    _check(numpy.random.default_rng(23), 2, 66000, 4, 6, 1, 7, 7, 1, 3, 1, dtype)


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)], ids=str)
def test_large_tensor_64bit_indices(needs):
    """More than 2^31 elements in x, grad_output and grad_x: the fused pass (all three
    gradients), the grad-input pass alone and the weight gradient alone, each on a plane
    whose last ~1000 rows lie past element 2^31, where 32-bit offsets would wrap.
    grad_x is checked on the last plane's bottom-right corner against the reference;
    grad_weight and grad_bias of the last channel (every row of both images) against the
    same sums evaluated in float64 by CuPy elementwise operations (the NumPy reference
    would need 12 GB of float64 host arrays per tensor)."""
    import cupy

    import cupy_dwconv
    from gpu_util import reference_backward

    N, C, H, W = 2, 3, 19000, 19000  # 2.17e9 elements of float16 per tensor (4.3 GB)
    gen = cupy.random.default_rng(7)
    x = gen.standard_normal((N, C, H, W), dtype=cupy.float32).astype(cupy.float16)
    # grad_output scaled so that the weight-gradient sums (~sqrt(7.2e8) terms) stay
    # well inside float16's range.
    go = (gen.standard_normal((N, C, H, W), dtype=cupy.float32) / 64).astype(cupy.float16)
    assert x.size > 2**31
    w = random_array(numpy.random.default_rng(8), (C, 1, 3, 3), "float16")
    gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(go, x, cupy.asarray(w), padding=1, needs=needs)
    if needs[0]:
        # The slice's own top row and left column lack grad_output neighbours outside
        # the slice; its bottom and right edges are the plane's.
        sl = (slice(N - 1, N), slice(C - 1, C), slice(H - 9, H), slice(W - 40, W))
        ref = reference_backward(go[sl].get(), x[sl].get(), w[C - 1:], padding=1, needs=(True, False, False))[0]
        assert_close(gx[sl].get()[..., 1:, 1:], ref[..., 1:, 1:], "float16", scale=3.0, what="grad_x")
    else:
        assert gx is None
    if needs[1]:
        xc = x[:, C - 1].astype(cupy.float64)
        gc = go[:, C - 1].astype(cupy.float64)
        want_w = numpy.empty((3, 3))
        for kh in range(3):
            for kw in range(3):
                # grad_weight[kh, kw] = sum over (n, oh, ow) of go[oh, ow] * x[oh + kh - 1, ow + kw - 1]
                oh0, ow0 = max(0, 1 - kh), max(0, 1 - kw)
                oh1, ow1 = min(H, H + 1 - kh), min(W, W + 1 - kw)
                want_w[kh, kw] = float((gc[:, oh0:oh1, ow0:ow1] *
                                        xc[:, oh0 + kh - 1:oh1 + kh - 1, ow0 + kw - 1:ow1 + kw - 1]).sum())
        want_b = float(gc.sum())
        del xc, gc
        scale = math.sqrt(N * H * W) / 64
        assert_close(gw[C - 1, 0].get(), want_w, "float16", scale=scale, what="grad_weight")
        assert_close(gb[C - 1:].get(), numpy.array([want_b]), "float16", scale=scale, what="grad_bias")
    else:
        assert gw is None and gb is None
    del x, go, gx, gw, gb


def test_empty_batch(monkeypatch):
    import cupy

    import cupy_dwconv
    from gpu_util import no_launch

    x = cupy.zeros((0, 3, 8, 8), dtype=cupy.float32)
    w = cupy.ones((6, 1, 3, 3), dtype=cupy.float32)
    go = cupy.zeros((0, 6, 8, 8), dtype=cupy.float32)
    with no_launch(monkeypatch):
        gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(go, x, w, padding=1)
    assert gx.shape == (0, 3, 8, 8)
    assert gw.shape == (6, 1, 3, 3) and not bool(gw.any())
    assert gb.shape == (6,) and not bool(gb.any())


def test_empty_channels(monkeypatch):
    import cupy

    import cupy_dwconv
    from gpu_util import no_launch

    x = cupy.zeros((2, 0, 8, 8), dtype=cupy.float32)
    w = cupy.ones((0, 1, 3, 3), dtype=cupy.float32)
    go = cupy.zeros((2, 0, 6, 6), dtype=cupy.float32)
    with no_launch(monkeypatch):
        gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(go, x, w)
    assert gx.shape == (2, 0, 8, 8) and gw.shape == (0, 1, 3, 3) and gb.shape == (0,)


def test_grad_output_shape_checked():
    import cupy

    import cupy_dwconv

    x = cupy.ones((1, 2, 8, 8), dtype=cupy.float32)
    w = cupy.ones((2, 1, 3, 3), dtype=cupy.float32)
    go = cupy.ones((1, 2, 8, 8), dtype=cupy.float32)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(1, 2, 6, 6\)"):
        cupy_dwconv.depthwise_conv2d_backward(go, x, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocking", [{}, dict(planes=3, items=5, chunks=2), dict(planes=7, items=1, chunks=3)], ids=str)
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, padding, stride, dilation
        (6, 5, 1, 7, 7, 7, 7, 3, 1, 1),
        (4, 35, 2, 5, 9, 3, 5, ((1, 0), (2, 1)), 1, 1),
        (7, 4, 3, 9, 7, 3, 3, 1, 2, 1),
        (5, 3, 1, 8, 8, 3, 3, 1, 1, 2),
        (3, 2, 1, 3, 5, 5, 5, 4, 1, 1),
    ],
    ids=str,
)
def test_wgrad_plane(shape, blocking, dtype):
    """wgrad_plane, forced: channel groups that do not divide C*M, batch chunks and steps
    that do not divide N, multipliers (an x plane shared by channels in two blocks),
    stride, dilation, padding wider than the plane."""
    N, C, M, H, W, KH, KW, pad, s, d = shape
    launch = _check_forced_wgrad((N, C, M, H, W, KH, KW, pad), dtype, ("plane", blocking), 29, stride=s, dilation=d)
    if dtype == "float64" and "wgrad_plane" not in launch.expr:
        pytest.skip("float64 planes of this size exceed wgrad_plane's shared memory")
    assert "wgrad_plane" in launch.expr


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, padding: stride 1, dilation 1 (wgrad_smem's domain)
        (2, 3, 1, 30, 37, 13, 13, 6),
        (1, 2, 2, 40, 44, 31, 31, 15),
        (3, 2, 1, 19, 23, 9, 11, ((4, 3), (0, 6))),
        (2, 1, 3, 17, 9, 5, 3, 0),
        (1, 1, 1, 12, 70, 3, 25, (1, 12)),
        (5, 132, 2, 12, 14, 9, 9, 4),  # 264 channels: 2 chunks of 3 and 2 planes per block
    ],
    ids=str,
)
@pytest.mark.parametrize("stage_async", [None, False], ids=["default", "registers"])
def test_wgrad_smem(shape, dtype, stage_async):
    """The shared-memory weight-gradient kernel, forced, on kernels that are not
    multiples of its tap tiles (4x8 for 4-byte sums, 8x4 in float64), odd sizes,
    asymmetric padding and multipliers; staged both ways (the default double-buffers by
    cp.async where it can: float32 and float64 on sm_80+)."""
    force = "smem" if stage_async is None else ("smem", dict(stage_async=stage_async))
    launch = _check_forced_wgrad(shape, dtype, force, 15)
    assert "wgrad_smem" in launch.expr
    from cupy_dwconv import _kernels

    registers = stage_async is False or dtype in ("float16", "bfloat16") or _kernels.current_arch() < 80
    assert launch.expr.endswith("false>") == registers


# wgrad_lines (large kernels on whole planes, a thread per tap row): 'same' padding,
# asymmetric padding with an even kernel, 'valid' padding (grad_output smaller than x),
# padding beyond the kernel, multipliers (an x plane shared by channels of two blocks;
# 16-bit blocks stage each input channel's plane once for the channels that read it),
# odd plane sizes (element copies, scalar reads; 16-bit runs that start off a 4-byte
# boundary), channel groups and batch chunks that do not divide C*M and N. Variants: the
# default plan, 3 channels per block in 2 chunks, one channel per block in one chunk (a
# block walks every batch item).
WGRAD_LINES_SHAPES = [
    # N, C, M, H, W, KH, KW, padding
    (3, 5, 1, 28, 28, 13, 13, 6),
    (2, 3, 2, 15, 19, 8, 10, ((3, 4), (5, 4))),
    (2, 4, 1, 20, 20, 9, 9, 0),
    (3, 2, 1, 6, 6, 9, 9, 8),
    (5, 7, 1, 17, 13, 11, 7, (5, 3)),
    (1, 2, 1, 24, 16, 31, 31, 15),
    (2, 3, 2, 23, 21, 9, 9, 4),  # 483 outputs: 16-bit planes staged by 8-byte loads
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [{}, dict(planes=3, chunks=2), dict(planes=1, chunks=1)], ids=str)
@pytest.mark.parametrize("shape", WGRAD_LINES_SHAPES, ids=str)
def test_wgrad_lines(shape, variant, dtype):
    launch = _check_forced_wgrad(shape, dtype, ("lines", variant), 19)
    assert "wgrad_lines" in launch.expr


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize(
    "shape", [(5, 6, 7, 7, 13, 13, 6), (3, 5, 14, 13, 9, 9, ((4, 3), (4, 5))), (2, 3, 28, 28, 13, 13, 6)], ids=str
)
def test_wgrad_lines16_library(shape, offset, dtype):
    """The 16-bit weight gradient of large kernels on small planes (the dispatcher's
    wgrad_lines, planes staged as float32) through the library call with needs=(False,
    True, True), x and grad_output starting `offset` elements into their allocations: the
    plane runs start on or off a 4-byte boundary (a head element read alone), odd and
    even plane sizes (a tail element)."""
    import cupy_dwconv
    from cupy_dwconv import _kernels

    p, xg, gog, wg, ref, terms = _misaligned_problem(shape, dtype, offset, 230)
    assert "wgrad_lines" in _kernels.plan_wgrad(p, dtype, xg.data.ptr, gog.data.ptr)[0].expr
    gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(gog, xg, wg, padding=shape[-1], needs=(False, True, True))
    assert gx is None
    assert_close(gw.get(), ref[1], dtype, scale=math.sqrt(terms), what="grad_weight")
    assert_close(gb.get(), ref[2], dtype, scale=math.sqrt(terms), what="grad_bias")


# Backward problems that take the split path (grad input, then the weight gradient's two
# stages): conv_lines and wgrad_lines, tensor cores for both, and stride 2 (conv_tile and
# wgrad_tile).
SPLIT_SHAPES = [
    # N, C, H, W, KH, KW, stride, padding, dtype
    (3, 5, 28, 28, 13, 13, 1, 6, "float32"),
    (2, 3, 40, 40, 31, 31, 1, 15, "float16"),
    (4, 6, 33, 30, 3, 3, 2, 1, "float32"),
]


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, True), (True, True, False)], ids=str)
@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=str)
def test_split_backward_beside_stream(shape, needs, monkeypatch):
    """The split backward with its weight-gradient stage 1 on a side stream, both
    priorities (forced for these small problems): on a caller's stream that has just
    produced the inputs, the results equal the single-stream path's bitwise and the
    reference; the caller's stream alone orders the results (read after its synchronize,
    not the device's)."""
    import cupy

    import cupy_dwconv
    from cupy_dwconv import _kernels
    from gpu_util import params, reference_backward

    N, C, H, W, KH, KW, s, pad, dtype = shape
    rng = numpy.random.default_rng(53)
    x_h = random_array(rng, (N, C, H, W), dtype)
    w_h = random_array(rng, (C, 1, KH, KW), dtype)
    p = params(x_h.shape, w_h.shape, False, s, pad, 1)
    go_h = random_array(rng, p.out_shape, dtype)
    assert _kernels.plan_backward(p, dtype, 0, 0) is None, "the shape should take the split path"
    runs = []
    # The caller's stream alone, then a side stream of the greatest priority, then one of
    # default priority.
    for limit, first_max, mode in ((None, 8e9, None), (1, 8e9, "wgrad_first"), (1, 0, "shared")):
        monkeypatch.setattr(_kernels, "SPLIT_CONCURRENT_MIN", limit)
        monkeypatch.setattr(_kernels, "SPLIT_FIRST_MAX_FLOPS", first_max)
        assert _kernels.split_streams(p) == mode
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            # Inputs written on the caller's stream right before the call: the side
            # stream must wait for them.
            x, go, w = (cupy.asarray(a) * 1 for a in (x_h, go_h, w_h))
            out = cupy_dwconv.depthwise_conv2d_backward(go, x, w, stride=s, padding=pad, needs=needs)
            stream.synchronize()
        runs.append([None if a is None else a.tobytes() for a in out])
    assert runs[1] == runs[0] and runs[2] == runs[0]
    ref = reference_backward(go_h, x_h, w_h, stride=s, padding=pad, needs=needs)
    terms = N * p.OH * p.OW
    for got, exp, n, what, scale in zip(out, ref, needs, ("grad_x", "grad_weight", "grad_bias"),
                                        (math.sqrt(KH * KW), math.sqrt(terms), math.sqrt(terms))):
        assert (got is None) == (not n)
        if n:
            assert_close(got.get(), exp, dtype, scale=scale, what=what)


BWD_TILE_SHAPES = [
    # N, C, H, W, KH, KW, padding, dilation: tails in both directions, 'valid' (the
    # grad_output plane smaller than x), asymmetric and partial padding, a 1xK and a
    # Kx1 kernel, dilation, a plane narrower than the tile, 49 taps.
    (2, 3, 19, 21, 3, 3, 1, 1),
    (2, 3, 18, 26, 3, 7, 0, 1),
    (1, 4, 13, 40, 3, 5, ((1, 0), (0, 2)), 1),
    (2, 2, 17, 17, 1, 7, (0, 3), 1),
    (1, 3, 23, 9, 5, 1, ((2, 1), (0, 0)), 1),
    (2, 3, 20, 24, 3, 3, 2, 2),
    (3, 5, 7, 7, 7, 7, 3, 1),
    (1, 2, 30, 33, 7, 7, 3, 1),
    (1, 3, 9, 44, 5, 5, "same", (1, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "launch",
    [{}, dict(th=1, tw=8, chunks=1), dict(th=4, tw=4, minb=2, pf=1, chunks=3), dict(th=2, tw=8, pf=0, chunks=7),
     dict(th=2, tw=4, minb=3, pf=0)],
    ids=str,
)
@pytest.mark.parametrize("shape", BWD_TILE_SHAPES, ids=str)
def test_bwd_tile(shape, launch, dtype):
    """The fused backward kernel, forced: all three gradients against the reference,
    with tile shapes whose tails cut the plane both ways, one and several chunks per
    channel (chunks=1 puts every unit of a channel in one block), with and without the
    L2 prefetch of the next unit."""
    _check_forced_fused(shape, launch, dtype, "bwd_tile", repr((shape, launch, dtype)))


def _check_forced_fused(shape, launch, dtype, family, seed_key):
    """A forced fused backward (bwd_tile, or bwd_rows with launch family="rows") on fresh
    random inputs seeded from `seed_key`: all three gradients against the reference.
    Returns (gx, gw, gb, run), run() giving the three again from the same inputs."""
    from gpu_util import forced_backward, params, reference_backward, to_gpu

    N, C, H, W, KH, KW, pad, dil = shape
    rng = numpy.random.default_rng(zlib.crc32(seed_key.encode()))
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, 1, pad, dil)
    go = random_array(rng, p.out_shape, dtype)
    xg, gog, wg = to_gpu(x), to_gpu(go), to_gpu(w)

    def run():
        return forced_backward(xg, gog, wg, p, dtype, **launch)

    res = run()
    assert res is not None, f"{family} declined a problem it takes"
    gx, gw, gb, s1 = res
    assert family in s1.expr
    ref = reference_backward(go, x, w, padding=pad, dilation=dil)
    _assert_grads((gx, gw, gb), ref, dtype, KH * KW, N * p.OH * p.OW)
    return gx, gw, gb, run


BWD_ROWS_SHAPES = [
    # N, C, H, W, KH, KW, padding, dilation: even widths of x and grad_output (16-bit
    # rows copy in 4 bytes and more); 'valid' (grad_output smaller than x), asymmetric
    # and partial padding, a 1xK and a Kx1 kernel, dilation, rows of several column
    # segments, a plane narrower than one lane's columns, 25 and 49 taps.
    (2, 3, 19, 22, 3, 3, 1, 1),
    (2, 3, 18, 26, 3, 7, 0, 1),
    (1, 4, 13, 40, 3, 5, ((1, 0), (0, 2)), 1),
    (2, 2, 17, 18, 1, 7, (0, 3), 1),
    (1, 3, 23, 10, 5, 1, ((2, 1), (0, 0)), 1),
    (2, 3, 20, 24, 3, 3, 2, 2),
    (1, 3, 9, 44, 5, 5, "same", (1, 2)),
    (2, 2, 30, 300, 3, 3, 1, 1),
    (1, 2, 6, 4, 3, 3, 1, 1),
    (2, 3, 12, 28, 5, 5, 2, 1),
    (2, 2, 13, 30, 7, 7, 3, 1),
    # Rows of 33 to 56 columns: 16-bit 3x3 plans 8 columns per lane in blocks of 128
    # ('same', and asymmetric padding with 'valid' rows on top).
    (2, 3, 14, 48, 3, 3, 1, 1),
    (1, 3, 11, 34, 3, 3, ((2, 0), (1, 1)), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "launch",
    [{}, dict(pf=1, chunks=1), dict(v=2, pf=2, rb=3, chunks=3), dict(minb=1, rb=1, chunks=7),
     dict(v=8, minb=4, block=128)],
    ids=str,
)
@pytest.mark.parametrize("shape", BWD_ROWS_SHAPES, ids=str)
def test_bwd_rows(shape, launch, dtype):
    """The row-sweep fused backward, forced: all three gradients against the reference
    (one band, or bands of 3 rows or 1 row whose overlap rows must not count twice in the
    bias; one to seven chunks per channel; one to four rows ahead; blocks of 128 threads
    with 8 columns per lane in 16-bit), and the weight and bias gradients bitwise equal
    over two runs."""
    if dtype == "float64" and launch.get("v") == 2:
        launch = dict(launch, v=1)  # 16-byte chunks at most
    dh = shape[7][0] if isinstance(shape[7], tuple) else shape[7]
    if launch.get("v") == 8 and (shape[4] - 1) * dh + 1 > 4:
        launch = dict(launch, v=4)  # a ring of 8-column sums holds 4 tap rows at most
    _, gw, gb, run = _check_forced_fused(shape, dict(launch, family="rows"), dtype, "bwd_rows",
                                         repr((shape, launch, dtype, "rows")))
    _, gw2, gb2, _ = run()
    assert (gw2.view("u1") == gw.view("u1")).all() and (gb2.view("u1") == gb.view("u1")).all()


def test_bwd_rows_declines():
    """bwd_rows declines what its sweep cannot cover: a multiplier, a stride, padding past
    the kernel's reach below (grad_output rows no band owns), more than 49 taps, 16-bit
    rows of odd width (2-byte copies)."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    for shape, w_shape, stride, pad, dtype in (
        ((1, 2, 16, 16), (4, 1, 3, 3), 1, 1, "float32"),
        ((1, 2, 16, 16), (2, 1, 3, 3), 2, 1, "float32"),
        ((1, 2, 16, 16), (2, 1, 3, 3), 1, ((0, 3), (1, 1)), "float32"),
        ((1, 2, 16, 16), (2, 1, 9, 9), 1, 4, "float32"),
        ((1, 2, 16, 17), (2, 1, 3, 3), 1, 1, "float16"),
    ):
        p = params(shape, w_shape, False, stride, pad, 1)
        assert _kernels.plan_backward(p, dtype, 0, 0, 90, 132, force=dict(family="rows")) is None, (shape, w_shape)


BWD_PLANE_SHAPES = [
    # N, C, H, W, KH, KW, padding, dilation: odd planes of at most 64 elements. ConvNeXt's
    # 7x7 stage ('same'), 'valid' (grad_output smaller than x), asymmetric padding, a
    # 1xK and a Kx1 kernel, dilation, padding past the kernel's reach (grad_output larger
    # than x, rows no tap of x meets), a 1x1 plane, channel counts that leave a partial
    # channel group, batches that leave a partial step and uneven chunks.
    (5, 37, 7, 7, 7, 7, 3, 1),
    (3, 19, 7, 9, 3, 3, 0, 1),
    (4, 21, 5, 7, 3, 5, ((1, 1), (0, 2)), 1),
    (3, 17, 7, 7, 1, 7, (0, 3), 1),
    (2, 18, 9, 5, 5, 1, ((2, 2), (0, 0)), 1),
    (3, 20, 7, 7, 3, 3, 2, 2),
    (2, 33, 3, 3, 3, 3, 3, 1),
    (9, 5, 1, 1, 3, 3, 1, 1),
    (7, 40, 3, 5, 3, 3, "same", 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "launch",
    [{}, dict(planes=8, items=4, chunks=1), dict(planes=16, items=2, chunks=3, minb=2),
     dict(planes=32, items=3, chunks=2, stages=2), dict(planes=4, items=5, chunks=7), dict(planes=8, items=2, chunks=1, stages=2)],
    ids=str,
)
@pytest.mark.parametrize("shape", BWD_PLANE_SHAPES, ids=str)
def test_bwd_plane(shape, launch, dtype):
    """The fused backward of small planes, forced: all three gradients against the
    reference (channel groups with a partial last group, steps of 2 to 5 batch items with
    a partial last step, one to seven chunks per group, 3 or 2 blocks per SM, one stage or
    two: the next step copied during this one, several steps per block), and the
    weight and bias gradients bitwise equal over two runs. It may decline only for want of
    registers or shared memory (float64 7x7 planes)."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    N, C, H, W, KH, KW, pad, dil = shape
    p = params((N, C, H, W), (C, 1, KH, KW), False, 1, pad, dil)
    plan = _kernels.plan_backward(p, dtype, 0, 0, 90, 132, force=dict(launch, family="plane"))
    if plan is None:
        planes = min(C, launch.get("planes", 16))
        items = min(N, launch.get("items", 128 // planes))
        stages = launch.get("stages", 1)
        assert (_kernels.bwd_plane_regs(p, dtype) > 255
                or _kernels.wgrad_plane_smem_bytes(p, dtype, planes, items, True, stages) > 2 * _kernels.PLANE_SMEM)
        return
    _, gw, gb, run = _check_forced_fused(shape, dict(launch, family="plane"), dtype, "bwd_plane",
                                         repr((shape, launch, dtype, "plane")))
    _, gw2, gb2, _ = run()
    assert (gw2.view("u1") == gw.view("u1")).all() and (gb2.view("u1") == gb.view("u1")).all()


def test_shared_memory_opt_in_only_grows():
    """Two plans of one specialization that ask different amounts of shared memory above
    48 KB (bwd_plane with 32 channels x 8 items and with 16 x 16: the same 256-thread
    kernel): planning and launching the smaller one after the larger must not shrink the
    function's opt-in, or the larger one's next launch fails."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    shape = (16, 40, 5, 5, 5, 5, 2, 1)
    p = params(shape[:4], (shape[1], 1, 5, 5), False, 1, 2, 1)
    big, small = dict(planes=32, items=8), dict(planes=16, items=16)
    plans = [_kernels.plan_backward(p, "float32", 0, 0, force=dict(launch, family="plane"))[0]
             for launch in (big, small)]
    assert plans[0].expr == plans[1].expr and plans[0].shared_mem > plans[1].shared_mem > 48 * 1024
    for launch in (big, small, big):
        _check_forced_fused(shape, dict(launch, family="plane"), "float32", "bwd_plane", repr((shape, launch)))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("offset", [1, 2, 3])
def test_bwd_plane_misaligned(offset, dtype):
    """x and grad_output that start `offset` elements into their allocations, through the
    library call and through the wgrad_reduce path: the plane runs start at any remainder
    modulo 16 bytes, and grad_x (a fresh, aligned buffer) then differs from x modulo 16
    bytes, so its runs leave by element copies. (float64 small planes go to bwd_batch:
    test_bwd_batch_misaligned.)"""
    import cupy_dwconv
    from cupy_dwconv import _kernels
    from gpu_util import forced_backward

    p, xg, gog, wg, ref, terms = _misaligned_problem((3, 20, 5, 5, 3, 5, (1, 2)), dtype, offset, 170)
    assert "bwd_plane" in _kernels.plan_backward(p, dtype, xg.data.ptr, gog.data.ptr)[0].expr
    for got in (cupy_dwconv.depthwise_conv2d_backward(gog, xg, wg, padding=(1, 2)),
                forced_backward(xg, gog, wg, p, dtype, reduce_kernel=True, family="plane", chunks=2)[:3]):
        _assert_grads(got, ref, dtype, 3 * 5, terms)


# bwd_batch (the whole backward in conv_batch's units: a unit is 1 or 4 channels across
# 32 or 8 images, a warp per grad_x row, a warp per tap row of the weight gradient):
# ConvNeXt's 7x7 stage with a partial last chunk of images (40 = 32 + 8; 37 = 4 x 8 + 5
# at 4 channels per unit); asymmetric padding with grad_output smaller than x in one
# direction and larger in the other; dilation 2 with grad_output taller than x (more
# grad_output rows than warps); 14 rows (14 warps); 'valid' (grad_output 5 x 5 on 9 x 9);
# a kernel wider than it is tall, and a kernel larger than the plane (tap rows that meet
# no row); a one-row plane (one warp stages all 32 planes and owns all three tap rows).
BWD_BATCH_SHAPES = [
    # N, C, H, W, KH, KW, padding, dilation
    (40, 3, 7, 7, 7, 7, 3, 1),
    (37, 8, 7, 7, 7, 7, 3, 1),
    (33, 4, 5, 6, 3, 5, ((1, 0), (2, 1)), 1),
    (34, 2, 8, 13, 3, 3, 3, 2),
    (64, 3, 14, 14, 7, 7, 3, 1),
    (9, 4, 9, 9, 5, 5, 0, 1),
    (3, 2, 3, 12, 2, 9, 0, 1),
    (2, 4, 4, 4, 7, 7, 3, 1),
    (6, 4, 1, 9, 3, 3, 1, 1),
]
BWD_BATCH_VARIANTS = [{}, dict(cg=1, blocks=3), dict(cg=1, minb=1), dict(cg=4, blocks=5), dict(blocks=1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", BWD_BATCH_VARIANTS, ids=str)
@pytest.mark.parametrize("shape", BWD_BATCH_SHAPES, ids=str)
def test_bwd_batch(shape, variant, dtype):
    """The fused backward in conv_batch's units, forced: all three gradients against the
    reference (persistent blocks: 3, 5 or one block walking every unit, whose closing
    step then counts every unit and finishes every channel group), and the weight and
    bias gradients bitwise equal over two runs."""
    if variant.get("cg") == 4 and (dtype != "float32" or shape[1] % 4):
        pytest.skip("4 channels per unit: float32, 4 | channels")
    _, gw, gb, run = _check_forced_fused(shape, dict(variant, family="batch"), dtype, "bwd_batch",
                                         repr((shape, variant, dtype, "batch")))
    _, gw2, gb2, _ = run()
    assert (gw2.view("u1") == gw.view("u1")).all() and (gb2.view("u1") == gb.view("u1")).all()


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("offset", [1, 2, 3])
def test_bwd_batch_misaligned(offset, dtype):
    """x and grad_output that start `offset` elements into their allocations (one
    channel per unit: element loads), forced with the closing step and with the
    wgrad_reduce path (null counters: the kernel leaves the partial rows only), and in
    float32 and float64 through the library call, which dispatches there."""
    import cupy_dwconv
    from cupy_dwconv import _kernels
    from gpu_util import forced_backward

    p, xg, gog, wg, ref, terms = _misaligned_problem((35, 8, 12, 12, 5, 5, 2), dtype, offset, 171)
    runs = [forced_backward(xg, gog, wg, p, dtype, family="batch")[:3],
            forced_backward(xg, gog, wg, p, dtype, reduce_kernel=True, family="batch")[:3]]
    if dtype != "float16":
        s1 = _kernels.plan_backward(p, dtype, xg.data.ptr, gog.data.ptr)[0]
        assert "bwd_batch" in s1.expr and _kernels.split_expr(s1.expr)[1][11] == "1"
        runs.append(cupy_dwconv.depthwise_conv2d_backward(gog, xg, wg, padding=2))
    for got in runs:
        _assert_grads(got, ref, dtype, 5 * 5, terms)


BWD_MMA_SHAPES = [
    # N, C, H, W, KH, KW, padding: even widths (grad_x pairs leave from the fragments),
    # planes up to 64 x 64. ConvNeXt's 7x7 stage ('same'); an odd number of grad_output
    # rows (the last pair's second row is the zero row); 'valid' (grad_output smaller
    # than x); asymmetric padding up to the kernel's reach; a 1xK and a Kx1 kernel;
    # padding that makes grad_output larger than x (its extra rows only meet the bias);
    # a 64 x 64 plane (4 warps, 8 column blocks); an 8-column kernel with 'same' padding
    # (one more column on the right); 1x1 on a 1 x 2 plane; widths that are not a
    # multiple of 8 or 16 (4-byte copies, a partial k-step).
    (3, 5, 56, 56, 7, 7, 3),
    (2, 3, 15, 18, 3, 3, 1),
    (2, 3, 20, 24, 3, 5, 0),
    (2, 4, 13, 22, 5, 3, ((1, 4), (2, 0))),
    (2, 3, 17, 18, 1, 7, (0, 3)),
    (2, 3, 9, 10, 7, 1, (3, 0)),
    (2, 3, 14, 16, 3, 3, 2),
    (1, 2, 64, 64, 3, 3, 1),
    (2, 3, 12, 20, 4, 8, "same"),
    (3, 2, 1, 2, 1, 1, 0),
    (5, 3, 28, 28, 7, 7, 3),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "launch",
    [{}, dict(chunks=1), dict(chunks=2, stages=2), dict(chunks=3, stages=4), dict(xgran=2, ggran=2),
     dict(xgran=4, ggran=4, chunks=2), dict(minb=3, chunks=3)],
    ids=str,
)
@pytest.mark.parametrize("shape", BWD_MMA_SHAPES, ids=str)
def test_bwd_mma(shape, launch, dtype):
    """The fused 16-bit backward on tensor cores, forced: all three gradients against the
    reference (one to three chunks per channel and the host's count, ring depths 2 to 4,
    every copy width for x and grad_output, 3 or 4 blocks per SM), and the weight and bias gradients bitwise
    equal over two runs. It declines only 4-byte grad_output copies of odd rows."""
    N, C, H, W, KH, KW, pad = shape
    from cupy_dwconv import _kernels
    from gpu_util import params

    p = params((N, C, H, W), (C, 1, KH, KW), False, 1, pad, 1)
    if _kernels.plan_backward(p, dtype, 0, 0, 90, 132, force=dict(launch, family="mma")) is None:
        assert launch.get("ggran") == 4 and p.OW % 2
        return
    _, gw, gb, run = _check_forced_fused(shape + (1,), dict(launch, family="mma"), dtype, "bwd_mma",
                                         repr((shape, launch, dtype, "mma")))
    _, gw2, gb2, _ = run()
    assert (gw2.view("u1") == gw.view("u1")).all() and (gb2.view("u1") == gb.view("u1")).all()


WGRAD_STACK_SHAPES = [
    # N, C, H, W, KH, KW, padding: batches of 16 images and more (and a partial group),
    # grad_output widths a multiple of 8 (16-byte copies). ConvNeXt's 7x7 stage ('same');
    # a partial last group (20, 17, 33 images) and a batch under 16; asymmetric padding
    # up to the kernel's reach; a 1xK and a Kx1 kernel; a 64 x 64 plane (8 warps); an
    # 8-column kernel with 'same' padding (SX 1 with 8-byte x copies); 'valid' on a
    # width that is not a multiple of 8 (x wider than grad_output).
    (16, 3, 56, 56, 7, 7, 3),
    (20, 3, 15, 16, 3, 3, 1),
    (17, 2, 20, 24, 3, 5, (1, 2)),
    (5, 3, 13, 16, 5, 3, ((1, 4), (2, 0))),
    (33, 2, 17, 24, 1, 7, (0, 3)),
    (16, 2, 9, 16, 7, 1, (3, 0)),
    (16, 2, 64, 64, 3, 3, 1),
    (16, 2, 12, 16, 4, 8, "same"),
    (16, 2, 12, 18, 3, 3, 0),
    # 2 blocks per SM (_wstack_minb): 9x9 at 8 warps, 13 tap rows at 7.
    (16, 2, 20, 64, 9, 9, 4),
    (17, 2, 18, 56, 13, 5, (6, 2)),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("launch", [{}, dict(rb=56), dict(rb=5, chunks=3), dict(chunks=1, pf=2), dict(xgran=4)],
                         ids=str)
@pytest.mark.parametrize("shape", WGRAD_STACK_SHAPES, ids=str)
def test_wgrad_stack(shape, launch, dtype):
    """The 16-bit weight gradient's stage 1 with 16 images per MMA, forced, with its
    reduction: a block per unit; whole planes; bands of 5 rows on 3 blocks per channel
    (every x row's tap pairs and every grad_output row's bias term in exactly one band);
    one block for all units with 2 rows ahead; 4-byte x copies."""
    N, C, H, W, KH, KW, pad = shape
    launch = _check_forced_wgrad((N, C, 1, H, W, KH, KW, pad), dtype, ("stack", launch), 37)
    assert "wgrad_stack" in launch.expr


def test_bwd_mma_declines():
    """bwd_mma declines what it does not cover: float32, a multiplier, a stride, a
    dilation, more than 7 tap rows or 8 tap columns, padding past the kernel's reach, odd
    widths, planes past 64 x 64, and devices before sm_80."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    for shape, w_shape, stride, pad, dil, dtype, arch in (
        ((1, 2, 16, 16), (2, 1, 3, 3), 1, 1, 1, "float32", 90),
        ((1, 2, 16, 16), (4, 1, 3, 3), 1, 1, 1, "float16", 90),
        ((1, 2, 16, 16), (2, 1, 3, 3), 2, 1, 1, "float16", 90),
        ((1, 2, 16, 16), (2, 1, 3, 3), 1, 2, 2, "float16", 90),
        ((1, 2, 16, 16), (2, 1, 9, 3), 1, 0, 1, "float16", 90),
        ((1, 2, 16, 16), (2, 1, 3, 9), 1, 0, 1, "bfloat16", 90),
        ((1, 2, 16, 16), (2, 1, 3, 3), 1, ((3, 0), (1, 1)), 1, "float16", 90),
        ((1, 2, 16, 17), (2, 1, 3, 3), 1, 1, 1, "float16", 90),
        ((1, 2, 16, 66), (2, 1, 3, 3), 1, 1, 1, "float16", 90),
        ((1, 2, 16, 16), (2, 1, 3, 3), 1, 1, 1, "float16", 75),
    ):
        p = params(shape, w_shape, False, stride, pad, dil)
        assert _kernels.plan_backward(p, dtype, 0, 0, arch, 132, force=dict(family="mma")) is None, (shape, w_shape)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("offset", [1, 2, 4])
def test_bwd_mma_misaligned(offset, dtype):
    """x and grad_output that start `offset` elements into their allocations (copies of
    2, 4 or 8 bytes), forced, through the closing step and through wgrad_reduce."""
    from gpu_util import forced_backward

    p, xg, gog, wg, ref, terms = _misaligned_problem((3, 4, 20, 24, 7, 7, 3), dtype, offset, 190)
    for reduce_kernel in (False, True):
        got = forced_backward(xg, gog, wg, p, dtype, reduce_kernel=reduce_kernel, family="mma", chunks=2)
        assert "bwd_mma" in got[3].expr
        _assert_grads(got, ref, dtype, 7 * 7, terms)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("offset", [1, 2, 4])
def test_bwd_tile_misaligned(offset, dtype):
    """x and grad_output that start `offset` elements into their allocations: the fused
    kernel's x and grad_output loads narrow to what the pointers allow."""
    from gpu_util import forced_backward, params, reference_backward

    N, C, H, W, KH, KW, pad = 2, 3, 12, 40, 3, 5, (1, 2)
    rng = numpy.random.default_rng(70 + offset)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C, 1, KH, KW), dtype)
    p = params(x.shape, w.shape, False, 1, pad, 1)
    go = random_array(rng, p.out_shape, dtype)
    import cupy

    gx, gw, gb, s1 = forced_backward(_offset_copy(x, offset), _offset_copy(go, offset), cupy.asarray(w), p, dtype)
    ref = reference_backward(go, x, w, padding=pad)
    terms = N * p.OH * p.OW
    assert_close(gx.get(), ref[0], dtype, scale=math.sqrt(KH * KW), what="grad_x")
    assert_close(gw.get(), ref[1], dtype, scale=math.sqrt(terms), what="grad_weight")
    assert_close(gb.get(), ref[2], dtype, scale=math.sqrt(terms), what="grad_bias")

