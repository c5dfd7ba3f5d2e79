"""Tuning sweep: time kernel variants per benchmark case on the GPU.

For every suite case and dtype, runs the listed conv_tile / conv_smem variants (forced
through the same planning code as the library), checks each result against the
default-plan output (itself checked against the reference by the test suite and the
benchmark), and times it with the benchmark's method (CUDA events, median, inputs
rotated past L2). Prints registers and local-memory bytes per thread of each compiled
variant, so spilling ones are visible. Output feeds benchmarks/NOTES.md and the
heuristic table in cupy_dwconv/_kernels.py.

    python benchmarks/sweep.py [--cases NAME ...] [--dtypes float32 ...] [--pass forward|grad_input|grad_weight]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cupy_dwconv import _kernels, bench  # noqa: E402

# (TH, TW, MINB, NT); NT None = the host's strip-length rule.
TILE_VARIANTS = {
    "float32": [(4, 4, 3, None), (4, 4, 3, 1), (4, 4, 2, None), (4, 8, 2, None), (8, 4, 2, None), (2, 4, 3, None)],
    "float16": [(2, 8, 3, None), (2, 8, 2, None), (4, 8, 2, None), (1, 8, 3, None)],
}
TILE_VARIANTS["bfloat16"] = TILE_VARIANTS["float16"]
# conv_tile L2 prefetch distance (tiles ahead) with the default tile shape (3 measured
# slower everywhere in session 4: it spills).
PREFETCH_VARIANTS = [0, 1, 2]
SMEM_VARIANTS = [(7, 8), (4, 8), (8, 8), (2, 8), (4, 4), (7, 4), (8, 4), (1, 8), (1, 4)]
# conv_mma (WN, WR, STAGES, MINB); MINB None = the host's rule.
MMA_VARIANTS = [(8, 4, 3, None), (8, 4, 2, None), (8, 4, 4, None), (8, 2, 3, None), (8, 2, 4, None),
                (4, 4, 3, None), (8, 8, 2, None), (16, 2, 3, None), (8, 4, 3, 3)]
# conv_plane (output rows per thread, stages, planes per block, grid cap; None = the
# host's rule), on planes conv_plane takes (at most _kernels.PLANE_MAX_OUTPUTS outputs).
PLANE_VARIANTS = [(None, 1, None, None), (1, 1, None, None), (2, 1, None, None), (3, 1, None, None),
                  (4, 1, None, None), (None, 2, None, None), (None, 2, 32, None), (None, 2, 64, 264),
                  (None, 2, 32, 528), (None, 2, 96, None), (None, 1, 32, None), (3, 2, None, None),
                  (None, 2, 16, None), (None, 1, 8, None), (None, 1, 4, None), (1, 1, 8, None), (2, 1, 8, None),
                  (None, 1, 12, None), (None, 1, 24, None), (None, 1, 48, None), (None, 1, 16, None),
                  (1, 1, 5, None), (1, 1, 6, None), (1, 1, 7, None), (1, 1, 9, None), (1, 1, 10, None),
                  (1, 1, 11, None), (1, 1, 13, None), (1, 1, 4, None)]
# conv_rows (V columns per lane, PF rows ahead, MINB, RB rows per band; None = the
# host's rule), stride-1 problems.
ROWS_VARIANTS = [(v, pf, 2, None) for v in (8, 4, 2, 1) for pf in (1, 2, 3)] + [
    (None, None, 1, None), (None, None, 3, None), (None, None, 2, 8), (None, None, 2, 16), (None, None, 2, 32),
    (None, 3, 1, None)]
# conv_rows_async (rows staged in shared memory by cp.async): (bytes per lane, PF rows
# ahead, MINB, RB; None = the host's rule). Session 10: 4 blocks per SM always spilled
# and lost, 1 row ahead always lost.
ROWS_ASYNC_VARIANTS = [(16, pf, mb, None) for mb in (2, 3) for pf in (2, 3, 4, 6)] + [
    (16, 4, 2, 32), (16, 4, 2, 64), (16, 4, 3, 16), (8, 4, 2, None), (8, 4, 3, None), (8, 6, 2, None)]
# wgrad_plane (planes per block, batch items per step, chunks; None = the host's rule).
WPLANE_VARIANTS = [(None, None, None), (32, 4, 16), (32, 4, 8), (16, 8, 8), (64, 2, 16), (32, 2, 32), (16, 4, 16),
                   (32, 8, 4)]
# grad weight: wgrad_tile (TH, TW, chunks, MINB; None = the host's rule) and wgrad_mma (WR, BH, STAGES, MINB; BH None = the host's rule).
WGRAD_TILE_VARIANTS = [(4, 8, None, 1), (2, 8, None, 1), (4, 4, None, 1), (8, 8, None, 1), (4, 8, 2, 1), (2, 8, 2, 1),
                       (2, 8, 4, 1), (4, 8, 4, 1), (1, 8, 4, 1), (2, 8, 8, 1), (4, 4, None, 2), (2, 8, None, 2),
                       (2, 8, None, 3), (2, 4, None, 2), (2, 4, None, 3), (2, 4, 8, 2), (2, 4, 4, 2), (2, 4, 14, 2),
                       (4, 2, None, 2), (1, 8, None, 2), (1, 4, None, 3), (4, 4, 8, 1), (3, 4, None, 2)]
WMMA_VARIANTS = [(4, None, 2, None), (4, None, 3, None), (4, 16, 2, None), (4, 32, 2, None), (4, 64, 2, None),
                 (4, 16, 3, None), (4, 32, 3, None), (8, 16, 2, None), (8, 32, 2, None), (8, 64, 2, None),
                 (8, 32, 3, None), (2, 16, 2, 8), (2, 32, 2, 8), (4, None, 2, 4), (4, None, 2, 8), (8, None, 2, 3)]


# Fused backward, bwd_tile (TH, TW, MINB, PF, chunks; None = the host's rule), timed
# against the separate grad-input + grad-weight plans.
BWD_VARIANTS = [(None, None, None, None, None), (4, 8, 1, None, None), (4, 8, 2, None, None), (2, 8, 1, None, None),
                (2, 8, 2, None, None), (4, 4, 2, None, None), (2, 4, 2, None, None), (1, 8, 2, None, None),
                (2, 8, 3, None, None), (4, 8, 2, 0, None), (4, 8, 2, 1, None), (2, 8, 2, 0, None), (2, 8, 2, 1, None),
                (None, None, None, None, 1), (None, None, None, None, 2), (None, None, None, None, 3),
                (None, None, None, None, 4), (None, None, None, None, 8), (None, None, None, None, 16),
                (2, 4, 1, None, None), (4, 4, 1, None, None), (1, 8, 1, None, None), (2, 4, 3, None, None),
                (2, 4, 3, None, 2), (2, 4, 2, None, 1), (2, 4, 3, 0, None), (1, 4, 3, None, None), (2, 4, 2, 0, 3)]


# Fused backward, bwd_rows (bytes per lane, PF, MINB, RB, chunks; None = the host's rule).
BWD_ROWS_VARIANTS = [(8, 4, 2, None, None), (8, 2, 2, None, None), (8, 6, 2, None, None), (8, 4, 1, None, None),
                     (4, 4, 2, None, None), (16, 4, 2, None, None), (16, 4, 1, None, None), (8, 4, 2, None, 1),
                     (8, 4, 2, None, 4), (8, 4, 2, 32, None), (8, 3, 3, None, None)]

# Fused backward of small planes, bwd_plane (channels per block, batch items per step,
# chunks, MINB, stages; None = the host's rule).
BWD_PLANE_VARIANTS = [(None, None, None, None, None), (8, 16, None, None, None), (8, 8, None, None, None),
                      (16, 4, None, None, None), (32, 4, None, None, None), (16, 8, None, 2, None),
                      (8, 16, None, 2, None), (16, 8, 16, None, None), (8, 16, 16, None, None), (8, 8, 16, None, None),
                      (16, 4, 8, None, 2), (8, 8, 4, None, 2), (8, 4, 8, None, 2), (16, 8, 4, None, 2)]

# Fused 16-bit backward on tensor cores, bwd_mma (stages, chunks, MINB; None = the host's rule).
BWD_MMA_VARIANTS = [(None, None, None), (2, None, 3), (2, 8, 4), (2, 16, 4), (2, 22, 4), (3, 8, 2), (3, 8, 3),
                    (4, 8, 2)]


def _small_width_variants(p, dtype):
    # Narrow planes: a tile as wide as the plane, several heights.
    if p.OW > 16:
        return []
    out = []
    for tw in sorted({p.OW, min(p.OW, 8), 4}):
        for th in sorted({1, 2, 4, min(p.OH, 7)}):
            out.append((th, tw, 2, None))
    return out


def _compile_one(item):
    src, expr = item
    import cupy

    try:
        cupy.RawModule(code=_kernels.source(src), options=_kernels.NVRTC_OPTIONS, name_expressions=(expr,)).get_function(expr)
        return None
    except Exception as e:  # reported again, with context, when the variant runs
        return f"{expr}: {e}"[:300]


def prewarm(items, workers):
    """Compile specializations in parallel processes: fills CuPy's disk cache so the
    timed process only loads binaries."""
    import multiprocessing

    items = sorted(set(items))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        errors = [e for e in pool.map(_compile_one, items, chunksize=1) if e]
    return len(items), errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--suite", default=None)
    ap.add_argument("--cases", nargs="*", default=None)
    ap.add_argument("--dtypes", nargs="*", default=None)
    ap.add_argument("--pass", dest="which", default="forward", choices=["forward", "grad_input", "grad_weight", "backward"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--json", default=None)
    ap.add_argument("--families", nargs="*", default=None,
                    help="forward / grad input: only these families' variants (plus the default plan and the "
                         "dispatcher without conv_rows); rowsa = conv_rows_async")
    args = ap.parse_args(argv)

    import time

    import cupy

    cases, half = bench.load_suite(args.suite or bench.default_suite_path())
    jobs = []
    for case in cases:
        if args.cases and case.name not in args.cases:
            continue
        for dtype in bench.suite_dtypes(case, half):
            if not args.dtypes or dtype in args.dtypes:
                jobs.append((case.name, case.params(), dtype))
    t0 = time.perf_counter()
    if args.which == "grad_weight":
        items = [(l.src, l.expr) for _, p, dtype in jobs for _, (l, _c, r) in wgrad_variants(p, dtype) for l in (l, r)]
    elif args.which == "backward":
        items = [(l.src, l.expr) for _, p, dtype in jobs for _, ls in backward_variants(p, dtype) for l in ls]
    else:
        items = [(l.src, l.expr) for _, p, dtype in jobs
                 for _, l in variant_launches(p, dtype, args.which, args.families)]
    n, errors = prewarm(items, args.workers)
    print(f"compiled {n} specializations in {time.perf_counter() - t0:.1f} s with {args.workers} processes", flush=True)
    for e in errors:
        print("compile error:", e, flush=True)

    ceilings = bench.measure_ceilings()
    print("ceilings", bench.ceilings_line(ceilings), flush=True)
    dev = cupy.cuda.Device().id
    l2 = cupy.cuda.runtime.getDeviceProperties(dev)["l2CacheSize"]
    rows = []
    for name, p, dtype in jobs:
        if args.which == "grad_weight":
            rows += sweep_wgrad_case(name, p, dtype, dev, args, ceilings, l2)
        elif args.which == "backward":
            rows += sweep_backward_case(name, p, dtype, dev, args, ceilings, l2)
        else:
            rows += sweep_case(name, p, dtype, dev, args, ceilings, l2)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def variant_launches(p, dtype, which, families=None):
    """[(label, Launch)] for the default plan and every variant that plans (only the
    listed families' variants when `families` is given)."""
    pr = _kernels.forward_problem(p) if which == "forward" else _kernels.grad_input_problem(p)
    default = _kernels.plan_forward(p, dtype, 0) if which == "forward" else _kernels.plan_grad_input(p, dtype, 0)
    out = [(("default", None), default), (("auto-norows", {}), None)]
    if (p.SH, p.SW) == (1, 1):
        for v, pf, mb, rb in ROWS_VARIANTS:
            if v is None or v <= 16 // _kernels.ITEMSIZE[dtype]:
                out.append((("rows", dict(v=v, pf=pf, minb=mb, rb=rb)), None))
        for vb, pf, mb, rb in ROWS_ASYNC_VARIANTS:
            out.append((("rowsa", dict(v=vb // _kernels.ITEMSIZE[dtype], pf=pf, minb=mb, rb=rb, staged=True)), None))
    if pr.KH * pr.KW <= _kernels.TILE_MAX_TAPS:
        for th, tw, mb, nt in TILE_VARIANTS[dtype] + _small_width_variants(p, dtype):
            if which == "grad_input" and (th % p.SH or tw % p.SW):
                continue
            out.append((("tile", dict(th=th, tw=tw, minb=mb, nt=nt)), None))
        for pf in PREFETCH_VARIANTS:
            out.append((("tile", dict(pf=pf)), None))
    if dtype in _kernels.MMA_DTYPES:
        for wn, wr, st, mb in MMA_VARIANTS:
            out.append((("mma", dict(wn=wn, wr=wr, stages=st, minb=mb)), None))
    if pr.OH * pr.OW <= _kernels.PLANE_MAX_OUTPUTS:
        for rows, stages, planes, blocks in PLANE_VARIANTS:
            out.append((("plane", dict(rows=rows, stages=stages, planes=planes, blocks=blocks)), None))
    if pr.KH * pr.KW >= 7 or p.OH * p.OW <= 400:
        for th, tw in SMEM_VARIANTS:
            out.append((("smem", dict(th=th, tw=tw)), None))
    if families is not None:
        out = [(label, launch) for label, launch in out if label[0] in ("default", "auto-norows", *families)]
    res, seen = [], set()
    for (kind, kw), launch in out:
        if launch is None:
            launch = _kernels.plan_conv(pr, dtype, 0, force=("rows" if kind == "rowsa" else kind, kw))
        if launch is None:
            continue
        key = (launch.expr, launch.grid, launch.block, launch.shared_mem)
        if key in seen:
            continue
        seen.add(key)
        res.append(((kind, kw), launch))
    return res


# wgrad_smem: (batch chunks per channel, row groups per block); None keeps the default.
WSMEM_VARIANTS = [(None, 4), (None, 16), (2, None), (3, None), (4, None), (5, None), (8, None), (12, None)]
# wgrad_smem (TKH, TKW, U): taps per thread and grad_output columns per step.
WSMEM_TILES = [(8, 4, 16), (8, 8, 8), (16, 4, 8), (4, 4, 16), (8, 8, 16), (4, 8, 8), (4, 8, 16), (8, 8, 4)]


def wgrad_variants(p, dtype):
    """[(label, (stage-1 launch, chunks, stage-2 launch))] for the default plan and the
    grad-weight variants that plan."""
    out = [(("default", None), _kernels.plan_wgrad(p, dtype, 0, 0))]
    for th, tw, chunks, minb in WGRAD_TILE_VARIANTS:
        out.append((("tile", dict(th=th, tw=tw, chunks=chunks, minb=minb)), None))
    for pf in (0, 1):
        out.append((("tile", dict(pf=pf)), None))
    if dtype in _kernels.MMA_DTYPES:
        for wr, bh, st, mb in WMMA_VARIANTS:
            out.append((("mma", dict(wr=wr, bh=bh, stages=st, minb=mb)), None))
    out.append((("smem", {}), None))
    for chunks, groups in WSMEM_VARIANTS:
        out.append((("smem", dict(chunks=chunks, groups=groups)), None))
    for tile in WSMEM_TILES:
        out.append((("smem", dict(tile=tile)), None))
    for planes, items, chunks in WPLANE_VARIANTS:
        out.append((("plane", dict(planes=planes, items=items, chunks=chunks)), None))
    res, seen = [], set()
    for (kind, kw), plan in out:
        if plan is None:
            plan = _kernels.plan_wgrad(p, dtype, 0, 0, force=(kind, kw))
            if kind not in plan[0].expr:
                continue  # the family declined and the generic kernel stood in
        key = (plan[0].expr, plan[0].grid, plan[0].block, plan[0].shared_mem)
        if key in seen:
            continue
        seen.add(key)
        res.append(((kind, kw), plan))
    return res


def _print_best(name, dtype, rows):
    """One line naming the fastest correct variant of a case."""
    best = min((r for r in rows if r.get("ok")), key=lambda r: r["ms"], default=None)
    if best:
        print(f"{name:16s} {dtype:9s} BEST {best['kind']} {best['params']} {best['ms']:.4f} ms eff {100 * best['eff']:.1f}%",
              flush=True)


def backward_variants(p, dtype):
    """[(label, launches)] for the full backward: the separate plans (grad input, then
    both grad-weight stages) and each fused variant (bwd_tile, bwd_rows, bwd_plane, bwd_mma) that plans (stage 1, stage 2)."""
    gi = _kernels.plan_grad_input(p, dtype, 0)
    s1, _chunks, s2 = _kernels.plan_wgrad(p, dtype, 0, 0)
    out = [(("separate", None), (gi, s1, s2))]
    seen = set()
    for th, tw, minb, pf, chunks in BWD_VARIANTS:
        kw = dict(th=th, tw=tw, minb=minb, pf=pf, chunks=chunks)
        plan = _kernels.plan_backward(p, dtype, 0, 0, force=kw)
        if plan is None:
            continue
        key = (plan[0].expr, plan[0].grid)
        if key in seen:
            continue
        seen.add(key)
        out.append((("fused", {k: v for k, v in kw.items() if v is not None}), (plan[0], plan[2])))

    def add(family, kw):
        # Plans that differ only in fields the host leaves at their defaults run once.
        plan = _kernels.plan_backward(p, dtype, 0, 0, force=dict(kw, family=family))
        if plan is None:
            return
        key = (plan[0].expr, plan[0].grid, tuple(plan[0].scalars[0].tolist()))  # fields, not padding bytes
        if key not in seen:
            seen.add(key)
            out.append(((family, {k: v for k, v in kw.items() if v is not None}), (plan[0], plan[2])))

    for vb, pf, minb, rb, chunks in BWD_ROWS_VARIANTS:
        add("rows", dict(v=vb // _kernels.ITEMSIZE[dtype] or None, pf=pf, minb=minb, rb=rb, chunks=chunks))
    for planes, items, chunks, minb, stages in BWD_PLANE_VARIANTS:
        add("plane", dict(planes=planes, items=items, chunks=chunks, minb=minb, stages=stages))
    for stages, chunks, minb in BWD_MMA_VARIANTS:
        add("mma", dict(stages=stages, chunks=chunks, minb=minb))
    return out


def sweep_backward_case(name, p, dtype, dev, args, ceilings, l2):
    """Times the three gradients together: the separate plans against each fused
    variant; checks each variant's grad_x, grad_weight and grad_bias against the
    separate plans' (themselves checked by the test suite)."""
    import cupy

    npdt = bench._np_dtype(dtype)
    itemsize = numpy.dtype(npdt).itemsize
    set_bytes = (2 * numpy.prod(p.x_shape) + numpy.prod(p.out_shape)) * itemsize
    n_sets = bench.rotation_sets(set_bytes, l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    xs = [bench._random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(n_sets)]
    gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(n_sets)]
    gxs = [cupy.empty(p.x_shape, dtype=npdt) for _ in range(n_sets)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    gw = cupy.empty(p.weight_shape, dtype=npdt)
    gb = cupy.empty((p.CM,), dtype=npdt)
    null = numpy.uint64(0)
    counters = cupy.zeros((p.CM,), dtype=cupy.uint32)
    rows, ref = [], None
    for (kind, kw), launches in backward_variants(p, dtype):
        try:
            kerns = [launch.kernel(dev) for launch in launches]
        except Exception as e:
            print(f"{name:16s} {dtype:9s} {kind} {kw}: compile error {str(e)[:120]}", flush=True)
            continue
        chunks = int(launches[-2].scalars[0]["n_chunks"]) if "n_chunks" in launches[-2].scalars[0].dtype.names else 1
        partial = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), dtype=_kernels.ACC_DTYPE[dtype])

        if kind == "separate":
            gi, s1, s2 = launches

            def run(i, gi=gi, s1=s1, s2=s2, partial=partial):
                gi(dev, (gos[i], w, null, gxs[i]))
                s1(dev, (xs[i], gos[i], partial))
                s2(dev, (partial, gw, gb))
        else:
            s1, s2 = launches

            def run(i, s1=s1, partial=partial):
                # The kernel finishes grad_weight and grad_bias itself, as the library runs it.
                s1(dev, (xs[i], gos[i], w, gxs[i], partial, counters, gw, gb))

        for a in (gxs[0], gw, gb):
            a.fill(numpy.nan)
        run(0)
        got = [a.astype(cupy.float32).ravel() for a in (gxs[0], gw, gb)]
        if ref is None:
            ref = got
        errs = [float(cupy.linalg.norm(g - r)) / max(float(cupy.linalg.norm(r)), 1e-30) for g, r in zip(got, ref)]
        ok = all(bool(cupy.isfinite(g).all()) for g in got) and max(errs) < 1e-2
        ms = bench.time_events(run, n_sets, args.repeats, 5)
        floor = bench.floor_ms(*bench.pass_cost(p, dtype, "backward"), ceilings, dtype)
        regs = "/".join(str(k.num_regs) for k in kerns)
        local = max(k.local_size_bytes for k in kerns)
        rows.append(dict(case=name, dtype=dtype, kind=kind, variant=" + ".join(l.expr for l in launches), params=kw,
                         regs=regs, local=local, ms=ms, eff=floor / ms, ok=ok, err=max(errs)))
        print(f"{name:16s} {dtype:9s} {kind:8s} {str(kw):48s} regs {regs:12s} local {local:4d} {ms:8.4f} ms "
              f"eff {100 * floor / ms:5.1f}% {'ok' if ok else 'WRONG %.1e' % max(errs)}", flush=True)
    _print_best(name, dtype, rows)
    return rows


def sweep_wgrad_case(name, p, dtype, dev, args, ceilings, l2):
    """Times stage 1 + stage 2 of each grad-weight variant; checks grad weight and bias
    against the default plan's."""
    import cupy

    import cupy_dwconv

    npdt = bench._np_dtype(dtype)
    itemsize = numpy.dtype(npdt).itemsize
    set_bytes = (numpy.prod(p.x_shape) + numpy.prod(p.out_shape)) * itemsize
    n_sets = bench.rotation_sets(set_bytes, l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    xs = [bench._random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(n_sets)]
    gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(n_sets)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    _, rw, rb = cupy_dwconv.depthwise_conv2d_backward(gos[0], xs[0], w, stride=(p.SH, p.SW), padding=p.padding,
                                                      dilation=(p.DH, p.DW), needs=(False, True, True))
    ref = cupy.concatenate([rw.ravel().astype(cupy.float32), rb.astype(cupy.float32)])
    ref_norm = float(cupy.linalg.norm(ref))
    rows = []
    for (kind, kw), (s1, chunks, s2) in wgrad_variants(p, dtype):
        try:
            kern = s1.kernel(dev)
            s2.kernel(dev)
        except Exception as e:
            rows.append(dict(case=name, dtype=dtype, variant=f"{kind} {kw}", error=str(e)[:200]))
            print(f"{name:16s} {dtype:9s} {kind} {kw}: compile error {str(e)[:120]}", flush=True)
            continue
        partial = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), dtype=_kernels.ACC_DTYPE[dtype])
        gw = cupy.empty(p.weight_shape, dtype=npdt)
        gb = cupy.empty((p.CM,), dtype=npdt)

        def run(i, s1=s1, s2=s2, partial=partial, gw=gw, gb=gb):
            s1(dev, (xs[i], gos[i], partial))
            s2(dev, (partial, gw, gb))

        gw.fill(numpy.nan)
        gb.fill(numpy.nan)
        run(0)
        got = cupy.concatenate([gw.ravel().astype(cupy.float32), gb.astype(cupy.float32)])
        err = float(cupy.linalg.norm(got - ref)) / max(ref_norm, 1e-30)
        ok = bool(cupy.isfinite(got).all()) and err < 1e-2
        ms = bench.time_events(run, n_sets, args.repeats, 5)
        floor = bench.floor_ms(*bench.pass_cost(p, dtype, "grad_weight"), ceilings, dtype)
        row = dict(case=name, dtype=dtype, kind=kind, variant=s1.expr, params=kw, grid=s1.grid, block=s1.block,
                   smem=s1.shared_mem, regs=kern.num_regs, local=kern.local_size_bytes, ms=ms, eff=floor / ms, ok=ok,
                   err=err)
        rows.append(row)
        print(f"{name:16s} {dtype:9s} {kind:7s} {str(kw):48s} regs {kern.num_regs:3d} local {kern.local_size_bytes:4d} "
              f"grid {str(s1.grid):16s} {ms:8.4f} ms eff {100 * floor / ms:5.1f}% {'ok' if ok else 'WRONG %.1e' % err}",
              flush=True)
    _print_best(name, dtype, rows)
    return rows


def sweep_case(name, p, dtype, dev, args, ceilings, l2):
    import cupy

    import cupy_dwconv

    npdt = bench._np_dtype(dtype)
    if args.which == "forward":
        in_shape, out_shape = p.x_shape, p.out_shape
    else:
        in_shape, out_shape = p.out_shape, p.x_shape
    itemsize = numpy.dtype(npdt).itemsize
    set_bytes = (numpy.prod(in_shape) + numpy.prod(out_shape)) * itemsize
    n_sets = bench.rotation_sets(set_bytes, l2, 6 * 10**9)
    rs = cupy.random.RandomState(0)
    xs = [bench._random_gpu(cupy, rs, in_shape, dtype) for _ in range(n_sets)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    b = bench._random_gpu(cupy, rs, (p.CM,), dtype) if args.which == "forward" else None
    outs = [cupy.empty(out_shape, dtype=npdt) for _ in range(n_sets)]
    null = numpy.uint64(0)

    # Default plan's output is the comparison point for every variant.
    if args.which == "forward":
        ref = cupy_dwconv.depthwise_conv2d(xs[0], w, b, stride=(p.SH, p.SW), padding=p.padding,
                                           dilation=(p.DH, p.DW)).astype(cupy.float32)
    else:
        ref = cupy_dwconv.depthwise_conv2d_backward(xs[0], cupy.zeros(p.x_shape, npdt), w, stride=(p.SH, p.SW), padding=p.padding, dilation=(p.DH, p.DW), needs=(True, False, False))[0].astype(cupy.float32)
    ref_norm = float(cupy.linalg.norm(ref))

    rows = []
    for (kind, kw), launch in variant_launches(p, dtype, args.which, args.families):
        try:
            kern = launch.kernel(dev)
        except Exception as e:  # a variant the compiler rejects is reported, not fatal
            rows.append(dict(case=name, dtype=dtype, variant=f"{kind} {kw}", error=str(e)[:200]))
            print(f"{name:16s} {dtype:9s} {kind} {kw}: compile error {str(e)[:120]}", flush=True)
            continue

        def run(i, launch=launch):
            launch(dev, (xs[i], w, null if b is None else b, outs[i]))

        outs[0].fill(numpy.nan)
        run(0)
        err = float(cupy.linalg.norm(outs[0].astype(cupy.float32) - ref)) / max(ref_norm, 1e-30)
        ok = bool(cupy.isfinite(outs[0]).all()) and err < 1e-2
        ms = bench.time_events(run, n_sets, args.repeats, 5)
        floor = bench.floor_ms(*bench.pass_cost(p, dtype, args.which), ceilings, dtype)
        row = dict(case=name, dtype=dtype, kind=kind, variant=launch.expr, params=kw, grid=launch.grid, block=launch.block,
                   smem=launch.shared_mem, regs=kern.num_regs, local=kern.local_size_bytes, ms=ms,
                   eff=floor / ms, ok=ok, err=err)
        rows.append(row)
        print(f"{name:16s} {dtype:9s} {kind:7s} {str(kw):40s} regs {kern.num_regs:3d} local {kern.local_size_bytes:4d} "
              f"{ms:8.4f} ms eff {100 * floor / ms:5.1f}% {'ok' if ok else 'WRONG %.1e' % err}", flush=True)
    _print_best(name, dtype, rows)
    return rows


if __name__ == "__main__":
    sys.exit(main())
