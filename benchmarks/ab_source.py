"""Same-process A/B of CUDA source trees on one suite case's default plan.

Timings of these small kernels move by up to 5 % between processes (the same plan and
source read 31.5 and 33.5 us in two processes on the H200), more than most single
changes gain; benchmarks/ab.py compares plans within one process but one source tree.
Here each tree (a directory holding plane.cu and its headers, e.g. a copy of
cupy_dwconv/cuda from another commit) is compiled for the plan that the current tree's
dispatcher picks, and the trees are timed in turn, several rounds, in one process: the
kernels' signatures and launch geometry must not differ between the trees.

    git show BASE:cupy_dwconv/cuda/plane.cu > /tmp/base/plane.cu   # plus the headers
    python benchmarks/ab_source.py convnext_7x7_s4 float32 backward /tmp/base cupy_dwconv/cuda

Each run's output is checked against the first tree's (grad_x for the backward), then
timed as bench.time_events (CUDA events, median, inputs rotated past L2).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy  # noqa: E402

from ab import checked_time, suite_case  # noqa: E402
from cupy_dwconv import _kernels, bench  # noqa: E402

def tree_source(directory, name):
    """cuda/<name> of a source tree with its local includes inlined (as _kernels.source)."""
    seen = set()

    def expand(fname):
        if fname in seen:
            return ""
        seen.add(fname)
        with open(os.path.join(directory, fname)) as f:
            text = f.read().replace("#pragma once\n", "")
        return _kernels._INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


def tree_ab_args(description, trees_help, argv=None):
    """The arguments of the same-process A/B scripts (this one, ab_package.py): a suite
    case, a dtype, a pass, the trees, and the rounds and calls timed."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case")
    ap.add_argument("dtype")
    ap.add_argument("which", choices=["forward", "grad_input", "backward"])
    ap.add_argument("trees", nargs="+", help=trees_help)
    ap.add_argument("--shape", type=int, nargs=4, metavar=("N", "C", "H", "W"), help="input shape instead of the case's")
    ap.add_argument("--kernel", type=int, nargs=2, metavar=("KH", "KW"), help="kernel size instead of the case's")
    ap.add_argument("--padding", type=int, nargs=2, metavar=("PH", "PW"), help="padding instead of the case's")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=100)
    return ap.parse_args(argv)


def case_params(args):
    """(ConvParams, dtype) of the suite case the arguments name, with --shape, --kernel
    and --padding applied."""
    return suite_case(args).params(), args.dtype


def main(argv=None):
    args = tree_ab_args(__doc__, "directories with the CUDA sources", argv)

    import cupy

    p, dtype = case_params(args)
    dev = cupy.cuda.runtime.getDevice()
    arch, sms = _kernels.device_arch(dev)
    size = _kernels.ITEMSIZE[dtype]
    l2 = cupy.cuda.Device(dev).attributes["L2CacheSize"]
    k_sets = bench.rotation_sets(3 * numpy.prod(p.x_shape) * size, l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    fwd = args.which == "forward"
    in_shape = p.out_shape if args.which == "grad_input" else p.x_shape
    out_shape = p.x_shape if args.which != "forward" else p.out_shape
    xs = [bench._random_gpu(cupy, rs, in_shape, dtype) for _ in range(k_sets)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    outs = [cupy.empty(out_shape, xs[0].dtype) for _ in range(k_sets)]
    if args.which == "backward":
        gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(k_sets)]
        launch, chunks, _ = _kernels.plan_backward(p, dtype, xs[0].data.ptr, gos[0].data.ptr, arch, sms)
        part = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), _kernels.ACC_DTYPE[dtype])
        gw, gb = cupy.empty(p.weight_shape, xs[0].dtype), cupy.empty((p.CM,), xs[0].dtype)
        counters = cupy.zeros(p.CM, cupy.uint32)

        def arrays(i):
            return (xs[i], gos[i], w, outs[i], part, counters, gw, gb)
    else:
        b = bench._random_gpu(cupy, rs, (p.CM,), dtype) if fwd else None
        launch = (_kernels.plan_forward(p, dtype, xs[0].data.ptr, arch, sms) if fwd
                  else _kernels.plan_grad_input(p, dtype, xs[0].data.ptr, arch, sms))

        def arrays(i):
            return (xs[i], w, _kernels.NULL if b is None else b, outs[i])
    kernels = []
    for tree in args.trees:
        mod = cupy.RawModule(code=tree_source(tree, launch.src), options=_kernels.NVRTC_OPTIONS,
                             name_expressions=(launch.expr,))
        kern = mod.get_function(launch.expr)
        kern.max_dynamic_shared_size_bytes = launch.shared_mem
        kernels.append((tree, kern))
    print(launch.expr, launch.grid, launch.block, flush=True)
    ref = None
    for _ in range(args.rounds):
        for tree, kern in kernels:
            def run(i, kern=kern):
                kern(launch.grid, launch.block, arrays(i) + launch.scalars, shared_mem=launch.shared_mem)

            diff, ref, ms = checked_time(cupy, run, outs[0], ref, k_sets, args.repeats, 10)
            print(f"{tree:40s} regs {kern.num_regs:3d} local {kern.local_size_bytes:3d} {ms * 1e3:8.2f} us  "
                  f"max diff {diff:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
