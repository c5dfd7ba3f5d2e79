"""Kernel specializations: C++ names, NVRTC options, grid and block math.

This is the only module that knows the CUDA side. A *plan* is chosen per problem
(ConvParams, dtype, pass, alignment): which kernel template, its compile-time arguments,
the launch geometry and the scalar arguments with their exact C types. Plans are
memoized, so a repeated call costs a dictionary lookup plus the launch.

Kernel choice is a heuristic table (see `_use_mma`, `lines_launch`, `_use_rows_whole`, `_tile_shape`,
`_smem_candidate`, `_use_wgrad_mma`, `_wgrad_tile_shape`, `_bwd_tile_shape`,
`_bwd_chunks`) rather than
autotuning: it is deterministic (the weight gradient's reduction order, and therefore
its bits, must not depend on timing noise), costs nothing on first use, and was set from
measured sweeps recorded in benchmarks/NOTES.md. `force` arguments let the sweep script
try other variants through the same code path.

Specializations are compiled on first use by cupy.RawModule (NVRTC) and cached by CuPy
per device in memory and on disk.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.resources
import itertools
import math
import re
import threading

import numpy


# ---------------------------------------------------------------------------------------
# Sources and compilation

NVRTC_OPTIONS = ("-std=c++17",)

# C++ storage type per dtype name, accumulation type, bytes per element.
CXX_TYPE = {"float16": "dw::half_t", "bfloat16": "dw::bf16_t", "float32": "float", "float64": "double"}
ACC_DTYPE = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.M)
INT32_MAX = 2**31 - 1


@functools.lru_cache(maxsize=None)
def source(name):
    """Text of cuda/<name> with its local includes inlined (each header once).

    Inlining keeps the whole program in the string CuPy hashes for its disk cache, so
    editing a header can never reuse a stale binary.
    """
    seen = set()

    def expand(fname):
        if fname in seen:
            return ""
        seen.add(fname)
        text = importlib.resources.files(__package__).joinpath("cuda", fname).read_text()
        text = text.replace("#pragma once\n", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


@functools.lru_cache(maxsize=None)
def _module(device_id, src_name, expr):
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source(src_name), options=NVRTC_OPTIONS, name_expressions=(expr,))


# Dynamic shared memory each (device, source, specialization) has opted in to.
_SMEM_OPT_IN = {}


@functools.lru_cache(maxsize=None)
def get_kernel(device_id, src_name, expr, shared_mem):
    """The compiled kernel for one specialization on one device (compiles on first use)."""
    import cupy

    with cupy.cuda.Device(device_id):
        kern = _module(device_id, src_name, expr).get_function(expr)
        # Above 48 KB a kernel must opt in to its dynamic shared memory. The opt-in belongs
        # to the function, which every plan of this specialization shares (plans of
        # different shapes can ask different amounts), so it only ever grows: setting a
        # smaller value would make an earlier, larger plan's launches fail.
        key = (device_id, src_name, expr)
        if shared_mem > max(48 * 1024, _SMEM_OPT_IN.get(key, 0)):
            kern.max_dynamic_shared_size_bytes = shared_mem
            _SMEM_OPT_IN[key] = shared_mem
    return kern


def _targs(*values):
    out = []
    for v in values:
        if isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, str):
            out.append(v)
        else:
            out.append(str(int(v)))
    return ", ".join(out)


def split_expr(expr):
    """'dw::conv_tile<float, 0, 3, 7, ...>' -> ('conv_tile', ['float', '0', '3', '7', ...]):
    the kernel's name and its template arguments as written by _targs."""
    if "<" not in expr:
        return expr.split("::")[-1], []
    head, rest = expr.split("<", 1)
    return head.split("::")[-1], [a.strip() for a in rest[: rest.rindex(">")].split(",")]


# ---------------------------------------------------------------------------------------
# Plans

@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch: which specialization, its geometry and its scalar arguments.

    `scalars` holds the kernel's argument struct (a numpy structured scalar whose layout
    matches the C++ struct); the array arguments are supplied at launch time.
    """

    src: str
    expr: str
    grid: tuple
    block: tuple
    shared_mem: int
    scalars: tuple

    def kernel(self, device_id):
        return get_kernel(device_id, self.src, self.expr, self.shared_mem)

    def __call__(self, device_id, arrays):
        self.kernel(device_id)(self.grid, self.block, tuple(arrays) + self.scalars, shared_mem=self.shared_mem)


NULL = numpy.uint64(0)  # a null `const T*` kernel argument (pointers are 8 bytes)


class CachedLaunch:
    """One launch of the call cache (a forward plan on one device), issued through the
    driver API with a prepared argument block, for the lowest host cost per call.

    CuPy's kernel call builds an argument object per argument on every call; here each
    host thread keeps one block: the four array pointers (x, weight, bias or null,
    output), then the argument struct's bytes (its C layout, as `pack_args` made it), and
    the table of their addresses that cuLaunchKernel reads (and copies before it returns).
    A call writes the four pointers and launches on CuPy's current stream. A thread's
    first call goes through CuPy's launch instead, which also makes the device's context
    current in that thread; the caller makes the device current.
    """

    __slots__ = ("kernel", "grid", "block", "smem", "scalars", "struct", "fptr", "local", "launch_kernel")

    def __init__(self, launch, device_id):
        from cupy.cuda import driver

        if len(launch.scalars) != 1:
            raise ValueError(f"{launch.expr}: expected one argument struct, got {len(launch.scalars)} scalars")
        self.kernel = launch.kernel(device_id)
        self.grid = (tuple(launch.grid) + (1, 1))[:3]
        self.block = (tuple(launch.block) + (1, 1))[:3]
        self.smem = launch.shared_mem
        self.scalars = launch.scalars
        self.struct = launch.scalars[0].tobytes()
        self.fptr = self.kernel.kernel.ptr
        self.local = threading.local()
        self.launch_kernel = driver.launchKernel

    def _block(self):
        vals = (ctypes.c_uint64 * (4 + _cdiv(len(self.struct), 8)))()
        base = ctypes.addressof(vals)
        ctypes.memmove(base + 32, self.struct, len(self.struct))
        table = (ctypes.c_uint64 * 5)(base, base + 8, base + 16, base + 24, base + 32)
        return vals, table, ctypes.addressof(table)

    def __call__(self, cupy, x, weight, bias, out):
        blk = getattr(self.local, "blk", None)
        if blk is None:
            self.kernel(self.grid, self.block, (x, weight, NULL if bias is None else bias, out) + self.scalars,
                        shared_mem=self.smem)
            self.local.blk = self._block()
            return
        vals, _, table = blk
        vals[0] = x.data.ptr
        vals[1] = weight.data.ptr
        vals[2] = 0 if bias is None else bias.data.ptr
        vals[3] = out.data.ptr
        g, b = self.grid, self.block
        self.launch_kernel(self.fptr, g[0], g[1], g[2], b[0], b[1], b[2], self.smem,
                           cupy.cuda.get_current_stream().ptr, table, 0)


# Scalar arguments of each kernel family, in the field order of the C++ structs in
# cuda/common.cuh (numpy align=True gives the same layout; tests/test_compile.py checks
# every offset and the size with static_asserts compiled by NVRTC).
_I64_FIELDS = {"n_units", "IC", "n_tiles", "total", "units", "n_planes"}
ARG_STRUCTS = {
    "TileArgs": ("n_units", "IC", "IH", "IW", "OH", "OW", "off_h", "off_w", "n_cg", "n_rs", "n_rt", "NT",
                 "QC", "DIV", "R"),
    "SmemArgs": ("n_tiles", "IC", "IH", "IW", "OH", "OW", "pad_t", "pad_l", "BH", "BW", "n_tx", "n_ty", "P",
                 "pitch", "QC", "DIV", "R", "RTF"),
    "GenericArgs": ("total", "IC", "IH", "IW", "OH", "OW", "KH", "KW", "SH", "SW", "DH", "DW", "pad_t", "pad_l",
                    "QC", "DIV", "R"),
    "WgradArgs": ("IH", "IW", "OH", "OW", "KH", "KW", "SH", "SW", "DH", "DW", "pad_t", "pad_l", "n_cg", "n_rt",
                  "N", "C", "M", "CM", "n_chunks", "G", "n_tkw", "xpitch", "gpitch"),
    "ReduceArgs": ("CM", "KK", "n_chunks", "OB"),
    "WmmaArgs": ("units", "IH", "IW", "OH", "OW", "pad_t", "pad_l", "C", "M", "CM", "n_chunks", "BH", "n_bands",
                 "NC", "XP", "GOFF", "GP"),
    "PlaneArgs": ("n_planes", "IC", "QC", "DIV", "R", "P"),
    "BatchArgs": ("units", "IC", "N", "QC", "DIV"),
    "BmmaArgs": ("N", "C", "n_chunks", "IH", "IW", "OH", "OW", "PT", "PL", "XP", "XR", "GOFF", "GP", "GR", "GT",
                 "GX0"),
    "WplaneArgs": ("N", "C", "M", "CM", "n_chunks", "G", "P"),
    "MmaArgs": ("n_tiles", "IC", "IH", "IW", "OH", "OW", "pad_t", "pad_l", "n_tx", "n_ty", "QC", "DIV", "R"),
    "RowsArgs": ("n_units", "IC", "IH", "IW", "OH", "OW", "PT", "RB", "n_bands", "n_cs", "QC", "DIV"),
    "WstackArgs": ("N", "C", "n_chunks", "IH", "IW", "OH", "OW", "PT", "PL", "RB", "n_bands"),
    "MrowsArgs": ("units", "IC", "IH", "IW", "OH", "OW", "PT", "PL", "RB", "n_bands", "n_cs", "QC", "DIV"),
    "StackArgs": ("units", "IH", "IW", "OH", "OW", "PT", "PL", "RB", "N", "C", "n_bands", "n_cs"),
    "BwdRowsArgs": ("units", "IH", "IW", "OH", "OW", "PT", "RB", "n_bands", "n_cs", "N", "C", "n_chunks"),
}
ARG_DTYPES = {
    name: numpy.dtype([(f, numpy.int64 if f in _I64_FIELDS else numpy.int32) for f in fields], align=True)
    for name, fields in ARG_STRUCTS.items()
}


def pack_args(struct, **values):
    """The struct argument of a kernel (a numpy structured scalar, passed by value).
    Every field is required; 32-bit fields are range-checked, since the kernels index
    with them."""
    fields = ARG_STRUCTS[struct]
    missing = set(fields) ^ set(values)
    if missing:
        raise TypeError(f"{struct}: fields {sorted(missing)} missing or unknown")
    row = []
    for f in fields:
        v = int(values[f])
        if f not in _I64_FIELDS and not -(2**31) <= v <= INT32_MAX:
            raise ValueError(f"{f}: expected a value that fits a 32-bit int, got {v} (problem too large for this kernel)")
        row.append(v)
    return numpy.array([tuple(row)], dtype=ARG_DTYPES[struct])[0]


def _cdiv(a, b):
    return -(-a // b)


def _grid1d(total, block):
    return (max(1, min(_cdiv(total, block), INT32_MAX)), 1, 1)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One plane-to-plane problem solved by the conv kernels (forward or grad input).

    IH x IW input planes -> OH x OW output planes, `planes` of them; channel map
    (QC, IC, DIV, R) as documented in common.cuh. MODE 0 is a correlation with the given
    padding; MODE 1 the grad-input gather for stride/padding of the forward.
    """

    mode: int
    IH: int
    IW: int
    OH: int
    OW: int
    KH: int
    KW: int
    SH: int
    SW: int
    DH: int
    DW: int
    PT: int
    PL: int
    planes: int
    QC: int
    IC: int
    DIV: int
    R: int
    flip: bool = False  # read the kernel rotated by 180 degrees (conv_smem only)


def forward_problem(p):
    return Problem(0, p.H, p.W, p.OH, p.OW, p.KH, p.KW, p.SH, p.SW, p.DH, p.DW, p.PT, p.PL,
                   p.N * p.CM, p.CM, p.C, p.M, 1)


def grad_input_problem(p):
    return Problem(1, p.OH, p.OW, p.H, p.W, p.KH, p.KW, p.SH, p.SW, p.DH, p.DW, p.PT, p.PL,
                   p.N * p.C, p.C, p.CM, 1, p.M)


def _flipped_problem(pr):
    """Grad input at stride 1 as a forward correlation with the rotated kernel and
    padding D*(K-1) - pad (negative padding crops)."""
    return dataclasses.replace(
        pr, mode=0, flip=True, PT=pr.DH * (pr.KH - 1) - pr.PT, PL=pr.DW * (pr.KW - 1) - pr.PL
    )


def _channel_fields(pr):
    return dict(QC=pr.QC, IC=pr.IC, DIV=pr.DIV, R=pr.R)


# ---- conv_tile ------------------------------------------------------------------------

TILE_MAX_TAPS = 64  # conv_tile keeps every weight in registers


def _load_width(dtype, row, ptr, step):
    """Elements per global load of a row-wise tile read: the widest vector (16, 8 or 4
    bytes) such that the row length, the data pointer and the tile's column step all
    keep every vector aligned; 1 (scalar loads) when none does. float32 rows of 250
    elements take 8-byte loads this way (seed_3x7's grad_output)."""
    size = ITEMSIZE[dtype]
    lanes = 16 // size
    while lanes > 1 and lanes * size >= 4:
        if row % lanes == 0 and ptr % (lanes * size) == 0 and step % lanes == 0:
            return lanes
        lanes //= 2
    return 1


def _axis_lo(mode, k, s, d, pad_rem):
    if mode == 0:
        return 0
    return (pad_rem - (k - 1) * d) // s  # floor division, as floor_div in common.cuh


def _axis_span(mode, k, s, d, t, pad_rem):
    if mode == 0:
        return (t - 1) * s + (k - 1) * d + 1
    return (t - 1 + pad_rem) // s - _axis_lo(mode, k, s, d, pad_rem) + 1


def _tile_shape(pr, dtype):
    """(TH, TW, MINB, NT) for conv_tile: the heuristic table, from the sweeps recorded in
    benchmarks/NOTES.md (H100, session 1):

    - fp32, KH*KW <= 9, no dilation: 4x4 tiles at 3 blocks/SM (<= 80 registers), one tile
      per thread (mbv2 91 %, image 94 %): occupancy hides the memory latency.
    - fp32, larger kernels or dilation: 4x8 at 2 blocks/SM (seed_3x7 86 %, dilated 92 %);
      stride 2 with 5x5: 4x4 (79 %).
    - 16-bit: one 16-byte vector wide (8 elements), 2 rows, 3 blocks/SM; 4 rows for 7x7.
    - Narrow planes (OW <= 8): one row of the whole width per thread; small planes: 2 rows.
    NT None lets _strip_length pick the strip; a float NT is the grid it aims for, in
    waves of resident threads (the nearest strip length to that).
    Strips, float32 (H200, session 13, us; benchmarks/NOTES.md): 3x3 tiles at ~10 waves,
    mbv2_3x3 70.8 -> 65.2 (2 tiles), image_3x3 152.7 -> 140.6 (4; grad input 150.9 ->
    140.1), mbv2_3x3_s2 95.5 (1 tile; 2 tiles 97.9); stride-2 5x5 at one wave,
    effnet_5x5_s2 47.8 -> 42.6 (7 tiles, the whole column of tiles). Strided grad input
    at 3 blocks per SM: mbv2_3x3_s2 112.8 -> 102.7 (1 tile; 2 at 2 blocks 103.7),
    effnet_5x5_s2 50.6 -> 47.1 (3 tiles, ~6 waves; 2 tiles 48.0, 7 48.5).
    """
    if pr.mode == 1 and (pr.SH, pr.SW) != (1, 1):
        # Tiles start on a stride phase: multiples of the stride. (At stride 1 the
        # grad-input gather has the forward's shape of work and uses its table.) 16-bit
        # grad_x planes of up to 40 x 40 take float32's narrow tiles at 3 blocks per SM
        # (H200, us, against 4x8 or 3x6 at 2 blocks; float16 / bfloat16): 5x5 stride 2 on
        # 64 x 672 x 14 x 14 32.9 / 34.1 against 78.8 / 79.1 (bfloat16 spills 8 bytes); on
        # 64 x 144 x 28 x 28 18.0 / 17.9 against 29.7 / 29.8; 3x3 stride 2 on 64 x 96 x 28 x
        # 28 11.3 / 11.3 against 20.6 / 20.8; 3x3 stride 3 on 32 x 64 x 40 x 40 11.3 / 11.7
        # against 16.0 / 15.7. From 56 x 56 the wide tiles win: 3x3 stride 2 on 64 x 144 x
        # 56 x 56 29.3 / 29.6 against 32.8 / 32.8, 80 x 80 22.5 against 24.2, 112 x 112
        # 58.6 against 70.1; 5x5 stride 2 on 56 x 56 42.3 against 45.7; 3x3 stride 3 on
        # 72 x 72 15.7 against 21.0.
        small = dtype in ("float16", "bfloat16") and pr.OH * pr.OW <= 1600 and pr.KH * pr.KW <= 25  # 7x7 spills at 3
        th = pr.SH * max(1, 4 // pr.SH)
        tw = pr.SW * max(1, (4 if dtype in ("float32", "float64") or small else 8) // pr.SW)
        if dtype == "float32":
            return th, tw, 3, (1 if pr.KH * pr.KW <= 9 else 6.0)
        return th, tw, 3 if small else 2, None
    taps = pr.KH * pr.KW
    if dtype == "float64":
        return min(2, pr.OH), min(4, pr.OW), 2, None
    if pr.OW <= 8:
        return 1, pr.OW, 2, None
    if dtype == "float32":
        if taps <= 9 and pr.DH == 1 and pr.DW == 1:
            th, tw, minb, nt = 4, 4, 3, 10.0
        elif pr.KH == 1:
            # Rows of one-row kernels (1x31 on 16 x 128 x 32 x 256, H200, us): 1x8 60.3,
            # 2x8 59.5 (125 registers), 4x8 57.7 with 48 B spilled, 4x4 71.0, 2x4 63.6;
            # conv_rows_async 98.3.
            th, tw, minb, nt = 1, 8, 2, None
        elif pr.SW > 1:
            th, tw, minb, nt = 4, 4, 2, 1.0
        else:
            th, tw, minb, nt = 4, 8, 2, None
    elif _strided_half_tiles(pr, dtype):
        th, tw, minb, nt = 4, 4, 3, None
    else:
        th, tw, minb, nt = (4, 8, 2, None) if taps > 25 else (2, 8, 3, None)
    if pr.OH * pr.OW <= 400:
        th = min(th, 2)
    return min(th, pr.OH), tw, minb, nt


def _strip_length(n_rt, other_units, tiles_per_thread_max=8, target_threads=132 * 2048 * 2, nearest=False):
    """Micro-tiles per thread along H: as many as possible (amortizes per-thread setup)
    while the grid keeps about `target_threads` threads (rounded down, or to the nearest
    strip length with `nearest`)."""
    want = n_rt * other_units / target_threads if nearest else (n_rt * other_units) // target_threads
    return max(1, min(tiles_per_thread_max, n_rt, int(round(want)) if nearest else want))


def _strided_half_tiles(pr, dtype):
    """Whether a 16-bit forward at stride 2 (3x3 to 5x5) takes 4x4 tiles at 3 blocks per SM
    without the L2 prefetch instead of the 16-byte-wide 2x8 tiles: kernels of more than 9
    taps, or output rows of at most 32 columns. The 2x8 tiles span 17-19 input columns
    and spill (88-240 bytes with the device's NVRTC 13.0). Measured (H200,
    benchmarks/ab.py, us, float16 / bfloat16; 2x8 at 3 blocks with the prefetch -> 4x4 at
    3 without; NOTES session 38): 5x5 stride 2 on 64 x 144 x 56 x 56 66.5 -> 46.3 / 65.7
    -> 46.2 (4x4 with the prefetch 50.0; at 2 blocks in one wave 43.7 / 45.1), on 64 x 72 x
    56 x 56 37.2 -> 28.6 / 36.8 -> 28.4, on 64 x 32 x 112 x 112 45.0 -> 38.3 / 45.7 -> 38.7;
    3x3 stride 2 on 64 x 144 x 56 x 56 38.2 -> 30.1 / 38.2 -> 30.3. Not taken: 3x3 on
    wider rows (mbv2_3x3_s2's 112 x 112: 2x8 60.4, 4x4 at 3 blocks 64.4, 2x8 without the
    prefetch 63.7) and stride 3 (3x3 on 32 x 64 x 96 x 96, 32 output columns: 21.2 against
    24.5 for 4x4)."""
    return (dtype in MMA_DTYPES and pr.mode == 0 and (pr.SH, pr.SW) == (2, 2) and 9 <= pr.KH * pr.KW <= 25
            and (pr.KH * pr.KW > 9 or pr.OW <= 32))


def _tile_prefetch(pr, dtype):
    """L2 prefetch distance of conv_tile (tiles ahead along a thread's strip; 0 = off),
    from the sweep in benchmarks/NOTES.md (session 4, H100). 16-bit tiles are
    latency-bound and gain most (image_3x3 fp16 0.119 -> 0.107 ms at 2 tiles ahead); the
    float32 3x3 forward tiles lose a few percent to the extra instructions (mbv2_3x3 0.083
    without, 0.087 with); 7x7 float32 gains at 2 (convnext_7x7 0.099 -> 0.092)."""
    if dtype in ("float16", "bfloat16"):
        if _strided_half_tiles(pr, dtype):
            return 0
        return 2 if pr.OH * pr.OW >= 16384 else 1
    taps = pr.KH * pr.KW
    if pr.mode == 0 and (taps <= 9 or pr.SH > 1):
        return 0  # effnet_5x5_s2: 0.060 without, 0.065 with (a strided tile adds SH*TH rows)
    return 2 if taps >= 49 else 1


def _wgrad_prefetch(dtype):
    """Whether wgrad_tile asks L2 for its next unit's rows: yes for 16-bit data (image_3x3
    0.176 -> 0.158 ms), no for float32, where the prefetches cost more than they save
    (mbv2_3x3 0.092 without, 0.107 with; benchmarks/NOTES.md, session 4)."""
    return 1 if dtype in ("float16", "bfloat16") else 0


def tile_launch(pr, dtype, x_ptr, th=None, tw=None, minb=None, nt=None, pf=None, sms=132):
    """conv_tile plan for small kernels; None when the shape does not fit its limits."""
    if pr.KH * pr.KW > TILE_MAX_TAPS:
        return None
    if th is None:
        th, tw, minb_default, nt_default = _tile_shape(pr, dtype)
        minb = minb_default if minb is None else minb
        nt = nt_default if nt is None else nt
    if minb is None:
        minb = 2
    v = 16 // ITEMSIZE[dtype]
    mode = pr.mode
    ptr = pr.PT % pr.SH if mode == 1 else 0
    plr = pr.PL % pr.SW if mode == 1 else 0
    if mode == 1 and (th % pr.SH or tw % pr.SW):
        return None
    span_w = _axis_span(mode, pr.KW, pr.SW, pr.DW, tw, plr)
    step_w = tw * pr.SW if mode == 0 else tw // pr.SW
    if mode == 0:
        off_h, off_w = -pr.PT, -pr.PL
    else:
        off_h, off_w = pr.PT // pr.SH, pr.PL // pr.SW
    lo_w = _axis_lo(mode, pr.KW, pr.SW, pr.DW, plr)
    vin = _load_width(dtype, pr.IW, x_ptr, step_w)
    shift = (off_w + lo_w) % vin
    nb = _cdiv(shift + span_w, vin) * vin
    vout = pr.OW % v == 0 and tw % v == 0
    if nb > 96 or th * tw > 64:
        return None
    n_cg = _cdiv(pr.OW, tw)
    n_rt = _cdiv(pr.OH, th)
    if nt is None:
        nt = _strip_length(n_rt, pr.planes * n_cg)
    elif isinstance(nt, float):  # waves of resident threads (256-thread blocks, MINB per SM)
        nt = _strip_length(n_rt, pr.planes * n_cg, target_threads=nt * sms * 256 * minb, nearest=True)
    n_rs = _cdiv(n_rt, nt)
    units = pr.planes * n_rs * n_cg
    if n_cg * n_rt > INT32_MAX:
        return None
    expr = "dw::conv_tile<" + _targs(
        CXX_TYPE[dtype], mode, pr.KH, pr.KW, pr.SH, pr.SW, pr.DH, pr.DW, th, tw, ptr, plr, vin, shift, vout, minb,
        _tile_prefetch(pr, dtype) if pf is None else pf, pr.R > 1
    ) + ">"
    block = 256
    args = pack_args("TileArgs", n_units=units, IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, off_h=off_h, off_w=off_w,
                     n_cg=n_cg, n_rs=n_rs, n_rt=n_rt, NT=nt, **_channel_fields(pr))
    return Launch("conv.cu", expr, _grid1d(units, block), (block, 1, 1), 0, (args,))


# ---- conv_smem ------------------------------------------------------------------------

SMEM_MAX_KW = 64
SMEM_MAX_THREADS = 512  # conv_smem is compiled with __launch_bounds__(512)
SMEM_TILE_DESC = 24     # sizeof(SmemTile) in cuda/common.cuh


def _smem_geometry(pr, dtype, th, tw, bh, bw):
    acc_size = ITEMSIZE[ACC_DTYPE[dtype]]
    lv = 16 // acc_size
    rw = (tw - 1) * pr.SW + (pr.KW - 1) * pr.DW + 1
    rwv = _cdiv(rw, lv) * lv
    kwp = _cdiv(pr.KW, lv) * lv
    tih = (bh - 1) * pr.SH + (pr.KH - 1) * pr.DH + 1
    tiw = (bw - 1) * pr.SW + (pr.KW - 1) * pr.DW + 1
    pitch = max(tiw, (bw // tw - 1) * tw * pr.SW + rwv)
    pitch = _cdiv(pitch, lv) * lv
    if pitch % 32 == 0:
        pitch += lv  # rows one bank group apart
    # Thread layout (SmemArgs.RTF): micro-tiles numbered along the row (0) or down the
    # column (1) of tiles, whichever puts fewer of a quarter-warp's 16-byte row reads in
    # one bank group. replk_13x13 float32 (7x4 tiles, pitch 40) along the row: 2
    # wavefronts for 1 in most quarter-warps (ncu); down the column: none.
    shape = (tih, th * pr.SH, tw * pr.SW, bw // tw, bh // th, acc_size)
    rtf = min((0, 1), key=lambda f: (_smem_row_wavefronts(pitch, *shape, rtf=f), f))
    # Staged input tile, weight rows, and the tile's descriptor (SmemTile: 24 bytes).
    per_tile = (tih * pitch + pr.KH * kwp) * acc_size + SMEM_TILE_DESC
    return pitch, per_tile, rwv, kwp, rtf


@functools.lru_cache(maxsize=1024)
def _smem_row_wavefronts(pitch, tih, row_step, col_step, ucg, urt, acc_size, rtf=0, threads=512):
    """Shared-memory wavefronts of one 16-byte read per thread at its micro-tile's row
    (conv_smem's thread layout, cuda/conv.cu: tile p, then row tile rt and column tile
    cg, cg fastest, or rt fastest when rtf), over the first `threads` threads: a warp's
    16-byte reads go in 4 phases of 8 threads, each phase as many wavefronts as the most
    distinct 16-byte units in one bank group (of 8). Vectorized and memoized: planning
    calls it for every candidate tile shape and both layouts."""
    t = numpy.arange(threads // 8 * 8, dtype=numpy.int64)
    p, rem = t // (ucg * urt), t % (ucg * urt)
    rt, cg = (rem % urt, rem // urt) if rtf else (rem // ucg, rem % ucg)
    units = numpy.sort((((p * tih + rt * row_step) * pitch + cg * col_step) * acc_size // 16).reshape(-1, 8), axis=1)
    first = numpy.ones(units.shape, dtype=bool)
    first[:, 1:] = units[:, 1:] != units[:, :-1]  # a unit read by several threads is one read
    per_group = numpy.zeros((units.shape[0], 8), dtype=numpy.int64)
    numpy.add.at(per_group, (numpy.arange(units.shape[0])[:, None].repeat(8, 1)[first], (units % 8)[first]), 1)
    return int(per_group.max(axis=1).sum())


SMEM_WHOLE_UNITS = 128  # micro-tiles of a whole-plane tile: at most four warps
SMEM_SHAPES = ((7, 8), (4, 8), (8, 8), (2, 8), (4, 4), (7, 4), (8, 4), (2, 4), (1, 8), (1, 4))
SM_SMEM = 227 * 1024
SM_THREADS = 2048


def _smem_candidate(pr, dtype, th, tw, bh=None, bw=None, tiles_per_block=None, sms=132):
    """(score, config) of one conv_smem configuration, or None if it does not fit.

    Score = useful lanes (threads rounded up to warps) x useful outputs (tiles rounded up
    to micro-tiles) x latency cover (resident warps per SM, saturating at 16)."""
    lv = 16 // ITEMSIZE[ACC_DTYPE[dtype]]
    if (tw * pr.SW) % lv:
        return None
    if bh is None:
        # 32 x 64 output tiles, or whole planes when they are small. Also the whole
        # plane where its micro-tiles fill at most four warps and there are planes for
        # two per SM; it wins equal scores (no halo staged twice, and smem_launch then
        # copies only the plane: replk_31x31 float32, 7x4 micro-tiles, 56 x 56 planes
        # against 28 x 56 tiles, 2 tiles per block: forward 657.6 -> 636.5 us, grad
        # input 657.7 -> 625.6).
        whole_h, whole_w = _cdiv(pr.OH, th) * th, _cdiv(pr.OW, tw) * tw
        tiles = [(min(whole_h, max(th, (32 // th) * th)), min(whole_w, max(tw, (64 // tw) * tw)))]
        if ((whole_h, whole_w) != tiles[0] and (whole_h // th) * (whole_w // tw) <= SMEM_WHOLE_UNITS
                and pr.planes >= 2 * sms):
            tiles.insert(0, (whole_h, whole_w))
        found = [c for c in (_smem_candidate(pr, dtype, th, tw, h, w, tiles_per_block, sms) for h, w in tiles) if c]
        return max(found, key=lambda c: c[0]) if found else None  # the first of equal scores
    pitch, per_tile, rwv, kwp, rtf = _smem_geometry(pr, dtype, th, tw, bh, bw)
    # Two input rows in flight, a weight row and the accumulators must fit 128 registers
    # (ptxas report: 31-wide kernels spill with TW = 8, fit with TW = 4; a float64 value
    # takes two: 13x13 on 4x8 tiles spilled 580-756 bytes, 31x31 on any tile 924-1500).
    words = ITEMSIZE[ACC_DTYPE[dtype]] // 4
    if words * (th * tw + 2 * rwv + kwp) > 132 or th * tw > 64:
        return None
    units_per_tile = (bh // th) * (bw // tw)
    n_tx, n_ty = _cdiv(pr.OW, bw), _cdiv(pr.OH, bh)
    n_tiles = pr.planes * n_tx * n_ty
    useful_outputs = pr.OH * pr.OW / (n_ty * bh * n_tx * bw)
    best = None
    choices = [tiles_per_block] if tiles_per_block else range(1, 65)
    for tp in choices:
        threads = tp * units_per_tile
        if threads > SMEM_MAX_THREADS or tp * per_tile > SM_SMEM or tp > max(1, n_tiles):
            break
        block = _cdiv(threads, 32) * 32
        blocks_per_sm = min(SM_SMEM // (tp * per_tile), SM_THREADS // block, 32)
        warps = blocks_per_sm * block // 32
        score = (threads / block) * useful_outputs * min(1.0, warps / 16) * (1.0 if th * tw >= 16 else 0.85)
        if best is None or score > best[0] + 1e-9:
            best = (score, dict(th=th, tw=tw, bh=bh, bw=bw, tiles_per_block=tp, pitch=pitch, per_tile=per_tile, rtf=rtf,
                                n_tx=n_tx, n_ty=n_ty, n_tiles=n_tiles, block=block))
    return best


def smem_launch(pr, dtype, th=None, tw=None, bh=None, bw=None, tiles_per_block=None, mid=None, whole=None, arch=90,
                sms=132):
    """conv_smem plan (MODE 0 correlations, optionally with the flipped kernel); None if
    the shape does not fit. Forced for sweeps: th tw (micro-tile), bh bw (tile),
    tiles_per_block, mid (test-free body for the rows that feed every output row), whole
    (0 stages windows, 1 whole planes through registers, 2 whole planes by cp.async;
    whole planes only where a tile is a whole plane, cp.async only on sm_80+ without
    conversion)."""
    if pr.mode != 0 or pr.KW > SMEM_MAX_KW or (pr.flip and (pr.SH, pr.SW) != (1, 1)):
        return None
    shapes = [(th, tw)] if th is not None else SMEM_SHAPES
    found = [c for c in (_smem_candidate(pr, dtype, a, b, bh, bw, tiles_per_block, sms) for a, b in shapes) if c]
    if not found:
        return None
    cfg = max(found, key=lambda c: c[0])[1]
    smem = cfg["tiles_per_block"] * cfg["per_tile"]
    planes = cfg["n_tx"] == 1 and cfg["n_ty"] == 1
    whole = (2 if whole is None else int(whole)) if planes else 0
    if whole == 2 and (arch < 80 or ACC_DTYPE[dtype] != dtype):
        whole = 1  # cp.async needs sm_80 and copies without converting
    if whole == 2 and tiles_per_block is None:
        # Whole planes by cp.async: small blocks, the fewest tiles (at most 4, and a
        # block for every SM) whose threads fill their warps best. Each block waits for
        # its own copies only, so small blocks overlap one another's staging with their
        # FMAs, and lanes past a tile's threads still cost issue slots:
        # - replk_13x13 float32, 7x4 tiles of 28 threads (7/8 of a warp at any P <= 4):
        #   8 tiles per block 96.1 us, 4 91.5, 2 89.8, 1 88.7;
        # - replk_31x31 float32, 112 threads per 56 x 56 plane: 1 tile per block (4 warps,
        #   the last half empty) 657.7 us, 2 tiles (7 full warps) 636.5, 4 678.7.
        units = (cfg["bh"] // cfg["th"]) * (cfg["bw"] // cfg["tw"])
        best = None
        for tp in range(1, 5):
            small = _smem_candidate(pr, dtype, cfg["th"], cfg["tw"], cfg["bh"], cfg["bw"], tp, sms)
            if small is None or (tp > 1 and _cdiv(cfg["n_tiles"], tp) < sms):
                break
            lanes = tp * units / small[1]["block"]
            if best is None or lanes > best[0] + 1e-9:
                best = (lanes, small[1])
        if best is not None:
            cfg = best[1]
            smem = cfg["tiles_per_block"] * cfg["per_tile"]
    if mid is None:
        # The second body costs registers: 31-wide kernels spill with it (float32 7x4
        # tiles), and so do float64 13x13 (4x4).
        mid = whole > 0 and pr.KW <= 16 and ACC_DTYPE[dtype] == "float32"
    expr = "dw::conv_smem<" + _targs(
        CXX_TYPE[dtype], pr.KH, pr.KW, pr.SH, pr.SW, pr.DH, pr.DW, cfg["th"], cfg["tw"], pr.flip, bool(mid), whole
    ) + ">"
    args = pack_args("SmemArgs", n_tiles=cfg["n_tiles"], IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, pad_t=pr.PT,
                     pad_l=pr.PL, BH=cfg["bh"], BW=cfg["bw"], n_tx=cfg["n_tx"], n_ty=cfg["n_ty"],
                     P=cfg["tiles_per_block"], pitch=cfg["pitch"], RTF=cfg["rtf"], **_channel_fields(pr))
    grid = (max(1, min(_cdiv(cfg["n_tiles"], cfg["tiles_per_block"]), INT32_MAX)), 1, 1)
    return Launch("conv.cu", expr, grid, (cfg["block"], 1, 1), smem, (args,))


# ---- conv_plane (small planes, whole planes per block) -----------------------------------

PLANE_MAX_TAPS = 64     # weights live in registers
PLANE_MAX_ROW = 64      # one input row and ROWS x OW sums live in registers
PLANE_SMEM = 48 * 1024  # per block; small blocks, several per SM


def _up16(nbytes):
    return _cdiv(nbytes, 16) * 16


def plane_smem_bytes(pr, dtype, planes_per_block, stages=1):
    """Dynamic shared memory of conv_plane (mirrors its layout in cuda/plane.cu): per
    stage, the weights (two runs, two 16-byte vectors of slack) and the input planes (one
    vector of slack); then the output planes (one vector of slack); all in the storage
    type, every region starting on a 16-byte boundary."""
    size = ITEMSIZE[dtype]
    v = 16 // size
    pr_planes = planes_per_block * pr.R
    stage = _up16((pr_planes * pr.KH * pr.KW + 2 * v) * size) + _up16((pr_planes * pr.IH * pr.IW + v) * size)
    return stages * stage + _up16((planes_per_block * pr.OH * pr.OW + v) * size)


def _plane_rows(pr):
    """Output rows per thread: as many as 64 sums allow, so the whole plane on 7x7 (one
    thread per plane, every index a constant). Sweep (H100, float32, session 5):
    convnext_7x7_s4 1 / 2 / 4 / 7 rows 0.030 / 0.023 / 0.021 / 0.0205 ms. One-row kernels
    (1 x K) share no input rows between a thread's output rows, so they take one row per
    thread and more threads (`_plane_block`)."""
    if pr.KH == 1:
        return 1
    return max(1, min(pr.OH, PLANE_MAX_ROW // pr.OW))


def _plane_block(per_plane_threads, smem_of, plane_bytes=None):
    """(P, block): planes per block and threads (rounded up to warps), within the
    shared-memory budget.

    In general: the fewest idle lanes, then the block nearest 128 threads, of at most 256.
    One-row kernels at one row per thread (`plane_bytes` given: the input plane's bytes):
    blocks of at most 160 threads (more, smaller blocks per SM), groups whose input run
    starts on a 16-byte boundary (P * plane_bytes a multiple of 16: no scalar head or
    tail), then the fewest idle lanes, then more planes. Sweep (H200, session 14,
    inception_1x7 float32, forward / grad input, ms): 3 rows x 16 planes (96 threads, the
    general rule) 0.0105 / 0.0101; one row: 15 planes (256 threads) 0.0105 / 0.0107, 8
    planes (160 threads) 0.0096 / 0.0091, 7 planes 0.0099 / 0.0094, 9-11 planes
    0.0101-0.0102 / 0.0098-0.0099, 4 planes 0.0113."""
    max_threads = 256 if plane_bytes is None else 160
    best = None
    for p in range(1, max_threads // per_plane_threads + 1):
        if smem_of(p) > PLANE_SMEM:
            break
        threads = p * per_plane_threads
        block = _cdiv(threads, 32) * 32
        if plane_bytes is None:
            key = (threads / block, -abs(block - 128))
        else:
            key = ((p * plane_bytes) % 16 == 0, threads / block, p)
        if best is None or key > best[0]:
            best = (key, p, block)
    return None if best is None else best[1:]


def _plane_regs(pr, dtype, rows):
    """Registers conv_plane needs (32-bit): weights, sums and the window's rows (ptxas
    hoists their shared-memory reads; 7x7 at 7 rows: 177 unconstrained), plus ~40 for
    addresses and loop state; float64 values take two registers."""
    win = min(pr.IH, (rows - 1) * pr.SH + (pr.KH - 1) * pr.DH + 1)
    values = pr.KH * pr.KW + rows * pr.OW + win * pr.IW
    return values * (2 if ITEMSIZE[dtype] == 8 else 1) + 40


# Stages of conv_plane by default: 1. Sweep (H100, float32, session 6), forward / grad
# input in ms: convnext_7x7_s4 one stage 0.0157 / 0.0156, two stages (persistent,
# double-buffered) 0.0178-0.0228 / 0.0173-0.0202 over planes per block 16-96;
# inception_1x7 0.0113 / 0.0108 against 0.0113-0.0128 / 0.0113-0.0127. Two stages double
# the shared memory of a block, and the blocks then resident per SM hold fewer warps
# than the FMAs of a 7x7 plane need.
PLANE_STAGES = 1


def plane_launch(pr, dtype, rows=None, stages=None, planes=None, blocks=None, sms=132):
    """conv_plane plan (MODE 0 correlations, optionally with the rotated kernel, at any
    stride); None if the shape does not fit its register and shared-memory budget.
    `stages` 2 runs persistent double-buffered blocks (at most `blocks`, else as many as
    are resident on `sms` multiprocessors); `planes` fixes the planes per block."""
    if pr.mode != 0 or pr.KH * pr.KW > PLANE_MAX_TAPS or pr.IW > PLANE_MAX_ROW or min(pr.OH, pr.OW) < 1:
        return None
    if rows is None:
        rows = _plane_rows(pr)
        while rows > 1 and _plane_regs(pr, dtype, rows) > 240:
            rows = _cdiv(rows, 2)  # float64 7x7: bands of 4 rows, not a spilling whole plane
    rows = min(rows, pr.OH)
    if rows * pr.OW > PLANE_MAX_ROW:
        return None
    stages = PLANE_STAGES if stages is None else stages
    nb = _cdiv(pr.OH, rows)
    if planes is None:
        one_row = rows == 1 and pr.KH == 1 and stages == 1
        fit = _plane_block(nb, lambda p: plane_smem_bytes(pr, dtype, p, stages),
                           pr.IH * pr.IW * ITEMSIZE[dtype] if one_row else None)
    else:
        fit = (planes, _cdiv(planes * nb, 32) * 32)
        if fit[1] > 1024 or plane_smem_bytes(pr, dtype, planes, stages) > SM_SMEM:
            fit = None
    if fit is None:
        return None
    planes_per_block, block = fit
    minb = _plane_minb(block, _plane_regs(pr, dtype, rows))
    smem = plane_smem_bytes(pr, dtype, planes_per_block, stages)
    expr = "dw::conv_plane<" + _targs(
        CXX_TYPE[dtype], pr.KH, pr.KW, pr.SH, pr.SW, pr.DH, pr.DW, pr.IH, pr.IW, pr.OH, pr.OW, pr.PT, pr.PL,
        rows, pr.flip, stages, block, minb
    ) + ">"
    args = pack_args("PlaneArgs", n_planes=pr.planes, P=planes_per_block, **_channel_fields(pr))
    groups = _cdiv(pr.planes, planes_per_block)
    if stages > 1:  # persistent: as many blocks as are resident at once
        per_sm = max(1, min(minb, SM_SMEM // (smem + 1024), SM_THREADS // block))
        groups = min(groups, sms * per_sm)
    grid = (max(1, min(groups, blocks or INT32_MAX, INT32_MAX)), 1, 1)
    return Launch("plane.cu", expr, grid, (block, 1, 1), smem, (args,))


# ---- conv_batch (small planes: units of 1 or 4 channels across the batch) ----------------

BATCH_MAX_ROW = 64   # OW sums, one staged row and one weight row live in registers
# The dispatcher's limits on plane rows (warps per block) and columns: measured 7 and 14;
# every specialization within them compiles without spills (tests/test_compile.py,
# test_batch_plans_never_spill). float64 on 13 to 16 rows spills some (3x5 on 15 x 15,
# 7x5 on 13 x 13: 4-28 bytes at 128 registers).
BATCH_MAX_SIDE = 16
BATCH_MAX_SIDE_F64 = 12


def _batch_small(dtype, kh, kw, steps, sides):
    """The limits the dispatcher shares between conv_batch and bwd_batch: stride 1 and
    dilation 1 (`steps`), a kernel of more than one row, plane sides of at most
    BATCH_MAX_SIDE (float64: BATCH_MAX_SIDE_F64), and at most 64 taps, or rows of at
    most BATCH_MAX_ROW taps past that in float32 and 16-bit (_batch_large)."""
    limit = BATCH_MAX_SIDE_F64 if dtype == "float64" else BATCH_MAX_SIDE
    if kh <= 1 or tuple(steps) != (1, 1, 1, 1) or max(sides) > limit:
        return False
    return kh * kw <= PLANE_MAX_TAPS or (dtype != "float64" and kw <= BATCH_MAX_ROW)


def _batch_large(kh, kw):
    """Kernels past 64 taps on conv_batch's small planes (RepLKNet's later stages: 13x13 on
    7 x 7 and 14 x 14, 27x27 on 14 x 14). A warp's row skips the tap rows outside the
    plane and the columns outside it at compile time, so a 13x13 kernel on a 7 x 7 plane
    costs 49 FMAs an output, not 169; the tensor-core and lines paths pay for the padding
    taps or for whole-plane staging per block. Measured (H200, benchmarks/ab.py, us,
    conv_batch against the previous plan; forward, grad input alike): 32 x 1024 planes of
    7 x 7 under 13x13 float32 13.0 against conv_lines' 39.1, float16 13.8 / bfloat16 14.0
    against conv_mma's 153-155; 32 x 512 planes of 14 x 14 under 13x13 float32 26.3
    against 62.0, float16 25.6 against 73.4; under 27x27 float32 49.6 against 77.7,
    float16 53.5 against 288; 64 x 256 planes of 16 x 16 under 9x9 float32 21.5 against
    40.0. 16-bit problems conv_stack takes stay there (9x9 on 16 x 16 float16: conv_stack
    13.2 against 21.7). float64 keeps its 64-tap limit (not measured; its 12-side planes
    already fill the registers)."""
    return kh * kw > PLANE_MAX_TAPS


def _batch_plane_stride(dtype, h, w):
    """Staged plane stride (accumulator elements) of conv_batch and bwd_batch (mirrors
    BatchLayout in cuda/plane.cu): rows padded to whole 16-byte reads, an odd number of
    16-byte slots per plane."""
    acc = ITEMSIZE[ACC_DTYPE[dtype]]
    lv = 16 // acc
    ps = h * (_cdiv(w, lv) * lv)
    return ps if (ps * acc // 16) % 2 == 1 else ps + lv


def batch_out_pitch(dtype, cg, plane):
    """Pitch (storage elements) of one image's staged output run of `cg` planes of
    `plane` elements (mirrors batch_out_pitch in cuda/plane.cu)."""
    size = ITEMSIZE[dtype]
    if cg > 1:
        run, ve = cg * plane, 16 // size
        return run if (run * size // 16) % 2 == 1 else run + ve
    if size == 2:
        e = _cdiv(plane, 2) * 2
        return e + (2 if (e // 2) % 2 == 0 else 0)
    return plane + (1 if plane % 2 == 0 else 0)


def _batch_layout(pr, dtype, cg=1):
    """(LV, RP, IS, KWP, OPS, VE) of conv_batch's shared memory and accesses (mirrors
    BatchLayout and the kernel's constants in cuda/plane.cu): accumulator values per
    16-byte read, staged row pitch, staged plane stride (an odd number of 16-byte slots),
    weight row pitch, output run pitch (storage elements), storage elements per global
    access."""
    lv = 16 // ITEMSIZE[ACC_DTYPE[dtype]]
    ve = 1 if cg == 1 else 16 // ITEMSIZE[dtype]
    return (lv, _cdiv(pr.IW, lv) * lv, _batch_plane_stride(dtype, pr.IH, pr.IW), _cdiv(pr.KW, lv) * lv,
            batch_out_pitch(dtype, cg, pr.OH * pr.OW), ve)


def batch_smem_bytes(pr, dtype, cg=1):
    """Dynamic shared memory of conv_batch: the unit's weights and its 32 staged input
    planes (accumulation type), then its output runs (storage type)."""
    acc = ITEMSIZE[ACC_DTYPE[dtype]]
    _, _, image, kwp, ops, _ = _batch_layout(pr, dtype, cg)
    return _up16(cg * pr.KH * kwp * acc) + 32 * image * acc + _up16((32 // cg) * ops * ITEMSIZE[dtype])


def _batch_runs(dtype, cg, block, h, w):
    """(flat, accesses per thread, storage elements per access, registers per access) of
    one tensor's loads in a batch unit (mirrors BatchRuns in cuda/plane.cu: flat where it
    holds fewer registers than by image and at most two accesses a thread)."""
    size = ITEMSIZE[dtype]
    ve = 1 if cg == 1 else 16 // size
    vr = _cdiv(ve * size, 4)
    rv = cg * h * w // ve
    ni, nw = 32 // cg, block // 32
    jw, jf = _cdiv(rv, 32), _cdiv(ni * rv, block)
    flat = jf <= 2 and jf * (vr + ve + 2) < _cdiv(ni, nw) * jw * vr + jw * ve
    return (True, jf, ve, vr) if flat else (False, _cdiv(ni, nw) * jw, ve, vr)


def _batch_runs_regs(dtype, cg, block, h, w, offsets_only=False):
    """Registers of one tensor's loads in flight and their shared-memory offsets in a
    batch unit (flat: one set per access; by image: one per access of a run, shared by
    the images), or of the offsets alone."""
    flat, jv, ve, vr = _batch_runs(dtype, cg, block, h, w)
    offsets = jv * ve if flat else _cdiv(cg * h * w // ve, 32) * ve
    return offsets if offsets_only else jv * vr + offsets


def _batch_regs(pr, dtype, cg=1):
    """Registers conv_batch needs (32-bit): the row's sums, one staged row and one weight
    row, the next unit's loads in flight and their shared-memory offsets
    (_batch_runs_regs), plus ~32 for addresses and loop state."""
    _, rp, _, kwp, _, _ = _batch_layout(pr, dtype, cg)
    wide = ITEMSIZE[ACC_DTYPE[dtype]] // 4
    return (pr.OW + rp + kwp) * wide + _batch_runs_regs(dtype, cg, pr.OH * 32, pr.IH, pr.IW) + 32


def _batch_groups(pr, dtype, x_ptr):
    """Channels per conv_batch unit: 4 (16-byte staging and stores) where float32 runs
    of 4 channels start on 16-byte boundaries (4 | channels, the input pointer 16-byte
    aligned) and each output channel reads its own input plane; else 1."""
    ok = ITEMSIZE[dtype] == 4 and pr.DIV == 1 and pr.QC % 4 == 0 and pr.IC % 4 == 0 and x_ptr % 16 == 0
    return 4 if ok else 1


def _batch_spans_fit(dtype, cg, *tensors):
    """Whether a batch unit's 32 / cg images of each tensor ((channels, plane elements)
    pairs) span fewer than 2^31 bytes: conv_batch keeps each thread's offsets past the
    unit's first element in 32 bits (BatchRuns and BatchOut with BOFF)."""
    return all((32 // cg) * c * hw * ITEMSIZE[dtype] < 2**31 for c, hw in tensors)


def _batch_minb(block, need, smem):
    """Blocks per SM of conv_batch and bwd_batch (their launch bound and persistent grid):
    as many as registers (`need` per thread), threads and shared memory allow."""
    return max(1, min(_plane_minb(block, need), SM_THREADS // block, SM_SMEM // (smem + 1024)))


def batch_launch(pr, dtype, x_ptr=0, cg=None, minb=None, blocks=None, sms=132):
    """conv_batch plan (MODE 0 correlations with one input plane per output plane, at any
    stride, optionally with the rotated kernel); None if a warp per output row does not
    fit a block, or `cg` 4 is asked where its runs are not 16-byte vectors. `cg` channels
    per unit (default `_batch_groups`); persistent blocks, at most `blocks` (default: as
    many as are resident on `sms` multiprocessors)."""
    if pr.mode != 0 or pr.R != 1 or max(pr.OW, pr.IW, pr.KW) > BATCH_MAX_ROW or min(pr.OH, pr.OW) < 1:
        return None
    fit = _batch_groups(pr, dtype, x_ptr)
    cg = fit if cg is None else cg
    if cg not in (1, fit):
        return None
    block = pr.OH * 32
    smem = batch_smem_bytes(pr, dtype, cg)
    if (block > 1024 or smem > SM_SMEM
            or not _batch_spans_fit(dtype, cg, (pr.IC, pr.IH * pr.IW), (pr.QC, pr.OH * pr.OW))):
        return None
    minb = _batch_minb(block, _batch_regs(pr, dtype, cg), smem) if minb is None else minb
    expr = "dw::conv_batch<" + _targs(
        CXX_TYPE[dtype], pr.KH, pr.KW, pr.SH, pr.SW, pr.DH, pr.DW, pr.IH, pr.IW, pr.OH, pr.OW, pr.PT, pr.PL,
        pr.flip, cg, minb
    ) + ">"
    n = pr.planes // pr.QC
    units = pr.QC // cg * _cdiv(n, 32 // cg)
    args = pack_args("BatchArgs", units=units, IC=pr.IC, N=n, QC=pr.QC, DIV=pr.DIV)
    grid = (max(1, min(units, blocks or sms * minb, INT32_MAX)), 1, 1)
    return Launch("plane.cu", expr, grid, (block, 1, 1), smem, (args,))


def _bwd_batch_layout(p, dtype, cg):
    """(x plane stride, grad_output plane stride, KWP, OPS, VE) of bwd_batch (mirrors
    cuda/plane.cu): conv_batch's staged planes for x (H x W) and grad_output (OH x OW),
    its weight rows, and its output runs for the grad_x planes."""
    lv = 16 // ITEMSIZE[ACC_DTYPE[dtype]]
    ve = 1 if cg == 1 else 16 // ITEMSIZE[dtype]
    return (_batch_plane_stride(dtype, p.H, p.W), _batch_plane_stride(dtype, p.OH, p.OW), _cdiv(p.KW, lv) * lv,
            batch_out_pitch(dtype, cg, p.H * p.W), ve)


def bwd_batch_smem_bytes(p, dtype, cg=1):
    """Dynamic shared memory of bwd_batch: the unit's weights, its 32 staged x planes and
    32 grad_output planes (accumulation type), then its grad_x runs (storage type)."""
    acc = ITEMSIZE[ACC_DTYPE[dtype]]
    xs, gs, kwp, ops, _ = _bwd_batch_layout(p, dtype, cg)
    return _up16(cg * p.KH * kwp * acc) + 32 * (xs + gs) * acc + _up16((32 // cg) * ops * ITEMSIZE[dtype])


def _bwd_batch_regs(p, dtype, cg=1):
    """Registers bwd_batch needs (32-bit): the larger phase (a grad_x row's sums, a
    grad_output row and a weight row; or a tap row's sums and two rows), the next unit's
    x and grad_output loads in flight with their shared-memory offsets (_batch_runs_regs;
    the offsets once where both planes have the same shape: the compiler shares them),
    and the rest: 24 with flat loads, 36 by image (ptxas of the compile test's grid of
    batch plans, NVRTC 13.0 and 13.x: one channel per unit on 7 x 7 planes spilled 8
    bytes at a cap of 80 with 28)."""
    lv = 16 // ITEMSIZE[ACC_DTYPE[dtype]]
    kwp = _bwd_batch_layout(p, dtype, cg)[2]
    wide = ITEMSIZE[ACC_DTYPE[dtype]] // 4
    rx, rg = _cdiv(p.W, lv) * lv, _cdiv(p.OW, lv) * lv
    phase = max(p.W + rg + kwp, p.KW + rg + rx)
    block = p.H * 32
    runs = _batch_runs_regs(dtype, cg, block, p.H, p.W) + _batch_runs_regs(dtype, cg, block, p.OH, p.OW)
    if (p.H, p.W) == (p.OH, p.OW):
        runs -= _batch_runs_regs(dtype, cg, block, p.H, p.W, offsets_only=True)
    flat = _batch_runs(dtype, cg, block, p.H, p.W)[0] and _batch_runs(dtype, cg, block, p.OH, p.OW)[0]
    return phase * wide + runs + (24 if flat else 36)


def _bwd_batch_rotation(p):
    """bwd_batch's tap-row rotation: warp w sums grad_x row w and tap rows (w + rot) % H
    + i*H; the rotation whose busiest warp has the fewest row products (a grad_x row's:
    the tap rows that meet grad_output rows; a tap row's: the grad_output rows that meet
    x rows), the first of equals. Each unit waits for its slowest warp."""
    nw = p.H
    gx = [sum(0 <= t + p.PT - kh * p.DH < p.OH for kh in range(p.KH)) for t in range(nw)]
    taps = [sum(0 <= oh - p.PT + kh * p.DH < p.H for oh in range(p.OH)) for kh in range(p.KH)]

    def busiest(rot):
        load = list(gx)
        for kh, n in enumerate(taps):
            load[(kh % nw - rot) % nw] += n
        return max(load)

    return min(range(nw), key=busiest)


def _bwd_batch_vectors(p, dtype, x_ptr, go_ptr):
    """Whether bwd_batch's runs of 4 channels are 16-byte vectors: float32, 4 | channels,
    x and grad_output 16-byte aligned."""
    return ITEMSIZE[dtype] == 4 and p.C % 4 == 0 and x_ptr % 16 == 0 and go_ptr % 16 == 0


def _bwd_batch_groups(p, dtype, x_ptr, go_ptr):
    """Channels per bwd_batch unit: 4 where its runs are 16-byte vectors and their loads
    fit a block's registers (7x7 on 14 x 14: not), else 1."""
    if _bwd_batch_vectors(p, dtype, x_ptr, go_ptr) and _bwd_batch_regs(p, dtype, 4) <= reg_cap(p.H * 32, 1):
        return 4
    return 1


def bwd_batch_launch(p, dtype, x_ptr=0, go_ptr=0, cg=None, minb=None, blocks=None, sms=132):
    """bwd_batch plan (the whole backward of small planes in conv_batch's units: stride 1,
    multiplier 1): (launch, chunks), or None where it does not take the problem. `cg`
    channels per unit (default `_bwd_batch_groups`; 4 only where the runs are 16-byte
    vectors); persistent blocks, at most `blocks` (default: as many as are resident on
    `sms` multiprocessors); chunks = batch chunks of 32 / cg images (the partial rows per
    channel)."""
    if (p.M != 1 or (p.SH, p.SW) != (1, 1) or max(p.W, p.OW, p.KW) > BATCH_MAX_ROW
            or min(p.N, p.C, p.H, p.W, p.OH, p.OW) < 1):
        return None
    block = p.H * 32
    cg = _bwd_batch_groups(p, dtype, x_ptr, go_ptr) if cg is None else cg
    if cg not in (1, 4) or (cg == 4 and not _bwd_batch_vectors(p, dtype, x_ptr, go_ptr)):
        return None
    smem = bwd_batch_smem_bytes(p, dtype, cg)
    if block > 1024 or smem > SM_SMEM:
        return None
    if minb is None:
        minb = _batch_minb(block, _bwd_batch_regs(p, dtype, cg), smem)
        if _batch_large(p.KH, p.KW):
            # Past 64 taps the estimate misses (13x13 on 7 x 7 float32, 4 channels a unit,
            # spilled 32 bytes at 3 blocks per SM): at most 2 blocks, one above 8 warps.
            minb = min(minb, 2 if block <= 256 else 1)
    expr = "dw::bwd_batch<" + _targs(
        CXX_TYPE[dtype], p.KH, p.KW, p.DH, p.DW, p.H, p.W, p.OH, p.OW, p.PT, p.PL, cg, _bwd_batch_rotation(p), minb
    ) + ">"
    chunks = _cdiv(p.N, 32 // cg)
    units = p.C // cg * chunks
    args = pack_args("BatchArgs", units=units, IC=p.C, N=p.N, QC=p.C, DIV=1)
    grid = (max(1, min(units, blocks or sms * minb, INT32_MAX)), 1, 1)
    return Launch("plane.cu", expr, grid, (block, 1, 1), smem, (args,)), chunks


def _use_bwd_batch(p, dtype, x_ptr=0, go_ptr=0, arch=90):
    """The backward of small planes (stride 1 and dilation 1, no multiplier, kernels of
    more than one row and at most 64 taps, planes of at most 16 rows and columns, float64
    12, as _use_batch) in float32 from 25 taps and in float64, where its registers fit a
    block. Measured (H200, benchmarks/ab.py --pass backward, us, 64 images; NOTES session
    28): convnext_7x7_s4 float32 24.1-25.0 against bwd_plane's 26.7-26.9; 5x5 on 7x7 (240
    channels) 12.0 against 15.4; 7x7 on 14 x 14 (96 channels) 21.5 against bwd_rows' 23.9;
    float64 convnext_7x7_s4 41.6 against 91 for its separate grad input and weight
    gradient. 16-bit stays with bwd_mma and bwd_plane (7x7 on 14 x 14 float16: 20.2
    against bwd_mma's 17.6) up to 64 taps; past 64 taps see _bwd_batch_large."""
    if (p.M != 1 or (dtype in MMA_DTYPES and not _batch_large(p.KH, p.KW))
            or not _batch_small(dtype, p.KH, p.KW, (p.SH, p.SW, p.DH, p.DW), (p.H, p.W, p.OH, p.OW))):
        return False
    if dtype == "float32" and p.KH * p.KW < 25:
        return False
    if _batch_large(p.KH, p.KW):
        return _bwd_batch_large(p, dtype, x_ptr, arch)
    cg = _bwd_batch_groups(p, dtype, x_ptr, go_ptr)
    return _bwd_batch_regs(p, dtype, cg) <= reg_cap(p.H * 32, 1)


BWD_BATCH_LARGE_MAX_TAPS_F32 = 13 * 13


def _bwd_batch_large(p, dtype, x_ptr=0, arch=90):
    """bwd_batch for kernels past 64 taps (_batch_large), against the split backward (grad
    input on conv_batch, weight gradient on wgrad_lines or the tensor cores). Measured
    (H200, benchmarks/ab.py, us; bwd_batch / grad input + weight gradient timed apart):
    13x13 on 32 x 1024 x 7 x 7 float32 28.1 / 12.9 + 38.8, float16 30.2 / 13.8 + 196
    (wgrad_mma); on 32 x 512 x 14 x 14 float32 55.0 / 27.0 + 42.4, float16 53.3 / 25.7 +
    128; 9x9 on 64 x 256 x 16 x 16 float32 45.0 / 21.4 + 32.3. Not taken: float32 past
    169 taps (27x27 on 14 x 14: 203.9 / 48.5 + 118.0, its tap rows' sums hold the block's
    registers at one block per SM), and 16-bit problems whose forward conv_stack takes
    (9x9 on 16 x 16 float16: 44.4 / 13.4 + 24.6 on conv_stack and wgrad_stack). Blocks
    of more than 8 warps run one per SM (bwd_batch_launch); their registers are not
    estimated: the compile test's grid of large kernels checks ptxas's report."""
    if dtype == "float32" and p.KH * p.KW > BWD_BATCH_LARGE_MAX_TAPS_F32:
        return False
    return _large_on_stack(forward_problem(p), dtype, x_ptr, arch) is None


# ---- conv_lines (large kernels on whole planes: a line per thread) ---------------------

LINES_MIN_TAPS = TILE_MAX_TAPS + 1  # smaller kernels go to the tile and row families
LINES_SUM_BUDGET = 100              # 32-bit registers for a line's sums and one tap row
LINES_MAX_BLOCK = 512
LINES_MAX_PLANES = 32


def _lines_wv(pr):
    """Weights in tap rows of whole vectors (read as 16-byte vectors) for kernels up to 16
    wide, packed (read one by one, just before use) above. Measured (H200, float32
    forward, us): replk_13x13 vectors 56.0, packed 58.1; replk_31x31 vectors 403.9,
    packed 394.2 (grad input 404.5 / 399.3): 31-wide rows of vectors hold 32 registers
    from the loop's start at 125 of 128."""
    return pr.KW <= 16


def lines_pitch(dtype, ihw):
    """conv_lines' plane pitch in shared memory (elements; mirrors lines_pitch in
    cuda/plane.cu): whole 16-byte vectors, an odd number of them."""
    v = 16 // ITEMSIZE[dtype]
    vecs = _cdiv(ihw, v)
    return (vecs if vecs % 2 else vecs + 1) * v


def _lines_kwp(pr, dtype):
    """conv_lines' tap-row pitch in shared memory: KW rounded up to whole 16-byte vectors."""
    v = 16 // ITEMSIZE[dtype]
    return _cdiv(pr.KW, v) * v


def lines_smem_bytes(pr, dtype, planes, wv=True):
    """Dynamic shared memory of conv_lines: the weights of P*R channels in tap rows of KWP
    elements (WUP per channel), then P*R planes PITCH elements apart."""
    size = ITEMSIZE[dtype]
    v = 16 // size
    if wv:
        wup = pr.KH * _lines_kwp(pr, dtype)
        wup += 0 if (wup // v) % 2 else v  # an odd number of vectors per unit, as the planes
    else:
        wup = pr.KH * pr.KW + (1 - pr.KH * pr.KW % 2)
    w = _up16(planes * pr.R * wup * size)
    return w + planes * pr.R * lines_pitch(dtype, pr.IH * pr.IW) * size


def _lines_width(pr, dtype):
    """(CW, NSEG): output columns per thread and segments per row. A whole row where its
    sums and one tap row of weights fit LINES_SUM_BUDGET registers (4-byte; twice that
    for float64), else the fewest segments of whole vectors that do."""
    words = ITEMSIZE[dtype] // 4
    v = 16 // ITEMSIZE[dtype]
    budget = LINES_SUM_BUDGET // words - _lines_kwp(pr, dtype)
    if budget < v:
        return None
    nseg = _cdiv(pr.OW, budget // v * v)
    cw = _cdiv(_cdiv(pr.OW, nseg), v) * v if nseg > 1 else pr.OW
    return cw, _cdiv(pr.OW, cw)


def _lines_regs(pr, dtype, cw):
    """Registers of a conv_lines thread (CW sums and one tap row of weights) or of a
    wgrad_lines thread (CW = OW: a grad_output row and KW sums), plus ~36 for input
    vectors, addresses and loop state (ptxas, sm_90: conv_lines 13x13 on 28 columns
    72-79, 31x31 on 56 columns 118-125, on 28 columns 95; wgrad_lines 59 and 93)."""
    return (cw + pr.KW) * (ITEMSIZE[dtype] // 4) + 36


def _lines_resident(block, regs, smem):
    return min(SM_THREADS // block, 65536 // (block * _cdiv(regs, 8) * 8), SM_SMEM // (smem + 1024))


def lines_launch(pr, dtype, planes=None, minb=None, wv=None, cw=None, sms=132):
    """conv_lines plan (MODE 0 correlations at stride 1 and dilation 1, optionally with the
    rotated kernel; float32 and float64), a block per group of planes; None if the shape
    does not fit. `planes` fixes the planes per block; `minb` fixes the blocks-per-SM
    launch bound (registers then as ptxas caps them); `wv` the weight layout (see
    _lines_wv); `cw` the output columns per thread (whole 16-byte vectors).

    Planes per block: a block for every SM where there are planes for it, then two or
    more resident blocks per SM (one block's copies overlap another's FMAs), then the most
    useful lanes (P*OH lines over whole warps), then the most planes computed per
    resident wave slot (no short last wave), then more planes (a warp spans fewer row
    ranks, so its lines' tap counts differ less). Measured (H200, float32 forward, us):
    replk_13x13 2 / 4 / 8 / 16 planes 60.6 / 60.5 / 57.6 / 63.6 (16: one block of 14
    warps per SM), replk_31x31 1 / 2 / 4 planes 455.0 / 427.1 / 391.5; lower register
    caps for more blocks per SM gained nothing (replk_13x13 8 planes at 4 blocks per SM
    57.9, 4 at 8 62.2); persistent blocks with two stages (the next group copied in during
    this one's FMAs) were slower (62.0 against 57.0 at 8 planes; benchmarks/NOTES.md,
    sessions 21 and 22) and were removed."""
    if (pr.mode != 0 or dtype not in ("float32", "float64") or (pr.SH, pr.SW, pr.DH, pr.DW) != (1, 1, 1, 1)
            or pr.KH * pr.KW < LINES_MIN_TAPS or min(pr.OH, pr.OW) < 1):
        return None
    width = _lines_width(pr, dtype)
    if width is None:
        return None
    cw, nseg = width if cw is None else (cw, _cdiv(pr.OW, cw))
    if cw % (16 // ITEMSIZE[dtype]) and nseg > 1:
        return None
    regs = _lines_regs(pr, dtype, cw)
    wv = _lines_wv(pr) if wv is None else wv
    best = None
    for p in ([planes] if planes is not None else range(1, LINES_MAX_PLANES + 1)):
        warps = _cdiv(p * pr.OH, 32)
        block = nseg * warps * 32
        smem = lines_smem_bytes(pr, dtype, p, wv)
        if block > LINES_MAX_BLOCK or smem > SM_SMEM // 2 - 1024:
            if planes is None:
                continue
            return None
        per_sm = _lines_resident(block, regs if minb is None else reg_cap(block, minb), smem)
        if minb is not None:
            per_sm = min(per_sm, minb) if per_sm >= minb else 0
        if per_sm < 1:
            continue
        groups = _cdiv(pr.planes, p)
        slots = sms * per_sm
        waves = groups / (_cdiv(groups, slots) * slots)
        key = (groups >= min(sms, pr.planes), per_sm >= 2, round(p * pr.OH / (warps * 32), 3), round(waves, 2), p)
        if best is None or key > best[0]:
            best = (key, p, block, per_sm, smem, groups)
    if best is None:
        return None
    _, p, block, per_sm, smem, groups = best
    if groups > INT32_MAX:
        return None
    expr = "dw::conv_lines<" + _targs(
        CXX_TYPE[dtype], pr.KH, pr.KW, pr.IH, pr.IW, pr.OH, pr.OW, pr.PT, pr.PL, cw, pr.flip, wv, block,
        min(per_sm, 4) if minb is None else minb
    ) + ">"
    args = pack_args("PlaneArgs", n_planes=pr.planes, P=p, **_channel_fields(pr))
    return Launch("plane.cu", expr, (groups, 1, 1), (block, 1, 1), smem, (args,))


def wgrad_lines_smem_bytes(p, dtype, planes):
    """Dynamic shared memory of wgrad_lines: P x planes, then P grad_output planes, each an
    odd number of 16-byte vectors apart (the bias sums reuse the x region); 16-bit planes
    are staged converted to float32."""
    acc = ACC_DTYPE[dtype]
    return planes * (lines_pitch(acc, p.H * p.W) + lines_pitch(acc, p.OH * p.OW)) * ITEMSIZE[acc]


def wgrad_lines_launch(p, dtype, planes=None, chunks=None, sms=132):
    """wgrad_lines plan (stride 1, dilation 1, more than 64 taps, a grad_output row and KW
    sums within the register budget; 16-bit planes staged as float32): (stage-1 launch,
    chunks), or None. `planes` (channels per block) and `chunks` (batch chunks) are forced
    by sweeps.

    Channels per block: at least 90 % useful lanes (KH*P threads over whole warps), then
    the smallest block (more blocks per SM, whose copies overlap one another's FMAs),
    then fewer channels. Chunks: one wave of resident
    blocks, every chunk holding the same number of batch items. Measured (H200, float32,
    with wgrad_reduce, us; wgrad_smem 147.5 / 635.7): replk_13x13 4 / 7 / 8 / 12 / 17
    channels 71.9 / **68.1** / 70.0 / 71.1 / 70.6 (16 chunks; 32 chunks of one item: 72.3 at
    7, 78.5 at 17); replk_31x31 1 / 2 / 4 channels **424.6** / 431.6 / 425.3 (8 chunks; 32:
    457.3)."""
    acc = ACC_DTYPE[dtype]
    words = ITEMSIZE[acc] // 4
    if ((p.SH, p.SW, p.DH, p.DW) != (1, 1, 1, 1)
            or p.KH * p.KW < LINES_MIN_TAPS or min(p.OH, p.OW, p.N, p.CM) < 1
            or (p.OW + p.KW) * words > LINES_SUM_BUDGET):
        return None
    regs = _lines_regs(p, acc, p.OW)
    best = None
    for pl in ([planes] if planes is not None else range(1, min(p.CM, LINES_MAX_PLANES) + 1)):
        block = _cdiv(p.KH * pl, 32) * 32
        smem = wgrad_lines_smem_bytes(p, dtype, pl)
        if block > LINES_MAX_BLOCK or smem > SM_SMEM // 2 - 1024:
            if planes is None:
                continue
            return None
        per_sm = _lines_resident(block, regs, smem)
        if per_sm < 1:
            continue
        key = (p.KH * pl / block >= 0.9, -block, -pl)
        if best is None or key > best[0]:
            best = (key, pl, block, per_sm, smem)
    if best is None:
        return None
    _, pl, block, per_sm, smem = best
    groups = _cdiv(p.CM, pl)
    if chunks is None:
        chunks = _cdiv(sms * per_sm, groups)
    chunks = max(1, min(p.N, chunks, 65535))
    n_per = _cdiv(p.N, chunks)
    chunks = _cdiv(p.N, n_per)  # no empty chunk
    if groups > INT32_MAX:
        return None
    expr = "dw::wgrad_lines<" + _targs(
        CXX_TYPE[dtype], p.KH, p.KW, p.H, p.W, p.OH, p.OW, p.PT, p.PL, block, min(per_sm, 4)
    ) + ">"
    args = pack_args("WplaneArgs", N=p.N, C=p.C, M=p.M, CM=p.CM, n_chunks=chunks, G=n_per, P=pl)
    return Launch("plane.cu", expr, (groups, chunks, 1), (block, 1, 1), smem, (args,)), chunks


def _odd_planes(*sizes):
    """Planes of an odd number of elements: neighbouring threads of conv_plane and
    wgrad_plane read shared memory one plane apart, which is conflict-free only then
    (an even plane puts lanes in the same bank: 8x8 float32, all 32 in one)."""
    return all(n % 2 == 1 for n in sizes)


PLANE_MAX_OUTPUTS = 400  # planes up to 20x20 (measured: 7x7 and 17x17)


def _plane_conflicts(n, dtype):
    """Lanes per shared-memory bank when the 32 lanes of a warp read the same element of
    32 consecutive planes of n elements (4- and 2-byte types; 1 for odd planes)."""
    if n % 2 == 1:
        return 1
    size = ITEMSIZE[dtype]
    if size > 4 or (n * size) % 4:
        return 32
    return math.gcd((n * size) // 4, 32)


def _use_plane(pr, dtype):
    """Small planes go to conv_plane: a register tile there is mostly halo and its
    threads read addresses a plane apart. Sweep (H100, float32, session 5):
    convnext_7x7_s4 conv_tile 0.0285 -> conv_plane 0.0205 ms, inception_1x7 0.0129 ->
    0.0111 ms, forward and grad input alike. Odd planes read shared memory without bank
    conflicts; even planes whose lanes share banks at most 2 ways, or 4 ways from 144
    outputs, still gain (H200, benchmarks/ab.py, us, forward / grad input, against the
    dispatcher's previous plan): 64 x 384 planes of 14 x 14 under 7x7 float32 28.0 / 26.7
    against 39.3 / 39.2 (4 ways), float16 24.1 / 23.3 against 43.6 / 43.1 (2 ways);
    3x3 on 64 x 576 float32 25.9 / 23.9 against 29.6 / 30.8, float16 20.1 / 19.0 against
    30.0 / 30.1, bfloat16 20.5 against 30.2; 5x5 on 64 x 480 float32 25.0 / 24.2 against
    31.9 / 31.8, float16 21.1 / 20.7 against 48.7 / 48.0; 3x3 on 64 x 160 planes of
    10 x 10 float16 8.0 against 10.3 (2 ways). Not taken: 10 x 10 float32 (4 ways, 100
    outputs: 9.4 against conv_tile's 8.9), 16 x 16 (32 ways: 57.1 against 16.5 float32,
    48.5 against 13.3 float16), float64 even planes, and even planes at other strides or
    dilations (not measured)."""
    if pr.OH * pr.OW > PLANE_MAX_OUTPUTS:
        return False
    if _odd_planes(pr.IH * pr.IW, pr.OH * pr.OW):
        return True
    if (pr.SH, pr.SW, pr.DH, pr.DW) != (1, 1, 1, 1):
        return False
    ways = max(_plane_conflicts(pr.IH * pr.IW, dtype), _plane_conflicts(pr.OH * pr.OW, dtype))
    return ways <= 2 or (ways <= 4 and pr.OH * pr.OW >= 144)


def _large_on_stack(pr, dtype, x_ptr, arch, sms=132):
    """The conv_stack launch of a 16-bit problem past 64 taps that conv_stack takes, else
    None: such problems stay on the tensor cores, forward and backward (_batch_large)."""
    if dtype not in MMA_DTYPES or not _batch_large(pr.KH, pr.KW) or not _use_stack(pr):
        return None
    return stack_launch(pr, dtype, x_ptr, arch, sms)


def _strided_small(pr, dtype):
    """The family of a strided forward on small input planes, or None: "plane" (conv_plane)
    for 16-bit planes whose lanes meet at most 2 to a shared-memory bank (_plane_conflicts,
    input and output planes), else "batch" (conv_batch); for inputs of at most 20 rows
    and columns, kernels of more than one row and at most 25 taps (measured: 3x3 and 5x5),
    dilation 1, no gather (float64: not measured, stays on conv_tile). conv_tile's strided
    micro-tiles cover few outputs there and their input spans spill in 16-bit. Measured (H200,
    benchmarks/ab.py, us, conv_tile -> conv_batch / conv_plane; NOTES session 38):
    float32 5x5 stride 2 on 64 x 672 x 14 x 14 25.4 -> 21.2 / 21.3 (padding 1: 22.8 ->
    18.0), 64 x 240 x 20 x 20 21.9 -> 15.6 / 36.3; 3x3 stride 2 on 64 x 960 x 7 x 7 11.1 ->
    9.1 / 11.9, 64 x 576 x 10 x 10 10.9 -> 10.7 / 12.1, 64 x 256 x 16 x 16 12.9 -> 10.0 /
    32.3, 64 x 192 x 20 x 20 14.5 -> 12.9 / 18.5, 64 x 576 x 14 x 14 18.5 -> 18.8 / 20.4
    (the one loss). float16 (bfloat16 within 3 %, but 3x3 on 7 x 7 15.1 -> 9.4 / 9.1):
    5x5 on 14 x 14 29.3 -> 17.1 / 17.1 (padding 1: 25.1 -> 17.1 / 14.6), on 20 x 20 25.3
    -> 14.2 / 20.6; 3x3 on 7 x 7 12.5 -> 9.3 / 9.2, 10 x 10 12.0 -> 10.2 / 9.4, 14 x 14
    17.8 -> 14.2 / 12.5, 16 x 16 10.2 -> 9.2 / 27.8, 20 x 20 14.0 -> 10.7 / 12.3. Not taken:
    inputs of 28 x 28 and more (float32 conv_batch spills 208-608 bytes: 3x3 on 28 x 28
    36.9 against 20.3; 16-bit 8-24 bytes, 16.7-19.0 against 27.2 with the 2x8 tiles; 32 x
    32 16-bit 14.1 against 14.4). Odd input and output planes stay with _use_plane."""
    if (pr.mode != 0 or pr.R != 1 or (pr.SH, pr.SW) == (1, 1) or (pr.DH, pr.DW) != (1, 1) or dtype == "float64"
            or pr.KH < 2 or pr.KH * pr.KW > 25 or max(pr.IH, pr.IW) > 20):
        return None
    if dtype in MMA_DTYPES and max(_plane_conflicts(pr.IH * pr.IW, dtype), _plane_conflicts(pr.OH * pr.OW, dtype)) <= 2:
        return "plane"
    return "batch"


def _use_batch(pr, dtype):
    """Small planes at stride 1 go to conv_batch (a unit per channel across the batch, a
    warp per output row) where it measured ahead of conv_plane (H200, benchmarks/ab.py,
    us, 64 images, conv_batch against the previous plan; NOTES session 27; float32 at 4
    channels per unit): 7x7 kernels on 7x7 planes float32 12.7 / 12.6 (grad input)
    against 14.4 / 14.2, 14x14 float32 22.9 against 28.2, float16 22.4 against 24.1; 5x5
    on 7x7 float32 14.7 against 18.8, on 14x14 31.4 (one channel per unit) against 33.2;
    float64 7x7 on 7x7 18.9 against 44.9, 3x3 on 7x7 20.2 against 22.2 (on 14x14 34.8
    against 89.4, but float64 planes past 12 rows or columns stay off: some of their
    specializations spill). Not taken: 3x3 in float32 (7x7 planes: 12.0 against 12.5 at 4
    channels per unit, 13.1 at one; not enough to move), 16-bit 7x7 planes (13.1 against
    12.5), 1xK kernels (inception_1x7: 10.9 against 9.4; float64 17.7 against 15.1), a grad input
    that gathers several planes (multiplier > 1), other strides and dilations, float64
    kernels of more than 64 taps (float32 and 16-bit take them: _batch_large), and
    planes of more than 16 rows or columns (blocks past 512
    threads cap registers under 128 at one block per SM, and a row of 20 or more sums,
    its staged row and the next unit's loads want more: 5x7 on 13 x 22 spills 52 bytes
    in float32, 268 in float64; not measured: the forced tests cover them)."""
    if pr.mode != 0 or pr.R != 1 or not _batch_small(dtype, pr.KH, pr.KW, (pr.SH, pr.SW, pr.DH, pr.DW),
                                                      (pr.OH, pr.OW, pr.IW)):
        return False
    taps = pr.KH * pr.KW
    if dtype == "float64" or (dtype == "float32" and taps >= 25):
        return True
    if _batch_large(pr.KH, pr.KW):
        return True  # 16-bit: after conv_stack where it takes the problem (_auto_plan)
    return dtype in MMA_DTYPES and taps >= 25 and pr.OH * pr.OW >= 144


# ---- conv_mma (tensor cores, 16-bit, stride 1, dilation 1) -------------------------------

MMA_DTYPES = ("float16", "bfloat16")
MMA_MIN_ARCH = 80  # mma.sync m16n8k16 with bf16 inputs


def mma_geometry(kh, kw, wn, wr, shift, stages, direct=False):
    """(k-steps, shared-memory bytes) of conv_mma; mirrors MmaTile in cuda/mma.cu (the
    kernel traps if it is given less shared memory than its own formula says). `direct`:
    accumulators stored from the fragments, no output staging rows."""
    ks = (shift + 7 + kw + 15) // 16
    nch = wn + 2 * ks - 1
    tih, tiw = 16 * wr + kh - 1, 8 * nch
    pitch = tiw if nch % 2 else tiw + 8
    entries = kh * ks * 32
    wpre = entries <= 2 * 32 * wr
    out = 0 if direct else wr * 16 * 4 * (wn if wn % 2 else wn + 1) * 4  # per-warp output staging (MmaTile::OPW words a row)
    return ks, stages * tih * pitch * 2 + (2 if wpre else 1) * entries * 8 + out


def _mma_shape(pr):
    """(WN, WR, STAGES): 8-column blocks per warp, warps per block, ring depth. A warp owns
    16 output rows and the whole tile width; the tile is the plane when the plane fits
    64 x 64."""
    return min(8, _cdiv(pr.OW, 8)), min(4, _cdiv(pr.OH, 16)), 2


def _use_mma(pr, dtype):
    """Whether the dispatcher takes conv_mma for a problem it accepts. Measured on the
    H100 (benchmarks/NOTES.md, session 2): tensor cores win wherever float32 FMAs are the
    bottleneck of conv_tile, i.e. kernels of 25 taps and more (replk_31x31 fp16 0.83 ->
    0.17 ms, convnext_7x7 0.076 -> 0.072), and on the grad-input pass of wider kernels or
    large planes (seed_3x7 0.41 -> 0.28 ms, image_3x3 0.121 -> 0.116); conv_tile stays
    ahead on small memory-bound forward problems (mbv2_3x3 0.061 vs 0.071 ms)."""
    taps = pr.KH * pr.KW
    return taps >= 25 or (pr.flip and (taps > 9 or pr.OH * pr.OW >= 16384))


def _mma_staging(pr, x_ptr, gran=None):
    """(GRAN, SHIFT): the cp.async copy width of the input rows (16, 8 or 4 bytes; 2 =
    checked loads) and the columns the staged tile starts before the first one read.

    Of the widths the rows and pointer allow, the one with the fewest k-steps, then the
    widest: SHIFT (the staged tile starts on a GRAN boundary) enters the k-steps, KS =
    ceil((SHIFT + 7 + KW) / 16). convnext_7x7 (pad 3): 16-byte copies need SHIFT 5 and 2
    k-steps, 8- and 4-byte copies SHIFT 1 and 1 k-step, half the MMAs and ldmatrix chunks
    (measured, H200: fp16 forward 70.5 -> 64.5 us, grad input 74.6 -> 65.0 with 4-byte
    copies; 8-byte copies, half as many: 47.7 -> 45.3, 48.0 -> 44.9).
    `gran` forces a width (None where the rows or pointer do not allow it)."""
    options = []
    if pr.IW % 8 == 0 and x_ptr % 16 == 0:
        options.append((16, (-pr.PL) % 8))
    if pr.IW % 4 == 0 and x_ptr % 8 == 0:
        options.append((8, (-pr.PL) % 4))
    if pr.IW % 2 == 0 and x_ptr % 4 == 0:
        options.append((4, (-pr.PL) % 2))
    options.append((2, 0))
    if gran is not None:
        return next((o for o in options if o[0] == gran), None)
    return min(options, key=lambda o: ((o[1] + 7 + pr.KW + 15) // 16, -o[0]))


def mma_launch(pr, dtype, x_ptr, arch, sms=132, wn=None, wr=None, stages=None, minb=None, blocks=None, gran=None,
               direct=None):
    """conv_mma plan (MODE 0 correlations, optionally with the flipped kernel); None when
    the problem is not one it takes. `blocks` caps the persistent grid (tests use it to
    run many items per block). `direct`: accumulator pairs stored straight from the
    fragments (DIRECT; default wherever OW is even, which keeps every pair 4-byte
    aligned), else through the per-warp shared-memory rows. Measured (H200, us, forward /
    grad input): convnext_7x7 fp16 45.3 -> 36.9 / 34.9 with 8-byte copies, bf16 -> 36.7;
    replk_31x31 fp16 158.8 -> 147.4 (benchmarks/NOTES.md, session 13)."""
    if (dtype not in MMA_DTYPES or arch < MMA_MIN_ARCH or pr.mode != 0
            or (pr.SH, pr.SW, pr.DH, pr.DW) != (1, 1, 1, 1)):
        return None
    dwn, dwr, dst = _mma_shape(pr)
    wn = dwn if wn is None else wn
    wr = dwr if wr is None else wr
    stages = dst if stages is None else stages
    minb = max(1, 16 // wr) if minb is None else minb  # 512 threads per SM: <= 128 registers
    staging = _mma_staging(pr, x_ptr, gran)
    if staging is None:
        return None
    gran, shift = staging
    direct = pr.OW % 2 == 0 and (direct is None or bool(direct))
    ks, smem = mma_geometry(pr.KH, pr.KW, wn, wr, shift, stages, direct)
    if ks > 4 or smem > SM_SMEM:
        return None
    n_tx, n_ty = _cdiv(pr.OW, 8 * wn), _cdiv(pr.OH, 16 * wr)
    n_tiles = pr.planes * n_tx * n_ty
    if n_tx * 8 * wn + pr.KW + 8 > INT32_MAX or n_ty * 16 * wr + pr.KH > INT32_MAX:
        return None
    # Persistent blocks: as many as can be resident at once (registers allow MINB).
    per_sm = max(1, min(minb, SM_SMEM // (smem + 1024), SM_THREADS // (32 * wr)))
    grid = (max(1, min(n_tiles, sms * per_sm, blocks or INT32_MAX, INT32_MAX)), 1, 1)
    expr = "dw::conv_mma<" + _targs(CXX_TYPE[dtype], pr.KH, pr.KW, wn, wr, shift, gran, stages, pr.flip, minb,
                                    direct) + ">"
    args = pack_args("MmaArgs", n_tiles=n_tiles, IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, pad_t=pr.PT, pad_l=pr.PL,
                     n_tx=n_tx, n_ty=n_ty, **_channel_fields(pr))
    return Launch("mma.cu", expr, grid, (32 * wr, 1, 1), smem, (args,))


# ---- conv_stack (tensor cores, 16 images of one channel per MMA) -------------------------

STACK_MAX_KH = 16
STACK_MAX_WN = 8  # warps per block, one 8-column output block each
STACK_UNIT_ROWS = 4  # a unit's fixed cost (filling its copy pipeline), in rows swept


def stack_geometry(kh, wn, ald, pf):
    """Shared-memory bytes of conv_stack; mirrors StackTile in cuda/stack.cu (the kernel
    traps if it is given less): RS ring slots (a multiple of KH of at least PF + 1) of 16
    image rows of staged columns (the pitch an odd number of 16-byte units) and two
    staged output rows of 16 images."""
    rs = kh * ((pf + kh) // kh)
    tiw = 8 * wn + 8 + (8 if ald else 0)
    pitch = tiw if (tiw // 8) % 2 else tiw + 8
    opw = 4 * wn + (0 if wn % 2 else 4)
    return rs * 16 * pitch * 2 + 2 * 16 * opw * 4


def _stack_staging(pr, x_ptr, gran=None):
    """(GRAN, ALD, SHIFT) of conv_stack's row copies: the widest copy the rows and pointer
    allow. Staged column 0 lies on a copy boundary, S = (-PL) mod (GRAN / 2) columns
    before warp 0's first window; an A block read by ldmatrix starts on a 16-byte unit
    (ALD 0, SHIFT S), else on the 4-byte boundary below the window (ALD = S rounded down
    to even, SHIFT 0 or 1). SHIFT + 7 + KW <= 16 keeps one k-step (convnext_7x7, pad 3:
    16-byte copies, ALD 4, SHIFT 1). None where no width does."""
    options = []
    for width in (16, 8, 4):
        e = width // 2
        if pr.IW % e == 0 and x_ptr % width == 0:
            s = (-pr.PL) % e
            ald, shift = (0, s) if s + 7 + pr.KW <= 16 else (s & ~1, s & 1)
            if shift + 7 + pr.KW <= 16:
                options.append((width, ald, shift))
    if gran is not None:
        return next((o for o in options if o[0] == gran), None)
    return options[0] if options else None


def _stack_bands(units_per_band, oh, kh, resident, rb=None, partial=False):
    """(RB, bands): output rows per unit. Units are swept whole and the grid runs in
    waves of `resident` blocks, so the bands minimise waves x (rows swept per unit + a
    unit's fixed cost). `partial` (conv_stack) weighs waves as 0.3 x blocks / resident +
    0.7 x whole waves: blocks on SMs with free slots run faster, so a partial last wave
    costs less than a whole one (7x7 float16 on 64 x 192 x 28 x 28, 768 units at 4 blocks
    per SM: one band 25.3 us, two 27.5, where whole waves counted 2 x 38 rows against
    3 x 24; 11x5 on 64 x 96 x 56 x 56 at 2 blocks per SM: two bands 42.0, one 43.1). The
    weight fits the session-36 A/Bs (benchmarks/NOTES.md) and keeps every plan measured
    before it (convnext_7x7: one band)."""
    if rb is not None:
        return rb, _cdiv(oh, rb)
    best = None
    for bands in range(1, min(oh, 64) + 1):
        rb_ = _cdiv(oh, bands)
        bands = _cdiv(oh, rb_)
        blocks = units_per_band * bands
        waves = 0.3 * blocks / resident + 0.7 * _cdiv(blocks, resident) if partial else _cdiv(blocks, resident)
        cost = waves * (rb_ + kh - 1 + STACK_UNIT_ROWS)
        if best is None or cost < best[0]:
            best = (cost, rb_, bands)
    return best[1], best[2]


STACK_MIN_IMAGES = 16  # the MMA rows: images past the batch are computed and dropped
STACK_MAX_SIDE = 64    # the plane sizes measured (56 x 56, 64 x 64, 32 x 32, 28 x 28)


def _stack_regs(kh):
    """Registers a conv_stack thread takes where the launch bounds leave it room (ptxas
    of NVRTC 13.0 for sm_90, blocks of up to 5 warps: 94-124 up to 9 tap rows, 118-138
    at 11, 124-166 at 13, 147-180 at 16), rounded up to the allocation granule of 8."""
    return 128 if kh <= 9 else 144 if kh <= 11 else 168 if kh <= 13 else 184


def _stack_resident(kh, wn, minb, smem):
    """Blocks of conv_stack one SM holds: MINB (the launch bounds guarantee it), more where
    the estimated registers, shared memory and threads allow (blocks of up to 4 warps:
    4 and more, where the band plan assumed 3 and cut 28-row planes into two bands)."""
    by_regs = max(minb, 65536 // (32 * wn * _stack_regs(kh)))
    return max(1, min(by_regs, SM_SMEM // (smem + 1024), SM_THREADS // (32 * wn)))


def _stack_minb(kh, wn, bands_at_3):
    """conv_stack's blocks per SM: 3 (launch bounds of 80 registers at 7 and 8 warps:
    convnext_7x7 fits without spills), 2 where those 80 registers spill and cost more than
    the third block gives: blocks of 6 warps and more with more than 9 tap rows (ptxas
    spills 16 to 2272 bytes there), or more than 7 rows where the plan at 3 blocks
    cuts the planes into bands. Measured (H200, benchmarks/ab.py, float16 forward, us, 3
    blocks against 2): 11x5 on 64 x 96 x 56 x 56 55.3 / 42.1, 16x5 143.3 / 78.1, 9x9 on
    64 x 128 x 64 x 64 68.8 / 50.2 (bfloat16 67.7 / 49.9); kept at 3: 9x9 on
    64 x 96 x 56 x 56 39.1 / 39.7 (24 bytes spilled, one band), 9x7 38.9 / 40.1, 7x9 30.9
    / 35.9, 7x7 30.9 / 35.8."""
    if wn >= 6 and (kh > 9 or (kh > 7 and bands_at_3 > 1)):
        return 2
    return 3


def _use_stack(pr):
    """Whether a problem conv_mma would take goes to conv_stack instead: 16-bit kernels
    of 25 taps and more, batches of at least 16 images (full MMA rows), planes up to
    64 x 64. Measured (H200, benchmarks/ab.py, us, conv_stack against conv_mma): 7x7
    float16 on convnext_7x7 (64 x 96 x 56 x 56) 32.0 against 36.4 (bfloat16 31.6
    against 36.4, grad input 32.3 against 34.7), 64 x 96 x 64 x 64 36.2 against 49.8,
    32 x 128 x 32 x 32 12.7 against 16.8, 16 x 256 x 28 x 28 12.2 against 16.5.
    Not taken: larger planes (seed_3x7 float16, 128 x 256 planes: 339 against the row
    sweep's 164; the 16 images of a channel lie C planes apart, 8 MB there, and its
    stores ran at a fraction of the copy rate), and the 3x3 row-sweep problems
    (mbv2_3x3 float16 40.7 against 39.9)."""
    return (pr.KH * pr.KW >= 25 and pr.planes // pr.QC >= STACK_MIN_IMAGES
            and max(pr.IH, pr.IW, pr.OH, pr.OW) <= STACK_MAX_SIDE)


def stack_launch(pr, dtype, x_ptr, arch, sms=132, wn=None, pf=None, minb=None, rb=None, gran=None, blocks=None):
    """conv_stack plan (MODE 0 correlations, optionally with the flipped kernel); None where
    it does not apply: 16-bit, sm_80+, stride 1, dilation 1, one input plane per output
    plane (multiplier 1), even OW (pair stores), KH <= 16 and a copy width that keeps
    one k-step. `blocks` caps the grid (tests use it to run many units per block)."""
    if (dtype not in MMA_DTYPES or arch < MMA_MIN_ARCH or pr.mode != 0
            or (pr.SH, pr.SW, pr.DH, pr.DW) != (1, 1, 1, 1) or pr.R != 1 or pr.DIV != 1
            or pr.OW % 2 or pr.KH > STACK_MAX_KH or min(pr.OH, pr.OW, pr.IH, pr.IW) < 1):
        return None
    staging = _stack_staging(pr, x_ptr, gran)
    if staging is None:
        return None
    gran, ald, shift = staging
    wn = min(STACK_MAX_WN, _cdiv(pr.OW, 8)) if wn is None else wn
    pf = 6 if pf is None else pf        # RS = 7 slots for 7 tap rows (convnext_7x7 fp16: 32.0 us; PF 4: 33.2, 13: 32.4)
    osw = 16 if pr.OW % 8 == 0 else 4
    smem = stack_geometry(pr.KH, wn, ald, pf)
    C = pr.QC
    N = pr.planes // C
    n_groups, n_cs = _cdiv(N, 16), _cdiv(pr.OW, 8 * wn)

    def plan_bands(mb):
        return _stack_bands(C * n_groups * n_cs, pr.OH, pr.KH, sms * _stack_resident(pr.KH, wn, mb, smem), rb,
                            partial=True)

    if minb is None:
        at_3 = plan_bands(3)
        minb = _stack_minb(pr.KH, wn, at_3[1])
        rb, bands = at_3 if minb == 3 else plan_bands(minb)
    else:
        rb, bands = plan_bands(minb)
    units = C * n_groups * bands * n_cs
    if n_cs * 8 * wn + pr.KW + 16 > INT32_MAX or pr.OH + pr.KH > INT32_MAX or N + 16 > INT32_MAX:
        return None
    grid = (max(1, min(units, blocks or INT32_MAX, INT32_MAX)), 1, 1)
    expr = "dw::conv_stack<" + _targs(CXX_TYPE[dtype], pr.KH, pr.KW, wn, ald, shift, gran, pf, osw, pr.flip,
                                      minb) + ">"
    args = pack_args("StackArgs", units=units, IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, PT=pr.PT, PL=pr.PL, RB=rb,
                     N=N, C=C, n_bands=bands, n_cs=n_cs)
    return Launch("stack.cu", expr, grid, (32 * wn, 1, 1), smem, (args,))


# ---- conv_mma_rows (tensor cores, a block sweeps whole rows of one plane) -----------------

MROWS_MAX_KH = 16
MROWS_MAX_WN = 8      # 8-column output blocks per warp
MROWS_MAX_NW = 4      # warps per block
MROWS_UNIT_ROWS = 8   # a unit's fixed cost (filling its copy pipeline), in rows swept: seed_3x7
                      # float16 in bands of 64 rows 154.2 us, 128 158.3, 48 167.0, 32 165.2
MROWS_MAX_CPT = 12    # copies per thread and group of 16 rows (their offsets live in registers)


def mma_rows_geometry(kw, wn, nw, shift, gran, pfs):
    """(KS, copies per thread and group, shared-memory bytes) of conv_mma_rows; mirrors
    MrowsTile in cuda/mma_rows.cu (the kernel traps if it is given less shared memory): a
    ring of PFS + 1 groups of 16 staged rows (the pitch an odd number of 16-byte units)
    and two staged blocks of 16 output rows."""
    ks = _cdiv(shift + 7 + kw, 16)
    nb = wn * nw
    tiw = 8 * (nb + 2 * ks - 1)
    pitch = tiw if (tiw // 8) % 2 else tiw + 8
    cpt = _cdiv(16 * (tiw // (gran // 2)), 32 * nw)
    opw = 4 * nb + (0 if nb % 2 else 4)
    return ks, cpt, (pfs + 1) * 16 * pitch * 2 + 2 * 16 * opw * 4


def _mma_rows_shape(pr):
    """(WN, NW): a block covers the output row where it fits 8 WN NW <= 256 columns
    (seed_3x7's 250: 4 warps of 8 blocks; mbv2_3x3's 56: 1 warp of 7), else column
    segments of 256."""
    nb = _cdiv(pr.OW, 8)
    wn = min(MROWS_MAX_WN, nb)
    return wn, min(MROWS_MAX_NW, _cdiv(nb, wn))


def _mma_rows_bands(units_per_band, oh, kh, resident, rb=None):
    """(RB, bands): output rows per unit, a multiple of 16 (a step). Units are swept whole
    and the grid runs in waves of `resident` blocks, so the bands minimise waves x (rows
    swept per unit + a unit's fixed cost)."""
    if rb is not None:
        return rb, _cdiv(oh, rb)
    best = None
    for bands in range(1, _cdiv(oh, 16) + 1):
        rb_ = 16 * _cdiv(_cdiv(oh, bands), 16)
        bands = _cdiv(oh, rb_)
        cost = _cdiv(units_per_band * bands, resident) * (rb_ + kh - 1 + MROWS_UNIT_ROWS)
        if best is None or cost < best[0]:
            best = (cost, rb_, bands)
    return best[1], best[2]


def _use_mma_rows(pr, dtype, x_ptr):
    """Whether the dispatcher takes conv_mma_rows: 16-bit kernels of more than 9 taps on
    planes wider or taller than conv_stack's 64, where its copies are 8 or 16 bytes wide
    (4-byte copies: not measured against the row sweep but on seed's grad input, 305.9 us
    with spills against 187.3).
    Measured (H200, benchmarks/ab.py, us): seed_3x7 float16 forward 154.2 against the
    row sweep's 163.8 (bfloat16 153.9 / 165.3), with padding (1, 3) 146.8 against 161.0
    (grad input 146.8 / 160.4); 7x7 float16 on 16 x 96 x 112 x 112 43.1 against conv_mma's
    44.3 (grad input 43.1 / 45.1), on 8 x 96 x 224 x 224 56.7 against 88.6; 5x5 on 16 x 96
    x 112 x 112 39.4 against 42.5 (grad input 39.0 / 39.6). Not taken: 3x3 (image_3x3
    bfloat16 78.9 against 79.5, mbv2_3x3 float16 57.8 against 40.0: units of few steps
    expose their copy latency), planes up to 64 x 64 (conv_stack, conv_mma, the rows)."""
    return (dtype in MMA_DTYPES and pr.KH * pr.KW > 9
            and max(pr.OH, pr.OW) > STACK_MAX_SIDE and _mma_staging(pr, x_ptr)[0] >= 8)


def mma_rows_launch(pr, dtype, x_ptr, arch, sms=132, wn=None, nw=None, pfs=None, minb=None, rb=None, gran=None,
                    blocks=None):
    """conv_mma_rows plan (MODE 0 correlations, optionally with the flipped kernel); None
    where it does not apply: 16-bit, sm_80+, stride 1, dilation 1, one input plane per
    output plane (R == 1), KH <= 16, a copy width of 4 bytes or more with at most two
    k-steps. `rb` (a multiple of 16) sets the band, `blocks` caps the grid (tests use both
    to run many units per block)."""
    if (dtype not in MMA_DTYPES or arch < MMA_MIN_ARCH or pr.mode != 0
            or (pr.SH, pr.SW, pr.DH, pr.DW) != (1, 1, 1, 1) or pr.R != 1 or pr.KH > MROWS_MAX_KH
            or min(pr.OH, pr.OW, pr.IH, pr.IW) < 1):
        return None
    staging = _mma_staging(pr, x_ptr, gran)
    if staging is None or staging[0] < 4:
        return None
    gran, shift = staging
    dwn, dnw = _mma_rows_shape(pr)
    nw = dnw if nw is None else nw
    pfs = 2 if pfs is None else pfs  # seed_3x7 float16: 154.2 us; PFS 3 (4 blocks per SM, not 5) 159.9
    if not 2 <= pfs <= 4:
        return None
    if wn is None:  # narrower warps where the copies would not fit their registers (4-byte copies)
        wn = dwn
        while wn > 1 and mma_rows_geometry(pr.KW, wn, nw, shift, gran, pfs)[1] > MROWS_MAX_CPT:
            wn -= 1
    ks, cpt, smem = mma_rows_geometry(pr.KW, wn, nw, shift, gran, pfs)
    if ks > 2 or cpt > MROWS_MAX_CPT or smem > SM_SMEM or (rb is not None and (rb < 1 or rb % 16)):
        return None
    fit = min(32, SM_THREADS // (32 * nw), SM_SMEM // (smem + 1024))  # blocks per SM: shared memory, threads
    if minb is None:  # and registers (~96 with few copies, else 128)
        minb = max(1, min(fit, 65536 // (32 * nw * (96 if cpt <= 6 else 128))))
    osw = 16 if pr.OW % 8 == 0 else 4 if pr.OW % 2 == 0 else 2
    per_sm = max(1, min(minb, fit))
    n_cs = _cdiv(pr.OW, 8 * wn * nw)
    rb, bands = _mma_rows_bands(pr.planes * n_cs, pr.OH, pr.KH, sms * per_sm, rb)
    units = pr.planes * bands * n_cs
    if n_cs * 8 * wn * nw + pr.KW + 32 > INT32_MAX or pr.OH + pr.KH + 32 > INT32_MAX or pr.IW * 17 > INT32_MAX:
        return None
    grid = (max(1, min(units, sms * per_sm, blocks or INT32_MAX, INT32_MAX)), 1, 1)
    expr = "dw::conv_mma_rows<" + _targs(CXX_TYPE[dtype], pr.KH, pr.KW, wn, nw, shift, gran, pfs, osw, pr.flip,
                                         minb) + ">"
    args = pack_args("MrowsArgs", units=units, IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, PT=pr.PT, PL=pr.PL, RB=rb,
                     n_bands=bands, n_cs=n_cs, QC=pr.QC, IC=pr.IC, DIV=pr.DIV)
    return Launch("mma_rows.cu", expr, grid, (32 * nw, 1, 1), smem, (args,))


# ---- conv_rows (stride 1: a segment of lanes sweeps a band of rows) ----------------------

ROWS_MAX_TAPS = 64   # weights live in registers
ROWS_MAX_SUMS = 64   # the ring of Q x V output sums
ROWS_MAX_PAD = 32    # left padding is a template constant; the halo is at most 32 columns
ROWS_BLOCK = 256


def _rows_columns(pl, kw, dw, v):
    """(JLO, JHI): the input columns a lane of V columns reads, relative to its first,
    for left padding `pl` and a kernel KW wide at dilation DW (RowsWindow in cuda/rows.cu)."""
    return min(0, -pl), max(v, v - pl + (kw - 1) * dw)


def _rows_window(pr, v):
    """(Q, halo): the output rows one input row feeds (the ring), and the halo columns
    of a lane of V columns (from its neighbours, or loaded by an edge lane); mirrors Q,
    JLO and JHI in cuda/rows.cu."""
    jlo, jhi = _rows_columns(pr.PL, pr.KW, pr.DW, v)
    return (pr.KH - 1) * pr.DH + 1, jhi - jlo - v


def _rows_slots(q, pf, rp=1):
    """U: the rows a sweep unrolls (and conv_rows_async stages): a multiple of lcm(Q, RP)
    of at least PF + RP (RP rows per copy wait, conv_rows_async)."""
    ql = q if q % rp == 0 else q * rp
    return ql * ((pf + rp + ql - 1) // ql)


def _rows_regs(pr, dtype, v, pf):
    """Registers conv_rows needs (32-bit), estimated from what holds values: the ring of
    Q x V sums, the weights, the raw rows in flight (the lane's columns and the halo
    columns an edge lane loads; ptxas hoists loads across the U unrolled rows, so more
    rows are live than PF + 1). Coefficients fitted to the ptxas report of 108
    specializations (3x3 to 7x7, dilation 2, V 1-8, PF 1-3; float32 and float16), plus a
    margin of 20 over the fit; float64 values take two registers."""
    q, halo = _rows_window(pr, v)
    u = _rows_slots(q, pf)
    words = v // 2 if ITEMSIZE[dtype] == 2 and v > 1 else v
    scale = 2 if ITEMSIZE[dtype] == 8 else 1
    raw = words + halo
    return scale * (1.6 * q * v + 1.45 * pr.KH * pr.KW + 1.2 * (pf + 1) * raw + 0.3 * u * raw) + 45


ROWS_REGS = 128  # __launch_bounds__(256, 2)


def _rows_shape(pr, dtype):
    """(V, PF, MINB): columns per lane, rows in flight, blocks per SM.

    The dispatched shapes (16-bit, up to 21 taps, Q <= 3) from the sweep (H200, session
    9, benchmarks/NOTES.md): 16-byte lanes (V = 8); 3x3 at 3 blocks per SM with 2 rows
    ahead (mbv2_3x3 fp16 0.0472 ms against 0.0512 at 2 blocks and 3 rows ahead), 3x7 at
    2 blocks with 1 row ahead (seed_3x7 fp16 0.211 ms; 2 rows: 0.214, 3 rows spill).
    Elsewhere (forced plans): the widest V, then the deepest PF (2, else 1), whose
    estimated registers fit 2 blocks per SM."""
    if _use_rows(pr, dtype):
        return (8, 2, 3) if pr.KH * pr.KW <= 9 else (8, 1, 2)
    v = 16 // ITEMSIZE[dtype]
    while v >= 1:
        for pf in (2, 1):
            if _rows_regs(pr, dtype, v, pf) <= ROWS_REGS:
                return v, pf, 2
        v //= 2
    return 1, 1, 2


def _rows_scalar_lanes(pr):
    """Columns per lane of conv_rows where its rows take scalar loads (16-bit rows of an
    odd width, or an input that starts off a 4-byte boundary: conv_rows_async declines
    them, its copies are at least 4 bytes): 2 up to 9 taps, 4 beyond. 8-column lanes
    load the lane's columns and halo one by one and spill at the shipped launch bounds.
    Measured (H200, benchmarks/ab.py, us; 2 / 4 / 8 columns): 16 x 64 x 33 x 47 3x3
    float16 10.2 / 10.9 (24 B spilled) / 20.3 (136 B spilled); 64 x 144 x 56 x 55 3x3
    float16 74.6 / 76.1 / 195.4; seed_3x7 on 32 x 128 x 128 x 255 float16 434.1 / 283.7 /
    394.8 (40 B spilled)."""
    return 2 if pr.KH * pr.KW <= 9 else 4


def _rows_async_shape(pr, dtype):
    """(V, PF, MINB) of conv_rows_async, from the sweep (H200, session 10, ms; forward /
    grad input where both were measured; benchmarks/NOTES.md):
    - 3x3 (up to 9 taps): 8-byte lanes; 16-bit at 3 blocks per SM, 4 rows ahead
      (mbv2_3x3 0.043, at 2 blocks 0.050; image_3x3 0.081); float32 at 2 blocks, 6 rows
      ahead (dilated_3x3_d2 0.077 / 0.076).
    - 3x7 (up to 21 taps): 16-byte lanes, 2 blocks; 16-bit 3 rows ahead (seed_3x7 0.166;
      8-byte lanes 0.206 and more), float32 6 (seed_3x7 0.299 / 0.291).
    - 5x5 and 7x7: 4 columns per lane (16 bytes in float32, 8 in 16-bit), 2 blocks, 4
      rows ahead (effnet_5x5 fp32 0.038, convnext_7x7 fp32 0.067, fp16 0.070 / 0.070):
      the ring and the weights take 96-128 registers.
    Lanes are narrower where the plane is (16 bytes at most)."""
    taps, half = pr.KH * pr.KW, dtype in MMA_DTYPES
    if taps <= 9:
        v, (pf, minb) = 8 // ITEMSIZE[dtype], ((4, 3) if half else (6, 2))
    elif taps <= 21:
        v, pf, minb = 16 // ITEMSIZE[dtype], (3 if half else 6), 2
    else:
        v, pf, minb = 4, 4, 2
    return max(1, min(v, 16 // ITEMSIZE[dtype])), pf, minb


def _rows_pairs(pr, pf, out_rows):
    """RP of conv_rows_async: 2 rows per copy wait and barrier where at least 2 rows are
    ahead, no output-row buffer (it needs a barrier every row) and at most 25 taps.
    Measured against RP 1 (H200, benchmarks/ab.py, us; forward / grad input): mbv2_3x3
    16-bit 41.4 -> 40.2 / 41.8 -> 40.7, bf16 41.8 -> 40.8, effnet_5x5 float32 37.2 ->
    36.2 / 37.5 -> 36.0, dilated_3x3_d2 75.9 -> 75.6, image_3x3 16-bit 80.2 -> 79.9,
    seed_3x7 grad input 16-bit 190.9 -> 188.0, float32 288.5 -> 289.0 (even); mbv2_3x3 and
    image_3x3 float32 (conv_rows_async, not their default plan) even; convnext_7x7 float32
    (49 taps) spills 8 bytes with RP 2 and loses, 66.3 -> 81.4."""
    return 2 if pf >= 2 and not out_rows and pr.KH * pr.KW <= 25 else 1


def _rows_segment(ow, v):
    """Lanes per segment: the fewest power of two whose columns cover the row, at most a
    warp (56-column planes: 7 of 8 lanes busy in 16-bit, 14 of 16 in float32)."""
    s = 1
    while s < 32 and s * v < ow:
        s *= 2
    return s


def _rows_bands(pr, units_per_band, q, resident, rb=None, group=1):
    """(RB, bands): output rows per band. The persistent segments each take
    ceil(units / resident) units of RB + Q - 1 input rows; the band height minimizes that
    (more bands fill the segments more evenly, each adds Q - 1 rows read twice). With
    `group` > 1 the cost counts groups of that many units (a block's segments) per
    resident slot instead (conv_rows_whole: an SM's time is the segment-steps of its
    blocks)."""
    if rb is not None:
        rb = max(1, min(rb, pr.OH))
        return rb, _cdiv(pr.OH, rb)
    best = None
    for bands in range(1, pr.OH + 1):
        rb = _cdiv(pr.OH, bands)
        if _cdiv(pr.OH, rb) != bands:
            continue
        cost = _cdiv(_cdiv(units_per_band * bands, group), resident) * (rb + q - 1)
        if best is None or cost < best[0]:
            best = (cost, rb, bands)
    return best[1], best[2]


def _staged_segment(ow, v, pl, kw, dw):
    """(S, NL, NR) of a staged row sweep (conv_rows_async, bwd_rows): lanes per segment,
    and the chunks of V columns left and right of the segment that it stages with its own
    (its halo, rounded up to whole chunks; mirrors cuda/rows.cu). Lanes below NL + NR copy
    those, so a segment has at least NL + NR lanes."""
    jlo, jhi = _rows_columns(pl, kw, dw, v)
    nl, nr = _cdiv(-jlo, v), _cdiv(jhi - v, v)
    s = _rows_segment(ow, v)
    while s < nl + nr:
        s *= 2
    return s, nl, nr


ROWS_L2_AHEAD = 2             # rows beyond the copies that conv_rows_async prefetches into L2 ...
ROWS_L2_AHEAD_MIN_BYTES = 256  # ... on rows of this many bytes and more


def _rows_l2_ahead(row_bytes, l2a=None):
    """L2A of conv_rows_async: each copied row also prefetches the band's row L2A rows
    further into L2, which puts more DRAM reads in flight than the shared-memory slots
    hold. Measured (H200, same process, us; none / 2 / 3 / 4 / 8 rows ahead, forward
    unless named): seed_3x7 float32 (1024-byte rows) 295.2 / 291.4 / 292.8 / 294.4-295.8 /
    304.2, grad input 285.9 / 280.1 / - / 281.2-281.7; seed_3x7 float16 grad input (500)
    185.6-185.8 / 176.3 / - / 175.3-175.7 / 182.0; image_3x3 float16 (1024) 79.4 / 77.9 / -
    / 77.8 / 81.1; dilated_3x3_d2 float32 (256) 75.7 / 74.8 / - / 74.1 / 74.2. On rows of
    112 bytes it costs (the 128-byte block each copy prefetches already holds the next
    rows): mbv2_3x3 float16 39.7 / 41.3 / - / 40.9 / 41.2, grad input 39.5 / 41.2 / - /
    40.7, effnet_5x5 float32 35.0 / 38.0 / - / 37.6 / 37.6. The fused backward (bwd_rows,
    issue-bound) lost with it: seed_3x7 float16 324.5 -> 361.5 (2 rows), float32 416.5 ->
    411.5 (2) / 425.9 (4), image_3x3 float16 111.4 -> 123.7, mbv2_3x3 float16 71.5 -> 73.8.
    Where L2A is 0 the kernel's copies prefetch 256-byte blocks instead of 128 (see
    conv_rows_async in cuda/rows.cu)."""
    if l2a is not None:
        return l2a
    return ROWS_L2_AHEAD if row_bytes >= ROWS_L2_AHEAD_MIN_BYTES else 0


def rows_launch(pr, dtype, x_ptr, v=None, pf=None, minb=None, rb=None, sms=132, staged=False, arch=90, rp=None,
                l2a=None):
    """conv_rows plan (stride-1 MODE 0 correlations, optionally with the rotated kernel,
    one input plane per output plane); None where the shape does not fit its limits.
    `staged`: conv_rows_async, the rows ahead in shared memory by cp.async (sm_80+;
    copies of 4, 8 or 16 bytes); `rp` its rows per copy wait (_rows_pairs by default);
    `l2a` its rows prefetched into L2 beyond the copies (_rows_l2_ahead by default)."""
    if (pr.mode != 0 or (pr.SH, pr.SW) != (1, 1) or pr.R != 1 or pr.KH * pr.KW > ROWS_MAX_TAPS
            or not -ROWS_MAX_PAD <= pr.PL <= ROWS_MAX_PAD or min(pr.OH, pr.OW) < 1):
        return None
    dv, dpf, dminb = _rows_async_shape(pr, dtype) if staged else _rows_shape(pr, dtype)
    if v is None and not staged and _load_width(dtype, pr.IW, x_ptr, dv) == 1:
        dv = _rows_scalar_lanes(pr)
    v = dv if v is None else v
    pf = dpf if pf is None else pf
    minb = dminb if minb is None else minb
    q, halo = _rows_window(pr, v)
    if q * v > ROWS_MAX_SUMS or halo > 32:
        return None
    vl = _load_width(dtype, pr.IW, x_ptr, v)
    vs = _load_width(dtype, pr.OW, 0, v)  # outputs are fresh, 256-byte aligned buffers
    s = _rows_segment(pr.OW, v)
    smem = 0
    if staged:
        s, nl, nr = _staged_segment(pr.OW, v, pr.PL, pr.KW, pr.DW)
        if (arch < 80 or pf < 1 or vl * ITEMSIZE[dtype] < 4 or (v * ITEMSIZE[dtype]) % 4
                or v * ITEMSIZE[dtype] > 16 or nl + nr > 32):
            return None
        out_rows = s if vs < v else 0  # stores narrower than a lane's chunk: a row buffer
        rp = _rows_pairs(pr, pf, out_rows) if rp is None else rp
        if rp not in (1, 2) or pf < rp or (rp > 1 and out_rows):
            return None
        smem = (ROWS_BLOCK // s) * (_rows_slots(q, pf, rp) * (s + nl + nr) + out_rows) * v * ITEMSIZE[dtype]
        if smem > SM_SMEM // minb - 1024:
            return None
    n_cs = _cdiv(pr.OW, s * v)
    segs = ROWS_BLOCK // s
    units_per_band = pr.planes * n_cs
    rb, bands = _rows_bands(pr, units_per_band, q, sms * minb * segs, rb)
    units = units_per_band * bands
    if n_cs * bands > INT32_MAX or pr.IW + 64 > INT32_MAX or pr.OH + q > INT32_MAX:
        return None
    grid = (max(1, min(_cdiv(units, segs), sms * minb, INT32_MAX)), 1, 1)
    l2a = _rows_l2_ahead(pr.IW * ITEMSIZE[dtype], l2a) if staged else 0
    if l2a < 0:
        return None
    expr = ("dw::conv_rows_async<" if staged else "dw::conv_rows<") + _targs(
        CXX_TYPE[dtype], v, vl, vs, pr.KH, pr.KW, pr.DH, pr.DW, pr.PL, s, pf, pr.flip, minb,
        *((rp,) if staged else ()), *((l2a,) if l2a else ())) + ">"
    args = pack_args("RowsArgs", n_units=units, IC=pr.IC, IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, PT=pr.PT,
                     RB=rb, n_bands=bands, n_cs=n_cs, QC=pr.QC, DIV=pr.DIV)
    return Launch("rows.cu", expr, grid, (ROWS_BLOCK, 1, 1), smem, (args,))


def _rows_whole_shape(pr, dtype):
    """(V, S): columns per lane and lanes per segment of conv_rows_whole, the segment
    covering an output row: the S (a power of two up to a warp) whose lanes of
    V = ceil(OW / S) columns waste the fewest columns, V a whole number of 32-bit words
    and at most 32 bytes (then the widest V, for the fewest lanes)."""
    size, best = ITEMSIZE[dtype], None
    for s in (1, 2, 4, 8, 16, 32):
        v = _cdiv(pr.OW, s)
        v += (-v) % (4 // size if size < 4 else 1)
        if v * size > 32:
            continue
        if best is None or s * v - pr.OW < best[1] * best[0] - pr.OW:
            best = (v, s)
    return best


def _use_rows_whole(pr, dtype):
    """Whether the dispatcher takes conv_rows_whole (where it plans one band per plane):
    float32 kernels of 26 to 49 taps at dilation 1 whose output row a segment covers
    exactly (no idle lane columns). Measured (H200, benchmarks/ab.py, us, against
    conv_rows_async; forward / grad input): convnext_7x7 float32 58.5-58.9 / 59.1 against
    66.1 / 66.3 (8 lanes of 7 columns, one band: 62 rows swept for 56 instead of 68, every
    lane busy); 64 x 192 planes of 28 x 28 under 7x7, 38.5 against 42.6. Not taken:
    effnet_5x5 (25 taps, memory-bound: 42.7 against 36.2), mbv2_3x3 16-bit (50.3 against
    40.6), seed_3x7 16-bit (170.7 against 165.6), mbv2_3x3 float32 (73.9 against conv_tile's
    65.0): where the copies bound the time, the segments' fewer, longer units hide less of
    the memory latency."""
    if dtype != "float32" or (pr.SH, pr.SW) != (1, 1) or (pr.DH, pr.DW) != (1, 1):
        return False
    if not 26 <= pr.KH * pr.KW <= 49 or pr.KH == 1:  # one-row kernels: conv_tile (_tile_shape)
        return False
    v, s = _rows_whole_shape(pr, dtype)
    return v * s == pr.OW


def rows_whole_launch(pr, dtype, x_ptr, v=None, pf=None, minb=None, block=None, rb=None, sms=132, arch=90):
    """conv_rows_whole plan: conv_rows_async's problems (stride 1, MODE 0, one input plane
    per output plane) whose output row one segment covers, in 4- and 2-byte types, with
    input and output rows of whole 4-byte words; None elsewhere. Defaults: the lanes of
    _rows_whole_shape, 4 rows ahead, blocks of 128 threads, the most blocks per SM whose
    shared memory fits (at most 4)."""
    size = ITEMSIZE[dtype]
    if (arch < 80 or pr.mode != 0 or (pr.SH, pr.SW) != (1, 1) or pr.R != 1 or size not in (2, 4)
            or pr.KH * pr.KW > ROWS_MAX_TAPS or not -ROWS_MAX_PAD <= pr.PL <= ROWS_MAX_PAD
            or min(pr.OH, pr.OW) < 1 or (pr.IW * size) % 4 or (pr.OW * size) % 4):
        return None
    shape = _rows_whole_shape(pr, dtype)
    if shape is None:
        return None
    v = shape[0] if v is None else v
    s = _rows_segment(pr.OW, v)
    pf = 4 if pf is None else pf
    block = 128 if block is None else block
    q = _rows_window(pr, v)[0]
    jlo, jhi = _rows_columns(pr.PL, pr.KW, pr.DW, v)
    if (q * v > ROWS_MAX_SUMS or (v * size) % 4 or v * size > 32 or s * v < pr.OW or pf < 1
            or block % 32 or not s <= block <= 256):
        return None
    pb = next(b for b in (16, 8, 4) if (pr.IW * size) % b == 0 and x_ptr % b == 0) if x_ptr % 4 == 0 else None
    if pb is None:
        return None
    ob = next(b for b in (16, 8, 4) if (pr.OW * size) % b == 0)  # outputs: fresh, 256-byte aligned buffers
    # Shared memory per segment, as the kernel lays it out (cuda/rows.cu).
    epw = 4 // size
    lp = _cdiv(max(0, -jlo) * size, 16) * 16 // size
    slot = _cdiv((lp + max(s * v + jhi - v, pr.IW) + epw - 1) * size, 16) * 16
    u = q * _cdiv(pf + 1, q)
    segb0 = u * slot + _cdiv(s * v * size, 16) * 16
    soff = max(16, 128 // s)
    segb = segb0 + (128 + soff - segb0 % 128) % 128
    smem = (block // s) * segb
    segs = block // s
    fit = max(1, min(SM_SMEM // (smem + 1024), SM_THREADS // block))
    # Bands: the fewest steps per SM (issue-bound: an SM's time is the segment-steps of
    # its blocks), blocks spread evenly over the SMs.
    rb, bands = _rows_bands(pr, pr.planes, q, sms, rb, group=segs)
    units = pr.planes * bands
    # Blocks per SM: enough for every unit at once where that fits (registers: 65536 /
    # (block * minb) each), else as many as shared memory allows, at most 4.
    if minb is None:
        minb = max(1, min(fit, 4, _cdiv(_cdiv(units, segs), sms)))
    if smem > SM_SMEM // minb - 1024:
        return None
    if pr.IW + 64 > INT32_MAX or pr.OH + q > INT32_MAX:
        return None
    grid = (max(1, min(_cdiv(units, segs), sms * minb, INT32_MAX)), 1, 1)
    expr = "dw::conv_rows_whole<" + _targs(
        CXX_TYPE[dtype], v, pr.KH, pr.KW, pr.DH, pr.DW, pr.PL, pr.IW, pr.OW, s, pf, pr.flip, minb, block, pb, ob
    ) + ">"
    args = pack_args("RowsArgs", n_units=units, IC=pr.IC, IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, PT=pr.PT,
                     RB=rb, n_bands=bands, n_cs=1, QC=pr.QC, DIV=pr.DIV)
    return Launch("rows.cu", expr, grid, (block, 1, 1), smem, (args,))


def _use_rows_async(pr, dtype, x_ptr):
    """Whether the dispatcher takes conv_rows_async for a problem it accepts (stride 1,
    copies of at least 4 bytes in 16-bit, 8 in float32). Sweep (H200, session 10, ms,
    against the previous plan; forward / grad input):
    - 16-bit 3x3 and 3x7 (what conv_rows takes): seed_3x7 0.166 against 0.213
      (conv_rows), its grad input (rows of 250: 4-byte copies) 0.194 against 0.204;
      mbv2_3x3 0.043 / 0.042 against 0.050; image_3x3 0.081 / 0.080 against 0.082;
    - float32 kernels of 10 to 49 taps at dilation 1 (benchmark, ms): effnet_5x5 0.047
      against 0.048 (conv_tile), convnext_7x7 0.070 against 0.088, seed_3x7 0.297 / 0.303
      against 0.310 / 0.363. 16-bit 5x5 and 7x7 stay on conv_mma (benchmark at 472be0b:
      convnext_7x7 fp16 0.0744 / 0.0744 against 0.0710 / 0.0756 at c7d3d67; the sweep
      had them even);
    - float32 dilated kernels up to 21 taps, where a register tile reads a wider halo:
      dilated_3x3_d2 0.077 against 0.083 (conv_tile).
    Not taken: float32 3x3 at dilation 1 (conv_tile: mbv2_3x3 0.069 against 0.070;
    image_3x3 0.158 against 0.152, within reach of its target either way), float64."""
    if dtype not in ("float32", *MMA_DTYPES) or (pr.SH, pr.SW) != (1, 1):
        return False
    v = _rows_async_shape(pr, dtype)[0]
    if _load_width(dtype, pr.IW, x_ptr, v) * ITEMSIZE[dtype] < (4 if dtype in MMA_DTYPES else 8):
        return False
    taps, dilated = pr.KH * pr.KW, (pr.DH, pr.DW) != (1, 1)
    if 10 <= taps <= 49 and not dilated and dtype == "float32":
        return pr.KH > 1  # one-row kernels have no rows to reuse: conv_tile (_tile_shape)
    if dtype in MMA_DTYPES:
        return _use_rows(pr, dtype)
    return dilated and taps <= 21 and (pr.KH - 1) * pr.DH + 1 <= 7


def _use_rows(pr, dtype):
    """Whether a row sweep serves a 16-bit problem the dispatcher accepts: kernels up to
    21 taps feeding at most 3 output rows per input row (3x3, 3x7). conv_rows_async takes
    them where its copies fit (sm_80+, see _use_rows_async); conv_rows (rows in
    registers) the rest. Sweep of conv_rows (H200, session 9, ms, against the previous
    plan; forward / grad input):
    seed_3x7 fp16 0.211 / 0.210 against 0.237 / 0.283, mbv2_3x3 0.047 / 0.047 against
    0.055 / 0.054, image_3x3 0.082 / 0.082 against 0.092 / 0.126. float32 measured
    slower or equal (seed_3x7 0.337 against 0.310, mbv2_3x3 0.070 against 0.068,
    effnet_5x5 0.046 against 0.044, image_3x3 0.153 against 0.156), and 7x7 slower
    everywhere (the ring and the weights spill: convnext_7x7 fp16 0.106 against 0.071)."""
    return dtype in MMA_DTYPES and pr.KH * pr.KW <= 21 and (pr.KH - 1) * pr.DH + 1 <= 3


# ---- conv_generic -----------------------------------------------------------------------

def generic_launch(pr, dtype):
    total = pr.planes * pr.OH * pr.OW
    expr = f"dw::conv_generic<{CXX_TYPE[dtype]}, {pr.mode}>"
    args = pack_args("GenericArgs", total=total, IH=pr.IH, IW=pr.IW, OH=pr.OH, OW=pr.OW, KH=pr.KH, KW=pr.KW,
                     SH=pr.SH, SW=pr.SW, DH=pr.DH, DW=pr.DW, pad_t=pr.PT, pad_l=pr.PL, **_channel_fields(pr))
    return Launch("conv.cu", expr, _grid1d(total, 256), (256, 1, 1), 0, (args,))


def plan_conv(pr, dtype, x_ptr, force=None, arch=None, sms=None):
    """The launch for a plane-to-plane problem: small planes across the batch
    (conv_batch) or whole small planes per block (conv_plane), tensor-core
    row sweeps for 16-bit kernels of more than 9 taps on large planes (conv_mma_rows), row
    sweeps (stride 1), tensor cores (16-bit, stride 1, dilation 1, sm_80+: conv_stack for
    batches of 16 images and more on small planes, else conv_mma), lines (large kernels
    on whole planes, float32 and float64, stride 1, dilation 1), then tile, then smem,
    then generic. `arch` (compute capability as an int, 90 for sm_90) defaults to
    the current device's. `force` = (kind, kwargs) plans one family (None where it
    declines the problem); kind "auto-norows" is the dispatcher without conv_rows (the
    sweep's comparison point)."""
    arch = current_arch() if arch is None else arch
    sms = current_sms() if sms is None else sms
    q = _flipped_problem(pr) if pr.mode == 1 and (pr.SH, pr.SW) == (1, 1) else pr
    if force is not None:
        kind, kwargs = force
        if kind == "tile":
            return tile_launch(pr, dtype, x_ptr, sms=sms, **kwargs)
        if kind == "smem":
            return smem_launch(q, dtype, arch=arch, sms=sms, **kwargs)
        if kind == "mma":
            return mma_launch(q, dtype, x_ptr, arch, sms, **kwargs)
        if kind == "stack":
            return stack_launch(q, dtype, x_ptr, arch, sms, **kwargs)
        if kind == "mma_rows":
            return mma_rows_launch(q, dtype, x_ptr, arch, sms, **kwargs)
        if kind == "plane":
            return plane_launch(q, dtype, sms=sms, **kwargs) if q.mode == 0 else None
        if kind == "batch":
            return batch_launch(q, dtype, x_ptr, sms=sms, **kwargs)
        if kind == "lines":
            return lines_launch(q, dtype, sms=sms, **kwargs)
        if kind == "rows":
            return rows_launch(q, dtype, x_ptr, sms=sms, arch=arch, **kwargs)
        if kind == "rows_whole":
            return rows_whole_launch(q, dtype, x_ptr, sms=sms, arch=arch, **kwargs)
        if kind == "auto-norows":
            return _auto_plan(pr, q, dtype, x_ptr, arch, sms, rows=False)
        return generic_launch(pr, dtype)
    return _auto_plan(pr, q, dtype, x_ptr, arch, sms)


def _auto_plan(pr, q, dtype, x_ptr, arch, sms, rows=True):
    launch = None
    if _use_batch(q, dtype):
        launch = _large_on_stack(q, dtype, x_ptr, arch, sms) or batch_launch(q, dtype, x_ptr, sms=sms)
    if launch is None and q.mode == 0 and _use_plane(q, dtype):
        launch = plane_launch(q, dtype, sms=sms)
    strided = _strided_small(q, dtype) if launch is None else None
    if strided == "plane":
        launch = plane_launch(q, dtype, sms=sms)
    if launch is None and strided is not None:
        launch = batch_launch(q, dtype, x_ptr, sms=sms)
    if launch is None and _use_mma_rows(q, dtype, x_ptr):
        launch = mma_rows_launch(q, dtype, x_ptr, arch, sms)
    if launch is None and rows and _use_rows_whole(q, dtype):
        launch = rows_whole_launch(q, dtype, x_ptr, sms=sms, arch=arch)
        if launch is not None and int(launch.scalars[0]["n_bands"]) != 1:
            launch = None
    if launch is None and rows and _use_rows_async(q, dtype, x_ptr):
        launch = rows_launch(q, dtype, x_ptr, sms=sms, staged=True, arch=arch)
    if launch is None and rows and _use_rows(q, dtype):
        launch = rows_launch(q, dtype, x_ptr, sms=sms)
    if launch is None and _use_mma(q, dtype):
        launch = stack_launch(q, dtype, x_ptr, arch, sms) if _use_stack(q) else None
        if launch is None:
            launch = mma_launch(q, dtype, x_ptr, arch, sms)
    if launch is None and q.mode == 0:
        launch = lines_launch(q, dtype, sms=sms)
    if launch is None:
        launch = tile_launch(pr, dtype, x_ptr, sms=sms)
    if launch is None and q.mode == 0:
        launch = smem_launch(q, dtype, arch=arch, sms=sms)
    return launch if launch is not None else generic_launch(pr, dtype)


@functools.lru_cache(maxsize=None)
def device_arch(device_id):
    """(compute capability as an int, 90 for sm_90; multiprocessor count) of a device."""
    import cupy

    dev = cupy.cuda.Device(device_id)
    return int(dev.compute_capability), int(dev.attributes["MultiProcessorCount"])


# Shared memory one block may opt in to (KB), by compute capability (the CUDA programming
# guide's table). The plans are tuned on sm_90, whose 227 KB some of them use; on a device
# with less, a plan that asks for more is replaced (_within_smem) instead of failing at
# launch. At run time the device's own attribute is used; this table serves plans made
# for an architecture without its device (the compile test), 48 KB (every device) where
# the architecture is not listed.
SMEM_OPT_IN_KB = {70: 96, 75: 64, 80: 163, 86: 99, 87: 163, 89: 99, 90: 227, 100: 227, 103: 227, 110: 227,
                  120: 99, 121: 99}


def arch_smem(arch):
    """Bytes of shared memory a block may opt in to on architecture `arch` (the table)."""
    return SMEM_OPT_IN_KB.get(arch, 48) * 1024


@functools.lru_cache(maxsize=None)
def device_smem(device_id):
    """Bytes of shared memory a block may opt in to on a device (its attribute)."""
    import cupy

    return int(cupy.cuda.Device(device_id).attributes["MaxSharedMemoryPerBlockOptin"])


def device_limits(device_id):
    """(compute capability, multiprocessor count, shared memory per block) of a device:
    the planners' last three arguments."""
    return device_arch(device_id) + (device_smem(device_id),)


def _limits(arch, sms, smem):
    """The planners' defaults: the current device's, and for an architecture given
    without a budget, the table's."""
    if arch is None:
        import cupy

        arch, dev_sms, dev_smem = device_limits(cupy.cuda.runtime.getDevice())
        return arch, (dev_sms if sms is None else sms), (dev_smem if smem is None else smem)
    return arch, (current_sms() if sms is None else sms), (arch_smem(arch) if smem is None else smem)


def _fits(smem, *launches):
    return all(launch is None or launch.shared_mem <= smem for launch in launches)


def _conv_within(launch, pr, dtype, x_ptr, arch, sms, smem):
    """`launch` where its shared memory fits the device's budget (`smem` bytes a block may
    opt in to), else the dispatcher's last resorts in its order that fit: conv_tile, then
    conv_smem with one tile per block, then the generic kernel (no shared memory)."""
    if _fits(smem, launch):
        return launch
    for force in (("tile", {}), ("smem", {"tiles_per_block": 1})):
        other = plan_conv(pr, dtype, x_ptr, force=force, arch=arch, sms=sms)
        if other is not None and _fits(smem, other):
            return other
    return generic_launch(pr, dtype)


def current_arch():
    import cupy

    return device_arch(cupy.cuda.runtime.getDevice())[0]


def current_sms():
    import cupy

    return device_arch(cupy.cuda.runtime.getDevice())[1]


def plan_forward(p, dtype, x_ptr, arch=None, sms=None, smem=None):
    """Forward launch for ConvParams p and input data pointer x_ptr (memoized per pointer
    alignment, architecture, SM count and shared memory a block may opt in to; all three
    default to the current device's, `smem` to arch_smem(arch) where only `arch` is given)."""
    return _plan_forward(p, dtype, x_ptr % 16, *_limits(arch, sms, smem))


def plan_grad_input(p, dtype, go_ptr, arch=None, sms=None, smem=None):
    """Grad-input launch for ConvParams p and grad_output data pointer go_ptr (memoized
    like plan_forward)."""
    return _plan_grad_input(p, dtype, go_ptr % 16, *_limits(arch, sms, smem))


@functools.lru_cache(maxsize=4096)
def _plan_forward(p, dtype, x_ptr, arch, sms, smem):
    pr = forward_problem(p)
    return _conv_within(plan_conv(pr, dtype, x_ptr, arch=arch, sms=sms), pr, dtype, x_ptr, arch, sms, smem)


@functools.lru_cache(maxsize=4096)
def _plan_grad_input(p, dtype, go_ptr, arch, sms, smem):
    pr = grad_input_problem(p)
    return _conv_within(plan_conv(pr, dtype, go_ptr, arch=arch, sms=sms), pr, dtype, go_ptr, arch, sms, smem)


# ---- weight gradient ------------------------------------------------------------------------

def _wgrad_chunks(units_per_channel, channels, sms=132):
    """Chunks per channel: enough blocks to fill the GPU a few times over."""
    target_blocks = 8 * sms
    chunks = max(1, min(_cdiv(target_blocks, max(channels, 1)), _cdiv(units_per_channel, 256 * 4)))
    return min(chunks, 65535)


def _wgrad_tile_shape(p, dtype):
    """(TH, TW, MINB): grad_output tile per thread of wgrad_tile and blocks per SM its
    registers must allow, from the grad-weight sweep and the benchmark (benchmarks/NOTES.md,
    sessions 3 and 6 on the H100, 14 on the H200; where the sweep and the benchmark
    disagreed on small problems the benchmark decided): register pressure is KH*KW tap
    sums plus the tile, so wider kernels take smaller tiles; dilated 3x3 reuses an 8x8
    tile's input rows. MINB 1 lets a thread keep whole tiles' loads in flight; strided
    problems read more x per tap and want the warps instead (2-3 blocks per SM)."""
    taps = p.KH * p.KW
    if dtype == "float64":
        return (2 if taps > 25 else 4), 4, 1
    small = p.OH * p.OW <= 400
    if p.SH * p.SW > 1 and (taps > 9 or p.OW > 8):
        # H200 sweep, session 14 (ms): effnet_5x5_s2 4x4 at 1 block per SM 0.0696, 3x4 at 2
        # 0.0559 (4x4 at 2 spills); mbv2_3x3_s2 2x8 at 1 0.1244, 1x4 at 3 0.0991, 4x4 at 2 0.1005.
        # 16-bit alike (session 36, ab.py, float16, us, against the 16-bit rows' 4x8 or 2x8 at
        # 1 block): mbv2_3x3_s2 90.0 / 154.1 (bfloat16 90.4 / 159.4), effnet_5x5_s2 63.2 /
        # 117.1, both at stride 3: 77.4 / 162.5 and 72.7 / 107.2. Small strided planes too
        # (session 36, against the small-plane 2x8 at 1 block; float16 / float32): 3x3 stride
        # 2 on 64 x 96 x 28 x 28 1x4 at 3 17.4 / 15.7 against 28.6 / 19.1; 5x5 stride 2 on
        # 64 x 144 x 28 x 28 4x4 at 2 43.5 / 28.2 against 68.2 / 38.5, on 14 x 14 (7 x 7
        # outputs) 18.7 / 18.4 against 27.9 / 18.8.
        if taps > 9:
            return (4, 4, 2) if small else (3, 4, 2)
        if dtype in ("float16", "bfloat16") and (p.SH, p.SW) == (2, 2) and p.OW >= 56:
            # 16-bit 3x3 at stride 2 on rows of 56 outputs and more: 1x8 at 2 blocks (float16
            # / bfloat16, us, against 1x4 at 3: mbv2_3x3_s2 81.0 / 80.9 against 90.0 / 90.4;
            # 32 x 32 x 224 x 224 57.6 against 64.6; on 64 x 144 x 56 x 56, 28 outputs a row,
            # 43.4 / 45.0 against 44.1 / 43.5; float32 loses: 104.4 against 96.8).
            return 1, 8, 2
        return 1, 4, 3
    if p.OW <= 8:
        return 2, 8, 1  # one tile spans the plane's width (convnext_7x7_s4: 2x7 0.050 vs 4x4 0.056)
    if small:
        return 2, 8, 1  # small planes: more units per channel (inception_1x7 sweep, session 6: 4x8 0.0237, 2x8 0.0173)
    if dtype in ("float16", "bfloat16"):
        return ((2, 8) if 9 < taps < 49 else (4, 8)) + (1,)  # seed_3x7 0.61 -> 0.40 ms; 7x7 4x8 0.141 vs 2x8 0.151
    if p.DH * p.DW > 1:
        return ((8, 8) if taps <= 9 else (2, 8)) + (1,)  # dilated_3x3_d2 0.115 -> 0.104
    if 9 < taps < 25:
        return 2, 8, 1  # seed_3x7 0.456 -> 0.405
    if taps >= 49:
        return 4, 4, 1  # convnext_7x7 0.132 -> 0.123
    if taps == 25:
        return 2, 8, 1  # effnet_5x5 (session 6 sweep: 4x8 0.0625, 2x8 0.0543; session 3's benchmark had 4x8 ahead)
    return 4, 8, 1  # mbv2_3x3 (sweep: 4x8 0.092, 2x8 0.098)


def wgrad_tile_launch(p, dtype, x_ptr, go_ptr, th=None, tw=None, minb=None, pf=None, chunks=None):
    taps = p.KH * p.KW
    if taps > TILE_MAX_TAPS:
        return None
    rule_th, rule_tw, rule_minb = _wgrad_tile_shape(p, dtype)
    if th is None:
        th, tw = rule_th, rule_tw
        if p.OW < tw:
            tw = max(1, p.OW)
        th = min(th, p.OH)
    if minb is None:
        minb = rule_minb
    span_w = (tw - 1) * p.SW + (p.KW - 1) * p.DW + 1
    vin = _load_width(dtype, p.W, x_ptr, tw * p.SW)
    shift = (-p.PL) % vin
    nb = _cdiv(shift + span_w, vin) * vin
    vgo = _load_width(dtype, p.OW, go_ptr, tw)
    if nb > 96 or th * tw > 64:
        return None
    n_cg, n_rt = _cdiv(p.OW, tw), _cdiv(p.OH, th)
    units = p.N * n_cg * n_rt
    if chunks is None:
        chunks = _wgrad_chunks(units, p.CM)
        if taps >= 49:
            # 50 sums per thread make each block's closing tree costly: fewer, longer
            # blocks (convnext_7x7 sweep, session 6: float16 7 chunks 0.137, 4 chunks 0.122 ms).
            chunks = min(chunks, 4)
    chunks = max(1, min(chunks, units, 65535))
    expr = "dw::wgrad_tile<" + _targs(
        CXX_TYPE[dtype], p.KH, p.KW, p.SH, p.SW, p.DH, p.DW, th, tw, vin, shift, vgo, minb,
        _wgrad_prefetch(dtype) if pf is None else pf
    ) + ">"
    args = _wgrad_args(p, chunks, n_cg=n_cg, n_rt=n_rt)
    grid = (chunks, min(p.CM, 65535), 1)
    return Launch("wgrad.cu", expr, grid, (256, 1, 1), 0, (args,)), chunks


def _wgrad_args(p, chunks, n_cg=0, n_rt=0, G=0, n_tkw=0, xpitch=0, gpitch=0):
    """WgradArgs; fields a kernel family does not use stay 0."""
    return pack_args("WgradArgs", IH=p.H, IW=p.W, OH=p.OH, OW=p.OW, KH=p.KH, KW=p.KW, SH=p.SH, SW=p.SW,
                     DH=p.DH, DW=p.DW, pad_t=p.PT, pad_l=p.PL, n_cg=n_cg, n_rt=n_rt, N=p.N, C=p.C, M=p.M,
                     CM=p.CM, n_chunks=chunks, G=G, n_tkw=n_tkw, xpitch=xpitch, gpitch=gpitch)


def wgrad_generic_launch(p, dtype):
    per_channel = p.N * p.OH * p.OW
    chunks = max(1, min(_cdiv(8 * 132, max(p.CM, 1)), _cdiv(per_channel, 4096), 65535))
    expr = f"dw::wgrad_generic<{CXX_TYPE[dtype]}>"
    block = min(256, _cdiv(p.KH * p.KW + 1, 32) * 32)
    grid = (chunks, min(p.CM, 65535), 1)
    return Launch("wgrad.cu", expr, grid, (block, 1, 1), 0, (_wgrad_args(p, chunks),)), chunks


REDUCE_ROUND = 256 * 8      # partials one block copies in one round of loads (8 per thread)
REDUCE_SMEM = 48 * 1024


def reduce_launch(p, dtype, chunks, staged=None, ob=None):
    """wgrad_reduce: blocks of OB channels whose partials (chunks x (taps + 1) each) are
    staged in shared memory, OB chosen so a block's run is one round of loads (or `ob`);
    one thread per output, reading global memory, where one channel's partials exceed the
    budget (or `staged` is False)."""
    taps = p.KH * p.KW
    expr = f"dw::wgrad_reduce<{CXX_TYPE[dtype]}>"
    row = chunks * (taps + 1)
    acc = ITEMSIZE[ACC_DTYPE[dtype]]
    if staged is None:
        staged = row * acc <= REDUCE_SMEM
    if staged:
        ob = max(1, min(p.CM, REDUCE_ROUND // row)) if ob is None else ob
        args = pack_args("ReduceArgs", CM=p.CM, KK=taps, n_chunks=chunks, OB=ob)
        return Launch("wgrad.cu", expr, (_cdiv(p.CM, ob), 1, 1), (256, 1, 1), ob * row * acc, (args,))
    args = pack_args("ReduceArgs", CM=p.CM, KK=taps, n_chunks=chunks, OB=0)
    return Launch("wgrad.cu", expr, _grid1d(p.CM * (taps + 1), 256), (256, 1, 1), 0, (args,))


def reg_cap(block, minb):
    """Registers per thread ptxas allows under __launch_bounds__(block, minb): the
    resident warps spread over the SM's 4 schedulers, each with 16384 registers, in
    steps of 8 per thread (ptxas: 64 threads x 6 blocks -> 168, x 7 -> 128)."""
    warps = minb * _cdiv(block, 32)
    return min(255, 16384 // (_cdiv(warps, 4) * 32) // 8 * 8)


def _plane_minb(block, need):
    """The largest blocks-per-SM launch bound (at most 16) whose register cap per thread
    still holds `need` registers."""
    minb = 1
    while minb < 16 and reg_cap(block, minb + 1) >= min(need, 255):
        minb += 1
    return minb


def _plane_weight_pitch(p, dtype):
    """(KWP, WP) of bwd_plane's staged weights (mirrors plane_backward in cuda/plane.cu):
    rows padded to whole 16-byte vectors of the accumulation type, channels WP apart with
    WP an odd number of vectors, so that 8 lanes of different channels read 8 different
    16-byte bank groups."""
    lv = 16 // ITEMSIZE[ACC_DTYPE[dtype]]
    kwp = _cdiv(p.KW, lv) * lv
    wp = p.KH * kwp + (lv if (p.KH * kwp // lv) % 2 == 0 else 0)
    return kwp, wp


def wgrad_plane_smem_bytes(p, dtype, planes, items, weights=False, stages=1):
    """Dynamic shared memory of wgrad_plane: `items` runs of x planes and of grad_output
    planes per stage, each with a vector of slack (mirrors cuda/plane.cu), or the final
    sums if larger; with `weights` (bwd_plane) the block's weights follow the runs, and
    the final sums start after the x runs (which then hold the last step's grad_x)."""
    size, acc = ITEMSIZE[dtype], ITEMSIZE[ACC_DTYPE[dtype]]
    v = 16 // size
    xruns = stages * items * _up16((planes * p.H * p.W + v) * size)
    staging = xruns + stages * items * _up16((planes * p.OH * p.OW + v) * size)
    sums = items * planes * (p.KH * p.KW + 1) * acc
    if weights:
        return max(staging + planes * _plane_weight_pitch(p, dtype)[1] * acc, xruns + sums)
    return max(staging, sums)


def _plane_backward_block(p, dtype, planes, items, chunks, weights=False, stages=1):
    """(planes, items, chunks, groups, block, shared memory) of wgrad_plane and bwd_plane
    (`weights`), or None if the shape does not fit their budgets. 16 channels x 8 batch
    items per block by default (sweep, convnext_7x7_s4 float32, wgrad_plane: 0.0213 ms;
    32 x 4: 0.0241, 64 x 2: 0.0262, 16 x 4: 0.0245; bwd_plane, session 17: 0.0262;
    8 x 16: 0.0273, 32 x 4: 0.0293, 16 x 4: 0.0311)."""
    if p.KH * p.KW > PLANE_MAX_TAPS or p.H * p.W > PLANE_MAX_ROW or p.OW > PLANE_MAX_ROW or min(p.OH, p.OW) < 1:
        return None
    planes = min(p.CM, 16) if planes is None else min(planes, p.CM)
    items = max(1, min(p.N, 128 // planes)) if items is None else max(1, min(items, p.N))
    smem = wgrad_plane_smem_bytes(p, dtype, planes, items, weights=weights, stages=stages)
    groups = _cdiv(p.CM, planes)
    block = _cdiv(planes * items, 32) * 32
    if smem > 2 * PLANE_SMEM or groups > INT32_MAX or block > 1024:
        return None
    if chunks is None:
        # Enough blocks for ~3 per SM, no chunk smaller than one step of `items`.
        chunks = max(1, min(_cdiv(p.N, items), _cdiv(3 * 132, groups)))
    chunks = max(1, min(chunks, p.N, 65535))
    return planes, items, chunks, groups, block, smem


def wgrad_plane_launch(p, dtype, planes=None, items=None, chunks=None):
    """wgrad_plane plan for small planes: (stage-1 launch, chunks), or None if the shape
    does not fit its register and shared-memory budget."""
    geo = _plane_backward_block(p, dtype, planes, items, chunks)
    # Registers: tap and bias sums, the x plane, a grad_output row, ~40 for addresses.
    need = (p.KH * p.KW + 1 + p.H * p.W + p.OW) * (2 if ITEMSIZE[dtype] == 8 else 1) + 40
    if geo is None or need > 255:
        return None
    planes, items, chunks, groups, block, smem = geo
    expr = "dw::wgrad_plane<" + _targs(
        CXX_TYPE[dtype], p.KH, p.KW, p.SH, p.SW, p.DH, p.DW, p.H, p.W, p.OH, p.OW, p.PT, p.PL, block,
        _plane_minb(block, need)
    ) + ">"
    args = pack_args("WplaneArgs", N=p.N, C=p.C, M=p.M, CM=p.CM, n_chunks=chunks, G=items, P=planes)
    return Launch("plane.cu", expr, (groups, chunks, 1), (block, 1, 1), smem, (args,)), chunks


def bwd_plane_regs(p, dtype):
    """Registers bwd_plane needs (32-bit): tap and bias sums, then the larger phase: the x
    plane and a grad_output row (weight gradient), or a band of grad_x sums, a grad_output
    row and a weight row (grad input); ~40 for addresses; float64 values take two."""
    kwp = _plane_weight_pitch(p, dtype)[0]
    values = p.KH * p.KW + 1 + p.H * p.W + p.OW + kwp
    return values * (2 if ITEMSIZE[dtype] == 8 else 1) + 40


def bwd_plane_launch(p, dtype, planes=None, items=None, chunks=None, minb=None, stages=None):
    """bwd_plane plan (the whole backward of small planes in one pass: stride 1,
    multiplier 1): (launch, chunks), or None if the shape does not fit.
    Channels x batch items per block and chunks as wgrad_plane's by default; `minb`
    fixes the blocks-per-SM launch bound; `stages` 2 copies a block's next step during
    this one."""
    stages = 1 if stages is None else stages
    if p.M != 1 or p.SH != 1 or p.SW != 1 or not _use_wgrad_plane(p):
        return None
    geo = _plane_backward_block(p, dtype, planes, items, chunks, weights=True, stages=stages)
    need = bwd_plane_regs(p, dtype)
    if geo is None or need > 255:
        return None
    planes, items, chunks, groups, block, smem = geo
    if minb is None:
        minb = _plane_minb(block, need)
    expr = "dw::bwd_plane<" + _targs(
        CXX_TYPE[dtype], p.KH, p.KW, p.DH, p.DW, p.H, p.W, p.OH, p.OW, p.PT, p.PL, stages, block, minb
    ) + ">"
    args = pack_args("WplaneArgs", N=p.N, C=p.C, M=p.M, CM=p.CM, n_chunks=chunks, G=items, P=planes)
    return Launch("plane.cu", expr, (groups, chunks, 1), (block, 1, 1), smem, (args,)), chunks


def _use_wgrad_plane(p):
    """Small planes (OH*OW <= 64): wgrad_plane, whose blocks move whole planes as
    contiguous runs (convnext_7x7_s4: wgrad_tile 13 % of the floor)."""
    return p.OH * p.OW <= PLANE_MAX_ROW and _odd_planes(p.H * p.W, p.OH * p.OW)


WGRAD_SMEM_TILE = (8, 4, 8)  # TKH x TKW taps per thread, U grad_output columns per step


def _wgrad_smem_tile(p, acc_size):
    """(TKH, TKW, U) of wgrad_smem. 4-byte sums: 4 x 8 taps per thread, 112-121
    registers, so two blocks of 256 threads stay resident where 8 x 8 tiles (155) held
    two of 128 (replk_31x31 float32 grad weight 0.664 -> 0.630 ms; 4x8 U 16 on
    replk_13x13 0.160 -> 0.148). U = 16 unless it pads the grad_output columns further
    than U = 8 (56 columns: 64 against 56; replk_31x31 U 16 0.665). 8-byte sums keep
    8 x 4 (unmeasured with other tiles)."""
    if acc_size != 4:
        return WGRAD_SMEM_TILE
    return (4, 8, 16 if _cdiv(p.OW, 16) * 16 <= _cdiv(p.OW, 8) * 8 else 8)


def wgrad_smem_launch(p, dtype, arch=90, stage_async=None, chunks=None, groups=None, sms=132, tile=None):
    """wgrad_smem plan (stride 1, dilation 1, any kernel size); None if it does not fit.
    stage_async: double-buffered cp.async staging (default: sm_80+ without conversion,
    where two stages fit). chunks (batch chunks per channel) and groups (row groups per
    block) are forced by the sweeps."""
    if (p.SH, p.SW, p.DH, p.DW) != (1, 1, 1, 1):
        return None
    acc_size = ITEMSIZE[ACC_DTYPE[dtype]]
    if tile is None:
        tile = _wgrad_smem_tile(p, acc_size)
    tkh, tkw, u = tile
    lv = 16 // acc_size
    n_tkh, n_tkw = _cdiv(p.KH, tkh), _cdiv(p.KW, tkw)
    n_tt = n_tkh * n_tkw
    if n_tt > 256:
        return None
    nb = p.OH + tkh - 1
    groups = max(1, min(256 // n_tt, groups or min(8, nb // 4)))
    owp = _cdiv(p.OW, u) * u
    xs = _cdiv(u + tkw - 1, lv) * lv
    xpitch = _cdiv(owp - u + n_tkw * tkw - tkw + xs, lv) * lv
    if xpitch % 32 == 0:
        xpitch += lv
    xr = p.OH + n_tkh * tkh - 1
    gr = p.OH + 2 * (tkh - 1)
    stage = xr * xpitch + gr * owp
    stage_async = (arch >= 80 and ACC_DTYPE[dtype] == dtype
                   and (2 * stage * acc_size <= SM_SMEM if stage_async is None else bool(stage_async)))
    floats = max((2 if stage_async else 1) * stage, groups * n_tt * tkh * tkw, 32)
    smem = floats * acc_size
    if smem > SM_SMEM:
        return None
    block = _cdiv(n_tt * groups, 32) * 32
    if chunks is None:
        # One wave: as many batch chunks as leave every block resident at once (registers
        # estimated at 128 per thread for 4-byte sums; ptxas reports 112-121 for the 4 x 8
        # tiles, 105-165 for the others the sweep forces). A block walks its chunk's
        # planes; a second, partial wave costs more than longer walks
        # (replk_31x31 float32 grad weight: 5 chunks in 2.4 waves 0.815 ms, 2 chunks in one
        # 0.722, 12 chunks 0.772).
        regs = 128 * (acc_size // 4)
        per_sm = max(1, min(SM_SMEM // (smem + 1024), SM_THREADS // block, 65536 // (block * regs)))
        chunks = max(1, per_sm * sms // max(p.CM, 1))
    chunks = max(1, min(p.N, chunks, 65535))
    expr = f"dw::wgrad_smem<{CXX_TYPE[dtype]}, {tkh}, {tkw}, {u}, {_targs(stage_async)}>"
    args = _wgrad_args(p, chunks, G=groups, n_tkw=n_tkw, xpitch=xpitch, gpitch=owp)
    return Launch("wgrad.cu", expr, (chunks, min(p.CM, 65535), 1), (block, 1, 1), smem, (args,)), chunks


# ---- wgrad_mma (tensor cores, 16-bit, stride 1, dilation 1) --------------------------------

WMMA_MAX_KH, WMMA_MAX_KW = 31, 32  # M blocks KH // 16 + 1 <= 2, N blocks <= 4
WMMA_MAX_SMEM = 112 * 1024  # at least two blocks per SM


def wgrad_mma_geometry(kh, kw, wr, shift, stages, bh, ow):
    """(NC, XP, GOFF, GP, shared-memory bytes) of wgrad_mma; mirrors the formulas in
    cuda/wgrad_mma.cu (the kernel traps if it is given less shared memory)."""
    nmb, nnb = kh // 16 + 1, _cdiv(kw, 8)
    nc = _cdiv(shift + ow + kw - 1, 16)  # 16-column k-steps per grad_output row
    xp = 16 * nc + 8                     # input row pitch: an odd number of 16-byte units
    goff = _cdiv(shift + 8 * nnb - 1, 8) * 8
    gp = goff + 16 * nc + 8
    slot = ((bh + kh - 1) * xp + bh * gp) * 2
    return nc, xp, goff, gp, stages * slot + 32 * nc + wr * 16 * nmb * 8 * nnb * 4


def _wmma_staging(p, x_ptr, go_ptr):
    """(XGRAN, SHIFT, GGRAN): copy widths for the input and grad_output rows (16 or 4
    bytes, 2 = checked loads) and the input columns staged before column -pad_l."""
    if p.W % 8 == 0 and x_ptr % 16 == 0:
        xg, shift = 16, (-p.PL) % 8
    elif p.W % 2 == 0 and x_ptr % 4 == 0:
        xg, shift = 4, (-p.PL) % 2
    else:
        xg, shift = 2, 0
    if p.OW % 8 == 0 and go_ptr % 16 == 0:
        gg = 16
    elif p.OW % 2 == 0 and go_ptr % 4 == 0:
        gg = 4
    else:
        gg = 2
    return xg, shift, gg


def _wmma_shape(p):
    """(WR, BH, STAGES, MINB): warps per block, grad_output rows per item, ring depth,
    blocks per SM the registers must allow. An item should carry a few thousand
    grad_output elements, so the per-item cost (barrier, copy issue, pipeline turn) stays
    small next to its MMAs; whole planes when they are small."""
    if (p.KH // 16 + 1) * _cdiv(p.KW, 8) >= 4:
        # Compute-bound (large kernels): more warps, <= 128 registers (no spills), whole
        # planes up to 64 rows (replk_31x31: 0.209 ms with 32 rows, 0.184 with 56).
        return 8, min(p.OH, 64), 2, 2
    wr = 4
    bh = min(p.OH, max(16, _cdiv(_cdiv(4096, max(p.OW, 1)), wr) * wr), 64)
    return wr, bh, 2, 6


def wgrad_mma_launch(p, dtype, x_ptr, go_ptr, arch, sms=132, wr=None, bh=None, stages=None, minb=None, chunks=None,
                     blocks_y=None):
    """(wgrad_mma stage-1 launch, chunks), or None when the problem is not one it takes.
    Blocks are persistent: one wave of them (as many as fit on every SM at once) shares
    the (channel, n, band) items, each block a contiguous range of one channel's items.
    `chunks` and `blocks_y` (grid height: channels per block loop) let tests force many
    items per block and several channels per block."""
    if (dtype not in MMA_DTYPES or arch < MMA_MIN_ARCH or (p.SH, p.SW, p.DH, p.DW) != (1, 1, 1, 1)
            or p.KH > WMMA_MAX_KH or p.KW > WMMA_MAX_KW or p.OH * p.OW == 0):
        return None
    dwr, dbh, dst, dmb = _wmma_shape(p)
    wr = dwr if wr is None else wr
    bh = min(dbh if bh is None else bh, p.OH)
    stages = dst if stages is None else stages
    minb = dmb if minb is None else minb
    xg, shift, gg = _wmma_staging(p, x_ptr, go_ptr)
    nc, xp, goff, gp, smem = wgrad_mma_geometry(p.KH, p.KW, wr, shift, stages, bh, p.OW)
    while smem > WMMA_MAX_SMEM and bh > 1:  # wide planes: fewer rows per item
        bh = max(1, bh // 2)
        nc, xp, goff, gp, smem = wgrad_mma_geometry(p.KH, p.KW, wr, shift, stages, bh, p.OW)
    if smem > WMMA_MAX_SMEM:
        return None
    n_bands = _cdiv(p.OH, bh)
    units = p.N * n_bands
    if chunks is None:
        per_sm = max(1, min(minb, SM_SMEM // (smem + 1024), SM_THREADS // (32 * wr)))
        chunks = (sms * per_sm) // max(p.CM, 1)
    chunks = max(1, min(chunks, units, 65535))
    expr = "dw::wgrad_mma<" + _targs(CXX_TYPE[dtype], p.KH, p.KW, wr, shift, xg, gg, stages, minb) + ">"
    args = pack_args("WmmaArgs", units=units, IH=p.H, IW=p.W, OH=p.OH, OW=p.OW, pad_t=p.PT, pad_l=p.PL, C=p.C,
                     M=p.M, CM=p.CM, n_chunks=chunks, BH=bh, n_bands=n_bands, NC=nc, XP=xp, GOFF=goff, GP=gp)
    grid = (chunks, min(p.CM, blocks_y or 65535, 65535), 1)
    return Launch("wgrad_mma.cu", expr, grid, (32 * wr, 1, 1), smem, (args,)), chunks


def plan_wgrad(p, dtype, x_ptr, go_ptr, arch=None, sms=None, force=None, smem=None):
    """(stage-1 launch, chunks, stage-2 launch) for grad weight and grad bias: wgrad_plane
    for small planes, wgrad_stack (16-bit, more than 25 taps, 16 images and more, planes
    up to 64 x 64), wgrad_tile for small kernels; for large ones wgrad_lines (16-bit on
    small planes, _use_wgrad_lines16), wgrad_mma (16-bit, stride 1, dilation 1, sm_80+),
    wgrad_lines (stride 1, dilation 1, planes that fit), else wgrad_smem (stride 1), else
    generic. x_ptr and go_ptr are the
    data pointers (only their alignment matters). `force` is None, a family name ("mma",
    "stack", "tile", "plane", "lines", "smem", "generic") or (name, keyword arguments) for the
    tests and sweeps; a forced plan is not held to `smem`, the shared memory a block may
    opt in to, see plan_forward)."""
    arch, sms, smem = _limits(arch, sms, smem)
    if force is None:
        return _plan_wgrad(p, dtype, x_ptr % 16, go_ptr % 16, arch, sms, smem)
    kind, kwargs = (force, {}) if isinstance(force, str) else force
    res = None
    if kind == "mma":
        res = wgrad_mma_launch(p, dtype, x_ptr, go_ptr, arch, sms, **kwargs)
    elif kind == "stack":
        res = wgrad_stack_launch(p, dtype, x_ptr, go_ptr, arch, sms, **kwargs)
    elif kind == "smem":
        res = wgrad_smem_launch(p, dtype, arch, sms=sms, **kwargs)
    elif kind == "tile":
        res = wgrad_tile_launch(p, dtype, x_ptr, go_ptr, **kwargs)
    elif kind == "plane":
        res = wgrad_plane_launch(p, dtype, **kwargs)
    elif kind == "lines":
        res = wgrad_lines_launch(p, dtype, sms=sms, **kwargs)
    return _with_reduce(p, dtype, res)


# ---- the split backward's streams ------------------------------------------------------

# Problems below SPLIT_CONCURRENT_MIN elements of x run the split backward on the caller's
# stream alone (two events and a stream switch cost a few microseconds of host time);
# None turns the side stream off.
SPLIT_CONCURRENT_MIN = 1 << 22
# Below this many FLOPs per gradient the weight gradient's stream takes the greatest
# priority (see split_streams).
SPLIT_FIRST_MAX_FLOPS = 8e9


def split_streams(p):
    """How the split backward (grad input, then the weight gradient's stage 1 and its
    reduction) uses streams: None (all on the caller's stream), "shared" (stage 1 on a side
    stream of default priority) or "wgrad_first" (a side stream of the greatest priority).

    Both kernels are FMA-bound and run their blocks in waves that leave SMs idle at the
    end (and at the start, while the first blocks stage); on two streams the other
    kernel's blocks fill them. With the greatest priority the block scheduler gives freed
    slots to the weight gradient first; that order suits the shorter problems, and equal
    priority the long ones. Measured (H200, backward, us: one stream / shared /
    wgrad_first): replk_13x13 float32 125.1 / 123.0 / 119.1, effnet_5x5_s2 105.9 / 104.2
    / 100.8, mbv2_3x3_s2 206.1 / 206.7 / 202.3; replk_31x31 float32 837 / 823.7 / 839,
    float16 338 / 337 / 341, bfloat16 337 / 337 / 341 (24.7 GFLOP per gradient, against
    at most 2.2 for the others)."""
    if SPLIT_CONCURRENT_MIN is None or p.N * p.C * p.H * p.W < SPLIT_CONCURRENT_MIN:
        return None
    flops = 2.0 * p.N * p.CM * p.OH * p.OW * p.KH * p.KW
    return "wgrad_first" if flops < SPLIT_FIRST_MAX_FLOPS else "shared"


def _with_reduce(p, dtype, res):
    """(stage 1, chunks, stage 2) from a family's (stage 1, chunks), or from the generic
    kernel's where the family declined (res None)."""
    stage1, chunks = res if res is not None else wgrad_generic_launch(p, dtype)
    return stage1, chunks, reduce_launch(p, dtype, chunks)


def _use_wgrad_mma(p):
    """Tensor cores for the weight gradient of kernels too large for wgrad_tile
    (replk_31x31 16-bit: wgrad_smem 1.11 ms -> 0.18 ms). Small kernels stay on
    wgrad_tile, measured faster (benchmarks/NOTES.md, session 3): an MMA yields a 16 x 8
    tap tile, of which a 3x3 kernel uses 9 entries, for about a dozen instructions of
    fragment loads around it, while the FFMA path spends its instructions on useful taps
    only (mbv2_3x3 fp16 0.095 vs 0.21 ms, seed_3x7 0.37 vs 0.45, convnext_7x7 0.141 vs
    0.147)."""
    return p.KH * p.KW > TILE_MAX_TAPS


WGRAD_LINES16_MAX_OUTPUTS = 400       # 16-bit wgrad_lines before the tensor cores: any kernel
WGRAD_LINES16_MID_OUTPUTS = 28 * 28   # ... and up to 13x13 kernels on planes up to this


def _use_wgrad_lines16(p, dtype):
    """16-bit weight gradients of large kernels on small planes: wgrad_lines (planes
    staged as float32, FFMA) before wgrad_mma, whose 16 x 8 tap tiles and per-image
    fragments cost more than the taps there. Measured (H200, float16, ab.py --pass
    grad_weight, us, wgrad_mma / wgrad_lines; bfloat16 within 1 %): 13x13 on 64 x 768 x
    7 x 7 220.0 / 43.3, 9x9 202.7 / 32.1, 11x11 on 64 x 512 x 7 x 7 194.3 / 32.5; on
    64 x 384 x 14 x 14 13x13 160.9 / 49.3, 9x9 152.8 / 33.1; 31x31 on 32 x 256 x 14 x 14
    117.8 / 81.3; on 32 x 256 planes 13x13 20 x 20 75.3 / 40.2, 24 x 24 91.3 / 60.7,
    28 x 28 103.4 / 79.7, 9x9 on 28 x 28 100.6 / 60.4. The tensor cores keep larger
    problems: 17x17 on 32 x 128 x 32 x 32 81.0 / 84.9, 31x31 on 32 x 128 x 28 x 28 97.6 /
    114.4, 13x13 on 16 x 128 x 56 x 56 71.6 / 131.9, replk_31x31 189.8 / 454.9."""
    if dtype not in MMA_DTYPES:
        return False
    n = p.OH * p.OW
    return n <= WGRAD_LINES16_MAX_OUTPUTS or (n <= WGRAD_LINES16_MID_OUTPUTS and p.KH * p.KW <= 13 * 13)


@functools.lru_cache(maxsize=4096)
def _plan_wgrad(p, dtype, x_ptr, go_ptr, arch, sms, smem):
    plan = _plan_wgrad_tuned(p, dtype, x_ptr, go_ptr, arch, sms)
    if _fits(smem, plan[0], plan[2]):
        return plan
    # More shared memory than a block may have on this device (`smem`, see plan_forward):
    # the dispatcher's last resorts in its order that fit, wgrad_tile, then wgrad_smem with
    # one stage, then the generic kernel (no shared memory).
    for res in (wgrad_tile_launch(p, dtype, x_ptr, go_ptr),
                wgrad_smem_launch(p, dtype, arch, stage_async=False, sms=sms)):
        if res is not None:
            plan = _with_reduce(p, dtype, res)
            if _fits(smem, plan[0], plan[2]):
                return plan
    return _with_reduce(p, dtype, None)


def _plan_wgrad_tuned(p, dtype, x_ptr, go_ptr, arch, sms):
    res = wgrad_plane_launch(p, dtype) if _use_wgrad_plane(p) else None
    if res is None and _use_wgrad_stack(p, dtype):
        res = wgrad_stack_launch(p, dtype, x_ptr, go_ptr, arch, sms)
    if res is None and _use_wgrad_mma(p) and _use_wgrad_lines16(p, dtype):
        res = wgrad_lines_launch(p, dtype, sms=sms)
    if res is None and _use_wgrad_mma(p):
        res = wgrad_mma_launch(p, dtype, x_ptr, go_ptr, arch, sms)
    if res is None:
        res = wgrad_lines_launch(p, dtype, sms=sms)
    if res is None:
        res = wgrad_tile_launch(p, dtype, x_ptr, go_ptr)
    if res is None:
        res = wgrad_smem_launch(p, dtype, arch, sms=sms)
    return _with_reduce(p, dtype, res)


# ---- fused backward (bwd_tile) ---------------------------------------------------------

def _bwd_tile_shape(p, dtype):
    """(TH, TW, MINB, PF) of bwd_tile, from the backward sweep (benchmarks/NOTES.md,
    session 7, H100). Registers hold KH*KW weights and KH*KW + 1 tap sums for the whole
    block, plus the tile's sums, its x values and one window row; occupancy decides most
    rows (the 16-bit 3x3 tiles gain most from 3 blocks per SM, where bfloat16's
    conversions spill and a one-row tile serves it better)."""
    taps = p.KH * p.KW
    if dtype == "float64":
        return 2, 4, 1, 0
    if dtype == "float32":
        if p.H * p.W <= 400:
            # Small planes, up to 9 taps: 3 blocks per SM (72-80 registers, the cap; 12-
            # to 16-tap kernels spill there), so that inception_1x7's 2 x 192 blocks are
            # one wave (396 slots; at 2 per SM, 264 slots and a tail wave). H200, session
            # 16, backward: 2x4 at 2 blocks 0.0204 ms, at 3 0.0159; 1x4 at 3 0.0158; 1x8
            # at 2 0.0166 (H100, session 7: 2x4 0.0202, 2x8 0.0270).
            return 2, 4, 3 if taps <= 9 else 2, 0
        return 2, 8, 2, 0  # seed 0.603, mbv2 0.138, effnet 0.0763, convnext 0.157, image 0.296 ms
    if taps <= 9:
        if p.H * p.W <= 400:
            # Small planes, as float32, without the next tile's prefetch (H200, us, the
            # three gradients; session 16: the split backward before, whose 2x8 tiles were
            # too few to fuse, float16 1x7 on 32 x 192 x 17 x 17 23.0 -> 16.4, 7x1 45.4 ->
            # 20.5). Session 38, against the previous plans (float16 2x4 at 3 blocks with
            # the prefetch, bfloat16 1x8 at 2 blocks), float16 / bfloat16: on 32 x 192 x
            # 17 x 17 7x1 20.9 -> 18.6 / 54.8 -> 20.3, 1x7 16.5 -> 15.4 / 25.1 -> 17.3, 3x3
            # 19.3 -> 17.4 / 32.2 -> 21.0, 1x3 15.1 -> 14.5 / 28.5 -> 16.1, 5x1 18.1 -> 16.0 /
            # 40.3 -> 17.2; on 64 x 192 x 13 x 13 3x3 21.5 -> 20.0 / 33.9 -> 24.2, 1x7 18.1 ->
            # 17.2 / 27.4 -> 19.7; 3x3 at dilation 2 on 64 x 96 x 15 x 15 22.5 -> 17.0 / 25.1
            # -> 18.9. bfloat16 (and dilated float16) spill 8-40 bytes there with the
            # device's NVRTC 13.0, measured faster than every spill-free candidate (1x4 at 3
            # blocks 16.5-26.1, 2x4 at 2 24.2-32.0).
            return 2, 4, 3, 0
        if dtype == "float16":
            return 2, 8, 3, 1  # mbv2 0.0865, image 0.173 ms (4x8 at 2 blocks: 0.110, 0.201)
        return 1, 8, 2, 1  # bfloat16 mbv2 0.102, image 0.207 ms (2x8 at 3 blocks spills: 0.110, 0.219)
    if taps < 49 and dtype == "float16":
        return 4, 8, 2, 0  # seed_3x7 0.534 ms (2x8: 0.592)
    return 2, 8, 2, 0  # seed_3x7 bfloat16 0.590 (4x8 spills: 0.587-1.01), convnext_7x7 0.147 / 0.173 ms


BWD_MIN_UNITS = 1024  # tiles per channel below which the separate kernels serve (4 per thread)


def _bwd_chunks(units, channels, minb, taps, sms=132):
    """Chunks per channel of bwd_tile (backward sweep, benchmarks/NOTES.md session 7).
    Where two or more chunks per channel put every block of the grid on the GPU at once
    (within 10 % of its MINB x SMs slots) there is no tail wave: take that count
    (seed_3x7, 128 channels: 2 chunks 0.564 ms, 9 chunks 0.602). One chunk per channel
    measured mixed (effnet_5x5 0.070 against 0.077, dilated_3x3_d2 0.161 against 0.148),
    so it is not taken. Else the grad-weight rule; 49-tap blocks close with a 50-value
    sum, so at most 4 chunks (convnext_7x7: 4 chunks 0.147 ms, 11 chunks 0.157)."""
    slots = sms * minb
    one_wave = slots // max(channels, 1)
    if one_wave >= 2 and one_wave * channels * 10 >= slots * 9:
        chunks = one_wave
    else:
        chunks = _wgrad_chunks(units, channels, sms)
    return min(chunks, 4) if taps >= 49 else chunks


def bwd_tile_launch(p, dtype, x_ptr, go_ptr, th=None, tw=None, minb=None, pf=None, chunks=None, sms=132,
                    min_units=0):
    """(bwd_tile launch, chunks) for the fused backward; None where it does not apply:
    stride 1, multiplier 1, at most TILE_MAX_TAPS taps, top/left padding within the
    kernel's reach, tiles of the x plane that also cover the grad_output plane, and at
    least `min_units` tiles per channel."""
    taps = p.KH * p.KW
    if (p.SH, p.SW) != (1, 1) or p.M != 1 or taps > TILE_MAX_TAPS:
        return None
    if p.PT > (p.KH - 1) * p.DH or p.PL > (p.KW - 1) * p.DW:
        return None
    dth, dtw, dminb, dpf = _bwd_tile_shape(p, dtype)
    th = dth if th is None else th
    tw = dtw if tw is None else tw
    minb = dminb if minb is None else minb
    pf = dpf if pf is None else pf
    th, tw = min(th, p.H), min(tw, p.W)
    n_rt, n_cg = _cdiv(p.H, th), _cdiv(p.W, tw)
    if n_rt * th < p.OH or n_cg * tw < p.OW:
        return None
    vx = _load_width(dtype, p.W, x_ptr, tw)
    span_w = tw + (p.KW - 1) * p.DW
    vgo = _load_width(dtype, p.OW, go_ptr, tw)
    shift = (p.PL - (p.KW - 1) * p.DW) % vgo
    nb = _cdiv(shift + span_w, vgo) * vgo
    if nb > 96 or th * tw > 64:
        return None
    v = 16 // ITEMSIZE[dtype]
    vout = p.W % v == 0 and tw % v == 0
    units = p.N * n_rt * n_cg
    if units < min_units:
        return None
    if chunks is None:
        chunks = _bwd_chunks(units, p.C, minb, taps, sms)
    chunks = max(1, min(chunks, units, 65535))
    expr = "dw::bwd_tile<" + _targs(
        CXX_TYPE[dtype], p.KH, p.KW, p.DH, p.DW, p.PT, p.PL, th, tw, vx, vgo, shift, vout, minb, pf) + ">"
    args = _wgrad_args(p, chunks, n_cg=n_cg, n_rt=n_rt)
    grid = (chunks, min(p.C, 65535), 1)
    return Launch("bwd.cu", expr, grid, (256, 1, 1), 0, (args,)), chunks


BWD_ROWS_MAX_TAPS = 49  # the ring, its x rows, the tap sums and the weights in registers
BWD_ROWS_UNIT_ROWS = 8  # a unit's fixed cost (filling its copy pipeline), in rows swept


def _bwd_rows_split(p, n_cs, q, segs, resident, rb=None, chunks=None):
    """(RB, bands, chunks) of bwd_rows: the band height and chunks per channel that
    minimize the rows a segment sweeps, waves x (units per segment) x (RB + Q - 1 +
    BWD_ROWS_UNIT_ROWS), with C x chunks blocks of `segs` segments, `resident` blocks at
    a time; ties go to fewer chunks (a shorter reduction), then fewer bands (fewer rows
    read twice). The unit cost is from the sweep (H200, session 10): mbv2_3x3 fp16, bands
    of 14 rows in 16 chunks 0.090 ms, of 28 rows in 8 chunks 0.075."""
    best = None
    band_counts = [_cdiv(p.H, rb)] if rb is not None else range(1, min(p.H, 64) + 1)
    for bands in band_counts:
        h = _cdiv(p.H, bands)
        if _cdiv(p.H, h) != bands:
            continue
        units = p.N * bands * n_cs
        for ch in ([chunks] if chunks is not None else range(1, 65)):
            ch = max(1, min(ch, units, 65535))
            waves = _cdiv(p.C * ch, resident)
            cost = (waves * _cdiv(_cdiv(units, ch), segs) * (h + q - 1 + BWD_ROWS_UNIT_ROWS), ch, bands)
            if best is None or cost < best[0]:
                best = (cost, h, bands, ch)
    return best[1], best[2], best[3]


def _bwd_rows_lanes(dtype):
    """Columns per lane of bwd_rows: 4 (sweep, H200, ms). Session 10: seed_3x7 fp16 8 /
    4 / 16 bytes 0.362 / 0.442 / 0.360 with spills, effnet_5x5 fp32 0.064 against 0.073
    at 2 columns; session 11, with whole-vector stores: seed_3x7 fp32 16 / 8 bytes 0.411
    / 0.431, convnext_7x7 fp32 0.130 (16 bytes, one block per SM). In 16-bit 8 columns
    would hold a ring of 40 sums."""
    return max(1, min(4, 16 // ITEMSIZE[dtype]))


def _bwd_rows_minb(taps):
    """Blocks per SM of bwd_rows: 2 up to 25 taps (4 rows ahead everywhere: 2 rows seed
    0.351, image 0.133; 6 rows 0.374, 0.120); 1 beyond, where 49 tap sums and 49
    weights beside the ring need more than 128 registers (convnext_7x7 fp32 / fp16 /
    bf16 at 2 blocks spill: 0.240 / 0.207 / 0.637 ms against 0.130 / 0.138 / 0.135)."""
    return 2 if taps <= 25 else 1


def _bwd_rows_narrow(p, dtype):
    """Whether bwd_rows runs 8 columns per lane in blocks of 128 threads, 4 per SM (16
    warps, as 2 blocks of 256 at 4 columns): 16-bit, a tap reach of at most 4 rows (the
    ring of 8-column sums fits the registers), at most 9 taps (the 8-column plans stay
    within 128 registers, no spills) and rows of 33 to 56 columns. Measured on 3x3 at
    padding 1, same process (H200, us; 4 columns in blocks of 256 / 8 columns in blocks of
    128): 64 x 144 x 56 x 56 float16 71.2 / 63.2, bfloat16 71.7 / 62.8; 64 x 96 x 48 x 48
    float16 44.8 / 33.0; 64 x 128 x 40 x 40 bfloat16 37.4 / 33.2; 64 x 128 x 36 x 36
    float16 38.6 / 37.4. Outside that range the 4-column plan stays: 32 x 256 x 64 x 64
    float16 63.8 / 66.2; 64 x 96 x 28 x 28 20.3 / 24.6; 64 x 576 x 14 x 14 63.8 / 94.4;
    seed_3x7 (256 columns, 21 taps) 324.9 / 371 (NOTES, session 33)."""
    return (dtype in MMA_DTYPES and (p.KH - 1) * p.DH + 1 <= 4 and p.KH * p.KW <= 9 and 33 <= p.W <= 56)


def _bwd_rows_small(p, dtype, x_ptr=0, go_ptr=0):
    """Columns per lane of bwd_rows at 3 blocks of 256 threads per SM (no more than 85
    registers) on 16-bit rows of at most 32 columns and kernels of at most 9 taps, or None
    for the default plan: 2 where the grad_output or x rows load, or grad_x stores,
    partial 8-byte vectors; 4 where all are whole and the data is float16 at dilation 1
    (bfloat16's conversions spill 16 bytes there, dilation 2 60-188: NVRTC 13.0);
    dilated bfloat16 keeps the default (2 columns spill 16 bytes with NVRTC 13.5).
    Measured (H200, benchmarks/ab.py --pass backward, us, float16 3x3 at padding 1; 2
    blocks of 4 columns, the default / 3 blocks of 2 columns / 3 blocks of 4): 64 x 576 x
    10 x 10 48.8 / 28.3 / -; 64 x 384 x 14 x 14 50.7 / 21.6 / 39.9 (32 bytes spilled;
    bfloat16 50.5 / 21.7); 64 x 256 x 20 x 20 26.7 / 33.1 / 23.7; 64 x 128 x 24 x 24 18.9
    / 24.2 / 17.5; 64 x 192 x 28 x 28 35.7 / 31.0 / 28.4; dilation 2 on 64 x 256 x 14 x 14
    21.6 / 18.4. At 56 columns the 8-column plan stays (63.0 against 61.6 at 3 blocks of
    4 columns); 5x5 (25 taps) spills at 3 blocks."""
    dilated = (p.DH, p.DW) != (1, 1)
    if dtype not in MMA_DTYPES or p.KH * p.KW > 9 or p.W > 32 or (dtype == "bfloat16" and dilated):
        return None  # dilated bfloat16: 2 columns spill 16 bytes (NVRTC 13.5)
    if not all(_load_width(dtype, n, ptr, 4) == 4 for n, ptr in ((p.OW, go_ptr), (p.W, x_ptr), (p.W, 0))):
        return 2
    return 4 if dtype == "float16" and not dilated else None


def _use_bwd_rows(p, dtype):
    """Whether the fused backward is the row sweep (bwd_rows) rather than bwd_tile, where
    it takes the problem. Sweep (H200, ms, the three gradients). Session 10: 16-bit 3x3
    and 3x7, seed_3x7 fp16 / bf16 0.362 / 0.387 against 0.465 / 0.563, mbv2_3x3 0.075 /
    0.073 against 0.079 / 0.102, image_3x3 0.122 / 0.120 against 0.155 / 0.209; 5x5,
    effnet_5x5 fp32 0.064 against 0.072. Session 11, after bwd_rows' grad_x stores became
    whole vectors (they had been split into 4-byte stores): seed_3x7 fp32 0.411 against
    0.484; 7x7 on planes of 28 columns or more, convnext_7x7 fp32 / fp16 / bf16 0.130 /
    0.138 / 0.135 against 0.142 / 0.142 / 0.167 (small planes keep conv_plane +
    wgrad_plane: convnext_7x7_s4). float32 kernels under 21 taps stay on bwd_tile (session
    10: mbv2_3x3 0.105 against 0.101, image_3x3 0.214 against 0.207, dilated_3x3_d2 0.110
    against 0.108; inception_1x7's 17-column planes 0.022 against 0.018)."""
    taps = p.KH * p.KW
    if taps > BWD_ROWS_MAX_TAPS or (taps > 25 and p.W < 28):
        return False
    if dtype in MMA_DTYPES:
        return True
    return dtype == "float32" and taps >= 21


def bwd_rows_launch(p, dtype, x_ptr, go_ptr, v=None, pf=None, minb=None, rb=None, chunks=None, sms=132, arch=90,
                    block=None):
    """(bwd_rows launch, chunks) for the fused backward as a row sweep; None where it does
    not apply: stride 1, multiplier 1, sm_80+, up to BWD_ROWS_MAX_TAPS taps, padding
    within the kernel's reach on the top, left and bottom (every grad_output row is some
    band's own), grad_output columns within the segments' (every column some lane's),
    and copies of 4 bytes or more. `block`: threads per block (a multiple of 32;
    ROWS_BLOCK unless _bwd_rows_narrow's plan applies)."""
    taps = p.KH * p.KW
    reach_h, reach_w = (p.KH - 1) * p.DH, (p.KW - 1) * p.DW
    if ((p.SH, p.SW) != (1, 1) or p.M != 1 or arch < 80 or taps > BWD_ROWS_MAX_TAPS or p.PT > reach_h
            or p.PB > reach_h or p.PL > reach_w or min(p.OH, p.OW, p.H, p.W) < 1):
        return None
    if v is None and minb is None and block is None:
        # (columns per lane, blocks per SM, block) of the narrow- and small-row plans, which
        # fall back to the default where they decline.
        lanes = _bwd_rows_small(p, dtype, x_ptr, go_ptr)
        preset = (8, 4, 128) if _bwd_rows_narrow(p, dtype) else (lanes, 3, None) if lanes else None
        if preset is not None:
            planned = bwd_rows_launch(p, dtype, x_ptr, go_ptr, preset[0], pf, preset[1], rb, chunks, sms, arch,
                                      preset[2])
            if planned is not None:
                return planned
    size = ITEMSIZE[dtype]
    v = _bwd_rows_lanes(dtype) if v is None else v
    v = max(1, min(v, 16 // size))
    pf = 4 if pf is None else pf
    minb = _bwd_rows_minb(taps) if minb is None else minb
    q = reach_h + 1
    plr = reach_w - p.PL  # the rotated problem's left padding
    s, nl, nr = _staged_segment(p.W, v, plr, p.KW, p.DW)
    vl = _load_width(dtype, p.OW, go_ptr, v)
    vx = _load_width(dtype, p.W, x_ptr, v)
    vs = _load_width(dtype, p.W, 0, v)
    if pf < 1 or q * v > 32 or (v * size) % 4 or v * size > 16 or vl * size < 4 or vx * size < 4 or nl + nr > 32:
        return None
    n_cs = _cdiv(p.W, s * v)
    if p.OW > n_cs * s * v:
        return None
    block = ROWS_BLOCK if block is None else block
    if block % 32 or not 32 <= block <= 1024:  # whole warps (a segment is a power-of-two part of one)
        return None
    segs = block // s
    # Each slot: the grad_output row (S + NL + NR chunks) and the x row (S chunks).
    smem = segs * (_rows_slots(q, pf) * (2 * s + nl + nr) + (s if vs < v else 0)) * v * size
    if smem > SM_SMEM // minb - 1024 - (block // 32) * (taps + 1) * ITEMSIZE[ACC_DTYPE[dtype]]:
        return None
    rb, bands, chunks = _bwd_rows_split(p, n_cs, q, segs, sms * minb, rb, chunks)
    units = p.N * bands * n_cs
    if n_cs * bands > INT32_MAX or p.W + 64 > INT32_MAX or p.H + q > INT32_MAX:
        return None
    expr = "dw::bwd_rows<" + _targs(CXX_TYPE[dtype], v, vl, vx, vs, p.KH, p.KW, p.DH, p.DW, plr, s, pf, minb,
                                     *(() if block == ROWS_BLOCK else (block,))) + ">"
    args = pack_args("BwdRowsArgs", units=units, IH=p.H, IW=p.W, OH=p.OH, OW=p.OW, PT=p.PT, RB=rb, n_bands=bands,
                     n_cs=n_cs, N=p.N, C=p.C, n_chunks=chunks)
    grid = (chunks, min(p.C, 65535), 1)
    return Launch("rows.cu", expr, grid, (block, 1, 1), smem, (args,)), chunks


# ---- fused backward on tensor cores (bwd_mma, 16-bit small kernels on whole planes) ----------

BMMA_MAX_KH, BMMA_MAX_KW = 7, 8  # two grad_output rows and 8 tap columns per weight-gradient MMA
BMMA_MAX_PLANE = 64              # whole planes: 4 warps of 16 grad_x rows, 8 blocks of 8 columns


def bwd_mma_geometry(p, wn, wr, shift, stages):
    """Run-time staging geometry of bwd_mma and its shared-memory bytes; mirrors
    cuda/bwd_mma.cu (the kernel traps if it is given less shared memory).
    x rows: XR = the rows that meet a grad_output row (B reads padded rows oh .. oh + 7 of
    each pair; the others read a zero row), pitch XP = 16 NC + 8 (an odd number of 16-byte
    units: the 8 row addresses of an ldmatrix phase fall in 8 bank groups). grad_output rows: staged row GT + i is row i (GT = KH - 1 -
    PT zero rows above, the rotated problem's padding), GR rows in all (the grad_x A rows of
    every warp, and one zero row below the plane); column GOFF is column 0, GX0 = GOFF -
    (KW - 1 - PL) - SHIFT is grad_x's staged column 0 (a multiple of 8), and GOFF >= 8 - PL
    keeps the weight-gradient reads (down to column GOFF + PL - 8) inside the row."""
    ks = (shift + 7 + p.KW + 15) // 16
    nch = wn + 2 * ks - 1
    nc = (wn + 1) // 2
    ohe = p.OH + p.OH % 2
    xp = 16 * nc + 8
    xr = max(0, min(p.H, ohe + 6 - p.PT))
    gl = p.KW - 1 - p.PL
    goff = gl + shift
    while goff < 8 - p.PL:
        goff += 8
    gx0 = goff - gl - shift
    gp = _cdiv(max(gx0 + 8 * nch, goff + p.PL + 16 * nc), 8) * 8
    if (gp // 8) % 2 == 0:
        gp += 8
    gt = p.KH - 1 - p.PT
    gr = max(16 * wr + p.KH - 1, gt + p.OH + 1)
    slot = _cdiv(xr * xp * 2 + gr * gp * 2, 128) * 128
    s1_off = stages * slot + ((64 + xr * xp * 2 + gt * gp * 2) & 127 & ~15)  # S1 64 bytes off S0's banks
    smem = s1_off + ohe * gp * 2 + xp * 2 + p.KH * ks * 32 * 8 + wr * 160 * 4
    return dict(XP=xp, XR=xr, GOFF=goff, GP=gp, GR=gr, GT=gt, GX0=gx0), smem


def _use_bwd_mma(p, dtype):
    """Tensor cores for the 16-bit fused backward of kernels of more than 25 taps, where
    it takes the problem: their float32 FMAs bound bwd_rows (H200 backward sweep,
    benchmarks/NOTES.md session 18: convnext_7x7 fp16 / bf16 0.068 against bwd_rows'
    0.132 / 0.129 ms). 3x3 stays on bwd_rows (mbv2_3x3 fp16 0.093 against 0.073: an MMA
    there carries 18 useful products per 128), and so does 5x5 (not measured: no suite
    case)."""
    return dtype in MMA_DTYPES and p.KH * p.KW > 25


def bwd_mma_launch(p, dtype, x_ptr, go_ptr, arch=90, sms=132, stages=None, chunks=None, minb=None, xgran=None,
                   ggran=None):
    """(bwd_mma launch, chunks) for the fused 16-bit backward on tensor cores; None where
    it does not apply: sm_80+, stride 1, dilation 1, multiplier 1, KH <= 7, KW <= 8,
    padding within the kernel (the rotated problem's padding is >= 0), even W (grad_x
    pairs stored from the fragments), planes of at most 64 x 64."""
    if (dtype not in MMA_DTYPES or arch < MMA_MIN_ARCH or (p.SH, p.SW, p.DH, p.DW) != (1, 1, 1, 1) or p.M != 1
            or p.KH > BMMA_MAX_KH or p.KW > BMMA_MAX_KW or max(p.PT, p.PB) > p.KH - 1 or max(p.PL, p.PR) > p.KW - 1
            or p.W % 2 or min(p.OH, p.OW, p.H, p.W) < 1 or max(p.H, p.W, p.OH, p.OW) > BMMA_MAX_PLANE):
        return None
    wn, wr = _cdiv(p.W, 8), _cdiv(max(p.H, p.OH), 16)
    if xgran is None:
        xgran = 16 if p.W % 8 == 0 and x_ptr % 16 == 0 else (4 if x_ptr % 4 == 0 else 2)
    staging = _mma_staging(_flipped_problem(grad_input_problem(p)), go_ptr, ggran)
    if staging is None:
        return None
    ggran, shift = staging
    stages = 2 if stages is None else stages
    minb = 4 if minb is None else minb  # <= 128 registers (convnext_7x7 fp16: 123, no spills)
    geo, smem = bwd_mma_geometry(p, wn, wr, shift, stages)  # KW <= 8, SHIFT < 8: at most 2 grad_x k-steps
    if smem > SM_SMEM:
        return None
    if chunks is None:
        # About two waves of blocks (convnext_7x7 fp16, H200 backward sweep, ms: 4 blocks
        # per SM, 11 chunks 0.0684-0.0689, 8 0.0696, 16 0.0701, 22 0.0735; 3 per SM, 8
        # chunks 0.0697, 16 0.0757; 3 stages at 2 or 3 per SM, 8 chunks 0.0687; 4 stages
        # 0.084).
        per_sm = max(1, min(minb, SM_SMEM // (smem + 1024)))
        chunks = 2 * sms * per_sm // max(p.C, 1)
    chunks = max(1, min(p.N, chunks, 65535))
    expr = "dw::bwd_mma<" + _targs(CXX_TYPE[dtype], p.KH, p.KW, wn, wr, shift, xgran, ggran, stages, minb) + ">"
    args = pack_args("BmmaArgs", N=p.N, C=p.C, n_chunks=chunks, IH=p.H, IW=p.W, OH=p.OH, OW=p.OW, PT=p.PT, PL=p.PL,
                     **geo)
    grid = (chunks, min(p.C, 65535), 1)
    return Launch("bwd_mma.cu", expr, grid, (32 * wr, 1, 1), smem, (args,)), chunks


# ---- weight gradient on tensor cores with 16 images per MMA (wgrad_stack) -----------------

WSTACK_MAX_SIDE = 64  # whole rows: a warp per 8 grad_output columns, at most 8 warps


def wstack_geometry(kh, kw, wn, pf):
    """Shared-memory bytes of wgrad_stack; mirrors WstackTile in cuda/stack.cu (the kernel
    traps if it is given less): RS ring slots (a multiple of KH of at least KH + PF) of 16
    grad_output rows of 8 WN columns and 16 x rows of 8 WN + 8, and the warps' tap sums."""
    rs = kh * (1 + _cdiv(pf, kh))
    tiwg, tiwx = 8 * wn, 8 * wn + 8
    pg = tiwg if (tiwg // 8) % 2 else tiwg + 8
    px = tiwx if (tiwx // 8) % 2 else tiwx + 8
    return rs * 16 * (pg + px) * 2 + wn * (kh * kw + 1) * 4


def _use_wgrad_stack(p, dtype):
    """The 16-bit weight gradient of kernels of more than 25 taps on batches of 16 images
    and more, where wgrad_stack takes the problem. Measured (H200, benchmarks/ab.py
    --pass grad_weight, convnext_7x7 float16, stage 1 and its reduction): 44.5 us against
    wgrad_tile's 117.8 and wgrad_mma's 173.6. The fused backward stays with bwd_mma (68.4
    us; conv_stack's grad input beside wgrad_stack on two streams: 83.7)."""
    return dtype in MMA_DTYPES and p.KH * p.KW > 25 and p.N >= STACK_MIN_IMAGES


def _wstack_minb(kh, wn):
    """wgrad_stack's blocks per SM: 3 (a cap of 96 registers at 7 warps, 80 at 8:
    convnext_7x7 fits), 2 where the cap spills more than the third block gives: more
    than 11 tap rows, or more than 7 at 8 warps. Measured (H200, benchmarks/ab.py --pass
    grad_weight, float16, stage 1 and its reduction, us, 3 blocks against 2): 16x5 on
    64 x 96 x 56 x 56 130.4 / 102.3, 9x9 on 64 x 128 x 64 x 64 94.4 / 74.6; kept at 3:
    9x9 on 64 x 96 x 56 x 56 63.9 / 79.4 (64 bytes spilled), 11x5 77.0 / 77.8, 7x7 on
    64 x 96 x 64 x 64 47.7 / 57.7."""
    return 2 if kh > 11 or (kh > 7 and wn == 8) else 3


def wgrad_stack_launch(p, dtype, x_ptr, go_ptr, arch=90, sms=132, pf=None, minb=None, chunks=None, xgran=None,
                       rb=None):
    """(wgrad_stack launch, chunks): the 16-bit weight gradient's stage 1 with 16 images
    per MMA; None where it does not apply: sm_80+, stride 1, dilation 1, multiplier 1,
    padding within the kernel, KH <= 16, planes up to 64 x 64, grad_output rows of a
    multiple of 8 columns on a 16-byte aligned pointer (16-byte copies: its 8-column
    blocks are the MMAs' B), and an x copy width with SX + KW <= 9.
    Units are (16 images, band of RB x rows), `chunks` blocks per channel."""
    if (dtype not in MMA_DTYPES or arch < MMA_MIN_ARCH or (p.SH, p.SW, p.DH, p.DW) != (1, 1, 1, 1) or p.M != 1
            or p.KH > STACK_MAX_KH or max(p.PT, p.PB) > p.KH - 1 or max(p.PL, p.PR) > p.KW - 1
            or p.OW % 8 or go_ptr % 16 or min(p.N, p.C, p.OH, p.OW, p.H, p.W) < 1
            or max(p.H, p.W, p.OH, p.OW) > WSTACK_MAX_SIDE):
        return None
    wn = p.OW // 8
    options = [g for g in (16, 8, 4) if p.W % (g // 2) == 0 and x_ptr % g == 0 and (-p.PL) % (g // 2) + p.KW <= 9]
    if xgran is not None:
        options = [g for g in options if g == xgran]
    if not options:
        return None
    xg = options[0]
    sx = (-p.PL) % (xg // 2)
    pf = 6 if pf is None else pf
    minb = _wstack_minb(p.KH, wn) if minb is None else minb
    smem = wstack_geometry(p.KH, p.KW, wn, pf)
    if smem > SM_SMEM:
        return None
    n_groups = _cdiv(p.N, 16)
    per_sm = max(1, min(minb, SM_SMEM // (smem + 1024), SM_THREADS // (32 * wn)))
    rb, bands = _stack_bands(p.C * n_groups, p.H, p.KH, sms * per_sm, rb)
    units = n_groups * bands
    chunks = max(1, min(units, units if chunks is None else chunks, 65535))
    expr = "dw::wgrad_stack<" + _targs(CXX_TYPE[dtype], p.KH, p.KW, wn, sx, xg, pf, minb) + ">"
    args = pack_args("WstackArgs", N=p.N, C=p.C, n_chunks=chunks, IH=p.H, IW=p.W, OH=p.OH, OW=p.OW, PT=p.PT,
                     PL=p.PL, RB=rb, n_bands=bands)
    grid = (chunks, min(p.C, 65535), 1)
    return Launch("stack.cu", expr, grid, (32 * wn, 1, 1), smem, (args,)), chunks


def plan_backward(p, dtype, x_ptr, go_ptr, arch=None, sms=None, force=None, smem=None):
    """(fused launch, chunks, wgrad_reduce launch) for a backward that wants grad_x and
    grad_weight or grad_bias, or None where the separate grad-input and grad-weight
    plans serve. The fused launch takes (x, grad_output, weight, grad_x, partials,
    counters, grad_weight, grad_bias): with zeroed counters it finishes grad_weight and
    grad_bias itself and leaves the counters zero; with null counters the wgrad_reduce
    launch does.
    `force`: None, or keyword arguments of bwd_tile_launch, or of bwd_rows_launch with
    family="rows", of bwd_plane_launch with family="plane", of bwd_batch_launch with
    family="batch", of bwd_mma_launch with family="mma" (tests and sweeps; None again
    where the kernel does not take the problem; not held to `smem`). Unforced, None also
    where the fused kernel needs more shared memory than a block may opt in to (`smem`,
    see plan_forward)."""
    arch, sms, smem = _limits(arch, sms, smem)
    if force is not None:
        force = dict(force)
        family = force.pop("family", "tile")
        if family == "rows":
            return _fused_with_reduce(p, dtype, bwd_rows_launch(p, dtype, x_ptr, go_ptr, sms=sms, arch=arch, **force))
        if family == "plane":
            return _fused_with_reduce(p, dtype, bwd_plane_launch(p, dtype, **force))
        if family == "batch":
            return _fused_with_reduce(p, dtype, bwd_batch_launch(p, dtype, x_ptr, go_ptr, sms=sms, **force))
        if family == "mma":
            return _fused_with_reduce(p, dtype, bwd_mma_launch(p, dtype, x_ptr, go_ptr, arch=arch, sms=sms, **force))
        return _fused_with_reduce(p, dtype, bwd_tile_launch(p, dtype, x_ptr, go_ptr, sms=sms, **force))
    fused = _plan_backward(p, dtype, x_ptr % 16, go_ptr % 16, arch, sms)
    return fused if fused is None or _fits(smem, fused[0], fused[2]) else None


def _fused_with_reduce(p, dtype, res):
    return None if res is None else (res[0], res[1], reduce_launch(p, dtype, res[1]))


@functools.lru_cache(maxsize=4096)
def _plan_backward(p, dtype, x_ptr, go_ptr, arch, sms):
    # Small planes: bwd_plane where it takes the problem (else conv_plane + wgrad_plane:
    # bwd_tile on convnext_7x7_s4, 64 x 7x7 tiles per channel, 0.048 ms at best against
    # 0.0327 separate). Then the row sweep where _use_bwd_rows says so and it takes the
    # problem; else bwd_tile, wherever it takes the problem and a channel has enough tiles
    # to amortize the block's weights and closing sum.
    if _use_bwd_batch(p, dtype, x_ptr, go_ptr, arch):
        fused = bwd_batch_launch(p, dtype, x_ptr, go_ptr, sms=sms)
        if fused is not None:
            return _fused_with_reduce(p, dtype, fused)
    if _use_wgrad_plane(p):
        fused = bwd_plane_launch(p, dtype)
        if fused is not None:
            return _fused_with_reduce(p, dtype, fused)
    if _use_bwd_mma(p, dtype):
        fused = bwd_mma_launch(p, dtype, x_ptr, go_ptr, arch=arch, sms=sms)
        if fused is not None:
            return _fused_with_reduce(p, dtype, fused)
    if _use_bwd_rows(p, dtype):
        fused = bwd_rows_launch(p, dtype, x_ptr, go_ptr, sms=sms, arch=arch)
        if fused is not None:
            return _fused_with_reduce(p, dtype, fused)
    return _fused_with_reduce(p, dtype, bwd_tile_launch(p, dtype, x_ptr, go_ptr, sms=sms, min_units=BWD_MIN_UNITS))


# ---------------------------------------------------------------------------------------
# Every specialization the dispatcher can pick for a list of problems (the CPU compile
# check and the resource report use this).

def expressions_for(problems, archs=(75, 90)):
    """{src: set(name expressions)} for the given (ConvParams, dtype) pairs, all passes,
    pointer alignments 16, 8, 4 and 2 bytes, as planned for devices of the given compute capabilities (before
    sm_80 the 16-bit problems take the non-tensor-core paths)."""
    out = {}
    for p, dtype in problems:
        launches = []
        # Pointer alignments 16, 8, 4 and 2 bytes: every load width the planner can pick.
        for ptr, arch in itertools.product((0, 8, 4, 2), archs):
            launches.append(plan_forward(p, dtype, ptr, arch, 132))
            launches.append(plan_grad_input(p, dtype, ptr, arch, 132))
            s1, _, s2 = plan_wgrad(p, dtype, ptr, ptr, arch, 132)
            launches += [s1, s2]
            fused = plan_backward(p, dtype, ptr, ptr, arch, 132)
            if fused is not None:
                launches += [fused[0], fused[2]]
        for launch in launches:
            out.setdefault(launch.src, set()).add(launch.expr)
    return out
