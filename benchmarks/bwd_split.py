"""Time the launches of one backward alone and together: the fused kernel with and
without its closing step, wgrad_reduce, and the library call, on the split path also
with each stream arrangement of _kernels.split_streams (CUDA events, median, inputs
rotated past L2, as the benchmark). Run on a GPU machine:

    python3 benchmarks/bwd_split.py inception_1x7:float32 seed_3x7:float16
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy  # noqa: E402

from cupy_dwconv import _api, _kernels, bench  # noqa: E402


def main(argv):
    import cupy

    cases, _ = bench.load_suite(bench.default_suite_path())
    l2 = cupy.cuda.Device().attributes["L2CacheSize"]
    dev = cupy.cuda.runtime.getDevice()
    null = _api._NULL
    for spec in argv:
        name, dtype = spec.split(":")
        p = next(c for c in cases if c.name == name).params()
        rs = cupy.random.RandomState(0)
        k_sets = bench.rotation_sets(3 * numpy.prod(p.x_shape) * _kernels.ITEMSIZE[dtype], l2, 6 * 10**9)
        xs = [bench._random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(k_sets)]
        gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(k_sets)]
        w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
        gxs = [cupy.empty(p.x_shape, dtype) for _ in range(k_sets)]
        gw, gb = cupy.empty(p.weight_shape, dtype), cupy.empty((p.CM,), dtype)
        rows = []
        fused = _kernels.plan_backward(p, dtype, xs[0].data.ptr, gos[0].data.ptr)
        if fused is not None:
            s1, chunks, s2 = fused
            part = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), _kernels.ACC_DTYPE[dtype])
            counters = cupy.zeros((p.CM,), cupy.uint32)
            print(name, dtype, s1.expr, s1.grid, "chunks", chunks, flush=True)
            rows += [
                ("stage 1 only", lambda k: s1(dev, (xs[k], gos[k], w, gxs[k], part, null, null, null))),
                ("wgrad_reduce", lambda k: s2(dev, (part, gw, gb))),
                ("stage 1 + reduce", lambda k: (s1(dev, (xs[k], gos[k], w, gxs[k], part, null, null, null)),
                                                s2(dev, (part, gw, gb)))),
                ("closing step", lambda k: s1(dev, (xs[k], gos[k], w, gxs[k], part, counters, gw, gb))),
            ]
        def call(k):
            return _api.depthwise_conv2d_backward(gos[k], xs[k], w, stride=(p.SH, p.SW), padding=p.padding,
                                                  dilation=(p.DH, p.DW))

        rows.append(("library call", call))
        if fused is None:  # the split path, on each of its stream arrangements (split_streams)
            for label, limit, first_max in (("one stream", None, 0), ("side, shared", 1, 0),
                                            ("side, wgrad_first", 1, float("inf"))):
                rows.append((label, lambda k, limit=limit, first_max=first_max: _with_streams(limit, first_max, call, k)))
        for label, fn in rows:
            print(f"  {label:18s} {bench.time_events(fn, k_sets, repeats=60, warmup=15) * 1000:8.2f} us", flush=True)
    return 0


def _with_streams(limit, first_max, fn, k):
    saved = _kernels.SPLIT_CONCURRENT_MIN, _kernels.SPLIT_FIRST_MAX_FLOPS
    _kernels.SPLIT_CONCURRENT_MIN, _kernels.SPLIT_FIRST_MAX_FLOPS = limit, first_max
    try:
        return fn(k)
    finally:
        _kernels.SPLIT_CONCURRENT_MIN, _kernels.SPLIT_FIRST_MAX_FLOPS = saved


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
