"""python -m cupy_dwconv: run the 3x7 depthwise convolution the project started from.

On a GPU: (32, 128, 128, 256) float32 with a 3x7 kernel, valid padding; checks the result
against the NumPy reference on a slice, then prints the median time and the achieved
bandwidth (input read once + output written once). Without a GPU: says so, exits 1.
"""

from __future__ import annotations

import sys

import numpy


def main():
    try:
        import cupy

        n_dev = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no CuPy, no driver, or no device
        print(f"cupy_dwconv: no CUDA GPU available ({e.__class__.__name__}: {e}); this command needs one.", file=sys.stderr)
        return 1
    if n_dev < 1:
        print("cupy_dwconv: no CUDA GPU available; this command needs one.", file=sys.stderr)
        return 1

    import cupy_dwconv
    from cupy_dwconv import reference

    N, C, H, W, KH, KW = 32, 128, 128, 256, 3, 7
    rng = cupy.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W), dtype=cupy.float32)
    w = rng.standard_normal((C, 1, KH, KW), dtype=cupy.float32)
    b = rng.standard_normal((C,), dtype=cupy.float32)

    y = cupy_dwconv.depthwise_conv2d(x, w, b)
    # Check a slice (2 batch items, 8 channels) against the float64 reference.
    xs, ws, bs = x[:2, :8].get(), w[:8].get(), b[:8].get()
    ref = reference.depthwise_conv2d(xs.astype(numpy.float64), ws.astype(numpy.float64), bs.astype(numpy.float64))
    got = y[:2, :8].get().astype(numpy.float64)
    rel = float(numpy.linalg.norm(got - ref) / numpy.linalg.norm(ref))
    ok = rel < 1e-5 and bool(numpy.isfinite(got).all())

    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(5):
        cupy_dwconv.depthwise_conv2d(x, w, b)
    for _ in range(30):
        start.record()
        cupy_dwconv.depthwise_conv2d(x, w, b)
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    ms = float(numpy.median(times))
    nbytes = (x.size + y.size) * x.itemsize
    name = cupy.cuda.runtime.getDeviceProperties(x.device.id)["name"].decode()
    print(f"device        {name}")
    print(f"problem       x {x.shape} float32, weight {w.shape}, bias on, stride 1, padding 0 -> {y.shape}")
    print(f"check         relative error vs reference on a slice: {rel:.2e} ({'ok' if ok else 'FAILED'})")
    print(f"time          {ms:.3f} ms (median of 30)")
    print(f"bandwidth     {nbytes / ms / 1e6:.0f} GB/s (input read once + output written once, {nbytes / 1e9:.2f} GB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
