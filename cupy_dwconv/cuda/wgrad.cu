// Weight and bias gradients of the depthwise convolution, deterministic.
//
//   dW[o, kh, kw] = sum_{n, oh, ow} go[n, o, oh, ow] * x[n, o / M, oh*SH - PT + kh*DH, ow*SW - PL + kw*DW]
//   db[o]         = sum_{n, oh, ow} go[n, o, oh, ow]
//
// Stage 1 (wgrad_tile / wgrad_generic) gives every (channel, chunk) block a fixed range of
// work and a fixed reduction tree, and writes one partial row per block:
// partial[o][chunk][0 .. KH*KW] (the last entry is the bias). Stage 2 (wgrad_reduce) sums
// the chunks of each channel in order. No float atomics anywhere, so two runs on the same
// inputs give bitwise-identical results; partials are float32 (float64 for float64 data).
//
// Bytes: stage 1 reads x and grad_output once from DRAM (halo re-reads hit L1/L2);
// the partials are C*M*chunks*(KH*KW+1) accumulators, negligible.
#include "tile.cuh"

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

// wgrad_tile: KH*KW <= 64. Grid (chunks, channels); each thread walks TH x TW tiles of
// grad_output of one channel (n, row tile, column tile; column tile fastest), keeps all
// KH*KW tap sums and the bias sum in registers, and reads the x window of each tile row
// by row (row-outer, as conv_tile).
template <class T, int KH, int KW, int SH, int SW, int DH, int DW, int TH, int TW, bool VIN, int SHIFT, bool VGO, int MINB>
__global__ void __launch_bounds__(256, MINB)
wgrad_tile(const T* __restrict__ x, const T* __restrict__ go, typename Traits<T>::acc* __restrict__ partial,
           const WgradArgs a) {
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, pad_t = a.pad_t, pad_l = a.pad_l;
    const int n_cg = a.n_cg, n_rt = a.n_rt, N = a.N, C = a.C, M = a.M, CM = a.CM, n_chunks = a.n_chunks;
    typedef typename Traits<T>::acc A;
    constexpr int V = Traits<T>::VEC;
    typedef Axis<0, KH, SH, DH, TH, 0> AH;
    typedef Axis<0, KW, SW, DW, TW, 0> AW;
    constexpr int KK = KH * KW;
    constexpr int SOFF = VIN ? SHIFT : 0;
    constexpr int NB = VIN ? round_up(SOFF + AW::SPAN, V) : AW::SPAN;
    static_assert(KK <= 64 && TH * TW <= 64 && NB <= 96, "register budget");
    static_assert(!VIN || ((TW * SW) % V == 0 && SHIFT < V), "vector loads need tile columns on a vector boundary");
    static_assert(!VGO || TW % V == 0, "vector grad_output loads need whole vectors per tile row");
    __shared__ A red[(256 / 32) * (KK + 1)];

    const i64 units = (i64)N * n_rt * n_cg;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    for (int o = blockIdx.y; o < CM; o += gridDim.y) {
        A acc[KK + 1];
#pragma unroll
        for (int k = 0; k <= KK; ++k) acc[k] = A(0);
        const i64 begin = units * blockIdx.x / n_chunks, end = units * (blockIdx.x + 1) / n_chunks;
        for (i64 u = begin + threadIdx.x; u < end; u += blockDim.x) {
            i64 n;
            int rt, cg;
            split_unit(u, units, n_cg, n_rt, n, rt, cg);
            const T* xp = x + (n * C + o / M) * plane_in;
            const T* gp = go + (n * CM + o) * plane_out;
            const int oh0 = rt * TH, ow0 = cg * TW;
            // grad_output tile, zero past the plane's edge (those positions contribute nothing).
            A g[TH][TW];
#pragma unroll
            for (int t = 0; t < TH; ++t) {
                const int oh = oh0 + t;
                const bool ok = oh < OH;
                const T* rp = gp + (i64)(ok ? oh : 0) * OW + ow0;
                if constexpr (VGO) {
#pragma unroll
                    for (int k = 0; k < TW / V; ++k) {
                        if (ok && ow0 + k * V < OW) {
                            load_vec(rp + k * V, &g[t][k * V]);
                        } else {
#pragma unroll
                            for (int e = 0; e < V; ++e) g[t][k * V + e] = A(0);
                        }
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < TW; ++j) g[t][j] = (ok && ow0 + j < OW) ? load1(rp + j) : A(0);
                }
#pragma unroll
                for (int j = 0; j < TW; ++j) acc[KK] += g[t][j];
            }
            const int r0 = oh0 * SH - pad_t;
            const int c0 = ow0 * SW - pad_l - SOFF;
#pragma unroll
            for (int r = 0; r < AH::SPAN; ++r) {
                A buf[NB];
                load_row<T, VIN, NB, AW::SPAN>(xp, r0 + r, c0, IH, IW, buf);
#pragma unroll
                for (int t = 0; t < TH; ++t)
#pragma unroll
                    for (int kh = 0; kh < KH; ++kh) {
                        if (AH::at(t, kh) != r) continue;
#pragma unroll
                        for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                            for (int j = 0; j < TW; ++j)
                                acc[kh * KW + kw] = fma(g[t][j], buf[SOFF + AW::at(j, kw)], acc[kh * KW + kw]);
                    }
            }
        }
        block_sum_to<A, KK + 1>(acc, red, partial + ((i64)o * n_chunks + blockIdx.x) * (KK + 1));
    }
}

// wgrad_generic: any geometry. Grid (chunks, channels); each thread owns one tap
// (kh, kw) plus, for the last tap index, the bias, and sums over its chunk of (n, oh, ow)
// in a fixed order. Slow for large problems, always correct.
template <class T>
__global__ void __launch_bounds__(256)
wgrad_generic(const T* __restrict__ x, const T* __restrict__ go, typename Traits<T>::acc* __restrict__ partial,
              const WgradArgs a) {
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, KH = a.KH, KW = a.KW, SH = a.SH, SW = a.SW;
    const int DH = a.DH, DW = a.DW, pad_t = a.pad_t, pad_l = a.pad_l;
    const int N = a.N, C = a.C, M = a.M, CM = a.CM, n_chunks = a.n_chunks;
    typedef typename Traits<T>::acc A;
    const int KK = KH * KW;
    const i64 per_ch = (i64)N * OH * OW;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    for (int o = blockIdx.y; o < CM; o += gridDim.y) {
        const i64 begin = per_ch * blockIdx.x / n_chunks, end = per_ch * (blockIdx.x + 1) / n_chunks;
        for (int k = threadIdx.x; k <= KK; k += blockDim.x) {
            const int kh = k / KW, kw = k - (k / KW) * KW;
            A s = A(0);
            for (i64 e = begin; e < end; ++e) {
                const i64 n = e / plane_out;
                const i64 rem = e - n * plane_out;
                const int oh = (int)(rem / OW), ow = (int)(rem - (i64)(rem / OW) * OW);
                const A gv = load1(go + (n * CM + o) * plane_out + rem);
                if (k == KK) {
                    s += gv;
                    continue;
                }
                const int ih = oh * SH - pad_t + kh * DH, iw = ow * SW - pad_l + kw * DW;
                if ((unsigned)ih < (unsigned)IH && (unsigned)iw < (unsigned)IW)
                    s = fma(gv, load1(x + (n * C + o / M) * plane_in + (i64)ih * IW + iw), s);
            }
            partial[((i64)o * n_chunks + blockIdx.x) * (KK + 1) + k] = s;
        }
    }
}

// wgrad_reduce: stage 2. One thread per (channel, tap or bias), chunks summed in order.
template <class T>
__global__ void __launch_bounds__(256)
wgrad_reduce(const typename Traits<T>::acc* __restrict__ partial, T* __restrict__ gw, T* __restrict__ gb,
             const ReduceArgs a) {
    const int CM = a.CM, KK = a.KK, n_chunks = a.n_chunks;
    typedef typename Traits<T>::acc A;
    const i64 total = (i64)CM * (KK + 1);
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const i64 o = idx / (KK + 1);
        const int k = (int)(idx - o * (KK + 1));
        const A* p = partial + o * n_chunks * (KK + 1) + k;
        A s = A(0);
        for (int c = 0; c < n_chunks; ++c) s += p[(i64)c * (KK + 1)];
        if (k < KK) {
            if (gw != nullptr) store1(gw + o * KK + k, s);
        } else if (gb != nullptr) {
            store1(gb + o, s);
        }
    }
}

}  // namespace dw
