"""Compile kernel specializations with NVRTC on a machine without a GPU.

Uses cuda-bindings and the NVRTC shared library from the nvidia-cuda-nvrtc wheel (the
`test` extra). The same source text and options as the library's RawModule are used, so
a specialization that compiles here compiles on the GPU. Also returns ptxas's resource
report (registers, spills) for scripts/resource_report.py.
"""

from __future__ import annotations

import re
import uuid

from cupy_dwconv import _kernels

# NVRTC 13 returns a repeated compile (same source, same options) from a cache, without
# ptxas's report: a program compiled for its report carries a declaration of its own.

def nvrtc_available():
    try:
        from cuda.bindings import nvrtc  # noqa: F401

        err, _major, _minor = nvrtc.nvrtcVersion()
        return int(err) == 0
    except Exception:  # ImportError, or the NVRTC library cannot be loaded
        return False


def _check(result, prog=None, what=""):
    from cuda.bindings import nvrtc

    err = result[0]
    if int(err) != 0:
        log = _log(prog) if prog is not None else ""
        raise RuntimeError(f"NVRTC {what} failed: {err}\n{log}")
    return result[1:] if len(result) > 1 else None


def _log(prog):
    from cuda.bindings import nvrtc

    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.decode(errors="replace").rstrip("\x00")


def compile_source(code, name, arch):
    """Compile a whole source text (no name expressions) for sm_<arch>; raises with
    the log on error."""
    from cuda.bindings import nvrtc

    (prog,) = _check(nvrtc.nvrtcCreateProgram(code.encode(), name.encode(), 0, [], []), what="create")
    try:
        opts = [o.encode() for o in _kernels.NVRTC_OPTIONS] + [f"--gpu-architecture=sm_{arch}".encode()]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if int(err) != 0:
            raise RuntimeError(f"NVRTC compile of {name} for sm_{arch} failed: {err}\n{_log(prog)}")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_expressions(src_name, expressions, arch, resource_report=False, lowered=None):
    """Compile `expressions` of cuda/<src_name> to a cubin for sm_<arch>.

    Returns the NVRTC log (with the ptxas report when resource_report is set: the source
    then ends in a declaration no other compile has, so no cached result stands in).
    `lowered`, a dict, receives each expression's mangled name.
    Raises RuntimeError with the log on any compile error.
    """
    from cuda.bindings import nvrtc

    code = _kernels.source(src_name)
    if resource_report:
        code += f"\nnamespace {{ constexpr int resource_report_{uuid.uuid4().hex} = 0; }}\n"
    (prog,) = _check(nvrtc.nvrtcCreateProgram(code.encode(), src_name.encode(), 0, [], []), what="create")
    try:
        for expr in expressions:
            _check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), what=f"name expression {expr}")
        opts = [o.encode() for o in _kernels.NVRTC_OPTIONS] + [f"--gpu-architecture=sm_{arch}".encode()]
        if resource_report:
            opts.append(b"--ptxas-options=-v")
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        log = _log(prog)
        if int(err) != 0:
            raise RuntimeError(f"NVRTC compile of {src_name} for sm_{arch} failed: {err}\n{log}")
        for expr in expressions:
            (name,) = _check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), prog, f"lowered name of {expr}")
            if lowered is not None:
                lowered[expr] = name.decode() if isinstance(name, bytes) else str(name)
        return log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")


def parse_resources(log):
    """{mangled name: {'registers': int, 'spill_stores': int, 'spill_loads': int, 'stack': int}}"""
    out = {}
    current = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = _REGS.search(line)
        if m:
            current["registers"] = int(m.group(1))
        m = _SPILL.search(line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = _STACK.search(line)
        if m:
            current["stack"] = int(m.group(1))
    return out


def ptx_of(src_name, expr, arch):
    """The PTX of one specialization of cuda/<src_name> for compute_<arch> (NVRTC, the
    library's options)."""
    from cuda.bindings import nvrtc

    code = _kernels.source(src_name).encode()
    (prog,) = _check(nvrtc.nvrtcCreateProgram(code, src_name.encode(), 0, [], []), what="create")
    try:
        _check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), what=f"name expression {expr}")
        opts = [o.encode() for o in _kernels.NVRTC_OPTIONS] + [f"--gpu-architecture=compute_{arch}".encode()]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if int(err) != 0:
            raise RuntimeError(f"NVRTC compile of {expr} failed: {err}\n{_log(prog)}")
        (size,) = _check(nvrtc.nvrtcGetPTXSize(prog), prog, "PTX size")
        buf = b" " * size
        _check(nvrtc.nvrtcGetPTX(prog, buf), prog, "PTX")
        return buf.decode(errors="replace").rstrip("\x00")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# Kernel families whose table keeps a tile ptxas spills a few bytes of, outside the
# benchmark suite: their spill-free candidates (smaller tiles, fewer blocks per SM)
# measured slower on most shapes (benchmarks/NOTES.md, session 35; benchmarks/spill_ab.py).
# conv_stack and wgrad_stack (session 36): 3 blocks per SM with 9 tap rows spill 24 and
# 64 bytes and ran faster than 2 blocks without (64 x 96 x 56 x 56 float16: 38.9 / 39.7
# and 63.9 / 79.4 us); wgrad_stack's 9x9 at 8 warps spills 16 bytes at 2 blocks, its
# fewest (3 blocks: 116 bytes, 94.4 against 74.6 us).
# Every other family must use no local memory (tests/test_compile.py on ptxas's report,
# tests/test_gpu_resources.py on the device's compiled functions).
SPILL_MEASURED = ("conv_tile", "bwd_tile", "wgrad_tile", "conv_rows", "bwd_rows", "conv_mma_rows", "conv_stack",
                  "wgrad_stack")


def local_memory(src_name, expressions, arch):
    """{expression: bytes of local memory per thread} (the larger of ptxas's spill stores
    and stack frame) of `expressions` of cuda/<src_name> compiled for sm_<arch>."""
    names = {}
    found = parse_resources(compile_expressions(src_name, expressions, arch, resource_report=True, lowered=names))
    out = {}
    for expr in expressions:
        r = found[names[expr]]
        out[expr] = max(r.get("spill_stores", 0), r.get("stack", 0))
    return out
