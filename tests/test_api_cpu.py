"""The GPU functions' argument errors that need no GPU, and the package's import surface."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy
import pytest

from conftest import random_array
import cupy_dwconv
from cupy_dwconv import _api

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _CpuDLPack:
    """A tensor that speaks DLPack and lives in CPU memory (device type 1, kDLCPU)."""

    def __dlpack__(self, stream=None, **kwargs):
        raise AssertionError("a CPU tensor must be refused before it is exported")

    def __dlpack_device__(self):
        return (1, 0)


def _inputs(rng):
    x = random_array(rng, (2, 3, 8, 8), "float32")
    w = random_array(rng, (3, 1, 3, 3), "float32")
    b = random_array(rng, (3,), "float32")
    go = random_array(rng, (2, 3, 6, 6), "float32")
    return x, w, b, go


def test_forward_refuses_numpy_x():
    x, w, b, _ = _inputs(numpy.random.default_rng(0))
    with pytest.raises(TypeError, match=r"^x: expected a CuPy array or a GPU tensor with __dlpack__, got a numpy\.ndarray") as info:
        cupy_dwconv.depthwise_conv2d(x, w, b)
    msg = str(info.value)
    assert "cupy_dwconv.reference" in msg and "cupy.asarray(x)" in msg


def test_backward_refuses_numpy_grad_output():
    x, w, _, go = _inputs(numpy.random.default_rng(1))
    with pytest.raises(TypeError, match=r"^grad_output: expected a CuPy array .*got a numpy\.ndarray") as info:
        cupy_dwconv.depthwise_conv2d_backward(go, x, w)
    msg = str(info.value)
    assert "cupy_dwconv.reference" in msg and "cupy.asarray(grad_output)" in msg


@pytest.mark.parametrize("name", ["x", "weight", "bias", "grad_output"])
def test_numpy_refused_with_the_argument_name(name):
    a = random_array(numpy.random.default_rng(2), (3, 4), "float16")
    with pytest.raises(TypeError, match=rf"^{name}: expected a CuPy array") as info:
        _api._as_cupy(a, name)
    assert "cupy_dwconv.reference" in str(info.value) and f"cupy.asarray({name})" in str(info.value)


def test_numpy_refused_before_cupy_is_imported(monkeypatch):
    """The numpy check needs no CuPy: with CuPy unimportable it is still a TypeError."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    x, w, b, go = _inputs(numpy.random.default_rng(3))
    with pytest.raises(TypeError, match=r"^x: .*numpy\.ndarray"):
        cupy_dwconv.depthwise_conv2d(x, w, b)
    with pytest.raises(TypeError, match=r"^grad_output: .*numpy\.ndarray"):
        cupy_dwconv.depthwise_conv2d_backward(go, x, w)


def test_without_cupy_other_inputs_explain_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ImportError, match=r"needs CuPy") as info:
        cupy_dwconv.depthwise_conv2d(_CpuDLPack(), _CpuDLPack())
    assert "cupy_dwconv[cuda13]" in str(info.value) and "cupy_dwconv.reference" in str(info.value)


def test_backward_checks_needs_first():
    x, w, _, go = _inputs(numpy.random.default_rng(4))
    with pytest.raises(TypeError, match=r"^needs: expected a tuple of three bools"):
        cupy_dwconv.depthwise_conv2d_backward(go, x, w, needs=(True, 1, True))


@pytest.fixture
def cupy_importable():
    # Importing CuPy needs no GPU; creating arrays does.
    pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[cuda13]')")


@pytest.mark.parametrize("name", ["x", "weight", "grad_output"])
def test_cpu_dlpack_tensor_refused(cupy_importable, name):
    with pytest.raises(TypeError, match=rf"^{name}: expected a CuPy array or a GPU tensor") as info:
        _api._as_cupy(_CpuDLPack(), name)
    msg = str(info.value)
    assert "CPU memory" in msg and "DLPack device type 1" in msg and "_CpuDLPack" in msg


def test_cpu_dlpack_tensor_refused_by_the_public_functions(cupy_importable):
    with pytest.raises(TypeError, match=r"^x: .*_CpuDLPack in CPU memory"):
        cupy_dwconv.depthwise_conv2d(_CpuDLPack(), _CpuDLPack())
    with pytest.raises(TypeError, match=r"^grad_output: .*_CpuDLPack in CPU memory"):
        cupy_dwconv.depthwise_conv2d_backward(_CpuDLPack(), _CpuDLPack(), _CpuDLPack())


@pytest.mark.parametrize("value, type_name", [([1.0, 2.0], "builtins.list"), (3.0, "builtins.float"), (None, "builtins.NoneType")])
def test_arbitrary_objects_refused(cupy_importable, value, type_name):
    with pytest.raises(TypeError, match=rf"^x: expected a CuPy array .*got {re.escape(type_name)}$"):
        cupy_dwconv.depthwise_conv2d(value, value)
    with pytest.raises(TypeError, match=rf"^weight: expected a CuPy array .*got {re.escape(type_name)}$"):
        _api._as_cupy(value, "weight")


def test_public_names():
    assert callable(cupy_dwconv.depthwise_conv2d)
    assert callable(cupy_dwconv.depthwise_conv2d_backward)
    assert set(cupy_dwconv.__all__) >= {"depthwise_conv2d", "depthwise_conv2d_backward"}
    from cupy_dwconv import reference

    assert callable(reference.depthwise_conv2d) and callable(reference.depthwise_conv2d_backward)


def test_import_does_not_need_cupy():
    """In a fresh interpreter: importing the package and using the reference never imports CuPy."""
    code = (
        "import sys, numpy\n"
        "import cupy_dwconv\n"
        "from cupy_dwconv import reference\n"
        "x = numpy.random.default_rng(0).standard_normal((1, 2, 5, 5))\n"
        "w = numpy.random.default_rng(1).standard_normal((2, 1, 3, 3))\n"
        "assert reference.depthwise_conv2d(x, w).shape == (1, 2, 3, 3)\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "assert callable(cupy_dwconv.depthwise_conv2d) and callable(cupy_dwconv.depthwise_conv2d_backward)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr


def test_version_matches_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    assert m, "no version in pyproject.toml"
    assert m.group(1) == cupy_dwconv.__version__
