// conv_mma: 16-bit depthwise correlations at stride 1 and dilation 1 on tensor cores
// (mma.sync m16n8k16, float32 accumulation; sm_80 and newer).
//
// A depthwise convolution has no channel reduction, so it is not a GEMM by itself. One
// tap row kh of it is: for 16 output rows m and 8 output columns n,
//
//     D[m][n] += sum_k X[m + kh][n0 + k] * B_kh[k][n],   B_kh[k][n] = w[kh][k - n]
//
// where B_kh is a banded (Toeplitz) 16 x 8 matrix, zero outside 0 <= k - n < KW. That is
// one m16n8k16 MMA per (tap row, 16 x 8 output block) when KW <= 9, KS = ceil((7 + KW) / 16)
// MMAs (K = 16 * KS input columns) for wider kernels. Only 8 * KW of every 16 * KS products
// are useful, but the tensor pipe does them 8-16x faster than FFMA issues float32 FMAs,
// and no conversion to float32 is ever issued: this is what lets the 16-bit cases reach
// the half2-rate floor (FFMA with float32 accumulation stops at half of it).
//
// Data flow per block (one output tile of BH x BW = 16*WR x 8*WN of one plane):
//   1. The input tile plus halo is staged in shared memory as 16-bit values, zero
//      outside the plane (the padding), with staged column 0 = input column ow0 - pad_l.
//   2. The Toeplitz fragments of every (kh, k-step) are built once per block in shared
//      memory, laid out so that each lane reads its own 8 bytes (conflict-free).
//   3. Warp w owns output rows 16w..16w+15 and all BW columns: for each tap row it loads
//      the WN + 2*KS - 1 8-column chunks of its 16 input rows with ldmatrix (the A
//      fragment of block j, k-step s is chunks j + 2s and j + 2s + 1: neighbouring output
//      blocks share chunks, so each chunk is read once per tap row), then issues WN * KS
//      MMAs into WN float32 accumulator fragments.
//   4. Accumulators are rounded to 16 bits and stored two columns per lane.
//
// Bytes per output: one input element read (plus halo, served by L2) and one output
// element written, 2 + 2 bytes; shared-memory traffic is KH * (WN + 2KS - 1) * 256 bytes
// per 128 * WN outputs.
#include "common.cuh"

namespace dw {

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(unsigned addr, unsigned& r0, unsigned& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(addr));
}
template <class T> struct Mma;
template <> struct Mma<half_t> {
    static __device__ __forceinline__ void run(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
};
template <> struct Mma<bf16_t> {
    static __device__ __forceinline__ void run(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
};
#endif

// Compile-time geometry of one conv_mma specialization. The host mirrors these
// formulas (_kernels.mma_launch); the kernel checks the shared memory it was given.
template <int KH, int KW, int WN, int WR>
struct MmaTile {
    static constexpr int KS = (7 + KW + 15) / 16;     // k-steps: 8 outputs need 7 + KW columns
    static constexpr int BH = 16 * WR, BW = 8 * WN;   // output tile
    static constexpr int NCH = WN + 2 * KS - 1;       // 8-column chunks per staged row
    static constexpr int TIH = BH + KH - 1;           // staged rows
    static constexpr int TIW = 8 * NCH;               // staged columns (= BW - 8 + 16 * KS)
    // Row pitch in 16-bit elements: an odd number of 16-byte units, so the 8 row
    // addresses of one ldmatrix phase fall in 8 different bank groups.
    static constexpr int PITCH = (NCH % 2) ? TIW : TIW + 8;
    static constexpr int XS_BYTES = TIH * PITCH * 2;  // a multiple of 16
    static constexpr int WT_BYTES = KH * KS * 32 * 8;
    static constexpr int SMEM = XS_BYTES + WT_BYTES;
};

// Eight consecutive 16-bit values starting SHIFT elements into the 16-byte vector lo
// (the rest from hi): a funnel shift of 32-bit words, all selections at compile time.
template <int SHIFT>
__device__ __forceinline__ uint4 funnel(const uint4 lo, const uint4 hi) {
    const unsigned wds[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    unsigned r[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (SHIFT % 2 == 0) r[i] = wds[SHIFT / 2 + i];
        else r[i] = __byte_perm(wds[SHIFT / 2 + i], wds[SHIFT / 2 + i + 1], 0x5432);  // high half, next low half
    }
    return make_uint4(r[0], r[1], r[2], r[3]);
}

// Staged segment (row i, 8 columns from column c) of the tile whose column 0 is input
// column iw0. VIN: IW and the plane base are multiples of 8 elements, so every aligned
// 8-vector lies wholly inside or wholly outside a row; iw0 + c - SHIFT is a multiple of 8
// (the host sets SHIFT = (ow0 - pad_l) mod 8 with ow0 a multiple of 8), and the segment is
// two aligned vector loads funnel-shifted by SHIFT. Otherwise eight checked scalar loads.
template <bool VIN, int SHIFT>
__device__ __forceinline__ uint4 stage_segment(const unsigned short* __restrict__ xp, int ih, int iw, int IH, int IW) {
    if ((unsigned)ih >= (unsigned)IH) return make_uint4(0u, 0u, 0u, 0u);
    const unsigned short* rp = xp + (i64)ih * IW;
    if constexpr (VIN) {
        const int a = iw - SHIFT;
        uint4 lo = make_uint4(0u, 0u, 0u, 0u), hi = lo;
        if ((unsigned)a < (unsigned)IW) lo = __ldg(reinterpret_cast<const uint4*>(rp + a));
        if (SHIFT == 0) return lo;
        if ((unsigned)(a + 8) < (unsigned)IW) hi = __ldg(reinterpret_cast<const uint4*>(rp + a + 8));
        return funnel<SHIFT>(lo, hi);
    } else {
        unsigned e[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) e[j] = (unsigned)(iw + j) < (unsigned)IW ? (unsigned)__ldg(rp + iw + j) : 0u;
        return make_uint4(e[0] | (e[1] << 16), e[2] | (e[3] << 16), e[4] | (e[5] << 16), e[6] | (e[7] << 16));
    }
}

// Template arguments: T half_t or bf16_t; KH KW kernel; WN 8-column output blocks per warp
// (BW = 8 WN); WR warps per block (BH = 16 WR); SHIFT, VIN as in stage_segment; FLIP reads
// the kernel rotated by 180 degrees (grad input at stride 1); MINB blocks per SM the
// registers must allow.
template <class T, int KH, int KW, int WN, int WR, int SHIFT, bool VIN, bool FLIP, int MINB>
__global__ void __launch_bounds__(32 * WR, MINB)
conv_mma(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
         const MmaArgs a) {
    static_assert(sizeof(T) == 2, "tensor-core path: 16-bit storage");
    typedef MmaTile<KH, KW, WN, WR> G;
    static_assert(G::KS <= 4 && WN >= 1 && WN <= 16 && WR >= 1 && WR <= 8 && SHIFT >= 0 && SHIFT < 8, "geometry");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int KS = G::KS, NCH = G::NCH, PITCH = G::PITCH, TIH = G::TIH, NSEG = G::NCH;
    constexpr int NT = 32 * WR;
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, pad_t = a.pad_t, pad_l = a.pad_l;
    const int n_tx = a.n_tx, n_ty = a.n_ty, QC = a.QC, DIV = a.DIV, R = a.R;
    const i64 n_tiles = a.n_tiles, IC = a.IC;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned short* const xs = reinterpret_cast<unsigned short*>(smem_raw);
    uint2* const wt = reinterpret_cast<uint2*>(smem_raw + G::XS_BYTES);
    {
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)G::SMEM) __trap();  // host and kernel disagree on the tile geometry
    }
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    // ldmatrix.x4 address of this lane: lanes 0-15 give rows 0-15 of chunk c, lanes 16-31
    // rows 0-15 of chunk c + 1 (registers: chunk c rows 0-7, 8-15, chunk c+1 rows 0-7, 8-15).
    const unsigned lane_addr = smem_u32(xs) + (unsigned)(((16 * warp + (lane & 15)) * PITCH + 8 * (lane >> 4)) * 2);
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const unsigned short* const xb = reinterpret_cast<const unsigned short*>(x);
    const unsigned short* const wb = reinterpret_cast<const unsigned short*>(w);

    for (i64 z = blockIdx.x; z < n_tiles; z += gridDim.x) {
        const i64 zy = z / n_tx;
        const int tx = (int)(z - zy * n_tx);
        const i64 q = zy / n_ty;
        const int ty = (int)(zy - q * n_ty);
        const PlaneMap pm = map_plane(q, QC, IC, DIV, R);
        const int oh0 = ty * G::BH, ow0 = tx * G::BW;
        const int ih0 = oh0 - pad_t, iw0 = ow0 - pad_l;

        const float b0 = (!FLIP && bias != nullptr) ? load1(bias + pm.ch) : 0.f;
        float acc[WN][4];
#pragma unroll
        for (int j = 0; j < WN; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = b0;

        for (int m = 0; m < R; ++m) {
            __syncthreads();  // the previous tile's (or plane's) readers are done with smem
            // 1. Stage: U segments per thread are loaded before the first store, so each
            //    thread keeps up to 2U 16-byte loads in flight.
            const unsigned short* xp = xb + (pm.in_plane0 + m) * plane_in;
            constexpr int UNITS = TIH * NSEG, U = 4;
            for (int u0 = 0; u0 < UNITS; u0 += NT * U) {
                uint4 v[U];
#pragma unroll
                for (int k = 0; k < U; ++k) {
                    const int u = u0 + k * NT + tid;
                    const int i = u / NSEG, s = u - (u / NSEG) * NSEG;
                    v[k] = u < UNITS ? stage_segment<VIN, SHIFT>(xp, ih0 + i, iw0 + 8 * s, IH, IW) : make_uint4(0u, 0u, 0u, 0u);
                }
#pragma unroll
                for (int k = 0; k < U; ++k) {
                    const int u = u0 + k * NT + tid;
                    const int i = u / NSEG, s = u - (u / NSEG) * NSEG;
                    if (u < UNITS) *reinterpret_cast<uint4*>(xs + i * PITCH + 8 * s) = v[k];
                }
            }
            // 2. Toeplitz fragments. Entry (kh, s, lane) holds this lane's B fragment of
            //    k-step s: b0 = (B[k][n], B[k+1][n]), b1 = (B[k+8][n], B[k+9][n]) with
            //    k = 16 s + 2 (lane % 4), n = lane / 4, B[k][n] = w[kh][k - n].
            const unsigned short* wp = wb + (pm.w_row0 + m) * (KH * KW);
            for (int e = tid; e < KH * KS * 32; e += NT) {
                const int ln = e & 31, kk = e >> 5;
                const int kh = kk / KS, s = kk - (kk / KS) * KS;
                const int d = 16 * s + 2 * (ln & 3) - (ln >> 2);
                unsigned h[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int kw = d + (i & 1) + 8 * (i >> 1);
                    const int src = FLIP ? (KH - 1 - kh) * KW + (KW - 1 - kw) : kh * KW + kw;
                    h[i] = (kw >= 0 && kw < KW) ? (unsigned)__ldg(wp + src) : 0u;
                }
                wt[e] = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
            }
            __syncthreads();

            // 3. Tap rows: chunks of 16 input rows, then WN * KS MMAs.
#pragma unroll (KH <= 8 ? KH : 2)
            for (int kh = 0; kh < KH; ++kh) {
                unsigned c[NCH + 1][2];
                const unsigned ra = lane_addr + (unsigned)(kh * PITCH * 2);
#pragma unroll
                for (int k = 0; k + 1 < NCH; k += 2) ldsm_x4(ra + 16 * k, c[k][0], c[k][1], c[k + 1][0], c[k + 1][1]);
                if (NCH % 2) ldsm_x2(ra + 16 * (NCH - 1), c[NCH - 1][0], c[NCH - 1][1]);
                uint2 b[KS];
#pragma unroll
                for (int s = 0; s < KS; ++s) b[s] = wt[(kh * KS + s) * 32 + lane];
#pragma unroll
                for (int j = 0; j < WN; ++j)
#pragma unroll
                    for (int s = 0; s < KS; ++s)
                        Mma<T>::run(acc[j], c[j + 2 * s][0], c[j + 2 * s][1], c[j + 2 * s + 1][0], c[j + 2 * s + 1][1],
                                    b[s].x, b[s].y);
            }
        }

        // 4. Store: lane holds rows g and g + 8, columns 2 (lane % 4) and +1 of each block.
        T* const yp = y + q * plane_out;
#pragma unroll
        for (int hlf = 0; hlf < 2; ++hlf) {
            const int oh = oh0 + 16 * warp + g + 8 * hlf;
            if (oh >= OH) continue;
            T* const rp = yp + (i64)oh * OW;
#pragma unroll
            for (int j = 0; j < WN; ++j) {
                const int ow = ow0 + 8 * j + 2 * t4;
                const float v2[2] = {acc[j][2 * hlf], acc[j][2 * hlf + 1]};
                store_row<T, 2>(rp + ow, v2, OW - ow);
            }
        }
    }
#else
    __trap();  // the host plans conv_mma only on sm_80 and newer
#endif
}

}  // namespace dw
