"""Where the host time of one cached forward call goes (microseconds per call):
CuPy's allocation, a raw kernel launch with few and with many scalar arguments, and the
library's full call. Run on a GPU machine: python3 benchmarks/dispatch_profile.py"""

from __future__ import annotations

import os
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import cupy  # noqa: E402

import cupy_dwconv  # noqa: E402
from cupy_dwconv import _api, _kernels, _params  # noqa: E402


def per_call(fn, n=3000):
    for _ in range(200):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        cupy.cuda.get_current_stream().synchronize()
        us = (time.perf_counter() - t0) / n * 1e6
        best = us if best is None else min(best, us)
    return best


def main():
    x = cupy.random.default_rng(0).standard_normal((1, 8, 16, 16), dtype=cupy.float32)
    w = cupy.random.default_rng(1).standard_normal((8, 1, 3, 3), dtype=cupy.float32)
    b = cupy.zeros((8,), dtype=cupy.float32)
    p = _params.conv_params(x.shape, w.shape, b.shape, 1, 1, 1)
    launch = _kernels.plan_forward(p, "float32", x.data.ptr)
    kern = launch.kernel(x.device.id)
    cupy_dwconv.depthwise_conv2d(x, w, b, padding=1)  # fills the call cache (and _forward_key's type)
    out = cupy.empty(p.out_shape, cupy.float32)
    empty_src = r'extern "C" __global__ void k4(const float* a, const float* b, const float* c, float* d) {}'
    k4 = cupy.RawKernel(empty_src, "k4")
    rows = [
        ("cupy.empty", lambda: cupy.empty(p.out_shape, cupy.float32)),
        ("cupy.ndarray", lambda: cupy.ndarray(p.out_shape, cupy.float32)),
        ("empty kernel, 4 pointer args", lambda: k4((1,), (32,), (x, w, b, out))),
        (f"library kernel, {4 + len(launch.scalars)} args", lambda: kern(launch.grid, launch.block, (x, w, b, out) + launch.scalars)),
        ("_forward_key", lambda: _api._forward_key(x, w, b, 1, 1, 1)),
        ("_forward_key + cache lookup", lambda: _api._FORWARD_CACHE.get(_api._forward_key(x, w, b, 1, 1, 1))),
        ("depthwise_conv2d (cached)", lambda: cupy_dwconv.depthwise_conv2d(x, w, b, padding=1)),
        ("depthwise_conv2d, list padding (checked path)", lambda: cupy_dwconv.depthwise_conv2d(x, w, b, padding=[1, 1])),
    ]
    for name, fn in rows:
        print(f"{per_call(fn):8.2f} us  {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
