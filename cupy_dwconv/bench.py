"""Benchmark of cupy_dwconv against the roofline floor and against PyTorch and JAX.

Run ``python -m cupy_dwconv.bench --help``. Method:

* Ceilings are measured at startup, in the same process on the same GPU: copy bandwidth
  (device-to-device copy of a 1 GiB buffer, bytes read + written, median of 30 copies)
  and the FMA rates (fp32, packed half2, fp64) of a kernel with many independent FMA
  chains per thread that the compiler cannot fold away.
* The floor of one pass is max(bytes / copy bandwidth, FLOPs / FMA rate) with the byte
  and FLOP counts of the shared benchmark README (see `forward_cost`, `backward_cost`);
  efficiency = floor / measured time.
* Times are CUDA-event intervals recorded on the current stream around each single call;
  the reported time is the median of ``--repeats`` calls after ``--warmup`` calls. Before
  the timed calls a spin kernel keeps the GPU busy while the host queues them all, so an
  interval holds the GPU work of one call and not the host's launch latency.
* Inputs rotate among K independent sets whose total size exceeds twice the L2 cache, so
  no call finds its input in L2 left there by the previous one (weights and bias, a few
  KB, are shared). Inputs are standard-normal values scaled by 0.5, never zeros.
* Anchors (PyTorch NCHW and channels_last with cuDNN autotuning, JAX/XLA, PyTorch's
  backward) are timed in the same process on the same inputs with the same rotation and,
  except JAX, the same event method: JAX launches on its own streams, so it is timed by
  wall clock over batches of calls (see `time_wall`).
* Every timed cupy_dwconv row is first checked against a float64 result (PyTorch on the
  GPU, or the NumPy reference on one or two batch items); a failed check marks the row
  FAILED and it never counts as meeting a target.

The pure parts (suite selection, costs, floors, targets, table, JSON rows, plot) need no
GPU and are tested on CPU; CuPy, PyTorch and JAX are imported inside the GPU functions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import _params

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE_ENV = "CUPY_DWCONV_SUITE"
COMMIT_ENV = "CUPY_DWCONV_COMMIT"

DTYPES = ("float32", "float16", "bfloat16", "float64")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64", "half": "float16"}
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
HALF_DTYPES = ("float16", "bfloat16")
PASSES = ("forward", "backward", "grad_input", "grad_weight")
# needs=(grad_x, grad_weight, grad_bias) of depthwise_conv2d_backward per backward pass.
NEEDS = {"backward": (True, True, True), "grad_input": (True, False, False), "grad_weight": (False, True, False)}

# Which FMA ceiling bounds each dtype's compute: 16-bit types run packed half2 math.
RATE_KEY = {"float32": "fp32_TFLOPs", "float16": "half2_TFLOPs", "bfloat16": "half2_TFLOPs", "float64": "fp64_TFLOPs"}

# Relative error norm ||out - ref|| / ||ref|| a row must stay under to count as correct.
REL_TOL = {"float32": 1e-4, "float64": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}

# Targets: forward <= 1.25 x floor + 5 us and no slower than the best anchor; backward
# (grad input + weight + bias in one call) <= floor / 0.6 + 10 us and >= 3x faster than
# PyTorch's backward.
FORWARD_FLOOR_FACTOR = 1.25
FORWARD_SLACK_MS = 0.005
BACKWARD_EFFICIENCY = 0.6
BACKWARD_SLACK_MS = 0.010
BACKWARD_SPEEDUP = 3.0
DISPATCH_TARGET_US = 10.0

INPUT_SCALE = 0.5
DEFAULT_BUDGET_GB = 8.0
JAX_INFLIGHT_BYTES = 4 * 10**9  # outputs of one wall-clock batch of JAX calls

ANCHOR_KEYS = ("torch_nchw_ms", "torch_cl_ms", "jax_ms", "torch_bwd_ms")


class UsageError(ValueError):
    """A bad command line or suite file (exit code 2)."""


# ---------------------------------------------------------------------------------------
# Cases and selection (pure)


@dataclasses.dataclass(frozen=True)
class Case:
    """One depthwise convolution: x (N, C, H, W), weight (C*M, 1, KH, KW), bias (C*M,)."""

    name: str
    N: int
    C: int
    H: int
    W: int
    KH: int
    KW: int
    stride: tuple = (1, 1)
    padding: object = (0, 0)  # as conv_params takes it: int, pair, pair of pairs, 'same', 'valid'
    dilation: tuple = (1, 1)
    multiplier: int = 1
    bias: bool = True

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.C * self.multiplier, 1, self.KH, self.KW)

    def params(self):
        """The normalized problem (raises ValueError/TypeError for an invalid case)."""
        return _params.conv_params(
            self.x_shape, self.weight_shape, (self.C * self.multiplier,) if self.bias else None,
            self.stride, self.padding, self.dilation,
        )


def _tuplify(value):
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _repo_relative(path):
    """A path as recorded in results: relative to the repository when inside it (results
    are committed; the machine they ran on is not part of them)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        try:
            return str(Path("..") / p.relative_to(REPO_ROOT.parent))
        except ValueError:
            return p.name


def default_suite_path(env=None, root=None):
    """First existing of: $CUPY_DWCONV_SUITE, <root>/../shared/bench/suite.json,
    <root>/benchmarks/suite.json (root = the repository, parent of the package); None if
    none exists."""
    env = os.environ if env is None else env
    root = REPO_ROOT if root is None else Path(root)
    candidates = []
    if env.get(SUITE_ENV):
        candidates.append(Path(env[SUITE_ENV]))
    candidates += [root.parent / "shared" / "bench" / "suite.json", root / "benchmarks" / "suite.json"]
    for c in candidates:
        if c.is_file():
            return c
    return None


def parse_suite(data, source="suite"):
    """(cases, half_precision names) from a suite's JSON object; every case is checked."""
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise UsageError(f"{source}: expected a JSON object with a list 'cases'")
    half = data.get("half_precision", [])
    if not isinstance(half, list) or not all(isinstance(h, str) for h in half):
        raise UsageError(f"{source}: 'half_precision' must be a list of case names")
    cases = []
    seen = set()
    for i, item in enumerate(data["cases"]):
        if not isinstance(item, dict):
            raise UsageError(f"{source}: case {i} is not an object")
        missing = [k for k in ("name", "N", "C", "H", "W", "KH", "KW") if k not in item]
        if missing:
            raise UsageError(f"{source}: case {item.get('name', i)!r} lacks {', '.join(missing)}")
        name = item["name"]
        if name in seen:
            raise UsageError(f"{source}: case name {name!r} appears twice")
        seen.add(name)
        try:
            case = Case(
                name=str(name), N=item["N"], C=item["C"], H=item["H"], W=item["W"], KH=item["KH"], KW=item["KW"],
                stride=_tuplify(item.get("stride", [1, 1])), padding=_tuplify(item.get("padding", [0, 0])),
                dilation=_tuplify(item.get("dilation", [1, 1])), multiplier=item.get("M", item.get("multiplier", 1)),
                bias=bool(item.get("bias", True)),
            )
            case.params()
        except (TypeError, ValueError) as e:
            raise UsageError(f"{source}: case {name!r}: {e}") from None
        cases.append(case)
    unknown = sorted(set(half) - seen)
    if unknown:
        raise UsageError(f"{source}: half_precision names unknown cases: {', '.join(unknown)}")
    return cases, frozenset(half)


def load_suite(path):
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"suite {path}: cannot read it: {e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"suite {path}: not valid JSON: {e}") from None
    return parse_suite(data, source=f"suite {path}")


def suite_dtypes(case, half_precision):
    """The suite rule: every case in float32, the half_precision ones in fp16 and bf16 too."""
    return ("float32",) + (HALF_DTYPES if case.name in half_precision else ())


def suite_launches(pairs, arch, sms=132):
    """{src: {expr: [(case name, dtype, pass)]}}: every kernel specialization the
    dispatcher picks for (case, dtype) pairs on 16-byte-aligned buffers, all passes (the
    fused backward's two kernels included). Host planning only; no GPU needed."""
    from . import _kernels

    out = {}
    for case, dtype in pairs:
        p = case.params()
        launches = {
            "forward": _kernels.plan_forward(p, dtype, 0, arch, sms),
            "grad_input": _kernels.plan_grad_input(p, dtype, 0, arch, sms),
            "grad_weight": _kernels.plan_wgrad(p, dtype, 0, 0, arch, sms)[0],
        }
        fused = _kernels.plan_backward(p, dtype, 0, 0, arch, sms)  # all three gradients in one pass
        if fused is not None:
            launches["backward"] = fused[0]
            launches["backward reduce"] = fused[2]
        for pass_name, launch in launches.items():
            out.setdefault(launch.src, {}).setdefault(launch.expr, []).append((case.name, dtype, pass_name))
    return out


def _dtype_arg(text):
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (choose from {', '.join(DTYPES)})")
    return name


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m cupy_dwconv.bench",
        description=(
            "Time cupy_dwconv's depthwise conv2d against the roofline floor (ceilings measured "
            "at startup on this GPU) and against PyTorch (NCHW, channels_last, backward) and JAX, "
            "all in this process on the same inputs. Prints a table; optionally writes JSON "
            "and a roofline plot."
        ),
        epilog=(
            "Default suite: the first existing of $CUPY_DWCONV_SUITE, ../shared/bench/suite.json "
            "and benchmarks/suite.json (relative to the repository). Exit code 0 when every row "
            "ran and passed its correctness check, 1 otherwise, 2 for a usage error."
        ),
    )
    sel = p.add_argument_group("case selection")
    sel.add_argument("--suite", metavar="FILE", help="suite JSON file (default: see below)")
    sel.add_argument("--cases", nargs="+", metavar="NAME", help="run only these suite cases")
    sel.add_argument("--list", action="store_true",
                     help="print the selected cases with their byte and FLOP counts and planned kernels, and exit "
                          "(needs no GPU; without one the plans are those for sm_90)")
    sel.add_argument("--dtype", nargs="+", type=_dtype_arg, metavar="DTYPE",
                     help="keep only these dtypes (float32 float16 bfloat16 float64); default: the suite "
                          "rule (float32 for every case, float16 and bfloat16 too for its half_precision "
                          "cases), float32 for a --shape case")
    sel.add_argument("--all-dtypes", action="store_true",
                     help="run every selected case in every --dtype (default float32 float16 bfloat16), "
                          "ignoring the suite's half_precision list")
    one = p.add_argument_group("one custom case (instead of the suite)")
    one.add_argument("--shape", nargs=4, type=_positive_int, metavar=("N", "C", "H", "W"), help="input shape")
    one.add_argument("--kernel", nargs="+", type=_positive_int, metavar="K", help="KH [KW] (default 3 3)")
    one.add_argument("--stride", nargs="+", type=_positive_int, metavar="S", help="SH [SW] (default 1 1)")
    one.add_argument("--padding", nargs="+", metavar="P",
                     help="P | PH PW | TOP BOTTOM LEFT RIGHT | same | valid (default 0 0)")
    one.add_argument("--dilation", nargs="+", type=_positive_int, metavar="D", help="DH [DW] (default 1 1)")
    one.add_argument("--multiplier", type=_positive_int, metavar="M", help="channel multiplier (default 1)")
    one.add_argument("--no-bias", action="store_true", help="no bias")
    run = p.add_argument_group("passes and timing")
    run.add_argument("--backward", action="store_true",
                     help="also time the backward: grad input + weight + bias in one call, and grad input "
                          "and grad weight alone")
    run.add_argument("--backward-only", action="store_true", help="time the backward passes only (implies --backward)")
    run.add_argument("--repeats", type=_positive_int, default=50,
                     help="timed calls per measurement (median; default 50)")
    run.add_argument("--warmup", type=_nonneg_int, default=10, help="untimed calls before timing (default 10)")
    run.add_argument("--max-input-gb", type=float, default=DEFAULT_BUDGET_GB, metavar="GB",
                     help="cap on the rotated input sets of one case (default 8)")
    run.add_argument("--device", type=_nonneg_int, default=0, help="CUDA device (default 0)")
    run.add_argument("--warm-cache", action="store_true",
                     help="keep CuPy's kernel disk cache (default: a fresh empty cache, so compile_s is a "
                          "cold compile)")
    fw = p.add_argument_group("anchors")
    fw.add_argument("--no-torch", action="store_true", help="skip the PyTorch anchors (and its correctness reference)")
    fw.add_argument("--no-jax", action="store_true", help="skip the JAX anchor")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the results as JSON")
    out.add_argument("--plot", metavar="FILE.png", help="draw a roofline chart (matplotlib)")
    out.add_argument("--commit", help=f"commit to record (default: ${COMMIT_ENV}, else git rev-parse HEAD)")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.backward_only:
        args.backward = True
    return args


def _pair_arg(values, flag):
    if values is None:
        return None
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return tuple(values)
    raise UsageError(f"{flag}: expected 1 or 2 values, got {len(values)}")


def _padding_arg(values):
    if values is None:
        return (0, 0)
    if len(values) == 1 and values[0] in ("same", "valid"):
        return values[0]
    try:
        ints = [int(v) for v in values]
    except ValueError:
        raise UsageError(f"--padding: expected integers, 'same' or 'valid', got {' '.join(values)}") from None
    if any(v < 0 for v in ints):
        raise UsageError(f"--padding: expected integers >= 0, got {' '.join(values)}")
    if len(ints) == 1:
        return (ints[0], ints[0])
    if len(ints) == 2:
        return tuple(ints)
    if len(ints) == 4:
        return ((ints[0], ints[1]), (ints[2], ints[3]))
    raise UsageError(f"--padding: expected 1, 2 or 4 integers, got {len(ints)}")


_CUSTOM_FLAGS = ("kernel", "stride", "padding", "dilation", "multiplier")


def case_from_args(args):
    """The one case of --shape/--kernel/... (named like custom_3x7)."""
    kh, kw = _pair_arg(args.kernel, "--kernel") or (3, 3)
    N, C, H, W = args.shape
    case = Case(
        name=f"custom_{kh}x{kw}", N=N, C=C, H=H, W=W, KH=kh, KW=kw,
        stride=_pair_arg(args.stride, "--stride") or (1, 1), padding=_padding_arg(args.padding),
        dilation=_pair_arg(args.dilation, "--dilation") or (1, 1), multiplier=args.multiplier or 1,
        bias=not args.no_bias,
    )
    try:
        case.params()
    except (TypeError, ValueError) as e:
        raise UsageError(f"custom case: {e}") from None
    return case


@dataclasses.dataclass
class Selection:
    suite: object  # Path of the suite file, or None for a custom case
    jobs: list  # [(Case, dtype name)]
    notes: list


def select_jobs(args, env=None, root=None):
    """Resolve the command line to (case, dtype) jobs; raises UsageError."""
    env = os.environ if env is None else env
    notes = []
    if args.shape is not None:
        if args.cases:
            raise UsageError("--cases selects suite cases; it cannot be combined with --shape")
        case = case_from_args(args)
        dtypes = args.dtype or ["float32"]
        jobs = [(case, d) for d in DTYPES if d in dtypes]
        return Selection(None, jobs, notes)
    given = [f"--{f}" for f in _CUSTOM_FLAGS if getattr(args, f) is not None] + (["--no-bias"] if args.no_bias else [])
    if given:
        raise UsageError(f"{', '.join(given)}: only for a custom case; add --shape N C H W")
    if args.suite:
        path = Path(args.suite)
    else:
        path = default_suite_path(env, root)
        if env.get(SUITE_ENV) and (path is None or path != Path(env[SUITE_ENV])):
            notes.append(f"${SUITE_ENV}={env[SUITE_ENV]} does not exist; using the next default")
        if path is None:
            raise UsageError("no suite file found: pass --suite FILE or set $" + SUITE_ENV)
    cases, half = load_suite(path)
    if args.cases:
        by_name = {c.name: c for c in cases}
        unknown = [n for n in args.cases if n not in by_name]
        if unknown:
            raise UsageError(f"--cases: unknown case(s) {', '.join(unknown)}; the suite has {', '.join(by_name)}")
        wanted = set(args.cases)
        cases = [c for c in cases if c.name in wanted]  # suite order
    jobs = []
    for case in cases:
        if args.all_dtypes:
            dtypes = args.dtype or ["float32", "float16", "bfloat16"]
        else:
            dtypes = [d for d in suite_dtypes(case, half) if not args.dtype or d in args.dtype]
        jobs += [(case, d) for d in DTYPES if d in dtypes]
    if not jobs:
        raise UsageError("the selection is empty (check --cases and --dtype; --all-dtypes runs every case in "
                         "every --dtype)")
    return Selection(path, jobs, notes)


def passes_for(args):
    out = [] if args.backward_only else ["forward"]
    if args.backward:
        out += ["backward", "grad_input", "grad_weight"]
    return out


# ---------------------------------------------------------------------------------------
# Costs, floors and targets (pure)


def forward_cost(p, dtype):
    """(bytes, FLOPs) of a forward pass: bytes = (x + output) elements x itemsize (weights
    and bias negligible); FLOPs = 2 * KH * KW * output elements."""
    size = ITEMSIZE[dtype]
    x_el = p.N * p.C * p.H * p.W
    out_el = p.N * p.CM * p.OH * p.OW
    return (x_el + out_el) * size, 2 * p.KH * p.KW * out_el


def backward_cost(p, dtype, pass_name="backward"):
    """(bytes, FLOPs) of a backward pass.

    backward (grad x + weight + bias in one call): bytes = (x + grad_output + grad_x)
    elements x itemsize, FLOPs = 2 x the forward's; grad_input alone: (grad_output +
    grad_x) elements, the forward's FLOPs; grad_weight alone: (x + grad_output) elements,
    the forward's FLOPs.
    """
    size = ITEMSIZE[dtype]
    x_el = p.N * p.C * p.H * p.W
    go_el = p.N * p.CM * p.OH * p.OW
    fwd_flops = 2 * p.KH * p.KW * go_el
    if pass_name == "backward":
        return (x_el + go_el + x_el) * size, 2 * fwd_flops
    if pass_name == "grad_input":
        return (go_el + x_el) * size, fwd_flops
    if pass_name == "grad_weight":
        return (x_el + go_el) * size, fwd_flops
    raise ValueError(f"pass_name: expected 'backward', 'grad_input' or 'grad_weight', got {pass_name!r}")


def pass_cost(p, dtype, pass_name):
    if pass_name == "forward":
        return forward_cost(p, dtype)
    return backward_cost(p, dtype, pass_name)


def floor_ms(nbytes, flops, ceilings, dtype):
    """Roofline floor in ms: max(bytes / copy bandwidth, FLOPs / FMA rate of the dtype)."""
    bw = ceilings["copy_GBps"] * 1e9
    rate = ceilings[RATE_KEY[dtype]] * 1e12
    return max(nbytes / bw, flops / rate) * 1e3


def best_anchor(anchors):
    vals = [v for v in anchors if v is not None]
    return min(vals) if vals else None


def forward_target_met(ms, floor, best_anchor_ms, correct=True):
    """ms <= 1.25 * floor + 0.005 and ms <= the best anchor. False when incorrect or
    unmeasured; None when the floor part holds but no anchor was measured."""
    if not correct or ms is None or not math.isfinite(ms):
        return False
    if ms > FORWARD_FLOOR_FACTOR * floor + FORWARD_SLACK_MS:
        return False
    if best_anchor_ms is None:
        return None
    return ms <= best_anchor_ms


def backward_target_met(ms, floor, torch_bwd_ms, correct=True):
    """ms <= floor / 0.6 + 0.010 and >= 3x faster than PyTorch's backward; False / None as
    forward_target_met."""
    if not correct or ms is None or not math.isfinite(ms):
        return False
    if ms > floor / BACKWARD_EFFICIENCY + BACKWARD_SLACK_MS:
        return False
    if torch_bwd_ms is None:
        return None
    return ms * BACKWARD_SPEEDUP <= torch_bwd_ms


def rotation_sets(set_bytes, l2_bytes, budget_bytes):
    """How many independent input sets to rotate among: their total exceeds 2 x L2, at
    least 2, and no more than fit the budget (but 2 even when 2 do not)."""
    set_bytes = max(1, int(set_bytes))
    k = max(2, (2 * int(l2_bytes)) // set_bytes + 1)
    cap = max(2, int(budget_bytes) // set_bytes)
    return min(k, cap)


# ---------------------------------------------------------------------------------------
# Rows, table, summary, JSON (pure)


def make_row(case, dtype, pass_name, kernel, ms, nbytes, flops, ceilings, anchors=None, compile_s=None,
             correct=True, rel_error=None, compiled_new=None, error=None):
    """One result row (the JSON row format). `anchors` maps ANCHOR_KEYS to ms or None."""
    anchors = dict(anchors or {})
    row = {"case": case, "dtype": dtype, "pass": pass_name, "kernel": kernel, "ms": ms}
    fl = floor_ms(nbytes, flops, ceilings, dtype)
    row["floor_ms"] = fl
    row["efficiency"] = fl / ms if ms else None
    row["bytes"] = int(nbytes)
    row["flops"] = int(flops)
    for k in ANCHOR_KEYS:
        row[k] = anchors.get(k)
    if pass_name == "forward":
        best = best_anchor([row["torch_nchw_ms"], row["torch_cl_ms"], row["jax_ms"]])
    else:
        best = row["torch_bwd_ms"]
    row["best_anchor_ms"] = best
    row["speedup"] = best / ms if (best is not None and ms) else None
    row["compile_s"] = compile_s
    row["compiled_new"] = compiled_new
    row["correct"] = bool(correct) and error is None
    row["rel_error"] = rel_error if (rel_error is None or math.isfinite(rel_error)) else None
    if pass_name == "forward":
        met = forward_target_met(ms, fl, best, row["correct"])
    elif pass_name == "backward":
        met = backward_target_met(ms, fl, best, row["correct"])
    else:
        met = None  # grad_input / grad_weight alone: reported, no target
    row["meets_target"] = met
    row["error"] = error
    return row


def target_label(row):
    if row.get("error"):
        return "ERROR"
    if not row.get("correct"):
        return "FAILED"
    if row["pass"] not in ("forward", "backward"):
        return "-"
    met = row.get("meets_target")
    if met is None:
        return "yes*"  # floor part met, no anchor to compare with
    return "yes" if met else "MISS"


def _fmt_ms(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    if v >= 0.1:
        return f"{v:.3f}"
    if v >= 0.001:
        return f"{v:.4f}"
    return f"{v:.2e}"


def _fmt_pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def _fmt_x(v):
    return "-" if v is None else f"{v:.2f}x"


TABLE_HEADER = ("case", "dtype", "pass", "kernel", "ms", "floor ms", "eff %", "torch NCHW ms", "torch CL ms",
                "JAX | torch bwd ms", "speedup", "target")


def table_cells(row):
    third = row["jax_ms"] if row["pass"] == "forward" else row["torch_bwd_ms"]
    return (
        row["case"], row["dtype"], row["pass"], row.get("kernel") or "?", _fmt_ms(row["ms"]), _fmt_ms(row["floor_ms"]),
        _fmt_pct(row["efficiency"]), _fmt_ms(row["torch_nchw_ms"]), _fmt_ms(row["torch_cl_ms"]), _fmt_ms(third),
        _fmt_x(row["speedup"]), target_label(row),
    )


def format_table(rows):
    """Fixed-width text table of result rows: text columns left-aligned, numbers right."""
    cells = [TABLE_HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(TABLE_HEADER))]
    left = {0, 1, 2, 3, 11}
    lines = []
    for n, c in enumerate(cells):
        parts = [str(v).ljust(w) if i in left else str(v).rjust(w) for i, (v, w) in enumerate(zip(c, widths))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if any(target_label(r) == "yes*" for r in rows):
        lines.append("yes*: the floor part of the target is met; no anchor was measured to compare with")
    return "\n".join(lines)


def geomean(values):
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def summary(rows):
    """Aggregates: geometric-mean speedups (correct rows only) and target counts."""
    out = {}
    for pass_name, key in (("forward", "forward_geomean_speedup"), ("backward", "backward_geomean_speedup")):
        sel = [r for r in rows if r["pass"] == pass_name]
        ok = [r["speedup"] for r in sel if r["correct"] and r["speedup"] is not None]
        out[key] = geomean(ok)
        out[f"{pass_name}_speedup_rows"] = len([v for v in ok if v is not None])
        out[f"{pass_name}_rows"] = len(sel)
        out[f"{pass_name}_met"] = sum(1 for r in sel if r["meets_target"] is True)
        out[f"{pass_name}_unchecked"] = sum(1 for r in sel if r["meets_target"] is None and r["correct"])
        out[f"{pass_name}_failed"] = sum(1 for r in sel if not r["correct"])
    comp = [r["compile_s"] for r in rows if r.get("compile_s") is not None and r.get("compiled_new")]
    out["compile_s"] = (
        {"n": len(comp), "min": min(comp), "median": statistics.median(comp), "max": max(comp)} if comp else None
    )
    return out


def summary_lines(rows, dispatch_us=None, cold_cache=True):
    s = summary(rows)
    lines = []
    names = {"forward": "best anchor (min of torch NCHW, torch channels_last, JAX)", "backward": "PyTorch backward"}
    for pass_name in ("forward", "backward"):
        if not s[f"{pass_name}_rows"]:
            continue
        g = s[f"{pass_name}_geomean_speedup"]
        g_txt = "-" if g is None else f"{g:.2f}x"
        lines.append(f"{pass_name}: geometric-mean speedup over {names[pass_name]}: {g_txt} "
                     f"({s[f'{pass_name}_speedup_rows']} correct rows with an anchor)")
        extra = []
        if s[f"{pass_name}_unchecked"]:
            extra.append(f"{s[f'{pass_name}_unchecked']} without an anchor")
        if s[f"{pass_name}_failed"]:
            extra.append(f"{s[f'{pass_name}_failed']} FAILED/ERROR")
        lines.append(f"{pass_name}: targets met {s[f'{pass_name}_met']} of {s[f'{pass_name}_rows']}"
                     + (f" ({', '.join(extra)})" if extra else ""))
    c = s["compile_s"]
    if c:
        what = "cold compile" if cold_cache else "warm disk cache"
        lines.append(f"first call per new specialization ({what}, synchronized): min {c['min']:.2f} s, "
                     f"median {c['median']:.2f} s, max {c['max']:.2f} s over {c['n']}")
    if dispatch_us is not None:
        ok = "yes" if dispatch_us <= DISPATCH_TARGET_US else "MISS"
        lines.append(f"host dispatch: {dispatch_us:.2f} us per cached forward call on (1, 8, 16, 16) 3x3 fp32 "
                     f"(best of 7 rounds of 2000 back-to-back calls, final synchronize included); "
                     f"target <= {DISPATCH_TARGET_US:g} us: {ok}")
    return lines


def build_report(meta, ceilings, dispatch_us, rows, notes=()):
    """The JSON document: meta holds gpu, versions, commit, date, command (and settings)."""
    doc = {
        "gpu": meta.get("gpu"),
        "versions": meta.get("versions", {}),
        "commit": meta.get("commit"),
        "date": meta.get("date"),
        "command": meta.get("command"),
        "settings": meta.get("settings", {}),
        "ceilings": dict(ceilings),
        "dispatch_us": dispatch_us,
        "rows": [dict(r) for r in rows],
        "summary": summary(rows),
        "notes": list(notes),
    }
    return doc


def write_json(path, doc):
    text = json.dumps(doc, indent=1, allow_nan=False)
    Path(path).write_text(text + "\n")


def ceilings_line(ceilings):
    c = ceilings
    return (f"ceilings: copy {c['copy_GBps']:.0f} GB/s, fp32 FMA {c['fp32_TFLOPs']:.1f} TFLOP/s, "
            f"half2 FMA {c['half2_TFLOPs']:.1f} TFLOP/s, fp64 FMA {c['fp64_TFLOPs']:.1f} TFLOP/s")


# ---------------------------------------------------------------------------------------
# Kernel names (pure: plans are computed without a GPU)


def short_kernel_name(expr):
    """'dw::conv_tile<float, 0, 3, 7, 1, 1, 1, 1, 4, 8, ...>' -> 'conv_tile 4x8' (micro-tile of
    outputs; for wgrad_smem the tap tile); the row sweeps by columns per lane and rows
    ahead ('conv_rows_async v8 pf3')."""
    if not expr:
        return "?"
    from ._kernels import split_expr

    name, args = split_expr(expr)
    # Position of (TH, TW) in each template's argument list (see _kernels).
    tile_at = {"conv_tile": 8, "conv_smem": 7, "wgrad_tile": 7, "wgrad_smem": 1, "bwd_tile": 7}
    try:
        if name in tile_at:
            i = tile_at[name]
            out = f"{name} {int(args[i])}x{int(args[i + 1])}"
            if name == "conv_smem" and len(args) > 9 and args[9] == "true":
                out += " flip"
            return out
    except (IndexError, ValueError):
        pass
    try:
        if name == "conv_batch":  # channels x images per unit
            cg = int(args[14])
            return f"conv_batch {cg}x{32 // cg}" + (" flip" if args[13] == "true" else "")
        if name == "bwd_batch":  # channels x images per unit
            cg = int(args[11])
            return f"bwd_batch {cg}x{32 // cg}"
    except (IndexError, ValueError):
        pass
    try:
        if name == "conv_plane":  # output rows per thread x plane width, stages
            out = f"conv_plane {int(args[13])}x{int(args[10])}"
            out += " flip" if args[14] == "true" else ""
            return out + (f" s{int(args[15])}" if len(args) > 17 and int(args[15]) > 1 else "")
    except (IndexError, ValueError):
        pass
    try:
        if name == "conv_lines":  # one output row segment of CW columns per thread
            return f"conv_lines 1x{int(args[9])}" + (" flip" if args[10] == "true" else "")
    except (IndexError, ValueError):
        pass
    try:
        if name == "conv_mma":  # block tile 16*WR x 8*WN
            out = f"conv_mma {16 * int(args[4])}x{8 * int(args[3])}"
            return out + (" flip" if args[8] == "true" else "")
    except (IndexError, ValueError):
        pass
    try:
        if name == "conv_stack":  # 16 images x 8 WN columns per block, rows in flight
            out = f"conv_stack 16x{8 * int(args[3])} pf{int(args[7])}"
            return out + (" flip" if args[9] == "true" else "")
    except (IndexError, ValueError):
        pass
    try:
        if name == "conv_mma_rows":  # 16 rows per step x 8 WN NW columns per block, groups ahead
            out = f"conv_mma_rows 16x{8 * int(args[3]) * int(args[4])} pf{int(args[7])}"
            return out + (" flip" if args[9] == "true" else "")
    except (IndexError, ValueError):
        pass
    try:
        if name in ("conv_rows", "conv_rows_async"):  # columns per lane, rows ahead
            out = f"{name} v{int(args[1])} pf{int(args[10])}"
            return out + (" flip" if args[11] == "true" else "")
        if name == "conv_rows_whole":  # columns per lane x lanes (a whole row), rows ahead
            out = f"conv_rows_whole v{int(args[1])}x{int(args[9])} pf{int(args[10])}"
            return out + (" flip" if args[11] == "true" else "")
        if name == "bwd_rows":
            return f"bwd_rows v{int(args[1])} pf{int(args[11])}"
        if name == "bwd_plane":  # stages (channels and items per block are run-time)
            return "bwd_plane" + (f" s{int(args[11])}" if int(args[11]) > 1 else "")
    except (IndexError, ValueError):
        pass
    if name in ("wgrad_mma", "wgrad_plane", "wgrad_lines", "wgrad_stack", "bwd_mma"):
        return name
    if name.endswith("_generic") or name.endswith("_reduce"):
        return name
    text = name + (f"<{', '.join(args)}>" if args else "")
    short = text if len(text) <= 40 else text[:37] + "..."
    return short


def plan_arch():
    """(compute capability, SM count) the plans are made for: the current GPU's, or an
    H100's (sm_90, 132 SMs; the results are committed for one) where there is none, as in
    `--list` on a CPU."""
    from . import _kernels

    try:
        return _kernels.current_arch(), _kernels.current_sms()
    except Exception:
        return 90, 132


def kernel_label(p, dtype, pass_name, ptr=0):
    """Short names of the specializations cupy_dwconv plans for this pass, and their full
    expressions (a set, to tell whether a first call compiled something new)."""
    from . import _kernels

    arch = plan_arch()
    exprs = []
    if pass_name == "forward":
        launch = _kernels.plan_forward(p, dtype, ptr, *arch)
        return short_kernel_name(launch.expr), {launch.expr}
    parts = []
    needs = NEEDS[pass_name]
    if needs[0] and (needs[1] or needs[2]):
        fused = _kernels.plan_backward(p, dtype, ptr, ptr, *arch)
        if fused is not None:
            return short_kernel_name(fused[0].expr), {fused[0].expr, fused[2].expr}
    if NEEDS[pass_name][0]:
        gi = _kernels.plan_grad_input(p, dtype, ptr, *arch)
        parts.append(short_kernel_name(gi.expr))
        exprs.append(gi.expr)
    if NEEDS[pass_name][1] or NEEDS[pass_name][2]:
        s1, _chunks, s2 = _kernels.plan_wgrad(p, dtype, ptr, ptr, *arch)
        parts.append(short_kernel_name(s1.expr))
        exprs += [s1.expr, s2.expr]
    return " + ".join(parts), set(exprs)


# ---------------------------------------------------------------------------------------
# Roofline plot (pure, matplotlib)

_MARKERS = {"forward": "o", "backward": "s", "grad_input": "^", "grad_weight": "v"}
_ANCHOR_STYLE = {
    "torch_nchw_ms": ("PyTorch NCHW", "tab:orange"),
    "torch_cl_ms": ("PyTorch channels_last", "tab:green"),
    "jax_ms": ("JAX", "tab:red"),
    "torch_bwd_ms": ("PyTorch backward", "tab:purple"),
}


def _tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12


def plot_roofline(rows, ceilings, gpu_name, path, max_labels=12):
    """Roofline chart: x = FLOP/byte (the floor's counts), y = achieved TFLOP/s, both log."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    pts = [r for r in rows if r.get("bytes") and r.get("flops")]
    ai = [r["flops"] / r["bytes"] for r in pts] or [1.0]
    bw_tb = ceilings["copy_GBps"] / 1e3  # TB/s = TFLOP/s per FLOP/byte
    peaks = [("fp32 FMA", ceilings["fp32_TFLOPs"], "dimgray", "-"),
             ("half2 FMA", ceilings["half2_TFLOPs"], "darkgray", "--")]
    if any(r["dtype"] == "float64" for r in rows):
        peaks.append(("fp64 FMA", ceilings["fp64_TFLOPs"], "brown", ":"))
    top = max(pk[1] for pk in peaks)
    x_knee = top / bw_tb  # where the bandwidth slope meets the highest flat ceiling
    x_lo, x_hi = min(min(ai), x_knee) / 3, max(max(ai), x_knee) * 3
    ax.plot([x_lo, x_knee], [x_lo * bw_tb, top], color="black", lw=1.2,
            label=f"copy bandwidth {ceilings['copy_GBps']:.0f} GB/s")
    for label, peak, color, ls in peaks:
        ax.plot([peak / bw_tb, x_hi], [peak, peak], color=color, ls=ls, lw=1.2, label=f"{label} {peak:.1f} TFLOP/s")
    shown = set()
    for r in pts:
        x = r["flops"] / r["bytes"]
        marker = _MARKERS.get(r["pass"], "o")
        if r.get("ms"):
            lab = f"cupy_dwconv {r['pass']}"
            ax.scatter([x], [_tflops(r["flops"], r["ms"])], marker=marker, s=42, color="tab:blue",
                       edgecolors="none" if r.get("correct", True) else "red", zorder=3,
                       label=None if lab in shown else lab)
            shown.add(lab)
        for key, (name, color) in _ANCHOR_STYLE.items():
            v = r.get(key)
            if v:
                lab = name
                ax.scatter([x], [_tflops(r["flops"], v)], marker=marker, s=22, color=color, alpha=0.75, zorder=2,
                           label=None if lab in shown else lab)
                shown.add(lab)
    # Label the cupy_dwconv forward points (float32 first), a few only.
    to_label = sorted((r for r in pts if r.get("ms") and r["pass"] == "forward"),
                      key=lambda r: (r["dtype"] != "float32", r["case"]))[:max_labels]
    for r in to_label:
        x = r["flops"] / r["bytes"]
        txt = r["case"] if r["dtype"] == "float32" else f"{r['case']} {r['dtype']}"
        ax.annotate(txt, (x, _tflops(r["flops"], r["ms"])), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ys = [_tflops(r["flops"], v) for r in pts for v in [r.get("ms")] + [r.get(k) for k in ANCHOR_KEYS] if v]
    y_lo = min(ys + [top]) / 3
    ax.set_ylim(y_lo, top * 2)
    ax.set_xlabel("arithmetic intensity (FLOP / byte, floor counts)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"Depthwise conv2d roofline on {gpu_name}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


# ---------------------------------------------------------------------------------------
# GPU: timing, ceilings, dispatch

_SPIN_SRC = r"""
extern "C" __global__ void dwbench_spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"""

_GPU_KERNELS = {}


def _raw_kernel(name, code):
    import cupy

    key = (cupy.cuda.Device().id, name)
    if key not in _GPU_KERNELS:
        _GPU_KERNELS[key] = cupy.RawKernel(code, name, options=("-std=c++17",))
    return _GPU_KERNELS[key]


def _spin(seconds):
    """Keep the GPU busy for `seconds` on the current stream (one thread polling %globaltimer)."""
    import numpy

    kern = _raw_kernel("dwbench_spin", _SPIN_SRC)
    kern((1,), (1,), (numpy.uint64(int(seconds * 1e9)),))


def event_times(fn, n_sets, repeats=50, warmup=10):
    """CUDA-event milliseconds of `repeats` single calls fn(k) on the current stream, k
    rotating over range(n_sets), after `warmup` untimed calls.

    The timed calls are queued behind a spin kernel that lasts longer than the host needs
    to queue them all, so they run back to back on the GPU and no interval holds host
    launch latency.
    """
    import cupy

    stream = cupy.cuda.get_current_stream()
    n_sets = max(1, int(n_sets))
    repeats = max(1, int(repeats))
    for i in range(warmup):
        fn(i % n_sets)
    stream.synchronize()
    # The host's cost per call, from a few more untimed calls.
    probe = 5
    t0 = time.perf_counter()
    for i in range(probe):
        fn((warmup + i) % n_sets)
    host_s = (time.perf_counter() - t0) / probe
    stream.synchronize()
    starts = [cupy.cuda.Event() for _ in range(repeats)]
    ends = [cupy.cuda.Event() for _ in range(repeats)]
    _spin(min(0.25, 0.002 + 3.0 * host_s * repeats))
    for r in range(repeats):
        k = (warmup + probe + r) % n_sets
        starts[r].record(stream)
        fn(k)
        ends[r].record(stream)
    ends[-1].synchronize()
    return [cupy.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]


def time_events(fn, n_sets, repeats=50, warmup=10):
    """Median CUDA-event time in ms of single calls fn(k) on the current stream, k the
    rotation index in range(n_sets); `warmup` untimed calls first (see event_times)."""
    return statistics.median(event_times(fn, n_sets, repeats, warmup))


def time_wall(fn, block, n_sets, per_batch=20, batches=7, warmup=10, clock=time.perf_counter):
    """Median wall-clock ms per call for work on streams the events cannot see (JAX):
    after a warm-up and a sync, issue `per_batch` calls fn(k) (rotating k), block on the
    last result, divide by `per_batch`; median over `batches` such batches. Includes the
    host dispatch cost whenever it exceeds the GPU time of a call."""
    n_sets = max(1, int(n_sets))
    r = None
    for i in range(warmup):
        r = fn(i % n_sets)
    if r is not None:
        block(r)
    times = []
    k = warmup
    for _ in range(batches):
        t0 = clock()
        for _ in range(per_batch):
            r = fn(k % n_sets)
            k += 1
        block(r)
        times.append((clock() - t0) * 1e3 / per_batch)
    return statistics.median(times)


_PEAK_SRC = r"""
#define CHAINS 8
#define UNROLL 64

extern "C" __global__ void dwbench_fma_f32(const float* __restrict__ seed, float* __restrict__ out, int iters) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const float a = seed[0];
    const float b = seed[1];
    float acc[CHAINS];
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) acc[k] = seed[2 + (int)((i + k) & 63)];
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int k = 0; k < CHAINS; ++k) acc[k] = fmaf(acc[k], a, b);
        }
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) s += acc[k];
    out[i] = s;
}

extern "C" __global__ void dwbench_fma_f64(const double* __restrict__ seed, double* __restrict__ out, int iters) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const double a = seed[0];
    const double b = seed[1];
    double acc[CHAINS];
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) acc[k] = seed[2 + (int)((i + k) & 63)];
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int k = 0; k < CHAINS; ++k) acc[k] = fma(acc[k], a, b);
        }
    }
    double s = 0.0;
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) s += acc[k];
    out[i] = s;
}

// Packed half2 FMA on 32-bit registers (two fp16 lanes, 4 FLOP per instruction).
extern "C" __global__ void dwbench_fma_h2(const unsigned int* __restrict__ seed, unsigned int* __restrict__ out,
                                          int iters) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int a = seed[0];
    const unsigned int b = seed[1];
    unsigned int acc[CHAINS];
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) acc[k] = seed[2 + (int)((i + k) & 63)];
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int k = 0; k < CHAINS; ++k) asm("fma.rn.f16x2 %0, %1, %2, %0;" : "+r"(acc[k]) : "r"(a), "r"(b));
        }
    }
    unsigned int s = 0;  // (+0, +0)
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) asm("add.rn.f16x2 %0, %0, %1;" : "+r"(s) : "r"(acc[k]));
    out[i] = s;
}
"""
PEAK_CHAINS = 8
PEAK_UNROLL = 64
PEAK_BLOCK = 256
PEAK_BLOCKS_PER_SM = 32  # 4 waves of 8 resident 256-thread blocks per SM
PEAK_TARGET_MS = 2.0


def _seed_array(cupy, numpy, kind):
    """[a, b, 64 start values]: acc <- acc * a + b heads for b / (1 - a) (1, or 2 in fp16)
    and stays finite and normal; the values are data the compiler cannot see."""
    rng = numpy.random.default_rng(1)
    starts = 0.5 + rng.random(64)
    if kind in ("f32", "f64"):
        values = numpy.concatenate([[0.999, 0.001], starts])
        return cupy.asarray(values.astype(numpy.float32 if kind == "f32" else numpy.float64))
    # half2: a = 1 - 2^-11, b = 2^-10 in both 16-bit lanes of each 32-bit word.
    h = numpy.concatenate([[1 - 2.0**-11, 2.0**-10], starts]).astype(numpy.float16)
    pairs = numpy.ascontiguousarray(numpy.stack([h, h], axis=1))  # (66, 2)
    return cupy.asarray(pairs.view(numpy.uint32).reshape(-1))


def _peak_rate(cupy, numpy, kind, sms, repeats=20):
    name = {"f32": "dwbench_fma_f32", "f64": "dwbench_fma_f64", "h2": "dwbench_fma_h2"}[kind]
    out_dtype = {"f32": numpy.float32, "f64": numpy.float64, "h2": numpy.uint32}[kind]
    flop_per_fma = 4 if kind == "h2" else 2
    kern = _raw_kernel(name, _PEAK_SRC)
    seed = _seed_array(cupy, numpy, kind)
    blocks = sms * PEAK_BLOCKS_PER_SM
    threads = blocks * PEAK_BLOCK
    out = cupy.empty(threads, dtype=out_dtype)

    def launch(iters):
        kern((blocks,), (PEAK_BLOCK,), (seed, out, numpy.int32(iters)))

    # Calibrate the loop count so one launch takes about PEAK_TARGET_MS.
    iters = 4
    launch(iters)
    cupy.cuda.get_current_stream().synchronize()
    probe = time_events(lambda k: launch(iters), 1, repeats=5, warmup=1)
    iters = int(min(1 << 20, max(4, iters * PEAK_TARGET_MS / max(probe, 1e-3))))
    ms = time_events(lambda k: launch(iters), 1, repeats=repeats, warmup=3)
    flops = flop_per_fma * threads * PEAK_CHAINS * PEAK_UNROLL * iters
    values = out.view(numpy.float16) if kind == "h2" else out
    if not bool(cupy.isfinite(values).all()):
        raise RuntimeError(f"FMA ceiling kernel {name} produced non-finite values")
    return flops / (ms * 1e-3) / 1e12


def measure_ceilings(repeats=30):
    """{copy_GBps, fp32_TFLOPs, half2_TFLOPs, fp64_TFLOPs} on the current device."""
    import cupy
    import numpy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    sms = int(props["multiProcessorCount"])
    nbytes = 1 << 30
    src = cupy.empty(nbytes, dtype=numpy.uint8)
    dst = cupy.empty(nbytes, dtype=numpy.uint8)
    src.fill(1)
    stream = cupy.cuda.get_current_stream()

    def copy(_k):
        dst.data.copy_from_device_async(src.data, nbytes, stream)

    ms = time_events(copy, 1, repeats=max(20, repeats), warmup=3)
    copy_gbps = 2 * nbytes / (ms * 1e-3) / 1e9  # bytes read + bytes written
    src = dst = None  # free the 2 GiB before the FMA kernels
    cupy.get_default_memory_pool().free_all_blocks()
    return {
        "copy_GBps": copy_gbps,
        "fp32_TFLOPs": _peak_rate(cupy, numpy, "f32", sms),
        "half2_TFLOPs": _peak_rate(cupy, numpy, "h2", sms),
        "fp64_TFLOPs": _peak_rate(cupy, numpy, "f64", sms),
    }


DISPATCH_CASE = Case("dispatch_probe", 1, 8, 16, 16, 3, 3, padding=(1, 1))


def measure_dispatch_us(calls=2000, rounds=7):
    """Host wall time per call of a cached forward on a tiny problem (DISPATCH_CASE, fp32),
    in microseconds: `calls` back-to-back calls with no sync inside the loop and one
    synchronize at the end, included in the time; the best of `rounds` (the host is a
    shared virtual machine: the minimum is the cost of the code, the rest is other load)."""
    import cupy

    from ._api import depthwise_conv2d

    c = DISPATCH_CASE
    rs = cupy.random.RandomState(3)
    x = rs.standard_normal(c.x_shape, dtype=cupy.float32)
    w = rs.standard_normal(c.weight_shape, dtype=cupy.float32)
    b = rs.standard_normal((c.C,), dtype=cupy.float32)
    stream = cupy.cuda.get_current_stream()
    for _ in range(200):
        depthwise_conv2d(x, w, b, padding=c.padding)
    stream.synchronize()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            depthwise_conv2d(x, w, b, padding=c.padding)
        stream.synchronize()
        per.append((time.perf_counter() - t0) / calls * 1e6)
    return min(per)


# ---------------------------------------------------------------------------------------
# GPU: inputs, frameworks, correctness


def _np_dtype(dtype):
    import numpy

    if dtype == "bfloat16":
        import ml_dtypes

        return numpy.dtype(ml_dtypes.bfloat16)
    return numpy.dtype(dtype)


def _random_gpu(cupy, rs, shape, dtype):
    """Standard normal x INPUT_SCALE in `dtype`, drawn on the GPU in float32 (float64 for
    float64); bfloat16 is rounded to nearest even on the bits."""
    import numpy

    if dtype == "float64":
        return rs.standard_normal(shape, dtype=numpy.float64) * INPUT_SCALE
    a = rs.standard_normal(shape, dtype=numpy.float32) * numpy.float32(INPUT_SCALE)
    if dtype == "float32":
        return a
    if dtype == "float16":
        return a.astype(numpy.float16)
    target = _np_dtype("bfloat16")
    u = a.view(numpy.uint32)
    bits = ((u + numpy.uint32(0x7FFF) + ((u >> 16) & numpy.uint32(1))) >> 16).astype(numpy.uint16)
    try:
        return bits.view(target)
    except Exception:
        # A CuPy that cannot view as bfloat16: convert on the host instead.
        return cupy.asarray(cupy.asnumpy(bits).view(target))


def _to_torch(torch, a):
    try:
        return torch.from_dlpack(a)
    except Exception:
        if a.dtype.name == "bfloat16":
            import numpy

            return torch.from_dlpack(a.view(numpy.uint16)).view(torch.bfloat16)
        raise


def _to_jax(jax, a):
    import cupy

    try:
        return jax.dlpack.from_dlpack(a)
    except Exception:
        return jax.device_put(cupy.asnumpy(a))


def import_torch(notes):
    try:
        import torch
    except Exception as e:
        notes.append(f"PyTorch not available ({type(e).__name__}: {e}); its columns show '-'")
        return None
    if not torch.cuda.is_available():
        notes.append("PyTorch has no CUDA device; its columns show '-'")
        return None
    return torch


def import_jax(notes, enable_x64=False):
    # Without this JAX reserves most of the GPU memory at its first use.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import jax.dlpack  # noqa: F401
    except Exception as e:
        notes.append(f"JAX not available ({type(e).__name__}: {e}); its column shows '-'")
        return None
    try:
        if not jax.devices("gpu"):
            raise RuntimeError("no GPU device")
    except Exception as e:
        notes.append(f"JAX has no GPU backend ({e}); its column shows '-'")
        return None
    if enable_x64:
        jax.config.update("jax_enable_x64", True)
    return jax


@contextlib.contextmanager
def _torch_stream(torch, cupy):
    """PyTorch work on CuPy's current stream, so the same events time it."""
    ptr = cupy.cuda.get_current_stream().ptr
    if torch.cuda.current_stream().cuda_stream == ptr:
        yield
        return
    with torch.cuda.stream(torch.cuda.ExternalStream(ptr)):
        yield


def _rel_error(out, ref):
    """||out - ref|| / ||ref|| in float64 (torch tensors or NumPy arrays)."""
    if hasattr(out, "double"):
        o, r = out.double(), ref.double()
        num = float((o - r).norm())
        den = float(r.norm())
    else:
        import numpy

        o, r = numpy.asarray(out, numpy.float64), numpy.asarray(ref, numpy.float64)
        num = float(numpy.linalg.norm((o - r).ravel()))
        den = float(numpy.linalg.norm(r.ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


class Reference:
    """float64 results for one case's set-0 inputs: PyTorch on the GPU when present (x
    padded explicitly, so any padding works), else -- or when PyTorch fails, e.g. out of
    memory -- the NumPy reference on the first one or two batch items."""

    def __init__(self, p, x, w, b, go, torch, note):
        self.p, self.x, self.w, self.b, self.go, self.torch, self.note = p, x, w, b, go, torch, note
        self._bwd = None
        self.n_host = 1 if p.KH * p.KW > 100 or p.N == 1 else 2

    def error(self, pass_name, result):
        """Relative error norm of `result` (forward output, or the backward's three-tuple);
        the largest over the gradients a backward pass asks for."""
        if pass_name != "forward":
            needs = NEEDS[pass_name]
            for have, need, name in zip(result, needs, ("grad_x", "grad_weight", "grad_bias")):
                if (have is None) == need:
                    raise RuntimeError(f"{name} is {'missing' if need else 'returned though not asked for'}")
        if self.torch is not None:
            try:
                return self._torch_error(pass_name, result)
            except Exception as e:
                self.note(f"PyTorch reference failed ({type(e).__name__}); checked on the host instead")
                self._bwd = None
                self.torch.cuda.empty_cache()
        return self._host_error(pass_name, result)

    def _padded(self, t):
        p = self.p
        if not (p.PT or p.PB or p.PL or p.PR):
            return t
        return self.torch.nn.functional.pad(t, (p.PL, p.PR, p.PT, p.PB))

    def _torch_error(self, pass_name, result):
        p, torch = self.p, self.torch
        if pass_name == "forward":
            xt = self._padded(_to_torch(torch, self.x).double())
            wt = _to_torch(torch, self.w).double()
            bt = None if self.b is None else _to_torch(torch, self.b).double()
            ref = torch.nn.functional.conv2d(xt, wt, bt, stride=(p.SH, p.SW), padding=0, dilation=(p.DH, p.DW),
                                             groups=p.C)
            del xt
            return _rel_error(_to_torch(torch, result), ref)
        if self._bwd is None:
            xt = self._padded(_to_torch(torch, self.x).double())
            got = _to_torch(torch, self.go).double()
            wt = _to_torch(torch, self.w).double()
            gx, gw, gb = torch.ops.aten.convolution_backward(
                got, xt, wt, [p.CM], [p.SH, p.SW], [0, 0], [p.DH, p.DW], False, [0, 0], p.C, [True, True, True]
            )
            self._bwd = (gx[:, :, p.PT:p.PT + p.H, p.PL:p.PL + p.W], gw, gb)
        errs = [_rel_error(_to_torch(torch, g), r) for g, r, need in zip(result, self._bwd, NEEDS[pass_name]) if need]
        return max(errs)

    def _host_error(self, pass_name, result):
        import numpy

        from . import _api, reference

        p, n = self.p, self.n_host
        kw = dict(stride=(p.SH, p.SW), padding=p.padding, dilation=(p.DH, p.DW))
        x64 = self.x[:n].get().astype(numpy.float64)
        w64 = self.w.get().astype(numpy.float64)
        if pass_name == "forward":
            b64 = None if self.b is None else self.b.get().astype(numpy.float64)
            ref = reference.depthwise_conv2d(x64, w64, b64, **kw)
            return _rel_error(result[:n].get().astype(numpy.float64), ref)
        needs = NEEDS[pass_name]
        go64 = self.go[:n].get().astype(numpy.float64)
        rgx, rgw, rgb = reference.depthwise_conv2d_backward(go64, x64, w64, needs=needs, **kw)
        errs = []
        if needs[0]:
            errs.append(_rel_error(result[0][:n].get().astype(numpy.float64), rgx))
        if needs[1] or needs[2]:
            # Batch sums: compare a call on the same slice of the batch with the reference.
            _, sgw, sgb = _api.depthwise_conv2d_backward(self.go[:n], self.x[:n], self.w,
                                                         needs=(False, needs[1], needs[2]), **kw)
            if needs[1]:
                errs.append(_rel_error(sgw.get().astype(numpy.float64), rgw))
            if needs[2]:
                errs.append(_rel_error(sgb.get().astype(numpy.float64), rgb))
        return max(errs)


# ---------------------------------------------------------------------------------------
# GPU: one case


def _first_call_s(cupy, fn):
    t0 = time.perf_counter()
    res = fn()
    cupy.cuda.get_current_stream().synchronize()
    return res, time.perf_counter() - t0


def _symmetric(p):
    return p.PT == p.PB and p.PL == p.PR


def _exc_text(e, limit=200):
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first[:limit]}"


def _torch_anchors(torch, cupy, p, pass_name, xs, gos, w, b, K, repeats, warmup, anchor):
    """PyTorch times for one pass, on the same inputs and stream as cupy_dwconv's."""
    F = torch.nn.functional
    out = {}
    with _torch_stream(torch, cupy):
        xt = [_to_torch(torch, a) for a in xs]
        wt = _to_torch(torch, w)
        bt = None if b is None else _to_torch(torch, b)
        tkw = dict(stride=(p.SH, p.SW), padding=(p.PT, p.PL), dilation=(p.DH, p.DW), groups=p.C)
        if pass_name == "forward":
            def nchw():
                return time_events(lambda k: F.conv2d(xt[k], wt, bt, **tkw), K, repeats, warmup)

            def channels_last():
                xcl = [t.contiguous(memory_format=torch.channels_last) for t in xt]
                wcl = wt.contiguous(memory_format=torch.channels_last)
                return time_events(lambda k: F.conv2d(xcl[k], wcl, bt, **tkw), K, repeats, warmup)

            out["torch_nchw_ms"] = anchor("PyTorch NCHW", nchw)
            out["torch_cl_ms"] = anchor("PyTorch channels_last", channels_last)
        else:
            got = [_to_torch(torch, a) for a in gos]
            mask = list(NEEDS[pass_name])

            def backward(k):
                return torch.ops.aten.convolution_backward(
                    got[k], xt[k], wt, [p.CM], [p.SH, p.SW], [p.PT, p.PL], [p.DH, p.DW], False, [0, 0], p.C, mask)

            out["torch_bwd_ms"] = anchor("PyTorch backward", lambda: time_events(backward, K, repeats, warmup))
        torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return out


def _measure(cupy, call, check, K, repeats, warmup, on_check_failure):
    """(ms, compile_s, rel_error, error): first call timed and checked, then event timing."""
    ms = compile_s = err = error = None
    try:
        res, compile_s = _first_call_s(cupy, lambda: call(0))
        try:
            err = check(res)
        except Exception as e:
            on_check_failure(e)
        del res
        ms = time_events(call, K, repeats, warmup)
    except Exception as e:
        error = _exc_text(e)
    return ms, compile_s, err, error


def run_job(case, dtype, passes, ctx, progress):
    """Measure every pass of one (case, dtype); calls progress(row) for each row."""
    import cupy

    from . import _api

    p = case.params()
    notes = ctx["notes"]
    torch, jax = ctx["torch"], ctx["jax"]
    backward = any(ps != "forward" for ps in passes)
    size = ITEMSIZE[dtype]
    x_bytes = p.N * p.C * p.H * p.W * size
    go_bytes = p.N * p.CM * p.OH * p.OW * size
    K = rotation_sets(x_bytes + (go_bytes if backward else 0), ctx["l2_bytes"], ctx["budget_bytes"])
    rs = cupy.random.RandomState(1234)
    xs = [_random_gpu(cupy, rs, p.x_shape, dtype) for _ in range(K)]
    gos = [_random_gpu(cupy, rs, p.out_shape, dtype) for _ in range(K)] if backward else None
    w = _random_gpu(cupy, rs, p.weight_shape, dtype)
    b = _random_gpu(cupy, rs, (p.CM,), dtype) if case.bias else None
    cupy.cuda.get_current_stream().synchronize()
    tag = f"{case.name} {dtype}"

    def note(msg):
        notes.append(f"{tag}: {msg}")

    ref = Reference(p, xs[0], w, b, gos[0] if backward else None, torch, note)
    conv_kw = dict(stride=(p.SH, p.SW), padding=p.padding, dilation=(p.DH, p.DW))
    # The least-aligned rotated buffer stands for all of them in the kernel label.
    ptr = min((a.data.ptr % 16 for a in xs + (gos or [])), key=lambda r: (r & -r) if r else 16)
    reps, warm = ctx["repeats"], ctx["warmup"]
    use_torch = torch is not None and _symmetric(p)
    if torch is not None and not use_torch:
        note(f"asymmetric padding {p.padding}; PyTorch anchors skipped (aten takes symmetric padding)")

    def anchor(label, fn):
        try:
            return fn()
        except Exception as e:  # an anchor failing must not stop the benchmark
            note(f"{label} anchor failed ({_exc_text(e, 160)})")
            return None

    def make_call(pass_name):
        if pass_name == "forward":
            return lambda k: _api.depthwise_conv2d(xs[k], w, b, **conv_kw)
        needs = NEEDS[pass_name]
        return lambda k: _api.depthwise_conv2d_backward(gos[k], xs[k], w, needs=needs, **conv_kw)

    for pass_name in passes:
        nbytes, flops = pass_cost(p, dtype, pass_name)
        try:
            kernel, exprs = kernel_label(p, dtype, pass_name, ptr)
        except Exception as e:
            kernel, exprs = f"? ({type(e).__name__})", set()
        compiled_new = bool(exprs - ctx["seen_exprs"])
        ctx["seen_exprs"] |= exprs
        ms, compile_s, err, error = _measure(
            cupy, make_call(pass_name), functools.partial(ref.error, pass_name), K, reps, warm,
            lambda e, ps=pass_name: note(f"{ps}: correctness check failed to run ({_exc_text(e, 160)}); marked FAILED"),
        )
        correct = error is None and err is not None and err < REL_TOL[dtype]
        anchors = {}
        if error is None and use_torch:
            anchors.update(_torch_anchors(torch, cupy, p, pass_name, xs, gos, w, b, K, reps, warm, anchor))
        if error is None and jax is not None and pass_name == "forward":
            anchors["jax_ms"] = anchor("JAX", functools.partial(_time_jax, jax, cupy, p, xs, w, b, K, reps, warm))
        progress(make_row(case.name, dtype, pass_name, kernel, ms, nbytes, flops, ctx["ceilings"], anchors,
                          compile_s, correct, err, compiled_new, error))
    xs = gos = ref = None
    cupy.cuda.get_current_stream().synchronize()
    cupy.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()


def _time_jax(jax, cupy, p, xs, w, b, K, repeats, warmup):
    pads = ((p.PT, p.PB), (p.PL, p.PR))

    def conv(x, w_, b_):
        y = jax.lax.conv_general_dilated(
            x, w_, window_strides=(p.SH, p.SW), padding=pads, rhs_dilation=(p.DH, p.DW),
            dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=p.C)
        return y if b_ is None else y + b_[None, :, None, None]

    f = jax.jit(conv)
    cupy.cuda.Device().synchronize()
    xj = [_to_jax(jax, a) for a in xs]
    wj = _to_jax(jax, w)
    bj = None if b is None else _to_jax(jax, b)
    for a in xj:
        a.block_until_ready()
    cupy.cuda.Device().synchronize()
    # JAX runs on its own streams, out of reach of events on CuPy's stream: wall clock per
    # batch of calls, the last one awaited (see time_wall). A batch's outputs can all be
    # alive at once, so large outputs get shorter batches.
    out_bytes = p.N * p.CM * p.OH * p.OW * xs[0].dtype.itemsize
    per_batch = int(max(5, min(20, JAX_INFLIGHT_BYTES // max(out_bytes, 1))))
    return time_wall(lambda k: f(xj[k], wj, bj), lambda r: r.block_until_ready(), K,
                     per_batch=per_batch, batches=max(5, repeats // 10), warmup=max(3, warmup))


# ---------------------------------------------------------------------------------------
# Main


def _versions(torch, jax):
    v = {"python": platform.python_version(), "cupy_dwconv": None, "cupy": None, "cuda_runtime": None,
         "driver": None, "nvrtc": None, "torch": None, "cudnn": None, "jax": None}
    from . import __version__

    v["cupy_dwconv"] = __version__
    try:
        import cupy

        v["cupy"] = cupy.__version__
        v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        v["driver"] = cupy.cuda.runtime.driverGetVersion()
        try:
            from cupy_backends.cuda.libs import nvrtc

            v["nvrtc"] = ".".join(str(i) for i in nvrtc.getVersion())
        except Exception:
            pass
    except Exception:
        pass
    if torch is not None:
        v["torch"] = torch.__version__
        try:
            v["cudnn"] = torch.backends.cudnn.version()
        except Exception:
            pass
    if jax is not None:
        v["jax"] = jax.__version__
    return v


def git_commit(root=None):
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(root or REPO_ROOT), capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = r.stdout.strip()
    return out if r.returncode == 0 and out else None


def resolve_commit(flag, env=None, root=None):
    env = os.environ if env is None else env
    return flag or env.get(COMMIT_ENV) or git_commit(root)


@contextlib.contextmanager
def cold_kernel_cache():
    """Point CuPy's kernel disk cache at a new empty directory for the block, so that
    first calls compile. Must be entered before CuPy compiles anything; CuPy reads
    CUPY_CACHE_DIR when it is imported, so an already imported CuPy gets its cache backend
    swapped too (and restored after)."""
    previous = os.environ.get("CUPY_CACHE_DIR")
    compiler = sys.modules.get("cupy.cuda.compiler")
    old_backend = getattr(compiler, "_kernel_cache_backend", None) if compiler is not None else None
    with tempfile.TemporaryDirectory(prefix="cupy_dwconv_bench_cache_", ignore_cleanup_errors=True) as tmp:
        os.environ["CUPY_CACHE_DIR"] = tmp
        swapped = False
        if old_backend is not None:
            try:
                from cupy.cuda import _compiler_cache

                compiler._set_kernel_cache_backend(_compiler_cache.DiskKernelCacheBackend(tmp))
                swapped = True
            except Exception:
                pass
        try:
            yield tmp
        finally:
            if previous is None:
                os.environ.pop("CUPY_CACHE_DIR", None)
            else:
                os.environ["CUPY_CACHE_DIR"] = previous
            if swapped:
                compiler._set_kernel_cache_backend(old_backend)


def list_jobs(sel, passes, out=None):
    """Print the selected jobs: shapes, byte and FLOP counts, planned kernels (no GPU)."""
    out = sys.stdout if out is None else out
    print(f"suite: {sel.suite if sel.suite else 'custom case'}", file=out)
    for case, dtype in sel.jobs:
        p = case.params()
        for ps in passes:
            nbytes, flops = pass_cost(p, dtype, ps)
            try:
                kernel = kernel_label(p, dtype, ps)[0]
            except Exception as e:
                kernel = f"? ({type(e).__name__})"
            print(f"{case.name:18s} {dtype:9s} {ps:12s} x{p.x_shape} w{p.weight_shape} out{p.out_shape} "
                  f"bytes {nbytes:.4g} FLOPs {flops:.4g} FLOP/byte {flops / nbytes:.2f} kernel {kernel}", file=out)


def main(argv=None):
    argv_list = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv_list)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        sel = select_jobs(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    passes = passes_for(args)
    if args.list:
        list_jobs(sel, passes)
        return 0
    notes = list(sel.notes)
    if args.repeats < 30:
        notes.append(f"--repeats {args.repeats}: fewer than the method's 30 timed calls")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("error: --plot needs matplotlib", file=sys.stderr)
        return 2
    with contextlib.nullcontext() if args.warm_cache else cold_kernel_cache():
        return _run(args, argv_list, sel, passes, notes)


def _run(args, argv_list, sel, passes, notes):
    import cupy

    dev = cupy.cuda.Device(args.device)
    dev.use()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    l2 = int(props.get("l2CacheSize") or 50 * 2**20)
    torch = None if args.no_torch else import_torch(notes)
    if torch is not None:
        torch.cuda.set_device(dev.id)
        torch.backends.cudnn.benchmark = True
    jax = None if args.no_jax else import_jax(notes, enable_x64=any(d == "float64" for _, d in sel.jobs))
    if torch is None:
        notes.append("correctness reference: cupy_dwconv.reference (NumPy) on the first batch items")

    def err(*a):
        print(*a, file=sys.stderr, flush=True)

    err(f"GPU {dev.id}: {gpu}, L2 {l2 / 2**20:.0f} MiB; measuring ceilings ...")
    ceilings = measure_ceilings()
    print(f"GPU: {gpu}")
    print(ceilings_line(ceilings), flush=True)
    dispatch_us = measure_dispatch_us()
    err(f"host dispatch: {dispatch_us:.2f} us per call")
    ctx = {"torch": torch, "jax": jax, "ceilings": ceilings, "l2_bytes": l2,
           "budget_bytes": int(args.max_input_gb * 1e9), "repeats": args.repeats, "warmup": args.warmup,
           "notes": notes, "seen_exprs": set()}
    try:  # the dispatch probe compiled its specialization already
        ctx["seen_exprs"] |= kernel_label(DISPATCH_CASE.params(), "float32", "forward")[1]
    except Exception:
        pass
    rows = []
    total = len(sel.jobs) * len(passes)

    def progress(row):
        third = row["jax_ms"] if row["pass"] == "forward" else row["torch_bwd_ms"]
        err(f"[{len(rows) + 1}/{total}] {row['case']} {row['dtype']} {row['pass']}: {_fmt_ms(row['ms'])} ms "
            f"(floor {_fmt_ms(row['floor_ms'])}, eff {_fmt_pct(row['efficiency'])}%, kernel {row['kernel']}) "
            f"anchors {_fmt_ms(row['torch_nchw_ms'])}/{_fmt_ms(row['torch_cl_ms'])}/{_fmt_ms(third)} "
            f"-> {target_label(row)}" + (f" [{row['error']}]" if row.get("error") else "")
            + (f" [rel err {row['rel_error']:.2e}]" if not row["correct"] and row.get("rel_error") is not None else ""))
        rows.append(row)

    for case, dtype in sel.jobs:
        try:
            run_job(case, dtype, passes, ctx, progress)
        except Exception as e:  # allocation failure and the like: record and go on
            msg = _exc_text(e)
            p = case.params()
            for ps in passes:
                if any(r["case"] == case.name and r["dtype"] == dtype and r["pass"] == ps for r in rows):
                    continue
                nbytes, flops = pass_cost(p, dtype, ps)
                progress(make_row(case.name, dtype, ps, "?", None, nbytes, flops, ceilings, error=msg))
            cupy.get_default_memory_pool().free_all_blocks()

    print()
    print(format_table(rows))
    print()
    for line in summary_lines(rows, dispatch_us, cold_cache=not args.warm_cache):
        print(line)
    for n in notes:
        print(f"note: {n}")
    sys.stdout.flush()
    meta = {
        "gpu": gpu,
        "versions": _versions(torch, jax),
        "commit": resolve_commit(args.commit),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m cupy_dwconv.bench" + ("" if not argv_list else " " + shlex.join(argv_list)),
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "l2_bytes": l2, "device": dev.id,
                     "suite": None if sel.suite is None else _repo_relative(sel.suite), "cold_cache": not args.warm_cache,
                     "timing": "median CUDA-event ms per call (JAX: wall clock per call over batches)"},
    }
    if args.json:
        write_json(args.json, build_report(meta, ceilings, dispatch_us, rows, notes))
        err(f"wrote {args.json}")
    if args.plot:
        try:
            plot_roofline(rows, ceilings, gpu, args.plot)
            err(f"wrote {args.plot}")
        except Exception as e:
            err(f"plot failed: {_exc_text(e)}")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
