"""CPU tests of the benchmark's pure parts: selection, costs and floors, targets, rows,
table, JSON, plot, and the timing helpers' control flow (on a simulated GPU clock)."""

from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path

import numpy
import pytest

from cupy_dwconv import _kernels, bench

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "benchmarks" / "suite.json"

# The ceilings the shared README's floors were computed with (H100 80GB HBM3).
README_CEILINGS = {"copy_GBps": 3020.0, "fp32_TFLOPs": 61.0, "half2_TFLOPs": 66.0, "fp64_TFLOPs": 30.0}

# README fp32 floors in ms: case -> (forward, backward).
README_FP32_FLOORS = {
    "seed_3x7": (0.348, 0.526),
    "mbv2_3x3": (0.077, 0.115),
    "mbv2_3x3_s2": (0.128, 0.230),
    "effnet_5x5": (0.032, 0.048),
    "effnet_5x5_s2": (0.048, 0.086),
    "convnext_7x7": (0.051, 0.077),
    "convnext_7x7_s4": (0.006, 0.010),
    "inception_1x7": (0.005, 0.007),
    "dilated_3x3_d2": (0.089, 0.133),
    "image_3x3": (0.178, 0.266),
    "replk_13x13": (0.036, 0.071),
    "replk_31x31": (0.404, 0.809),
}


def _suite_cases():
    cases, half = bench.load_suite(SUITE)
    return {c.name: c for c in cases}, half


def _write_suite(path, cases, half=()):
    path.write_text(json.dumps({"half_precision": list(half), "cases": cases}))
    return path


def _small_cases():
    return [
        {"name": "a_3x3", "N": 2, "C": 8, "H": 16, "W": 16, "KH": 3, "KW": 3, "stride": [1, 1], "padding": [1, 1],
         "dilation": [1, 1]},
        {"name": "b_5x5", "N": 2, "C": 4, "H": 20, "W": 24, "KH": 5, "KW": 5, "stride": [2, 2], "padding": [2, 2],
         "dilation": [1, 1]},
        {"name": "c_1x7", "N": 1, "C": 6, "H": 17, "W": 17, "KH": 1, "KW": 7, "stride": [1, 1], "padding": [0, 3],
         "dilation": [1, 1]},
    ]


def _select(argv, env=None, root=None):
    return bench.select_jobs(bench.parse_args(argv), env={} if env is None else env, root=root)


# ---------------------------------------------------------------------------------------
# Suite resolution and selection


def test_default_suite_resolution_order(tmp_path):
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    local = _write_suite(root / "benchmarks" / "suite.json", _small_cases())
    assert bench.default_suite_path(env={}, root=root) == local
    (tmp_path / "shared" / "bench").mkdir(parents=True)
    shared = _write_suite(tmp_path / "shared" / "bench" / "suite.json", _small_cases()[:1])
    assert bench.default_suite_path(env={}, root=root) == shared
    custom = _write_suite(tmp_path / "mine.json", _small_cases()[1:])
    assert bench.default_suite_path(env={bench.SUITE_ENV: str(custom)}, root=root) == custom
    # A variable naming a missing file falls through to the next default, with a note.
    missing_env = {bench.SUITE_ENV: str(tmp_path / "nope.json")}
    assert bench.default_suite_path(env=missing_env, root=root) == shared
    sel = _select([], env=missing_env, root=root)
    assert sel.suite == shared and any(bench.SUITE_ENV in n for n in sel.notes)
    assert [c.name for c, _ in sel.jobs] == ["a_3x3"]


def test_no_suite_found(tmp_path):
    assert bench.default_suite_path(env={}, root=tmp_path / "repo") is None
    with pytest.raises(bench.UsageError, match="no suite file"):
        _select([], root=tmp_path / "repo")


def test_repository_default_points_at_a_real_suite():
    path = bench.default_suite_path(env={})
    assert path is not None and path.is_file()
    cases, half = bench.load_suite(path)
    assert len(cases) >= 12 and half <= {c.name for c in cases}


def test_suite_rule_dtypes(tmp_path):
    suite = _write_suite(tmp_path / "s.json", _small_cases(), half=["b_5x5"])
    sel = _select(["--suite", str(suite)])
    assert [(c.name, d) for c, d in sel.jobs] == [
        ("a_3x3", "float32"), ("b_5x5", "float32"), ("b_5x5", "float16"), ("b_5x5", "bfloat16"), ("c_1x7", "float32"),
    ]
    assert sel.suite == suite


def test_repository_suite_rule():
    sel = _select(["--suite", str(SUITE)])
    _, half = _suite_cases()
    assert len(sel.jobs) == 12 + 2 * len(half)
    assert {d for c, d in sel.jobs if c.name == "seed_3x7"} == {"float32", "float16", "bfloat16"}
    assert {d for c, d in sel.jobs if c.name == "mbv2_3x3_s2"} == {"float32"}


def test_cases_and_dtype_filters(tmp_path):
    suite = _write_suite(tmp_path / "s.json", _small_cases(), half=["b_5x5"])
    sel = _select(["--suite", str(suite), "--cases", "c_1x7", "a_3x3"])
    assert [(c.name, d) for c, d in sel.jobs] == [("a_3x3", "float32"), ("c_1x7", "float32")]  # suite order
    sel = _select(["--suite", str(suite), "--dtype", "bf16"])
    assert [(c.name, d) for c, d in sel.jobs] == [("b_5x5", "bfloat16")]
    sel = _select(["--suite", str(suite), "--dtype", "float16", "float32", "--cases", "b_5x5"])
    assert [d for _, d in sel.jobs] == ["float32", "float16"]
    with pytest.raises(bench.UsageError, match="selection is empty"):
        _select(["--suite", str(suite), "--dtype", "float64"])
    sel = _select(["--suite", str(suite), "--dtype", "float64", "--all-dtypes"])
    assert [(c.name, d) for c, d in sel.jobs] == [("a_3x3", "float64"), ("b_5x5", "float64"), ("c_1x7", "float64")]
    sel = _select(["--suite", str(suite), "--all-dtypes", "--cases", "a_3x3"])
    assert [d for _, d in sel.jobs] == ["float32", "float16", "bfloat16"]
    with pytest.raises(bench.UsageError, match="unknown case.*zzz"):
        _select(["--suite", str(suite), "--cases", "a_3x3", "zzz"])


def test_custom_case():
    sel = _select(["--shape", "2", "16", "40", "50", "--kernel", "3", "7"])
    assert sel.suite is None
    [(case, dtype)] = sel.jobs
    assert case.name == "custom_3x7" and dtype == "float32"
    assert (case.N, case.C, case.H, case.W, case.KH, case.KW) == (2, 16, 40, 50, 3, 7)
    assert case.stride == (1, 1) and case.padding == (0, 0) and case.dilation == (1, 1)
    assert case.multiplier == 1 and case.bias
    p = case.params()
    assert (p.OH, p.OW) == (38, 44)

    sel = _select(["--shape", "1", "4", "33", "45", "--kernel", "5", "--stride", "2", "--padding", "1", "2", "3", "4",
                   "--dilation", "2", "1", "--multiplier", "3", "--no-bias", "--dtype", "bf16", "fp16"])
    [(case, d1), (_, d2)] = sel.jobs
    assert case.name == "custom_5x5" and (d1, d2) == ("float16", "bfloat16")
    assert case.stride == (2, 2) and case.padding == ((1, 2), (3, 4)) and case.dilation == (2, 1)
    assert case.multiplier == 3 and not case.bias
    p = case.params()
    assert p.CM == 12 and (p.PT, p.PB, p.PL, p.PR) == (1, 2, 3, 4)

    [(case, _)] = _select(["--shape", "1", "4", "9", "9", "--padding", "same", "--kernel", "3"]).jobs
    assert case.padding == "same" and case.params().out_shape == (1, 4, 9, 9)
    [(case, _)] = _select(["--shape", "1", "4", "9", "9", "--padding", "valid"]).jobs
    assert case.params().out_shape == (1, 4, 7, 7)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--shape", "1", "4", "9", "9", "--cases", "a"], "cannot be combined"),
        (["--kernel", "3", "3"], "only for a custom case"),
        (["--padding", "same"], "only for a custom case"),
        (["--shape", "1", "4", "9", "9", "--padding", "x"], "--padding"),
        (["--shape", "1", "4", "9", "9", "--padding", "1", "2", "3"], "1, 2 or 4"),
        (["--shape", "1", "4", "9", "9", "--kernel", "3", "3", "3"], "--kernel"),
        (["--shape", "1", "4", "5", "5", "--kernel", "9"], "custom case"),
        (["--shape", "1", "4", "9", "9", "--stride", "2", "--padding", "same"], "same"),
    ],
)
def test_bad_custom_case(argv, match):
    with pytest.raises(bench.UsageError, match=match):
        _select(argv)


@pytest.mark.parametrize("argv", [["--dtype", "float8"], ["--repeats", "0"], ["--warmup", "-1"], ["--shape", "1", "2"]])
def test_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    capsys.readouterr()


def test_passes_and_defaults():
    args = bench.parse_args([])
    assert bench.passes_for(args) == ["forward"]
    assert args.repeats == 50 and args.warmup == 10 and not args.warm_cache
    args = bench.parse_args(["--backward"])
    assert bench.passes_for(args) == ["forward", "backward", "grad_input", "grad_weight"]
    args = bench.parse_args(["--backward-only"])
    assert args.backward and bench.passes_for(args) == ["backward", "grad_input", "grad_weight"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["cases"].append(dict(d["cases"][0])), "appears twice"),
        (lambda d: d["cases"][0].pop("KH"), "lacks KH"),
        (lambda d: d["cases"][0].update(KH=40), "a_3x3"),
        (lambda d: d["cases"][0].update(stride=[0, 1]), "stride"),
        (lambda d: d.update(half_precision=["nope"]), "unknown cases: nope"),
        (lambda d: d.pop("cases"), "'cases'"),
    ],
)
def test_suite_validation(mutate, match):
    data = {"half_precision": [], "cases": _small_cases()}
    mutate(data)
    with pytest.raises(bench.UsageError, match=match):
        bench.parse_suite(data)


def test_suite_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(bench.UsageError, match="not valid JSON"):
        bench.load_suite(bad)
    with pytest.raises(bench.UsageError, match="cannot read"):
        bench.load_suite(tmp_path / "missing.json")


def test_main_list_and_usage_errors(tmp_path, capsys):
    suite = _write_suite(tmp_path / "s.json", _small_cases(), half=["a_3x3"])
    assert bench.main(["--suite", str(suite), "--list", "--backward"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(("a_3x3", "b_5x5", "c_1x7"))]
    assert len(lines) == (3 + 2) * 4  # 5 (case, dtype) jobs x 4 passes
    assert all("kernel " in ln and "kernel ?" not in ln for ln in lines)
    assert bench.main(["--suite", str(suite), "--cases", "nope"]) == 2
    assert "unknown case" in capsys.readouterr().err
    assert bench.main(["--dtype", "float8"]) == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------------------
# Costs and floors


@pytest.mark.parametrize("name", sorted(README_FP32_FLOORS))
def test_fp32_floors_match_readme(name):
    cases, _ = _suite_cases()
    p = cases[name].params()
    fwd, bwd = README_FP32_FLOORS[name]
    got_f = bench.floor_ms(*bench.forward_cost(p, "float32"), README_CEILINGS, "float32")
    got_b = bench.floor_ms(*bench.backward_cost(p, "float32"), README_CEILINGS, "float32")
    # The README gives 3 decimals: 2% or half a unit of the last digit, whichever is larger.
    assert got_f == pytest.approx(fwd, rel=0.02, abs=6e-4)
    assert got_b == pytest.approx(bwd, rel=0.02, abs=6e-4)


def test_named_floors():
    cases, _ = _suite_cases()
    c = README_CEILINGS

    def fl(name, dtype, pass_name="forward"):
        p = cases[name].params()
        return bench.floor_ms(*bench.pass_cost(p, dtype, pass_name), c, dtype)

    assert fl("seed_3x7", "float32") == pytest.approx(0.348, rel=0.01)
    assert fl("convnext_7x7", "float32") == pytest.approx(0.051, rel=0.01)
    assert fl("replk_31x31", "float32") == pytest.approx(0.404, rel=0.01)
    assert fl("seed_3x7", "float32", "backward") == pytest.approx(0.526, rel=0.01)
    # 16-bit: half the bytes; seed_3x7 stays bandwidth-bound.
    assert fl("seed_3x7", "float16") == pytest.approx(0.174, rel=0.01)
    assert fl("seed_3x7", "bfloat16", "backward") == pytest.approx(0.263, rel=0.01)
    # replk_31x31 is compute-bound: fp32 rate for fp32, half2 rate for 16-bit types.
    p = cases["replk_31x31"].params()
    _, flops = bench.forward_cost(p, "float16")
    assert fl("replk_31x31", "float16") == pytest.approx(flops / 66e12 * 1e3, rel=1e-9)
    assert fl("replk_31x31", "float64") == pytest.approx(flops / 30e12 * 1e3, rel=1e-9)


def test_cost_formulas_by_hand():
    case = bench.Case("m", N=2, C=3, H=10, W=12, KH=3, KW=5, stride=(2, 1), padding=(1, 2), multiplier=2)
    p = case.params()
    assert p.out_shape == (2, 6, 5, 12)
    x_el, out_el = 2 * 3 * 10 * 12, 2 * 6 * 5 * 12
    fwd_flops = 2 * 15 * out_el
    assert bench.forward_cost(p, "float32") == ((x_el + out_el) * 4, fwd_flops)
    assert bench.forward_cost(p, "float64") == ((x_el + out_el) * 8, fwd_flops)
    assert bench.backward_cost(p, "float16") == ((2 * x_el + out_el) * 2, 2 * fwd_flops)
    assert bench.backward_cost(p, "bfloat16", "grad_input") == ((x_el + out_el) * 2, fwd_flops)
    assert bench.backward_cost(p, "float32", "grad_weight") == ((x_el + out_el) * 4, fwd_flops)
    assert bench.pass_cost(p, "float32", "forward") == bench.forward_cost(p, "float32")
    with pytest.raises(ValueError, match="pass_name"):
        bench.backward_cost(p, "float32", "forward")


def test_floor_is_the_max_of_both_limits():
    c = {"copy_GBps": 1000.0, "fp32_TFLOPs": 10.0, "half2_TFLOPs": 20.0, "fp64_TFLOPs": 5.0}
    assert bench.floor_ms(1e9, 1.0, c, "float32") == pytest.approx(1.0)  # 1 GB at 1 TB/s
    assert bench.floor_ms(1.0, 1e10, c, "float32") == pytest.approx(1.0)  # 10 GFLOP at 10 TFLOP/s
    assert bench.floor_ms(1.0, 1e10, c, "float16") == pytest.approx(0.5)
    assert bench.floor_ms(1.0, 1e10, c, "bfloat16") == pytest.approx(0.5)
    assert bench.floor_ms(1.0, 1e10, c, "float64") == pytest.approx(2.0)
    assert bench.floor_ms(2e9, 1e10, c, "float32") == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------
# Targets


def test_forward_target():
    floor = 0.2
    limit = 1.25 * floor + 0.005
    assert bench.forward_target_met(limit, floor, 1.0) is True
    assert bench.forward_target_met(limit * 1.001, floor, 1.0) is False
    assert bench.forward_target_met(0.21, floor, 0.209) is False  # slower than the best anchor
    assert bench.forward_target_met(0.21, floor, 0.21) is True
    assert bench.forward_target_met(0.21, floor, None) is None  # floor part holds, no anchor
    assert bench.forward_target_met(0.5, floor, None) is False
    assert bench.forward_target_met(0.21, floor, 1.0, correct=False) is False
    assert bench.forward_target_met(None, floor, 1.0) is False
    # Tiny cases: the 5 us slack.
    assert bench.forward_target_met(0.0045 + 0.005, 0.0036, 0.05) is True


def test_backward_target():
    floor = 0.3
    limit = floor / 0.6 + 0.010
    assert bench.backward_target_met(limit, floor, 3 * limit) is True
    assert bench.backward_target_met(limit * 1.001, floor, 100.0) is False
    assert bench.backward_target_met(0.5, floor, 1.49) is False  # only 2.98x faster
    assert bench.backward_target_met(0.5, floor, 1.5) is True
    assert bench.backward_target_met(0.4, floor, None) is None
    assert bench.backward_target_met(0.4, floor, 10.0, correct=False) is False
    assert bench.backward_target_met(float("nan"), floor, 10.0) is False


def test_best_anchor():
    assert bench.best_anchor([2.0, None, 1.5]) == 1.5
    assert bench.best_anchor([None, None]) is None


def test_rotation_sets():
    l2 = 50 * 2**20
    budget = 8 * 10**9
    for set_bytes in (1000, 2**20, 9_633_792, 30 * 2**20, 60 * 2**20, 2**29, 5 * 10**9):
        k = bench.rotation_sets(set_bytes, l2, budget)
        assert k >= 2
        if set_bytes * 3 <= budget:
            assert k * set_bytes > 2 * l2
        assert k == 2 or k * set_bytes <= budget
    assert bench.rotation_sets(2**29, l2, budget) == 2
    assert bench.rotation_sets(10 * 2**20, l2, budget) == 11
    assert bench.rotation_sets(10 * 2**20, l2, 40 * 2**20) == 4  # capped by the budget
    assert bench.rotation_sets(10**10, l2, budget) == 2  # 2 even beyond the budget


# ---------------------------------------------------------------------------------------
# Rows, table, summary, JSON


def _rows():
    c = README_CEILINGS
    cases, _ = _suite_cases()
    p = cases["seed_3x7"].params()
    rows = [
        bench.make_row("seed_3x7", "float32", "forward", "conv_tile 4x8", 0.40, *bench.forward_cost(p, "float32"), c,
                       {"torch_nchw_ms": 2.287, "torch_cl_ms": 13.36, "jax_ms": 13.92}, compile_s=0.8, correct=True,
                       rel_error=1e-7, compiled_new=True),
        bench.make_row("seed_3x7", "float32", "backward", "conv_tile 4x8 + wgrad_tile 4x8", 0.85,
                       *bench.backward_cost(p, "float32"), c, {"torch_bwd_ms": 7.5}, compile_s=1.6, correct=True,
                       rel_error=2e-7, compiled_new=True),
        bench.make_row("seed_3x7", "float32", "grad_input", "conv_tile 4x8", 0.45,
                       *bench.backward_cost(p, "float32", "grad_input"), c, {"torch_bwd_ms": 3.0}, compile_s=0.001,
                       correct=True, rel_error=1e-7, compiled_new=False),
        bench.make_row("seed_3x7", "float16", "forward", "conv_tile 4x8", 0.50, *bench.forward_cost(p, "float16"), c,
                       {"torch_nchw_ms": 4.04, "torch_cl_ms": None, "jax_ms": 15.1}, compile_s=0.9, correct=True,
                       rel_error=3e-4, compiled_new=True),
        bench.make_row("seed_3x7", "bfloat16", "forward", "conv_tile 4x8", 0.20, *bench.forward_cost(p, "bfloat16"),
                       c, {"torch_nchw_ms": 3.79}, compile_s=1.0, correct=False, rel_error=0.5, compiled_new=True),
        bench.make_row("seed_3x7", "bfloat16", "backward", "?", None, *bench.backward_cost(p, "bfloat16"), c,
                       error="CUDARuntimeError: out of memory"),
        bench.make_row("seed_3x7", "float64", "forward", "conv_tile 4x4", 0.8, *bench.forward_cost(p, "float64"), c,
                       {}, compile_s=0.7, correct=True, rel_error=float("inf"), compiled_new=True),
    ]
    return rows


ROW_KEYS = {"case", "dtype", "pass", "kernel", "ms", "floor_ms", "efficiency", "bytes", "flops", "torch_nchw_ms",
            "torch_cl_ms", "jax_ms", "torch_bwd_ms", "best_anchor_ms", "speedup", "compile_s", "correct",
            "meets_target"}


def test_make_row_fields():
    rows = _rows()
    fwd, bwd, gi, f16, bf16, err, f64 = rows
    assert ROW_KEYS <= set(fwd)
    assert fwd["floor_ms"] == pytest.approx(0.3487, rel=2e-3)
    assert fwd["efficiency"] == pytest.approx(fwd["floor_ms"] / 0.40)
    assert fwd["best_anchor_ms"] == 2.287 and fwd["speedup"] == pytest.approx(2.287 / 0.40)
    assert fwd["meets_target"] is True  # 0.40 <= 1.25 * 0.3487 + 0.005 and faster than 2.287
    assert bwd["best_anchor_ms"] == 7.5 and bwd["speedup"] == pytest.approx(7.5 / 0.85)
    assert bwd["meets_target"] is True  # 0.85 <= 0.5265 / 0.6 + 0.01 and 8.8x faster
    assert gi["meets_target"] is None and gi["speedup"] == pytest.approx(3.0 / 0.45)
    assert f16["best_anchor_ms"] == 4.04
    assert f16["meets_target"] is False  # 0.50 > 1.25 * 0.174 + 0.005
    assert bf16["correct"] is False and bf16["meets_target"] is False
    assert err["correct"] is False and err["ms"] is None and err["efficiency"] is None and err["speedup"] is None
    assert f64["meets_target"] is None and f64["rel_error"] is None  # no anchor; non-finite error dropped
    assert f64["floor_ms"] == pytest.approx(bench.floor_ms(f64["bytes"], f64["flops"], README_CEILINGS, "float64"))


def test_target_labels():
    labels = [bench.target_label(r) for r in _rows()]
    assert labels == ["yes", "yes", "-", "MISS", "FAILED", "ERROR", "yes*"]


def test_format_table():
    rows = _rows()
    text = bench.format_table(rows)
    lines = text.splitlines()
    header = lines[0]
    for col in ("case", "dtype", "pass", "kernel", "ms", "floor ms", "eff %", "torch NCHW ms", "torch CL ms",
                "JAX | torch bwd ms", "speedup", "target"):
        assert col in header
    assert set(lines[1].replace(" ", "")) == {"-"}
    body = lines[2:2 + len(rows)]
    assert len(body) == len(rows)
    assert lines[-1].startswith("yes*:")
    fwd, bwd = body[0].split(), body[1].split()
    assert fwd[:3] == ["seed_3x7", "float32", "forward"] and fwd[-1] == "yes"
    assert "0.400" in fwd and "2.287" in fwd and "13.36" in fwd and "13.92" in fwd and "5.72x" in fwd
    assert "87.2" in fwd  # efficiency in percent
    # Backward rows: no torch forward anchors, the torch backward in the shared column.
    assert bwd[-1] == "yes" and "7.500" in bwd and bwd.count("-") >= 2
    assert body[4].split()[-1] == "FAILED" and body[5].split()[-1] == "ERROR"
    # Columns line up: every line of the table body has the header's width or less.
    assert all(len(ln) <= len(lines[1]) for ln in lines[:2 + len(rows)])


def test_format_helpers():
    assert bench._fmt_ms(None) == "-"
    assert bench._fmt_ms(0.0123) == "0.0123"
    assert bench._fmt_ms(0.5) == "0.500"
    assert bench._fmt_ms(6.6e-6) == "6.60e-06"
    assert bench._fmt_ms(13.364) == "13.36"
    assert bench._fmt_ms(123.45) == "123.5"
    assert bench._fmt_pct(0.5) == "50.0"
    assert bench._fmt_x(3.14159) == "3.14x"


def test_summary_and_lines():
    rows = _rows()
    s = bench.summary(rows)
    # Forward speedups of correct rows: 2.287/0.40 and 4.04/0.50 (float64 has no anchor).
    assert s["forward_geomean_speedup"] == pytest.approx(math.sqrt(2.287 / 0.40 * 4.04 / 0.50))
    assert s["forward_rows"] == 4 and s["forward_met"] == 1 and s["forward_failed"] == 1
    assert s["forward_unchecked"] == 1
    assert s["backward_geomean_speedup"] == pytest.approx(7.5 / 0.85)
    assert s["backward_rows"] == 2 and s["backward_met"] == 1 and s["backward_failed"] == 1
    comp = s["compile_s"]
    assert comp["n"] == 5 and comp["min"] == 0.7 and comp["max"] == 1.6 and comp["median"] == 0.9
    lines = bench.summary_lines(rows, dispatch_us=6.5)
    text = "\n".join(lines)
    assert "forward: geometric-mean speedup" in text and "backward: geometric-mean speedup" in text
    assert "targets met 1 of 4" in text and "targets met 1 of 2" in text
    assert "median 0.90 s" in text
    assert "6.50 us per" in text and "target <= 10 us: yes" in text
    assert "MISS" in "\n".join(bench.summary_lines(rows, dispatch_us=12.0))
    assert bench.geomean([]) is None and bench.geomean([None, 4.0, 1.0]) == pytest.approx(2.0)


def test_json_report(tmp_path):
    rows = _rows()
    meta = {"gpu": "Test GPU", "versions": {"python": "3.x", "cupy": "14"}, "commit": None, "date": "2026-01-01",
            "command": "python -m cupy_dwconv.bench --backward"}
    doc = bench.build_report(meta, README_CEILINGS, 6.5, rows, notes=["n1"])
    path = tmp_path / "out.json"
    bench.write_json(path, doc)
    back = json.loads(path.read_text())
    for key in ("gpu", "versions", "commit", "date", "command", "ceilings", "dispatch_us", "rows"):
        assert key in back
    assert back["gpu"] == "Test GPU" and back["commit"] is None and back["dispatch_us"] == 6.5
    assert set(back["ceilings"]) == {"copy_GBps", "fp32_TFLOPs", "half2_TFLOPs", "fp64_TFLOPs"}
    assert len(back["rows"]) == len(rows)
    for r in back["rows"]:
        assert ROW_KEYS <= set(r)
    assert back["rows"][0]["speedup"] == pytest.approx(2.287 / 0.40)
    assert back["rows"][5]["ms"] is None and back["rows"][5]["error"].startswith("CUDARuntimeError")
    assert back["notes"] == ["n1"]


def test_commit_resolution(monkeypatch, tmp_path):
    assert bench.resolve_commit("abc", env={bench.COMMIT_ENV: "def"}) == "abc"
    assert bench.resolve_commit(None, env={bench.COMMIT_ENV: "def"}) == "def"
    assert bench.git_commit(tmp_path) is None  # not a git work tree
    monkeypatch.setattr(bench, "git_commit", lambda root=None: "0123")
    assert bench.resolve_commit(None, env={}) == "0123"


# ---------------------------------------------------------------------------------------
# Kernel names


@pytest.mark.parametrize(
    "expr, short",
    [
        ("dw::conv_tile<float, 0, 3, 7, 1, 1, 1, 1, 4, 8, 0, 0, 4, 0, true>", "conv_tile 4x8"),
        ("dw::conv_tile<dw::half_t, 1, 3, 3, 2, 2, 1, 1, 4, 8, 1, 1, 1, 0, false>", "conv_tile 4x8"),
        ("dw::conv_smem<float, 31, 31, 1, 1, 1, 1, 4, 8, false>", "conv_smem 4x8"),
        ("dw::conv_smem<dw::bf16_t, 31, 31, 1, 1, 1, 1, 4, 8, true>", "conv_smem 4x8 flip"),
        ("dw::conv_plane<float, 7, 7, 1, 1, 1, 1, 7, 7, 7, 7, 3, 3, 7, false, 1, 64, 6>", "conv_plane 7x7"),
        ("dw::conv_lines<float, 31, 31, 56, 56, 56, 56, 15, 15, 56, true, false, 224, 2>", "conv_lines 1x56 flip"),
        ("dw::conv_plane<dw::half_t, 1, 7, 1, 1, 1, 1, 17, 17, 17, 17, 0, 3, 2, true, 2, 256, 2>",
         "conv_plane 2x17 flip s2"),
        ("dw::wgrad_plane<float, 7, 7, 1, 1, 1, 1, 7, 7, 7, 7, 3, 3, 128, 3>", "wgrad_plane"),
        ("dw::conv_batch<float, 7, 7, 1, 1, 1, 1, 7, 7, 7, 7, 3, 3, false, 4, 4>", "conv_batch 4x8"),
        ("dw::conv_batch<double, 7, 7, 1, 1, 1, 1, 14, 14, 14, 14, 3, 3, true, 1, 1>", "conv_batch 1x32 flip"),
        ("dw::conv_generic<float, 0>", "conv_generic"),
        ("dw::wgrad_tile<float, 3, 7, 1, 1, 1, 1, 2, 8, 4, 0, 4>", "wgrad_tile 2x8"),
        ("dw::wgrad_generic<double>", "wgrad_generic"),
        ("dw::bwd_tile<dw::half_t, 3, 7, 1, 1, 0, 0, 4, 8, 8, 2, 0, true, 2, 0>", "bwd_tile 4x8"),
        ("dw::conv_rows<dw::half_t, 8, 2, 8, 3, 7, 1, 1, 6, 32, 1, true, 2>", "conv_rows v8 pf1 flip"),
        ("dw::conv_rows_async<float, 4, 4, 2, 3, 7, 1, 1, 0, 32, 6, false, 2>", "conv_rows_async v4 pf6"),
        ("dw::bwd_rows<dw::bf16_t, 4, 2, 4, 4, 3, 7, 1, 1, 6, 32, 4, 2>", "bwd_rows v4 pf4"),
        ("dw::bwd_plane<float, 7, 7, 1, 1, 7, 7, 7, 7, 3, 3, 1, 128, 3>", "bwd_plane"),
        ("dw::bwd_batch<float, 7, 7, 1, 1, 7, 7, 7, 7, 3, 3, 4, 3, 2>", "bwd_batch 4x8"),
        ("dw::bwd_batch<double, 5, 5, 1, 1, 12, 12, 12, 12, 2, 2, 1, 6, 1>", "bwd_batch 1x32"),
        ("dw::bwd_plane<dw::half_t, 5, 5, 1, 1, 5, 5, 5, 5, 2, 2, 2, 64, 4>", "bwd_plane s2"),
        ("dw::bwd_mma<dw::half_t, 7, 7, 7, 4, 1, 16, 8, 2, 4>", "bwd_mma"),
        ("dw::conv_mma_rows<dw::half_t, 3, 7, 8, 4, 0, 16, 2, 4, false, 5>", "conv_mma_rows 16x256 pf2"),
        ("dw::conv_mma_rows<dw::bf16_t, 7, 7, 8, 2, 1, 8, 2, 16, true, 8>", "conv_mma_rows 16x128 pf2 flip"),
        ("dw::something_new<float, 1, 2>", "something_new<float, 1, 2>"),
        ("", "?"),
    ],
)
def test_short_kernel_name(expr, short):
    assert bench.short_kernel_name(expr) == short


def test_kernel_labels_for_the_suite():
    cases, half = _suite_cases()
    for case in cases.values():
        p = case.params()
        for dtype in ("float32",) + (("float16", "bfloat16") if case.name in half else ()):
            for pass_name in bench.PASSES:
                label, exprs = bench.kernel_label(p, dtype, pass_name)
                assert label and "?" not in label and exprs
                assert len(label) <= 40
            # The full backward is one fused kernel where it applies, else grad input + grad weight.
            fused = _kernels.plan_backward(p, dtype, 0, 0, *bench.plan_arch())
            label = bench.kernel_label(p, dtype, "backward")[0]
            assert label.startswith(("bwd_tile", "bwd_rows", "bwd_plane", "bwd_batch", "bwd_mma")) if fused is not None else "+" in label


# ---------------------------------------------------------------------------------------
# Plot


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = _rows()
    path = tmp_path / "roofline.png"
    bench.plot_roofline(rows, README_CEILINGS, "Test GPU", str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_through_main_path_helpers(tmp_path):
    pytest.importorskip("matplotlib")
    # Only float32 rows, every pass, all anchors missing: still a valid chart.
    c = README_CEILINGS
    p = bench.Case("t", 4, 8, 32, 32, 5, 5, padding=(2, 2)).params()
    rows = [bench.make_row("t", "float32", ps, "k", 0.01, *bench.pass_cost(p, "float32", ps), c)
            for ps in bench.PASSES]
    path = tmp_path / "r.png"
    bench.plot_roofline(rows, c, "GPU", path)
    assert path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------
# Timing helpers on a simulated clock, inputs and ceiling-kernel numerics (no GPU)


class _FakeGPU:
    """A stand-in for the parts of CuPy that event_times uses: a GPU clock that advances
    by each call's simulated duration; events read it when recorded."""

    def __init__(self):
        self.now = 0.0
        self.spins = []
        self.syncs = 0
        gpu = self

        class Event:
            def __init__(self):
                self.t = None

            def record(self, stream=None):
                self.t = gpu.now

            def synchronize(self):
                pass

        class Stream:
            def synchronize(self):
                gpu.syncs += 1

        class RawKernel:
            def __init__(self, code, name, options=()):
                self.name = name

            def __call__(self, grid, block, args, **kw):
                gpu.spins.append(float(args[0]) * 1e-9)
                gpu.now += 1000.0  # the spin itself is never inside an interval

        stream = Stream()
        self.module = types.SimpleNamespace(
            RawKernel=RawKernel,
            cuda=types.SimpleNamespace(
                Event=Event,
                get_current_stream=lambda: stream,
                get_elapsed_time=lambda s, e: e.t - s.t,
                Device=lambda *a: types.SimpleNamespace(id=0),
            ),
        )


def test_event_times_on_a_simulated_clock(monkeypatch):
    gpu = _FakeGPU()
    monkeypatch.setitem(__import__("sys").modules, "cupy", gpu.module)
    monkeypatch.setattr(bench, "_GPU_KERNELS", {})
    calls = []

    def fn(k):
        calls.append(k)
        gpu.now += 1.0 + k  # set k takes 1 + k ms

    times = bench.event_times(fn, n_sets=3, repeats=30, warmup=4)
    assert len(times) == 30
    assert sorted(set(times)) == [1.0, 2.0, 3.0]
    assert len(calls) == 4 + 5 + 30  # warm-up, host-cost probe, timed
    assert set(calls[-30:]) == {0, 1, 2} and all(calls[i + 1] == (calls[i] + 1) % 3 for i in range(len(calls) - 1))
    assert len(gpu.spins) == 1 and 0 < gpu.spins[0] <= 0.25
    assert bench.time_events(fn, 3, repeats=31, warmup=0) == 2.0
    assert bench.time_events(fn, 1, repeats=30, warmup=0) == 1.0


def test_time_wall_batches():
    clock_now = [0.0]
    calls = []

    def fn(k):
        calls.append(k)
        clock_now[0] += 0.002  # 2 ms per call
        return k

    blocked = []
    ms = bench.time_wall(fn, blocked.append, n_sets=4, per_batch=10, batches=5, warmup=3, clock=lambda: clock_now[0])
    assert ms == pytest.approx(2.0)
    assert len(calls) == 3 + 50 and set(calls) == {0, 1, 2, 3}
    assert len(blocked) == 1 + 5  # after the warm-up, then once per batch


def test_bfloat16_inputs_round_to_nearest_even():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = numpy.random.default_rng(0)
    a = bench._random_gpu(numpy, numpy.random.default_rng(0), (1000,), "bfloat16")
    assert a.dtype == numpy.dtype(ml_dtypes.bfloat16)
    expect = (rng.standard_normal((1000,), dtype=numpy.float32) * numpy.float32(0.5)).astype(ml_dtypes.bfloat16)
    assert numpy.array_equal(a.view(numpy.uint16), expect.view(numpy.uint16))
    assert numpy.all(a.astype(numpy.float32) != 0)
    for dtype in ("float16", "float32", "float64"):
        b = bench._random_gpu(numpy, numpy.random.default_rng(0), (64, 3), dtype)
        assert b.dtype == numpy.dtype(dtype) and b.shape == (64, 3)
        assert 0.2 < float(numpy.std(b.astype(numpy.float64))) < 0.8


def test_ceiling_seed_values_stay_finite():
    """The FMA chains acc <- acc * a + b of the ceiling kernels stay finite and normal."""
    for kind, dt in (("f32", numpy.float32), ("f64", numpy.float64)):
        seed = bench._seed_array(numpy, numpy, kind)
        assert seed.dtype == dt and seed.shape == (66,)
        acc, a, b = seed[2:].copy(), seed[0], seed[1]
        for _ in range(20000):
            acc = acc * a + b
        assert numpy.all(numpy.isfinite(acc)) and numpy.allclose(acc, 1.0, atol=1e-3)
    seed = bench._seed_array(numpy, numpy, "h2")
    assert seed.dtype == numpy.uint32 and seed.shape == (66,)
    lanes = seed.view(numpy.float16).reshape(66, 2)
    assert numpy.array_equal(lanes[:, 0], lanes[:, 1])
    acc, a, b = lanes[2:, 0].copy(), lanes[0, 0], lanes[1, 0]
    for _ in range(20000):
        acc = (acc.astype(numpy.float32) * numpy.float32(a) + numpy.float32(b)).astype(numpy.float16)
    # Rounding can park a chain anywhere in [1, 2]; what matters is finite and normal.
    assert numpy.all(numpy.isfinite(acc)) and numpy.all((acc >= 0.5) & (acc <= 2.5))


def _nvrtc():
    try:
        from cuda.bindings import nvrtc

        err, _, _ = nvrtc.nvrtcVersion()
        if int(err) != 0:
            return None
        return nvrtc
    except Exception:
        return None


@pytest.mark.parametrize("src_name", ["_PEAK_SRC", "_SPIN_SRC"])
def test_bench_kernels_compile(src_name):
    nvrtc = _nvrtc()
    if nvrtc is None:
        pytest.skip("NVRTC (cuda-bindings) not available")
    src = getattr(bench, src_name).encode()
    err, prog = nvrtc.nvrtcCreateProgram(src, b"bench.cu", 0, [], [])
    assert int(err) == 0
    try:
        opts = [b"-std=c++17", b"--gpu-architecture=sm_90"]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert int(err) == 0, log.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def test_cold_kernel_cache(monkeypatch):
    monkeypatch.setenv("CUPY_CACHE_DIR", "/nonexistent/previous")
    try:
        from cupy.cuda import compiler
    except Exception:
        compiler = None
    before = getattr(compiler, "_kernel_cache_backend", None)
    with bench.cold_kernel_cache() as tmp:
        assert Path(tmp).is_dir() and not any(Path(tmp).iterdir())
        assert os.environ["CUPY_CACHE_DIR"] == tmp
        if before is not None:
            assert compiler._kernel_cache_backend is not before
            assert compiler._kernel_cache_backend._cache_dir == tmp
    assert os.environ["CUPY_CACHE_DIR"] == "/nonexistent/previous"
    assert not Path(tmp).exists()
    if before is not None:
        assert compiler._kernel_cache_backend is before


def test_ab_source_inlines_a_tree_as_the_package_does(tmp_path):
    """benchmarks/ab_source.py compiles a source tree the way the package compiles its
    own: every kernel file of cupy_dwconv/cuda, read as a tree, is the package's source
    text; a tree whose header differs gives that header's text, inlined once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ab_source", REPO / "benchmarks" / "ab_source.py")
    ab_source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab_source)
    cuda = REPO / "cupy_dwconv" / "cuda"
    for name in ("plane.cu", "rows.cu", "bwd_mma.cu"):
        assert ab_source.tree_source(str(cuda), name) == _kernels.source(name), name
    for f in cuda.iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "blocksum.cuh").write_text("#pragma once\n// draft header\n")
    text = ab_source.tree_source(str(tmp_path), "plane.cu")
    assert text.count("// draft header") == 1 and "#pragma once" not in text
    assert text != _kernels.source("plane.cu")


def test_ab_package_loads_each_tree_as_its_own_package(tmp_path):
    """benchmarks/ab_package.py imports each package tree under a name of its own: its
    kernels' sources come from that tree's cuda/ folder (a marker written into a copy's
    rows.cu shows in the copy's source text, not in this checkout's), and the copy's
    planner is a different module object from the package's."""
    import importlib.util
    import shutil

    bench_dir = str(REPO / "benchmarks")
    sys.path.insert(0, bench_dir)
    try:
        spec = importlib.util.spec_from_file_location("ab_package", REPO / "benchmarks" / "ab_package.py")
        ab_package = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ab_package)
    finally:
        sys.path.remove(bench_dir)
    shutil.copytree(REPO / "cupy_dwconv", tmp_path / "cupy_dwconv", ignore=shutil.ignore_patterns("__pycache__"))
    rows = tmp_path / "cupy_dwconv" / "cuda" / "rows.cu"
    rows.write_text(rows.read_text() + "\n// marker of the copied tree\n")
    copy = ab_package.load_tree(str(tmp_path), 7)
    assert copy.__name__ == "cupy_dwconv_ab7" and copy._kernels is not _kernels
    assert "// marker of the copied tree" in copy._kernels.source("rows.cu")
    assert "// marker of the copied tree" not in _kernels.source("rows.cu")
    assert callable(copy.depthwise_conv2d_backward)


@pytest.mark.parametrize("name", ["wide.json", "wide16.json"])
def test_breadth_lists_plan_every_case(name):
    """benchmarks/wide.py's case lists parse as suites, and every case plans on the CPU:
    the dispatcher's forward, grad input, weight gradient and fused backward, and the
    general path wide.py times beside them."""
    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        import wide
    finally:
        sys.path.remove(str(bench_dir))
    data = json.loads((bench_dir / name).read_text())
    cases, half = bench.parse_suite(data, source=name)
    assert len(cases) >= 15 and set(half) <= {c.name for c in cases}
    for case in cases:
        p = case.params()
        for dtype in wide.dtypes_of(case, data, half):
            assert _kernels.plan_forward(p, dtype, 0, 90, 132) is not None
            assert _kernels.plan_grad_input(p, dtype, 0, 90, 132) is not None
            assert len(_kernels.plan_wgrad(p, dtype, 0, 0, 90, 132)) == 3
            _kernels.plan_backward(p, dtype, 0, 0, 90, 132)
            assert wide.generic_forward(p, dtype).expr.startswith("dw::conv_generic<")
            gi, s1, chunks, s2 = wide.generic_backward(p, dtype)
            assert "conv_generic" in gi.expr and "wgrad_generic" in s1.expr and chunks >= 1
