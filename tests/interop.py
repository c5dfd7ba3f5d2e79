"""Checks against PyTorch and JAX, each run in a fresh interpreter by test_gpu_interop.py.

Why a separate process: a framework imported into a long-lived test worker shares that
process with CuPy, NVRTC and hundreds of earlier tests; PyTorch has failed to import
there (its own schema parser rejecting one of its own operators), and JAX reserves most of
the GPU's memory when it starts. A fresh interpreter per check keeps both effects out of
the rest of the suite and keeps the check itself deterministic.

Usage: python tests/interop.py CHECK. Exit status 0: passed; 77: skipped (the reason is
the last line of stdout); anything else: failed (the traceback is on stderr).
"""

from __future__ import annotations

import os
import sys

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import numpy  # noqa: E402

from conftest import assert_close  # noqa: E402

SKIP = 77


class Skip(Exception):
    pass


def _nan_outputs():
    """Every output buffer of the library starts as NaN, as in the in-process GPU tests."""
    from gpu_util import NaNOutputs

    from cupy_dwconv import _api

    alloc = NaNOutputs()
    _api._new_output = alloc
    return alloc


def _torch():
    try:
        import torch
    except ImportError as e:
        raise Skip(f"PyTorch is not installed: {e}")
    if not torch.cuda.is_available():
        raise Skip("PyTorch has no CUDA device")
    return torch


def torch_dlpack_roundtrip():
    """PyTorch CUDA tensors in (zero-copy), a CuPy array out that PyTorch reads without a
    copy; float32 and bfloat16 against PyTorch's float64 convolution."""
    torch = _torch()
    import cupy
    import torch.nn.functional as F

    import cupy_dwconv

    alloc = _nan_outputs()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 6, 33, 47, device="cuda", generator=g)
    w = torch.randn(12, 1, 3, 5, device="cuda", generator=g)
    b = torch.randn(12, device="cuda", generator=g)
    out = cupy_dwconv.depthwise_conv2d(x, w, b, stride=(1, 2), padding=(1, 2), dilation=(2, 1))
    assert isinstance(out, cupy.ndarray) and alloc.owns(out)
    t = torch.from_dlpack(out)
    assert t.data_ptr() == out.data.ptr  # shares memory, no copy
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=(1, 2), padding=(1, 2), dilation=(2, 1), groups=6)
    assert_close(t.cpu().numpy(), ref.cpu().numpy(), "float32", scale=4.0)
    # 16-bit tensors go in zero-copy too.
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    outb = torch.from_dlpack(cupy_dwconv.depthwise_conv2d(xb, wb, padding="same"))
    refb = F.conv2d(xb.double(), wb.double(), padding="same", groups=6)
    assert_close(outb.float().cpu().numpy(), refb.cpu().numpy(), "bfloat16", scale=4.0)


def torch_autograd_agrees():
    """All three gradients equal PyTorch autograd of F.conv2d(groups=C) in float64, with
    stride, padding, dilation and a channel multiplier."""
    torch = _torch()
    import torch.nn.functional as F

    import cupy_dwconv

    _nan_outputs()
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2, 4, 29, 31, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, 1, 3, 5, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(8, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    y = F.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=4)
    go = torch.randn(y.shape, device="cuda", dtype=torch.float64, generator=g)
    y.backward(go)
    gx, gw, gb = cupy_dwconv.depthwise_conv2d_backward(
        go, x.detach(), w.detach(), stride=(2, 1), padding=(1, 2), dilation=(1, 2)
    )
    for what, ours, theirs in (("grad_x", gx, x.grad), ("grad_weight", gw, w.grad), ("grad_bias", gb, b.grad)):
        assert_close(torch.from_dlpack(ours).cpu().numpy(), theirs.cpu().numpy(), "float64", scale=30.0, what=what)


def torch_cpu_tensor_refused():
    """A CPU tensor is refused with a TypeError that names the argument."""
    try:
        import torch
    except ImportError as e:
        raise Skip(f"PyTorch is not installed: {e}")
    import cupy_dwconv

    try:
        cupy_dwconv.depthwise_conv2d(torch.zeros(1, 2, 5, 5), torch.zeros(2, 1, 3, 3))
    except TypeError as e:
        assert str(e).startswith("x: ") and "CPU" in str(e), str(e)
    else:
        raise AssertionError("a CPU torch tensor was accepted")


def jax_dlpack_roundtrip():
    """JAX GPU arrays in (zero-copy through DLPack), the result back into JAX, float32
    and float16 against the float64 reference."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        raise Skip(f"JAX is not installed: {e}")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as e:
        raise Skip(f"JAX has no GPU backend: {e}")
    if not gpus:
        raise Skip("JAX has no GPU device")
    import cupy

    import cupy_dwconv
    from cupy_dwconv import reference

    alloc = _nan_outputs()
    rng = numpy.random.default_rng(7)
    for dtype in ("float32", "float16"):
        x = rng.standard_normal((3, 5, 21, 26)).astype(dtype)
        w = rng.standard_normal((10, 1, 5, 3)).astype(dtype)
        b = rng.standard_normal((10,)).astype(dtype)
        xj, wj, bj = (jax.device_put(a, gpus[0]) for a in (x, w, b))
        out = cupy_dwconv.depthwise_conv2d(xj, wj, bj, stride=(2, 1), padding=(2, 1))
        assert isinstance(out, cupy.ndarray) and alloc.owns(out)
        back = jnp.from_dlpack(out)
        assert back.shape == out.shape and back.dtype == jnp.dtype(dtype)
        assert back.unsafe_buffer_pointer() == out.data.ptr  # JAX reads the result without a copy
        ref = reference.depthwise_conv2d(
            x.astype(numpy.float64), w.astype(numpy.float64), b.astype(numpy.float64), stride=(2, 1), padding=(2, 1)
        )
        assert_close(numpy.asarray(back), ref, dtype, scale=numpy.sqrt(15.0), what=f"jax {dtype}")
        # The input went in without a copy: the library saw JAX's own buffer.
        assert cupy.from_dlpack(xj).data.ptr == xj.unsafe_buffer_pointer()


CHECKS = {f.__name__: f for f in (torch_dlpack_roundtrip, torch_autograd_agrees, torch_cpu_tensor_refused, jax_dlpack_roundtrip)}


def main(argv):
    if len(argv) != 2 or argv[1] not in CHECKS:
        print(f"usage: interop.py {{{','.join(CHECKS)}}}", file=sys.stderr)
        return 2
    try:
        CHECKS[argv[1]]()
    except Skip as e:
        print(e)
        return SKIP
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
