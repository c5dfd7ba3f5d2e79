"""Dispatch rules: which kernel family the planner picks for a problem, dtype and device
(pure planning, no GPU: plans take the compute capability and SM count explicitly)."""

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
    at stride 1 on sm_80+, wgrad_smem for them before sm_80 and in float32."""
    small = params((2, 4, 30, 30), (4, 1, 3, 3), 1, 1, 1)
    large = params((2, 4, 56, 56), (4, 1, 31, 31), 1, 15, 1)
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        assert "wgrad_tile" in _kernels.plan_wgrad(small, dtype, 0, 0, 90, 132)[0].expr
    assert "wgrad_mma" in _kernels.plan_wgrad(large, "bfloat16", 0, 0, 80, 108)[0].expr
    assert "wgrad_mma" in _kernels.plan_wgrad(large, "float16", 2, 2, 90, 132)[0].expr
    assert "wgrad_smem" in _kernels.plan_wgrad(large, "bfloat16", 0, 0, 75, 80)[0].expr
    assert "wgrad_smem" in _kernels.plan_wgrad(large, "float32", 0, 0, 90, 132)[0].expr
