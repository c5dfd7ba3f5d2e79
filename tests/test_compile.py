"""Every kernel specialization the dispatcher can pick compiles, without a GPU.

The specializations (name expressions) come from `_kernels.expressions_for` for every
case of benchmarks/suite.json in every dtype, plus a grid of extra problems that reaches
the other paths (asymmetric kernels, strides, dilations, channel multipliers, odd and
aligned widths, 'same' and asymmetric padding, the generic fall-backs). Each source's
name expressions are compiled for each architecture in NVRTC programs of up to CHUNK
expressions; the independent programs run in parallel, one worker process per core.

The PTX of a few plans is also read: the row sweeps' output stores must stay whole
vectors (test_row_sweeps_store_whole_vectors), and the copies carry their L2 prefetch
(test_copies_prefetch_their_l2_block).

NVRTC comes from the `test` extra (cuda-bindings + nvidia-cuda-nvrtc). Where it is
missing the compile test is skipped, unless CUPY_DWCONV_REQUIRE_NVRTC=1 (set by CI),
which turns the skip into a failure.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import json
import multiprocessing
import os
import pathlib
import re

import pytest

from conftest import DTYPES
from cupy_dwconv import _kernels, _params
import nvrtc_compile

ARCHS = (80, 90)
REPORT_ARCH = 90  # the architecture whose ptxas reports the local-memory test reads
_REPORTS = {}    # {(src, expr): local bytes} of the sm_90 programs, from the compile test
SUITE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "suite.json"
REQUIRE_NVRTC = os.environ.get("CUPY_DWCONV_REQUIRE_NVRTC") == "1"

# Every kernel family the dispatcher has, as named by `_family`.
FAMILIES = (
    "conv_tile mode 0",
    "conv_tile mode 1",
    "conv_smem flip=false",
    "conv_smem flip=true",
    "conv_mma flip=false",
    "conv_mma flip=true",
    "conv_stack flip=false",
    "conv_stack flip=true",
    "conv_mma_rows flip=false",
    "conv_mma_rows flip=true",
    "conv_plane flip=false",
    "conv_plane flip=true",
    "conv_batch flip=false",
    "conv_batch flip=true",
    "conv_lines flip=false",
    "conv_lines flip=true",
    "conv_rows flip=false",
    "conv_rows flip=true",
    "conv_rows_async flip=false",
    "conv_rows_async flip=true",
    "conv_rows_whole flip=false",
    "conv_rows_whole flip=true",
    "conv_generic mode 0",
    "conv_generic mode 1",
    "wgrad_tile",
    "wgrad_smem",
    "wgrad_lines",
    "wgrad_mma",
    "wgrad_plane",
    "wgrad_generic",
    "wgrad_reduce",
    "bwd_tile",
    "bwd_rows",
    "bwd_plane",
    "bwd_batch",
    "bwd_mma",
    "wgrad_stack",
)
# Families that exist for some dtypes only (tensor cores take 16-bit inputs).
FAMILY_DTYPES = {f"{f} flip={b}": ("float16", "bfloat16") for f in ("conv_mma", "conv_stack", "conv_mma_rows")
                 for b in ("false", "true")}
FAMILY_DTYPES["wgrad_mma"] = ("float16", "bfloat16")
FAMILY_DTYPES["bwd_mma"] = ("float16", "bfloat16")
# The dispatcher sends float32 and float64 small planes to bwd_batch, and 16-bit ones
# under kernels past 64 taps (the others keep bwd_plane and bwd_mma).
FAMILY_DTYPES["bwd_batch"] = DTYPES
FAMILY_DTYPES["wgrad_stack"] = ("float16", "bfloat16")
# conv_lines reads 4- and 8-byte types (16-bit large kernels go to the tensor cores).
FAMILY_DTYPES.update({f"conv_lines flip={b}": ("float32", "float64") for b in ("false", "true")})
# The dispatcher sends only 16-bit problems to conv_rows, and no float64 problem to
# conv_rows_async (those plans exist for the forced GPU tests and the sweep).
FAMILY_DTYPES.update({f"conv_rows flip={b}": ("float16", "bfloat16") for b in ("false", "true")})
FAMILY_DTYPES.update({f"conv_rows_async flip={b}": ("float32", "float16", "bfloat16") for b in ("false", "true")})
FAMILY_DTYPES["bwd_rows"] = ("float32", "float16", "bfloat16")
# conv_rows_whole: float32 kernels of 26 to 49 taps whose row its lanes fill exactly.
FAMILY_DTYPES.update({f"conv_rows_whole flip={b}": ("float32",) for b in ("false", "true")})
_DTYPE_OF_CXX = {cxx: name for name, cxx in _kernels.CXX_TYPE.items()}


def suite_problems():
    """(ConvParams, dtype) for every suite case in every dtype (bias on, as the suite)."""
    cases = json.loads(SUITE.read_text())["cases"]
    out = []
    for c in cases:
        p = _params.conv_params(
            (c["N"], c["C"], c["H"], c["W"]), (c["C"], 1, c["KH"], c["KW"]), (c["C"],),
            c["stride"], c["padding"], c["dilation"],
        )
        out += [(p, dtype) for dtype in DTYPES]
    return out


KERNELS = ((1, 1), (1, 3), (3, 1), (2, 2), (3, 3), (5, 5), (7, 7), (3, 7), (9, 9), (13, 13), (31, 31))
# (stride, dilation, multiplier, width, padding) variants; every kernel runs several of
# them, rotated so that each kernel meets different dtypes and every variant every dtype.
# The full cross product compiles too slowly for CI (thousands of specializations).
VARIANTS = (
    (1, 1, 1, 32, "same"),
    (2, 1, 3, 17, 0),
    (3, 2, 1, 32, ((1, 0), (2, 1))),
    (1, 2, 3, 17, ((1, 0), (2, 1))),
    ((1, 2), 1, 1, 17, 1),
    ((3, 1), 2, 3, 32, 0),
)
VARIANTS_PER_KERNEL = 3


def grid_problems():
    out = []
    for i, (kh, kw) in enumerate(KERNELS):
        for j in range(VARIANTS_PER_KERNEL):
            stride, dilation, m, width, padding = VARIANTS[(i + 2 * j) % len(VARIANTS)]
            dtype = DTYPES[(i + j) % len(DTYPES)]
            # Height and width large enough for the dilated kernel, keeping the width's
            # parity and alignment class (17: odd, 32: a multiple of every vector width).
            eff_h, eff_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
            h = max(13, eff_h + 2)
            w = width if width >= eff_w + 2 else width + 32 * -(-(eff_w + 2 - width) // 32)
            p = _params.conv_params((2, 3, h, w), (3 * m, 1, kh, kw), None, stride, padding, dilation)
            out.append((p, dtype))
    # Generic fall-backs in every dtype: a 31x31 kernel with stride 3 and dilation 2 whose
    # shared-memory tile exceeds the budget (conv_generic mode 0 forward, mode 1 grad input,
    # wgrad_generic), and a 9x9 kernel at stride 2 (81 taps: no register tile).
    for dtype in DTYPES:
        out.append((_params.conv_params((1, 2, 200, 260), (2, 1, 31, 31), None, 3, 0, 2), dtype))
        out.append((_params.conv_params((2, 4, 21, 17), (4, 1, 9, 9), None, 2, 4, 1), dtype))
        # Small odd planes (conv_plane forward and rotated grad input, wgrad_plane): 7x7
        # with a multiplier, and 5x5 with a 3x5 kernel (float64 7x7 planes exceed
        # wgrad_plane's shared memory).
        out.append((_params.conv_params((2, 3, 7, 7), (6, 1, 7, 7), None, 1, 3, 1), dtype))
        out.append((_params.conv_params((2, 3, 5, 5), (3, 1, 3, 5), None, 1, (1, 2), 1), dtype))
        # Strided forwards on small planes (_kernels._strided_small): 5x5 at stride 2 on
        # 14 x 14 (float32 conv_batch, 4 channels per unit; 16-bit conv_plane; float64
        # conv_tile), 3x3 at stride 2 on 20 x 20 and 7 x 7 (conv_batch).
        out.append((_params.conv_params((2, 8, 14, 14), (8, 1, 5, 5), None, 2, 2, 1), dtype))
        out.append((_params.conv_params((2, 8, 20, 20), (8, 1, 3, 3), None, 2, 1, 1), dtype))
        out.append((_params.conv_params((2, 4, 7, 7), (4, 1, 3, 3), None, 2, 1, 1), dtype))
        # 1x7 on 7x7 planes: bwd_plane in every dtype (bwd_batch takes float64 small planes
        # only for kernels of more than one row).
        out.append((_params.conv_params((2, 3, 7, 7), (3, 1, 1, 7), None, 1, (0, 3), 1), dtype))
        # 7x7 on 14x14 planes (conv_batch forward and rotated grad input in every dtype).
        out.append((_params.conv_params((2, 3, 14, 14), (3, 1, 7, 7), None, 1, 3, 1), dtype))
        # 13x13 on 7x7 planes: conv_batch and bwd_batch past 64 taps (float64: conv_lines).
        out.append((_params.conv_params((2, 3, 7, 7), (3, 1, 13, 13), None, 1, 6, 1), dtype))
        # The 16-bit fused backward on tensor cores beside convnext_7x7's: a 5x7 kernel with
        # asymmetric padding on a plane of an odd number of grad_output rows whose width
        # is not a multiple of 8 (4-byte copies).
        out.append((_params.conv_params((2, 4, 13, 22), (4, 1, 5, 7), None, 1, ((1, 3), (2, 4)), 1), dtype))
        # A 16-bit 3x7 kernel on planes wider than 64 columns (conv_mma_rows, forward and
        # rotated grad input; other dtypes take the row sweeps).
        out.append((_params.conv_params((2, 3, 40, 136), (3, 1, 3, 7), None, 1, (1, 3), 1), dtype))
        # A plane past conv_lines' shared memory (float64: 125 KB): conv_smem's forward and
        # rotated grad input.
        out.append((_params.conv_params((1, 2, 120, 130), (2, 1, 13, 13), None, 1, 6, 1), dtype))
    # conv_stack and wgrad_stack past 7 tap rows (16 images and more): 9x9 on 64 x 64 planes
    # at 2 blocks per SM (8 warps), 9x9 on 56 x 56 at 3 (24 bytes spilled, measured faster
    # than 2), 13x5 at 2.
    for dtype in ("float16", "bfloat16"):
        # A 13x13 kernel on short planes of 100 columns, past wgrad_lines' register budget:
        # wgrad_smem before sm_80 (31 KB; wider planes exceed sm_75's 64 KB and take the
        # generic kernel), the tensor cores from sm_80.
        out.append((_params.conv_params((2, 3, 24, 100), (3, 1, 13, 13), None, 1, 6, 1), dtype))
        out.append((_params.conv_params((64, 128, 64, 64), (128, 1, 9, 9), None, 1, 4, 1), dtype))
        out.append((_params.conv_params((64, 96, 56, 56), (96, 1, 9, 9), None, 1, 4, 1), dtype))
        out.append((_params.conv_params((64, 96, 56, 56), (96, 1, 13, 5), None, 1, (6, 2), 1), dtype))
    return out


def _family(expr):
    """'dw::conv_tile<float, 1, ...>' -> ('conv_tile mode 1', 'float32')."""
    name, args = _kernels.split_expr(expr)
    if name in ("conv_tile", "conv_generic"):
        name += f" mode {args[1]}"
    elif name == "conv_smem":
        name += f" flip={args[9]}"
    elif name == "conv_mma":
        name += f" flip={args[8]}"
    elif name in ("conv_stack", "conv_mma_rows"):
        name += f" flip={args[9]}"
    elif name == "conv_plane":
        name += f" flip={args[14]}"
    elif name == "conv_batch":
        name += f" flip={args[13]}"
    elif name == "conv_lines":
        name += f" flip={args[10]}"
    elif name in ("conv_rows", "conv_rows_async", "conv_rows_whole"):
        name += f" flip={args[11]}"
    return name, _DTYPE_OF_CXX[args[0]]


EXPRESSIONS = _kernels.expressions_for(suite_problems() + grid_problems())
# NVRTC programs of at most CHUNK specializations of one source, for one architecture:
# as one program per source, conv.cu (~260 specializations) alone set the test's time
# (~6 minutes with 16 cores idle on the GPU host); chunks spread the work over every core
# (CI's two cores do the same total work). Largest first.
CHUNK = 24
PROGRAMS = sorted(
    ((src, arch, tuple(exprs[i:i + CHUNK]))
     for src, exprs in ((s, sorted(e)) for s, e in EXPRESSIONS.items())
     for arch in ARCHS for i in range(0, len(exprs), CHUNK)),
    key=lambda p: (-len(p[2]), p[0], p[1], p[2]),
)


def test_every_family_in_every_dtype_is_compiled():
    covered = {_family(e) for exprs in EXPRESSIONS.values() for e in exprs}
    missing = sorted({(f, d) for f in FAMILIES for d in FAMILY_DTYPES.get(f, DTYPES)} - covered)
    assert not missing, f"kernel families never selected by the compile problems: {missing}"
    unknown = sorted({f for f, _ in covered} - set(FAMILIES))
    assert not unknown, f"kernel families this test does not know (add them to FAMILIES): {unknown}"


def test_every_suite_case_is_compiled():
    for p, dtype in suite_problems():
        for src, exprs in _kernels.expressions_for([(p, dtype)]).items():
            assert exprs <= EXPRESSIONS[src], f"{p} {dtype}: {sorted(exprs - EXPRESSIONS[src])} not compiled"


def test_every_specialization_compiles():
    """One test for all programs (not one per program), so that a parallel test runner
    never compiles them more than once."""
    if not nvrtc_compile.nvrtc_available():
        reason = "NVRTC is not available (pip install '.[test]' provides cuda-bindings and nvidia-cuda-nvrtc)"
        if REQUIRE_NVRTC:
            pytest.fail(f"{reason}, and CUPY_DWCONV_REQUIRE_NVRTC=1 requires it", pytrace=False)
        pytest.skip(reason)
    failures = []
    # Worker processes rather than threads: each program is seconds of CPU-bound NVRTC
    # work; "spawn" starts the workers from a clean interpreter. One per core (at least 2).
    workers = max(2, min(len(PROGRAMS), os.cpu_count() or 2))
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # The sm_90 programs also return ptxas's report, which the local-memory test
        # below reads.
        futures = {
            pool.submit(nvrtc_compile.local_memory if arch == REPORT_ARCH else nvrtc_compile.compile_expressions,
                        src, list(exprs), arch): (src, arch, exprs)
            for src, arch, exprs in PROGRAMS
        }
        for fut in concurrent.futures.as_completed(futures):
            src, arch, exprs = futures[fut]
            try:
                result = fut.result()
                if arch == REPORT_ARCH:
                    _REPORTS.update({(src, e): b for e, b in result.items()})
            except Exception as e:  # RuntimeError with the NVRTC log, or a broken worker
                failures.append(f"{src} for sm_{arch} ({len(exprs)} of its specializations, from {exprs[0]}): "
                                f"{type(e).__name__}: {e}")
    # Every specialization, once per architecture.
    compiled = sorted((src, arch, e) for src, arch, exprs in PROGRAMS for e in exprs)
    assert compiled == sorted((src, arch, e) for src in EXPRESSIONS for arch in ARCHS for e in EXPRESSIONS[src])
    assert len(EXPRESSIONS) >= 2
    if failures:
        pytest.fail("\n\n".join(sorted(failures)), pytrace=False)


def test_dispatched_plans_use_no_local_memory():
    """Local memory (register spills, or a stack frame) puts DRAM-latency loads in the
    inner loops. No specialization the dispatcher picks for the compile problems, compiled
    for sm_90 by this NVRTC, uses any, apart from the register-tile families of
    nvrtc_compile.SPILL_MEASURED. Reads the ptxas reports the compile test gathered (or
    compiles the sm_90 programs itself when run alone)."""
    if not nvrtc_compile.nvrtc_available():
        if REQUIRE_NVRTC:
            pytest.fail("NVRTC is not available, and CUPY_DWCONV_REQUIRE_NVRTC=1 requires it", pytrace=False)
        pytest.skip("NVRTC is not available (pip install '.[test]' provides cuda-bindings and nvidia-cuda-nvrtc)")
    programs = [(src, exprs) for src, arch, exprs in PROGRAMS
                if arch == REPORT_ARCH and any((src, e) not in _REPORTS for e in exprs)]
    if programs:
        workers = max(2, min(len(programs), os.cpu_count() or 2))
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(nvrtc_compile.local_memory, src, list(exprs), REPORT_ARCH): src
                       for src, exprs in programs}
            for fut in concurrent.futures.as_completed(futures):
                _REPORTS.update({(futures[fut], e): b for e, b in fut.result().items()})
    checked = [(src, e) for src, es in EXPRESSIONS.items() for e in es]
    assert len(checked) >= 400 and all(k in _REPORTS for k in checked)
    with_local = sorted(f"{e}: {_REPORTS[(src, e)]} B" for src, e in checked
                        if _REPORTS[(src, e)] and _kernels.split_expr(e)[0] not in nvrtc_compile.SPILL_MEASURED)
    assert not with_local, "specializations with local memory:\n" + "\n".join(with_local)


def _abi_source():
    """static_asserts that every C++ argument struct matches its numpy dtype."""
    lines = [_kernels.source("conv.cu"), "", "// layout checks generated from _kernels.ARG_DTYPES"]
    for name, dt in _kernels.ARG_DTYPES.items():
        lines.append(f"static_assert(sizeof(dw::{name}) == {dt.itemsize}, \"{name}: size\");")
        lines.append(f"static_assert(alignof(dw::{name}) == {dt.alignment}, \"{name}: alignment\");")
        for field, (fdt, offset) in dt.fields.items():
            lines.append(f"static_assert(__builtin_offsetof(dw::{name}, {field}) == {offset}, \"{name}.{field}: offset\");")
            lines.append(f"static_assert(sizeof(dw::{name}::{field}) == {fdt.itemsize}, \"{name}.{field}: size\");")
    return "\n".join(lines) + "\n"


def _has_builtin_offsetof():
    try:
        nvrtc_compile.compile_source("struct S { int a; long long b; };\n"
                                     "static_assert(__builtin_offsetof(S, b) == 8, \"\");\n", "probe.cu", 90)
        return True
    except RuntimeError:
        return False


def test_argument_structs_match_numpy_layout():
    """The kernels take their scalars as one struct passed by value from a numpy
    structured scalar: a layout mismatch would silently scramble every argument.
    (tests/test_gpu_forward.py checks the same layouts at run time on the GPU.)"""
    if not nvrtc_compile.nvrtc_available():
        if REQUIRE_NVRTC:
            pytest.fail("NVRTC is required (CUPY_DWCONV_REQUIRE_NVRTC=1) but cannot be loaded")
        pytest.skip("NVRTC (cuda-bindings + nvidia-cuda-nvrtc) is not available")
    if not _has_builtin_offsetof():
        pytest.skip("this NVRTC has no __builtin_offsetof (NVRTC 13.5 from the test extra has it)")
    nvrtc_compile.compile_source(_abi_source(), "abi_check.cu", 90)


def test_pack_args_checks_fields_and_ranges():
    args = _kernels.pack_args("ReduceArgs", CM=3, KK=9, n_chunks=4, OB=1)
    assert (int(args["CM"]), int(args["KK"]), int(args["n_chunks"])) == (3, 9, 4)
    with pytest.raises(TypeError, match="ReduceArgs: fields"):
        _kernels.pack_args("ReduceArgs", CM=3, KK=9)
    with pytest.raises(ValueError, match="n_chunks: expected a value that fits a 32-bit int"):
        _kernels.pack_args("ReduceArgs", CM=3, KK=9, n_chunks=2**31, OB=1)


# Row-sweep plans whose output rows allow whole-vector stores: (x shape, weight shape,
# padding, dtype, pass).
VECTOR_STORE_PLANS = [
    ((2, 8, 28, 28), (8, 1, 5, 5), 2, "float32", "forward"),  # conv_rows_async, 16-byte stores
    ((2, 8, 56, 56), (8, 1, 3, 3), 1, "float16", "forward"),  # 8-byte stores
    ((2, 8, 28, 28), (8, 1, 5, 5), 2, "float32", "backward"),  # bwd_rows grad_x
    ((2, 8, 56, 56), (8, 1, 3, 3), 1, "bfloat16", "backward"),
]


@pytest.mark.parametrize("plan", VECTOR_STORE_PLANS, ids=str)
def test_row_sweeps_store_whole_vectors(plan):
    """NVVM split most vector stores of the unrolled row loops into 4-byte stores (4x
    the store instructions and L2 write requests; effnet_5x5's forward lost 18 %), so
    rows.cu writes them as PTX (stg_n). These plans' output rows must leave the kernel
    as st.global.v2 / v4 only; bwd_rows also writes scalars outside its row loops: its
    partial sums (one or two stores) and, in the closing step, grad_weight and grad_bias
    (two sites, which NVVM peels once: four) and the counter reset (blocksum.cuh). A split
    vector store in the row loops would add dozens."""
    if not nvrtc_compile.nvrtc_available():
        if REQUIRE_NVRTC:
            pytest.fail("NVRTC is required (CUPY_DWCONV_REQUIRE_NVRTC=1) but cannot be loaded")
        pytest.skip("NVRTC (cuda-bindings + nvidia-cuda-nvrtc) is not available")
    x_shape, w_shape, pad, dtype, which = plan
    p = _params.conv_params(x_shape, w_shape, None, 1, pad, 1)
    launch = (_kernels.plan_forward(p, dtype, 0, 90, 132) if which == "forward"
              else _kernels.plan_backward(p, dtype, 0, 0, 90, 132)[0])
    assert "rows" in launch.expr, launch.expr
    stores = re.findall(r"st\.global(\.[a-z0-9.]+)", nvrtc_compile.ptx_of(launch.src, launch.expr, 90))
    vector = [s for s in stores if s.startswith(".v")]
    scalar = [s for s in stores if not s.startswith(".v")]
    assert len(vector) >= 3 and len(scalar) <= (0 if which == "forward" else 7), (launch.expr, stores)


# Plans whose copies the benchmark showed faster with L2 prefetch (benchmarks/NOTES.md,
# sessions 31 and 32): x shape, weight shape, padding, dtype, pass, family, whether the
# plan also prefetches rows ahead into L2 (conv_rows_async on rows of 256 bytes and
# more), and the copies' L2 prefetch block (256 B on conv_rows_async's shorter rows).
L2_PREFETCH_PLANS = [
    ((2, 8, 56, 56), (8, 1, 3, 3), 1, "float16", "forward", "conv_rows_async", False, "256B"),   # 112-byte rows
    ((2, 8, 28, 28), (8, 1, 5, 5), 2, "float32", "forward", "conv_rows_async", False, "256B"),   # 112-byte rows
    ((2, 4, 128, 256), (4, 1, 3, 7), 0, "float32", "forward", "conv_rows_async", True, "128B"),  # 1024-byte rows
    ((2, 4, 128, 256), (4, 1, 3, 7), 0, "float16", "forward", "conv_mma_rows", False, "128B"),
    ((2, 8, 56, 56), (8, 1, 3, 3), 1, "float16", "backward", "bwd_rows", False, "128B"),
    ((32, 8, 56, 56), (8, 1, 7, 7), 3, "float16", "forward", "conv_stack", False, "128B"),
    ((4, 8, 28, 28), (8, 1, 7, 7), 3, "float16", "backward", "bwd_mma", False, "128B"),
]


@pytest.mark.parametrize("plan", L2_PREFETCH_PLANS, ids=str)
def test_copies_prefetch_their_l2_block(plan):
    """Every cp.async of these plans carries an L2 prefetch (.L2::128B, tc.cuh; the row
    sweep on rows under 256 bytes .L2::256B), and the long-row sweep, only it, also
    prefetches rows ahead (prefetch.global.L2): an edit that drops either loses 1-5 % on
    the benchmark's memory-bound rows, with no test failing otherwise."""
    if not nvrtc_compile.nvrtc_available():
        if REQUIRE_NVRTC:
            pytest.fail("NVRTC is required (CUPY_DWCONV_REQUIRE_NVRTC=1) but cannot be loaded")
        pytest.skip("NVRTC (cuda-bindings + nvidia-cuda-nvrtc) is not available")
    x_shape, w_shape, pad, dtype, which, family, ahead, block = plan
    p = _params.conv_params(x_shape, w_shape, None, 1, pad, 1)
    launch = (_kernels.plan_forward(p, dtype, 0, 90, 132) if which == "forward"
              else _kernels.plan_backward(p, dtype, 0, 0, 90, 132)[0])
    assert launch.expr.startswith(f"dw::{family}<"), launch.expr
    ptx = nvrtc_compile.ptx_of(launch.src, launch.expr, 90)
    copies = re.findall(r"cp\.async\.c[ag]\.shared\.global(\S*)", ptx)
    assert copies and set(copies) == {f".L2::{block}"}, (launch.expr, sorted(set(copies)))
    assert ("prefetch.global.L2" in ptx) == ahead, launch.expr


def _batch_grid_expressions():
    """Every conv_batch and bwd_batch specialization the dispatcher picks over a grid of
    small planes ('same' padding, 64 images, 8 channels: 4 per unit in float32 where the
    pointers allow, else 1), kernels and dtypes: forward, rotated grad input and the
    fused backward, on sm_90."""
    sizes = ((7, 7), (8, 8), (10, 10), (12, 12), (13, 13), (14, 14), (15, 15), (16, 16), (16, 7), (7, 16),
             (13, 16), (11, 9))
    kernels = ((2, 2), (3, 3), (3, 5), (3, 7), (5, 5), (5, 7), (7, 5), (7, 7), (2, 9), (9, 7), (8, 8))
    # Kernels past 64 taps (_kernels._batch_large), also larger than the plane.
    large = tuple(((h, w), k) for h, w in ((7, 7), (14, 14), (16, 16), (13, 16)) for k in ((9, 9), (13, 13), (27, 27)))
    exprs = set()
    for dtype in DTYPES:
        for (h, w), (kh, kw) in tuple((s, k) for s in sizes for k in kernels) + large:
            if (kh > h or kw > w) and kh * kw <= 64:
                continue
            p = _params.conv_params((64, 8, h, w), (8, 1, kh, kw), None, 1, "same", 1)
            launches = [_kernels.plan_forward(p, dtype, 0, 90, 132), _kernels.plan_grad_input(p, dtype, 0, 90, 132)]
            for ptr in (0, 4):
                fused = _kernels.plan_backward(p, dtype, ptr, 0, 90, 132)
                if fused is not None:
                    launches.append(fused[0])
            for launch in launches:
                if "conv_batch" in launch.expr or "bwd_batch" in launch.expr:
                    exprs.add(launch.expr)
        # Strided forwards on inputs of up to 20 x 20 (_kernels._strided_small).
        for (h, w), (kh, kw), s in itertools.product(((7, 7), (10, 10), (14, 14), (16, 16), (17, 19), (20, 20)),
                                                      ((2, 2), (3, 3), (3, 5), (5, 5)), (2, 3)):
            p = _params.conv_params((64, 8, h, w), (8, 1, kh, kw), None, s, (kh // 2, kw // 2), 1)
            launch = _kernels.plan_forward(p, dtype, 0, 90, 132)
            if "conv_batch" in launch.expr:
                exprs.add(launch.expr)
    return sorted(exprs)


def _narrow_rows_expressions():
    """Every conv_rows and bwd_rows specialization the dispatcher picks for 16-bit rows of
    8 to 33 columns (odd widths: conv_rows with scalar loads; even: bwd_rows at 3 blocks
    per SM), 3x3 at dilation 1 and 2 and 3x7, forward, rotated grad input and the fused
    backward, on sm_90, with 16- and 2-byte aligned inputs."""
    exprs = set()
    for dtype in ("float16", "bfloat16"):
        for width in range(8, 34):
            for (kh, kw), d in (((3, 3), 1), ((3, 3), 2), ((3, 7), 1)):
                p = _params.conv_params((4, 8, 14, width), (8, 1, kh, kw), None, 1, "same", d)
                for ptr in (0, 2):
                    launches = [_kernels.plan_forward(p, dtype, ptr, 90, 132),
                                _kernels.plan_grad_input(p, dtype, ptr, 90, 132)]
                    fused = _kernels.plan_backward(p, dtype, ptr, 0, 90, 132)
                    if fused is not None:
                        launches.append(fused[0])
                    exprs |= {launch.expr for launch in launches
                              if _kernels.split_expr(launch.expr)[0] in ("conv_rows", "bwd_rows")}
    return sorted(exprs)


def _small_half_tile_expressions():
    """The float16 tile plans of small planes (at most 400 elements): the fused backward's
    2x4 tiles at 3 blocks per SM (dilation 1, up to 9 taps, where bwd_rows declines: odd
    widths) and the strided grad input's narrow tiles at 3 blocks per SM (up to 25 taps),
    on sm_90, with 16- and 2-byte aligned inputs: {source: [name expressions]}."""
    out = {"bwd.cu": set(), "conv.cu": set()}
    for h, w in ((5, 5), (7, 7), (9, 9), (11, 13), (13, 13), (14, 14), (15, 17), (17, 17), (19, 19), (20, 20)):
        for ptr in (0, 2):
            for k in ((3, 3), (1, 7), (7, 1), (1, 3), (3, 1), (2, 2)):
                p = _params.conv_params((64, 8, h, w), (8, 1) + k, None, 1, "same", 1)
                fused = _kernels.plan_backward(p, "float16", ptr, 0, 90, 132)
                if fused is not None and _kernels.split_expr(fused[0].expr)[0] == "bwd_tile":
                    out["bwd.cu"].add(fused[0].expr)
            for k, s in (((3, 3), 2), ((5, 5), 2), ((3, 5), 2), ((3, 3), 3), ((5, 5), 3), ((2, 2), 2)):
                p = _params.conv_params((64, 8, h, w), (8, 1) + k, None, s, k[0] // 2, 1)
                launch = _kernels.plan_grad_input(p, "float16", ptr, 90, 132)
                if _kernels.split_expr(launch.expr)[0] == "conv_tile":
                    out["conv.cu"].add(launch.expr)
    return {src: sorted(e) for src, e in out.items()}


def test_small_half_tile_plans_never_spill():
    """float16 tiles on small planes at 3 blocks per SM (_kernels._bwd_tile_shape and
    _tile_shape's strided grad input) stay free of local memory."""
    for src, exprs in sorted(_small_half_tile_expressions().items()):
        assert len(exprs) >= 5, src
        _assert_no_local_memory(src, exprs, "small float16 tiles")


def _assert_no_local_memory(src, exprs, what):
    if not nvrtc_compile.nvrtc_available():
        if REQUIRE_NVRTC:
            pytest.fail("NVRTC is not available, and CUPY_DWCONV_REQUIRE_NVRTC=1 requires it", pytrace=False)
        pytest.skip("NVRTC is not available (pip install '.[test]' provides cuda-bindings and nvidia-cuda-nvrtc)")
    chunks = [exprs[i:i + CHUNK] for i in range(0, len(exprs), CHUNK)]
    workers = max(2, min(len(chunks), os.cpu_count() or 2))
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        logs = list(pool.map(functools.partial(nvrtc_compile.compile_expressions, src, arch=90,
                                               resource_report=True), chunks))
    found = {}
    for log in logs:
        found.update(nvrtc_compile.parse_resources(log))
    assert len(found) == len(exprs)
    spills = sorted(f"{name}: {r}" for name, r in found.items() if r.get("spill_stores") or r.get("stack"))
    assert not spills, f"{what} with local memory:\n" + "\n".join(spills)


def test_narrow_row_plans_never_spill():
    """The row sweeps' lanes on narrow 16-bit rows (_kernels._rows_scalar_lanes,
    _bwd_rows_small) keep every specialization they pick free of local memory."""
    exprs = _narrow_rows_expressions()
    assert len(exprs) >= 20
    _assert_no_local_memory("rows.cu", exprs, "narrow-row sweeps")


def test_batch_plans_never_spill():
    """conv_batch's and bwd_batch's dispatch limits (plane sides, float64's lower one)
    and register estimates (their blocks-per-SM bounds) keep every specialization they
    pick free of local memory: their registers hold a row of sums, staged rows and the
    next unit's loads, and ptxas spills where they do not fit."""
    exprs = _batch_grid_expressions()
    assert len(exprs) >= 100
    _assert_no_local_memory("plane.cu", exprs, "batch specializations")
