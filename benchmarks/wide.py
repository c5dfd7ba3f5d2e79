"""Breadth check: the dispatcher on shapes beyond the benchmark suite.

The suite tunes a dozen shapes; users bring others. For every case of a suite-format
file (default benchmarks/wide.json: other stages of the same networks, batch 1, and
irregular shapes), this times, in one process and with the benchmark's method (CUDA
events, median after warm-up, inputs rotated past L2):

- cupy_dwconv's forward and fused backward (all three gradients) through the public API,
  each first checked (outputs allocated as NaN) against PyTorch in float64 (or the NumPy
  reference) with the benchmark's per-dtype tolerance;
- the general path on the same problem (conv_generic forward; conv_generic on the
  grad-input problem plus wgrad_generic and its reduction for the backward), which every
  specialized plan must beat;
- PyTorch: conv2d NCHW and channels_last (cuDNN autotuned) forward and
  aten.convolution_backward with all three outputs (symmetric padding only: aten takes
  no other).

It prints one row per (case, dtype, pass) with the ratios, flags every row where
cupy_dwconv is slower than the general path ("GENERIC") or than the best PyTorch time
("TORCH"), and writes JSON with --json. Exit code 1 if a result is wrong.

    python benchmarks/wide.py [--suite FILE] [--cases NAME ...] [--dtypes DTYPE ...] [--json FILE] [--commit REV]

Results of a run on the H200: benchmarks/results/wide_h200.json (and the printed table
beside it, wide_h200.txt).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cupy_dwconv import _api, _kernels, bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GENERIC_REPEATS = 10  # the general path is slow on large kernels; its median needs fewer calls


def dtypes_of(case, data, half):
    out = ["float32"]
    if case.name in half:
        out += ["float16", "bfloat16"]
    if case.name in data.get("float64", []):
        out.append("float64")
    return out


def generic_forward(p, dtype):
    """The general path's forward launch (conv_generic), whatever the dispatcher picks."""
    return _kernels.generic_launch(_kernels.forward_problem(p), dtype)


def generic_backward(p, dtype):
    """(grad-input launch, wgrad stage 1, chunks, stage 2) of the general path."""
    gi = _kernels.generic_launch(_kernels.grad_input_problem(p), dtype)
    s1, chunks = _kernels.wgrad_generic_launch(p, dtype)
    return gi, s1, chunks, _kernels.reduce_launch(p, dtype, chunks)


@contextlib.contextmanager
def nan_outputs(cupy):
    """Within the block every output buffer the library allocates starts as NaN, so an
    element a kernel fails to write fails the check (a pooled buffer could otherwise hold
    an earlier call's right answer)."""
    plain = _api._new_output
    _api._new_output = lambda cp, shape, dtype: cp.full(shape, numpy.nan, dtype=dtype)
    try:
        yield
    finally:
        _api._new_output = plain


def run_case(cupy, torch, case, dtype, ctx, rows, log):
    p = case.params()
    size = _kernels.ITEMSIZE[dtype]
    x_bytes = p.N * p.C * p.H * p.W * size
    go_bytes = p.N * p.CM * p.OH * p.OW * size
    K = bench.rotation_sets(x_bytes + go_bytes, ctx["l2"], ctx["budget"])
    rs = cupy.random.RandomState(4321)
    xs = [bench._random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(K)]
    gos = [bench._random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(K)]
    w = bench._random_gpu(cupy, rs, p.weight_shape, dtype)
    b = bench._random_gpu(cupy, rs, (p.CM,), dtype) if case.bias else None
    notes = []
    ref = bench.Reference(p, xs[0], w, b, gos[0], torch, notes.append)
    kw = dict(stride=(p.SH, p.SW), padding=p.padding, dilation=(p.DH, p.DW))
    dev = cupy.cuda.runtime.getDevice()
    null = _kernels.NULL
    reps, warm = ctx["repeats"], ctx["warmup"]
    symmetric = p.PT == p.PB and p.PL == p.PR
    tol = bench.REL_TOL[dtype]

    def anchor(label, fn):
        try:
            return fn()
        except Exception as e:
            notes.append(f"{label} failed ({bench._exc_text(e, 120)})")
            return None

    for pass_name in ("forward", "backward"):
        if pass_name == "forward":
            def ours(k):
                return _api.depthwise_conv2d(xs[k], w, b, **kw)

            launch = generic_forward(p, dtype)
            outs = [cupy.empty(p.out_shape, xs[0].dtype) for _ in range(K)]

            def generic(k):
                launch(dev, (xs[k], w, null if b is None else b, outs[k]))
        else:
            def ours(k):
                return _api.depthwise_conv2d_backward(gos[k], xs[k], w, **kw)

            gi, s1, chunks, s2 = generic_backward(p, dtype)
            gx = cupy.empty(p.x_shape, xs[0].dtype)
            part = cupy.empty((p.CM, chunks, p.KH * p.KW + 1), _kernels.ACC_DTYPE[dtype])
            gw = cupy.empty(p.weight_shape, xs[0].dtype)
            gb = cupy.empty((p.CM,), xs[0].dtype)

            def generic(k):
                gi(dev, (gos[k], w, null, gx))
                s1(dev, (xs[k], gos[k], part))
                s2(dev, (part, gw, gb))
        with nan_outputs(cupy):
            res = ours(0)
        cupy.cuda.get_current_stream().synchronize()
        err = ref.error(pass_name, res)
        del res
        ms = bench.time_events(ours, K, reps, warm)
        for a in ([outs[0]] if pass_name == "forward" else [gx, gw, gb]):
            a.fill(numpy.nan)
        generic(0)
        gerr = ref.error(pass_name, outs[0] if pass_name == "forward" else (gx, gw, gb))
        gms = bench.time_events(generic, K, GENERIC_REPEATS, 2)
        anchors = {}
        if torch is not None and symmetric:
            anchors = bench._torch_anchors(torch, cupy, p, pass_name, xs, gos, w, b, K, reps, warm, anchor)
        torch_ms = [v for v in anchors.values() if v is not None]
        best = min(torch_ms) if torch_ms else None
        kernel = anchor("kernel label", lambda: bench.kernel_label(p, dtype, pass_name, xs[0].data.ptr)[0])
        flags = []
        if err is None or err >= tol or gerr is None or gerr >= tol:
            flags.append("WRONG")
        if ms > gms:
            flags.append("GENERIC")
        if best is not None and ms > best:
            flags.append("TORCH")
        row = {"case": case.name, "dtype": dtype, "pass": pass_name, "kernel": kernel, "ms": ms,
               "generic_ms": gms, "torch_best_ms": best, "rel_error": err, "generic_rel_error": gerr,
               "flags": flags, "notes": notes[:], **anchors}
        rows.append(row)
        log(row)
        notes.clear()


def fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}g}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default=os.path.join(HERE, "wide.json"))
    ap.add_argument("--cases", nargs="+")
    ap.add_argument("--dtypes", nargs="+", help="run only these dtypes (of each case's)")
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--commit", help="commit to record (default: $CUPY_DWCONV_COMMIT, else git rev-parse HEAD)")
    args = ap.parse_args(argv)

    import cupy

    with open(args.suite) as f:
        data = json.load(f)
    cases, half = bench.parse_suite(data, source=args.suite)
    if args.cases:
        cases = [c for c in cases if c.name in args.cases]
    torch = bench.import_torch([])
    if torch is not None:
        torch.backends.cudnn.benchmark = True
    dev = cupy.cuda.Device()
    ctx = {"l2": dev.attributes["L2CacheSize"], "budget": 4 * 10**9, "repeats": args.repeats, "warmup": args.warmup}
    rows = []
    head = (f"{'case':18s} {'dtype':9s} {'pass':8s} {'kernel':36s} {'ms':>8s} {'generic':>8s} {'torch':>8s} "
            f"{'gen/us':>7s} {'torch/us':>8s}  flags")
    print(head, flush=True)

    def log(r):
        ratio_g = r["generic_ms"] / r["ms"]
        ratio_t = "-" if r["torch_best_ms"] is None else f"{r['torch_best_ms'] / r['ms']:.2f}x"
        print(f"{r['case']:18s} {r['dtype']:9s} {r['pass']:8s} {str(r['kernel'])[:36]:36s} {fmt(r['ms']):>8s} "
              f"{fmt(r['generic_ms']):>8s} {fmt(r['torch_best_ms']):>8s} {ratio_g:6.2f}x {ratio_t:>8s}  "
              f"{' '.join(r['flags'])}" + (f"  [{'; '.join(r['notes'])}]" if r["notes"] else ""), flush=True)

    for case in cases:
        for dtype in dtypes_of(case, data, half):
            if args.dtypes and dtype not in args.dtypes:
                continue
            try:
                run_case(cupy, torch, case, dtype, ctx, rows, log)
            except Exception as e:
                rows.append({"case": case.name, "dtype": dtype, "error": bench._exc_text(e), "flags": ["ERROR"]})
                print(f"{case.name:18s} {dtype:9s} ERROR {bench._exc_text(e)}", flush=True)
            cupy.get_default_memory_pool().free_all_blocks()
            if torch is not None:
                torch.cuda.empty_cache()
    flagged = [r for r in rows if r["flags"]]
    print(f"\n{len(rows)} rows, {len(flagged)} flagged")
    for r in flagged:
        print(f"  {r['case']} {r['dtype']} {r.get('pass', '')}: {' '.join(r['flags'])}")
    if args.json:
        with open(args.json, "w") as f:
            props = cupy.cuda.runtime.getDeviceProperties(dev.id)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            json.dump({"gpu": name, "commit": bench.resolve_commit(args.commit), "suite": os.path.basename(args.suite),
                       "rows": rows}, f, indent=1)
    return 1 if any(("WRONG" in r["flags"] or "ERROR" in r["flags"]) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
