// Shared device helpers for the depthwise convolution kernels: storage types,
// conversions to the accumulation type, and scalar / 16-byte vector loads and stores.
//
// No CUDA header is included: the 16-bit types are plain bit containers converted
// with PTX, so the sources compile with NVRTC alone on any machine (the CPU test
// suite compiles every kernel without a GPU).
#pragma once

namespace dw {

typedef long long i64;

struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

// acc: accumulation type (16-bit types accumulate in float32).
// VEC: elements in one 16-byte global access.
template <class T> struct Traits;
template <> struct Traits<float>  { typedef float  acc; static constexpr int VEC = 4; };
template <> struct Traits<double> { typedef double acc; static constexpr int VEC = 2; };
template <> struct Traits<half_t> { typedef float  acc; static constexpr int VEC = 8; };
template <> struct Traits<bf16_t> { typedef float  acc; static constexpr int VEC = 8; };

// ---- conversions -----------------------------------------------------------------
__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float b2f(unsigned short b) { return __uint_as_float(((unsigned)b) << 16); }
// Round to nearest even; NaN stays a (quiet) NaN. sm_80+ has the conversion in hardware;
// older targets use the same rounding in integer arithmetic.
__device__ __forceinline__ unsigned short f2b(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned short b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
#else
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
#endif
}

__device__ __forceinline__ float  load1(const float* p)  { return __ldg(p); }
__device__ __forceinline__ double load1(const double* p) { return __ldg(p); }
__device__ __forceinline__ float  load1(const half_t* p) { return h2f(__ldg(reinterpret_cast<const unsigned short*>(p))); }
__device__ __forceinline__ float  load1(const bf16_t* p) { return b2f(__ldg(reinterpret_cast<const unsigned short*>(p))); }

__device__ __forceinline__ void store1(float* p, float v)   { *p = v; }
__device__ __forceinline__ void store1(double* p, double v) { *p = v; }
__device__ __forceinline__ void store1(half_t* p, float v)  { p->bits = f2h(v); }
__device__ __forceinline__ void store1(bf16_t* p, float v)  { p->bits = f2b(v); }

// ---- 16-byte vectors (the caller guarantees 16-byte alignment) ---------------------
__device__ __forceinline__ void load_vec(const float* p, float* d) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
}
__device__ __forceinline__ void load_vec(const double* p, double* d) {
    const double2 v = __ldg(reinterpret_cast<const double2*>(p));
    d[0] = v.x; d[1] = v.y;
}
__device__ __forceinline__ void unpack_h(unsigned w, float* d) { d[0] = h2f((unsigned short)(w & 0xffffu)); d[1] = h2f((unsigned short)(w >> 16)); }
__device__ __forceinline__ void unpack_b(unsigned w, float* d) { d[0] = __uint_as_float(w << 16); d[1] = __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ void load_vec(const half_t* p, float* d) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    unpack_h(v.x, d); unpack_h(v.y, d + 2); unpack_h(v.z, d + 4); unpack_h(v.w, d + 6);
}
__device__ __forceinline__ void load_vec(const bf16_t* p, float* d) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    unpack_b(v.x, d); unpack_b(v.y, d + 2); unpack_b(v.z, d + 4); unpack_b(v.w, d + 6);
}

// L consecutive elements in one global load of L * sizeof(T) bytes (4, 8 or 16; the
// caller guarantees that alignment). L == 1 is the scalar load. Rows whose width is not a
// multiple of 16 bytes (OW = 250 in float32) still take 8- or 4-byte loads this way.
template <int L> struct LoadN {
    template <class T, class A> __device__ __forceinline__ static void run(const T* p, A* d) {
        static_assert(L == Traits<T>::VEC, "only 16-byte vectors are generic");
        load_vec(p, d);
    }
};
template <> struct LoadN<1> {
    template <class T, class A> __device__ __forceinline__ static void run(const T* p, A* d) { d[0] = load1(p); }
};
template <> struct LoadN<2> {
    __device__ __forceinline__ static void run(const float* p, float* d) {
        const float2 v = __ldg(reinterpret_cast<const float2*>(p));
        d[0] = v.x; d[1] = v.y;
    }
    __device__ __forceinline__ static void run(const double* p, double* d) { load_vec(p, d); }
    __device__ __forceinline__ static void run(const half_t* p, float* d) { unpack_h(__ldg(reinterpret_cast<const unsigned*>(p)), d); }
    __device__ __forceinline__ static void run(const bf16_t* p, float* d) { unpack_b(__ldg(reinterpret_cast<const unsigned*>(p)), d); }
};
template <> struct LoadN<4> {
    __device__ __forceinline__ static void run(const float* p, float* d) { load_vec(p, d); }
    __device__ __forceinline__ static void run(const half_t* p, float* d) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
        unpack_h(v.x, d); unpack_h(v.y, d + 2);
    }
    __device__ __forceinline__ static void run(const bf16_t* p, float* d) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
        unpack_b(v.x, d); unpack_b(v.y, d + 2);
    }
};
template <int L, class T, class A>
__device__ __forceinline__ void load_n(const T* p, A* d) { LoadN<L>::run(p, d); }

__device__ __forceinline__ void store_vec(float* p, const float* s) {
    *reinterpret_cast<float4*>(p) = make_float4(s[0], s[1], s[2], s[3]);
}
__device__ __forceinline__ void store_vec(double* p, const double* s) {
    *reinterpret_cast<double2*>(p) = make_double2(s[0], s[1]);
}
// Two floats -> one 32-bit word of two 16-bit values, a in the low half (lower address).
__device__ __forceinline__ unsigned pack_h(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));  // first source -> upper half
    return r;
#else
    return (unsigned)f2h(a) | ((unsigned)f2h(b) << 16);
#endif
}
__device__ __forceinline__ unsigned pack_b(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
#else
    return (unsigned)f2b(a) | ((unsigned)f2b(b) << 16);
#endif
}
__device__ __forceinline__ void store_vec(half_t* p, const float* s) {
    *reinterpret_cast<uint4*>(p) = make_uint4(pack_h(s[0], s[1]), pack_h(s[2], s[3]), pack_h(s[4], s[5]), pack_h(s[6], s[7]));
}
__device__ __forceinline__ void store_vec(bf16_t* p, const float* s) {
    *reinterpret_cast<uint4*>(p) = make_uint4(pack_b(s[0], s[1]), pack_b(s[2], s[3]), pack_b(s[4], s[5]), pack_b(s[6], s[7]));
}

// 8- and 4-byte stores of consecutive elements (caller guarantees alignment).
__device__ __forceinline__ void store_8b(float* p, const float* s) { *reinterpret_cast<float2*>(p) = make_float2(s[0], s[1]); }
__device__ __forceinline__ void store_8b(double* p, const double* s) { *p = s[0]; }
__device__ __forceinline__ void store_8b(half_t* p, const float* s) { *reinterpret_cast<uint2*>(p) = make_uint2(pack_h(s[0], s[1]), pack_h(s[2], s[3])); }
__device__ __forceinline__ void store_8b(bf16_t* p, const float* s) { *reinterpret_cast<uint2*>(p) = make_uint2(pack_b(s[0], s[1]), pack_b(s[2], s[3])); }
__device__ __forceinline__ void store_4b(float* p, const float* s) { *p = s[0]; }
__device__ __forceinline__ void store_4b(double* p, const double* s) { *p = s[0]; }
__device__ __forceinline__ void store_4b(half_t* p, const float* s) { *reinterpret_cast<unsigned*>(p) = pack_h(s[0], s[1]); }
__device__ __forceinline__ void store_4b(bf16_t* p, const float* s) { *reinterpret_cast<unsigned*>(p) = pack_b(s[0], s[1]); }

// Store N consecutive results of one output row at p, `valid` of them inside the row.
// Output rows need not start on a 16-byte boundary (OW * itemsize is often not a multiple
// of 16), so the widest access the address allows is chosen at run time; within a warp
// the threads of one row share the alignment, so the branch is uniform there.
template <class T, int N, class A>
__device__ __forceinline__ void store_row(T* p, const A* v, int valid) {
    constexpr int E = (int)sizeof(T);
    constexpr int V16 = 16 / E, V8 = 8 / E > 0 ? 8 / E : 1, V4 = 4 / E > 0 ? 4 / E : 1;
    const unsigned long long addr = reinterpret_cast<unsigned long long>(p);
    if (valid >= N) {
        if (N % V16 == 0 && (addr & 15) == 0) {
#pragma unroll
            for (int k = 0; k < N / V16; ++k) store_vec(p + k * V16, v + k * V16);
            return;
        }
        if (N % V8 == 0 && (addr & 7) == 0) {
#pragma unroll
            for (int k = 0; k < N / V8; ++k) store_8b(p + k * V8, v + k * V8);
            return;
        }
        if (N % V4 == 0 && (addr & 3) == 0) {
#pragma unroll
            for (int k = 0; k < N / V4; ++k) store_4b(p + k * V4, v + k * V4);
            return;
        }
    }
#pragma unroll
    for (int j = 0; j < N; ++j)
        if (j < valid) store1(p + j, v[j]);
}

// Accumulator-typed 16-byte shared-memory vectors (float4 / double2).
template <class A> struct SmemVec;
template <> struct SmemVec<float>  { static constexpr int N = 4; };
template <> struct SmemVec<double> { static constexpr int N = 2; };
__device__ __forceinline__ void lds_vec(const float* p, float* d) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
}
__device__ __forceinline__ void lds_vec(const double* p, double* d) {
    const double2 v = *reinterpret_cast<const double2*>(p);
    d[0] = v.x; d[1] = v.y;
}

// N consecutive staged values (a row segment) from shared memory into registers, in
// 16-byte reads; the caller guarantees 16-byte alignment and N % (16 / sizeof(A)) == 0.
template <class A, int N>
__device__ __forceinline__ void smem_row(const A* p, A (&v)[N]) {
    constexpr int LV = SmemVec<A>::N;
    static_assert(N % LV == 0, "whole 16-byte vectors");
#pragma unroll
    for (int k = 0; k < N / LV; ++k) lds_vec(p + k * LV, &v[k * LV]);
}

// ---- index helpers ---------------------------------------------------------------
// Division by a run-time divisor d >= 1 that stays fixed across a loop, for numerators
// below 2^31: a multiply-high, an add and a shift instead of the ~20 instructions of an
// integer division (round-up multiplier: m = floor(2^32 * (2^l - d) / d) + 1 with
// 2^l >= d; t = mulhi(n, m) <= n, so t + n does not overflow for n < 2^31).
struct FastDiv {
    unsigned m;
    int l;
    __device__ __forceinline__ explicit FastDiv(int d) {
        l = 0;
        while ((1u << l) < (unsigned)d) ++l;
        m = (unsigned)((((1ull << l) - (unsigned)d) << 32) / (unsigned)d + 1);
    }
    __device__ __forceinline__ int operator()(int n) const { return (int)((__umulhi((unsigned)n, m) + (unsigned)n) >> l); }
};
__host__ __device__ constexpr int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
__host__ __device__ constexpr int round_up(int a, int b) { return (a + b - 1) / b * b; }

// A hint to bring the 128-byte block at global address p into L2 (no registers written,
// nothing waited for): the tile kernels' prefetch_rows and conv_rows_async's rows ahead.
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("{\n\t.reg .u64 ga;\n\tcvta.to.global.u64 ga, %0;\n\tprefetch.global.L2 [ga];\n\t}" ::"l"(p));
}

// Work unit u -> (plane q, row tile rt, column tile cg), column tile fastest so that
// neighbouring threads read neighbouring columns. 32-bit division when the unit count
// fits (the common case), 64-bit otherwise: u can pass 2^31 on large tensors.
__device__ __forceinline__ void split_unit(i64 u, i64 n_units, int n_cg, int n_rt, i64& q, int& rt, int& cg) {
    if (n_units <= 0xffffffffLL) {
        const unsigned uu = (unsigned)u;
        const unsigned t = uu / (unsigned)n_cg;
        cg = (int)(uu - t * (unsigned)n_cg);
        const unsigned qq = t / (unsigned)n_rt;
        rt = (int)(t - qq * (unsigned)n_rt);
        q = qq;
    } else {
        const i64 t = u / n_cg;
        cg = (int)(u - t * n_cg);
        q = t / n_rt;
        rt = (int)(t - q * n_rt);
    }
}

// Scalar kernel arguments travel as one struct per kernel family: the host marshals one
// argument instead of fifteen (CuPy's per-argument cost dominates a small launch). Each
// layout is mirrored by a numpy dtype (align=True) in _kernels.ARG_STRUCTS, and the CPU
// test suite compiles static_asserts on every offset and size.
struct TileArgs {
    i64 n_units, IC;
    int IH, IW, OH, OW, off_h, off_w, n_cg, n_rs, n_rt, NT, QC, DIV, R;
};
struct SmemArgs {
    i64 n_tiles, IC;
    int IH, IW, OH, OW, pad_t, pad_l, BH, BW, n_tx, n_ty, P, pitch, QC, DIV, R;
    int RTF;  // thread layout: micro-tiles numbered down the column of tiles (1) or along the row (0)
};
// Where one conv_smem tile reads from (shared memory, one per tile of the block's group):
// x_plane first input plane (-1: past the last tile), w_row first weight row, ih0 / iw0
// the input row and column of the staged tile's corner (negative in the padding).
struct SmemTile {
    i64 x_plane, w_row;
    int ih0, iw0;
};
static_assert(sizeof(SmemTile) == 24, "the host sizes shared memory with 24 bytes per tile (_kernels.SMEM_TILE_DESC)");
struct GenericArgs {
    i64 total, IC;
    int IH, IW, OH, OW, KH, KW, SH, SW, DH, DW, pad_t, pad_l, QC, DIV, R;
};
struct WgradArgs {
    int IH, IW, OH, OW, KH, KW, SH, SW, DH, DW, pad_t, pad_l, n_cg, n_rt, N, C, M, CM, n_chunks;
    int G, n_tkw, xpitch, gpitch;  // wgrad_smem only: row groups, tap tiles along W, smem pitches
};
struct MmaArgs {
    i64 n_tiles, IC;
    int IH, IW, OH, OW, pad_t, pad_l, n_tx, n_ty, QC, DIV, R;
};
struct WmmaArgs {
    i64 units;  // (n, band) items per channel
    int IH, IW, OH, OW, pad_t, pad_l, C, M, CM, n_chunks, BH, n_bands, NC, XP, GOFF, GP;
};
struct BmmaArgs {
    int N, C, n_chunks, IH, IW, OH, OW, PT, PL;
    int XP, XR, GOFF, GP, GR, GT, GX0;  // bwd_mma staging geometry (_kernels.bwd_mma_geometry)
};
struct PlaneArgs {
    i64 n_planes, IC;
    int QC, DIV, R, P;  // channel map; P planes per block
};
struct BatchArgs {
    i64 units, IC;  // units: (chunk of 32 / CG images, group of CG channels), group fastest
    int N, QC, DIV;  // batch items; channel map (R = 1)
};
struct WplaneArgs {
    int N, C, M, CM, n_chunks, G, P;  // G batch items per step, P channels per block
};
struct StackArgs {
    i64 units;  // (16 images, band, column segment, channel)
    int IH, IW, OH, OW, PT, PL, RB, N, C, n_bands, n_cs;
};
struct MrowsArgs {
    i64 units, IC;  // units: (plane, band, column segment)
    int IH, IW, OH, OW, PT, PL, RB, n_bands, n_cs, QC, DIV;  // RB output rows per band
};
struct WstackArgs {
    int N, C, n_chunks, IH, IW, OH, OW, PT, PL;  // the forward's geometry (x: IH x IW)
    int RB, n_bands;                             // x rows per band
};
struct RowsArgs {
    i64 n_units, IC;  // units: (plane, band, column segment)
    int IH, IW, OH, OW, PT, RB, n_bands, n_cs, QC, DIV;  // RB output rows per band
};
struct BwdRowsArgs {
    i64 units;  // per channel: (n, band, column segment)
    int IH, IW, OH, OW, PT, RB, n_bands, n_cs, N, C, n_chunks;  // PT: the forward's top padding
};
struct ReduceArgs {
    int CM, KK, n_chunks, OB;  // OB channels per block (0: one thread per output)
};

// Channel mapping shared by the forward and the grad-input passes.
// Output plane q = n * QC + ch sums R input planes n * IC + (ch / DIV) * R + m (m < R)
// with weight rows ch * R + m:
//   forward:     QC = C*M, IC = C,   DIV = M, R = 1  (output channel o reads input o / M)
//   grad input:  QC = C,   IC = C*M, DIV = 1, R = M  (input channel c gathers its M outputs)
struct PlaneMap {
    i64 in_plane0;  // first input plane
    i64 w_row0;     // first weight row
    int ch;         // channel within the batch item (bias index in the forward)
};
__device__ __forceinline__ PlaneMap map_plane(i64 q, int QC, i64 IC, int DIV, int R) {
    i64 n;
    int ch;
    if (q <= 0xffffffffLL) {  // 32-bit division in the common case
        const unsigned nn = (unsigned)q / (unsigned)QC;
        n = nn;
        ch = (int)((unsigned)q - nn * (unsigned)QC);
    } else {
        n = q / QC;
        ch = (int)(q - n * QC);
    }
    PlaneMap m;
    m.in_plane0 = n * IC + (i64)(ch / DIV) * R;
    m.w_row0 = (i64)ch * R;
    m.ch = ch;
    return m;
}

}  // namespace dw
