"""ptxas resource report (registers, spills, stack, shared memory) of every kernel
specialization the dispatcher picks for the benchmark suite: all passes (the fused
backward's two kernels included), the suite's dtypes, 16-byte-aligned buffers, sm_90.
Needs NVRTC (the `test` extra), no GPU. ptxas versions allocate differently: read the
report of the NVRTC the GPU machine uses where it matters.

    python scripts/resource_report.py [--suite FILE] [--arch 90] [--spills-only]
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cupy_dwconv import _kernels, bench  # noqa: E402
from nvrtc_compile import compile_expressions  # noqa: E402

_FUNC = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?")


def parse(log):
    """[(mangled name, registers, stack, spill stores, spill loads, static smem)] from a
    ptxas -v log (one entry per compiled function, in log order)."""
    rows, cur = [], None
    for line in log.splitlines():
        m = _FUNC.search(line)
        if m:
            cur = [m.group(1), 0, 0, 0, 0, 0]
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            cur[2:5] = [int(v) for v in m.groups()]
            continue
        m = _USED.search(line)
        if m:
            cur[1] = int(m.group(1))
            cur[5] = int(m.group(2) or 0)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default=None)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--spills-only", action="store_true", help="list only specializations that spill")
    args = ap.parse_args(argv)
    suite_path = args.suite or bench.default_suite_path()
    cases, half = bench.load_suite(suite_path)
    pairs = [(c, dt) for c in cases for dt in bench.suite_dtypes(c, half)]
    total = spilling = 0
    for src, exprs in sorted(bench.suite_launches(pairs, args.arch).items()):
        names = sorted(exprs)
        log = compile_expressions(src, names, args.arch, resource_report=True)
        rows = {r[0]: r for r in parse(log)}
        for expr in names:
            row = _match(rows, expr)
            if row is None:  # never count a kernel as spill-free without its report
                raise RuntimeError(f"no ptxas report found for {expr}")
            total += 1
            spills = bool(row[3] or row[4])
            spilling += spills
            if args.spills_only and not spills:
                continue
            users = ", ".join(f"{n} {d} {ps}" for n, d, ps in exprs[expr])
            print(f"{expr}\n    regs {row[1]:3d}  stack {row[2]:3d} B  spill st/ld {row[3]}/{row[4]} B  "
                  f"static smem {row[5]} B  <- {users}")
    print(f"{spilling} of {total} specializations spill (sm_{args.arch})")
    return 0


def _match(rows, expr):
    """The report row of a name expression: the mangled name carries every template
    argument, so match on the kernel's name and the digits of its arguments in order."""
    name, args = _kernels.split_expr(expr)
    args = [a for a in args if a in ("true", "false") or a.lstrip("-").isdigit()]  # the type is not matched
    want = "".join("Lb1E" if a == "true" else "Lb0E" if a == "false" else
                   (f"Li{a}E" if not a.startswith("-") else f"Lin{a[1:]}E") for a in args)
    for mangled, row in rows.items():
        if f"{len(name)}{name}I" in mangled and want in mangled:
            return row
    return None


if __name__ == "__main__":
    sys.exit(main())
