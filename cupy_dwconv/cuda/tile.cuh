// Register-tile helpers shared by the forward / grad-input tile kernel (conv.cu) and the
// weight-gradient tile kernel (wgrad.cu).
#pragma once
#include "common.cuh"

namespace dw {

// Geometry of one axis of a register tile: which input index (relative to the first one
// the tile reads) output t reads through tap k.
//   MODE 0, forward:    in = out * S - pad + k * D.
//   MODE 1, grad input: gx[i] gathers go[o] for every k with i = o * S - pad + k * D, i.e.
//                       o = (i + pad - k * D) / S when that divides exactly. The tile origin
//                       is a multiple of S and PR = pad % S is a template argument, so the
//                       divisibility of every (t, k) pair is decided at compile time: this is
//                       the stride-phase decomposition, with no `% stride` test at run time.
template <int MODE, int K, int S, int D, int T, int PR>
struct Axis {
    static constexpr int LO = MODE == 0 ? 0 : floor_div(PR - (K - 1) * D, S);
    static constexpr int HI = MODE == 0 ? (T - 1) * S + (K - 1) * D : floor_div(T - 1 + PR, S);
    static constexpr int SPAN = HI - LO + 1;         // input indices read by one tile
    static constexpr int STEP = MODE == 0 ? T * S : T / S;  // input advance per tile
    __host__ __device__ static constexpr int at(int t, int k) {
        return MODE == 0 ? t * S + k * D
                         : ((t + PR - k * D) % S != 0 ? -1 : (t + PR - k * D) / S - LO);
    }
};

// One input row of a tile into registers, zero outside the plane (this is the padding).
// L: elements per load (1: scalar; 2, 4, 8: vectors of 4, 8 or 16 bytes). The host picks
// the widest L that divides IW and the plane base's alignment, so an aligned vector lies
// wholly inside or wholly outside the row and one bounds test per vector suffices.
template <class T, int L, int NB, int RW>
__device__ __forceinline__ void load_row(const T* __restrict__ plane, int ih, int c0, int IH, int IW,
                                         typename Traits<T>::acc (&buf)[NB]) {
    typedef typename Traits<T>::acc A;
    const bool row_ok = (unsigned)ih < (unsigned)IH;
    // 64-bit row offset: a plane can hold more than 2^31 elements.
    const T* rp = plane + (i64)(row_ok ? ih : 0) * IW;
    if constexpr (L > 1) {
        static_assert(NB % L == 0, "whole vectors");
#pragma unroll
        for (int k = 0; k < NB / L; ++k) {
            const int c = c0 + k * L;
            if (row_ok && c >= 0 && c + L <= IW) {
                load_n<L>(rp + c, &buf[k * L]);
            } else {
#pragma unroll
                for (int e = 0; e < L; ++e) buf[k * L + e] = A(0);
            }
        }
    } else {
#pragma unroll
        for (int e = 0; e < RW; ++e) {
            const int c = c0 + e;
            buf[e] = (row_ok && (unsigned)c < (unsigned)IW) ? load1(rp + c) : A(0);
        }
    }
}

// Asks L2 to fetch rows [ih, ih + ROWS) of a tile's window ahead of their loads (no
// registers, no wait): the tile kernels are latency-bound on the DRAM round trip of each
// tile's first touch (ncu, seed_3x7 16-bit: 3 of 7.9 cycles between issues waiting on
// L1TEX), and an L2 hit shortens it. One address per row: the 32-byte sector where this
// thread's columns start, clamped into the plane so no address lies outside it.
template <int ROWS, class T>
__device__ __forceinline__ void prefetch_rows(const T* plane, int ih, int c0, int IH, int IW) {
    const int c = min(max(c0, 0), IW - 1);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if ((unsigned)(ih + r) < (unsigned)IH) prefetch_l2(plane + (i64)(ih + r) * IW + c);
    }
}

// Calls f(t, kh, kw, j, ci) for every (output row t, tap kh, kw, output column j) of a
// TH x TW tile whose input row is window row r; ci is the input column in the window.
// Every index is a compile-time constant after unrolling, so the calls fold into a
// straight run of FMAs; pairs that read another row, or (MODE 1) another stride phase,
// vanish at compile time. Shared by the forward / grad-input tile and the grad-weight
// tile, which differ only in what they multiply.
template <class AH, class AW, int TH, int TW, int KH, int KW, class F>
__device__ __forceinline__ void for_each_tap_in_row(int r, F&& f) {
#pragma unroll
    for (int t = 0; t < TH; ++t)
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            if (AH::at(t, kh) != r) continue;
#pragma unroll
            for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                for (int j = 0; j < TW; ++j) {
                    const int ci = AW::at(j, kw);
                    if (ci >= 0) f(t, kh, kw, j, ci);
                }
        }
}

}  // namespace dw
