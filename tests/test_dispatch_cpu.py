"""Dispatch rules: which kernel family the planner picks for a problem, dtype and device
(pure planning, no GPU: plans take the compute capability and SM count explicitly)."""

import ctypes

from cupy_dwconv import _kernels, _params


def params(x_shape, w_shape, stride, padding, dilation):
    return _params.conv_params(x_shape, w_shape, None, stride, padding, dilation)


def test_wgrad_mma_declines_other_problems():
    """Strides, dilations, float32 and pre-Ampere devices take the other families."""
    ok = params((2, 4, 30, 30), (4, 1, 3, 3), 1, 1, 1)
    assert _kernels.wgrad_mma_launch(ok, "float16", 0, 0, 90) is not None
    assert _kernels.wgrad_mma_launch(ok, "float16", 0, 0, 75) is None
    assert _kernels.wgrad_mma_launch(ok, "float32", 0, 0, 90) is None
    assert _kernels.wgrad_mma_launch(params((2, 4, 30, 30), (4, 1, 3, 3), 2, 1, 1), "float16", 0, 0, 90) is None
    assert _kernels.wgrad_mma_launch(params((2, 4, 30, 30), (4, 1, 3, 3), 1, 2, 2), "float16", 0, 0, 90) is None
    assert _kernels.wgrad_mma_launch(params((1, 1, 40, 40), (1, 1, 32, 3), 1, 0, 1), "float16", 0, 0, 90) is None


def test_wgrad_dispatch():
    """wgrad_tile for small kernels in every dtype; tensor cores for large 16-bit kernels
    at stride 1 on sm_80+ (on small planes see the next test); wgrad_lines where a
    grad_output row and a tap row of sums fit the register budget (16-bit before sm_80
    too), wgrad_smem for wider planes."""
    small = params((2, 4, 30, 30), (4, 1, 3, 3), 1, 1, 1)
    large = params((2, 4, 56, 56), (4, 1, 31, 31), 1, 15, 1)
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        assert "wgrad_tile" in _kernels.plan_wgrad(small, dtype, 0, 0, 90, 132)[0].expr
    assert "wgrad_mma" in _kernels.plan_wgrad(large, "bfloat16", 0, 0, 80, 108)[0].expr
    assert "wgrad_mma" in _kernels.plan_wgrad(large, "float16", 2, 2, 90, 132)[0].expr
    assert "wgrad_lines<dw::bf16_t" in _kernels.plan_wgrad(large, "bfloat16", 0, 0, 75, 80)[0].expr
    assert "wgrad_lines" in _kernels.plan_wgrad(large, "float32", 0, 0, 90, 132)[0].expr
    assert "wgrad_smem" in _kernels.plan_wgrad(large, "float64", 0, 0, 90, 132)[0].expr  # 2 x (56 + 31) words
    wide = params((2, 4, 80, 80), (4, 1, 31, 31), 1, 15, 1)
    assert "wgrad_smem" in _kernels.plan_wgrad(wide, "float32", 0, 0, 90, 132)[0].expr
    # 75 KB of staged rows: wgrad_smem where a block may have them, the generic kernel on
    # sm_75 (64 KB).
    assert "wgrad_smem" in _kernels.plan_wgrad(wide, "float16", 0, 0, 75, 80, smem=96 * 1024)[0].expr
    assert "wgrad_generic" in _kernels.plan_wgrad(wide, "float16", 0, 0, 75, 80)[0].expr
    # replk_13x13: 7 channels per block (91 of 96 lanes), 16 chunks of 2 items;
    # replk_31x31: one channel per block (31 of 32 lanes), 8 chunks of 4.
    s1, chunks, _ = _kernels.plan_wgrad(params((32, 256, 28, 28), (256, 1, 13, 13), 1, 6, 1), "float32", 0, 0, 90, 132)
    assert "wgrad_lines" in s1.expr and s1.block == (96, 1, 1) and s1.grid == (37, 16, 1) and chunks == 16
    assert s1.scalars[0]["P"] == 7 and s1.scalars[0]["G"] == 2
    s1, chunks, _ = _kernels.plan_wgrad(params((32, 128, 56, 56), (128, 1, 31, 31), 1, 15, 1), "float32", 0, 0, 90, 132)
    assert s1.block == (32, 1, 1) and s1.grid == (128, 8, 1) and s1.scalars[0]["G"] == 4


def test_wgrad_lines16_dispatch():
    """16-bit large kernels on small planes: wgrad_lines (float32 sums of converted
    planes) before the tensor cores, on planes of up to 400 outputs for any kernel and up
    to 28 x 28 for kernels up to 13x13; the tensor cores above (measurements in
    _use_wgrad_lines16). Every other dtype and problem keeps its plan."""
    def family(shape, k, dtype, arch=90):
        p = params(shape, (shape[1], 1, k, k), 1, k // 2, 1)
        return _kernels.split_expr(_kernels.plan_wgrad(p, dtype, 0, 0, arch, 132)[0].expr)[0]

    for dtype in ("float16", "bfloat16"):
        assert family((64, 768, 7, 7), 13, dtype) == "wgrad_lines"
        assert family((64, 384, 14, 14), 9, dtype) == "wgrad_lines"
        assert family((32, 256, 14, 14), 31, dtype) == "wgrad_lines"   # 196 outputs: any kernel
        assert family((32, 256, 20, 20), 31, dtype) == "wgrad_lines"   # 400
        assert family((32, 256, 21, 21), 31, dtype) == "wgrad_mma"     # 441 outputs, 961 taps
        assert family((32, 256, 28, 28), 13, dtype) == "wgrad_lines"   # 784 outputs, 169 taps
        assert family((32, 256, 28, 28), 15, dtype) == "wgrad_mma"
        assert family((32, 256, 29, 29), 13, dtype) == "wgrad_mma"
        assert family((32, 128, 56, 56), 31, dtype) == "wgrad_mma"
        # 64 taps and fewer stay with the small-kernel families.
        assert family((64, 384, 14, 14), 7, dtype) not in ("wgrad_lines", "wgrad_mma")
    for dtype in ("float32", "float64"):
        assert family((64, 768, 7, 7), 13, dtype) == "wgrad_lines"
    # The channels of a block read their input channels' planes once (a multiplier shares
    # one plane between channels); the plan itself does not depend on it.
    p = params((4, 6, 7, 7), (12, 1, 9, 9), 1, 4, 1)
    s1 = _kernels.plan_wgrad(p, "float16", 0, 0, 90, 132)[0]
    assert "wgrad_lines" in s1.expr and s1.shared_mem == _kernels.wgrad_lines_smem_bytes(p, "float16", s1.scalars[0]["P"])
    # Planes are staged as float32: the same shared memory as float32's plan.
    assert _kernels.wgrad_lines_smem_bytes(p, "bfloat16", 3) == _kernels.wgrad_lines_smem_bytes(p, "float32", 3)


def _args(expr):
    return _kernels.split_expr(expr)[1]


def _tile(pr, dtype, ptr):
    """The conv_tile plan of a problem (the tile rules, wherever the dispatcher sends it)."""
    return _kernels.plan_conv(pr, dtype, ptr, force=("tile", {}), arch=90, sms=132)


def test_load_width_follows_rows_and_pointers():
    """Tile loads: 16-byte vectors where rows and pointer allow, else 8 or 4 bytes, else
    single elements (conv_tile's VIN is its 13th template argument, wgrad_tile's VIN and
    VGO its 10th and 12th)."""
    seed = params((2, 4, 128, 256), (4, 1, 3, 7), 1, 0, 1)           # x rows 256, grad_output rows 250
    back = _params.backward_params(seed.out_shape, seed.x_shape, seed.weight_shape, 1, 0, 1)
    fwd = lambda dtype, ptr: int(_args(_tile(_kernels.forward_problem(seed), dtype, ptr).expr)[12])
    assert [fwd("float32", ptr) for ptr in (0, 8, 4, 2)] == [4, 2, 1, 1]
    assert [fwd("float16", ptr) for ptr in (0, 8, 4, 2)] == [8, 4, 2, 1]
    gi = _tile(_kernels.grad_input_problem(back), "float32", 0).expr  # reads grad_output rows of 250
    assert "conv_tile" in gi and int(_args(gi)[12]) == 2
    wg = _args(_kernels.plan_wgrad(back, "float16", 0, 0, 90, 132)[0].expr)
    assert (int(wg[9]), int(wg[11])) == (8, 2)
    odd = params((2, 4, 31, 17), (4, 1, 1, 7), 1, (0, 3), 1)  # rows of 17: single elements
    assert int(_args(_tile(_kernels.forward_problem(odd), "float32", 0).expr)[12]) == 1


def test_prefetch_rules():
    """L2 prefetch distance (conv_tile's 17th template argument, wgrad_tile's last): on for
    16-bit tiles, two tiles ahead on large planes; off for float32 3x3 forward tiles and
    float32 grad-weight tiles."""
    big = params((2, 4, 256, 256), (4, 1, 3, 3), 1, 1, 1)
    small = params((2, 4, 56, 56), (4, 1, 3, 3), 1, 1, 1)
    last = lambda expr: int(_args(expr)[-1])
    pf = lambda expr: int(_args(expr)[16])
    assert pf(_tile(_kernels.forward_problem(big), "float16", 0).expr) == 2
    assert pf(_tile(_kernels.forward_problem(small), "bfloat16", 0).expr) == 1
    assert pf(_tile(_kernels.forward_problem(big), "float32", 0).expr) == 0
    assert last(_kernels.plan_wgrad(small, "float32", 0, 0, 90, 132)[0].expr) == 0
    assert last(_kernels.plan_wgrad(small, "float16", 0, 0, 90, 132)[0].expr) == 1


def test_wgrad_tile_blocks_per_sm():
    """wgrad_tile's tile and MINB (its 8th, 9th and 13th template arguments): strided
    problems, float32 and 16-bit, run 2-3 blocks per SM on small tiles (effnet_5x5_s2:
    3x4 at 2, mbv2_3x3_s2: 1x4 at 3, 16-bit 1x8 at 2; 5x5 on small planes 4x4 at 2);
    stride-1 ones keep one block per SM."""
    def shape(p, dtype):
        a = _args(_kernels.plan_wgrad(p, dtype, 0, 0, 90, 132)[0].expr)
        assert a[0] == _kernels.CXX_TYPE[dtype]
        return int(a[7]), int(a[8]), int(a[12])

    effnet_s2 = params((64, 144, 56, 56), (144, 1, 5, 5), 2, 2, 1)
    mbv2_s2 = params((64, 96, 112, 112), (96, 1, 3, 3), 2, 1, 1)
    mbv2 = params((64, 144, 56, 56), (144, 1, 3, 3), 1, 1, 1)
    assert shape(effnet_s2, "float32") == (3, 4, 2)
    assert shape(mbv2_s2, "float32") == (1, 4, 3)
    assert shape(mbv2, "float32") == (4, 8, 1)
    assert shape(mbv2_s2, "float16") == shape(mbv2_s2, "bfloat16") == (1, 8, 2)  # rows of 56 outputs
    assert shape(params((64, 144, 56, 56), (144, 1, 3, 3), 2, 1, 1), "float16") == (1, 4, 3)
    assert shape(effnet_s2, "float16") == (3, 4, 2)
    assert shape(params((64, 144, 14, 14), (144, 1, 5, 5), 2, 2, 1), "float16") == (4, 4, 2)
    assert shape(mbv2, "float16") == (4, 8, 1)
    assert shape(effnet_s2, "float64") == (4, 4, 1)


def test_tile_strip_rules():
    """conv_tile strips (tiles per thread down a column, TileArgs.NT): float32 3x3 tiles
    aim at ~10 waves of resident threads (mbv2_3x3: 2 tiles, image_3x3: 4, mbv2_3x3_s2:
    1), stride-2 5x5 at one wave (effnet_5x5_s2: the whole column of 7 tiles); the
    strided grad input runs 3 blocks per SM, one tile per thread for 3x3."""
    def nt(launch):
        return int(launch.scalars[0]["NT"])

    mbv2 = params((64, 144, 56, 56), (144, 1, 3, 3), 1, 1, 1)
    image = params((8, 32, 512, 512), (32, 1, 3, 3), 1, 1, 1)
    mbv2_s2 = params((64, 96, 112, 112), (96, 1, 3, 3), 2, 1, 1)
    effnet_s2 = params((64, 144, 56, 56), (144, 1, 5, 5), 2, 2, 1)
    for p, want in ((mbv2, 2), (image, 4), (mbv2_s2, 1), (effnet_s2, 7)):
        launch = _kernels.plan_forward(p, "float32", 0, 90, 132)
        assert "conv_tile" in launch.expr and nt(launch) == want
    gi = _kernels.plan_grad_input(mbv2_s2, "float32", 0, 90, 132)
    assert "conv_tile" in gi.expr and _args(gi.expr)[15] == "3" and nt(gi) == 1
    # Fewer multiprocessors hold fewer threads: longer strips keep the waves (at most 8).
    assert nt(_kernels.plan_forward(mbv2, "float32", 0, 90, 66)) == 4
    assert nt(_kernels.plan_forward(image, "float32", 0, 90, 16)) == 8


def test_tile_multi_plane_loop_only_where_needed():
    """conv_tile compiles its loop over R input planes (MULTI, the last template argument)
    only for a grad input that gathers several planes (channel multiplier > 1)."""
    def multi(p, grad):
        launch = (_kernels.plan_grad_input if grad else _kernels.plan_forward)(p, "float32", 0, 90, 132)
        assert "conv_tile" in launch.expr
        return _args(launch.expr)[-1]

    one = params((2, 4, 30, 30), (4, 1, 3, 3), 2, 1, 1)
    three = params((2, 4, 30, 30), (12, 1, 3, 3), 2, 1, 1)
    assert (multi(one, False), multi(one, True), multi(three, False), multi(three, True)) == (
        "false", "false", "false", "true")


def test_plane_dispatch():
    """Small planes at stride 1 whose kernel has 25 taps or more in float32 (16-bit: on
    planes of 144 outputs or more), and every kernel of more than one row in float64,
    take conv_batch (forward; grad input with the rotated kernel unless it gathers
    several planes) on planes of up to 16 rows and columns (float64: 12); other small
    odd planes (inception_1x7's 17x17 under 1x7, 3x3 in
    float32) take conv_plane, and wgrad_plane up to 64 outputs; so do even planes whose
    lanes share shared-memory banks at most 2 ways, or 4 ways from 144 outputs (14 x 14;
    10 x 10 in 16-bit); other even planes (8 x 8, 16 x 16: 32 ways; 12 x 12: 16; 10 x 10
    float32: 4 ways on 100 outputs), large planes and strided grad input do not."""
    tiny = params((64, 96, 7, 7), (96, 1, 7, 7), 1, 3, 1)
    back = _params.backward_params(tiny.out_shape, tiny.x_shape, tiny.weight_shape, 1, 3, 1)
    for dtype, family in (("float16", "conv_plane"), ("bfloat16", "conv_plane"), ("float32", "conv_batch"),
                          ("float64", "conv_batch")):
        fwd = _kernels.plan_forward(tiny, dtype, 0, 90, 132).expr
        flip = 13 if family == "conv_batch" else 14
        assert family in fwd and _args(fwd)[flip] == "false", (dtype, fwd)
        gi = _kernels.plan_grad_input(back, dtype, 0, 90, 132).expr
        assert family in gi and _args(gi)[flip] == "true", (dtype, gi)
    # A grad input that gathers two planes per output plane (multiplier 2) stays on
    # conv_plane; its forward reads one plane per output plane.
    multi = params((64, 48, 7, 7), (96, 1, 7, 7), 1, 3, 1)
    back_multi = _params.backward_params(multi.out_shape, multi.x_shape, multi.weight_shape, 1, 3, 1)
    assert "conv_batch" in _kernels.plan_forward(multi, "float32", 0, 90, 132).expr
    assert "conv_plane" in _kernels.plan_grad_input(back_multi, "float32", 0, 90, 132).expr
    three7 = params((64, 96, 7, 7), (96, 1, 3, 3), 1, 1, 1)
    assert "conv_plane" in _kernels.plan_forward(three7, "float32", 0, 90, 132).expr
    assert "conv_batch" in _kernels.plan_forward(three7, "float64", 0, 90, 132).expr
    for dtype in ("float16", "bfloat16", "float32"):
        assert "wgrad_plane" in _kernels.plan_wgrad(back, dtype, 0, 0, 90, 132)[0].expr
    even = params((4, 8, 8, 8), (8, 1, 3, 3), 1, 1, 1)
    assert "conv_plane" not in _kernels.plan_forward(even, "float32", 0, 90, 132).expr
    assert "wgrad_plane" not in _kernels.plan_wgrad(even, "float32", 0, 0, 90, 132)[0].expr
    for hw, k, dtype, want in (
        (14, 7, "float32", "conv_batch"), (14, 7, "float16", "conv_batch"), (14, 3, "bfloat16", "conv_plane"),
        (14, 5, "float32", "conv_batch"), (10, 3, "float16", "conv_plane"), (10, 3, "float32", None),
        (16, 3, "float32", None), (16, 3, "float16", None), (12, 3, "float32", None), (14, 7, "float64", None), (12, 5, "float64", "conv_batch"),
        (10, 5, "float16", "conv_plane"), (12, 5, "bfloat16", "conv_batch"), (17, 5, "float32", "conv_plane"),
        (17, 3, "float64", "conv_plane"),
    ):
        p = params((4, 8, hw, hw), (8, 1, k, k), 1, k // 2, 1)
        back = _params.backward_params(p.out_shape, p.x_shape, p.weight_shape, 1, k // 2, 1)
        for e in (_kernels.plan_forward(p, dtype, 0, 90, 132).expr, _kernels.plan_grad_input(back, dtype, 0, 90, 132).expr):
            got = next((f for f in ("conv_batch", "conv_plane") if f in e), None)
            assert got == want, (hw, k, dtype, e)
    # 1 x 7 on 17x17 planes: one row per thread (no input row is shared between a
    # thread's rows), 8 planes (160 threads, a 16-byte aligned run) per block; a 3 x 3
    # kernel keeps three rows of 17 per thread.
    inception = params((4, 8, 17, 17), (8, 1, 1, 7), 1, (0, 3), 1)
    for dtype in ("float32", "float16"):
        launch = _kernels.plan_forward(inception, dtype, 0, 90, 132)
        assert _args(launch.expr)[13] == "1" and launch.block[0] == 160 and int(launch.scalars[0]["P"]) == 8
    back17 = _params.backward_params(inception.out_shape, inception.x_shape, inception.weight_shape, 1, (0, 3), 1)
    assert _args(_kernels.plan_grad_input(back17, "float32", 0, 90, 132).expr)[13] == "1"
    three = params((4, 8, 17, 17), (8, 1, 3, 3), 1, 1, 1)
    assert _args(_kernels.plan_forward(three, "float32", 0, 90, 132).expr)[13] == "3"
    large = params((4, 8, 21, 21), (8, 1, 3, 3), 1, 1, 1)
    assert "conv_plane" not in _kernels.plan_forward(large, "float32", 0, 90, 132).expr
    strided = _params.backward_params((2, 4, 4, 4), (2, 4, 7, 7), (4, 1, 3, 3), 2, 1, 1)
    assert "conv_plane" not in _kernels.plan_grad_input(strided, "float32", 0, 90, 132).expr


def test_bwd_plane_dispatch():
    """The backward of small odd planes at stride 1 and multiplier 1 that bwd_batch does
    not take is one bwd_plane launch (convnext_7x7_s4 in 16-bit; 3x3 kernels in float32);
    float64 7x7 needs more registers than a thread has, float64 5x5 fits (forced: the
    dispatcher gives float64 small planes to bwd_batch). It declines a multiplier, a
    stride, even planes (bank conflicts) and planes over 64 elements."""
    tiny = params((64, 768, 7, 7), (768, 1, 7, 7), 1, 3, 1)
    assert _kernels.bwd_plane_regs(tiny, "float64") > 255
    assert _kernels.plan_backward(tiny, "float64", 0, 0, 90, 132, force=dict(family="plane")) is None
    five = params((64, 96, 5, 5), (96, 1, 5, 5), 1, 2, 1)
    assert "bwd_plane" in _kernels.plan_backward(five, "float64", 0, 0, 90, 132, force=dict(family="plane"))[0].expr
    three = params((64, 96, 7, 7), (96, 1, 3, 3), 1, 1, 1)
    assert "bwd_plane" in _kernels.plan_backward(three, "float32", 0, 0, 90, 132)[0].expr
    for dtype in ("float16", "bfloat16"):
        s1, chunks, s2 = _kernels.plan_backward(tiny, dtype, 0, 0, 90, 132)
        assert "bwd_plane" in s1.expr and "wgrad_reduce" in s2.expr
        assert s1.grid[1] == chunks == int(s1.scalars[0]["n_chunks"]) and s1.grid[0] * int(s1.scalars[0]["P"]) >= 768
        assert s1.shared_mem == _kernels.wgrad_plane_smem_bytes(tiny, dtype, int(s1.scalars[0]["P"]),
                                                                int(s1.scalars[0]["G"]), weights=True,
                                                                stages=int(_args(s1.expr)[11]))
        planes = int(s1.scalars[0]["P"]) * int(s1.scalars[0]["G"])
        assert s1.block[0] == _kernels._cdiv(planes, 32) * 32
    for shape, w_shape, stride in (
        ((2, 4, 7, 7), (8, 1, 3, 3), 1),
        ((2, 4, 7, 7), (4, 1, 3, 3), 2),
        ((2, 4, 8, 8), (4, 1, 3, 3), 1),
        ((2, 4, 9, 9), (4, 1, 3, 3), 1),
    ):
        p = params(shape, w_shape, stride, 1, 1)
        assert _kernels.plan_backward(p, "float32", 0, 0, 90, 132, force=dict(family="plane")) is None, shape


def test_bwd_batch_dispatch():
    """The backward of small planes at stride 1 and dilation 1 without a multiplier, 25
    taps and more in float32, any kernel of more than one row in float64, planes up to 16
    rows and columns (float64 12) whose registers fit a block, is one bwd_batch launch
    (16-bit keeps bwd_plane and bwd_mma): 4 channels per unit in float32 where x and grad_output are 16-byte
    aligned and 4 | channels, else 1. Its launch matches what the kernel reads: a warp per
    x row, batch chunks of 32 / cg images, units over channel groups and chunks,
    persistent blocks, the shared memory of its layout."""
    tiny = params((64, 768, 7, 7), (768, 1, 7, 7), 1, 3, 1)
    for dtype, ptr, cg in (("float32", 0, 4), ("float32", 4, 1), ("float64", 0, 1)):
        s1, chunks, s2 = _kernels.plan_backward(tiny, dtype, ptr, 0, 90, 132)
        args = _args(s1.expr)
        assert "bwd_batch" in s1.expr and "wgrad_reduce" in s2.expr, (dtype, s1.expr)
        assert args[11] == str(cg) and chunks == _kernels._cdiv(64, 32 // cg), (dtype, ptr, s1.expr)
        sc = s1.scalars[0]
        assert int(sc["units"]) == 768 // cg * chunks and int(sc["N"]) == 64 and int(sc["QC"]) == int(sc["IC"]) == 768
        assert s1.block[0] == 7 * 32 and s1.grid[0] <= 132 * int(args[13]) and args[12] == "3"
        assert s1.shared_mem == _kernels.bwd_batch_smem_bytes(tiny, dtype, cg)
    for dtype in ("float16", "bfloat16"):
        assert "bwd_batch" not in _kernels.plan_backward(tiny, dtype, 0, 0, 90, 132)[0].expr
    fourteen = params((64, 96, 14, 14), (96, 1, 7, 7), 1, 3, 1)
    s1 = _kernels.plan_backward(fourteen, "float32", 0, 0, 90, 132)[0]
    assert "bwd_batch" in s1.expr and _args(s1.expr)[11] == "1", s1.expr  # 4 channels: too many registers
    assert "bwd_mma" in _kernels.plan_backward(fourteen, "float16", 0, 0, 90, 132)[0].expr
    declined = (
        params((64, 48, 7, 7), (96, 1, 7, 7), 1, 3, 1),     # multiplier
        params((64, 96, 7, 7), (96, 1, 3, 3), 1, 1, 1),     # 9 taps in float32
        params((64, 96, 7, 7), (96, 1, 7, 7), 2, 3, 1),     # stride
        params((64, 96, 7, 7), (96, 1, 3, 3), 1, 2, 2),     # dilation
        params((64, 96, 17, 17), (96, 1, 5, 5), 1, 2, 1),   # 17 rows
        params((64, 96, 17, 17), (96, 1, 1, 7), 1, (0, 3), 1),  # one kernel row
    )
    for p in declined:
        fused = _kernels.plan_backward(p, "float32", 0, 0, 90, 132)
        assert fused is None or "bwd_batch" not in fused[0].expr, p
    # Forced, it takes any stride-1 problem without a multiplier whose rows fit a block.
    assert _kernels.plan_backward(declined[0], "float32", 0, 0, 90, 132, force=dict(family="batch")) is None
    assert _kernels.plan_backward(declined[2], "float32", 0, 0, 90, 132, force=dict(family="batch")) is None
    assert "bwd_batch" in _kernels.plan_backward(declined[3], "float32", 0, 0, 90, 132,
                                                 force=dict(family="batch"))[0].expr
    assert _kernels.plan_backward(tiny, "float16", 0, 0, 90, 132, force=dict(family="batch", cg=4)) is None


def test_batch_declines_units_past_2gb():
    """conv_batch keeps each thread's offsets within a unit in 32 bits: where a unit's
    images of its input or output span 2^31 bytes or more (8 images of 4 channels, or 32
    of one), it declines and the problem takes another plan (bwd_batch keeps 64-bit
    offsets and takes it)."""
    for c, fits in ((65536, True), (1 << 21, False)):  # 8 images x c x 49 x 4 bytes
        p = params((8, c, 7, 7), (c, 1, 7, 7), 1, 3, 1)
        pr = _kernels.forward_problem(p)
        assert (_kernels.batch_launch(pr, "float32", 0, cg=4) is not None) == fits, c
        assert _kernels.bwd_batch_launch(p, "float32", 0, 0, cg=4) is not None, c
        if not fits:
            assert "conv_batch" not in _kernels.plan_forward(p, "float32", 0, 90, 132).expr
    assert _kernels._batch_spans_fit("float32", 1, (1 << 14, 1 << 10)) is False  # 32 images x 2^24 x 4 bytes
    assert _kernels._batch_spans_fit("float32", 1, ((1 << 14) - 1, 1 << 10)) is True


def test_bwd_mma_dispatch():
    """The 16-bit backward of kernels of 21 taps and more on whole planes of up to 64 x 64
    is one bwd_mma launch on sm_80 and newer (convnext_7x7); 3x3 kernels, float32, sm_75,
    a multiplier, odd widths and larger planes keep the other plans. Its launch matches
    the geometry the kernel checks (shared memory) and the partial rows it writes (grid
    (chunks, channels))."""
    convnext = params((64, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1)
    for dtype in ("float16", "bfloat16"):
        s1, chunks, s2 = _kernels.plan_backward(convnext, dtype, 0, 0, 90, 132)
        assert s1.src == "bwd_mma.cu" and "wgrad_reduce" in s2.expr
        assert s1.grid == (chunks, 96, 1) and int(s1.scalars[0]["n_chunks"]) == chunks and 1 < chunks <= 64
        assert s1.block == (128, 1, 1)
        wn, wr, shift, stages = (int(a) for a in (_args(s1.expr)[3], _args(s1.expr)[4], _args(s1.expr)[5],
                                                  _args(s1.expr)[8]))
        assert (wn, wr, shift) == (7, 4, 1)  # 8-byte grad_output copies: SHIFT 1, one grad_x k-step
        geo, smem = _kernels.bwd_mma_geometry(convnext, wn, wr, shift, stages)
        assert s1.shared_mem == smem <= _kernels.SM_SMEM
        assert all(int(s1.scalars[0][k]) == v for k, v in geo.items())
        assert geo["GOFF"] + convnext.PL >= 8 and geo["GX0"] % 8 == 0 and (geo["GP"] // 8) % 2 == 1
        assert "bwd_mma" not in _kernels.plan_backward(convnext, dtype, 0, 0, 75, 132)[0].expr
    assert "bwd_mma" not in _kernels.plan_backward(convnext, "float32", 0, 0, 90, 132)[0].expr
    for shape, w_shape, dtype in (
        ((64, 144, 56, 56), (144, 1, 3, 3), "float16"),
        ((2, 4, 56, 56), (8, 1, 7, 7), "float16"),
        ((2, 4, 56, 57), (4, 1, 7, 7), "bfloat16"),
        ((2, 4, 72, 72), (4, 1, 7, 7), "float16"),
    ):
        plan = _kernels.plan_backward(params(shape, w_shape, 1, 3, 1), dtype, 0, 0, 90, 132)
        assert plan is None or "bwd_mma" not in plan[0].expr, shape


def test_plane_launch_budget():
    """conv_plane's blocks fit their shared memory (mirrors the kernel's layout) and a
    register bound that holds the planned registers; wgrad_plane's too. conv_batch: a warp
    per output row and 32 images, its shared memory as the kernel lays it out, a register
    bound that holds its estimate, persistent blocks (at most what is resident)."""
    tiny = params((64, 768, 7, 7), (768, 1, 7, 7), 1, 3, 1)
    pr = _kernels.forward_problem(tiny)
    for dtype in ("float16", "float32", "float64"):
        batch = _kernels.plan_forward(tiny, dtype, 0, 90, 132)
        if dtype != "float16":
            cg = 4 if dtype == "float32" else 1  # float32: 16-byte runs of 4 channels
            assert "conv_batch" in batch.expr and batch.block[0] == 7 * 32 and _args(batch.expr)[14] == str(cg)
            assert batch.shared_mem == _kernels.batch_smem_bytes(pr, dtype, cg)
            minb = int(_args(batch.expr)[-1])
            assert _kernels.reg_cap(batch.block[0], minb) >= _kernels._batch_regs(pr, dtype, cg)
            units = 768 // cg * (64 // (32 // cg))
            assert batch.grid[0] == min(units, 132 * minb) and int(batch.scalars[0]["units"]) == units
        # A misaligned input, or channels not a multiple of 4: one channel per unit.
        assert _args(_kernels.plan_forward(tiny, "float32", 4, 90, 132).expr)[14] == "1"
        odd = params((64, 766, 7, 7), (766, 1, 7, 7), 1, 3, 1)
        assert _args(_kernels.plan_forward(odd, "float32", 0, 90, 132).expr)[14] == "1"
        launch = _kernels.plan_conv(pr, dtype, 0, force=("plane", {}), arch=90, sms=132)
        planes = int(launch.scalars[0]["P"])
        assert launch.shared_mem == _kernels.plane_smem_bytes(pr, dtype, planes) <= _kernels.PLANE_SMEM
        assert planes <= launch.block[0] and launch.block[0] % 32 == 0
        minb = int(_args(launch.expr)[-1])
        assert _kernels.reg_cap(launch.block[0], minb) >= 150
    s1, chunks, _ = _kernels.plan_wgrad(tiny, "float32", 0, 0, 90, 132)
    assert "wgrad_plane" in s1.expr and s1.grid[1] == chunks and s1.grid[0] * int(s1.scalars[0]["P"]) >= 768


def test_fused_backward_takes_and_declines():
    """The fused backward takes stride-1, multiplier-1 problems of at most 64 taps whose
    padding stays within the kernel's reach; everything else plans None (the separate
    grad-input and grad-weight kernels serve it). The row sweep (bwd_rows) on sm_80+ for
    16-bit kernels up to 49 taps and float32 kernels of 21 to 49 taps, those over 25 taps
    on planes of 28 columns or more and at one block per SM, except 16-bit kernels of more
    than 25 taps on whole planes up to 64 x 64 (bwd_mma); bwd_tile for the rest: float32
    3x3, 7x7 on small planes, and before sm_80."""
    seed = params((32, 128, 128, 256), (128, 1, 3, 7), 1, 0, 1)
    for dtype, arch, family in (("float16", 90, "bwd_rows"), ("bfloat16", 80, "bwd_rows"), ("float16", 75, "bwd_tile"),
                                ("float32", 90, "bwd_rows"), ("float32", 75, "bwd_tile")):
        s1, chunks, s2 = _kernels.plan_backward(seed, dtype, 0, 0, arch, 132)
        assert family in s1.expr and "wgrad_reduce" in s2.expr
        assert s1.grid == (chunks, 128, 1) and int(s1.scalars[0]["n_chunks"]) == chunks
    for dtype, w_shape, width, family, minb in (
            ("float32", (4, 1, 5, 5), 56, "bwd_rows", "2"), ("float16", (4, 1, 5, 5), 56, "bwd_rows", "2"),
            ("float32", (4, 1, 7, 7), 56, "bwd_rows", "1"), ("bfloat16", (4, 1, 7, 7), 28, "bwd_mma", None),
            ("float32", (4, 1, 7, 7), 27, "bwd_tile", None), ("float16", (4, 1, 7, 7), 14, "bwd_mma", None),
            ("float32", (4, 1, 3, 3), 56, "bwd_tile", None)):
        p = params((32, 4, 56, width), w_shape, 1, "same", 1)
        s1 = _kernels.plan_backward(p, dtype, 0, 0, 90, 132)[0]
        assert family in s1.expr, (dtype, w_shape, width)
        if minb is not None:
            assert _args(s1.expr)[-1] == minb and _args(s1.expr)[1] == "4", s1.expr  # blocks per SM, columns per lane
    for x_shape, w_shape, stride, pad in (
        ((1, 2, 16, 16), (2, 1, 3, 3), 2, 1),   # stride 2
        ((1, 2, 16, 16), (4, 1, 3, 3), 1, 1),   # channel multiplier 2
        ((1, 2, 16, 16), (2, 1, 3, 3), 1, 3),   # padding past the kernel: grad_output larger than x
        ((1, 2, 24, 24), (2, 1, 9, 9), 1, 4),   # 81 taps on planes past bwd_batch's 16 rows
    ):
        p = params(x_shape, w_shape, stride, pad, 1)
        assert _kernels.plan_backward(p, "float32", 0, 0, 90, 132) is None


def test_bwd_rows_narrow_rows_plan():
    """16-bit bwd_rows on rows of 33 to 56 columns, a tap reach of at most 4 rows and 9
    taps runs 8 columns per lane in blocks of 128 threads, 4 per SM; wider and narrower
    rows, float32, 5x5 and dilated 3x3 (a reach of 5 rows) keep 4 columns in blocks of
    256. Where the 8-column plan is declined the 4-column plan is taken instead."""
    for dtype, w_shape, width, dil, narrow in (
            ("float16", (4, 1, 3, 3), 56, 1, True), ("bfloat16", (4, 1, 3, 3), 34, 1, True),
            ("float16", (4, 1, 1, 3), 48, 1, True), ("float16", (4, 1, 3, 3), 64, 1, False),
            ("float16", (4, 1, 3, 3), 28, 1, False), ("float32", (4, 1, 3, 3), 56, 1, False),
            ("bfloat16", (4, 1, 5, 5), 56, 1, False), ("float16", (4, 1, 3, 3), 56, 2, False)):
        p = params((8, 4, 40, width), w_shape, 1, "same", dil)
        s1 = _kernels.plan_backward(p, dtype, 0, 0, 90, 132, force=dict(family="rows"))[0]
        assert ("bwd_rows" in s1.expr and (_args(s1.expr)[1] == "8") == narrow
                and s1.block[0] == (128 if narrow else 256)), (dtype, w_shape, width, s1.expr, s1.block)
        if narrow:
            assert _args(s1.expr)[-2:] == ["4", "128"], s1.expr
    p = params((8, 4, 40, 48), (4, 1, 5, 5), 1, "same", 1)
    standard = _kernels.bwd_rows_launch(p, "float16", 0, 0)[0]
    orig = _kernels._bwd_rows_narrow
    try:
        _kernels._bwd_rows_narrow = lambda p, dtype: True  # 5 tap rows x 8 columns: declined
        fallback = _kernels.bwd_rows_launch(p, "float16", 0, 0)[0]
    finally:
        _kernels._bwd_rows_narrow = orig
    assert fallback.expr == standard.expr and _args(fallback.expr)[1] == "4" and fallback.block == (256, 1, 1)
    assert _kernels.bwd_rows_launch(p, "float16", 0, 0, v=8, minb=4, block=128) is None
    assert _kernels.bwd_rows_launch(p, "float16", 0, 0, block=48) is None  # not whole warps


def test_rows_dispatch_and_widths():
    """The row sweeps take stride-1 problems with one input plane per output plane
    (forward with any multiplier; grad input with the rotated kernel at multiplier 1).
    conv_rows_async (rows staged by cp.async, sm_80+) where copies of 4 bytes or more (16-bit)
    or 8 (float32) fit the input rows and pointer: 16-bit 3x3 and 3x7 (3x7 with 8- and
    16-byte copies on rows past 64 columns takes conv_mma_rows), float32 kernels of
    10 to 49 taps and dilated 3x3; conv_rows (rows in registers) for the 16-bit 3x3 and 3x7
    whose rows only allow narrower copies, or before sm_80. float32 3x3 at dilation 1,
    16-bit 5x5 and 7x7 (tensor cores), strided problems, the grad input of a multiplier,
    16-bit dilated kernels and wider kernels go elsewhere. Template arguments: V (2nd)
    columns per lane, VL (3rd) elements per load or copy, following the input rows and
    pointer, VS (4th) per store, following the output rows, S (10th) the fewest lanes
    whose columns cover a row (up to 32), PF (11th) rows ahead, MINB (13th) blocks per
    SM."""
    seed = params((2, 4, 128, 256), (4, 1, 3, 7), 1, 0, 1)
    back = _params.backward_params(seed.out_shape, seed.x_shape, seed.weight_shape, 1, 0, 1)
    assert "conv_mma_rows" in _kernels.plan_forward(seed, "float16", 0, 90, 132).expr  # tensor cores there
    fwd = _kernels.rows_launch(_kernels.forward_problem(seed), "float16", 0, staged=True).expr
    assert "conv_rows_async" in fwd
    v, vl, vs, s, pf, minb = (int(_args(fwd)[i]) for i in (1, 2, 3, 9, 10, 12))
    assert (v, vl, vs, s, pf, minb) == (8, 8, 2, 32, 3, 2)  # rows of 256 in, 250 (4-byte stores) out
    # A 4-byte aligned pointer: 4-byte copies; a 2-byte aligned one: 2-byte loads in
    # registers; before sm_80 rows in registers, with 16-byte loads.
    for ptr, arch, family, vl in ((4, 90, "conv_rows_async<", 2), (2, 90, "conv_rows<", 1), (0, 75, "conv_rows<", 8)):
        e = _kernels.plan_forward(seed, "float16", ptr, arch, 132).expr
        assert family in e and int(_args(e)[2]) == vl, (ptr, arch, e)
    f32 = _kernels.plan_forward(seed, "float32", 0, 90, 132).expr
    assert "conv_rows_async" in f32 and [int(_args(f32)[i]) for i in (1, 10, 12)] == [4, 6, 2]
    assert "conv_rows" not in _kernels.plan_forward(seed, "float32", 4, 90, 132).expr  # 4-byte float32 copies
    gi = _kernels.plan_grad_input(back, "bfloat16", 0, 90, 132).expr
    assert "conv_rows_async" in gi and _args(gi)[11] == "true" and int(_args(gi)[2]) == 2  # grad_output rows of 250
    mbv2 = params((2, 4, 56, 56), (8, 1, 3, 3), 1, 1, 1)
    f16 = _kernels.plan_forward(mbv2, "float16", 0, 90, 132).expr
    assert "conv_rows_async" in f16 and [int(_args(f16)[i]) for i in (1, 9, 10, 12)] == [4, 16, 4, 3]
    mback = _params.backward_params(mbv2.out_shape, mbv2.x_shape, mbv2.weight_shape, 1, 1, 1)
    assert "conv_rows" not in _kernels.plan_grad_input(mback, "float16", 0, 90, 132).expr  # multiplier 2
    strided = params((2, 4, 56, 56), (4, 1, 3, 3), 2, 1, 1)
    assert "conv_rows" not in _kernels.plan_forward(strided, "float16", 0, 90, 132).expr
    for dtype, shape, dilation, expect in (
        ("float16", (4, 1, 5, 5), 1, None), ("bfloat16", (4, 1, 7, 7), 1, None),
        ("float32", (4, 1, 5, 5), 1, [4, 4, 2]), ("float32", (4, 1, 7, 7), 1, [4, 4, 2]),
        ("float32", (4, 1, 3, 3), 2, [2, 6, 2]), ("float32", (4, 1, 3, 7), (1, 2), [4, 6, 2]),
        ("float32", (4, 1, 3, 5), 1, [4, 6, 2]), ("float32", (4, 1, 1, 7), 1, None),
        ("float16", (4, 1, 3, 3), 2, None), ("float32", (4, 1, 3, 3), 1, None), ("float64", (4, 1, 7, 7), 1, None),
        ("float32", (4, 1, 9, 9), 1, None),
    ):
        e = _kernels.plan_forward(params((2, 4, 56, 56), shape, 1, 2, dilation), dtype, 0, 90, 132).expr
        if expect is None:
            assert "conv_rows" not in e, (dtype, shape, dilation)
        else:
            assert "conv_rows_async" in e and [int(_args(e)[i]) for i in (1, 10, 12)] == expect, (dtype, shape, e)


def test_rows_whole_dispatch_and_plan():
    """conv_rows_whole takes float32 kernels of 26 to 49 taps at stride and dilation 1
    whose output row its lanes fill exactly, forward and grad input, where it plans one
    band per plane. Template arguments: V (2nd) columns per lane, IW and OW (8th, 9th),
    S (10th) lanes, PF (11th), FLIP (12th), MINB (13th: enough blocks per SM for every
    unit at once), BLOCK (14th), PB and OB (15th, 16th: bytes per input copy and output
    store, from the rows' widths and the input pointer)."""
    convnext = params((64, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1)
    fwd = _kernels.plan_forward(convnext, "float32", 0, 90, 132)
    assert "conv_rows_whole" in fwd.expr, fwd.expr
    assert _args(fwd.expr)[1:] == ["7", "7", "7", "1", "1", "3", "56", "56", "8", "4", "false", "3", "128", "16", "16"]
    assert fwd.grid == (384, 1, 1) and fwd.block == (128, 1, 1) and int(fwd.scalars[0]["n_bands"]) == 1
    back = _params.backward_params(convnext.out_shape, convnext.x_shape, convnext.weight_shape, 1, 3, 1)
    gi = _kernels.plan_grad_input(back, "float32", 0, 90, 132).expr
    assert "conv_rows_whole" in gi and _args(gi)[11] == "true"
    stage2 = _kernels.plan_forward(params((64, 192, 28, 28), (192, 1, 7, 7), 1, 3, 1), "float32", 0, 90, 132).expr
    assert "conv_rows_whole" in stage2 and [_args(stage2)[i] for i in (1, 9)] == ["7", "4"]
    # An 8-byte aligned input: 8-byte copies.
    assert _args(_kernels.plan_forward(convnext, "float32", 8, 90, 132).expr)[14] == "8"
    # Not taken: 25 taps (memory-bound), rows the lanes do not fill exactly (54 columns),
    # 16-bit (tensor cores), dilation, stride 2, float64.
    for x_shape, w_shape, stride, pad, dilation, dtype in (
        ((8, 16, 28, 28), (16, 1, 5, 5), 1, 2, 1, "float32"),
        ((8, 16, 56, 56), (16, 1, 7, 7), 1, 2, 1, "float32"),
        ((8, 16, 56, 56), (16, 1, 7, 7), 1, 3, 1, "float16"),
        ((8, 16, 56, 56), (16, 1, 5, 5), 1, 4, 2, "float32"),
        ((8, 16, 56, 56), (16, 1, 7, 7), 2, 3, 1, "float32"),
        ((8, 16, 56, 56), (16, 1, 7, 7), 1, 3, 1, "float64"),
    ):
        e = _kernels.plan_forward(params(x_shape, w_shape, stride, pad, dilation), dtype, 0, 90, 132).expr
        assert "conv_rows_whole" not in e, (x_shape, w_shape, stride, pad, dilation, dtype, e)
    # The planner declines what the kernel cannot take: float64, strides, rows wider than
    # 32 lanes of 32 bytes, 16-bit rows of an odd width (4-byte copies), before sm_80.
    for x_shape, w_shape, stride, dtype, arch in (
        ((1, 2, 16, 56), (2, 1, 7, 7), 1, "float64", 90),
        ((1, 2, 16, 56), (2, 1, 7, 7), 2, "float32", 90),
        ((1, 2, 16, 300), (2, 1, 3, 3), 1, "float32", 90),
        ((1, 2, 16, 55), (2, 1, 3, 3), 1, "float16", 90),
        ((1, 2, 16, 56), (2, 1, 7, 7), 1, "float32", 75),
    ):
        pr = _kernels.forward_problem(params(x_shape, w_shape, stride, 1, 1))
        assert _kernels.rows_whole_launch(pr, dtype, 0, arch=arch) is None, (x_shape, stride, dtype, arch)
    # Input rows of 250, output rows of 244: 32 lanes of 8 float32 (8-byte copies of
    # 1000-byte rows, 16-byte stores of 976-byte rows) or 16 lanes of 16 halves (4-byte
    # copies of 500-byte rows, 8-byte stores of 488-byte rows).
    seed = _kernels.forward_problem(params((2, 4, 16, 250), (4, 1, 3, 7), 1, 0, 1))
    for dtype, v_s, pb_ob in (("float32", ["8", "32"], ["8", "16"]), ("float16", ["16", "16"], ["4", "8"])):
        e = _kernels.rows_whole_launch(seed, dtype, 0).expr
        assert [_args(e)[i] for i in (1, 9)] == v_s and [_args(e)[i] for i in (14, 15)] == pb_ob, (dtype, e)


def test_rows_pairs_rule():
    """conv_rows_async waits for two rows at a time up to 25 taps with rows ahead and no
    output-row buffer; 7x7 float32 (spills with it) and buffered outputs take one."""
    mbv2 = _kernels.forward_problem(params((4, 8, 56, 56), (8, 1, 3, 3), 1, 1, 1))
    convnext = _kernels.forward_problem(params((4, 8, 56, 56), (8, 1, 7, 7), 1, 3, 1))
    seed = _kernels.forward_problem(params((2, 4, 128, 256), (4, 1, 3, 7), 1, 0, 1))
    assert _args(_kernels.plan_conv(mbv2, "float16", 0, arch=90, sms=132).expr)[-1] == "2"
    assert _args(_kernels.rows_launch(convnext, "float32", 0, staged=True).expr)[-1] == "1"
    seed_plan = _kernels.rows_launch(seed, "float16", 0, staged=True)
    assert "conv_rows_async" in seed_plan.expr and _args(seed_plan.expr)[13] == "1"  # output rows buffered
    assert _kernels.rows_launch(seed, "float16", 0, staged=True, rp=2) is None


def test_mma_staging_takes_fewest_k_steps():
    """convnext_7x7 16-bit (pad 3): 8-byte copies start the tile 1 column early and need
    one k-step (as 4-byte copies, twice as many); 16-byte copies (5 columns early) would
    need two. Rows of a width that is not a multiple of 4 take 4-byte copies."""
    pr = _kernels.forward_problem(params((4, 8, 56, 56), (8, 1, 7, 7), 1, 3, 1))
    assert _kernels._mma_staging(pr, 0) == (8, 1)
    assert _kernels._mma_staging(pr, 0, gran=4) == (4, 1)
    assert _kernels._mma_staging(pr, 8) == (8, 1)  # a pointer 8 bytes past a 16-byte boundary
    assert _kernels._mma_staging(_kernels.forward_problem(params((1, 2, 20, 50), (2, 1, 7, 7), 1, 3, 1)), 0) == (4, 1)
    assert _kernels._mma_staging(pr, 0, gran=16) == (16, 5)
    assert _kernels.mma_geometry(7, 7, 7, 4, 1, 2)[0] == 1 and _kernels.mma_geometry(7, 7, 7, 4, 5, 2)[0] == 2
    assert _kernels._mma_staging(pr, 2) == (2, 0)  # a pointer off 4 bytes: checked loads
    wide = _kernels.forward_problem(params((1, 2, 64, 64), (2, 1, 31, 31), 1, 15, 1))
    assert _kernels._mma_staging(wide, 0) == (16, 1)  # both need 3 k-steps: the wider copy


def test_mma_direct_stores_need_even_rows():
    """conv_mma stores accumulator pairs straight from the fragments (DIRECT, its last
    template argument) exactly where OW is even, so that every pair is 4-byte aligned;
    only the staged path reserves the per-warp output rows (16 x 4 * WN' words a warp,
    WN' = WN rounded up to odd)."""
    for w, want in ((56, "true"), (38, "true"), (37, "false"), (7, "false")):
        pr = _kernels.forward_problem(params((1, 2, 20, w), (2, 1, 3, 3), 1, 1, 1))
        launch = _kernels.mma_launch(pr, "float16", 0, 90)
        assert _args(launch.expr)[-1] == want
        staged = _kernels.mma_launch(pr, "float16", 0, 90, direct=False)
        assert _args(staged.expr)[-1] == "false"
        wn, wr = int(_args(staged.expr)[3]), int(_args(staged.expr)[4])
        rows = wr * 16 * 4 * (wn | 1) * 4
        assert staged.shared_mem - launch.shared_mem == (rows if want == "true" else 0)


def test_smem_thread_layout_avoids_bank_conflicts():
    """conv_smem numbers its micro-tiles down the column where that makes the row reads
    conflict-free (replk 7x4 tiles), and the choice is never worse than the other."""
    for x_shape, k, pad in (((2, 4, 28, 28), 13, 6), ((1, 4, 56, 56), 31, 15), ((2, 4, 30, 50), 9, 4)):
        pr = _kernels.forward_problem(params(x_shape, (x_shape[1], 1, k, k), 1, pad, 1))
        for dtype in ("float32", "float64"):
            for th, tw in _kernels.SMEM_SHAPES:
                c = _kernels._smem_candidate(pr, dtype, th, tw)
                if c is None:
                    continue
                cfg = c[1]
                tih = cfg["bh"] - 1 + k
                shape = (tih, th, tw, cfg["bw"] // tw, cfg["bh"] // th, _kernels.ITEMSIZE[dtype])
                costs = [_kernels._smem_row_wavefronts(cfg["pitch"], *shape, rtf=f) for f in (0, 1)]
                assert costs[cfg["rtf"]] == min(costs)
    replk = _kernels.forward_problem(params((2, 4, 28, 28), (4, 1, 13, 13), 1, 6, 1))
    launch = _kernels.plan_conv(replk, "float32", 0, force=("smem", {}), arch=90, sms=132)
    assert "conv_smem<float, 13, 13, 1, 1, 1, 1, 7, 4," in launch.expr and launch.scalars[0]["RTF"] == 1
    # 7 column tiles of 4 floats, rows 40 floats apart: along the row, thread 7 (row tile
    # 1, column 0) shares a bank group with thread 6, and every quarter-warp takes 2
    # wavefronts; down the column, only the quarter-warps that cross into the next tile.
    assert _kernels._smem_row_wavefronts(40, 40, 7, 4, 7, 4, 4, rtf=0) == 128
    assert _kernels._smem_row_wavefronts(40, 40, 7, 4, 7, 4, 4, rtf=1) == 73


def test_smem_whole_planes_and_tiles_per_block():
    """conv_smem (forced: conv_lines takes these planes by default) takes whole planes
    when their micro-tiles fill at most four warps and
    there are planes for two blocks per SM, with the fewest tiles per block (at most 4,
    a block for every SM) that fill their warps best; a small batch keeps the split
    tiles' parallelism."""
    def plan(n, c, hw, k, dtype="float32", flip=False, sms=132):
        p = params((n, c, hw, hw), (c, 1, k, k), 1, k // 2, 1)
        pr = (_kernels.grad_input_problem if flip else _kernels.forward_problem)(p)
        launch = _kernels.plan_conv(pr, dtype, 0, force=("smem", {}), arch=90, sms=sms)
        name, args = _kernels.split_expr(launch.expr)
        assert name == "conv_smem", launch.expr
        return int(args[-1]), launch.block[0], launch.grid[0]

    assert plan(32, 128, 56, 31) == (2, 224, 2048)             # replk_31x31: 7x4 tiles, 2 planes of 112 threads
    assert plan(32, 128, 56, 31, flip=True) == (2, 224, 2048)
    assert plan(32, 256, 28, 13) == (2, 32, 8192)              # replk_13x13: 28 threads, 1 plane per block
    assert plan(1, 128, 56, 31)[0] == 0                        # 128 planes < 2 x 132 SMs: 28 x 56 tiles
    assert plan(1, 128, 56, 31, sms=64)[0] == 2
    # float64 values take two registers: a 31-wide window spills on every micro-tile
    # (924-1500 bytes, NVRTC 13.0), so conv_smem declines it; 13x13 keeps 4x4 micro-tiles.
    p31 = params((32, 128, 56, 56), (128, 1, 31, 31), 1, 15, 1)
    assert _kernels.plan_conv(_kernels.forward_problem(p31), "float64", 0, force=("smem", {}), arch=90, sms=132) is None
    p13 = params((32, 128, 56, 56), (128, 1, 13, 13), 1, 6, 1)
    name, args = _kernels.split_expr(_kernels.plan_conv(_kernels.forward_problem(p13), "float64", 0,
                                                        force=("smem", {}), arch=90, sms=132).expr)
    assert (name, args[7], args[8]) == ("conv_smem", "4", "4")
    whole, block, grid = plan(3, 89, 35, 13)                   # 45 threads a plane: 2 per block
    assert (whole, block, grid) == (2, 96, 134)


def test_wgrad_smem_tap_tiles():
    """wgrad_smem: 4 x 8 taps per thread for 4-byte sums, 16 grad_output columns a step
    unless that pads the row further than 8; float64 keeps 8 x 4."""
    def tile(hw, k, dtype):
        p = params((2, 4, hw, hw), (4, 1, k, k), 1, k // 2, 1)
        launch = _kernels.plan_wgrad(p, dtype, 0, 0, 90 if dtype in ("float32", "float64") else 75, 132,
                                     force="smem")[0]
        assert "wgrad_smem" in launch.expr, launch.expr
        return tuple(int(a) for a in _args(launch.expr)[1:4])

    assert tile(56, 31, "float32") == (4, 8, 8)     # 56 columns: U 16 would pad to 64
    assert tile(28, 13, "float32") == (4, 8, 16)    # 28 columns: 32 either way
    assert tile(28, 13, "float16") == (4, 8, 16)    # before sm_80: float32 sums
    assert tile(56, 31, "float64") == (8, 4, 8)


def test_bwd_tile_small_planes_blocks_per_sm():
    """bwd_tile on small float32 planes: 3 blocks per SM up to 9 taps (inception_1x7's
    2 x 192 blocks in one wave), 2 for larger kernels (they spill at 3)."""
    def minb(k, pad):
        p = params((32, 192, 17, 17), (192, 1) + k, 1, pad, 1)
        s1, chunks, _ = _kernels.plan_backward(p, "float32", 0, 0, 90, 132)
        assert "bwd_tile" in s1.expr, s1.expr
        return int(_args(s1.expr)[13]), chunks

    assert minb((1, 7), (0, 3)) == (3, 2)
    assert minb((3, 3), 1)[0] == 3
    assert minb((3, 5), (1, 2))[0] == 2


def test_cached_launch_argument_block_layout():
    """The call cache launches through cuLaunchKernel with a per-thread argument block:
    the four array pointers at byte offsets 0, 8, 16, 24, the argument struct's bytes
    (its C layout) from offset 32, and a table holding the address of each of the five
    arguments. A wrong offset would hand every kernel scrambled arguments."""
    p = _params.conv_params((2, 3, 20, 24), (3, 1, 3, 5), (3,), 1, 1, 1)
    launch = _kernels.plan_forward(p, "float32", 0, 90, 132)
    cached = object.__new__(_kernels.CachedLaunch)
    cached.struct = launch.scalars[0].tobytes()
    vals, table, table_addr = cached._block()
    base = ctypes.addressof(vals)
    assert table_addr == ctypes.addressof(table)
    assert list(table) == [base, base + 8, base + 16, base + 24, base + 32]
    raw = bytes(vals)
    size = launch.scalars[0].dtype.itemsize
    assert raw[32:32 + size] == launch.scalars[0].tobytes()
    assert not any(raw[:32])
    vals[0], vals[3] = 0x7F00_0000_1000, 0x7F00_0000_2000
    raw = bytes(vals)
    assert raw[:8] == (0x7F00_0000_1000).to_bytes(8, "little") and raw[32:32 + size] == launch.scalars[0].tobytes()


def test_lines_dispatch_and_budget():
    """Large kernels on planes that fit go to conv_lines (float32 and float64, stride 1,
    dilation 1; forward and rotated grad input), whole rows per thread where the sums and
    a tap row fit the register budget, column segments otherwise; weights as vectors up
    to 16 taps wide; the planes per block fill whole warps; shared memory mirrors the
    kernel's layout. Everything else keeps its family."""
    def plan(x_shape, k, pad, dtype="float32", grad=False, stride=1, dilation=1, sms=132):
        p = params(x_shape, (x_shape[1], 1, *k), stride, pad, dilation)
        return (_kernels.plan_grad_input if grad else _kernels.plan_forward)(p, dtype, 0, 90, sms)

    for grad in (False, True):
        launch = plan((32, 256, 28, 28), (13, 13), 6, grad=grad)  # replk_13x13
        name, args = _kernels.split_expr(launch.expr)
        assert name == "conv_lines" and args[9:12] == ["28", "true" if grad else "false", "true"]
        assert launch.block == (224, 1, 1) and launch.scalars[0]["P"] == 8 and launch.grid == (1024, 1, 1)
    launch = plan((32, 128, 56, 56), (31, 31), 15)  # replk_31x31: packed weights, 4 planes
    name, args = _kernels.split_expr(launch.expr)
    assert args[9] == "56" and args[11] == "false" and launch.scalars[0]["P"] == 4
    # float64 31x31: 14-column segments (sums and a 32-element tap row in 100 registers);
    # 16 planes, fewer than SMs: one per block, 4 segments of 2 warps.
    launch = plan((2, 8, 56, 56), (31, 31), 15, "float64")
    name, args = _kernels.split_expr(launch.expr)
    assert name == "conv_lines" and args[9] == "14" and launch.block == (256, 1, 1) and launch.grid == (16, 1, 1)
    # Few planes: a block for each where there are fewer planes than SMs.
    assert plan((1, 4, 56, 56), (31, 31), 15).grid == (4, 1, 1)
    # Declined: 16-bit, strides, dilation, small kernels, planes past the shared memory.
    for kwargs, fam in ((dict(dtype="float16"), "conv_mma"), (dict(stride=2), "conv_smem"),
                        (dict(dilation=2), "conv_smem")):
        assert fam in plan((2, 8, 40, 40), (9, 9), 4, **kwargs).expr
    assert "conv_lines" not in plan((2, 8, 56, 56), (7, 7), 3).expr
    assert "conv_smem" in plan((1, 2, 200, 200), (31, 31), 15).expr
    for x_shape, k, dtype in (((2, 8, 28, 28), 13, "float32"), ((1, 3, 24, 40), 31, "float64"),
                              ((1, 2, 12, 90), 15, "float32")):
        pr = _kernels.forward_problem(params(x_shape, (x_shape[1], 1, k, k), 1, k // 2, 1))
        for planes in (1, 3, 5):
            for wv in (False, True):
                launch = _kernels.lines_launch(pr, dtype, planes=planes, wv=wv)
                if launch is None:
                    continue
                size = _kernels.ITEMSIZE[dtype]
                kwp = -(-k // (16 // size)) * (16 // size) if wv else k
                wup = k * kwp
                wup += (0 if (wup // (16 // size)) % 2 else 16 // size) if wv else 1 - wup % 2
                pitch = _kernels.lines_pitch(dtype, x_shape[2] * x_shape[3])
                assert (pitch // (16 // size)) % 2 == 1 and pitch >= x_shape[2] * x_shape[3]
                assert launch.shared_mem == -(-planes * wup * size // 16) * 16 + planes * pitch * size
                name, args = _kernels.split_expr(launch.expr)
                cw = int(args[9])
                assert launch.block[0] == -(-x_shape[3] // cw) * -(-planes * x_shape[2] // 32) * 32
                assert (cw + kwp) * size // 4 <= 100


def test_split_streams():
    """The split backward's streams: the caller's alone below SPLIT_CONCURRENT_MIN
    elements of x, a side stream of the greatest priority for problems of fewer FLOPs per
    gradient than SPLIT_FIRST_MAX_FLOPS (replk_13x13, the stride-2 suite cases), one of
    default priority above (replk_31x31); None turns the side stream off."""
    replk13 = params((32, 256, 28, 28), (256, 1, 13, 13), 1, 6, 1)
    replk31 = params((32, 128, 56, 56), (128, 1, 31, 31), 1, 15, 1)
    mbv2_s2 = params((64, 96, 112, 112), (96, 1, 3, 3), 2, 1, 1)
    small = params((2, 8, 40, 40), (8, 1, 13, 13), 1, 6, 1)
    assert _kernels.split_streams(replk13) == "wgrad_first"
    assert _kernels.split_streams(mbv2_s2) == "wgrad_first"
    assert _kernels.split_streams(replk31) == "shared"
    assert _kernels.split_streams(small) is None
    saved = _kernels.SPLIT_CONCURRENT_MIN
    try:
        _kernels.SPLIT_CONCURRENT_MIN = None
        assert _kernels.split_streams(replk13) is None
        _kernels.SPLIT_CONCURRENT_MIN = 1
        assert _kernels.split_streams(small) == "wgrad_first"
    finally:
        _kernels.SPLIT_CONCURRENT_MIN = saved


def test_stack_takes_batches_of_small_planes():
    """conv_stack replaces conv_mma for 16-bit kernels of 25 taps and more on batches of
    16 images and more, planes up to 64 x 64 (forward and grad input); smaller batches,
    larger planes and smaller kernels keep their families."""
    convnext = params((64, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1)
    for dtype in ("float16", "bfloat16"):
        assert "conv_stack" in _kernels.plan_forward(convnext, dtype, 0, 90, 132).expr
        assert "conv_stack" in _kernels.plan_grad_input(convnext, dtype, 0, 90, 132).expr
        assert "conv_stack" in _kernels.plan_forward(params((16, 4, 64, 64), (4, 1, 5, 5), 1, 2, 1), dtype, 0, 90, 132).expr
    expr = _kernels.plan_forward(params((8, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1), "float16", 0, 90, 132).expr
    assert expr.startswith("dw::conv_mma<"), expr
    for x_shape in ((16, 4, 65, 64), (16, 4, 64, 72)):  # planes past 64: the tensor-core row sweep
        expr = _kernels.plan_forward(params(x_shape, (x_shape[1], 1, 7, 7), 1, 3, 1), "float16", 0, 90, 132).expr
        assert expr.startswith("dw::conv_mma_rows<"), (x_shape, expr)
    assert "conv_stack" not in _kernels.plan_forward(params((64, 96, 56, 56), (96, 1, 3, 3), 1, 1, 1),
                                                     "float16", 0, 90, 132).expr
    assert "conv_stack" not in _kernels.plan_forward(convnext, "float32", 0, 90, 132).expr
    assert "conv_stack" not in _kernels.plan_forward(convnext, "float16", 0, 75, 132).expr


def test_mma_rows_takes_large_planes():
    """conv_mma_rows takes 16-bit kernels of more than 9 taps on planes past 64 x 64
    (forward and grad input) where its copies are 8 or 16 bytes wide: seed_3x7's forward;
    3x3 kernels, small planes, float32, sm_75 and 4-byte copies keep their families."""
    seed = params((32, 128, 128, 256), (128, 1, 3, 7), 1, 0, 1)
    wide = params((16, 96, 112, 112), (96, 1, 7, 7), 1, 3, 1)
    for dtype in ("float16", "bfloat16"):
        assert _kernels.plan_forward(seed, dtype, 0, 90, 132).expr.startswith("dw::conv_mma_rows<")
        assert _kernels.plan_forward(wide, dtype, 0, 90, 132).expr.startswith("dw::conv_mma_rows<")
        assert _kernels.plan_grad_input(wide, dtype, 0, 90, 132).expr.startswith("dw::conv_mma_rows<")
        # seed's grad input reads rows of 250 (4-byte copies): the row sweep
        assert "conv_rows_async" in _kernels.plan_grad_input(seed, dtype, 0, 90, 132).expr
        assert "conv_rows_async" in _kernels.plan_forward(seed, dtype, 4, 90, 132).expr  # 4-byte aligned input
    for p, dtype, arch in ((params((64, 144, 56, 56), (144, 1, 3, 3), 1, 1, 1), "float16", 90),
                           (params((8, 32, 512, 512), (32, 1, 3, 3), 1, 1, 1), "float16", 90),
                           (params((64, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1), "float16", 90),
                           (seed, "float32", 90), (seed, "float16", 75)):
        assert "conv_mma_rows" not in _kernels.plan_forward(p, dtype, 0, arch, 132).expr


def test_mma_rows_declines_other_problems():
    """mma_rows_launch: 16-bit, sm_80+, stride 1, dilation 1, one input plane per output
    plane, KH <= 16, copies of 4 bytes or more with at most two k-steps and a copy plan
    that fits the registers; the widest copy with the fewest k-steps."""
    def launch(x_shape, k, stride=1, padding=0, dilation=1, m=1, dtype="float16", arch=90, ptr=0, gi=False, **kw):
        p = params(x_shape, (x_shape[1] * m, 1) + k, stride, padding, dilation)
        pr = _kernels.grad_input_problem(p) if gi else _kernels.forward_problem(p)
        if gi:
            pr = _kernels._flipped_problem(pr)
        return _kernels.mma_rows_launch(pr, dtype, ptr, arch, **kw)

    assert launch((2, 2, 40, 256), (3, 7)) is not None
    assert launch((2, 2, 40, 256), (3, 7), m=2) is not None                # a multiplier in the forward
    assert launch((2, 2, 40, 256), (3, 7), m=2, gi=True) is None           # gathers 2 planes
    assert launch((2, 2, 40, 256), (3, 7), dtype="float32") is None
    assert launch((2, 2, 40, 256), (3, 7), arch=75) is None
    assert launch((2, 2, 40, 256), (3, 7), stride=2) is None
    assert launch((2, 2, 40, 256), (3, 7), dilation=2) is None
    assert launch((2, 2, 40, 256), (17, 3)) is None                        # KH 17
    assert launch((2, 2, 40, 256), (3, 27), padding=(1, 13)) is None      # KW 27: three k-steps
    assert launch((2, 2, 40, 255), (3, 7)) is None                         # odd IW: 2-byte copies
    assert launch((2, 2, 40, 256), (3, 7), ptr=2) is None
    assert launch((2, 2, 40, 256), (3, 7), rb=24) is None                  # bands of whole steps
    assert launch((2, 2, 40, 256), (3, 7), pfs=1) is None                  # ring depth 2 to 4
    for x_shape, k, pad, ptr, want in (
            # (GRAN, SHIFT, OSW, WN, NW): the widest copy with the fewest k-steps
            ((2, 2, 40, 256), (3, 7), 0, 0, ("16", "0", "4", "8", "4")),     # OW 250
            ((2, 2, 40, 256), (3, 7), (1, 3), 0, ("8", "1", "16", "8", "4")),  # 16-byte: 2 k-steps
            ((2, 2, 40, 256), (3, 7), (1, 3), 8, ("8", "1", "16", "8", "4")),
            ((2, 2, 40, 56), (3, 3), 1, 0, ("8", "3", "16", "7", "1")),
            ((2, 2, 40, 302), (5, 5), (2, (2, 3)), 0, ("4", "0", "2", "5", "4"))):  # 4-byte copies: narrower warps
        args = _kernels.split_expr(launch(x_shape, k, padding=pad, ptr=ptr).expr)[1]
        assert (args[6], args[5], args[8], args[3], args[4]) == want, (x_shape, k, pad, ptr, args)
    # Shared memory as the kernel's MrowsTile: 3 ring groups of 16 rows of 33 chunks (528
    # bytes) and two output blocks of 16 x 132 words; bands of 16-row steps.
    lp = launch((32, 128, 128, 256), (3, 7))
    assert lp.shared_mem == 3 * 16 * 528 + 2 * 16 * 132 * 4
    a = lp.scalars[0]
    assert int(a["RB"]) % 16 == 0 and int(a["RB"]) * int(a["n_bands"]) >= 126
    assert int(a["units"]) == 32 * 128 * int(a["n_bands"]) * int(a["n_cs"])


def test_stack_declines_other_problems():
    """stack_launch: 16-bit, sm_80+, stride 1, dilation 1, multiplier 1, even OW, even IW
    and a pointer that allows 4-byte copies, one k-step (SHIFT + 7 + KW <= 16)."""
    def launch(x_shape, k, stride=1, padding=0, dilation=1, m=1, dtype="float16", arch=90, ptr=0):
        p = params(x_shape, (x_shape[1] * m, 1) + k, stride, padding, dilation)
        return _kernels.stack_launch(_kernels.forward_problem(p), dtype, ptr, arch)

    assert launch((16, 2, 20, 32), (7, 7), padding=3) is not None
    assert launch((16, 2, 20, 32), (7, 7), padding=3, dtype="float32") is None
    assert launch((16, 2, 20, 32), (7, 7), padding=3, arch=75) is None
    assert launch((16, 2, 20, 32), (7, 7), padding=3, stride=2) is None
    assert launch((16, 2, 20, 32), (7, 7), padding=3, dilation=2) is None
    assert launch((16, 2, 20, 32), (7, 7), padding=3, m=2) is None
    assert launch((16, 2, 20, 33), (7, 7), padding=(3, 2)) is None  # odd IW: no 4-byte copies
    assert launch((16, 2, 20, 32), (7, 6), padding=(3, 2)) is None  # odd OW (33)
    assert launch((16, 2, 20, 32), (7, 10), padding=(3, 5)) is None  # KW 10: two k-steps
    assert launch((16, 2, 20, 32), (7, 7), padding=3, ptr=2) is None  # 2-byte aligned input
    # Copies: the widest the row and pointer allow; ALD (4-byte A reads) where the window
    # would start too far into the k-step; 16-byte output stores where OW % 8 == 0.
    for x_shape, k, pad, ptr, want in (
            ((16, 2, 20, 56), (7, 7), 3, 0, ("16", "4", "1", "16")),
            ((16, 2, 20, 56), (7, 7), 3, 8, ("8", "0", "1", "16")),
            ((16, 2, 20, 56), (7, 7), 3, 4, ("4", "0", "1", "16")),
            ((16, 2, 20, 38), (3, 7), ((1, 0), (3, 3)), 0, ("4", "0", "1", "4")),
            ((16, 2, 20, 24), (9, 9), 4, 0, ("16", "4", "0", "16")),
            ((16, 2, 20, 64), (3, 3), 0, 0, ("16", "0", "0", "4"))):
        args = _kernels.split_expr(launch(x_shape, k, padding=pad, ptr=ptr).expr)[1]
        assert (args[6], args[4], args[5], args[8]) == want, (x_shape, k, pad, ptr, args)
    # Shared memory as the kernel's StackTile: RS = 7 ring slots of 16 rows of 72 staged
    # columns (8 x 7 + 16, pitch 9 units: 144 bytes) and two output rows of 16 x 28 words.
    p = _kernels.forward_problem(params((64, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1))
    assert _kernels.stack_launch(p, "float16", 0, 90).shared_mem == 7 * 16 * 144 + 2 * 16 * 28 * 4


def test_stack_units_and_bands():
    """Units are (16 images, band, column segment, channel); one band where the units
    fill the resident blocks, more where they leave SMs idle."""
    p = _kernels.forward_problem(params((64, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1))
    a = _kernels.stack_launch(p, "float16", 0, 90).scalars[0]
    assert (int(a["units"]), int(a["n_bands"]), int(a["n_cs"]), int(a["RB"])) == (384, 1, 1, 56)
    p = _kernels.forward_problem(params((16, 8, 64, 130), (8, 1, 7, 7), 1, 3, 1))
    a = _kernels.stack_launch(p, "float16", 0, 90).scalars[0]
    assert int(a["n_cs"]) == 3 and int(a["n_bands"]) > 1
    assert int(a["units"]) == 8 * int(a["n_bands"]) * 3 and int(a["RB"]) * int(a["n_bands"]) >= 64


def test_stack_blocks_per_sm_and_bands():
    """conv_stack at 2 blocks per SM where 3 blocks' 80 registers spill and cost more than
    the third block gives (more than 9 tap rows at 6 warps and more; more than 7 where 3
    blocks would cut the planes into bands); blocks of 4 warps count 4 per SM in the band
    plan (28-row planes in one band, not two); wgrad_stack at 2 past 11 tap rows or past 7
    at 8 warps."""
    def stack(shape, k, pad):
        launch = _kernels.stack_launch(
            _kernels.forward_problem(params(shape, (shape[1], 1) + k, 1, pad, 1)), "float16", 0, 90)
        a = launch.scalars[0]
        return int(_args(launch.expr)[-1]), int(a["RB"]), int(a["n_bands"])

    assert stack((64, 96, 56, 56), (7, 7), 3) == (3, 56, 1)      # convnext_7x7
    assert stack((64, 96, 56, 56), (9, 9), 4) == (3, 56, 1)      # one band at 3: stays
    assert stack((64, 128, 64, 64), (9, 9), 4) == (2, 64, 1)     # 3 blocks: two bands
    assert stack((64, 96, 56, 56), (11, 5), (5, 2))[0] == 2
    assert stack((64, 96, 56, 56), (16, 5), (8, 2))[0] == 2
    assert stack((32, 128, 32, 32), (13, 5), (6, 2))[0] == 3     # 4 warps: no cap at 3
    assert stack((32, 256, 28, 28), (7, 7), 3) == (3, 28, 1)
    assert stack((64, 192, 28, 28), (7, 7), 3) == (3, 28, 1)
    assert _kernels._stack_resident(7, 4, 3, 14080) == 4 and _kernels._stack_resident(7, 7, 3, 19712) == 3

    def wstack_minb(shape, k, pad):
        launch = _kernels.wgrad_stack_launch(params(shape, (shape[1], 1) + k, 1, pad, 1), "float16", 0, 0)[0]
        return int(_args(launch.expr)[-1])

    assert wstack_minb((64, 96, 56, 56), (7, 7), 3) == 3
    assert wstack_minb((64, 96, 56, 56), (9, 9), 4) == 3
    assert wstack_minb((64, 128, 64, 64), (9, 9), 4) == 2
    assert wstack_minb((64, 96, 56, 56), (16, 5), (8, 2)) == 2


def test_wgrad_stack_takes_batches_of_small_planes():
    """The 16-bit weight gradient of kernels of more than 25 taps runs wgrad_stack on
    batches of 16 images and more (planes up to 64 x 64, grad_output rows of a multiple
    of 8 columns on a 16-byte aligned pointer); the fused backward stays bwd_mma."""
    convnext = params((64, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1)
    for dtype in ("float16", "bfloat16"):
        s1, chunks, s2 = _kernels.plan_wgrad(convnext, dtype, 0, 0, 90, 132)
        assert "wgrad_stack" in s1.expr and "wgrad_reduce" in s2.expr
        assert chunks == 4 and s1.grid == (4, 96, 1) and int(s1.scalars[0]["n_chunks"]) == 4
        assert "bwd_mma" in _kernels.plan_backward(convnext, dtype, 0, 0, 90, 132)[0].expr
        assert "wgrad_stack" not in _kernels.plan_wgrad(convnext, dtype, 0, 8, 90, 132)[0].expr  # go 8-byte aligned
        small = params((8, 96, 56, 56), (96, 1, 7, 7), 1, 3, 1)
        assert "wgrad_stack" not in _kernels.plan_wgrad(small, dtype, 0, 0, 90, 132)[0].expr
    assert "wgrad_stack" not in _kernels.plan_wgrad(convnext, "float32", 0, 0, 90, 132)[0].expr
    assert "wgrad_stack" not in _kernels.plan_wgrad(convnext, "float16", 0, 0, 75, 132)[0].expr

    def launch(x_shape, w_shape, stride, pad, ptr=0):
        return _kernels.wgrad_stack_launch(params(x_shape, w_shape, stride, pad, 1), "float16", ptr, 0)

    assert launch((16, 4, 20, 22), (4, 1, 3, 3), 1, 1) is None  # OW 22
    assert launch((16, 4, 20, 24), (4, 1, 3, 3), 1, 2) is None  # padding past the kernel
    assert launch((16, 4, 20, 24), (4, 1, 3, 3), 2, 1) is None  # stride
    assert launch((16, 4, 20, 24), (8, 1, 3, 3), 1, 1) is None  # multiplier
    assert launch((16, 4, 20, 72), (4, 1, 3, 3), 1, 1) is None  # planes past 64
    assert launch((16, 4, 20, 24), (4, 1, 3, 3), 1, 1, ptr=2) is None  # x 2-byte aligned
    l1, chunks = _kernels.wgrad_stack_launch(convnext, "float16", 0, 0)
    # 8-byte x copies (SX 1: the 16-byte ones would need SX 5 > 9 - KW), 6 rows ahead.
    assert _args(l1.expr)[3:7] == ["7", "1", "8", "6"]
    assert l1.shared_mem == _kernels.wstack_geometry(7, 7, 7, 6) == 14 * 16 * (56 + 72) * 2 + 7 * 50 * 4


def test_rows_l2_ahead_rule():
    """conv_rows_async prefetches rows into L2 beyond its copies on rows of 256 bytes and
    more (a 15th template argument: rows ahead), not on short rows (mbv2_3x3 16-bit, 112
    bytes: the expression keeps its 14 arguments); a forced value applies anywhere."""
    mbv2 = _kernels.forward_problem(params((4, 8, 56, 56), (8, 1, 3, 3), 1, 1, 1))
    seed = _kernels.forward_problem(params((2, 4, 128, 256), (4, 1, 3, 7), 1, 0, 1))
    dil = _kernels.forward_problem(params((2, 4, 64, 64), (4, 1, 3, 3), 1, 2, 2))
    assert len(_args(_kernels.rows_launch(mbv2, "float16", 0, staged=True).expr)) == 14
    assert _args(_kernels.rows_launch(seed, "float16", 0, staged=True).expr)[14] == str(_kernels.ROWS_L2_AHEAD)
    assert _args(_kernels.rows_launch(dil, "float32", 0, staged=True).expr)[14] == str(_kernels.ROWS_L2_AHEAD)
    assert _args(_kernels.rows_launch(mbv2, "float16", 0, staged=True, l2a=2).expr)[14] == "2"
    assert len(_args(_kernels.rows_launch(seed, "float16", 0, staged=True, l2a=0).expr)) == 14


def test_breadth_rules():
    """The rules from the breadth check beyond the suite (benchmarks/wide.py; measured in
    _batch_large, _bwd_batch_large, _bwd_rows_small, _rows_scalar_lanes, _tile_shape)."""
    def plans(x_shape, k, pad, dtype, ptr=0):
        p = params(x_shape, (x_shape[1], 1) + k, 1, pad, 1)
        fused = _kernels.plan_backward(p, dtype, ptr, 0, 90, 132)
        return (_kernels.plan_forward(p, dtype, ptr, 90, 132).expr, _kernels.plan_grad_input(p, dtype, ptr, 90, 132).expr,
                None if fused is None else fused[0].expr)

    # Kernels past 64 taps on planes of at most 16 sides: conv_batch both ways.
    for dtype in ("float32", "float16", "bfloat16"):
        for x_shape, k, pad in (((32, 64, 7, 7), (13, 13), 6), ((32, 64, 14, 14), (27, 27), 13)):
            fwd, gi, bwd = plans(x_shape, k, pad, dtype)
            assert "conv_batch" in fwd and "conv_batch" in gi, (dtype, fwd, gi)
            # bwd_batch, except float32 past 169 taps (the split backward).
            assert (bwd is None) if dtype == "float32" and k == (27, 27) else "bwd_batch" in bwd, (dtype, k, bwd)
    # 16-bit problems conv_stack takes stay there, backward split; float64 keeps 64 taps.
    fwd, gi, bwd = plans((32, 64, 16, 16), (9, 9), 4, "float16")
    assert "conv_stack" in fwd and bwd is None
    assert "bwd_batch" in plans((32, 64, 16, 16), (9, 9), 4, "float32")[2]
    assert "conv_batch" not in plans((32, 64, 7, 7), (13, 13), 6, "float64")[0]
    # Past 64 taps bwd_batch runs at most 2 blocks per SM, one above 8 warps.
    assert _args(plans((32, 64, 7, 7), (13, 13), 6, "float32")[2])[-1] == "2"
    assert _args(plans((32, 64, 14, 14), (13, 13), 6, "float16")[2])[-1] == "1"
    # 16-bit backward rows of at most 32 columns: 3 blocks per SM, 4 columns per lane on
    # whole 8-byte vectors, else 2; 33 to 56 columns keep the 8-column plan.
    for dtype, width, v, minb in (("bfloat16", 14, "2", "3"), ("float16", 10, "2", "3"), ("float16", 20, "4", "3"),
                                  ("float16", 28, "4", "3"), ("bfloat16", 28, "4", "2"), ("float16", 56, "8", "4")):
        bwd = _args(plans((64, 32, width, width), (3, 3), 1, dtype)[2])
        assert (bwd[1], bwd[12]) == (v, minb), (dtype, width, bwd)
    p = params((64, 32, 20, 20), (32, 1, 3, 3), 1, 2, 2)  # dilation 2 on whole vectors: as before
    assert _args(_kernels.plan_backward(p, "float16", 0, 0, 90, 132)[0].expr)[1::11] == ["4", "2"]
    assert _args(plans((64, 32, 14, 14), (5, 5), 2, "float16")[2])[12] == "2"  # 25 taps: as before
    # 16-bit rows with scalar loads (odd widths; conv_rows_async declines them): 2 columns
    # per lane up to 9 taps, 4 beyond; 8 where the rows load vectors (sm_75).
    assert _args(plans((2, 3, 33, 47), (3, 3), 1, "float16")[0])[1] == "2"
    assert _args(plans((2, 3, 20, 255), (3, 7), 1, "bfloat16")[0])[1] == "4"
    p = params((2, 3, 20, 64), (3, 1, 3, 3), 1, 1, 1)
    assert _args(_kernels.plan_forward(p, "float16", 0, 75, 132).expr)[:2] == ["dw::half_t", "8"]
    # One-row float32 kernels of 10 taps and more: conv_tile rows of 8, not the row sweep.
    fwd, gi, _ = plans((16, 32, 32, 256), (1, 31), (0, 15), "float32")
    assert "conv_tile" in fwd and _args(fwd)[8:10] == ["1", "8"], fwd
    assert "conv_rows_async" in plans((16, 32, 32, 256), (3, 7), 0, "float32")[0]


def test_small_half_tiles():
    """16-bit tiles on planes of at most 400 elements at 3 blocks per SM: the fused
    backward's 2x4 tiles without the next tile's prefetch where bwd_rows declines (odd
    widths; up to 9 taps, both 16-bit types, dilated too; larger planes keep float16's 2x8
    with the prefetch; measurements in _kernels._bwd_tile_shape), the strided grad input's
    narrow tiles in float16 and bfloat16 (up to 25 taps on grad_x planes of at most 40 x
    40; 7x7 and larger planes keep 4x8)."""
    def fused(x_shape, k, pad, d=1, dtype="float16"):
        p = params(x_shape, (x_shape[1], 1) + k, 1, pad, d)
        expr = _kernels.plan_backward(p, dtype, 0, 0, 90, 132)[0].expr
        assert _kernels.split_expr(expr)[0] == "bwd_tile", expr
        return _args(expr)

    for dtype in ("float16", "bfloat16"):
        for shape, k, pad, d in (((32, 4, 17, 17), (7, 1), (3, 0), 1), ((32, 192, 17, 17), (1, 7), (0, 3), 1),
                                 ((64, 192, 13, 13), (3, 3), 1, 1), ((64, 96, 15, 15), (3, 3), 2, 2),
                                 ((64, 4, 17, 17), (3, 3), 2, 2)):  # the last two dilated
            args = fused(shape, k, pad, d, dtype)
            assert args[7:9] == ["2", "4"] and args[13:15] == ["3", "0"], (dtype, shape, k, args)
    args = fused((64, 4, 21, 21), (3, 3), 1)  # 441 elements
    assert args[7:9] == ["2", "8"] and args[14] == "1"

    def gi(x_shape, k, s, pad, dtype="float16"):
        p = params(x_shape, (x_shape[1], 1) + k, s, pad, 1)
        return _args(_kernels.plan_grad_input(p, dtype, 0, 90, 132).expr)

    for dtype in ("float16", "bfloat16"):
        assert gi((64, 8, 14, 14), (5, 5), 2, 2, dtype)[8:10] == ["4", "4"]
        assert gi((64, 8, 14, 14), (5, 5), 2, 2, dtype)[15] == "3"
        assert gi((64, 8, 40, 40), (3, 3), 3, 1, dtype)[8:10] == ["3", "3"]
        assert gi((64, 8, 14, 14), (7, 7), 2, 3, dtype)[8:10] == ["4", "8"]
        assert gi((64, 8, 56, 56), (3, 3), 2, 1, dtype)[8:10] == ["4", "8"]
        assert gi((64, 8, 112, 112), (3, 3), 2, 1, dtype)[8:10] == ["4", "8"]


def _budget_problems():
    import pathlib

    from cupy_dwconv import bench

    root = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    for name in ("suite.json", "wide.json", "wide16.json"):
        cases, _ = bench.load_suite(str(root / name))
        for case in cases:
            yield case.name, case.params()


def _all_launches(p, dtype, arch, smem):
    s1, _, s2 = _kernels.plan_wgrad(p, dtype, 0, 0, arch, 132, smem=smem)
    fused = _kernels.plan_backward(p, dtype, 0, 0, arch, 132, smem=smem)
    return [_kernels.plan_forward(p, dtype, 0, arch, 132, smem), _kernels.plan_grad_input(p, dtype, 0, arch, 132, smem),
            s1, s2] + ([] if fused is None else [fused[0], fused[2]])


def test_plans_fit_each_architectures_shared_memory():
    """Every plan of the benchmark and breadth problems asks for no more shared memory
    than a block may opt in to on the architecture it is made for (arch_smem: 64 KB on
    sm_75, 99 KB on sm_86 / sm_89, 163 KB on sm_80, 227 KB on sm_90); on sm_90 the tuned
    plans stand (none is replaced), and lower budgets replace some (sm_75 and sm_80
    measured below)."""
    replaced = {}
    for name, p in _budget_problems():
        for dtype in ("float32", "float16", "bfloat16", "float64"):
            for arch in (70, 75, 80, 86, 89, 90):
                budget = _kernels.arch_smem(arch)
                got = _all_launches(p, dtype, arch, None)
                assert all(launch.shared_mem <= budget for launch in got), (name, dtype, arch)
                tuned = _all_launches(p, dtype, arch, 1 << 30)
                if [launch.expr for launch in got] != [launch.expr for launch in tuned]:
                    replaced.setdefault(arch, []).append((name, dtype))
    assert 90 not in replaced
    assert ("replk_31x31", "float64") in replaced[80] and ("k9_64", "float64") in replaced[80]
    assert ("replk_31x31", "float32") in replaced[75]
    assert _kernels.arch_smem(90) == 227 * 1024 and _kernels.arch_smem(75) == 64 * 1024
    assert _kernels.arch_smem(1) == 48 * 1024  # an architecture not in the table: every device's


def test_shared_memory_fallbacks():
    """A plan over the budget is replaced by the dispatcher's last resorts in its order:
    conv_tile, conv_smem with one tile per block, else the generic kernel (forward and
    grad input); wgrad_tile, one-stage wgrad_smem, else generic (weight gradient); the
    split backward for a fused one."""
    def names(p, dtype, smem):
        s1 = _kernels.plan_wgrad(p, dtype, 0, 0, 90, 132, smem=smem)[0]
        fused = _kernels.plan_backward(p, dtype, 0, 0, 90, 132, smem=smem)
        return (_kernels.split_expr(_kernels.plan_forward(p, dtype, 0, 90, 132, smem).expr)[0],
                _kernels.split_expr(s1.expr)[0], None if fused is None else _kernels.split_expr(fused[0].expr)[0])

    small = params((32, 8, 14, 14), (8, 1, 7, 7), 1, 3, 1)
    assert names(small, "float32", None) == ("conv_batch", "wgrad_tile", "bwd_batch")
    assert names(small, "float32", 48 * 1024) == ("conv_tile", "wgrad_tile", None)
    large = params((1, 3, 56, 56), (3, 1, 31, 31), 1, 15, 1)
    assert names(large, "float16", None) == ("conv_mma", "wgrad_mma", None)
    assert names(large, "float16", 48 * 1024) == ("conv_smem", "wgrad_smem", None)
    assert names(large, "float64", 48 * 1024)[1] == "wgrad_generic"
    assert names(large, "float64", 99 * 1024)[1] == "wgrad_smem"  # one stage: 90 of 180 KB


def test_strided_forward_small_planes_dispatch():
    """Strided forwards on input planes of at most 20 x 20 (3x3 to 5x5 kernels) take
    conv_batch, or conv_plane in 16-bit where its lanes meet at most 2 to a bank; float64,
    larger planes, dilation and larger kernels keep conv_tile; odd input and output planes
    stay with conv_plane at any stride (measurements in _kernels._strided_small)."""
    def family(shape, k, stride, pad, dtype, dilation=1):
        p = params(shape, (shape[1], 1) + k, stride, pad, dilation)
        return _kernels.split_expr(_kernels.plan_forward(p, dtype, 0, 90, 132).expr)

    for dtype in ("float16", "bfloat16"):
        assert family((64, 672, 14, 14), (5, 5), 2, 2, dtype)[0] == "conv_plane"   # 2 ways
        assert family((64, 576, 10, 10), (3, 3), 2, 1, dtype)[0] == "conv_plane"
        assert family((64, 960, 7, 7), (3, 3), 2, 1, dtype)[0] == "conv_batch"     # 4 x 4 outputs: 8 ways
        assert family((64, 256, 16, 16), (3, 3), 2, 1, dtype)[0] == "conv_batch"   # 32 ways
        assert family((64, 240, 20, 20), (5, 5), 2, 2, dtype)[0] == "conv_batch"
    for shape, k, pad in (((64, 672, 14, 14), (5, 5), 2), ((64, 192, 20, 20), (3, 3), 1),
                          ((64, 960, 7, 7), (3, 3), 1)):
        name, args = family(shape, k, 2, pad, "float32")
        assert name == "conv_batch" and args[14] == "4"  # 4 channels per unit (16-byte runs)
    for dtype in ("float32", "float16", "bfloat16"):
        assert family((64, 192, 28, 28), (3, 3), 2, 1, dtype)[0] == "conv_tile"    # past 20 x 20
        assert family((64, 96, 14, 14), (7, 7), 2, 3, dtype)[0] == "conv_tile"     # past 25 taps
        assert family((64, 96, 14, 14), (1, 5), 2, (0, 2), dtype)[0] == "conv_tile"  # one row
        assert family((64, 96, 14, 14), (3, 3), 2, 2, dtype, dilation=2)[0] == "conv_tile"
        assert family((64, 256, 15, 15), (3, 3), 3, 1, dtype)[0] == "conv_plane"   # odd planes
    assert family((64, 672, 14, 14), (5, 5), 2, 2, "float64")[0] == "conv_tile"
    # The grad input of a strided problem is a gather: conv_batch does not take it.
    p = params((64, 672, 14, 14), (672, 1, 5, 5), 2, 2, 1)
    assert _kernels.split_expr(_kernels.plan_grad_input(p, "float16", 0, 90, 132).expr)[0] == "conv_tile"


def test_strided_half_tiles_dispatch():
    """16-bit forwards at stride 2 on larger planes: 4x4 tiles at 3 blocks per SM without
    the L2 prefetch for 5x5 kernels and for output rows of up to 32 columns (2 x 4 on
    planes of at most 400 outputs); 3x3 on wider rows and at stride 3 keeps the 2x8 tiles
    with the prefetch;
    float32 keeps its table (_kernels._strided_half_tiles)."""
    def tile(shape, k, stride, pad, dtype):
        p = params(shape, (shape[1], 1) + k, stride, pad, 1)
        name, args = _kernels.split_expr(_kernels.plan_forward(p, dtype, 0, 90, 132).expr)
        assert name == "conv_tile"
        return int(args[8]), int(args[9]), int(args[15]), int(args[16])  # TH, TW, MINB, PF

    for dtype in ("float16", "bfloat16"):
        assert tile((64, 144, 56, 56), (5, 5), 2, 2, dtype) == (4, 4, 3, 0)
        assert tile((64, 32, 112, 112), (5, 5), 2, 2, dtype) == (4, 4, 3, 0)
        assert tile((64, 144, 56, 56), (3, 3), 2, 1, dtype) == (4, 4, 3, 0)
        assert tile((32, 64, 96, 96), (3, 3), 3, 1, dtype) == (2, 8, 3, 1)      # stride 3
        assert tile((64, 192, 28, 28), (3, 3), 2, 1, dtype) == (2, 4, 3, 0)     # 196 outputs
        assert tile((64, 96, 112, 112), (3, 3), 2, 1, dtype) == (2, 8, 3, 1)    # 56 columns
        # Grad input (a gather) keeps its own table.
        p = params((64, 144, 56, 56), (144, 1, 5, 5), 2, 2, 1)
        assert _kernels.split_expr(_kernels.plan_grad_input(p, dtype, 0, 90, 132).expr)[1][1] == "1"
    assert tile((64, 144, 56, 56), (5, 5), 2, 2, "float32") == (4, 4, 2, 0)
