// Deterministic block-wide sums, shared by the kernels that write weight-gradient
// partials (wgrad.cu, bwd.cu).
#pragma once
#include "common.cuh"

namespace dw {

// Deterministic block-wide sum of NV per-thread values: a fixed butterfly inside each warp,
// then warps added in index order by thread k for value k. `red` holds nwarps * NV values.
// Must be called by every thread of the block.
template <class A, int NV>
__device__ __forceinline__ void block_sum_to(A (&v)[NV], A* red, A* out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
    }
    __syncthreads();  // red may still be read by the previous call's finishing threads
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < NV; ++k) red[warp * NV + k] = v[k];
    }
    __syncthreads();
    for (int k = threadIdx.x; k < NV; k += blockDim.x) {
        A s = A(0);
        for (int i = 0; i < nwarps; ++i) s += red[i * NV + k];
        out[k] = s;
    }
}

// grad_weight and grad_bias of the np consecutive channels o0, o0 + 1, ... from their
// n_chunks partial rows each (KK tap sums and the bias sum), added in chunk order as
// wgrad_reduce does; either output may be null. The caller has made every row visible
// (a fence after the count that says they are all written). Must be called by every
// thread of the block.
template <class T, class A>
__device__ __forceinline__ void add_chunk_rows(const A* partial, i64 o0, int np, int n_chunks, int KK, T* gw, T* gb) {
    // E sums of U rows each in flight before their adds (in chunk order, as wgrad_reduce):
    // the reads are L2 round trips (other SMs wrote the rows), one per E sums and U chunks
    // (bwd_plane's groups of 16 channels: 800 sums on 128 threads).
    constexpr int E = 4, U = 8;
    const int total = np * (KK + 1);
    for (int e0 = threadIdx.x; e0 < total; e0 += E * blockDim.x) {
        const A* col[E];
        A s[E];
#pragma unroll
        for (int j = 0; j < E; ++j) {
            const int e = min(e0 + j * (int)blockDim.x, total - 1);
            const int p = e / (KK + 1), k = e - p * (KK + 1);
            col[j] = partial + (o0 + p) * n_chunks * (KK + 1) + k;
            s[j] = A(0);
        }
        for (int c0 = 0; c0 < n_chunks; c0 += U) {
            A v[E][U];
#pragma unroll
            for (int j = 0; j < E; ++j)
#pragma unroll
                for (int u = 0; u < U; ++u)
                    v[j][u] = c0 + u < n_chunks ? __ldcg(col[j] + (i64)(c0 + u) * (KK + 1)) : A(0);
#pragma unroll
            for (int j = 0; j < E; ++j)
#pragma unroll
                for (int u = 0; u < U; ++u)
                    if (c0 + u < n_chunks) s[j] += v[j][u];
        }
        // One store site for grad_weight and one for grad_bias (the sum picked by selects,
        // not an unrolled copy per j: 19 scalar stores in bwd_rows, which test_compile
        // bounds so that a vector store split in its row loops cannot hide among them).
#pragma unroll 1
        for (int j = 0; j < E; ++j) {
            const int e = e0 + j * (int)blockDim.x;
            if (e >= total) break;
            A v = s[0];
#pragma unroll
            for (int i = 1; i < E; ++i)
                if (i == j) v = s[i];
            const int p = e / (KK + 1), k = e - p * (KK + 1);
            const i64 o = o0 + p;
            if (k < KK) {
                if (gw != nullptr) store1(gw + o * KK + k, v);
            } else if (gb != nullptr) {
                store1(gb + o, v);
            }
        }
    }
}

// The closing step of a fused backward block, after it has written its partial rows for
// the np consecutive channels o0, o0 + 1, ...: the block counts itself in *counter (one
// counter per group of channels that the same blocks share), and the block that arrives
// last (every chunk's rows of the group are then written) adds the n_chunks rows of each
// channel in chunk order, exactly as wgrad_reduce does (the same order whichever block is
// last: deterministic, and bitwise equal to the two-kernel path), writes grad_weight and
// grad_bias (either may be null), and resets the counter to zero for the next launch on
// the stream. This saves the dependent second launch: ~3.5 us per backward
// (inception_1x7 float32: 18.1 us with wgrad_reduce, 14.5 for the fused kernel alone).
// Must be called by every thread of the block.
template <class T, class A>
__device__ __forceinline__ void finish_channels(const A* partial, i64 o0, int np, int n_chunks, int KK,
                                                unsigned* counter, T* gw, T* gb) {
    __shared__ unsigned last_block;
    __threadfence();  // this block's partial rows are visible device-wide ...
    __syncthreads();  // ... for every thread that wrote part of them, before it is counted
    if (threadIdx.x == 0) last_block = atomicAdd(counter, 1u) == (unsigned)(n_chunks - 1);
    __syncthreads();
    if (!last_block) return;
    __threadfence();  // the rows counted before this block's atomic are visible to it
    add_chunk_rows<T, A>(partial, o0, np, n_chunks, KK, gw, gb);
    if (threadIdx.x == 0) *counter = 0u;
}

// finish_channels for a block that owns one channel o (bwd_tile, bwd_rows: counter o).
template <class T, class A>
__device__ __forceinline__ void finish_channel(const A* partial, i64 o, int n_chunks, int KK, unsigned* counters,
                                               T* gw, T* gb) {
    finish_channels<T, A>(partial, o, 1, n_chunks, KK, counters + o, gw, gb);
}

}  // namespace dw
