// The whole backward pass in one kernel: grad input, and the weight and bias partials,
// for stride 1 and channel multiplier 1.
//
//   gx[i, j]     = sum_{kh, kw} go[i + PT - kh*DH, j + PL - kw*DW] * w[kh, kw]
//   dW[kh, kw]  += x[i, j] * go[i + PT - kh*DH, j + PL - kw*DW]      (summed over i, j, n)
//   db          += go[oh, ow]                                         (summed over oh, ow, n)
//
// Why one kernel: the gather that makes gx[i, j] reads every grad_output element that
// meets x[i, j] through a tap, and the same element through the same tap is what dW
// needs. A thread that holds the grad_output window of its TH x TW tile of grad_x (for the
// gather) and the x values of that same tile has every (x, grad_output) pair of its
// tile: one more FMA per pair gives the weight gradient. So grad_output is read once
// instead of twice (once by the grad-input kernel, once by the grad-weight kernel).
//
// Bytes per grad_x element: one x read, one grad_output read (window halos re-read from
// L1/L2), one grad_x write: the floor of the three gradients together. The partials
// (C x chunks x (KH*KW+1) accumulators) are negligible.
//
// Grid (chunks, channels), as wgrad_tile: a block owns one channel (its weights stay in
// registers for the whole block) and a fixed range of (n, row tile, column tile) units,
// column tile fastest so that neighbouring threads read neighbouring columns. Each thread
// keeps the KH*KW tap sums and the bias sum in registers across its units; one
// fixed-order block sum writes the block's partial row. With `counters` the last block of
// each channel adds the chunks' rows in order and writes grad_weight and grad_bias
// (finish_channel, blocksum.cuh); without, wgrad_reduce does. No float atomics: two runs
// give bitwise-identical gradients.
#include "tile.cuh"
#include "blocksum.cuh"

namespace dw {

// Template arguments: T storage type; KH KW DH DW kernel geometry; PT PL top and left
// padding (compile-time so that the bias positions below fold into the unrolled loops);
// TH TW tile of grad_x; VX elements per x load; VGO elements per grad_output load and
// SHIFT = (first window column) mod VGO; VOUT 16-byte grad_x stores; MINB blocks of 256
// threads per SM the registers must allow; PF: ask L2 for the next unit's rows (0: off).
//
// Bias: each thread sums the grad_output positions with its own tile's coordinates,
// [i0, i0 + TH) x [j0, j0 + TW): tiles partition the x plane, and the host checks that they
// also cover the grad_output plane (OH <= n_rt*TH, OW <= n_cg*TW). Those positions lie in
// the window (rows BR .. BR+TH-1, columns BC .. BC+TW-1) when PT <= (KH-1)*DH and
// PL <= (KW-1)*DW; positions past the plane's edge were loaded as zeros.
template <class T, int KH, int KW, int DH, int DW, int PT, int PL, int TH, int TW, int VX, int VGO, int SHIFT,
          bool VOUT, int MINB, int PF>
__global__ void __launch_bounds__(256, MINB)
bwd_tile(const T* __restrict__ x, const T* __restrict__ go, const T* __restrict__ w, T* __restrict__ gx,
         typename Traits<T>::acc* __restrict__ partial, unsigned* __restrict__ counters, T* __restrict__ gw,
         T* __restrict__ gb, const WgradArgs a) {
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW;
    const int n_cg = a.n_cg, n_rt = a.n_rt, N = a.N, C = a.C, n_chunks = a.n_chunks;
    typedef typename Traits<T>::acc A;
    constexpr int V = Traits<T>::VEC;
    typedef Axis<1, KH, 1, DH, TH, 0> AH;  // grad-input geometry at stride 1 (no stride phases)
    typedef Axis<1, KW, 1, DW, TW, 0> AW;
    constexpr int KK = KH * KW;
    constexpr int SOFF = VGO > 1 ? SHIFT : 0;
    constexpr int NB = round_up(SOFF + AW::SPAN, VGO);
    constexpr int BR = (KH - 1) * DH - PT, BC = (KW - 1) * DW - PL;  // the tile's own positions in the window
    static_assert(BR >= 0 && BC >= 0, "the bias positions must lie in the grad_output window");
    static_assert(KK <= 64 && TH * TW <= 64 && NB <= 96, "register budget");
    static_assert(VX >= 1 && V % VX == 0 && TW % VX == 0, "x loads: whole vectors per tile row");
    static_assert(VGO >= 1 && V % VGO == 0 && (VGO == 1 || SHIFT < VGO), "grad_output loads: a power-of-two part of 16 bytes");
    static_assert(!VOUT || TW % V == 0, "vector stores need whole vectors per tile row");
    __shared__ A red[(256 / 32) * (KK + 1)];

    const i64 units = (i64)N * n_rt * n_cg;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    for (int o = blockIdx.y; o < C; o += gridDim.y) {
        A wr[KK];
#pragma unroll
        for (int k = 0; k < KK; ++k) wr[k] = load1(w + (i64)o * KK + k);
        A dw[KK + 1];
#pragma unroll
        for (int k = 0; k <= KK; ++k) dw[k] = A(0);
        const i64 begin = units * blockIdx.x / n_chunks, end = units * (blockIdx.x + 1) / n_chunks;
        i64 n = 0;
        int rt = 0, cg = 0;
        if (PF > 0 && begin + threadIdx.x < end) split_unit(begin + threadIdx.x, units, n_cg, n_rt, n, rt, cg);
        for (i64 u = begin + threadIdx.x; u < end; u += blockDim.x) {
            i64 n_next = 0;
            int rt_next = 0, cg_next = 0;
            if constexpr (PF > 0) {
                if (u + blockDim.x < end) {
                    split_unit(u + blockDim.x, units, n_cg, n_rt, n_next, rt_next, cg_next);
                    const i64 qn = n_next * C + o;
                    prefetch_rows<AH::SPAN>(go + qn * plane_out, rt_next * TH + PT + AH::LO,
                                            cg_next * TW + PL + AW::LO, OH, OW);
                    prefetch_rows<TH>(x + qn * plane_in, rt_next * TH, cg_next * TW, IH, IW);
                }
            } else {
                split_unit(u, units, n_cg, n_rt, n, rt, cg);
            }
            // 64-bit plane offsets: N*C planes can hold more than 2^31 elements.
            const i64 q = n * C + o;
            const T* xp = x + q * plane_in;
            const T* gp = go + q * plane_out;
            const int i0 = rt * TH, j0 = cg * TW;
            // The tile's own x values (zero past the plane's edge: they pair with nothing).
            A xt[TH][TW];
#pragma unroll
            for (int t = 0; t < TH; ++t) load_row<T, VX, TW, TW>(xp, i0 + t, j0, IH, IW, xt[t]);
            A acc[TH][TW];
#pragma unroll
            for (int t = 0; t < TH; ++t)
#pragma unroll
                for (int j = 0; j < TW; ++j) acc[t][j] = A(0);
            // Window row r is grad_output row i0 + PT + AH::LO + r; column SOFF + ci of buf is
            // grad_output column j0 + PL + AW::LO + ci (zero outside the plane: that is the
            // padding).
            const int r0 = i0 + PT + AH::LO;
            const int c0 = j0 + PL + AW::LO - SOFF;
#pragma unroll
            for (int r = 0; r < AH::SPAN; ++r) {
                A buf[NB];
                load_row<T, VGO, NB, AW::SPAN>(gp, r0 + r, c0, OH, OW, buf);
                if (r >= BR && r < BR + TH) {
#pragma unroll
                    for (int j = 0; j < TW; ++j) dw[KK] += buf[SOFF + BC + j];
                }
                for_each_tap_in_row<AH, AW, TH, TW, KH, KW>(r, [&](int t, int kh, int kw, int j, int ci) {
                    const A g = buf[SOFF + ci];
                    acc[t][j] = fma(g, wr[kh * KW + kw], acc[t][j]);
                    dw[kh * KW + kw] = fma(g, xt[t][j], dw[kh * KW + kw]);
                });
            }
            T* yp = gx + q * plane_in + j0;
#pragma unroll
            for (int t = 0; t < TH; ++t) {
                const int i = i0 + t;
                if (i >= IH) break;
                T* rp = yp + (i64)i * IW;
                if constexpr (VOUT) {
                    // IW is a multiple of V: a vector is wholly inside or outside the row.
#pragma unroll
                    for (int k = 0; k < TW / V; ++k)
                        if (j0 + k * V < IW) store_vec(rp + k * V, &acc[t][k * V]);
                } else {
                    store_row<T, TW>(rp, acc[t], IW - j0);
                }
            }
            if constexpr (PF > 0) {
                n = n_next;
                rt = rt_next;
                cg = cg_next;
            }
        }
        block_sum_to<A, KK + 1>(dw, red, partial + ((i64)o * n_chunks + blockIdx.x) * (KK + 1));
        if (counters != nullptr) finish_channel<T, A>(partial, o, n_chunks, KK, counters, gw, gb);
    }
}

}  // namespace dw
