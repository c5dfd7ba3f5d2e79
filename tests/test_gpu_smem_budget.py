"""Devices with less shared memory per block than the sm_90 the plans are tuned on (sm_75:
64 KB, sm_86 / sm_89: 99 KB, every device: 48 KB): the library plans within the device's
budget, replacing a plan that asks for more (conv_tile, conv_smem with one tile,
wgrad_tile, one-stage wgrad_smem, the generic kernels; a fused backward by the split
one), and the results stay right. Emulated on this GPU by lowering the budget the
planner reads (the device attribute); each problem's tuned plan asks for more than it."""

from __future__ import annotations

import math

import numpy
import pytest

from conftest import assert_close, random_array

pytestmark = pytest.mark.gpu

# N, C, H, W, K (square kernel), padding; the tuned plans that exceed 48 KB (sm_90):
SHAPES = [
    (2, 8, 28, 28, 13, 6),     # float64 wgrad_lines (85 KB)
    (1, 3, 56, 56, 31, 15),    # 16-bit conv_mma (61 KB) and wgrad_mma (96 KB); float64 wgrad_smem (180 KB)
    (32, 8, 14, 14, 7, 3),     # float32 conv_batch (54 KB), bwd_batch (81 KB)
    (2, 4, 64, 64, 9, 4),      # 16-bit wgrad_mma (56 KB); float64 wgrad_smem (171 KB)
    (2, 3, 120, 100, 7, 3),    # float32 bwd_rows (57 KB)
]


@pytest.mark.parametrize("budget_kb", [48, 99])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_plans_fit_the_device_budget(shape, dtype, budget_kb, monkeypatch):
    import cupy

    import cupy_dwconv
    from cupy_dwconv import _api, _kernels
    from gpu_util import params, reference_backward, reference_forward, to_gpu

    N, C, H, W, K, pad = shape
    budget = budget_kb * 1024
    dev = cupy.cuda.runtime.getDevice()
    if _kernels.device_smem(dev) < budget:
        pytest.skip(f"this GPU allows {_kernels.device_smem(dev)} bytes per block, less than the {budget} emulated")
    monkeypatch.setattr(_kernels, "device_smem", lambda device_id: budget)
    monkeypatch.setattr(_api, "_FORWARD_CACHE", {})  # plans made under the device's own budget

    rng = numpy.random.default_rng(K * 1000 + H)
    x = random_array(rng, (N, C, H, W), dtype)
    w = random_array(rng, (C, 1, K, K), dtype)
    b = random_array(rng, (C,), dtype)
    p = params(x.shape, w.shape, True, 1, pad, 1)
    go = random_array(rng, p.out_shape, dtype)
    xg, wg, gog = to_gpu(x), to_gpu(w), to_gpu(go)

    arch, sms, smem = _kernels.device_limits(dev)
    assert smem == budget
    launches = [_kernels.plan_forward(p, dtype, xg.data.ptr, arch, sms, smem),
                _kernels.plan_grad_input(p, dtype, gog.data.ptr, arch, sms, smem)]
    s1, _, s2 = _kernels.plan_wgrad(p, dtype, xg.data.ptr, gog.data.ptr, arch, sms, smem=smem)
    launches += [s1, s2]
    fused = _kernels.plan_backward(p, dtype, xg.data.ptr, gog.data.ptr, arch, sms, smem=smem)
    if fused is not None:
        launches += [fused[0], fused[2]]
    assert all(launch.shared_mem <= budget for launch in launches), [(l.expr, l.shared_mem) for l in launches]

    out = cupy_dwconv.depthwise_conv2d(xg, wg, to_gpu(b), padding=pad)
    assert_close(out.get(), reference_forward(x, w, b, padding=pad), dtype, scale=math.sqrt(K * K), what="forward")
    gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(gog, xg, wg, padding=pad)
    ref = reference_backward(go, x, w, padding=pad)
    terms = N * p.OH * p.OW
    assert_close(gx.get(), ref[0], dtype, scale=math.sqrt(K * K), what="grad_x")
    assert_close(gw.get(), ref[1], dtype, scale=math.sqrt(terms), what="grad_weight")
    assert_close(gb.get(), ref[2], dtype, scale=math.sqrt(terms), what="grad_bias")
