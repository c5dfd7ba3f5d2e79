// conv_rows: stride-1 depthwise correlation that sweeps each output plane row by row.
//
// Why a second small-kernel path: a register tile (conv_tile) reads the (TH + KH - 1)
// input rows of its window for every TH output rows, plus its halo columns, so on
// memory-bound shapes the load instructions, not DRAM, set its pace (16-bit 3x3 and 3x7
// ran at 50-70 % of the copy bandwidth). Here a segment of S lanes owns a band of output
// rows and S * V consecutive columns of one plane. Each lane owns V columns: it loads
// every input row of the band once (one access of up to 16 bytes, coalesced across the
// segment), gets its halo columns from its neighbours by warp shuffles, and scatters the
// row into the Q = (KH - 1) * DH + 1 output rows that row feeds. Those rows live in
// registers as a ring of Q x V sums; when a row has received its last tap row it is
// stored and its slot starts the next row. Bytes per output: one input element read and
// one output element written, plus (Q - 1) / RB re-read rows per band of RB rows (mostly
// L2 hits: neighbouring bands run side by side).
//
// Instructions per output row of V outputs: KH * KW * V FMAs, one load, one shuffle and
// one select per halo column, V conversions, one store.
#include "common.cuh"

namespace dw {

// Raw storage of loaded elements until they are used: a load's registers are written
// when the data arrives, so converting at load time would wait for it and undo the
// prefetch. 16-bit values loaded in pairs or wider stay packed two per 32-bit word.
template <class T> struct Raw { typedef T word; static constexpr int PACK = 1; };
template <> struct Raw<half_t> { typedef unsigned word; static constexpr int PACK = 2; };
template <> struct Raw<bf16_t> { typedef unsigned word; static constexpr int PACK = 2; };

template <class T, int EPW> struct RawCvt;
template <int EPW> struct RawCvt<float, EPW> {
    __device__ __forceinline__ static float get(const float* r, int e) { return r[e]; }
};
template <int EPW> struct RawCvt<double, EPW> {
    __device__ __forceinline__ static double get(const double* r, int e) { return r[e]; }
};
template <> struct RawCvt<half_t, 1> {
    __device__ __forceinline__ static float get(const unsigned* r, int e) { return h2f((unsigned short)r[e]); }
};
template <> struct RawCvt<half_t, 2> {
    __device__ __forceinline__ static float get(const unsigned* r, int e) {
        return h2f((unsigned short)((e & 1) ? (r[e >> 1] >> 16) : (r[e >> 1] & 0xffffu)));
    }
};
template <> struct RawCvt<bf16_t, 1> {
    __device__ __forceinline__ static float get(const unsigned* r, int e) { return __uint_as_float(r[e] << 16); }
};
template <> struct RawCvt<bf16_t, 2> {
    __device__ __forceinline__ static float get(const unsigned* r, int e) {
        return __uint_as_float((e & 1) ? (r[e >> 1] & 0xffff0000u) : (r[e >> 1] << 16));
    }
};

// One load of L consecutive elements into raw words (L * sizeof(T) is 2, 4, 8 or 16
// bytes and the caller guarantees that alignment).
template <class T, int L> struct RawLoad {
    __device__ __forceinline__ static void run(const T* p, typename Raw<T>::word* d) { load_n<L>(p, d); }
};
#define DW_RAW16(TT)                                                                                  \
    template <> struct RawLoad<TT, 1> {                                                               \
        __device__ __forceinline__ static void run(const TT* p, unsigned* d) {                        \
            d[0] = __ldg(reinterpret_cast<const unsigned short*>(p));                                 \
        }                                                                                             \
    };                                                                                                \
    template <> struct RawLoad<TT, 2> {                                                               \
        __device__ __forceinline__ static void run(const TT* p, unsigned* d) {                        \
            d[0] = __ldg(reinterpret_cast<const unsigned*>(p));                                       \
        }                                                                                             \
    };                                                                                                \
    template <> struct RawLoad<TT, 4> {                                                               \
        __device__ __forceinline__ static void run(const TT* p, unsigned* d) {                        \
            const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));                                 \
            d[0] = v.x; d[1] = v.y;                                                                   \
        }                                                                                             \
    };                                                                                                \
    template <> struct RawLoad<TT, 8> {                                                               \
        __device__ __forceinline__ static void run(const TT* p, unsigned* d) {                        \
            const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));                                 \
            d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;                                           \
        }                                                                                             \
    };
DW_RAW16(half_t)
DW_RAW16(bf16_t)
#undef DW_RAW16

// VS consecutive results stored with one access (VS * sizeof(T) is 16, 8 or 4 bytes and
// aligned, or VS == 1).
template <class T, int VS, class A>
__device__ __forceinline__ void store_n(T* p, const A* v) {
    constexpr int B = VS * (int)sizeof(T);
    if constexpr (VS == 1) store1(p, v[0]);
    else if constexpr (B == 16) store_vec(p, v);
    else if constexpr (B == 8) store_8b(p, v);
    else { static_assert(B == 4, "store width"); store_4b(p, v); }
}

// Template arguments: T storage type; V columns per lane (outputs per row); VL elements
// per input load (V % VL == 0; the host makes IW a multiple of VL and the plane
// pointers VL-aligned, so a load is wholly inside or outside the row); VS elements per
// store (same rule for OW); KH KW DH DW kernel geometry (stride 1); PL left padding
// (negative: the rotated grad-input problem crops); S lanes per segment (a power of two
// up to 32); PF input rows loaded ahead of the one being used; FLIP reads the kernel
// rotated by 180 degrees (grad input); MINB blocks of 256 threads per SM.
template <class T, int V, int VL, int VS, int KH, int KW, int DH, int DW, int PL, int S, int PF, bool FLIP,
          int MINB>
__global__ void __launch_bounds__(256, MINB)
conv_rows(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
          const RowsArgs a) {
    typedef typename Traits<T>::acc A;
    typedef typename Raw<T>::word W;
    constexpr int Q = (KH - 1) * DH + 1;  // output rows one input row feeds: the ring
    constexpr int U = Q * ((PF + Q) / Q);  // unroll: a multiple of Q above PF, so every
                                           // ring slot and buffer index is a constant
    // Input columns a lane needs, relative to its first column: [JLO, JHI).
    constexpr int JLO = -PL < 0 ? -PL : 0;
    constexpr int JHI = V - PL + (KW - 1) * DW > V ? V - PL + (KW - 1) * DW : V;
    constexpr int NH = JHI - JLO - V;  // halo columns (shuffled, or loaded at segment edges)
    constexpr int EPW = (Raw<T>::PACK == 2 && VL >= 2) ? 2 : 1;
    constexpr int NWM = V / EPW;       // raw words of the lane's own columns
    constexpr int SEGS = 256 / S;
    static_assert(S >= 1 && S <= 32 && (S & (S - 1)) == 0, "a segment is a power-of-two part of a warp");
    static_assert(V % VL == 0 && V % VS == 0, "loads and stores split the lane's columns evenly");
    static_assert(KH * KW <= 64 && Q * V <= 64 && NH <= 32, "register budget");

    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, RB = a.RB;
    const int lane = threadIdx.x & (S - 1);
    const int total = RB + Q - 1;  // input rows of one band
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const i64 seg_step = (i64)gridDim.x * SEGS;
    // The unit loop is uniform across the warp (its first segment decides), because the
    // shuffles need every lane of the warp; segments past the last unit run with every
    // load and store switched off.
    const i64 warp_seg0 = (i64)blockIdx.x * SEGS + (threadIdx.x & ~31) / S;
    for (i64 g0 = warp_seg0; g0 < a.n_units; g0 += seg_step) {
        const i64 g = g0 + (threadIdx.x & 31) / S;
        const bool unit_ok = g < a.n_units;
        i64 q = 0;
        int band = 0, cs = 0;
        if (unit_ok) split_unit(g, a.n_units, a.n_cs, a.n_bands, q, band, cs);
        const PlaneMap pm = map_plane(q, a.QC, a.IC, a.DIV, 1);
        const int o0 = (cs * S + lane) * V;  // the lane's first column (input and output)
        const int oh0 = band * RB;
        const int ih0 = oh0 - a.PT;
        const T* xp = x + pm.in_plane0 * plane_in;
        T* yp = y + q * plane_out;

        A wr[KH * KW];
        {
            const T* wp = w + pm.w_row0 * (KH * KW);
#pragma unroll
            for (int i = 0; i < KH * KW; ++i) wr[i] = load1(wp + (FLIP ? KH * KW - 1 - i : i));
        }
        const A b0 = bias != nullptr ? load1(bias + pm.ch) : A(0);
        A acc[Q][V];
#pragma unroll
        for (int s = 0; s < Q; ++s)
#pragma unroll
            for (int v = 0; v < V; ++v) acc[s][v] = b0;

        W buf[U][NWM];
        W hb[U][NH > 0 ? NH : 1];
        // Input row i of the band into slot k: the lane's V columns, and the halo columns
        // that no lane of the segment holds (left of lane 0, right of lane S - 1), which
        // those edge lanes load themselves. Rows and columns outside the plane read as 0.
        auto load_row = [&](int i, W (&rb)[NWM], W (&hh)[NH > 0 ? NH : 1]) {
            const int ih = ih0 + i;
            const bool row_ok = unit_ok && i < total && (unsigned)ih < (unsigned)IH;
            const T* rp = xp + (i64)ih * IW + o0;
#pragma unroll
            for (int k = 0; k < V / VL; ++k) {
                if (row_ok && o0 + k * VL < IW) {
                    RawLoad<T, VL>::run(rp + k * VL, &rb[k * VL / EPW]);
                } else {
#pragma unroll
                    for (int e = 0; e < VL / EPW; ++e) rb[k * VL / EPW + e] = W(0);
                }
            }
#pragma unroll
            for (int h = 0; h < NH; ++h) {
                const int j = h < -JLO ? JLO + h : V + (h + JLO);  // left halo first
                const int d = j < 0 ? -((-j + V - 1) / V) : j / V;  // source lane offset
                const bool edge = d < 0 ? lane < -d : lane >= S - d;
                hh[h] = W(0);
                if (row_ok && edge && (unsigned)(o0 + j) < (unsigned)IW) RawLoad<T, 1>::run(rp + j, &hh[h]);
            }
        };

#pragma unroll
        for (int k = 0; k < PF; ++k) load_row(k, buf[k], hb[k]);
        for (int i0 = 0; i0 < total; i0 += U) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int i = i0 + u;
                // Ask for row i + PF before using row i, so PF rows are in flight.
                load_row(i + PF, buf[(u + PF) % U], hb[(u + PF) % U]);
                if (i >= total) break;  // uniform across the warp (RB is one value)
                A xs[JHI - JLO];
#pragma unroll
                for (int v = 0; v < V; ++v) xs[v - JLO] = RawCvt<T, EPW>::get(buf[u], v);
#pragma unroll
                for (int h = 0; h < NH; ++h) {
                    const int j = h < -JLO ? JLO + h : V + (h + JLO);
                    const int d = j < 0 ? -((-j + V - 1) / V) : j / V;
                    const int e = j - d * V;
                    const A from = d < 0 ? __shfl_up_sync(0xffffffffu, xs[e - JLO], -d, S)
                                         : __shfl_down_sync(0xffffffffu, xs[e - JLO], d, S);
                    const bool edge = d < 0 ? lane < -d : lane >= S - d;
                    xs[j - JLO] = edge ? RawCvt<T, 1>::get(hb[u], h) : from;
                }
                // Row i feeds output row i - kh * DH through tap row kh: ring slot
                // (u - kh * DH) mod Q, a constant since U is a multiple of Q.
#pragma unroll
                for (int kh = 0; kh < KH; ++kh) {
                    const int s = ((u - kh * DH) % Q + Q) % Q;
#pragma unroll
                    for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                        for (int v = 0; v < V; ++v)
                            acc[s][v] = fma(xs[v - PL + kw * DW - JLO], wr[kh * KW + kw], acc[s][v]);
                }
                // Output row r = i - (Q - 1) has had its last tap row: store it, and its
                // slot starts row r + Q from the bias.
                const int r = i - (Q - 1);
                const int sc = (u + 1) % Q;
                const int oh = oh0 + r;
                if (unit_ok && r >= 0 && r < RB && oh < OH) {
                    T* op = yp + (i64)oh * OW + o0;
#pragma unroll
                    for (int k = 0; k < V / VS; ++k)
                        if (o0 + k * VS < OW) store_n<T, VS>(op + k * VS, &acc[sc][k * VS]);
                }
#pragma unroll
                for (int v = 0; v < V; ++v) acc[sc][v] = b0;
            }
        }
    }
}

}  // namespace dw
