"""A/B timing of plans whose kernels use local memory against their spill-free
candidates.

For each case, pass, dtype and data-pointer offset (elements past a 256-byte boundary,
the alignment a sliced tensor has): the library's plan, and where its kernels use local
memory on this device, the first candidate this device's compiler keeps in registers,
forced through the planners: the register tile's shrink chain (the same tile at 128
registers where it had 80, then smaller tiles rows first, then 255 registers), the row
sweep's lanes (fewer rows ahead, then narrower lanes), the stacked tensor-core kernels'
occupancy bounds (3, 2, then 1 block per SM). Times
both (CUDA events, median, inputs rotated past L2), prints each plan's local memory per
thread, and the largest difference between their outputs (relative to the largest
magnitude for the weight and bias gradients, whose sums run in another order).

    python benchmarks/spill_ab.py [--repeats 50] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy  # noqa: E402

from cupy_dwconv import _kernels, _params, bench  # noqa: E402

# (label, x shape, kernel, stride, padding, dilation, dtype, offset in elements, passes):
# suite shapes at the alignments and dtypes where NVRTC 13.0 spills the first candidate.
CASES = [
    ("seed_3x7", (32, 128, 128, 256), (3, 7), 1, (1, 3), 1, "float32", 1, ("forward", "grad_input")),
    ("seed_3x7", (32, 128, 128, 256), (3, 7), 1, (1, 3), 1, "float16", 4, ("forward",)),
    ("seed_3x7", (32, 128, 128, 256), (3, 7), 1, (1, 3), 1, "float16", 1, ("backward",)),
    ("seed_3x7", (32, 128, 128, 256), (3, 7), 1, (1, 3), 1, "bfloat16", 1, ("backward",)),
    ("mbv2_3x3", (64, 144, 56, 56), (3, 3), 1, 1, 1, "float16", 1, ("backward",)),
    ("mbv2_3x3_s2", (64, 96, 112, 112), (3, 3), 2, 1, 1, "float16", 0, ("forward",)),
    ("mbv2_3x3_s2", (64, 96, 112, 112), (3, 3), 2, 1, 1, "float16", 2, ("forward",)),
    ("mbv2_3x3_s2", (64, 96, 112, 112), (3, 3), 2, 1, 1, "float16", 1, ("grad_weight",)),
    ("mbv2_3x3_s2", (64, 96, 112, 112), (3, 3), 2, 1, 1, "bfloat16", 1, ("forward",)),
    ("mbv2_3x3_s2", (64, 96, 112, 112), (3, 3), 2, 1, 1, "float32", 1, ("forward",)),
    ("effnet_5x5", (64, 240, 28, 28), (5, 5), 1, 2, 1, "float32", 1, ("forward", "grad_input")),
    ("effnet_5x5", (64, 240, 28, 28), (5, 5), 1, 2, 1, "float16", 1, ("backward",)),
    ("effnet_5x5", (64, 240, 28, 28), (5, 5), 1, 2, 1, "bfloat16", 0, ("backward",)),
    ("effnet_5x5", (64, 240, 28, 28), (5, 5), 1, 2, 1, "bfloat16", 1, ("backward",)),
    ("effnet_5x5_s2", (64, 144, 56, 56), (5, 5), 2, 2, 1, "float32", 2, ("forward", "grad_weight")),
    ("effnet_5x5_s2", (64, 144, 56, 56), (5, 5), 2, 2, 1, "float16", 0, ("forward",)),
    ("effnet_5x5_s2", (64, 144, 56, 56), (5, 5), 2, 2, 1, "bfloat16", 1, ("forward",)),
    ("convnext_7x7", (64, 96, 56, 56), (7, 7), 1, 3, 1, "float16", 4, ("grad_weight",)),
    ("convnext_7x7", (64, 96, 56, 56), (7, 7), 1, 3, 1, "bfloat16", 1, ("grad_weight",)),
    ("dilated_3x3_d2", (32, 256, 64, 64), (3, 3), 1, 2, 2, "float32", 1, ("forward", "grad_input", "grad_weight")),
    ("dilated_3x3_d2", (32, 256, 64, 64), (3, 3), 1, 2, 2, "float16", 0, ("forward", "grad_input")),
    ("dilated_3x3_d2", (32, 256, 64, 64), (3, 3), 1, 2, 2, "float16", 1, ("backward",)),
    ("dilated_3x3_d2", (32, 256, 64, 64), (3, 3), 1, 2, 2, "bfloat16", 1, ("forward",)),
    ("k9_64", (64, 128, 64, 64), (9, 9), 1, 4, 1, "float16", 0, ("forward", "grad_weight")),
]


def _offset_random(cupy, rs, shape, dtype, offset):
    """A C-contiguous random array whose data starts `offset` elements past the start of
    its (256-byte aligned) allocation."""
    n = int(numpy.prod(shape))
    flat = bench._random_gpu(cupy, rs, (n + offset,), dtype)
    return flat[offset:].reshape(shape)


def shrink_chain(th, tw, minb, sh=1, sw=1):
    """Register-tile shapes (TH, TW, MINB) after (th, tw, minb): the same tile with 128
    registers where it had 80; smaller tiles at that budget, rows first (multiples of the
    stride, TW down to 2); then the same with 255 registers."""
    out = [(th, tw, minb)]
    for m in ([2] if minb >= 3 else [minb]) + ([1] if minb >= 2 else []):
        a, b = th, tw
        while True:
            if (a, b, m) not in out:
                out.append((a, b, m))
            if a > sh:
                a = max(sh, a // 2 // sh * sh)
            elif b > max(sw, 2):
                b = max(sw, 2, b // 2 // sw * sw)
            else:
                break
    return out[1:]


def _spill_free(p, dtype, which, ptr, arch, sms, table, dev):
    """The first candidate after the library's plan whose kernels use no local memory, or
    None."""
    def local(plan):
        return sum(L.kernel(dev).local_size_bytes for L in _launches(plan, which))

    first = _launches(table, which)[0]
    name, args = _kernels.split_expr(first.expr)
    cands = []
    if name == "conv_tile" and which in ("forward", "grad_input"):
        sh, sw = (int(args[4]), int(args[5])) if args[1] == "1" else (1, 1)
        pr = _kernels.forward_problem(p) if which == "forward" else _kernels.grad_input_problem(p)
        cands = [_kernels.plan_conv(pr, dtype, ptr, force=("tile", dict(th=a, tw=b, minb=m)), arch=arch, sms=sms)
                 for a, b, m in shrink_chain(int(args[8]), int(args[9]), int(args[15]), sh, sw)]
    elif name == "wgrad_tile" and which == "grad_weight":
        cands = [_kernels.plan_wgrad(p, dtype, ptr, ptr, arch, sms, force=("tile", dict(th=a, tw=b, minb=m)))
                 for a, b, m in shrink_chain(int(args[7]), int(args[8]), int(args[12]))]
    elif name == "bwd_tile" and which == "backward":
        cands = [_kernels.plan_backward(p, dtype, ptr, ptr, arch, sms, force=dict(th=a, tw=b, minb=m))
                 for a, b, m in shrink_chain(int(args[7]), int(args[8]), int(args[13]))]
        cands = [None if c is None else ("fused",) + c for c in cands]
    elif name == "conv_stack" and which in ("forward", "grad_input"):
        pr = _kernels.forward_problem(p) if which == "forward" else _kernels.grad_input_problem(p)
        cands = [_kernels.plan_conv(pr, dtype, ptr, force=("stack", dict(minb=m)), arch=arch, sms=sms)
                 for m in range(int(args[-1]) - 1, 0, -1)]
    elif name == "wgrad_stack" and which == "grad_weight":
        cands = [_kernels.plan_wgrad(p, dtype, ptr, ptr, arch, sms, force=("stack", dict(minb=m)))
                 for m in range(int(args[-1]) - 1, 0, -1)]
    elif name == "bwd_rows" and which == "backward":
        v = int(args[1])
        cands = [_kernels.plan_backward(p, dtype, ptr, ptr, arch, sms, force=dict(family="rows", v=a, pf=b))
                 for a in (v, v // 2) if a >= 1 for b in (4, 3, 2)][1:]
        cands = [None if c is None else ("fused",) + c for c in cands]
    return next((c for c in cands if c is not None and local(c) == 0), None)


def _launches(plan, which):
    if which in ("forward", "grad_input"):
        return [plan]
    if which == "grad_weight":
        return [plan[0]]
    if plan[0] == "fused":
        return [plan[1]]
    return [plan[1], plan[2][0]]


def _plans(p, dtype, which, ptr, arch, sms):
    if which == "forward":
        return _kernels.plan_forward(p, dtype, ptr, arch, sms)
    if which == "grad_input":
        return _kernels.plan_grad_input(p, dtype, ptr, arch, sms)
    if which == "grad_weight":
        return _kernels.plan_wgrad(p, dtype, ptr, ptr, arch, sms)
    fused = _kernels.plan_backward(p, dtype, ptr, ptr, arch, sms)
    if fused is not None:
        return ("fused",) + fused
    return ("split", _kernels.plan_grad_input(p, dtype, ptr, arch, sms),
            _kernels.plan_wgrad(p, dtype, ptr, ptr, arch, sms))


def _describe(plan, which, dev):
    launches = _launches(plan, which)
    return " + ".join(f"{bench.short_kernel_name(L.expr)} [{L.expr.split('<', 1)[1][:-1]}] "
                      f"local {L.kernel(dev).local_size_bytes}" for L in launches)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--only", help="cases whose label contains this")
    args = ap.parse_args(argv)

    import cupy

    dev = cupy.cuda.runtime.getDevice()
    arch, sms = _kernels.device_arch(dev)
    l2 = cupy.cuda.Device(dev).attributes["L2CacheSize"]
    null = numpy.uint64(0)
    for label, shape, (kh, kw), stride, padding, dilation, dtype, offset, passes in CASES:
        if args.only and args.only not in label:
            continue
        n, c, h, w = shape
        p = _params.conv_params(shape, (c, 1, kh, kw), None, stride, padding, dilation)
        size = _kernels.ITEMSIZE[dtype]
        ptr = (offset * size) % 16
        set_bytes = (numpy.prod(p.x_shape) * 2 + numpy.prod(p.out_shape)) * size
        k_sets = bench.rotation_sets(set_bytes, l2, 6 * 10**9)
        rs = cupy.random.RandomState(0)
        xs = [_offset_random(cupy, rs, p.x_shape, dtype, offset) for _ in range(k_sets)]
        gos = [_offset_random(cupy, rs, p.out_shape, dtype, offset) for _ in range(k_sets)]
        wt = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
        for which in passes:
            old = _plans(p, dtype, which, ptr, arch, sms)
            head = f"{label} {dtype} +{offset} {which}"
            if not any(L.kernel(dev).local_size_bytes for L in _launches(old, which)):
                print(f"{head}: no local memory ({_describe(old, which, dev)})", flush=True)
                continue
            new = _spill_free(p, dtype, which, ptr, arch, sms, old, dev)
            if new is None:
                print(f"{head}: no spill-free candidate ({_describe(old, which, dev)})", flush=True)
                continue
            results = []
            for plan in (old, new):
                run, collect = _runner(cupy, p, dtype, which, plan, xs, gos, wt, null, dev)
                run(0)
                got = collect()
                ms = bench.time_events(run, k_sets, args.repeats, 5)
                results.append((ms, got))
            diffs = []
            for a, b in zip(results[0][1], results[1][1]):
                scale = float(cupy.abs(a).max()) if which == "grad_weight" else 1.0
                diffs.append(float(cupy.abs(a - b).max()) / max(scale, 1e-30))
            print(f"{head}:\n    plan       {_describe(old, which, dev)}: {results[0][0] * 1e3:.2f} us\n"
                  f"    spill-free {_describe(new, which, dev)}: {results[1][0] * 1e3:.2f} us"
                  f"   (max diff {max(diffs):.2e})", flush=True)
    return 0


def _runner(cupy, p, dtype, which, plan, xs, gos, wt, null, dev):
    """(run(k), collect()) for one plan: run into NaN-poisoned outputs; collect returns
    the outputs as float32 arrays."""
    acc = _kernels.ACC_DTYPE[dtype]
    if which in ("forward", "grad_input"):
        fwd = which == "forward"
        out = cupy.full(p.out_shape if fwd else p.x_shape, numpy.nan, dtype=xs[0].dtype)
        src = xs if fwd else gos

        def run(k):
            plan(dev, (src[k], wt, null, out))

        return run, lambda: [out.astype(cupy.float32)]
    gw = cupy.full(p.weight_shape, numpy.nan, dtype=xs[0].dtype)
    gb = cupy.full((p.CM,), numpy.nan, dtype=xs[0].dtype)
    if which == "grad_weight":
        s1, chunks, s2 = plan
        partial = cupy.full((p.CM, chunks, p.KH * p.KW + 1), numpy.nan, dtype=acc)

        def run(k):
            s1(dev, (xs[k], gos[k], partial))
            s2(dev, (partial, gw, gb))

        return run, lambda: [gw.astype(cupy.float32), gb.astype(cupy.float32)]
    gx = cupy.full(p.x_shape, numpy.nan, dtype=xs[0].dtype)
    if plan[0] == "fused":
        _, s1, chunks, _ = plan
        partial = cupy.full((p.CM, chunks, p.KH * p.KW + 1), numpy.nan, dtype=acc)
        counters = cupy.zeros((p.CM,), dtype=cupy.uint32)

        def run(k):
            s1(dev, (xs[k], gos[k], wt, gx, partial, counters, gw, gb))
    else:
        _, gi, (s1, chunks, s2) = plan
        partial = cupy.full((p.CM, chunks, p.KH * p.KW + 1), numpy.nan, dtype=acc)

        def run(k):
            gi(dev, (gos[k], wt, null, gx))
            s1(dev, (xs[k], gos[k], partial))
            s2(dev, (partial, gw, gb))

    def collect():
        scale = float(cupy.abs(gw.astype(cupy.float32)).max())
        return [gx.astype(cupy.float32), gw.astype(cupy.float32) / scale, gb.astype(cupy.float32) / scale]

    return run, collect


if __name__ == "__main__":
    sys.exit(main())
