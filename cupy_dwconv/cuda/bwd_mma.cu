// bwd_mma: the whole backward of a small 16-bit depthwise kernel (grad_x, grad_weight and
// grad_bias) on tensor cores, in one pass over x and grad_output (mma.sync m16n8k16,
// float32 accumulation; sm_80 and newer). Stride 1, dilation 1, multiplier 1, KH <= 7,
// KW <= 8, whole planes of up to 64 x 64.
//
// Why one kernel: at 16 bits the float32 FMAs of the fused row sweep (bwd_rows) bound the
// backward at the float32 rate (convnext_7x7: 2 x 49 FMAs per element), twice the
// half2-rate floor, and the separate passes read grad_output twice. Here a block stages
// one (x, grad_output) plane pair per item and runs three products on it:
//
// 1. grad_x, as conv_mma's rotated-kernel correlation (mma.cu): warp w owns grad_x rows
//    16w .. 16w + 15; per tap row one ldmatrix chunk row of the staged grad_output and WN *
//    KS MMAs against the Toeplitz table of the rotated kernel (built once per channel);
//    stored straight from the fragments (IW is even: 4-byte pairs).
// 2. grad_bias, in the pass that builds S1 (below): each warp's 256 grad_output elements
//    of an iteration go through one MMA against a B of ones, which adds all of them into
//    column 0 of D (every element once: the pass covers each staged unit once).
// 3. grad_weight, with two grad_output rows per MMA:
//
//        D[(kw, s)][r] += sum_c go[oh + s][c + PL - kw] * xp[oh + r][c]
//
//    (M = 16 rows (kw, s), kw < 8, s < 2; N = 8 input rows r; K = 16 input columns c), and
//    D[(kw, s)][r] belongs to dW[r - s][kw]. B is 8 consecutive staged input rows
//    (ldmatrix). A is banded: lane (g, t) needs the grad_output pair starting at column
//    c0 + 2t + PL - g, which is odd for half the lanes; those read a copy of the staged
//    grad_output shifted by one element (S1, built once per item with byte permutes), so
//    every A register is one aligned 32-bit load. 98 of the 128 products of an MMA are
//    taps of a 7x7 kernel (the formulation with M = tap rows used 49: wgrad_mma).
//    Shared-memory bandwidth bounds the kernel (ncu, convnext_7x7: L1 ~80 % busy):
//    ldmatrix chunks for grad_x (each element once per tap row), A words and B rows here.
//
// Items: the block (b, o) takes the planes n of channel o in chunk b (grid (chunks,
// channels)); they flow through a STAGES-deep ring filled by cp.async (x rows, and
// grad_output rows placed between zero margins: that is the padding of both products), so
// the next planes' loads are in flight while one is computed. Per item: barrier, refill,
// S1 and grad_x, barrier, grad_weight. The weight sums stay in registers for the whole
// chunk; the warps' sums are added in warp order into the chunk's partial row, and the
// last block of a channel adds the rows in chunk order (finish_channel, blocksum.cuh):
// deterministic, like every weight-gradient path here.
//
// Bytes per element of the plane: x read once (2), grad_output read once (2), grad_x
// written once (2): the floor of the backward.
#include "tc.cuh"
#include "blocksum.cuh"

namespace dw {

// Compile-time geometry. The host mirrors the run-time part (_kernels.bwd_mma_geometry);
// the kernel checks the shared memory it was given.
template <int KH, int KW, int WN, int WR, int SHIFT>
struct BmmaTile {
    static constexpr int KS = (SHIFT + 7 + KW + 15) / 16;  // grad_x k-steps (conv_mma's)
    static constexpr int NC = (WN + 1) / 2;                // grad_weight k-steps: 16 NC >= IW
    static constexpr int TAB = KH * KS * 32;               // Toeplitz entries (uint2)
    static constexpr int RED = 160;                        // floats per warp: 128 tap sums, 32 bias
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800  // cp.async (tc.cuh)
template <int GRAN> struct CopyUnit;
template <> struct CopyUnit<2> { typedef unsigned short type; };  // (RowStager<2> copies through registers)
template <> struct CopyUnit<4> { typedef unsigned type; };
template <> struct CopyUnit<8> { typedef uint2 type; };
template <> struct CopyUnit<16> { typedef uint4 type; };

// A rows x cols block of 16-bit elements (rows contiguous in global memory) to shared
// memory at byte address dst, row pitch dpitch elements: cp.async of GRAN bytes (the host
// picks GRAN so that cols, the base pointer and dst allow it; the thread's plan is made
// once per launch), or checked 16-bit loads through registers (GRAN 2).
template <int GRAN>
struct RowStager {
    BlockCopy<typename CopyUnit<GRAN>::type> copy;
    __device__ __forceinline__ RowStager(int rows, int cols, int dpitch)
        : copy(rows, cols / (GRAN / 2), cols / (GRAN / 2), dpitch / (GRAN / 2)) {}
    __device__ __forceinline__ void run(unsigned dst, unsigned short*, const unsigned short* src) const {
        copy.run(dst, reinterpret_cast<const typename CopyUnit<GRAN>::type*>(src));
    }
};
template <>
struct RowStager<2> {
    int rows, cols, dpitch;
    __device__ __forceinline__ RowStager(int r, int c, int p) : rows(r), cols(c), dpitch(p) {}
    __device__ __forceinline__ void run(unsigned, unsigned short* dsh, const unsigned short* src) const {
        for (int u = threadIdx.x; u < rows * cols; u += blockDim.x) {
            const int r = u / cols, c = u - r * cols;
            dsh[r * dpitch + c] = __ldg(src + u);
        }
    }
};
#endif

// Template arguments: T half_t or bf16_t; KH KW kernel; WN 8-column grad_x blocks per
// warp (8 WN >= IW); WR warps (16 WR >= IH and OH); SHIFT the grad_x staging shift (as
// conv_mma's for the rotated problem); XGRAN / GGRAN the copy widths of x / grad_output
// rows in bytes (2: checked loads); STAGES ring depth; MINB blocks per SM.
template <class T, int KH, int KW, int WN, int WR, int SHIFT, int XGRAN, int GGRAN, int STAGES, int MINB>
__global__ void __launch_bounds__(32 * WR, MINB)
bwd_mma(const T* __restrict__ x, const T* __restrict__ go, const T* __restrict__ w, T* __restrict__ gx,
        float* __restrict__ partial, unsigned* __restrict__ counters, T* __restrict__ gw, T* __restrict__ gb,
        const BmmaArgs a) {
    static_assert(sizeof(T) == 2, "tensor-core path: 16-bit storage");
    typedef BmmaTile<KH, KW, WN, WR, SHIFT> G;
    constexpr int KS = G::KS, NC = G::NC, NT = 32 * WR, KK = KH * KW;
    static_assert(KH >= 1 && KH <= 7 && KW >= 1 && KW <= 8, "two grad_output rows and 8 tap columns per MMA");
    static_assert(WN >= 1 && WN <= 8 && WR >= 1 && WR <= 4 && KS <= 2, "whole planes up to 64 x 64");
    static_assert(STAGES >= 2 && STAGES <= 4, "ring depth");
    static_assert(XGRAN == 16 || XGRAN == 4 || XGRAN == 2, "x staging");
    static_assert((GGRAN == 16 && SHIFT < 8) || (GGRAN == 8 && SHIFT < 4) || (GGRAN == 4 && SHIFT < 2) ||
                  (GGRAN == 2 && SHIFT == 0), "grad_output staging");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const int N = a.N, C = a.C, n_chunks = a.n_chunks;
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, PT = a.PT, PL = a.PL;
    const int XP = a.XP, XR = a.XR, GOFF = a.GOFF, GP = a.GP, GR = a.GR, GT = a.GT, GX0 = a.GX0;
    const int OHE = OH + (OH & 1);  // grad_output rows in pairs: row OH of an odd plane is zero
    // Shared memory: STAGES slots of (x rows XR x XP, grad_output rows GR x GP), S1 (the
    // grad_output rows shifted by one element), a zero row, the Toeplitz table, the warps'
    // sums. Only x rows 0 .. XR - 1 (those that meet a grad_output row) are staged: the
    // lanes whose B row lies above or below them read the zero row.
    // SLOT is a multiple of 128 bytes, and S1 starts 64 bytes (mod 128, to 16 bytes) past
    // the bank of the grad_output rows in every slot, so that the weight-gradient A loads
    // of the lanes that read S0 and of those that read S1 (two runs of ~7 words each) fall
    // in different banks (same banks: every such load took two wavefronts).
    const int XBYTES = XR * XP * 2, SLOT = (XBYTES + GR * GP * 2 + 127) / 128 * 128;
    const int S1_OFF = STAGES * SLOT + ((64 + XBYTES + GT * GP * 2) & 127 & ~15);
    const int ZROW_OFF = S1_OFF + OHE * GP * 2, TAB_OFF = ZROW_OFF + XP * 2, RED_OFF = TAB_OFF + G::TAB * 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    {
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)(RED_OFF + WR * G::RED * 4)) __trap();  // host and kernel disagree
    }
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const unsigned sbase = smem_u32(smem_raw);
    unsigned short* const sh = reinterpret_cast<unsigned short*>(smem_raw);
    uint2* const tab = reinterpret_cast<uint2*>(smem_raw + TAB_OFF);
    float* const red = reinterpret_cast<float*>(smem_raw + RED_OFF);
    const unsigned short* const xb = reinterpret_cast<const unsigned short*>(x);
    const unsigned short* const gob = reinterpret_cast<const unsigned short*>(go);
    const unsigned short* const wb = reinterpret_cast<const unsigned short*>(w);
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const RowStager<XGRAN> xcopy(XR, IW, XP);
    const RowStager<GGRAN> gcopy(OH, OW, GP);

    // Zero every staged buffer once: the copies write only the plane's own rows and
    // columns, so the margins (the padding of both products) stay zero for every item.
    for (int u = tid; u < TAB_OFF / 16; u += NT) sts128(sbase + 16u * (unsigned)u, make_uint4(0u, 0u, 0u, 0u));

    // Per-lane addresses (bytes, relative to a slot or to S1).
    // grad_x A (ldmatrix.x4): lanes 0-15 rows 0-15 of chunk j, lanes 16-31 of chunk j + 1.
    const unsigned gx_lane = (unsigned)(((16 * warp + (lane & 15)) * GP + GX0 + 8 * (lane >> 4)) * 2);
    // grad_weight B (ldmatrix.x4 over two k-steps): lanes 8q .. 8q + 7 give rows 0-7 at
    // column 8q (registers: k-step 0 b0, b1, k-step 1 b0, b1).
    const unsigned xw_col = (unsigned)(8 * (lane >> 3) * 2);
    // grad_weight A: this lane's pair starts at staged grad_output column p (row kw = g);
    // an odd p reads S1 at p - 1, which holds the same pair, aligned.
    const int p = GOFF + PL + 2 * t4 - g;
    const bool odd = p & 1;
    const unsigned ones = (unsigned)OneBits<T>::value * 0x10001u;

    for (int o = blockIdx.y; o < C; o += gridDim.y) {
        const int n0 = (int)((i64)N * blockIdx.x / n_chunks), n1 = (int)((i64)N * (blockIdx.x + 1) / n_chunks);
        const int n_items = n1 - n0;
        // The rotated kernel's Toeplitz table of this channel (the previous channel's
        // readers finished before the closing barriers).
        const unsigned short* const wp = wb + (i64)o * KK;
        for (int e = tid; e < G::TAB; e += NT) tab[e] = toeplitz_entry<KH, KW, KS, SHIFT, true>(wp, e);
        __syncthreads();  // the zeroed margins and the table, before any copy or read

        auto stage = [&](int k) {
            if (k < n_items) {
                const i64 pl = (i64)(n0 + k) * C + o;
                const int slot = k % STAGES;
                const unsigned s0 = (unsigned)(slot * SLOT);
                xcopy.run(sbase + s0, sh + s0 / 2, xb + pl * plane_in);
                const unsigned gd = s0 + (unsigned)XBYTES + (unsigned)((GT * GP + GOFF) * 2);
                gcopy.run(sbase + gd, sh + gd / 2, gob + pl * plane_out);
            }
            cp_async_commit();
        };

        float wacc[NC][4], bacc[4];
#pragma unroll
        for (int t = 0; t < NC; ++t) wacc[t][0] = wacc[t][1] = wacc[t][2] = wacc[t][3] = 0.f;
        bacc[0] = bacc[1] = bacc[2] = bacc[3] = 0.f;

        for (int s = 0; s < STAGES - 1; ++s) stage(s);
        for (int k = 0; k < n_items; ++k) {
            cp_async_wait<STAGES - 2>();  // this thread's copies of item k have landed
            __syncthreads();              // ... everyone's; item k - 1's readers are done
            stage(k + STAGES - 1);        // refill the slot item k - 1 used
            const int slot = k % STAGES;
            const unsigned xs = sbase + (unsigned)(slot * SLOT), gs = xs + (unsigned)XBYTES;

            // S1[r][j] = S0[GT + r][j + 1] for the plane's rows: 16 bytes per unit (rows
            // are whole units: GP is a multiple of 8), the last word from the next unit,
            // which the next lane holds (lane 31 loads it: a 4-byte load per lane at a
            // 16-byte stride took four wavefronts). The last row's next row is a zero row of
            // S0 (GR > GT + OH).
            {
                const unsigned src = gs + (unsigned)(GT * GP * 2), dst = sbase + (unsigned)S1_OFF;
                const int units = OH * (GP / 8);
                for (int u0 = tid - lane; u0 < units; u0 += NT) {  // warp-uniform trip count
                    const int u = min(u0 + lane, units - 1);
                    uint4 v = lds128(src + 16u * (unsigned)u);
                    unsigned nx = __shfl_down_sync(0xffffffffu, v.x, 1);
                    if (lane == 31 || u0 + lane + 1 >= units) nx = lds32(src + 16u * (unsigned)u + 16u);
                    // grad_bias: whatever their arrangement, an MMA of the warp's 256
                    // elements against a B of ones adds all of them into column 0 of D.
                    if (u0 + lane >= units) v = make_uint4(0u, 0u, 0u, 0u);
                    Mma<T>::run(bacc, v.x, v.y, v.z, v.w, ones, ones);
                    if (u0 + lane >= units) continue;
                    sts128(dst + 16u * (unsigned)u, make_uint4(__byte_perm(v.x, v.y, 0x5432), __byte_perm(v.y, v.z, 0x5432),
                                                                __byte_perm(v.z, v.w, 0x5432), __byte_perm(v.w, nx, 0x5432)));
                }
            }

            // grad_x.
            {
                float acc[WN][4];
#pragma unroll
                for (int j = 0; j < WN; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
                const unsigned base = gs + gx_lane;
#pragma unroll
                for (int kh = 0; kh < KH; ++kh)
                    toeplitz_row<T, WN, KS>(acc, base + (unsigned)(kh * GP * 2), tab + kh * KS * 32, lane);
                // Lane (g, t4) holds rows g and g + 8, columns 2 t4 and + 1 of each block:
                // 4-byte stores (IW even, so every pair is aligned). (Staging the warp's rows
                // in shared memory for 16-byte stores measured no faster: NOTES, session 18.)
                unsigned short* const xp = reinterpret_cast<unsigned short*>(gx) + ((i64)n0 + k) * C * plane_in +
                                           (i64)o * plane_in;
#pragma unroll
                for (int hlf = 0; hlf < 2; ++hlf) {
                    const int ih = 16 * warp + g + 8 * hlf;
                    if (ih < IH) {
                        unsigned* const rp = reinterpret_cast<unsigned*>(xp + (i64)ih * IW + 2 * t4);
#pragma unroll
                        for (int j = 0; j < WN; ++j)
                            if (8 * j + 2 * t4 < IW) rp[4 * j] = pack2(T(), acc[j][2 * hlf], acc[j][2 * hlf + 1]);
                    }
                }
            }
            __syncthreads();  // S1 complete

            // grad_weight: warp w takes the row pairs w, w + WR, ...
            {
                const unsigned abase = (odd ? sbase + (unsigned)S1_OFF + (unsigned)((p - 1) * 2)
                                            : gs + (unsigned)((GT * GP + p) * 2));
#pragma unroll 2
                for (int pr = warp; 2 * pr < OHE; pr += WR) {
                    const unsigned ra = abase + (unsigned)(2 * pr * GP * 2);
                    // B row lane % 8 of the pair is x row 2 pr + lane % 8 - PT.
                    const int xr = 2 * pr + (lane & 7) - PT;
                    const unsigned rb = ((unsigned)xr < (unsigned)XR ? xs + (unsigned)(xr * XP * 2)
                                                                      : sbase + (unsigned)ZROW_OFF) + xw_col;
#pragma unroll
                    for (int cc = 0; cc < NC; cc += 2) {
                        unsigned bx[4];
                        if (cc + 1 < NC) ldsm_x4(rb + 32 * cc, bx[0], bx[1], bx[2], bx[3]);
                        else ldsm_x2(rb + 32 * cc, bx[0], bx[1]);
#pragma unroll
                        for (int s = 0; s < 2; ++s) {
                            if (cc + s < NC) {
                                const unsigned ad = ra + (unsigned)(32 * (cc + s));
                                Mma<T>::run(wacc[cc + s], lds32(ad), lds32(ad + (unsigned)(GP * 2)), lds32(ad + 16u),
                                            lds32(ad + (unsigned)(GP * 2) + 16u), bx[2 * s], bx[2 * s + 1]);
                            }
                        }
                    }
                }
            }
        }
        cp_async_wait<0>();  // no copy outlives the channel (the ring is reused by the next)

        // Fixed-order sums: each warp's fragments to shared memory, then thread e adds tap
        // e over the warps in index order. Lane (g, t4) holds D[(g, s)][2 t4 + i] in element
        // 2 s + i, which belongs to dW[2 t4 + i - s][g]; the bias is column 0 of the ones
        // product, rows g and g + 8.
        {
            float* const rw = red + warp * G::RED;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = wacc[0][e];
#pragma unroll
                for (int t = 1; t < NC; ++t) v += wacc[t][e];
                rw[4 * lane + e] = v;
            }
            rw[128 + lane] = t4 == 0 ? bacc[0] + bacc[2] : 0.f;
        }
        __syncthreads();
        float* const out = partial + ((i64)o * n_chunks + blockIdx.x) * (KK + 1);
        for (int e = tid; e <= KK; e += NT) {
            float s = 0.f;
            if (e < KK) {
                const int kh = e / KW, kw = e - (e / KW) * KW;
                const int i0 = 4 * (4 * kw + (kh >> 1)) + (kh & 1);            // s = 0, r = kh
                const int i1 = 4 * (4 * kw + ((kh + 1) >> 1)) + 2 + ((kh + 1) & 1);  // s = 1, r = kh + 1
                for (int v = 0; v < WR; ++v) s += red[v * G::RED + i0] + red[v * G::RED + i1];
            } else {
                for (int v = 0; v < WR; ++v)
                    for (int q = 0; q < 8; ++q) s += red[v * G::RED + 128 + 4 * q];
            }
            out[e] = s;
        }
        if (counters != nullptr) finish_channel<T, float>(partial, o, n_chunks, KK, counters, gw, gb);
        __syncthreads();  // red and the table are rewritten for the next channel
    }
#else
    __trap();  // the host plans bwd_mma only on sm_80 and newer
#endif
}

}  // namespace dw
