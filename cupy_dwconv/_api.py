"""Public GPU functions: validate -> plan -> launch.

CuPy is imported on first call, so that `import cupy_dwconv` (and the NumPy reference)
works on machines without it.
"""

from __future__ import annotations

import threading

import numpy

from . import _kernels, _params

_NULL = _kernels.NULL
_DLPACK_GPU_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged


_cupy_module = None  # CuPy, once imported


def _cupy():
    global _cupy_module
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cupy_dwconv needs CuPy for its GPU functions: pip install 'cupy_dwconv[cuda13]' "
            "(or [cuda12]); the NumPy reference cupy_dwconv.reference works without it"
        ) from e
    _cupy_module = cupy
    return cupy


def _as_cupy(value, name):
    """A cupy.ndarray for `value`: CuPy arrays as they are, GPU DLPack tensors zero-copy."""
    if isinstance(value, numpy.ndarray):  # checked before importing CuPy: works without it
        raise TypeError(
            f"{name}: expected a CuPy array or a GPU tensor with __dlpack__, got a numpy.ndarray (CPU memory); "
            f"use cupy_dwconv.reference for NumPy arrays, or move it to the GPU with cupy.asarray({name})"
        )
    global _ndarray
    cupy = _cupy()
    _ndarray = cupy.ndarray
    if isinstance(value, cupy.ndarray):
        return value
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        dev_type, _ = value.__dlpack_device__()
        if int(dev_type) not in _DLPACK_GPU_DEVICES:
            raise TypeError(
                f"{name}: expected a CuPy array or a GPU tensor with __dlpack__, got a "
                f"{type(value).__module__}.{type(value).__name__} in CPU memory (DLPack device type {int(dev_type)}); "
                f"use cupy_dwconv.reference for CPU arrays, or move it to the GPU first"
            )
        # Zero-copy; CuPy passes its current stream so the producer orders its work first.
        return cupy.from_dlpack(value)
    raise TypeError(
        f"{name}: expected a CuPy array or a GPU tensor with __dlpack__, got {type(value).__module__}.{type(value).__name__}"
    )


def _same_device(device_id, **arrays):
    for name, a in arrays.items():
        if a is not None and a.device.id != device_id:
            raise ValueError(f"{name}: expected an array on GPU {device_id} (the device of x), got one on GPU {a.device.id}")


def _new_output(cupy, shape, dtype):
    """Every buffer a kernel writes is allocated here (the tests swap in a NaN-filling
    allocator to prove that every element gets written). cupy.ndarray is cupy.empty
    without its Python wrapper (C order, uninitialized)."""
    return cupy.ndarray(shape, dtype)


# Zeroed uint32 counters of the fused backward's closing step, one buffer per (device,
# stream, host thread: the per-thread default stream has one handle for many streams).
# Every launch leaves them zero again (the last block of a channel resets its counter)
# and launches on one stream run in order, so a call needs no memset; a buffer is
# replaced by a larger zeroed one when a call has more channels (the old one returns to
# CuPy's stream-ordered pool after the launches queued before).
_COUNTERS = {}


def _chunk_counters(cupy, device_id, n):
    key = (device_id, cupy.cuda.get_current_stream().ptr, threading.get_ident())
    buf = _COUNTERS.get(key)
    if buf is None or buf.size < n:
        buf = cupy.zeros(max(n, 1024), dtype=cupy.uint32)
        _COUNTERS[key] = buf
    return buf


def _contiguous(cupy, a):
    return a if a.flags.c_contiguous else cupy.ascontiguousarray(a)


# The split backward's side streams (see _kernels.split_streams), one per (device, host
# thread, priority), made on first use on the current device.
_SIDE_STREAMS = {}
_GREATEST_PRIORITY = -1000  # CUDA clamps a priority to its range: the device's greatest


def _side_stream(cupy, device_id, first):
    key = (device_id, threading.get_ident(), first)
    s = _SIDE_STREAMS.get(key)
    if s is None:
        s = _SIDE_STREAMS[key] = cupy.cuda.Stream(non_blocking=True, priority=_GREATEST_PRIORITY if first else 0)
    return s


def _exact_key(value):
    """`value` itself when it is built only of exact ints and strings (hashable, and
    no bool can pass for an int), else None: such calls take the checked path."""
    t = type(value)
    if t is int or t is str:
        return value
    if t is tuple:
        for v in value:
            if _exact_key(v) is None:
                return None
        return value
    return None


# Forward calls seen before: key -> (output shape, _kernels.CachedLaunch or None where the
# output is empty). Only arguments that passed every check once are cached, so a hit
# skips validation and planning; the launch is all that remains.
_FORWARD_CACHE = {}
_CACHE_MAX = 1024
_ndarray = None


def _forward_key(x, weight, bias, stride, padding, dilation):
    """The call cache's key, or None where the call must take the checked path.

    Layout enters as (shape, C-contiguous): an entry is only made for C-contiguous arrays
    (`_remember` in depthwise_conv2d), and C-contiguous arrays of equal shape have the
    same layout. The flag is CuPy's own attribute: 30 ns, against ~180 ns for the strides
    tuple and ~310 ns for a flags object (the key is on every call's path). Both devices
    enter, so a weight on another GPU misses and gets the checked path's error.
    """
    nd = _ndarray
    if type(x) is not nd or type(weight) is not nd:
        return None
    s = stride if type(stride) is int else _exact_key(stride)
    p = padding if type(padding) is int else _exact_key(padding)
    d = dilation if type(dilation) is int else _exact_key(dilation)
    if s is None or p is None or d is None:
        return None
    xd = x.data
    try:
        if bias is None:
            b = None
        elif type(bias) is nd:
            b = (bias.shape, bias._c_contiguous, bias.dtype, bias.data.device_id)
        else:
            return None
        return (x.shape, x._c_contiguous, x.dtype, weight.shape, weight._c_contiguous, weight.dtype, b, s, p, d,
                xd.ptr & 15, xd.device_id, weight.data.device_id)
    except AttributeError:  # a CuPy without the attribute: every call takes the checked path
        return None


def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise 2-D convolution on the GPU.

    x: (N, C, H, W); weight: (C*M, 1, KH, KW); bias: (C*M,) or None
    -> (N, C*M, OH, OW), a new C-contiguous CuPy array of x's dtype on x's device.

    Output channel o reads input channel o // M (M >= 1 is the channel multiplier): the
    same function as ``torch.nn.functional.conv2d(x, weight, bias, stride, padding,
    dilation, groups=C)``.

    Args:
        x, weight, bias: CuPy arrays, or GPU tensors that speak DLPack (PyTorch, JAX),
            taken zero-copy. float16, bfloat16, float32 or float64, all the same dtype;
            16-bit types accumulate in float32. Non-contiguous arrays are accepted and
            copied to a contiguous buffer first (one extra pass over them).
        stride, dilation: int or (h, w), each >= 1.
        padding: int, (ph, pw), ((top, bottom), (left, right)), 'valid', or 'same'
            (stride 1 only; an even effective kernel puts the extra row/column at the
            bottom/right, as PyTorch).

    Runs on CuPy's current stream. Empty batches or channel counts return empty results
    without a launch.
    """
    key = _forward_key(x, weight, bias, stride, padding, dilation)
    hit = _FORWARD_CACHE.get(key) if key is not None else None
    if hit is not None:
        cupy = _cupy_module or _cupy()
        out_shape, run = hit
        out = _new_output(cupy, out_shape, x.dtype)
        if run is not None:
            dev = key[-2]  # x's device (a hit has weight and bias there too)
            if cupy.cuda.runtime.getDevice() == dev:
                run(cupy, x, weight, bias, out)
            else:
                with cupy.cuda.Device(dev):
                    run(cupy, x, weight, bias, out)
        return out
    x = _as_cupy(x, "x")
    weight = _as_cupy(weight, "weight")
    if bias is not None:
        bias = _as_cupy(bias, "bias")
    dtype = _params.check_dtypes(x=x.dtype, weight=weight.dtype, bias=None if bias is None else bias.dtype)
    p = _params.conv_params(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation)
    cupy = _cupy()
    dev = x.device.id
    _same_device(dev, weight=weight, bias=bias)
    with x.device:
        out = _new_output(cupy, p.out_shape, x.dtype)
        if out.size == 0:
            _remember(key, (p.out_shape, None))
            return out
        contiguous = x.flags.c_contiguous and weight.flags.c_contiguous and (bias is None or bias.flags.c_contiguous)
        x = _contiguous(cupy, x)
        weight = _contiguous(cupy, weight)
        if bias is not None:
            bias = _contiguous(cupy, bias)
        launch = _kernels.plan_forward(p, dtype, x.data.ptr, *_kernels.device_limits(dev))
        launch(dev, (x, weight, _NULL if bias is None else bias, out))
        if contiguous:
            _remember(key, (p.out_shape, _kernels.CachedLaunch(launch, dev)))
    return out


def _remember(key, entry):
    if key is None:
        return
    if len(_FORWARD_CACHE) >= _CACHE_MAX:
        _FORWARD_CACHE.clear()
    _FORWARD_CACHE[key] = entry


def depthwise_conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, needs=(True, True, True)):
    """Gradients of depthwise_conv2d with respect to x, weight and bias.

    grad_output: (N, C*M, OH, OW); x: (N, C, H, W); weight: (C*M, 1, KH, KW)
    -> (grad_x (N, C, H, W), grad_weight (C*M, 1, KH, KW), grad_bias (C*M,)): new
    C-contiguous CuPy arrays of x's dtype, or None where ``needs`` (three bools) is False.

    Same argument rules as depthwise_conv2d; equal to PyTorch autograd of
    ``F.conv2d(..., groups=C)``. grad_weight and grad_bias accumulate in float32
    (float64 for float64) through a fixed-order two-stage reduction, so they are
    deterministic: the same inputs give bitwise-identical results.
    """
    needs = _params.check_needs(needs)
    grad_output = _as_cupy(grad_output, "grad_output")
    x = _as_cupy(x, "x")
    weight = _as_cupy(weight, "weight")
    dtype = _params.check_dtypes(x=x.dtype, weight=weight.dtype, grad_output=grad_output.dtype)
    p = _params.backward_params(grad_output.shape, x.shape, weight.shape, stride, padding, dilation)
    cupy = _cupy()
    dev = x.device.id
    _same_device(dev, weight=weight, grad_output=grad_output)
    gx = gw = gb = None
    with x.device:
        go = _contiguous(cupy, grad_output)
        arch, sms, smem = _kernels.device_limits(dev)
        if needs[0]:
            gx = _new_output(cupy, p.x_shape, x.dtype)
        if needs[1]:
            gw = _new_output(cupy, p.weight_shape, x.dtype)
        if needs[2]:
            gb = _new_output(cupy, (p.CM,), x.dtype)
        want_w = needs[1] or needs[2]
        if want_w and p.CM and p.N == 0:
            # Sums over an empty batch.
            for a in (gw, gb):
                if a is not None:
                    a.fill(0)
            want_w = False
        elif not p.CM:
            want_w = False
        xc = _contiguous(cupy, x) if want_w else None
        if needs[0] and gx.size and want_w:
            # All three gradients from one pass over grad_output, where the fused kernel
            # takes the problem.
            fused = _kernels.plan_backward(p, dtype, xc.data.ptr, go.data.ptr, arch, sms, smem=smem)
            if fused is not None:
                # The fused kernel also finishes grad_weight and grad_bias itself (the last
                # block of each channel adds the chunks' partial rows in order), so its
                # wgrad_reduce stage is not launched.
                stage1, chunks, _ = fused
                w = _contiguous(cupy, weight)
                partial = _new_output(cupy, (p.CM, chunks, p.KH * p.KW + 1), _kernels.ACC_DTYPE[dtype])
                stage1(dev, (xc, go, w, gx, partial, _chunk_counters(cupy, dev, p.CM),
                             _NULL if gw is None else gw, _NULL if gb is None else gb))
                return gx, gw, gb
        if want_w:
            stage1, chunks, stage2 = _kernels.plan_wgrad(p, dtype, xc.data.ptr, go.data.ptr, arch, sms, smem=smem)
            partial = _new_output(cupy, (p.CM, chunks, p.KH * p.KW + 1), _kernels.ACC_DTYPE[dtype])
        side = None
        if needs[0] and gx.size:
            if want_w:
                streams = _kernels.split_streams(p)
                if streams is not None:
                    # The weight gradient's first stage runs on a side stream that waits
                    # for the caller's stream as it is now, after everything stage 1 reads
                    # or writes was made there (x, grad_output and partial: an allocator
                    # may queue work on it); the caller's stream waits for the side stream
                    # before the reduction: ordered on the caller's stream as a
                    # single-stream call is.
                    main = cupy.cuda.get_current_stream()
                    side = _side_stream(cupy, dev, streams == "wgrad_first")
                    side.wait_event(main.record())
            w = _contiguous(cupy, weight)
            launch = _kernels.plan_grad_input(p, dtype, go.data.ptr, arch, sms, smem=smem)
            launch(dev, (go, w, _NULL, gx))
        if want_w:
            if side is None:
                stage1(dev, (xc, go, partial))
            else:
                with side:
                    stage1(dev, (xc, go, partial))
                main.wait_event(side.record())
            stage2(dev, (partial, _NULL if gw is None else gw, _NULL if gb is None else gb))
    return gx, gw, gb
