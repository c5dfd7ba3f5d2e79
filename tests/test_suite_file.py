"""benchmarks/suite.json: an identical copy of the shared benchmark suite, and valid."""

from __future__ import annotations

import json
import pathlib

import pytest

from cupy_dwconv import _params

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "suite.json"
SHARED = ROOT.parent / "shared" / "bench" / "suite.json"


def _suite():
    return json.loads(SUITE.read_text())


def test_suite_is_the_shared_copy():
    if not SHARED.is_file():
        pytest.skip("no shared benchmark suite beside this checkout (../shared/bench/suite.json)")
    assert SUITE.read_bytes() == SHARED.read_bytes(), (
        f"{SUITE.relative_to(ROOT)} differs from {SHARED}: copy the shared file over it"
    )


def test_suite_structure():
    suite = _suite()
    names = [c["name"] for c in suite["cases"]]
    assert names, "no cases"
    assert len(names) == len(set(names)), "duplicate case names"
    assert set(suite["half_precision"]) <= set(names), "half_precision names a case that does not exist"
    for c in suite["cases"]:
        assert {"name", "N", "C", "H", "W", "KH", "KW", "stride", "padding", "dilation"} <= set(c), c


@pytest.mark.parametrize("case", _suite()["cases"], ids=lambda c: c["name"])
def test_case_normalizes(case):
    c = case
    p = _params.conv_params(
        (c["N"], c["C"], c["H"], c["W"]), (c["C"], 1, c["KH"], c["KW"]), (c["C"],), c["stride"], c["padding"], c["dilation"]
    )
    assert p.x_shape == (c["N"], c["C"], c["H"], c["W"])
    assert p.M == 1 and p.OH >= 1 and p.OW >= 1
    sh, sw = c["stride"]
    ph, pw = c["padding"]
    dh, dw = c["dilation"]
    assert p.OH == (c["H"] + 2 * ph - dh * (c["KH"] - 1) - 1) // sh + 1
    assert p.OW == (c["W"] + 2 * pw - dw * (c["KW"] - 1) - 1) // sw + 1
