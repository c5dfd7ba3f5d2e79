"""Run one suite case once after a warm-up, for a profiler to capture (ncu -k regex:...).

    ncu --clock-control none -k regex:conv_ --launch-skip 2 --launch-count 1 \
        python3 benchmarks/profile_case.py seed_3x7 float16 [forward|backward]

DWCONV_FORCE=KIND:K=V,... runs a forced plan instead (a spec as benchmarks/ab.py reads it:
forward, plan_conv's families and keyword arguments, rowsa = rows with staged=True;
backward, plan_backward's families and keyword arguments).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cupy  # noqa: E402

import cupy_dwconv  # noqa: E402
from cupy_dwconv import bench  # noqa: E402


def main(argv):
    name, dtype = argv[0], argv[1]
    which = argv[2] if len(argv) > 2 else "forward"
    cases, _ = bench.load_suite(bench.default_suite_path())
    case = next(c for c in cases if c.name == name)
    p = case.params()
    rs = cupy.random.RandomState(0)
    x = bench._random_gpu(cupy, rs, p.x_shape, dtype)
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    b = bench._random_gpu(cupy, rs, (p.CM,), dtype)
    kw = dict(stride=(p.SH, p.SW), padding=p.padding, dilation=(p.DH, p.DW))
    force = os.environ.get("DWCONV_FORCE")  # e.g. "rowsa:v=8,pf=4,minb=2"
    if force and which == "forward":
        from ab import parse_spec

        from cupy_dwconv import _kernels

        launch = _kernels.plan_conv(_kernels.forward_problem(p), dtype, x.data.ptr, force=parse_spec(force))
        y = cupy.empty(p.out_shape, dtype=x.dtype)
        print("forced", launch.expr, flush=True)
        for _ in range(3):
            launch(x.device.id, (x, w, b, y))
        cupy.cuda.get_current_stream().synchronize()
        return 0
    if force and which == "backward":
        from ab import parse_spec

        from cupy_dwconv import _kernels

        kind, kw_force = parse_spec(force)
        go = bench._random_gpu(cupy, rs, p.out_shape, dtype)
        fused = _kernels.plan_backward(p, dtype, x.data.ptr, go.data.ptr, force=dict(kw_force, family=kind))
        stage1, chunks, _ = fused
        gx = cupy.empty(p.x_shape, dtype=x.dtype)
        gw = cupy.empty(p.weight_shape, dtype=x.dtype)
        gb = cupy.empty((p.CM,), dtype=x.dtype)
        partial = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), dtype=_kernels.ACC_DTYPE[dtype])
        counters = cupy.zeros((p.CM,), dtype=cupy.uint32)
        print("forced", stage1.expr, flush=True)
        for _ in range(3):
            stage1(x.device.id, (x, go, w, gx, partial, counters, gw, gb))
        cupy.cuda.get_current_stream().synchronize()
        return 0
    for _ in range(3):  # launches 0-1 warm up (compile, caches), launch 2 is the profiled one
        if which == "forward":
            cupy_dwconv.depthwise_conv2d(x, w, b, **kw)
        else:
            go = bench._random_gpu(cupy, rs, p.out_shape, dtype)
            cupy_dwconv.depthwise_conv2d_backward(go, x, w, **kw)
    cupy.cuda.get_current_stream().synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
