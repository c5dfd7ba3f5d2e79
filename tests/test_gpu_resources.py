"""GPU: the kernel specializations the dispatcher picks for the benchmark suite keep their
data in registers and shared memory, as compiled by this machine's NVRTC for this GPU."""

from __future__ import annotations

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
