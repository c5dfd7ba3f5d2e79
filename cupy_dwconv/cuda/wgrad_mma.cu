// wgrad_mma: weight and bias gradients of 16-bit depthwise convolutions at stride 1 and
// dilation 1 on tensor cores (mma.sync m16n8k16, float32 accumulation; sm_80 and newer).
// Stage 1 of the deterministic two-stage reduction documented in wgrad.cu: it writes one
// partial row per (channel, chunk) block, and wgrad_reduce (wgrad.cu) sums the chunks.
//
// With xp the zero-padded input plane and g the grad_output plane of one channel,
//
//     dW[kh][kw] = sum_oh sum_c xp[oh + kh][c] * g[oh][c - kw]
//
// (c = ow + kw is the padded input column). For one grad_output row oh this is one GEMM
// with M = 16 tap rows, N = 8 tap columns and K = 16 input columns per step:
//
//     D[kh][kw] += sum_k A[kh][k] * B[k][kw],  A[kh][k] = xp[oh + kh][c0 + k],
//                                              B[k][kw] = g[oh][c0 + k - kw]
//
// A is a 16 x 16 block of the staged input (16 consecutive rows: ldmatrix), and B is a
// banded (Toeplitz) matrix built from one grad_output row: every lane needs the pairs
// g[p], g[p + 1] and g[p + 8], g[p + 9] at a lane-dependent p, which it assembles from
// four aligned 32-bit shared-memory words with two byte permutes (p may be odd). The
// accumulators stay put for the whole reduction over (n, oh, c), so each warp ends with
// its share of dW in registers. A k-step costs about a dozen instructions (ldmatrix, four
// 32-bit loads, two permutes, the MMAs) and yields KH*KW*16 useful products, so it beats
// float32 FMAs for large kernels only: the host takes it for more than 64 taps (for a
// 3x3 kernel 9 of 128 tap slots are used, and wgrad_tile measured faster).
//
// Bias for free: A rows kh >= KH read a row of ones instead of input, so D[KH][0] is the
// sum of the grad_output row (every g[oh][ow] meets kw = 0 exactly once). The number of
// M blocks is KH / 16 + 1, so there always is such a row.
//
// Data flow: grid (chunks, channels). Block (b, o) owns a contiguous range of the
// (n, band) items of channel o (a band is BH grad_output rows of one plane); items flow
// through a STAGES-deep shared-memory ring filled by cp.async (16- or 4-byte copies,
// zero-filled outside the plane: that is the padding; 2 = checked loads through
// registers), so the next item's loads are in flight while one is computed. Warp w takes
// band rows w, w + WR, ...; at the end the warps' accumulators are added in warp order.
// Work assignment and reduction order depend on the launch geometry only, so two runs
// give identical bits.
//
// Bytes: x and grad_output are read once from DRAM (band halos of KH - 1 input rows come
// from L2); partials are C*M*chunks*(KH*KW+1) floats, negligible.
#include "tc.cuh"

namespace dw {

// Runtime geometry (host: _kernels.wgrad_mma_geometry, which computes the same numbers).
//   NC    16-column k-steps per row: 16 NC >= SHIFT + OW + KW - 1
//   XP    staged input row pitch in elements, 16 NC + 8 (an odd number of 16-byte units,
//         so the 8 row addresses of one ldmatrix phase fall in 8 bank groups)
//   GOFF  staged grad_output column of ow = 0 (zeros before it and after OW; a multiple
//         of 8 and >= SHIFT + 8 NNB - 1, so every B index is >= 0)
//   GP    staged grad_output row pitch, GOFF + 16 NC + 8
template <int KH, int KW, int WR>
struct WmmaTile {
    static constexpr int NMB = KH / 16 + 1;     // M blocks (tap rows KH.. read the ones row)
    static constexpr int NNB = (KW + 7) / 8;    // N blocks
    static constexpr int NT = 32 * WR;
    // Independent accumulator sets, used by consecutive k-steps in turn: with one M and
    // one N block every MMA of a warp would wait for the previous one (same accumulator).
    static constexpr int NACC = NMB * NNB == 1 ? 4 : (NMB * NNB == 2 ? 2 : 1);
};

// Template arguments: T half_t or bf16_t; KH KW kernel (KH <= 31, KW <= 32); WR warps per
// block; SHIFT staged input columns before input column -pad_l (so aligned copies read
// aligned addresses); XGRAN / GGRAN staging copy width in bytes for the input / grad_output
// rows (16, 4, or 2 = checked loads; the host picks them from the row widths and the base
// pointers); STAGES ring depth; MINB blocks per SM the registers must allow.
template <class T, int KH, int KW, int WR, int SHIFT, int XGRAN, int GGRAN, int STAGES, int MINB>
__global__ void __launch_bounds__(32 * WR, MINB)
wgrad_mma(const T* __restrict__ x, const T* __restrict__ go, float* __restrict__ partial, const WmmaArgs a) {
    static_assert(sizeof(T) == 2, "tensor-core path: 16-bit storage");
    typedef WmmaTile<KH, KW, WR> G;
    constexpr int NMB = G::NMB, NNB = G::NNB, NT = G::NT, NACC = G::NACC;
    static_assert(KH >= 1 && KH <= 31 && KW >= 1 && KW <= 32, "kernel size");
    static_assert(WR >= 1 && WR <= 8 && STAGES >= 2 && STAGES <= 4, "geometry");
    static_assert((XGRAN == 16 && SHIFT < 8) || (XGRAN == 4 && SHIFT < 2) || (XGRAN == 2 && SHIFT == 0), "staging");
    static_assert(GGRAN == 16 || GGRAN == 4 || GGRAN == 2, "staging");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, pad_t = a.pad_t, pad_l = a.pad_l;
    const int C = a.C, M = a.M, CM = a.CM, n_chunks = a.n_chunks;
    const int BH = a.BH, n_bands = a.n_bands, NC = a.NC, XP = a.XP, GOFF = a.GOFF, GP = a.GP;
    const i64 units = a.units;  // items per channel: N * n_bands
    const int TIH = BH + KH - 1;
    const int XS_BYTES = TIH * XP * 2, GS_BYTES = BH * GP * 2, SLOT = XS_BYTES + GS_BYTES;
    const int ONES_OFF = STAGES * SLOT, RED_OFF = ONES_OFF + 32 * NC;
    constexpr int RED_W = 16 * NMB * 8 * NNB;  // floats per warp in the reduction scratch

    extern __shared__ __align__(16) unsigned char smem_raw[];
    {
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)(RED_OFF + WR * RED_W * 4)) __trap();  // host and kernel disagree
    }
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const unsigned sbase = smem_u32(smem_raw);
    unsigned short* const sh = reinterpret_cast<unsigned short*>(smem_raw);
    float* const red = reinterpret_cast<float*>(smem_raw + RED_OFF);
    const unsigned short* const xb = reinterpret_cast<const unsigned short*>(x);
    const unsigned short* const gb = reinterpret_cast<const unsigned short*>(go);
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;

    // Once per block: the zero margins of every staged grad_output row (copies only ever
    // write columns GOFF .. GOFF + OW - 1) and the row of ones.
    for (int r = warp; r < STAGES * BH; r += WR) {
        const int s = r / BH, i = r - (r / BH) * BH;
        unsigned short* const row = sh + (s * SLOT + XS_BYTES) / 2 + i * GP;
        for (int c = lane; c < GOFF; c += 32) row[c] = 0;
        for (int c = GOFF + OW + lane; c < GP; c += 32) row[c] = 0;
    }
    for (int e = tid; e < 16 * NC; e += NT) sh[ONES_OFF / 2 + e] = OneBits<T>::value;

    // Per-lane constants. A: lanes 0-15 address rows 0-15 of a 16 x 16 block at column
    // c0, lanes 16-31 the same rows at c0 + 8 (registers: a0..a3 of m16n8k16). Rows
    // kh >= KH point at the ones row.
    int a_kh[NMB];
#pragma unroll
    for (int mb = 0; mb < NMB; ++mb) a_kh[mb] = 16 * mb + (lane & 15);
    const unsigned a_col = (unsigned)(16 * (lane >> 4));  // bytes
    // B: this lane's pair starts at staged grad_output column
    //   p = 16 cc + 2 t4 - g - SHIFT - 8 nb + GOFF  (>= 0 by the choice of GOFF);
    // words q = p / 2 and q + 1 hold it, shifted by one element when p is odd.
    const int p0 = 2 * t4 - g - SHIFT + GOFF;
    const unsigned b_off = (unsigned)((p0 >> 1) * 4);
    const unsigned sel = (p0 & 1) ? 0x5432u : 0x3210u;

    for (int o = blockIdx.y; o < CM; o += gridDim.y) {
        const i64 u0 = units * blockIdx.x / n_chunks, u1 = units * (blockIdx.x + 1) / n_chunks;
        const i64 n_items = u1 - u0;
        float acc[NACC][NMB][NNB][4];
#pragma unroll
        for (int t = 0; t < NACC; ++t)
#pragma unroll
            for (int mb = 0; mb < NMB; ++mb)
#pragma unroll
                for (int nb = 0; nb < NNB; ++nb)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[t][mb][nb][e] = 0.f;
        // Items are consecutive (n, band) pairs: counters advance by one item at a time
        // (no division per item). st_*: the next item to stage; r0: the item computed.
        i64 st_n = u0 / n_bands;
        int st_band = (int)(u0 - st_n * n_bands);
        int cm_band = st_band;

        // Stage item k into ring slot k % STAGES: one cp.async group per call (empty past
        // the end, so group counting stays uniform). Warp w copies rows w, w + WR, ...
        // (no division per copy). Input rows and columns outside the plane are zero-filled;
        // grad_output rows past OH are not staged (no warp reads them).
        auto stage = [&](i64 k) {
            if (k < n_items) {
                const i64 n = st_n;
                const int r0 = st_band * BH;
                if (++st_band == n_bands) {
                    st_band = 0;
                    ++st_n;
                }
                const unsigned short* xp = xb + (n * C + o / M) * plane_in;
                const unsigned short* gp = gb + (n * CM + o) * plane_out;
                const int slot = (int)(k % STAGES);
                const unsigned xdst = sbase + (unsigned)(slot * SLOT);
                const unsigned gdst = xdst + (unsigned)XS_BYTES;
                const int c0 = -pad_l - SHIFT;
                for (int i = warp; i < TIH; i += WR) {
                    const int ih = r0 - pad_t + i;
                    const bool row_ok = (unsigned)ih < (unsigned)IH;
                    const unsigned short* rp = xp + (i64)(row_ok ? ih : 0) * IW;
                    if constexpr (XGRAN == 16) {
                        for (int c = lane; c < 2 * NC; c += 32) {
                            const int col = c0 + 8 * c;
                            const bool ok = row_ok && (unsigned)col < (unsigned)IW;
                            cp_async16(xdst + (unsigned)((i * XP + 8 * c) * 2), ok ? rp + col : xp, ok ? 16 : 0);
                        }
                    } else if constexpr (XGRAN == 4) {
                        for (int c = lane; c < 8 * NC; c += 32) {
                            const int col = c0 + 2 * c;
                            const bool ok = row_ok && (unsigned)col < (unsigned)IW;
                            cp_async4(xdst + (unsigned)((i * XP + 2 * c) * 2), ok ? rp + col : xp, ok ? 4 : 0);
                        }
                    } else {
                        unsigned short* xs = sh + (slot * SLOT) / 2 + i * XP;
                        for (int c = lane; c < 16 * NC; c += 32) {
                            const int col = c0 + c;
                            xs[c] = (row_ok && (unsigned)col < (unsigned)IW) ? __ldg(rp + col) : (unsigned short)0;
                        }
                    }
                }
                const int rows = min(BH, OH - r0);
                for (int i = warp; i < rows; i += WR) {
                    const unsigned short* rp = gp + (i64)(r0 + i) * OW;
                    if constexpr (GGRAN == 16) {
                        for (int c = lane; c < OW / 8; c += 32)
                            cp_async16(gdst + (unsigned)((i * GP + GOFF + 8 * c) * 2), rp + 8 * c, 16);
                    } else if constexpr (GGRAN == 4) {
                        for (int c = lane; c < OW / 2; c += 32)
                            cp_async4(gdst + (unsigned)((i * GP + GOFF + 2 * c) * 2), rp + 2 * c, 4);
                    } else {
                        unsigned short* gs = sh + (slot * SLOT + XS_BYTES) / 2 + i * GP + GOFF;
                        for (int c = lane; c < OW; c += 32) gs[c] = __ldg(rp + c);
                    }
                }
            }
            cp_async_commit();
        };

        for (int s = 0; s < STAGES - 1; ++s) stage(s);
        for (i64 k = 0; k < n_items; ++k) {
            cp_async_wait<STAGES - 2>();  // this thread's copies of item k have landed
            __syncthreads();              // ... everyone's (and the margins and ones row, on the
                                          // first item); item k-1's readers are done
            stage(k + STAGES - 1);        // refill the slot item k-1 used
            const int r0 = cm_band * BH;
            if (++cm_band == n_bands) cm_band = 0;
            const int rows = min(BH, OH - r0);
            const int slot = (int)(k % STAGES);
            const unsigned xs_addr = sbase + (unsigned)(slot * SLOT);
            const unsigned gs_addr = xs_addr + (unsigned)XS_BYTES + b_off;
            for (int i = warp; i < rows; i += WR) {
                unsigned ra[NMB];
#pragma unroll
                for (int mb = 0; mb < NMB; ++mb)
                    ra[mb] = (a_kh[mb] < KH ? xs_addr + (unsigned)((i + a_kh[mb]) * XP * 2) : sbase + (unsigned)ONES_OFF) + a_col;
                const unsigned rb = gs_addr + (unsigned)(i * GP * 2);
                // One k-step: A blocks of the staged input, B fragments of grad_output row
                // i, NMB * NNB MMAs into accumulator set t.
                auto kstep = [&](int cc, float (&at)[NMB][NNB][4]) {
                    unsigned af[NMB][4];
#pragma unroll
                    for (int mb = 0; mb < NMB; ++mb) ldsm_x4(ra[mb] + 32 * cc, af[mb][0], af[mb][1], af[mb][2], af[mb][3]);
#pragma unroll
                    for (int nb = 0; nb < NNB; ++nb) {
                        // Words q, q + 1 (pair at p) and q + 4, q + 5 (pair at p + 8).
                        const unsigned ad = rb + (unsigned)(32 * cc) - (unsigned)(16 * nb);
                        const unsigned b0 = __byte_perm(lds32(ad), lds32(ad + 4), sel);
                        const unsigned b1 = __byte_perm(lds32(ad + 16), lds32(ad + 20), sel);
#pragma unroll
                        for (int mb = 0; mb < NMB; ++mb)
                            Mma<T>::run(at[mb][nb], af[mb][0], af[mb][1], af[mb][2], af[mb][3], b0, b1);
                    }
                };
                int cc = 0;
                for (; cc + NACC <= NC; cc += NACC) {
#pragma unroll
                    for (int t = 0; t < NACC; ++t) kstep(cc + t, acc[t]);
                }
#pragma unroll
                for (int t = 0; t < NACC - 1; ++t)
                    if (cc + t < NC) kstep(cc + t, acc[t]);
            }
        }
        cp_async_wait<0>();  // no copy outlives the channel (the ring is reused by the next)

        // Fixed-order reduction: each warp's tile to shared memory, then the warps are
        // added in index order. Lane (g, t4) holds rows g and g + 8 of each M block,
        // columns 2 t4 and 2 t4 + 1 of each N block.
        float* const rw = red + warp * RED_W;
#pragma unroll
        for (int mb = 0; mb < NMB; ++mb)
#pragma unroll
            for (int nb = 0; nb < NNB; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = 16 * mb + g + 8 * (e >> 1), col = 8 * nb + 2 * t4 + (e & 1);
                    float v = acc[0][mb][nb][e];
#pragma unroll
                    for (int t = 1; t < NACC; ++t) v += acc[t][mb][nb][e];  // sets in a fixed order
                    rw[row * (8 * NNB) + col] = v;
                }
        __syncthreads();
        float* const out = partial + ((i64)o * n_chunks + blockIdx.x) * (KH * KW + 1);
        for (int e = tid; e <= KH * KW; e += NT) {
            // e < KH*KW: tap (e / KW, e % KW); e == KH*KW: the bias, row KH column 0.
            const int kh = e / KW, kw = e - (e / KW) * KW;
            const int idx = kh * (8 * NNB) + kw;
            float s = 0.f;
            for (int w = 0; w < WR; ++w) s += red[w * RED_W + idx];
            out[e] = s;
        }
        __syncthreads();  // red is rewritten by the next channel
    }
#else
    __trap();  // the host plans wgrad_mma only on sm_80 and newer
#endif
}

}  // namespace dw
