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
#include "tc.cuh"
#include "blocksum.cuh"

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

// Staged rows (conv_rows_async) are read from shared memory as 32-bit words: CW words of
// one chunk in one access (16, 8 or 4 bytes), and element e of a window of words.
template <int CW> __device__ __forceinline__ void lds_words(const unsigned char* p, unsigned* d) {
    if constexpr (CW == 4) {
        const uint4 v = *reinterpret_cast<const uint4*>(p);
        d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
    } else if constexpr (CW == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(p);
        d[0] = v.x; d[1] = v.y;
    } else {
        static_assert(CW == 1, "chunk of 4, 8 or 16 bytes");
        d[0] = *reinterpret_cast<const unsigned*>(p);
    }
}
template <class T> struct SmemElem;
template <> struct SmemElem<float> {
    __device__ __forceinline__ static float get(const unsigned* r, int e) { return __uint_as_float(r[e]); }
};
template <> struct SmemElem<double> {
    __device__ __forceinline__ static double get(const unsigned* r, int e) {
        return __hiloint2double((int)r[2 * e + 1], (int)r[2 * e]);
    }
};
template <> struct SmemElem<half_t> {
    __device__ __forceinline__ static float get(const unsigned* r, int e) { return RawCvt<half_t, 2>::get(r, e); }
};
template <> struct SmemElem<bf16_t> {
    __device__ __forceinline__ static float get(const unsigned* r, int e) { return RawCvt<bf16_t, 2>::get(r, e); }
};

template <class T, class A> struct Words;  // below: results as 32-bit words

// VS consecutive results stored with one access (VS * sizeof(T) is 16, 8 or 4 bytes and
// aligned, or VS == 1), or word by word where VS * sizeof(T) is another multiple of 4
// bytes (a lane of 7 float32 or 14 16-bit columns: only 4-byte aligned).
template <class T, int VS, class A>
__device__ __forceinline__ void store_n(T* p, const A* v) {
    constexpr int B = VS * (int)sizeof(T);
    if constexpr (VS == 1) store1(p, v[0]);
    else if constexpr (B != 4 && B != 8 && B != 16) {
        static_assert(B % 4 == 0, "store width");
#pragma unroll
        for (int i = 0; i < B / 4; ++i) reinterpret_cast<unsigned*>(p)[i] = Words<T, A>::get(v, i);
    }
    else if constexpr (B == 16) store_vec(p, v);
    else if constexpr (B == 8) store_8b(p, v);
    else { static_assert(B == 4, "store width"); store_4b(p, v); }
}

// Results as 32-bit words in memory order (16-bit values packed two per word).
template <class T, class A> struct Words;
template <> struct Words<float, float> {
    __device__ __forceinline__ static unsigned get(const float* v, int i) { return __float_as_uint(v[i]); }
};
template <> struct Words<double, double> {
    __device__ __forceinline__ static unsigned get(const double* v, int i) {
        return (i & 1) ? (unsigned)__double2hiint(v[i >> 1]) : (unsigned)__double2loint(v[i >> 1]);
    }
};
template <> struct Words<half_t, float> {
    __device__ __forceinline__ static unsigned get(const float* v, int i) { return pack_h(v[2 * i], v[2 * i + 1]); }
};
template <> struct Words<bf16_t, float> {
    __device__ __forceinline__ static unsigned get(const float* v, int i) { return pack_b(v[2 * i], v[2 * i + 1]); }
};

// store_n for global memory, the 8- and 16-byte accesses written as PTX. Why: NVVM split
// most vector stores of the unrolled row loops into 4-byte stores (the PTX of effnet_5x5
// float32 had 16 st.global.f32 beside one st.global.v4.f32; mbv2_3x3 float16 8 st.u32
// beside 2 st.v2.u32), which multiplies the store instructions and the L2 write requests
// by the vector width. p must point to global memory.
template <class T, int VS, class A>
__device__ __forceinline__ void stg_n(T* p, const A* v) {
    constexpr int B = VS * (int)sizeof(T);
    if constexpr (VS == 1 || B == 4) {
        store_n<T, VS>(p, v);
    } else if constexpr (B == 8) {
        asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(p), "r"(Words<T, A>::get(v, 0)),
                     "r"(Words<T, A>::get(v, 1)));
    } else {
        static_assert(B == 16, "store width");
        asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(Words<T, A>::get(v, 0)),
                     "r"(Words<T, A>::get(v, 1)), "r"(Words<T, A>::get(v, 2)), "r"(Words<T, A>::get(v, 3)));
    }
}

// B bytes (2, 4, 8 or 16, aligned) from s to d in one access each way.
template <int B> __device__ __forceinline__ void copy_bytes(void* d, const void* s) {
    if constexpr (B == 16) *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(s);
    else if constexpr (B == 8) *reinterpret_cast<uint2*>(d) = *reinterpret_cast<const uint2*>(s);
    else if constexpr (B == 4) *reinterpret_cast<unsigned*>(d) = *reinterpret_cast<const unsigned*>(s);
    else {
        static_assert(B == 2, "copy width");
        *reinterpret_cast<unsigned short*>(d) = *reinterpret_cast<const unsigned short*>(s);
    }
}

// Input columns a lane of V columns needs, relative to its first column: [JLO, JHI), and
// the output rows one input row feeds (the ring), Q. Mirrored by _kernels._rows_window.
template <int V, int KH, int KW, int DH, int DW, int PL> struct RowsWindow {
    static constexpr int Q = (KH - 1) * DH + 1;
    static constexpr int JLO = -PL < 0 ? -PL : 0;
    static constexpr int JHI = V - PL + (KW - 1) * DW > V ? V - PL + (KW - 1) * DW : V;
    static constexpr int NH = JHI - JLO - V;  // halo columns
};

// Input row i of a band, converted (xs: the lane's columns JLO..JHI-1), into the ring:
// row i feeds output row i - kh * DH through tap row kh, ring slot (u - kh * DH) mod Q
// (a constant: the caller's row loop is unrolled by a multiple of Q). Row i is the first
// input row of output row i (tap row 0), so that slot starts from the bias in its first
// FMA (no reset instructions). Then output row r = i - (Q - 1), which has had its last
// tap row, is stored.
template <int V, int KH, int KW, int DH, int DW, int PL, bool VOUT = false, class A>
__device__ __forceinline__ void ring_fma(int u, A (&acc)[RowsWindow<V, KH, KW, DH, DW, PL>::Q][V],
                                         const A (&xs)[RowsWindow<V, KH, KW, DH, DW, PL>::JHI -
                                                       RowsWindow<V, KH, KW, DH, DW, PL>::JLO],
                                         const A (&wr)[KH * KW], A b0) {
    typedef RowsWindow<V, KH, KW, DH, DW, PL> Win;
    constexpr int Q = Win::Q, JLO = Win::JLO;
    if constexpr (VOUT) {
        // Column-outer: the same FMAs in the same order per sum, each column's Q x KW taps
        // in a row; ptxas then keeps an operand in the reuse cache for more of them (a
        // lane of 7 float32 columns under 7x7: 159 of 2401 FFMAs read three fresh
        // registers instead of 389; measured 1 % faster on the 16-bit row sweeps).
#pragma unroll
        for (int v = 0; v < V; ++v)
#pragma unroll
            for (int kh = 0; kh < KH; ++kh) {
                const int s = ((u - kh * DH) % Q + Q) % Q;
#pragma unroll
                for (int kw = 0; kw < KW; ++kw)
                    acc[s][v] = fma(xs[v - PL + kw * DW - JLO], wr[kh * KW + kw], kh == 0 && kw == 0 ? b0 : acc[s][v]);
            }
    } else {
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            const int s = ((u - kh * DH) % Q + Q) % Q;
#pragma unroll
            for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                for (int v = 0; v < V; ++v)
                    acc[s][v] = fma(xs[v - PL + kw * DW - JLO], wr[kh * KW + kw], kh == 0 && kw == 0 ? b0 : acc[s][v]);
        }
    }
}

// A unit's start in the row sweeps: the plane's KH*KW weights (rotated by 180 degrees
// where FLIP) in registers, its bias, and every ring slot starting from the bias.
template <int KK, bool FLIP, class T, class A, int Q, int V>
__device__ __forceinline__ void ring_start(const T* __restrict__ w, const T* __restrict__ bias, const PlaneMap& pm,
                                           A (&wr)[KK], A (&acc)[Q][V], A& b0) {
    const T* wp = w + pm.w_row0 * KK;
#pragma unroll
    for (int i = 0; i < KK; ++i) wr[i] = load1(wp + (FLIP ? KK - 1 - i : i));
    b0 = bias != nullptr ? load1(bias + pm.ch) : A(0);
#pragma unroll
    for (int s = 0; s < Q; ++s)
#pragma unroll
        for (int v = 0; v < V; ++v) acc[s][v] = b0;
}

template <class T, int V, int VS, int KH, int KW, int DH, int DW, int PL, class A>
__device__ __forceinline__ void ring_row(int u, int i, A (&acc)[RowsWindow<V, KH, KW, DH, DW, PL>::Q][V],
                                         const A (&xs)[RowsWindow<V, KH, KW, DH, DW, PL>::JHI -
                                                       RowsWindow<V, KH, KW, DH, DW, PL>::JLO],
                                         const A (&wr)[KH * KW], A b0, bool unit_ok, int oh0, int RB, int OH, int OW,
                                         int o0, T* yp) {
    typedef RowsWindow<V, KH, KW, DH, DW, PL> Win;
    constexpr int Q = Win::Q, JLO = Win::JLO;
    ring_fma<V, KH, KW, DH, DW, PL>(u, acc, xs, wr, b0);
    const int r = i - (Q - 1);
    const int sc = (u + 1) % Q;
    const int oh = oh0 + r;
    if (unit_ok && r >= 0 && r < RB && oh < OH) {
        T* op = yp + (i64)oh * OW + o0;
#pragma unroll
        for (int k = 0; k < V / VS; ++k)
            if (o0 + k * VS < OW) stg_n<T, VS>(op + k * VS, &acc[sc][k * VS]);
    }
}

// The copies of one staged row by one lane: NX chunks REPB bytes apart (the chunk at the
// lane's position, then the one S chunks on, which only lanes below NL + NR copy), each
// NP pieces of PB bytes, at constant offsets from one source and one destination address:
// one 64-bit source address per row instead of one per chunk and piece (bwd_rows on
// seed_3x7 16-bit: 77 -> 70 instructions besides the 168 FFMA of a step, NVRTC 13.0).
template <int PB, int REPB, int NX, int NP, bool L2W = false, int I = 0>
struct RowCopies {
    __device__ __forceinline__ static void run(unsigned dst, const char* src, bool row_ok, const bool (&col_ok)[NX][NP],
                                               bool in_band, const bool (&copies)[NX]) {
        constexpr int rep = I / NP, k = I % NP, off = rep * REPB + k * PB;
        cp_async_pred<PB, off, L2W>(dst + off, src, row_ok && col_ok[rep][k], in_band && copies[rep]);
        if constexpr (I + 1 < NX * NP)
            RowCopies<PB, REPB, NX, NP, L2W, I + 1>::run(dst, src, row_ok, col_ok, in_band, copies);
    }
};

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
    typedef RowsWindow<V, KH, KW, DH, DW, PL> Win;
    constexpr int Q = Win::Q;              // output rows one input row feeds: the ring
    constexpr int U = Q * ((PF + Q) / Q);  // unroll: a multiple of Q above PF, so every
                                           // ring slot and buffer index is a constant
    constexpr int JLO = Win::JLO, JHI = Win::JHI;
    constexpr int NH = Win::NH;  // halo columns (shuffled, or loaded at segment edges)
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

        A wr[KH * KW], acc[Q][V], b0;
        ring_start<KH * KW, FLIP>(w, bias, pm, wr, acc, b0);

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
                ring_row<T, V, VS, KH, KW, DH, DW, PL>(u, i, acc, xs, wr, b0, unit_ok, oh0, RB, OH, OW, o0, yp);
            }
        }
    }
}

// ---- conv_rows_async: the same sweep, input rows staged in shared memory -------------
//
// Why: conv_rows holds its rows in flight in registers, so the ring, the weights and the
// rows ahead compete for them. On 3x7 at two blocks per SM (128 registers) one row fits
// ahead: 16 warps x 512 bytes per SM in flight, a third of what the copy bandwidth needs
// over the memory latency (seed_3x7 fp16 reached 58 % of the copy floor). Here the rows
// ahead travel by cp.async into a ring of U row slots in shared memory and hold no
// registers, so PF rows ahead cost only shared memory (U x (S + NL + NR) x 16 bytes per
// segment). A lane reads its columns and its halo straight from the staged row, so the
// halo needs no shuffles and no edge loads. Each staged row has S + NL + NR chunks of V
// columns: the segment's own, NL to its left and NR to its right (out of the plane:
// zero-filled by the copy); lane l copies chunk l, and lanes below NL + NR also chunk
// S + l. Bytes per output unchanged: one input element, one output element.
//
// L2A (0: off): each copied row also prefetches the band's row L2A rows further into L2
// (prefetch.global.L2), more DRAM reads in flight than the PF slots hold, on long rows.
// Without it (the host's short rows, under 256 bytes) each copy prefetches its 256-byte
// block instead of the 128-byte one, the next rows of the band with it (same process, us,
// 128 / 256 B: mbv2_3x3 forward float16 39.37 / 39.16, bfloat16 39.39 / 39.0, grad input
// float16 39.47 / 39.03; effnet_5x5 float32 34.9 / 34.95; on long rows 256 B costs:
// image_3x3 float16 77.7 / 79.0).
//
// Extra condition: VL * sizeof(T) is 4, 8 or 16 bytes (cp.async sizes); sm_80+.
template <class T, int V, int VL, int VS, int KH, int KW, int DH, int DW, int PL, int S, int PF, bool FLIP,
          int MINB, int RP, int L2A = 0>
__global__ void __launch_bounds__(256, MINB)
conv_rows_async(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
                const RowsArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    typedef typename Traits<T>::acc A;
    typedef RowsWindow<V, KH, KW, DH, DW, PL> Win;
    constexpr int Q = Win::Q;
    // RP rows per wait: the copy wait and the barrier come every RP rows, so the
    // compiler can interleave RP rows' reads, conversions and FMAs (SASS of mbv2 16-bit:
    // the barrier costs ~6 issue slots a row, and "wait" stalls followed each row's
    // LDS -> HADD2.F32 -> FFMA chain). Row slots: a multiple of lcm(Q, RP) (every slot
    // and ring index a constant, every group of RP rows starts at an even slot) of at
    // least PF + RP (the RP copies issued at a group's start miss the group's rows).
    constexpr int QL = (Q % RP == 0) ? Q : Q * RP;
    constexpr int U = QL * ((PF + RP + QL - 1) / QL);
    constexpr int JLO = Win::JLO, JHI = Win::JHI;
    constexpr int NL = (-JLO + V - 1) / V;         // neighbour chunks on the left
    constexpr int NR = (JHI - V + V - 1) / V;      // and on the right
    constexpr int NC = S + NL + NR;                // chunks per staged row
    constexpr int CB = V * (int)sizeof(T);         // bytes per chunk
    constexpr int CW = CB / 4;                     // 32-bit words per chunk
    constexpr int PB = VL * (int)sizeof(T);        // bytes per copy
    constexpr int ROWB = NC * CB;                  // bytes per staged row
    // Output rows whose alignment allows only stores narrower than a lane's chunk (VS <
    // V: rows of 250 16-bit values take 4-byte stores) go through a row buffer in shared
    // memory, so that each store instruction writes consecutive words across the lanes
    // (whole 32-byte sectors) instead of a word every V elements.
    constexpr bool OST = VS < V;
    constexpr int SEGB = U * ROWB + (OST ? S * CB : 0);  // bytes per segment
    constexpr int SEGS = 256 / S;
    static_assert(S >= 1 && S <= 32 && (S & (S - 1)) == 0, "a segment is a power-of-two part of a warp");
    static_assert(V % VL == 0 && V % VS == 0, "copies and stores split the lane's columns evenly");
    static_assert(PB == 4 || PB == 8 || PB == 16, "cp.async copies 4, 8 or 16 bytes");
    static_assert(CB % 4 == 0 && CB <= 16, "a chunk is whole 32-bit words, at most one 16-byte read");
    static_assert(NL + NR <= S, "lanes below NL + NR copy the neighbour chunks");
    static_assert(KH * KW <= 64 && Q * V <= 64, "register budget");
    static_assert(PF >= RP && (RP == 1 || RP == 2), "at least one group of rows ahead");
    static_assert(RP == 1 || !OST, "the output row buffer relies on a barrier every row");
    extern __shared__ __align__(16) unsigned char rows_smem[];

    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, RB = a.RB;
    const int lane = threadIdx.x & (S - 1);
    const int total = RB + Q - 1;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const i64 seg_step = (i64)gridDim.x * SEGS;
    const unsigned seg_base = smem_u32(rows_smem) + (unsigned)((threadIdx.x / S) * SEGB);
    const unsigned char* seg_ptr = rows_smem + (threadIdx.x / S) * SEGB;
    T* out_buf = reinterpret_cast<T*>(rows_smem + (threadIdx.x / S) * SEGB + U * ROWB);
    constexpr int NX = NL + NR > 0 ? 2 : 1;  // chunks a lane may copy (its own, a neighbour)
    constexpr int NP = V / VL;               // copies per chunk
    // Warp-uniform unit loop, as in conv_rows: __syncwarp below needs the whole warp.
    const i64 warp_seg0 = (i64)blockIdx.x * SEGS + (threadIdx.x & ~31) / S;
    for (i64 g0 = warp_seg0; g0 < a.n_units; g0 += seg_step) {
        const i64 g = g0 + (threadIdx.x & 31) / S;
        const bool unit_ok = g < a.n_units;
        i64 q = 0;
        int band = 0, cs = 0;
        if (unit_ok) split_unit(g, a.n_units, a.n_cs, a.n_bands, q, band, cs);
        const PlaneMap pm = map_plane(q, a.QC, a.IC, a.DIV, 1);
        const int c0 = cs * S * V;   // the segment's first column
        const int o0 = c0 + lane * V;
        const int oh0 = band * RB;
        const int ih0 = oh0 - a.PT;
        const T* xp = x + pm.in_plane0 * plane_in;

        A wr[KH * KW], acc[Q][V], b0;
        ring_start<KH * KW, FLIP>(w, bias, pm, wr, acc, b0);

        // Per unit, what the row loop only advances: the lane's source address (band row
        // 0, the chunk at its position; a byte address, so that a row step is one 64-bit
        // add; its second chunk lies S chunks on, a constant offset in RowCopies),
        // whether each copy's columns are in the plane, and whether the lane copies that
        // chunk at all (the second chunk: lanes below NL + NR). Rows and columns outside
        // the plane are zero-filled: source size 0, so the address, outside the plane
        // there, is never read. Rows past the band and segments past the last unit copy
        // nothing.
        const char* src = reinterpret_cast<const char*>(xp) + ((i64)ih0 * IW + c0 + (lane - NL) * V) * (i64)sizeof(T);
        bool col_ok[NX][NP], copies[NX];
#pragma unroll
        for (int rep = 0; rep < NX; ++rep) {
            const int col = c0 + (lane + rep * S - NL) * V;
            copies[rep] = unit_ok && (rep == 0 || lane < NL + NR);
#pragma unroll
            for (int k = 0; k < NP; ++k) col_ok[rep][k] = (unsigned)(col + k * VL) < (unsigned)IW;
        }
        const i64 row_bytes = (i64)IW * (i64)sizeof(T);
        int ih_next = ih0;  // the row the next stage_row copies
        // Copy the next input row of the band into `slot` (one cp.async group per row:
        // an empty group past the band keeps the count per row). Branch-free: predicated
        // copies.
        auto stage_row = [&](bool in_band, int slot) {
            const bool row_ok = (unsigned)ih_next < (unsigned)IH;
            RowCopies<PB, S * CB, NX, NP, L2A == 0>::run(seg_base + (unsigned)(slot * ROWB + lane * CB), src, row_ok,
                                                         col_ok, in_band, copies);
            // L2A: the band's row L2A rows beyond this copy into L2 (more DRAM reads in
            // flight than the slots hold; rows of 256 bytes and more, see _rows_l2_ahead).
            if constexpr (L2A > 0) {
                const int ihp = ih_next + L2A;
                if (copies[0] && col_ok[0][0] && (unsigned)ihp < (unsigned)IH && ihp < ih0 + total)
                    prefetch_l2(src + L2A * row_bytes);
            }
            src += row_bytes;
            ++ih_next;
            cp_async_commit();
        };
        // Output rows: the segment's offset at band row -(Q - 1) (the row stored at step
        // 0, none), advanced by one row per step; rows below rlim are stored.
        // As an integer address, so that a row step is one 64-bit add and each store
        // uses it with a constant offset (the start, row -(Q - 1), may lie before the
        // array: unsigned arithmetic wraps it back on the first stored row).
        // The buffered rows (OST) keep an element offset: with the integer address there,
        // seed_3x7 16-bit forward measured 2.6-3.1 % slower (0.1656 -> 0.1698 ms).
        const unsigned long long out_row = (unsigned long long)OW * sizeof(T);
        unsigned long long dst = reinterpret_cast<unsigned long long>(y) +
                                 (unsigned long long)((q * plane_out + (i64)(oh0 - (Q - 1)) * OW + c0 + lane * V) *
                                                      (i64)sizeof(T));
        i64 dst_off = q * plane_out + (i64)(oh0 - (Q - 1)) * OW + c0;
        const int rlim = unit_ok ? min(RB, OH - oh0) : 0;
        bool st_ok[V / VS];
#pragma unroll
        for (int k = 0; k < V / VS; ++k) st_ok[k] = o0 + k * VS < OW;

        __syncwarp();  // the previous unit's reads of the slots are done
#pragma unroll
        for (int k = 0; k < PF; ++k) stage_row(k < total, k);
        for (int i0 = 0; i0 < total; i0 += U) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int i = i0 + u;
                if (i >= total) break;  // uniform across the warp
                // Rows i .. i + RP - 1 have landed for this lane's copies; after the
                // barrier, for every lane's, and every lane is done reading the rows
                // before i, whose slots (i + PF + r) mod U take the copies issued next
                // (U >= PF + RP).
                if (u % RP == 0) {
                    cp_async_wait<PF - RP>();
                    __syncwarp();
#pragma unroll
                    for (int r = 0; r < RP; ++r) stage_row(i + PF + r < total, (u + PF + r) % U);
                }
                // The lane's window: its chunk and the neighbour chunks' needed words,
                // a whole chunk in one read when it needs more than one word.
                unsigned win[(NL + 1 + NR) * CW];
                const unsigned char* rowp = seg_ptr + u * ROWB + lane * CB;
#pragma unroll
                for (int ch = 0; ch < NL + 1 + NR; ++ch) {
                    const int lo = (ch - NL) * V > JLO ? (ch - NL) * V : JLO;        // needed columns
                    const int hi = (ch - NL + 1) * V < JHI ? (ch - NL + 1) * V : JHI;  // of this chunk
                    const int wlo = (lo - (ch - NL) * V) * (int)sizeof(T) / 4;
                    const int whi = ((hi - (ch - NL) * V) * (int)sizeof(T) + 3) / 4;
                    if (whi - wlo > 1) lds_words<CW>(rowp + ch * CB, &win[ch * CW]);
                    else win[ch * CW + wlo] = *reinterpret_cast<const unsigned*>(rowp + ch * CB + 4 * wlo);
                }
                A xs[JHI - JLO];
#pragma unroll
                for (int j = JLO; j < JHI; ++j) xs[j - JLO] = SmemElem<T>::get(win, j + NL * V);
                ring_fma<V, KH, KW, DH, DW, PL, true>(u, acc, xs, wr, b0);
                // Output row i - (Q - 1) has had its last tap row.
                const int sc = (u + 1) % Q;
                const bool row_st = (unsigned)(i - (Q - 1)) < (unsigned)rlim;
                if constexpr (OST) {
                    // The buffer's previous row was read before this step's barrier.
                    store_n<T, V>(out_buf + lane * V, &acc[sc][0]);
                    __syncwarp();
                    if (row_st) {
#pragma unroll
                        for (int k = 0; k < V / VS; ++k) {
                            const int m = (lane + S * k) * VS;  // the piece's first column
                            if (c0 + m < OW) copy_bytes<VS * (int)sizeof(T)>(y + dst_off + m, out_buf + m);
                        }
                    }
                    dst_off += OW;
                } else {
                    if (row_st) {
#pragma unroll
                        for (int k = 0; k < V / VS; ++k)
                            if (st_ok[k]) stg_n<T, VS>(reinterpret_cast<T*>(dst) + k * VS, &acc[sc][k * VS]);
                    }
                    dst += out_row;
                }
            }
        }
        cp_async_wait<0>();  // no copy outlives its unit
    }
#else
    __trap();  // the host plans this kernel for sm_80+ only
#endif
}

// ---- conv_rows_whole: the staged sweep for planes whose row is one segment -----------
//
// Why: conv_rows_async gives each lane a chunk of V columns, V a power of two (one
// 16-, 8- or 4-byte access), so a 56-column plane keeps 14 of 16 float32 lanes busy and
// two bands of 28 rows per plane (the grid's waves) sweep 34 rows for 28: 72 % of the
// FMAs of convnext_7x7 float32 are useful. Here S lanes of V columns cover the whole
// output row (V need not be a power of two: 8 x 7 = 56, 4 x 7 = 28; 16-bit 4 x 14), and
// the segment stages whole input rows: each row is one contiguous run copied in PB-byte
// pieces (the row's start is PB-aligned: IW * sizeof(T) % PB == 0) into a slot whose zero
// columns left and right of the row are written once, so the halo needs no neighbour
// chunks and no per-chunk copies. A lane reads its window (its V columns and the halo)
// word by word: lanes V words apart, V odd, hit distinct banks; segments sit 32 / S
// words apart modulo 32 banks, so a warp's 32 reads of one window word are
// conflict-free. Results go through a row buffer (the lane's V values word by word) and
// leave in OB-byte pieces, whole sectors across the lanes. Units are (plane, band), the
// band usually the whole plane (Q - 1 extra rows per plane, not per band). Bytes per
// output: one input element read, one output element written.
//
// Template arguments as conv_rows_async, plus IW and OW (the plane's row lengths:
// constant piece counts), PB and OB (bytes per input copy and per output store: 16, 8 or
// 4), BLOCK (threads per block). T is a 4- or 2-byte type.
template <class T, int V, int KH, int KW, int DH, int DW, int PL, int IW, int OW, int S, int PF, bool FLIP,
          int MINB, int BLOCK, int PB, int OB>
__global__ void __launch_bounds__(BLOCK, MINB)
conv_rows_whole(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
                const RowsArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    typedef typename Traits<T>::acc A;
    typedef RowsWindow<V, KH, KW, DH, DW, PL> Win;
    constexpr int Q = Win::Q;
    constexpr int U = Q * ((PF + 1 + Q - 1) / Q);  // row slots: a multiple of Q, at least PF + 1
    constexpr int JLO = Win::JLO, JHI = Win::JHI;
    constexpr int ES = (int)sizeof(T);
    constexpr int EPW = 4 / ES;                         // elements per 32-bit word
    constexpr int LP = round_up(-JLO * ES, 16) / ES;    // zero columns left of the row
    // + zero columns right (and a word's spare element)
    constexpr int SLOT_E = LP + (S * V + JHI - V > IW ? S * V + JHI - V : IW) + EPW - 1;
    constexpr int ROWB = round_up(SLOT_E * ES, 16);     // bytes per slot
    constexpr int OBUF = round_up(S * V * ES, 16);      // the output row buffer
    constexpr int SEGB0 = U * ROWB + OBUF;
    constexpr int SOFF = 128 / S > 16 ? 128 / S : 16;  // segment offset mod 128 bytes (16-byte aligned)
    constexpr int SEGB = SEGB0 + (128 + SOFF - SEGB0 % 128) % 128;
    constexpr int SEGS = BLOCK / S;
    constexpr int NPI = IW * ES / PB;                   // input pieces per row
    constexpr int NPO = OW * ES / OB;                   // output pieces per row
    constexpr int WLO = floor_div(JLO, EPW), WHI = (JHI + EPW - 1) / EPW;  // window words
    static_assert(ES == 4 || ES == 2, "4- or 2-byte types");
    static_assert(S >= 1 && S <= 32 && (S & (S - 1)) == 0 && BLOCK % 32 == 0 && SEGS >= 1, "segments in warps");
    static_assert((V * ES) % 4 == 0 && S * V >= OW, "lanes of whole words; the segment covers the row");
    static_assert(NPI * PB == IW * ES && NPO * OB == OW * ES, "rows of whole pieces");
    static_assert(PB == 4 || PB == 8 || PB == 16, "cp.async copies 4, 8 or 16 bytes");
    static_assert(OB == 4 || OB == 8 || OB == 16, "stores of 4, 8 or 16 bytes");
    static_assert(KH * KW <= 64 && Q * V <= 64, "register budget");
    extern __shared__ __align__(16) unsigned char rows_smem[];

    const int IH = a.IH, OH = a.OH, RB = a.RB;
    const int lane = threadIdx.x & (S - 1);
    const int total = RB + Q - 1;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const i64 seg_step = (i64)gridDim.x * SEGS;
    unsigned char* const seg_ptr = rows_smem + (threadIdx.x / S) * SEGB;
    const unsigned seg_base = smem_u32(seg_ptr);
    // The zero columns: the whole segment once; row copies write only [LP, LP + IW).
    for (int i = lane; i < SEGB0 / 4; i += S) reinterpret_cast<unsigned*>(seg_ptr)[i] = 0u;
    __syncwarp();

    const i64 warp_seg0 = (i64)blockIdx.x * SEGS + (threadIdx.x & ~31) / S;
    for (i64 g0 = warp_seg0; g0 < a.n_units; g0 += seg_step) {
        const i64 g = g0 + (threadIdx.x & 31) / S;
        const bool unit_ok = g < a.n_units;
        i64 q = 0;
        int band = 0, cs = 0;
        if (unit_ok) split_unit(g, a.n_units, 1, a.n_bands, q, band, cs);
        const PlaneMap pm = map_plane(q, a.QC, a.IC, a.DIV, 1);
        const int oh0 = band * RB;
        const int ih0 = oh0 - a.PT;

        A wr[KH * KW], acc[Q][V], b0;
        ring_start<KH * KW, FLIP>(w, bias, pm, wr, acc, b0);

        // The lane's input pieces lane, lane + S, ... of each row; the source of band row
        // 0 as a byte address (a row step is one 64-bit add). Rows outside the plane are
        // zero-filled (source size 0: the address is never read there).
        const char* src = reinterpret_cast<const char*>(x + pm.in_plane0 * plane_in) + ((i64)ih0 * IW) * ES + lane * PB;
        int ih_next = ih0;
        auto stage_row = [&](bool in_band, int slot) {
            const bool row_ok = (unsigned)ih_next < (unsigned)IH;
            const unsigned dst = seg_base + (unsigned)(slot * ROWB + LP * ES + lane * PB);
#pragma unroll
            for (int k = 0; k < (NPI + S - 1) / S; ++k)
                cp_async_pred<PB>(dst + k * S * PB, src + k * S * PB, row_ok,
                                  in_band && unit_ok && ((NPI % S) == 0 || k * S + lane < NPI));
            src += IW * ES;
            ++ih_next;
            cp_async_commit();
        };
        const int rlim = unit_ok ? min(RB, OH - oh0) : 0;
        T* const obuf = reinterpret_cast<T*>(seg_ptr + U * ROWB);
        // Output rows: the element offset of band row -(Q - 1) (the row stored at step 0,
        // none), advanced by one row per step.
        i64 dst_off = q * plane_out + (i64)(oh0 - (Q - 1)) * OW;

        __syncwarp();  // the previous unit's reads of the slots are done
#pragma unroll
        for (int k = 0; k < PF; ++k) stage_row(k < total, k);
        for (int i0 = 0; i0 < total; i0 += U) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int i = i0 + u;
                if (i >= total) break;  // uniform across the warp
                // Row i has landed for this lane's copies; after the barrier, for every
                // lane's, and every lane is done with row i - 1, whose slot takes the copy
                // issued next (U >= PF + 1), and with the row buffer.
                cp_async_wait<PF - 1>();
                __syncwarp();
                stage_row(i + PF < total, (u + PF) % U);
                const unsigned* rw = reinterpret_cast<const unsigned*>(seg_ptr + u * ROWB) + (LP + lane * V) / EPW;
                unsigned win[WHI - WLO];
#pragma unroll
                for (int k = 0; k < WHI - WLO; ++k) win[k] = rw[WLO + k];
                A xs[JHI - JLO];
#pragma unroll
                for (int j = JLO; j < JHI; ++j) xs[j - JLO] = SmemElem<T>::get(win, j - WLO * EPW);
                // A row outside the plane (the padding) adds nothing: only its slot's
                // reset to the bias is kept (the first FMA of output row i would do it).
                // Uniform across the warp where the plane is one band (the planner's
                // choice where it fits): then every unit sweeps the same rows.
                if ((unsigned)(ih0 + i) < (unsigned)IH) {
                    ring_fma<V, KH, KW, DH, DW, PL, true>(u, acc, xs, wr, b0);
                } else {
#pragma unroll
                    for (int v = 0; v < V; ++v) acc[u % Q][v] = b0;
                }
                // Output row i - (Q - 1) has had its last tap row.
                const int sc = (u + 1) % Q;
                store_n<T, V>(obuf + lane * V, &acc[sc][0]);
                __syncwarp();
                if ((unsigned)(i - (Q - 1)) < (unsigned)rlim) {
#pragma unroll
                    for (int k = 0; k < (NPO + S - 1) / S; ++k) {
                        const int m = (k * S + lane) * OB;  // the piece's first byte
                        if ((NPO % S) == 0 || k * S + lane < NPO)
                            copy_bytes<OB>(reinterpret_cast<char*>(y + dst_off) + m, reinterpret_cast<const char*>(obuf) + m);
                    }
                }
                dst_off += OW;
            }
        }
        cp_async_wait<0>();  // no copy outlives its unit
    }
#else
    __trap();  // the host plans this kernel for sm_80+ only
#endif
}

// ---- bwd_rows: the whole backward pass (stride 1, multiplier 1) as one row sweep --------
//
// grad_x is conv_rows_async on the rotated problem: grad_output rows in, grad_x rows out,
// the kernel rotated by 180 degrees (PL here is the rotated problem's left padding). Each
// FMA of that sweep pairs one grad_output value g with the grad_x position (r, c) it
// feeds through one tap, and the weight gradient is exactly the sum of g * x[r, c] over
// those pairs (the identity bwd.cu uses). So the lane also keeps the x values of the Q
// rows in its ring (staged with the grad_output row of the step that starts each row) and
// adds one FMA per pair into KH*KW tap sums. grad_output and x are read once, grad_x is
// written once: per grad_x element, three elements of traffic, the floor of the three
// gradients. The bias sum takes each grad_output element once: the rows a band owns
// (bands overlap by Q - 1 rows, which only feed its ring) and the lane's own columns.
//
// Grid (chunks, channels), as bwd_tile: a block owns one channel (weights in registers;
// its partial row is written by one fixed-order block sum, and the channel's last block
// (with `counters`) or wgrad_reduce adds the chunks in order: deterministic). The
// channel's units (n, band, column segment) split evenly over its chunks; the block's
// segments walk them, warp-uniform.
//
// Template arguments as conv_rows_async, plus VX: elements per x copy (x rows: the
// segment's own chunks only), and NTB: threads per block (256; 128 where 16-bit lanes of
// 8 columns run 4 blocks per SM, _kernels._bwd_rows_narrow). The host checks that bands
// and segments cover the grad_output plane (top and bottom padding within the kernel's
// reach, OW within the segments' columns), so that every grad_output element is some
// band's and lane's own.
template <class T, int V, int VL, int VX, int VS, int KH, int KW, int DH, int DW, int PL, int S, int PF,
          int MINB, int NTB = 256>
__global__ void __launch_bounds__(NTB, MINB)
bwd_rows(const T* __restrict__ x, const T* __restrict__ go, const T* __restrict__ w, T* __restrict__ gx,
         typename Traits<T>::acc* __restrict__ partial, unsigned* __restrict__ counters, T* __restrict__ gw,
         T* __restrict__ gb, const BwdRowsArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    typedef typename Traits<T>::acc A;
    typedef RowsWindow<V, KH, KW, DH, DW, PL> Win;
    constexpr int Q = Win::Q;
    constexpr int U = Q * ((PF + Q) / Q);
    // RP rows per copy wait and warp barrier, as in conv_rows_async (two where the unroll
    // U already holds whole pairs beyond the PF rows in flight, so the slots and the
    // shared memory stay as they are, and no output-row buffer needs a barrier every
    // row): seed_3x7 16-bit, 235 -> 228 instructions a step, no spill.
    constexpr int RP = PF >= 2 && VS == V && U % 2 == 0 && U >= PF + 2 ? 2 : 1;
    constexpr int JLO = Win::JLO, JHI = Win::JHI;
    constexpr int NL = (-JLO + V - 1) / V;
    constexpr int NR = (JHI - V + V - 1) / V;
    constexpr int NC = S + NL + NR;                // grad_output chunks per staged row
    constexpr int CB = V * (int)sizeof(T);
    constexpr int CW = CB / 4;
    constexpr int PB = VL * (int)sizeof(T);        // bytes per grad_output copy
    constexpr int XB = VX * (int)sizeof(T);        // bytes per x copy
    constexpr int GROWB = NC * CB;                 // staged grad_output row
    constexpr int ROWB = GROWB + S * CB;           // and the x row beside it
    constexpr bool OST = VS < V;
    constexpr int SEGB = U * ROWB + (OST ? S * CB : 0);
    constexpr int SEGS = NTB / S;
    constexpr int KK = KH * KW;
    constexpr int NX = NL + NR > 0 ? 2 : 1;
    constexpr int NP = V / VL, NPX = V / VX;
    static_assert(S >= 1 && S <= 32 && (S & (S - 1)) == 0, "a segment is a power-of-two part of a warp");
    static_assert(V % VL == 0 && V % VX == 0 && V % VS == 0, "copies and stores split the lane's columns evenly");
    static_assert((PB == 4 || PB == 8 || PB == 16) && (XB == 4 || XB == 8 || XB == 16), "cp.async sizes");
    static_assert(CB % 4 == 0 && CB <= 16, "a chunk is whole 32-bit words, at most one 16-byte read");
    static_assert(NL + NR <= S, "lanes below NL + NR copy the neighbour chunks");
    static_assert(KK <= 64 && Q * V <= 32, "register budget");
    static_assert(PF >= 1, "at least one row ahead");
    extern __shared__ __align__(16) unsigned char rows_smem[];
    __shared__ A red[(NTB / 32) * (KK + 1)];

    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, RB = a.RB, C = a.C, n_chunks = a.n_chunks;
    const int PTR = (KH - 1) * DH - a.PT;  // the rotated problem's top padding
    const int lane = threadIdx.x & (S - 1);
    const int total = RB + Q - 1;
    const i64 plane_x = (i64)IH * IW, plane_go = (i64)OH * OW;
    const unsigned seg_base = smem_u32(rows_smem) + (unsigned)((threadIdx.x / S) * SEGB);
    const unsigned char* seg_ptr = rows_smem + (threadIdx.x / S) * SEGB;
    T* out_buf = reinterpret_cast<T*>(rows_smem + (threadIdx.x / S) * SEGB + U * ROWB);
    const int seg_in_block = (threadIdx.x & ~31) / S;  // the warp's first segment

    for (int o = blockIdx.y; o < C; o += gridDim.y) {
        A wr[KK];
#pragma unroll
        for (int i = 0; i < KK; ++i) wr[i] = load1(w + (i64)o * KK + (KK - 1 - i));  // rotated
        A dwf[KK + 1];  // tap sums in rotated order, then the bias sum
#pragma unroll
        for (int k = 0; k <= KK; ++k) dwf[k] = A(0);
        const i64 begin = a.units * blockIdx.x / n_chunks, end = a.units * (blockIdx.x + 1) / n_chunks;
        for (i64 g0 = begin + seg_in_block; g0 < end; g0 += SEGS) {
            const i64 g = g0 + (threadIdx.x & 31) / S;
            const bool unit_ok = g < end;
            i64 n = 0;
            int band = 0, cs = 0;
            if (unit_ok) split_unit(g, a.units, a.n_cs, a.n_bands, n, band, cs);
            const i64 qp = n * C + o;  // the plane, in x, grad_output and grad_x
            const int c0 = cs * S * V;
            const int o0 = c0 + lane * V;
            const int oh0 = band * RB;          // first grad_x row of the band
            const int ih0 = oh0 - PTR;          // grad_output row of step 0
            const bool first_band = band == 0, last_band = band == a.n_bands - 1;

            A acc[Q][V], xr[Q][V];
#pragma unroll
            for (int s = 0; s < Q; ++s)
#pragma unroll
                for (int v = 0; v < V; ++v) acc[s][v] = xr[s][v] = A(0);

            // Copies (as conv_rows_async: one source address per row). Segments past the
            // last unit copy zeros (source size 0) rather than nothing: their lanes take
            // part in the tap sums, which must see zeros, not stale rows.
            const char* src = reinterpret_cast<const char*>(go + qp * plane_go) +
                              ((i64)ih0 * OW + c0 + (lane - NL) * V) * (i64)sizeof(T);
            bool col_ok[NX][NP], copies[NX];
#pragma unroll
            for (int rep = 0; rep < NX; ++rep) {
                const int col = c0 + (lane + rep * S - NL) * V;
                copies[rep] = rep == 0 || lane < NL + NR;
#pragma unroll
                for (int k = 0; k < NP; ++k) col_ok[rep][k] = unit_ok && (unsigned)(col + k * VL) < (unsigned)OW;
            }
            const char* xsrc = reinterpret_cast<const char*>(x + qp * plane_x) + ((i64)oh0 * IW + o0) * (i64)sizeof(T);
            bool xcol_ok[NPX];
#pragma unroll
            for (int k = 0; k < NPX; ++k) xcol_ok[k] = unit_ok && (unsigned)(o0 + k * VX) < (unsigned)IW;
            const i64 go_row_bytes = (i64)OW * (i64)sizeof(T), x_row_bytes = (i64)IW * (i64)sizeof(T);
            const int xlim = min(RB, IH - oh0);  // x rows of the band inside the plane
            int t_next = 0;  // the step whose rows the next stage_row copies
            // Step t's rows: grad_output row ih0 + t (zero outside the plane), and x row
            // oh0 + t (zero past the band or the plane: its taps pair with nothing here).
            auto stage_row = [&](int slot) {
                const bool in_band = t_next < total;
                const int ih = ih0 + t_next;
                const bool row_ok = (unsigned)ih < (unsigned)OH;
                RowCopies<PB, S * CB, NX, NP>::run(seg_base + (unsigned)(slot * ROWB + lane * CB), src, row_ok, col_ok,
                                                   in_band, copies);
                src += go_row_bytes;
                const bool xrow_ok = t_next < xlim;
                const unsigned xdst = seg_base + (unsigned)(slot * ROWB + GROWB + lane * CB);
#pragma unroll
                for (int k = 0; k < NPX; ++k)
                    cp_async_pred<XB>(xdst + k * XB, xsrc + k * XB, xrow_ok && xcol_ok[k], in_band);
                xsrc += x_row_bytes;
                ++t_next;
                cp_async_commit();
            };
            // An integer address advanced by one row per step (as conv_rows_async).
            const unsigned long long gx_row = (unsigned long long)IW * sizeof(T);
            unsigned long long dst = reinterpret_cast<unsigned long long>(gx) +
                                     (unsigned long long)((qp * plane_x + (i64)(oh0 - (Q - 1)) * IW + c0 +
                                                           (OST ? lane * VS : lane * V)) * (i64)sizeof(T));
            const int rlim = unit_ok ? xlim : 0;

            __syncwarp();  // the previous unit's reads of the slots are done
#pragma unroll
            for (int k = 0; k < PF; ++k) stage_row(k);
            for (int i0 = 0; i0 < total; i0 += U) {
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    const int t = i0 + u;
                    if (t >= total) break;  // uniform across the warp
                    if (u % RP == 0) {
                        cp_async_wait<PF - RP>();
                        __syncwarp();
#pragma unroll
                        for (int r = 0; r < RP; ++r) stage_row((u + PF + r) % U);
                    }
                    const unsigned char* rowp = seg_ptr + u * ROWB + lane * CB;
                    unsigned win[(NL + 1 + NR) * CW];
#pragma unroll
                    for (int ch = 0; ch < NL + 1 + NR; ++ch) {
                        const int lo = (ch - NL) * V > JLO ? (ch - NL) * V : JLO;
                        const int hi = (ch - NL + 1) * V < JHI ? (ch - NL + 1) * V : JHI;
                        const int wlo = (lo - (ch - NL) * V) * (int)sizeof(T) / 4;
                        const int whi = ((hi - (ch - NL) * V) * (int)sizeof(T) + 3) / 4;
                        if (whi - wlo > 1) lds_words<CW>(rowp + ch * CB, &win[ch * CW]);
                        else win[ch * CW + wlo] = *reinterpret_cast<const unsigned*>(rowp + ch * CB + 4 * wlo);
                    }
                    A xs[JHI - JLO];
#pragma unroll
                    for (int j = JLO; j < JHI; ++j) xs[j - JLO] = SmemElem<T>::get(win, j + NL * V);
                    // The x row of grad_x row t (band-relative) starts its ring slot.
                    unsigned xw[CW];
                    lds_words<CW>(seg_ptr + u * ROWB + GROWB + lane * CB, xw);
#pragma unroll
                    for (int v = 0; v < V; ++v) xr[u % Q][v] = SmemElem<T>::get(xw, v);
                    // Bias: the grad_output rows this band owns, the lane's own columns.
                    if ((t >= Q - 1 || first_band) && (t < Q - 1 + RB || last_band)) {
#pragma unroll
                        for (int v = 0; v < V; ++v) dwf[KK] += xs[v - JLO];
                    }
#pragma unroll
                    for (int kh = 0; kh < KH; ++kh) {
                        const int s = ((u - kh * DH) % Q + Q) % Q;
#pragma unroll
                        for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                            for (int v = 0; v < V; ++v) {
                                const A gv = xs[v - PL + kw * DW - JLO];
                                acc[s][v] = fma(gv, wr[kh * KW + kw], kh == 0 && kw == 0 ? A(0) : acc[s][v]);
                                dwf[kh * KW + kw] = fma(gv, xr[s][v], dwf[kh * KW + kw]);
                            }
                    }
                    const int sc = (u + 1) % Q;
                    const bool row_st = (unsigned)(t - (Q - 1)) < (unsigned)rlim;
                    if constexpr (OST) {
                        store_n<T, V>(out_buf + lane * V, &acc[sc][0]);
                        __syncwarp();
                        if (row_st) {
#pragma unroll
                            for (int k = 0; k < V / VS; ++k) {
                                const int m = (lane + S * k) * VS;
                                if (c0 + m < IW)
                                    copy_bytes<VS * (int)sizeof(T)>(reinterpret_cast<T*>(dst) + S * k * VS, out_buf + m);
                            }
                        }
                    } else if (row_st) {
#pragma unroll
                        for (int k = 0; k < V / VS; ++k)
                            if (o0 + k * VS < IW) stg_n<T, VS>(reinterpret_cast<T*>(dst) + k * VS, &acc[sc][k * VS]);
                    }
                    dst += gx_row;
                }
            }
            cp_async_wait<0>();
        }
        // Tap sums back to the kernel's own order; one fixed-order block sum.
        A out[KK + 1];
#pragma unroll
        for (int k = 0; k < KK; ++k) out[k] = dwf[KK - 1 - k];
        out[KK] = dwf[KK];
        block_sum_to<A, KK + 1>(out, red, partial + ((i64)o * n_chunks + blockIdx.x) * (KK + 1));
        if (counters != nullptr) finish_channel<T, A>(partial, o, n_chunks, KK, counters, gw, gb);
    }
#else
    __trap();  // the host plans this kernel for sm_80+ only
#endif
}

}  // namespace dw
