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

}  // namespace dw
