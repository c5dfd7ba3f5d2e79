"""A/B timing of forced forward or grad-input plans on one GPU, for drafts the sweep's
variant lists do not cover. Each plan's output is checked against the default plan's
(max abs difference printed), then timed as the sweep and the benchmark time (CUDA
events, median, inputs rotated past L2).

    python benchmarks/ab.py convnext_7x7 float16 "mma:gran=16" "mma:gran=4"
    python benchmarks/ab.py replk_13x13 float32 --pass grad_input "smem:whole=0,mid=false" "smem:tiles_per_block=2"
    python benchmarks/ab.py convnext_7x7 float16 --shape 32 96 112 56 "mma:wr=7"
    python benchmarks/ab.py replk_13x13 float32 --pass grad_weight "lines:planes=7" "smem:"

--pass grad_weight times plan_wgrad's stage 1 with its reduction (stage 2) and prints the
largest difference relative to the largest magnitude of the default plan's weight and
bias gradients (sums in another order differ in the last bits).

--pass backward times fused backward plans (plan_backward's force: KIND is the family,
tile, rows, plane, mma or stack), each closing its own weight and bias sums; it prints
grad_x's largest difference from the default plan's and the weight and bias gradients'
relative one.

--shape N C H W replaces the case's input shape (kernel, stride, padding and dilation
stay): a proxy for a draft, e.g. two 56-row planes as one 112-row plane. --padding PH PW
replaces its padding (e.g. no row padding: every output row meets every tap row).

--stride SH SW and --dilation DH DW replace the case's stride and dilation.

--kernel KH KW replaces its kernel size (with --padding 0 0 and 1 1, a probe of a family's
staging and stores with almost no FMAs).

The spec `copy` times a device-to-device copy of the input's bytes into the output
(equal sizes only), the access pattern the memory-bound plans are measured against.

--lines-min-taps N lowers the tap count from which the lines family (conv_lines,
wgrad_lines) accepts a problem, to time it on kernels the dispatcher gives to others.

A spec is KIND:K=V,... as plan_conv's force (kinds tile, smem, mma, mma_rows, stack, plane, lines, rows;
rowsa is rows with staged=True) or plan_wgrad's (tile, plane, lines, smem, mma); values
are ints, floats (a value with a '.', e.g. conv_tile's nt=1.0: waves), true/false or none.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy  # noqa: E402

from cupy_dwconv import _kernels, bench  # noqa: E402


def parse_spec(spec):
    """'rowsa:v=4,pf=2' -> ('rows', {'v': 4, 'pf': 2, 'staged': True})."""
    kind, _, rest = spec.partition(":")
    values = {"true": True, "false": False, "none": None}
    kw = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        v = v.strip()
        kw[k.strip()] = values[v.lower()] if v.lower() in values else float(v) if "." in v else int(v)
    if kind == "rowsa":
        kind, kw = "rows", dict(kw, staged=True)
    return kind, kw


def suite_case(args):
    """The suite case args.case names, with the overrides the arguments carry (--shape,
    --padding, --kernel, --stride, --dilation, where the script defines them) applied."""
    cases, _ = bench.load_suite(bench.default_suite_path())
    case = next(c for c in cases if c.name == args.case)
    shape, kernel = getattr(args, "shape", None), getattr(args, "kernel", None)
    if shape:
        case = dataclasses.replace(case, **dict(zip("NCHW", shape)))
    if kernel:
        case = dataclasses.replace(case, KH=kernel[0], KW=kernel[1])
    for name in ("padding", "stride", "dilation"):
        if getattr(args, name, None):
            case = dataclasses.replace(case, **{name: tuple(getattr(args, name))})
    return case


def checked_time(cupy, run, out, ref, k_sets, repeats, warmup):
    """run(0) into `out`, poisoned with NaN first, then timed as the sweep times
    (bench.time_events over k_sets rotated inputs): (largest difference from `ref`, ref,
    median ms). The first call's output becomes the reference (difference 0)."""
    out.fill(numpy.nan)
    run(0)
    got = out.astype(cupy.float32)
    if ref is None:
        ref = got.copy()
    return float(cupy.abs(got - ref).max()), ref, bench.time_events(run, k_sets, repeats, warmup)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case")
    ap.add_argument("dtype")
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--pass", dest="which", default="forward", choices=["forward", "grad_input", "grad_weight", "backward"])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--shape", type=int, nargs=4, metavar=("N", "C", "H", "W"), help="input shape instead of the case's")
    ap.add_argument("--padding", type=int, nargs=2, metavar=("PH", "PW"), help="padding instead of the case's")
    ap.add_argument("--kernel", type=int, nargs=2, metavar=("KH", "KW"), help="kernel size instead of the case's")
    ap.add_argument("--stride", type=int, nargs=2, metavar=("SH", "SW"), help="stride instead of the case's")
    ap.add_argument("--dilation", type=int, nargs=2, metavar=("DH", "DW"), help="dilation instead of the case's")
    ap.add_argument("--lines-min-taps", type=int, help="accept the lines family from this many taps")
    args = ap.parse_args(argv)
    if args.lines_min_taps is not None:
        _kernels.LINES_MIN_TAPS = args.lines_min_taps

    import cupy

    p = suite_case(args).params()
    dtype, dev = args.dtype, cupy.cuda.runtime.getDevice()
    arch, sms = _kernels.device_arch(dev)
    if args.which == "grad_weight":
        return _grad_weight(cupy, args, p, dtype, dev, arch, sms)
    if args.which == "backward":
        return _backward(cupy, args, p, dtype, dev, arch, sms)
    fwd = args.which == "forward"
    pr = _kernels.forward_problem(p) if fwd else _kernels.grad_input_problem(p)
    in_shape, out_shape = (p.x_shape, p.out_shape) if fwd else (p.out_shape, p.x_shape)
    l2 = cupy.cuda.Device(dev).attributes["L2CacheSize"]
    set_bytes = (numpy.prod(in_shape) + numpy.prod(out_shape)) * _kernels.ITEMSIZE[dtype]
    k_sets = bench.rotation_sets(set_bytes, l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    xs = [bench._random_gpu(cupy, rs, in_shape, dtype) for _ in range(k_sets)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    b = bench._random_gpu(cupy, rs, (p.CM,), dtype) if fwd else None
    outs = [cupy.empty(out_shape, xs[0].dtype) for _ in range(k_sets)]
    null = numpy.uint64(0)
    default = (_kernels.plan_forward(p, dtype, xs[0].data.ptr, arch, sms) if fwd
               else _kernels.plan_grad_input(p, dtype, xs[0].data.ptr, arch, sms))
    launches = [("default", default)]
    for spec in args.specs:
        if spec == "copy":
            launches.append((spec, None if in_shape != out_shape else "copy"))
            continue
        launches.append((spec, _kernels.plan_conv(pr, dtype, xs[0].data.ptr, force=parse_spec(spec), arch=arch, sms=sms)))
    ref = None
    for label, launch in launches:
        if launch is None:
            print(f"{label:32s} declined", flush=True)
            continue
        if launch == "copy":
            nbytes = outs[0].nbytes

            def copy(i):
                cupy.cuda.runtime.memcpyAsync(outs[i].data.ptr, xs[i].data.ptr, nbytes, 3,
                                              cupy.cuda.get_current_stream().ptr)

            ms = bench.time_events(copy, k_sets, args.repeats, 5)
            print(f"{label:32s} {'device-to-device copy of the input':70s} {ms * 1e3:31.2f} us", flush=True)
            continue
        kern = launch.kernel(dev)

        def run(i, launch=launch):
            launch(dev, (xs[i], w, null if b is None else b, outs[i]))

        diff, ref, ms = checked_time(cupy, run, outs[0], ref, k_sets, args.repeats, 5)
        print(f"{label:32s} {launch.expr[:70]:70s} regs {kern.num_regs:3d} local {kern.local_size_bytes:3d} "
              f"{ms * 1e3:8.2f} us  max diff {diff:.2e}", flush=True)
    return 0


def _grad_weight(cupy, args, p, dtype, dev, arch, sms):
    """Weight-gradient plans (stage 1 and the reduction), timed together."""
    l2 = cupy.cuda.Device(dev).attributes["L2CacheSize"]
    k_sets = bench.rotation_sets(2 * numpy.prod(p.x_shape) * _kernels.ITEMSIZE[dtype], l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    xs = [bench._random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(k_sets)]
    gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(k_sets)]
    ref = None
    for spec in ["default"] + args.specs:
        force = None if spec == "default" else parse_spec(spec)
        s1, chunks, s2 = _kernels.plan_wgrad(p, dtype, xs[0].data.ptr, gos[0].data.ptr, arch, sms, force=force)
        part = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), _kernels.ACC_DTYPE[dtype])
        gw = cupy.full(p.weight_shape, numpy.nan, dtype)
        gb = cupy.full((p.CM,), numpy.nan, dtype)

        def run(k, s1=s1, s2=s2, part=part, gw=gw, gb=gb):
            s1(dev, (xs[k], gos[k], part))
            s2(dev, (part, gw, gb))

        run(0)
        got = numpy.concatenate([gw.get().ravel(), gb.get().ravel()]).astype(numpy.float64)
        if ref is None:
            ref = got
        diff = float(numpy.max(numpy.abs(got - ref)) / max(1e-30, float(numpy.max(numpy.abs(ref)))))
        ms = bench.time_events(run, k_sets, args.repeats, 10)
        print(f"{spec:32s} {s1.expr[:70]:70s} grid {s1.grid} chunks {chunks:3d} {ms * 1e3:8.2f} us  rel diff {diff:.1e}",
              flush=True)
    return 0


def _backward(cupy, args, p, dtype, dev, arch, sms):
    """Fused backward plans (x and grad_output in, grad_x, grad_weight and grad_bias out,
    the closing sums inside the kernel), timed."""
    l2 = cupy.cuda.Device(dev).attributes["L2CacheSize"]
    size = _kernels.ITEMSIZE[dtype]
    k_sets = bench.rotation_sets((2 * numpy.prod(p.x_shape) + numpy.prod(p.out_shape)) * size, l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    xs = [bench._random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(k_sets)]
    gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(k_sets)]
    gxs = [cupy.empty(p.x_shape, xs[0].dtype) for _ in range(k_sets)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    counters = cupy.zeros(p.CM, cupy.uint32)
    ref = None
    for spec in ["default"] + args.specs:
        force = None
        if spec != "default":
            kind, kw = parse_spec(spec)
            force = dict(kw, family=kind)
        res = _kernels.plan_backward(p, dtype, xs[0].data.ptr, gos[0].data.ptr, arch, sms, force=force)
        if res is None:
            print(f"{spec:32s} declined", flush=True)
            continue
        s1, chunks, _ = res
        part = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), _kernels.ACC_DTYPE[dtype])
        gw = cupy.full(p.weight_shape, numpy.nan, dtype)
        gb = cupy.full((p.CM,), numpy.nan, dtype)

        def run(k, s1=s1, part=part, gw=gw, gb=gb):
            s1(dev, (xs[k], gos[k], w, gxs[k], part, counters, gw, gb))

        gxs[0].fill(numpy.nan)
        run(0)
        gx = gxs[0].astype(cupy.float32)
        wb = numpy.concatenate([gw.get().ravel(), gb.get().ravel()]).astype(numpy.float64)
        if ref is None:
            ref = (gx.copy(), wb)
        dx = float(cupy.abs(gx - ref[0]).max())
        dw = float(numpy.max(numpy.abs(wb - ref[1])) / max(1e-30, float(numpy.max(numpy.abs(ref[1])))))
        kern = s1.kernel(dev)
        ms = bench.time_events(run, k_sets, args.repeats, 10)
        print(f"{spec:32s} {s1.expr[:60]:60s} regs {kern.num_regs:3d} local {kern.local_size_bytes:3d} grid {s1.grid} "
              f"{ms * 1e3:8.2f} us  gx diff {dx:.2e}  gw rel diff {dw:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
