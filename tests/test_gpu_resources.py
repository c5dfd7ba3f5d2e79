"""GPU: the kernel specializations the dispatcher picks for the benchmark suite keep their
data in registers and shared memory, as compiled by this machine's NVRTC for this GPU."""

from __future__ import annotations

import math
import zlib

import numpy
import pytest

pytestmark = pytest.mark.gpu


def test_suite_specializations_use_no_local_memory():
    """Local memory (register spills, or a stack frame) costs DRAM-latency loads in the
    inner loops: no specialization the suite plans (every case and dtype of the suite
    rule, every pass) may use any."""
    import cupy

    from cupy_dwconv import _kernels, bench

    dev = cupy.cuda.runtime.getDevice()
    arch, sms = _kernels.device_arch(dev)
    cases, half = bench.load_suite(bench.default_suite_path())
    pairs = [(c, dt) for c in cases for dt in bench.suite_dtypes(c, half)]
    with_local = []
    count = 0
    for src, exprs in bench.suite_launches(pairs, arch, sms).items():
        for expr, users in exprs.items():
            kern = _kernels.get_kernel(dev, src, expr, 0)
            count += 1
            if kern.local_size_bytes:
                with_local.append(f"{expr}: {kern.local_size_bytes} B ({users[0][0]} {users[0][1]} {users[0][2]})")
    assert count >= len(pairs)
    assert not with_local, "local memory in suite specializations:\n" + "\n".join(with_local)


# Problems whose plans NVRTC 13.0 spills on sm_90 (the compile test's grid; benchmarks/
# NOTES.md, session 35): (x shape, kernel, stride, padding, dilation, multiplier, dtype,
# data offset in elements). Results must match the reference (the odd alignments and the
# spilling tiles run as the library runs them), and only the register-tile families whose
# spills measured faster than their spill-free candidates may use local memory
# (nvrtc_compile.SPILL_MEASURED).
SPILL_PRONE = [
    ((2, 3, 13, 32), (3, 3), 3, ((1, 0), (2, 1)), 2, 1, "float16", 2),
    ((2, 3, 13, 32), (3, 3), 3, ((1, 0), (2, 1)), 2, 1, "float16", 0),
    ((2, 3, 13, 17), (5, 5), 1, ((1, 0), (2, 1)), 2, 3, "bfloat16", 0),
    ((2, 3, 15, 32), (7, 7), 3, ((1, 0), (2, 1)), 2, 1, "bfloat16", 0),
    ((2, 3, 13, 17), (7, 7), (1, 2), 1, 1, 1, "float64", 0),
    ((2, 3, 13, 17), (3, 7), 1, ((1, 0), (2, 1)), 2, 3, "float64", 0),
    ((2, 3, 13, 32), (5, 5), (3, 1), 0, 2, 3, "float32", 0),
    ((2, 4, 13, 22), (5, 7), 1, ((1, 3), (2, 4)), 1, 1, "float64", 0),
    ((2, 16, 28, 28), (5, 5), 1, 2, 1, 1, "bfloat16", 0),
    ((2, 16, 28, 28), (5, 5), 1, 2, 1, 1, "float16", 1),
    ((2, 8, 64, 64), (3, 3), 1, 2, 2, 1, "float16", 0),
    ((2, 8, 56, 56), (3, 7), 1, (1, 3), 1, 1, "float32", 1),
]


def _offset_copy(cp, a, offset):
    """A C-contiguous device copy of `a` whose data starts `offset` elements into its
    allocation (the alignment of a sliced tensor)."""
    flat = cp.empty(a.size + offset, dtype=a.dtype)
    out = flat[offset:].reshape(a.shape)
    out[...] = cp.asarray(a)
    return out


@pytest.mark.parametrize("case", SPILL_PRONE, ids=lambda c: f"{c[6]}-{'x'.join(map(str, c[0]))}-k{c[1][0]}x{c[1][1]}"
                         f"-s{c[2]}-d{c[4]}-m{c[5]}-off{c[7]}".replace(" ", ""))
def test_spill_prone_plans(case):
    import cupy

    from conftest import assert_close, random_array
    from cupy_dwconv import _kernels, _params, depthwise_conv2d, depthwise_conv2d_backward
    from gpu_util import reference_backward, reference_forward
    from nvrtc_compile import SPILL_MEASURED

    shape, (kh, kw), stride, padding, dilation, m, dtype, offset = case
    n, c, h, w = shape
    rng = numpy.random.default_rng(zlib.crc32(repr(case).encode()))
    x = random_array(rng, shape, dtype)
    wt = random_array(rng, (c * m, 1, kh, kw), dtype)
    b = random_array(rng, (c * m,), dtype)
    kw_args = dict(stride=stride, padding=padding, dilation=dilation)
    p = _params.conv_params(shape, wt.shape, b.shape, stride, padding, dilation)
    go = random_array(rng, p.out_shape, dtype)
    xg, wg, bg, gog = (_offset_copy(cupy, a, offset) for a in (x, wt, b, go))

    y = depthwise_conv2d(xg, wg, bg, **kw_args)
    assert_close(cupy.asnumpy(y), reference_forward(x, wt, b, **kw_args), dtype, scale=math.sqrt(kh * kw), what="forward")
    gx, gw, gb = depthwise_conv2d_backward(gog, xg, wg, **kw_args)
    rgx, rgw, rgb = reference_backward(go, x, wt, **kw_args)
    terms = n * p.OH * p.OW
    assert_close(cupy.asnumpy(gx), rgx, dtype, scale=math.sqrt(m * kh * kw), what="grad_x")
    assert_close(cupy.asnumpy(gw), rgw, dtype, scale=math.sqrt(terms), what="grad_weight")
    assert_close(cupy.asnumpy(gb), rgb, dtype, scale=math.sqrt(terms), what="grad_bias")

    dev = cupy.cuda.runtime.getDevice()
    arch, sms = _kernels.device_arch(dev)
    launches = [_kernels.plan_forward(p, dtype, xg.data.ptr, arch, sms),
                _kernels.plan_grad_input(p, dtype, gog.data.ptr, arch, sms)]
    launches += _kernels.plan_wgrad(p, dtype, xg.data.ptr, gog.data.ptr, arch, sms)[::2]
    fused = _kernels.plan_backward(p, dtype, xg.data.ptr, gog.data.ptr, arch, sms)
    if fused is not None:
        launches += [fused[0], fused[2]]
    local = [(L.expr, L.kernel(dev).local_size_bytes) for L in launches]
    with_local = [f"{e}: {b} B" for e, b in local if b and _kernels.split_expr(e)[0] not in SPILL_MEASURED]
    assert not with_local, "plans with local memory:\n" + "\n".join(with_local)
