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
    assert "wgrad_mma" in _kernels.plan_wgrad(ok, "bfloat16", 0, 0, 80, 108)[0].expr
    assert "wgrad_tile" in _kernels.plan_wgrad(ok, "bfloat16", 0, 0, 75, 80)[0].expr
