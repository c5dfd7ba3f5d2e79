"""Shared test fixtures: the `gpu` marker, the per-dtype tolerance table, input makers.

GPU tests are marked `gpu` and skipped, with the reason, where CuPy or a CUDA device is
missing; everything else runs on any machine.
"""

from __future__ import annotations

import numpy
import pytest

# One tolerance table for every comparison against the float64 reference:
# |out - ref| <= atol + rtol * |ref|, elementwise, with scale-aware atol (see `assert_close`).
# 16-bit inputs are exact in float64, accumulation is float32, the final rounding to
# 16 bits dominates: half an ulp is 2^-11 (fp16) and 2^-8 (bf16) relative.
TOLERANCES = {
    "float64": dict(rtol=1e-12, atol=1e-12),
    "float32": dict(rtol=1e-5, atol=1e-5),
    "float16": dict(rtol=2e-3, atol=2e-3),
    "bfloat16": dict(rtol=1.6e-2, atol=1.6e-2),
}
DTYPES = tuple(TOLERANCES)


def _gpu_status():
    try:
        import cupy
    except Exception as e:  # ImportError or a broken CUDA install
        return False, f"CuPy is not importable: {e}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"no CUDA device: {e}"
    if n < 1:
        return False, "no CUDA device"
    return True, ""


GPU_AVAILABLE, GPU_SKIP_REASON = _gpu_status()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA GPU (skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    if GPU_AVAILABLE:
        return
    skip = pytest.mark.skip(reason=f"GPU test skipped: {GPU_SKIP_REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def numpy_dtype(name):
    """numpy dtype for a dtype name; bfloat16 comes from ml_dtypes."""
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
        return numpy.dtype(ml_dtypes.bfloat16)
    return numpy.dtype(name)


def random_array(rng, shape, dtype_name, scale=1.0):
    """Fresh random values (never zeros), exactly representable in `dtype_name`."""
    a = (rng.standard_normal(shape) * scale).astype(numpy_dtype(dtype_name))
    return a


def assert_close(actual, expected, dtype_name, scale=None, what="output"):
    """Compare with the float64 reference using the table above.

    `scale` widens atol for sums of many terms: pass the typical magnitude of the
    accumulated products (for example sqrt(number of terms)). NaN never passes.
    """
    actual = numpy.asarray(actual).astype(numpy.float64)
    expected = numpy.asarray(expected).astype(numpy.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert numpy.isfinite(actual).all(), f"{what}: {numpy.count_nonzero(~numpy.isfinite(actual))} non-finite values (unwritten or NaN)"
    tol = TOLERANCES[dtype_name]
    s = 1.0 if scale is None else max(1.0, float(scale))
    err = numpy.abs(actual - expected)
    bound = tol["atol"] * s + tol["rtol"] * numpy.abs(expected)
    bad = err > bound
    if bad.any():
        idx = numpy.unravel_index(numpy.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: {numpy.count_nonzero(bad)} of {err.size} elements outside tolerance "
            f"(dtype {dtype_name}, rtol {tol['rtol']}, atol {tol['atol'] * s:.3g}); worst at {idx}: "
            f"got {actual[idx]!r}, expected {expected[idx]!r}"
        )


@pytest.fixture(autouse=True)
def nan_outputs(request, monkeypatch):
    """In GPU tests, every output buffer of the library starts as NaN."""
    if "gpu" not in request.keywords or not GPU_AVAILABLE:
        yield None
        return
    from gpu_util import NaNOutputs

    from cupy_dwconv import _api

    alloc = NaNOutputs()
    monkeypatch.setattr(_api, "_new_output", alloc)
    yield alloc
