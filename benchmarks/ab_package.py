"""Same-process A/B of whole package trees (host planner and kernels) on one suite case.

benchmarks/ab_source.py swaps CUDA sources under one plan; a change that also moves the
plan, the launch geometry or the kernel's arguments needs the two packages side by side.
Each directory holds a `cupy_dwconv` package (e.g. `git archive BASE cupy_dwconv | tar
-x -C /tmp/base`); each is imported under its own module name, and the public functions
of every tree are timed in turn, several rounds, in one process, after their outputs are
checked against the first tree's.

    python benchmarks/ab_package.py seed_3x7 float16 backward /tmp/base .

Timing as the benchmark's (bench.time_events: CUDA events around single calls queued
behind a spin kernel, median, inputs rotated past L2); `backward` is all three gradients.
"""

from __future__ import annotations

import importlib.util
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy  # noqa: E402

from ab_source import case_params, tree_ab_args  # noqa: E402
from cupy_dwconv import bench  # noqa: E402


def load_tree(directory, index):
    """The cupy_dwconv package under `directory`, imported as a module of its own."""
    root = os.path.join(os.path.abspath(directory), "cupy_dwconv")
    name = f"cupy_dwconv_ab{index}"
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    args = tree_ab_args(__doc__, "directories holding a cupy_dwconv package", argv)

    import cupy

    p, dtype = case_params(args)
    size = numpy.dtype(bench._np_dtype(dtype)).itemsize
    l2 = cupy.cuda.Device().attributes["L2CacheSize"]
    k_sets = bench.rotation_sets(3 * numpy.prod(p.x_shape) * size, l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    xs = [bench._random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(k_sets)]
    gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(k_sets)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    b = bench._random_gpu(cupy, rs, (p.CM,), dtype)
    kw = dict(stride=(p.SH, p.SW), padding=((p.PT, p.PB), (p.PL, p.PR)), dilation=(p.DH, p.DW))
    trees = [(t, load_tree(t, i)) for i, t in enumerate(args.trees)]

    def call(mod, i):
        if args.which == "forward":
            return (mod.depthwise_conv2d(xs[i], w, b, **kw),)
        needs = (True, False, False) if args.which == "grad_input" else (True, True, True)
        return mod.depthwise_conv2d_backward(gos[i], xs[i], w, needs=needs, **kw)

    ref = None
    for tree, mod in trees:
        got = [r for r in call(mod, 0) if r is not None]
        if ref is None:
            ref = got
        diff = max(float(cupy.abs(g.astype(cupy.float64) - r.astype(cupy.float64)).max() /
                         max(float(cupy.abs(r.astype(cupy.float64)).max()), 1e-30)) for g, r in zip(got, ref))
        print(f"{tree:40s} largest difference from the first tree, relative to its magnitude: {diff:.2e}",
              flush=True)
    for _ in range(args.rounds):
        for tree, mod in trees:
            ms = bench.time_events(lambda i, mod=mod: call(mod, i), k_sets, args.repeats, 10)
            print(f"{tree:40s} {ms * 1e3:9.2f} us", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
