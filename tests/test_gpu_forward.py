"""GPU forward pass against the float64 reference: dtypes, kernel geometries, layouts,
edges, every kernel family. Every output buffer starts as NaN (conftest.nan_outputs)."""

from __future__ import annotations

import math
import zlib

import numpy
import pytest

from conftest import DTYPES, assert_close, random_array
from gpu_util import case_id, random_cases

pytestmark = pytest.mark.gpu


def _case(rng, N, C, H, W, M, KH, KW, stride, padding, dilation, bias, dtype):
    import cupy_dwconv
    from cupy_dwconv import _api
    from gpu_util import reference_forward, to_gpu, params

    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C * M, 1, KH, KW), dtype)
    b = random_array(rng, (C * M,), dtype) if bias else None
    p = params(x.shape, w.shape, bias, stride, padding, dilation)
    ref = reference_forward(x, w, b, stride=stride, padding=padding, dilation=dilation)
    xg, wg = to_gpu(x), to_gpu(w)
    bg = None if b is None else to_gpu(b)
    out = cupy_dwconv.depthwise_conv2d(xg, wg, bg, stride=stride, padding=padding, dilation=dilation)
    assert _api._new_output.owns(out)  # the result is the NaN-filled buffer the kernel wrote
    assert out.shape == p.out_shape and out.dtype == xg.dtype and out.flags.c_contiguous
    assert_close(out.get(), ref, dtype, scale=math.sqrt(KH * KW))
    return p


RANDOM_CASES = random_cases(160, 1234, DTYPES, max_h=40, max_w=70, bias=True)


@pytest.mark.parametrize("c", RANDOM_CASES, ids=case_id)
def test_random_grid(c):
    rng = numpy.random.default_rng(zlib.crc32(str(c).encode()))
    _case(rng, **c)


# Suite-like shapes shrunk in batch, so each tiling path (interior, tails, borders, small
# planes, large kernels) runs with the specialization the dispatcher picks for real use.
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
    (1, 2, 512, 512, 3, 3, 1, 1, 1),
    (2, 4, 28, 28, 13, 13, 1, 6, 1),
    (1, 3, 56, 56, 31, 31, 1, 15, 1),
    (1, 2, 70, 90, 31, 31, 1, 15, 1),   # large kernel on a plane split into several tiles
    (1, 3, 33, 45, 11, 9, 2, 4, 1),     # large kernel, stride 2
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SUITE_LIKE, ids=str)
def test_suite_like(shape, dtype):
    N, C, H, W, KH, KW, s, pad, d = shape
    rng = numpy.random.default_rng(7)
    _case(rng, N, C, H, W, 1, KH, KW, s, pad, d, True, dtype)


def _check_forced_forward(shape, dtype, kind, seed, **kwargs):
    """A forced kernel family's forward (with bias) against the reference on fresh random
    inputs. shape: (N, C, M, H, W, KH, KW, stride, padding, dilation). Returns (launch,
    rng, x, w, params), launch None where the family declines the shape (nothing run)."""
    from gpu_util import forced_forward, params, reference_forward, to_gpu

    N, C, M, H, W, KH, KW, s, pad, d = shape
    rng = numpy.random.default_rng(seed)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C * M, 1, KH, KW), dtype)
    b = random_array(rng, (C * M,), dtype)
    p = params(x.shape, w.shape, True, s, pad, d)
    out, launch = forced_forward(to_gpu(x), to_gpu(w), to_gpu(b), p, dtype, kind, **kwargs)
    if out is not None:
        ref = reference_forward(x, w, b, stride=s, padding=pad, dilation=d)
        assert_close(out.get(), ref, dtype, scale=math.sqrt(KH * KW), what="forward")
    return launch, rng, x, w, p


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["tile", "smem", "generic"])
@pytest.mark.parametrize(
    "shape",
    [
        # N, C, M, H, W, KH, KW, stride, padding, dilation
        (2, 3, 1, 19, 37, 3, 7, 1, ((1, 0), (3, 2)), 1),
        (1, 2, 2, 23, 41, 5, 3, 2, 2, 1),
        (2, 2, 3, 30, 30, 3, 3, (1, 2), 1, (2, 1)),
        (1, 3, 1, 13, 67, 2, 4, 1, "same", 1),
        (1, 2, 1, 40, 40, 9, 9, 1, 4, 1),
        (1, 1, 2, 21, 29, 3, 5, 3, (0, 2), (1, 2)),
    ],
    ids=str,
)
def test_every_family(shape, kind, dtype):
    """Each kernel family, forced, on irregular shapes: whatever the heuristic picks
    today, every path stays correct."""
    kwargs = dict(th=2, tw=4) if kind == "smem" else {}
    launch = _check_forced_forward(shape, dtype, kind, 11, **kwargs)[0]
    if launch is None:
        pytest.skip(f"{kind} does not take this shape")
    assert kind in launch.expr


# conv_smem staging variants, forced: the window copy (whole=0), whole planes through
# registers (1) and by cp.async (2: float32 and float64 on sm_80+; 16-bit falls back to
# 1), with and without the test-free body of the middle rows (mid), one tile per block
# and three (10 planes: the last group partial, its missing tiles never stored).
SMEM_STAGING_SHAPES = [
    # N, C, M, H, W, KH, KW, stride, padding, dilation
    (2, 5, 1, 28, 28, 13, 13, 1, 6, 1),
    (1, 5, 2, 19, 23, 7, 9, 1, ((3, 2), (4, 5)), 1),  # multiplier, asymmetric padding
    (2, 3, 1, 17, 15, 9, 9, 2, 4, 1),                  # stride 2: rows past the window
    (1, 3, 1, 21, 20, 5, 7, 1, 2, (2, 1)),             # dilation: no test-free body
    (2, 3, 1, 13, 11, 9, 9, 1, 0, 1),                  # no padding: no halo at all
    # The window ends inside the top-left padding (stride 3 on 1 x 1 planes, padding far
    # beyond the kernel): nothing of the plane is staged, the output is the bias.
    (2, 3, 1, 1, 1, 9, 9, 3, ((31, 0), (31, 0)), 1),
]
SMEM_STAGING_VARIANTS = [dict(whole=0, mid=False), dict(whole=1, mid=True), dict(whole=2, mid=True),
                         dict(whole=2, mid=False, tiles_per_block=3), dict(whole=1, mid=False, tiles_per_block=3)]


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("variant", SMEM_STAGING_VARIANTS, ids=str)
@pytest.mark.parametrize("shape", SMEM_STAGING_SHAPES, ids=str)
def test_smem_staging(shape, variant, dtype):
    from cupy_dwconv import _kernels

    launch = _check_forced_forward(shape, dtype, "smem", 17, **variant)[0]
    name, args = _kernels.split_expr(launch.expr)
    whole = variant["whole"]
    if whole == 2 and (_kernels.current_arch() < 80 or dtype == "bfloat16"):
        whole = 1
    assert name == "conv_smem" and int(args[-1]) == whole  # every shape here is whole planes


# conv_plane (whole small planes per block): odd and even plane sizes, more planes than a
# block holds and batch items that straddle blocks (C = 70), channel multipliers, strides,
# dilation, asymmetric padding, a kernel wider than the plane, padding beyond the kernel
# extent (the rotated grad-input problem then crops). Variants: the default (whole planes:
# every row test a constant); rows 2 and 1 (bands of a plane: run-time row tests and a
# last band that ends past the plane); two stages with a grid of 2 or 3 blocks (each block
# walks several groups, double-buffered, the last one partial) and 5 planes per block
# (groups that start and end inside a batch item, weight runs that wrap to channel 0).
PLANE_SHAPES = [
    # N, C, M, H, W, KH, KW, stride, padding, dilation
    (3, 5, 1, 7, 7, 7, 7, 1, 3, 1),
    (2, 70, 1, 7, 7, 3, 3, 1, 1, 1),
    (2, 3, 2, 5, 9, 3, 5, 1, ((1, 0), (2, 1)), 1),
    (1, 4, 3, 9, 7, 3, 3, 2, 1, 1),
    (2, 3, 1, 8, 8, 3, 3, 1, 1, 2),
    (1, 2, 1, 11, 5, 1, 7, 1, (0, 3), 1),
    (1, 3, 1, 6, 6, 5, 5, 1, 6, 1),
    (2, 3, 1, 17, 17, 1, 7, 1, (0, 3), 1),
    (2, 37, 1, 14, 14, 7, 7, 1, 3, 1),
    # Strided forwards the dispatcher sends here in 16-bit (_kernels._strided_small): 5x5
    # at stride 2 on 14 x 14 with padding 1 (6 x 6 outputs), 3x3 at stride 3 on 15 x 15.
    (3, 5, 1, 14, 14, 5, 5, 2, 1, 1),
    (2, 4, 1, 15, 15, 3, 3, 3, 1, 1),
]


PLANE_VARIANTS = [{}, dict(rows=2), dict(rows=1), dict(stages=2, blocks=2),
                  dict(stages=2, rows=1, planes=5, blocks=3), dict(stages=1, planes=5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", PLANE_VARIANTS, ids=str)
@pytest.mark.parametrize("shape", PLANE_SHAPES, ids=str)
def test_plane(shape, variant, dtype):
    """conv_plane, forced, forward and (at stride 1) grad input, against the reference.
    Strided grad input is a gather, not a correlation: conv_plane declines it."""
    _check_forced_both_passes(shape, dtype, "plane", 23, variant, grad_input_declined=shape[7] != 1)


# conv_batch (a unit of one channel across 32 images, or of 4 channels across 8, a warp
# per output row): batches that leave idle lanes (40, 70, 37 and 3 images: the last
# chunk partial), odd and even planes, a channel multiplier (grad input declined: it
# gathers 2 planes per output), asymmetric padding, stride 2 (grad input declined),
# dilation with padding past the kernel (the rotated grad-input problem crops), a 1x7
# kernel on 17 rows, 14 rows, 8 and 4 channels (4 per unit in float32: 16-byte runs).
# Variants: the default plan; one channel per unit on a grid of 3 (each block walks
# several units: staging reuses the shared memory its previous unit read); one channel
# at one block per SM; 4 channels per unit on a grid of 5 (float32, 4 | channels, no
# multiplier; declined elsewhere).
BATCH_SHAPES = [
    # N, C, M, H, W, KH, KW, stride, padding, dilation
    (40, 3, 1, 7, 7, 7, 7, 1, 3, 1),
    (33, 2, 2, 5, 6, 3, 5, 1, ((1, 0), (2, 1)), 1),
    (3, 4, 1, 9, 11, 3, 5, 2, (1, 2), 1),
    (34, 2, 1, 8, 13, 3, 3, 1, 3, 2),
    (70, 2, 1, 17, 17, 1, 7, 1, (0, 3), 1),
    (64, 3, 1, 14, 14, 7, 7, 1, 3, 1),
    (37, 8, 1, 7, 7, 7, 7, 1, 3, 1),
    (9, 4, 1, 13, 10, 5, 5, 1, 2, 1),
    # Strided forwards on small planes (_kernels._strided_small; grad input declined): 5x5
    # at stride 2 on 14 x 14, 3x3 on 20 x 19 (an odd width), a multiplier with asymmetric
    # padding on 16 x 16.
    (40, 4, 1, 14, 14, 5, 5, 2, 2, 1),
    (33, 4, 1, 20, 19, 3, 3, 2, 1, 1),
    (37, 2, 2, 16, 16, 3, 3, 2, ((0, 1), (1, 0)), 1),
]
BATCH_VARIANTS = [{}, dict(cg=1, blocks=3), dict(cg=1, minb=1), dict(cg=4, blocks=5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", BATCH_VARIANTS, ids=str)
@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=str)
def test_batch(shape, variant, dtype):
    """conv_batch, forced, forward and (at stride 1) grad input, against the reference."""
    if variant.get("cg") == 4 and (dtype != "float32" or shape[1] % 4 or shape[2] != 1):
        pytest.skip("4 channels per unit: float32, 4 | channels, one input plane per output plane")
    _check_forced_both_passes(shape, dtype, "batch", 37, variant, grad_input_declined=shape[7] != 1 or shape[2] != 1)


# conv_lines (large kernels on whole planes, a line per thread, tap rows skipped outside the
# plane): 'same' padding of odd and even kernels, asymmetric padding, a channel
# multiplier (its grad input sums two planes per output plane), odd plane sizes (element
# copies, scalar row reads and stores), rows split into column segments (90 columns under
# 15 taps; float64 31x31 in segments of 14), a kernel larger than the plane (the rotated
# grad-input problem crops), batch items that straddle blocks. Variants: the default
# plan, one plane per block, five planes per block (groups that start inside a batch
# item, weight runs that wrap to channel 0), both weight layouts at three planes per block
# (packed weights of an odd size: the planes' region is rounded up to a vector), rows cut
# into segments of 8 columns (a last partial segment; wider than narrow planes).
LINES_SHAPES = [
    # N, C, M, H, W, KH, KW, stride, padding, dilation
    (2, 3, 1, 28, 28, 13, 13, 1, 6, 1),
    (1, 5, 2, 11, 13, 9, 9, 1, ((2, 5), (4, 1)), 1),
    (1, 2, 1, 12, 90, 5, 15, 1, (2, 7), 1),
    (1, 3, 1, 6, 6, 9, 9, 1, 8, 1),
    (3, 7, 1, 16, 16, 9, 9, 1, 4, 1),
    (1, 2, 1, 15, 17, 8, 10, 1, "same", 1),
    (1, 2, 1, 24, 40, 31, 31, 1, 15, 1),
]
LINES_VARIANTS = [{}, dict(planes=1), dict(planes=5), dict(planes=3, wv=False), dict(planes=3, wv=True),
                  dict(planes=2, cw=8)]


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("variant", LINES_VARIANTS, ids=str)
@pytest.mark.parametrize("shape", LINES_SHAPES, ids=str)
def test_lines(shape, variant, dtype):
    """conv_lines, forced, forward and grad input (stride 1: the rotated problem),
    against the reference."""
    _check_forced_both_passes(shape, dtype, "lines", 29, variant, grad_input_declined=False)


def _check_forced_both_passes(shape, dtype, kind, seed, variant, grad_input_declined):
    """A forced correlation family (conv_plane, conv_rows): its forward, then its grad
    input (the rotated problem), each against the reference; where
    `grad_input_declined`, the family must decline the grad input."""
    from gpu_util import forced_grad_input, reference_backward, to_gpu

    N, C, M, H, W, KH, KW, s, pad, d = shape
    launch, rng, x, w, p = _check_forced_forward(shape, dtype, kind, seed, **variant)
    assert launch is not None and f"conv_{kind}" in launch.expr
    go = random_array(rng, p.out_shape, dtype)
    gx, launch = forced_grad_input(to_gpu(go), to_gpu(w), p, dtype, kind, **variant)
    if grad_input_declined:
        assert gx is None
        return
    assert gx is not None and f"conv_{kind}" in launch.expr
    ref = reference_backward(go, x, w, stride=s, padding=pad, dilation=d, needs=(True, False, False))[0]
    assert_close(gx.get(), ref, dtype, scale=math.sqrt(KH * KW * M), what="grad_x")


# conv_rows (stride 1, a segment of lanes sweeps a band of rows): asymmetric and 'same'
# padding with an even kernel, dilation, a channel multiplier (forward only: its grad
# input gathers M planes), rows of several column segments (halo columns loaded by the
# edge lanes of each segment), 250-column rows (narrow stores), padding beyond the
# kernel (the rotated grad-input problem crops), planes narrower than one lane's
# columns, 1xK and Kx1 kernels. Variants: the default plan; one column per lane; two
# columns with three rows in flight; no rows ahead and one-row bands (every band a tail);
# 3-row bands at one block per SM; wider lanes with 5-row bands.
ROWS_SHAPES = [
    # N, C, M, H, W, KH, KW, stride, padding, dilation
    (2, 3, 1, 19, 37, 3, 7, 1, ((1, 0), (3, 2)), 1),
    (1, 2, 2, 23, 41, 5, 3, 1, 2, 1),
    (2, 2, 1, 30, 30, 3, 3, 1, 1, (2, 1)),
    (1, 3, 1, 13, 67, 2, 4, 1, "same", 1),
    (1, 2, 1, 9, 300, 3, 3, 1, 1, 1),
    (1, 1, 1, 20, 256, 3, 7, 1, 0, 1),
    (1, 2, 1, 6, 6, 5, 5, 1, 6, 1),
    (3, 5, 1, 7, 8, 7, 7, 1, 3, 1),
    (1, 2, 1, 5, 3, 3, 3, 1, 0, 1),
    (2, 3, 1, 17, 18, 1, 7, 1, (0, 3), 1),
    (1, 2, 1, 21, 12, 7, 1, 1, (3, 0), 1),
]
ROWS_VARIANTS = [{}, dict(v=1), dict(v=2, pf=3), dict(pf=0, rb=1), dict(rb=3, minb=1), dict(v=8, pf=1, rb=5)]


@pytest.mark.parametrize(
    "dtype,variant",
    [(d, v) for d in ("float32", "float16") for v in ROWS_VARIANTS] + [("bfloat16", {}), ("float64", {})],
    ids=str,
)
@pytest.mark.parametrize("shape", ROWS_SHAPES, ids=str)
def test_rows(shape, dtype, variant):
    """conv_rows, forced, forward and (multiplier 1) grad input, against the reference.
    The grad input of a multiplier gathers M planes: conv_rows declines it."""
    _check_forced_both_passes(shape, dtype, "rows", 37, variant, grad_input_declined=shape[2] != 1)


# conv_rows_async (the same sweep, rows staged in shared memory by cp.async): every
# conv_rows shape in 4- and 8-byte types; in 16-bit types (copies of 4 bytes and more),
# shapes whose input and output rows are both of even width, so that forward and grad
# input both plan. Variants: the default; one row ahead; four rows ahead with 3-row
# bands; two columns per lane (4-byte chunks) at one block per SM and one-row bands;
# rows prefetched into L2 3 rows beyond the copies, with 5-row bands (the prefetch stops
# at the band's and the plane's last row).
ROWS_EVEN_SHAPES = [
    # N, C, M, H, W, KH, KW, stride, padding, dilation
    (2, 3, 1, 19, 36, 3, 7, 1, ((1, 0), (2, 2)), 1),
    (1, 2, 2, 23, 40, 5, 3, 1, 2, 1),
    (2, 2, 1, 30, 30, 3, 3, 1, 1, (2, 1)),
    (1, 3, 1, 13, 66, 2, 4, 1, "same", 1),
    (1, 2, 1, 9, 300, 3, 3, 1, 1, 1),
    (1, 1, 1, 20, 256, 3, 7, 1, 0, 1),
    (1, 2, 1, 6, 6, 5, 5, 1, 6, 1),
    (1, 2, 1, 5, 4, 3, 3, 1, 0, 1),
    (2, 3, 1, 17, 18, 1, 7, 1, (0, 3), 1),
    (1, 2, 1, 21, 12, 7, 1, 1, (3, 0), 1),
]
ROWS_ASYNC_VARIANTS = [dict(staged=True), dict(staged=True, pf=1), dict(staged=True, pf=4, rb=3),
                       dict(staged=True, v=2, pf=2, minb=1, rb=1), dict(staged=True, l2a=3, rb=5)]


@pytest.mark.parametrize("variant", ROWS_ASYNC_VARIANTS, ids=str)
@pytest.mark.parametrize(
    "shape,dtype",
    [(s, d) for d in ("float32", "float64") for s in ROWS_SHAPES]
    + [(s, d) for d in ("float16", "bfloat16") for s in ROWS_EVEN_SHAPES],
    ids=str,
)
def test_rows_async(shape, dtype, variant):
    """conv_rows_async, forced, forward and (multiplier 1) grad input, against the
    reference."""
    if dtype == "float64" and variant.get("v") == 2:
        variant = dict(variant, v=1)  # 16-byte chunks at most: one float64 column
    _check_forced_both_passes(shape, dtype, "rows", 43, variant, grad_input_declined=shape[2] != 1)


# conv_rows_whole (a segment's lanes cover a whole output row; whole input rows staged
# between zero columns; rows outside the plane skip their FMAs): lanes of odd widths that
# fill the row exactly (56 = 8 x 7, 28 = 4 x 7), 250-element rows (4-byte copies and
# stores), then conv_rows_async's even-width shapes up to 256 columns (asymmetric, 'same'
# with an even kernel: the rotated problem crops, beyond-the-kernel padding: output rows
# of the bias alone, dilation, a multiplier: forward only, 1xK and Kx1 kernels, lanes
# partly past the row), in float32 and 16-bit types. Variants: the default (one band per
# plane); two-column lanes one row ahead; 3-row bands (segments of a warp in different
# bands: the padding-row skip diverges); one-warp blocks six rows ahead at one block per
# SM; six-column lanes in blocks of 256 threads; eight-column lanes three rows ahead.
# Only the combinations the planner takes run (the ring of Q x V sums is at most 64
# registers, 32 lanes at most cover a row): test_rows_whole_cases_cover_every_shape
# checks which.
ROWS_WHOLE_SHAPES = [
    # N, C, M, H, W, KH, KW, stride, padding, dilation
    (3, 5, 1, 9, 56, 7, 7, 1, 3, 1),
    (2, 3, 1, 17, 28, 7, 7, 1, 3, 1),
    (1, 1, 1, 12, 250, 3, 7, 1, 0, 1),
] + [s for s in ROWS_EVEN_SHAPES if s[4] <= 256]
ROWS_WHOLE_VARIANTS = [{}, dict(v=2, pf=1), dict(rb=3), dict(block=32, pf=6, minb=1), dict(v=6, block=256),
                       dict(v=8, pf=3)]


def _rows_whole_plans(shape, dtype, variant):
    """(forward planned, grad input planned) by the forced conv_rows_whole planner."""
    from cupy_dwconv import _kernels, _params

    N, C, M, H, W, KH, KW, s, pad, d = shape
    p = _params.conv_params((N, C, H, W), (C * M, 1, KH, KW), (C * M,), s, pad, d)
    return tuple(_kernels.plan_conv(pr, dtype, 0, force=("rows_whole", variant), arch=90, sms=132) is not None
                 for pr in (_kernels.forward_problem(p), _kernels.grad_input_problem(p)))


ROWS_WHOLE_CASES = [
    (shape, dtype, variant)
    for shape in ROWS_WHOLE_SHAPES for dtype in ("float32", "float16", "bfloat16") for variant in ROWS_WHOLE_VARIANTS
    if _rows_whole_plans(shape, dtype, variant) == (True, shape[2] == 1)
]


def test_rows_whole_cases_cover_every_shape():
    """Every shape runs in every dtype, in at least two variants (the combinations left
    out are those whose ring of Q x V sums passes 64 registers, or whose lanes cannot
    cover the row, in either pass)."""
    for shape in ROWS_WHOLE_SHAPES:
        for dtype in ("float32", "float16", "bfloat16"):
            assert sum(1 for c in ROWS_WHOLE_CASES if c[:2] == (shape, dtype)) >= 2, (shape, dtype)


@pytest.mark.parametrize("shape,dtype,variant", ROWS_WHOLE_CASES, ids=str)
def test_rows_whole(shape, dtype, variant):
    """conv_rows_whole, forced, forward and (multiplier 1) grad input, against the
    reference."""
    _check_forced_both_passes(shape, dtype, "rows_whole", 47, variant, grad_input_declined=shape[2] != 1)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_rows_whole_misaligned_input(offset):
    """An input that starts `offset` elements into its allocation (rows of 56 float32:
    16-, 8- or 4-byte copies by the pointer's alignment), against the reference."""
    import cupy
    from gpu_util import params, reference_forward, run_conv_launch, to_gpu
    from cupy_dwconv import _kernels

    rng = numpy.random.default_rng(53 + offset)
    x = random_array(rng, (2, 6, 11, 56), "float32")
    w = random_array(rng, (6, 1, 7, 7), "float32")
    b = random_array(rng, (6,), "float32")
    p = params(x.shape, w.shape, True, 1, 3, 1)
    flat = cupy.empty(x.size + 16, dtype=x.dtype)
    xg = flat[offset:offset + x.size].reshape(x.shape)
    xg.set(x)
    launch = _kernels.plan_conv(_kernels.forward_problem(p), "float32", xg.data.ptr % 16, force=("rows_whole", {}))
    pb = {1: 4, 2: 8, 3: 4}[offset]  # bytes per copy (template argument PB)
    assert "conv_rows_whole" in launch.expr and _kernels.split_expr(launch.expr)[1][14] == str(pb), launch.expr
    out = run_conv_launch(launch, xg, to_gpu(w), to_gpu(b), p.out_shape, xg.dtype)
    assert_close(out.get(), reference_forward(x, w, b, stride=1, padding=3, dilation=1), "float32", scale=7.0)


def test_rows_whole_persistent_segments_walk_many_units():
    """Few persistent blocks (sms=1): every segment takes many (plane, band) units, the
    zero columns of its slots written once for all of them."""
    from gpu_util import params, reference_forward, run_conv_launch, to_gpu
    from cupy_dwconv import _kernels

    rng = numpy.random.default_rng(59)
    x = random_array(rng, (3, 23, 13, 28), "float32")
    w = random_array(rng, (23, 1, 7, 7), "float32")
    b = random_array(rng, (23,), "float32")
    p = params(x.shape, w.shape, True, 1, 3, 1)
    xg = to_gpu(x)
    launch = _kernels.rows_whole_launch(_kernels.forward_problem(p), "float32", xg.data.ptr % 16, sms=1, minb=1)
    assert launch.grid[0] == 1 and int(launch.scalars[0]["n_units"]) > 2 * 32
    out = run_conv_launch(launch, xg, to_gpu(w), to_gpu(b), p.out_shape, xg.dtype)
    assert_close(out.get(), reference_forward(x, w, b, stride=1, padding=3, dilation=1), "float32", scale=7.0)


def test_rows_persistent_segments_walk_many_units():
    """Few persistent blocks (sms=1): every segment takes many (plane, band, column
    segment) units, the last warp's segments partly past the end."""
    from gpu_util import params, reference_forward, run_conv_launch, to_gpu
    from cupy_dwconv import _kernels

    rng = numpy.random.default_rng(41)
    x = random_array(rng, (3, 7, 29, 45), "float32")
    w = random_array(rng, (7, 1, 3, 5), "float32")
    b = random_array(rng, (7,), "float32")
    p = params(x.shape, w.shape, True, 1, (1, 2), 1)
    xg = to_gpu(x)
    launch = _kernels.rows_launch(_kernels.forward_problem(p), "float32", xg.data.ptr % 16, rb=4, sms=1)
    assert launch.grid[0] == 2 and int(launch.scalars[0]["n_units"]) > 64 * launch.grid[0]
    out = run_conv_launch(launch, xg, to_gpu(w), to_gpu(b), p.out_shape, xg.dtype)
    assert_close(out.get(), reference_forward(x, w, b, stride=1, padding=(1, 2), dilation=1), "float32",
                 scale=math.sqrt(15))


# conv_mma (tensor cores): 16-byte copies (widths that are multiples of 8), every shift
# of 8-byte copies (pad_l mod 4, where they save a k-step), both shifts of 4-byte copies
# (even widths), checked loads (odd widths); one to three k-steps (KW 7, 9, 10, 26, 31);
# outputs stored straight from the fragments (even OW) and through shared memory (odd
# OW: 81, 33, 7 columns); tiles that do not divide the output, tiny planes, several tiles
# per plane, a channel multiplier.
MMA_SHAPES = [
    # N, C, M, H, W, KH, KW, padding
    (2, 3, 1, 19, 37, 3, 7, ((1, 0), (3, 2))),
    (2, 2, 2, 40, 64, 3, 3, 1),
    (1, 3, 1, 35, 48, 5, 5, 2),
    (1, 2, 1, 33, 72, 9, 9, 4),
    (1, 2, 1, 30, 80, 7, 10, (3, 5)),
    (1, 2, 1, 50, 56, 13, 13, 6),
    (1, 1, 1, 70, 88, 31, 31, 15),
    (2, 4, 1, 7, 7, 7, 7, 3),
    (1, 2, 1, 16, 40, 1, 7, (0, 3)),
    (1, 2, 1, 21, 32, 2, 4, "same"),
    (1, 2, 1, 20, 24, 3, 3, 0),
    (1, 2, 1, 24, 40, 4, 26, (1, 9)),
    (1, 2, 1, 23, 38, 3, 3, 1),
    (1, 2, 2, 30, 50, 7, 7, 2),
    (1, 1, 1, 40, 62, 31, 31, 15),
]
# (WN, WR, STAGES, blocks): default plan; one 16 x 8 tile per warp and block with a
# two-deep ring; 24 x 48 tiles with a four-deep ring on 3 persistent blocks (many items
# per block: the ring and the double-buffered weight table wrap around).
MMA_TILES = [None, (1, 1, 2, None), (3, 2, 4, 3)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("tile", MMA_TILES, ids=str)
@pytest.mark.parametrize("shape", MMA_SHAPES, ids=str)
def test_mma(shape, tile, dtype):
    N, C, M, H, W, KH, KW, pad = shape
    kwargs = {} if tile is None else dict(zip(("wn", "wr", "stages", "blocks"), tile))
    launch = _check_forced_forward((N, C, M, H, W, KH, KW, 1, pad, 1), dtype, "mma", 17, **kwargs)[0]
    assert launch is not None and "conv_mma" in launch.expr


# conv_stack (tensor cores, 16 images of one channel per MMA): a partial last group of
# images (20, 33, 17, 18) and batches under 16; 16-, 8- and 4-byte copies, with the A
# block read by ldmatrix (ALD 0) or by 4-byte reads (ALD > 0: convnext's pad 3 and KW 9's
# pad 4 under 16-byte copies); 16-byte output stores (OW a multiple of 8) and 4-byte ones;
# column segments (OW past 64, and wn=2), bands, 'valid', 'same', asymmetric padding and
# padding past the kernel; KH 1 to 16 (the ring), KW up to 9 (one k-step).
STACK_SHAPES = [
    # N, C, H, W, KH, KW, padding
    (20, 3, 19, 38, 3, 7, ((1, 0), (3, 3))),
    (16, 2, 56, 56, 7, 7, 3),
    (33, 2, 13, 72, 5, 5, 2),
    (5, 3, 30, 24, 9, 9, 4),
    (17, 2, 40, 32, 7, 4, ((3, 3), (1, 2))),
    (16, 2, 21, 32, 2, 4, "same"),
    (18, 2, 12, 20, 3, 3, 0),
    (16, 1, 70, 130, 7, 7, 3),
    (16, 2, 12, 16, 3, 3, 5),
    (16, 2, 9, 40, 1, 7, (0, 3)),
    # More than 9 tap rows at 6 to 8 warps: 2 blocks per SM (_stack_minb).
    (16, 2, 30, 56, 11, 5, (5, 2)),
    (17, 2, 20, 64, 13, 5, 6),
    (16, 1, 24, 48, 16, 3, (8, 1)),
]
# Plan variants: the default; short bands on 3 blocks (many units per block: the ring,
# the output buffers and the copies restart per unit); one row ahead (PF 1: the smallest
# ring); two warps per block (column segments); 4-byte copies.
STACK_VARIANTS = [{}, dict(rb=5, blocks=3), dict(pf=1), dict(wn=2), dict(gran=4)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("variant", STACK_VARIANTS, ids=str)
@pytest.mark.parametrize("shape", STACK_SHAPES, ids=str)
def test_stack(shape, variant, dtype):
    N, C, H, W, KH, KW, pad = shape
    launch = _check_forced_forward((N, C, 1, H, W, KH, KW, 1, pad, 1), dtype, "stack", 23, **variant)[0]
    assert launch is not None and "conv_stack" in launch.expr


# conv_mma_rows (tensor cores, a block sweeping whole rows of one plane in steps of 16):
# 16-, 8- and 4-byte copies (the last with narrower warps: the copies' registers), output
# pieces of 16, 4 and 2 bytes (OW a multiple of 8, even, odd), one warp or column segments
# of several, a channel multiplier, KH 1 to 16 (a step's rows across two ring groups),
# two k-steps (KW 19), 'same', asymmetric padding and padding past the kernel, rows that
# end mid-step.
MROWS_SHAPES = [
    # N, C, M, H, W, KH, KW, padding
    (2, 3, 1, 40, 64, 3, 7, 0),
    (1, 2, 2, 35, 256, 3, 7, ((1, 0), (3, 3))),
    (2, 2, 1, 50, 56, 3, 3, 1),
    (1, 3, 1, 33, 302, 5, 5, (2, (2, 3))),
    (1, 2, 1, 21, 24, 2, 4, "same"),
    (2, 2, 1, 70, 130, 7, 7, 3),
    (1, 2, 1, 40, 96, 3, 19, 9),
    (2, 2, 1, 16, 40, 1, 7, (0, 3)),
    (1, 2, 1, 12, 16, 3, 3, 5),
    (1, 1, 1, 150, 64, 16, 3, (8, 1)),
]
# Plan variants: the default; bands of one step on 3 blocks (many units per block: the
# ring, the output buffers and the copies restart per unit); deeper rings (PFS 3 and 4,
# the ring's last slot wraps at another step); column segments of 2 warps x 16 columns.
MROWS_VARIANTS = [{}, dict(rb=16, blocks=3), dict(pfs=3), dict(pfs=4, rb=32), dict(wn=2, nw=2)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("variant", MROWS_VARIANTS, ids=str)
@pytest.mark.parametrize("shape", MROWS_SHAPES, ids=str)
def test_mma_rows(shape, variant, dtype):
    launch = _check_forced_forward(shape[:5] + shape[5:7] + (1, shape[7], 1), dtype, "mma_rows", 31, **variant)[0]
    assert launch is not None and "conv_mma_rows" in launch.expr


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("family, shape, k, pad", [
    ("stack", (16, 2, 20, 32), (7, 7), 3),
    ("mma_rows", (2, 2, 37, 64), (3, 7), (1, 3)),
], ids=str)
def test_tensor_core_misaligned_input(family, shape, k, pad, dtype):
    """An input whose data starts 4 bytes past a 16-byte boundary: conv_stack and
    conv_mma_rows plan 4-byte copies (the only width the pointer allows) and stay correct."""
    import cupy

    from cupy_dwconv import _kernels
    from gpu_util import params, reference_forward, run_conv_launch, to_gpu

    rng = numpy.random.default_rng(29)
    x = random_array(rng, shape, dtype)
    w = random_array(rng, (shape[1], 1) + k, dtype)
    b = random_array(rng, (shape[1],), dtype)
    buf = cupy.zeros(x.size + 8, dtype=to_gpu(x).dtype)
    xg = buf[2:2 + x.size].reshape(shape)
    xg[...] = to_gpu(x)
    assert xg.data.ptr % 16 == 4
    p = params(shape, w.shape, True, 1, pad, 1)
    launch = getattr(_kernels, f"{family}_launch")(_kernels.forward_problem(p), dtype, xg.data.ptr % 16, 90)
    assert launch is not None and _kernels.split_expr(launch.expr)[1][6] == "4"  # GRAN
    out = run_conv_launch(launch, xg, to_gpu(w), to_gpu(b), p.out_shape, xg.dtype)
    assert_close(out.get(), reference_forward(x, w, b, stride=1, padding=pad, dilation=1), dtype,
                 scale=math.sqrt(k[0] * k[1]))


@pytest.mark.parametrize("th,tw", [(1, 4), (2, 8), (4, 4), (4, 8), (3, 5), (8, 8)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tile_shapes(th, tw, dtype):
    """conv_tile micro-tile sizes that do not divide the output: tails in both axes."""
    from gpu_util import forced_forward, params, reference_forward, to_gpu

    rng = numpy.random.default_rng(3)
    x = random_array(rng, (2, 3, 29, 61), dtype)
    w = random_array(rng, (3, 1, 3, 5), dtype)
    p = params(x.shape, w.shape, False, 1, (1, 2), 1)
    out, launch = forced_forward(to_gpu(x), to_gpu(w), None, p, dtype, "tile", th=th, tw=tw)
    assert out is not None
    ref = reference_forward(x, w, None, stride=1, padding=(1, 2), dilation=1)
    assert_close(out.get(), ref, dtype, scale=math.sqrt(15))


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous_and_sliced_inputs(dtype):
    import cupy

    import cupy_dwconv
    from gpu_util import reference_forward

    rng = numpy.random.default_rng(5)
    base = random_array(rng, (3, 4, 40, 66), dtype)
    bg = cupy.asarray(base)
    views = {
        "sliced_offset": (bg[:, :, 1:, 3:], base[:, :, 1:, 3:]),         # misaligned base pointer
        "strided_w": (bg[:, :, :, ::2], base[:, :, :, ::2]),
        "channel_slice": (bg[:, 1:3], base[:, 1:3]),
        "nhwc_transposed": (
            cupy.ascontiguousarray(bg.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
            base,
        ),
    }
    for name, (xg, xh) in views.items():
        C = xh.shape[1]
        w = random_array(rng, (2 * C, 1, 3, 3), dtype)
        w_inter = random_array(rng, (4 * C, 1, 3, 3), dtype)
        w_inter[::2] = w
        wg_full = cupy.asarray(w_inter)[::2]                              # non-contiguous weight
        b = random_array(rng, (4 * C,), dtype)
        bg_strided = cupy.asarray(b)[::2]                                  # strided bias
        out = cupy_dwconv.depthwise_conv2d(xg, wg_full, bg_strided, padding=1)
        ref = reference_forward(numpy.ascontiguousarray(xh), w, b[::2], padding=1)
        assert_close(out.get(), ref, dtype, scale=3.0, what=name)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_many_planes_past_grid_limits(dtype):
    """N*C*M above 65535 planes (and C*M above the grid's y limit for the weight pass)."""
    _case(numpy.random.default_rng(9), 3, 23000, 5, 9, 1, 3, 3, 1, 1, 1, True, dtype)
    _case(numpy.random.default_rng(10), 1, 35000, 3, 4, 2, 2, 3, 1, "same", 1, False, dtype)


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8)])
def test_empty_returns_without_launch(shape, monkeypatch):
    import cupy

    import cupy_dwconv
    from gpu_util import no_launch

    C = shape[1]
    x = cupy.zeros(shape, dtype=cupy.float32)
    w = cupy.ones((2 * C, 1, 3, 3), dtype=cupy.float32)
    with no_launch(monkeypatch):
        out = cupy_dwconv.depthwise_conv2d(x, w, padding=1)
    assert out.shape == (shape[0], 2 * C, 8, 8)
    assert out.size == 0


def test_large_tensor_64bit_indices():
    """More than 2^31 elements in x and in the output: offsets need 64-bit math.
    Checked on the last rows of the last plane, where 32-bit offsets would wrap."""
    import cupy

    import cupy_dwconv
    from gpu_util import reference_forward

    N, C, H, W = 2, 3, 19000, 19000  # 2.17e9 elements of float16 (4.3 GB)
    rng = numpy.random.default_rng(0)
    x = cupy.random.default_rng(1).standard_normal((N, C, H, W), dtype=cupy.float32).astype(cupy.float16)
    assert x.size > 2**31
    w = random_array(rng, (C, 1, 3, 3), "float16")
    out = cupy_dwconv.depthwise_conv2d(x, cupy.asarray(w), padding=1)
    tail = x[N - 1:, C - 1:, H - 9:, W - 40:].get()
    ref = reference_forward(tail, w[C - 1:], None, padding=1)
    got = out[N - 1:, C - 1:, H - 9:, W - 40:].get()
    # Interior of the slice only (its own borders lack the neighbours outside the slice),
    # plus the true bottom/right edges of the plane.
    assert_close(got[..., 1:, 1:], ref[..., 1:, 1:], "float16", scale=3.0)
    del x, out


def test_arrays_on_different_gpus():
    import cupy

    import cupy_dwconv

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    x = cupy.ones((1, 2, 5, 5), dtype=cupy.float32)
    with cupy.cuda.Device(1):
        w = cupy.ones((2, 1, 3, 3), dtype=cupy.float32)
    with pytest.raises(ValueError, match="weight: expected an array on GPU 0"):
        cupy_dwconv.depthwise_conv2d(x, w)


def test_current_stream_and_device():
    """Work goes to CuPy's current stream: on a fresh stream the result is complete
    after synchronizing that stream alone."""
    import cupy

    import cupy_dwconv
    from gpu_util import reference_forward

    rng = numpy.random.default_rng(4)
    x = random_array(rng, (4, 8, 64, 64), "float32")
    w = random_array(rng, (8, 1, 5, 5), "float32")
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        xg, wg = cupy.asarray(x), cupy.asarray(w)
        out = cupy_dwconv.depthwise_conv2d(xg, wg, padding=2)
    s.synchronize()
    assert_close(cupy.asnumpy(out), reference_forward(x, w, None, padding=2), "float32", scale=5.0)


def test_cached_calls_from_threads_and_streams():
    """Repeated calls take the call cache: from several threads at once, each on its own
    stream, with and without bias, every result is the convolution of its own inputs."""
    import threading

    import cupy

    import cupy_dwconv
    from cupy_dwconv import _api
    from gpu_util import reference_forward

    shape, wshape, pad = (2, 6, 20, 33), (6, 1, 3, 5), (1, 2)
    rng = numpy.random.default_rng(11)
    jobs = [(t, random_array(rng, shape, "float32"), random_array(rng, wshape, "float32"),
             random_array(rng, (6,), "float32") if k % 2 else None) for t in range(4) for k in range(6)]
    for b in (jobs[1][3], None):  # fill the cache from this thread
        cupy_dwconv.depthwise_conv2d(cupy.asarray(jobs[0][1]), cupy.asarray(jobs[0][2]),
                                     None if b is None else cupy.asarray(b), padding=pad)
    results, errors = {}, []

    def worker(t):
        try:
            s = cupy.cuda.Stream(non_blocking=True)
            with s:
                for i, (owner, x, w, b) in enumerate(jobs):
                    if owner == t:
                        results[i] = cupy_dwconv.depthwise_conv2d(
                            cupy.asarray(x), cupy.asarray(w), None if b is None else cupy.asarray(b), padding=pad)
            s.synchronize()
        except Exception as e:  # re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i, (_, x, w, b) in enumerate(jobs):
        assert_close(results[i].get(), reference_forward(x, w, b, padding=pad), "float32", scale=math.sqrt(15))
    assert sum(e[1] is not None for e in _api._FORWARD_CACHE.values()) >= 2  # hits launched


def test_cache_hit_needs_the_same_layout():
    """The call cache keys on shape and strides: after contiguous calls, an x or weight
    of the same shape in another layout (transposed planes, a slice of a larger array)
    must not reuse the contiguous launch; every result is right."""
    import cupy

    import cupy_dwconv
    from gpu_util import reference_forward

    rng = numpy.random.default_rng(21)
    x = random_array(rng, (2, 4, 20, 24), "float32")
    w = random_array(rng, (4, 1, 3, 5), "float32")
    ref = reference_forward(x, w, None, padding=(1, 2))
    xg, wg = cupy.asarray(x), cupy.asarray(w)
    for _ in range(2):  # the second call is a cache hit
        assert_close(cupy_dwconv.depthwise_conv2d(xg, wg, padding=(1, 2)).get(), ref, "float32", scale=math.sqrt(15))
    x_t = cupy.asarray(numpy.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)
    x_big = cupy.asarray(random_array(rng, (2, 4, 23, 29), "float32"))
    x_big[:, :, 1:21, 2:26] = xg
    w_t = cupy.asarray(numpy.ascontiguousarray(w.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)
    for xa, wa in ((x_t, wg), (x_big[:, :, 1:21, 2:26], wg), (xg, w_t), (xg, wg)):
        assert xa.shape == xg.shape and wa.shape == wg.shape
        got = cupy_dwconv.depthwise_conv2d(xa, wa, padding=(1, 2))
        assert_close(got.get(), ref, "float32", scale=math.sqrt(15))


def test_dispatch_paths_cover_families():
    """The dispatcher keeps a general path and picks the specialized kernels by shape."""
    from cupy_dwconv import _kernels
    from gpu_util import params

    small = params((2, 4, 56, 56), (4, 1, 3, 3), True, 1, 1, 1)
    large = params((2, 4, 56, 56), (4, 1, 31, 31), True, 1, 15, 1)
    wide = params((1, 2, 200, 200), (2, 1, 31, 31), True, 1, 15, 1)  # a plane past conv_lines' shared memory
    huge_w = params((1, 2, 8, 300), (2, 1, 1, 101), True, 1, 0, 1)
    assert "conv_tile" in _kernels.plan_forward(small, "float32", 0).expr
    assert "conv_lines" in _kernels.plan_forward(large, "float32", 0).expr
    assert "conv_smem" in _kernels.plan_forward(wide, "float32", 0).expr
    assert "conv_generic" in _kernels.plan_forward(huge_w, "float32", 0).expr
    # Tensor cores for 16-bit large kernels at stride 1 on sm_80+, not before that.
    assert "conv_mma" in _kernels.plan_forward(large, "bfloat16", 0, 80).expr
    assert "conv_smem" in _kernels.plan_forward(large, "bfloat16", 0, 75).expr
    assert "conv_rows" in _kernels.plan_forward(small, "bfloat16", 0, 90).expr
    assert "conv_tile" in _kernels.plan_forward(params((2, 4, 56, 56), (4, 1, 3, 3), True, 2, 1, 1), "bfloat16", 0, 90).expr
    _case(numpy.random.default_rng(2), 1, 2, 8, 300, 1, 1, 101, 1, 0, 1, True, "float32")


def test_argument_struct_layouts_on_device():
    """The C++ argument structs, as this GPU's compiler lays them out, match the numpy
    dtypes the host packs them with (offset and size of every field)."""
    import cupy

    from cupy_dwconv import _kernels

    lines = [_kernels.source("conv.cu"), 'extern "C" __global__ void abi_probe(long long* out) {']
    expected = []
    for name, dt in _kernels.ARG_DTYPES.items():
        lines.append(f"  {{ dw::{name} s; const char* b = reinterpret_cast<const char*>(&s);")
        lines.append(f"    out[{len(expected)}] = sizeof(s);")
        expected.append(dt.itemsize)
        for field, (fdt, offset) in dt.fields.items():
            lines.append(f"    out[{len(expected)}] = reinterpret_cast<const char*>(&s.{field}) - b;")
            expected.append(offset)
            lines.append(f"    out[{len(expected)}] = sizeof(s.{field});")
            expected.append(fdt.itemsize)
        lines.append("  }")
    lines.append("}")
    kern = cupy.RawModule(code="\n".join(lines), options=_kernels.NVRTC_OPTIONS).get_function("abi_probe")
    out = cupy.full(len(expected), -1, dtype=cupy.int64)
    kern((1,), (1,), (out,))
    assert out.get().tolist() == expected


# (N, C, H, W, KH, KW, stride, padding, dilation, dtype): a direct kernel of each family
# and the tensor-core path (16-bit, 25+ taps).
NAN_CASES = [
    (2, 3, 20, 30, 3, 3, 1, 1, 1, "float32"),
    (2, 3, 56, 56, 7, 7, 1, 3, 1, "float32"),
    (1, 2, 28, 28, 13, 13, 1, 6, 1, "float32"),
    (2, 3, 30, 30, 5, 5, 2, 2, 1, "float64"),
    (1, 2, 20, 20, 3, 3, 1, 3, 3, "float32"),
    (2, 3, 56, 56, 7, 7, 1, 3, 1, "float16"),
    (16, 2, 56, 56, 7, 7, 1, 3, 1, "float16"),
    (1, 2, 28, 28, 13, 13, 1, 6, 1, "bfloat16"),
]


@pytest.mark.parametrize("case", NAN_CASES, ids=str)
def test_nan_input_propagation(case):
    """One NaN input: every output whose window holds it is NaN. The direct kernels make
    exactly those outputs NaN (as the reference does); the tensor-core path (README,
    "Numerics") may also make NaN other outputs of the same plane and rows, never of
    another plane or row."""
    import cupy_dwconv
    from cupy_dwconv import _kernels
    from gpu_util import params, reference_forward, to_gpu

    N, C, H, W, KH, KW, stride, padding, dilation, dtype = case
    rng = numpy.random.default_rng(11)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C, 1, KH, KW), dtype)
    x[N - 1, C - 1, H // 2, W // 3] = numpy.nan
    xg, wg = to_gpu(x), to_gpu(w)
    p = params(x.shape, w.shape, False, stride, padding, dilation)
    expr = _kernels.plan_forward(p, dtype, xg.data.ptr).expr
    tensor_cores = "conv_mma" in expr or "conv_stack" in expr
    out = numpy.isnan(cupy_dwconv.depthwise_conv2d(xg, wg, stride=stride, padding=padding, dilation=dilation).get())
    ref = numpy.isnan(reference_forward(x, w, None, stride=stride, padding=padding, dilation=dilation))
    assert ref.any() and ref[N - 1, C - 1].sum() == ref.sum()
    assert out[ref].all(), "an output whose window holds the NaN is not NaN"
    if not tensor_cores:
        assert numpy.array_equal(out, ref), f"{numpy.count_nonzero(out & ~ref)} NaN outputs outside the NaN's window"
    else:
        rows = ref[N - 1, C - 1].any(axis=1)
        extra = out & ~ref
        assert extra.sum() == extra[N - 1, C - 1][rows].sum(), "NaN outside the plane and rows of the NaN's window"
