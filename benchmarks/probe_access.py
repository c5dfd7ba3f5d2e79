"""Access-order probe for the row sweeps' memory traffic (no convolution): copies of
64 x 144 planes of 56 x 56 float16 (6272 bytes each, mbv2_3x3's), moved in 112-byte rows
by segments of 16 lanes (14 active) as conv_rows_async moves them, against other orders
of the same pieces and CuPy's copy. Timed as the benchmark times (bench.time_events).

    python benchmarks/probe_access.py

Modes: 0 rows (8 bytes per lane, a segment sweeps one plane row by row); 1 row pairs (16
bytes per lane, 32-byte aligned); 2 the same 112-byte pieces in grid order (at step r,
stream p moves piece r * planes + p: neighbouring streams, neighbouring addresses); 3
bands of 7 rows, 8 segments per plane. Then whole planes (6272 contiguous bytes) through
shared memory by bulk copies (cp.async.bulk, one thread per warp, two planes in flight).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy  # noqa: E402

from cupy_dwconv import bench  # noqa: E402

SRC = r'''
extern "C" __global__ void rows8(const unsigned long long* __restrict__ x, unsigned long long* __restrict__ y,
                                 int streams, int mode) {
    // Persistent segments of 16 lanes (14 active); stream p: a plane (modes 0-2) or a band.
    const int planes = mode == 3 ? streams / 8 : streams;
    const int lane = threadIdx.x & 15;
    const int seg = (blockIdx.x * blockDim.x + threadIdx.x) >> 4;
    const int nseg = (gridDim.x * blockDim.x) >> 4;
    for (int p = seg; p < streams; p += nseg) {
        const long long base = (long long)p * 784;  // 6272 B / 8
        if (mode == 0) {            // 56 rows of 14 x 8 B (copy)
            if (lane < 14)
#pragma unroll 4
                for (int r = 0; r < 56; ++r) y[base + r * 14 + lane] = x[base + r * 14 + lane];
        } else if (mode == 1) {     // 28 row pairs of 14 x 16 B (copy)
            if (lane < 14)
#pragma unroll 2
                for (int r = 0; r < 28; ++r) {
                    const long long o = base + r * 28 + 2 * lane;
                    const ulonglong2 v = *reinterpret_cast<const ulonglong2*>(x + o);
                    *reinterpret_cast<ulonglong2*>(y + o) = v;
                }
        } else if (mode == 2) {     // the same 112-byte pieces in grid order: step r, stream p -> piece r * planes + p
            if (lane < 14)
#pragma unroll 4
                for (int r = 0; r < 56; ++r) {
                    const long long piece = (long long)r * planes + p;
                    y[piece * 14 + lane] = x[piece * 14 + lane];
                }
        } else if (mode == 3) {     // 8 segments per plane, 7 rows each (band b of plane q: stream 8 q + b)
            const int q = p >> 3, b = p & 7;
            if (lane < 14)
#pragma unroll 4
                for (int r = 0; r < 7; ++r) {
                    const long long o = (long long)q * 784 + (b * 7 + r) * 14 + lane;
                    y[o] = x[o];
                }
        }
    }
}

// Whole planes through shared memory by the bulk-copy (TMA) unit: lane 0 of each warp
// loads plane k + 1 while plane k is stored (two buffers per warp, one mbarrier each).
extern "C" __global__ void planes_bulk(const char* __restrict__ x, char* __restrict__ y, int planes, int bytes) {
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ __align__(8) unsigned long long bar[2 * 32];
    const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int gw = blockIdx.x * nwarps + warp, ngw = gridDim.x * nwarps;
    if ((threadIdx.x & 31) != 0) return;
    unsigned char* buf[2] = {smem + (2 * warp) * bytes, smem + (2 * warp + 1) * bytes};
    unsigned mb[2];
    for (int i = 0; i < 2; ++i) {
        mb[i] = (unsigned)__cvta_generic_to_shared(&bar[2 * warp + i]);
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(mb[i]));
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    unsigned phase[2] = {0, 0};
    auto load = [&](int p, int i) {
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(mb[i]), "r"(bytes) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     :: "r"((unsigned)__cvta_generic_to_shared(buf[i])), "l"(x + (long long)p * bytes), "r"(bytes), "r"(mb[i])
                     : "memory");
    };
    int k = 0;
    if (gw < planes) load(gw, 0);
    for (int p = gw; p < planes; p += ngw, ++k) {
        const int i = k & 1;
        if (p + ngw < planes) {
            // the other buffer's store must have read its bytes before the next load lands there
            asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
            load(p + ngw, i ^ 1);
        }
        asm volatile("{ .reg .pred d; W: mbarrier.try_wait.parity.shared::cta.b64 d, [%0], %1; @!d bra W; }"
                     :: "r"(mb[i]), "r"(phase[i]) : "memory");
        phase[i] ^= 1;
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
                     :: "l"(y + (long long)p * bytes), "r"((unsigned)__cvta_generic_to_shared(buf[i])), "r"(bytes) : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}
'''

MODES = ((0, "rows, 8 B per lane"), (1, "row pairs, 16 B per lane"), (2, "rows in grid order"), (3, "bands of 7 rows"))


def main():
    import cupy

    k = cupy.RawModule(code=SRC, options=("-std=c++17",)).get_function("rows8")
    planes = 64 * 144
    n = planes * 784  # 8-byte words
    attrs = cupy.cuda.Device().attributes
    l2, sms = attrs["L2CacheSize"], attrs["MultiProcessorCount"]
    sets = bench.rotation_sets(2 * n * 8, l2, 6 * 10**9)
    xs = [cupy.arange(n, dtype=cupy.uint64) + i for i in range(sets)]
    ys = [cupy.empty(n, dtype=cupy.uint64) for _ in range(sets)]
    for blocks_per_sm in (3, 6):
        grid = sms * blocks_per_sm
        for mode, name in MODES:
            count = numpy.int32(planes * (8 if mode == 3 else 1))

            def run(i, mode=mode, count=count):
                k((grid,), (256,), (xs[i], ys[i], count, numpy.int32(mode)))

            run(0)
            assert bool((ys[0] == xs[0]).all()), name
            ms = bench.time_events(run, sets)
            print(f"{grid:4d} blocks  {name:26s} {ms * 1e3:7.2f} us  {2 * n * 8 / ms / 1e6:7.1f} GB/s")

    kb = cupy.RawModule(code=SRC, options=("-std=c++17",)).get_function("planes_bulk")
    kb.max_dynamic_shared_size_bytes = 16 * 6272
    for warps, blocks_per_sm in ((8, 2), (4, 4)):
        grid = sms * blocks_per_sm

        def run_bulk(i, grid=grid, warps=warps):
            kb((grid,), (32 * warps,), (xs[i], ys[i], numpy.int32(planes), numpy.int32(6272)),
               shared_mem=2 * warps * 6272)

        ys[0].fill(0)
        run_bulk(0)
        assert bool((ys[0] == xs[0]).all()), "bulk"
        ms = bench.time_events(run_bulk, sets)
        print(f"{grid:4d} blocks  {'whole planes, bulk copies':26s} {ms * 1e3:7.2f} us  {2 * n * 8 / ms / 1e6:7.1f} GB/s"
              f"  ({warps} warps per block, 2 planes in flight per warp)")

    def copy(i):
        ys[i][...] = xs[i]

    ms = bench.time_events(copy, sets)
    print(f"CuPy copy                              {ms * 1e3:7.2f} us  {2 * n * 8 / ms / 1e6:7.1f} GB/s")


if __name__ == "__main__":
    main()
