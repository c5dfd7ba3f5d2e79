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
#include "tc.cuh"
#include "blocksum.cuh"

namespace dw {

// wgrad_tile: KH*KW <= 64. Grid (chunks, channels); each thread walks TH x TW tiles of
// grad_output of one channel (n, row tile, column tile; column tile fastest), keeps all
// KH*KW tap sums and the bias sum in registers, and reads the x window of each tile row
// by row (row-outer, as conv_tile).
// VIN, VGO: elements per load of x and of grad_output (1 scalar, else 4-, 8- or 16-byte
// vectors, the widest the row width and base alignment allow); SHIFT = -pad_l mod VIN;
// PF: prefetch the next unit's rows into L2 while this one computes (0: off).
template <class T, int KH, int KW, int SH, int SW, int DH, int DW, int TH, int TW, int VIN, int SHIFT, int VGO, int MINB,
          int PF>
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
    constexpr int SOFF = VIN > 1 ? SHIFT : 0;
    constexpr int NB = round_up(SOFF + AW::SPAN, VIN);
    static_assert(KK <= 64 && TH * TW <= 64 && NB <= 96, "register budget");
    static_assert(VIN >= 1 && V % VIN == 0 && VGO >= 1 && V % VGO == 0, "a load is a power-of-two part of 16 bytes");
    static_assert(VIN == 1 || ((TW * SW) % VIN == 0 && SHIFT < VIN), "vector loads need tile columns on a vector boundary");
    static_assert(TW % VGO == 0, "vector grad_output loads need whole vectors per tile row");
    __shared__ A red[(256 / 32) * (KK + 1)];

    const i64 units = (i64)N * n_rt * n_cg;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    for (int o = blockIdx.y; o < CM; o += gridDim.y) {
        A acc[KK + 1];
#pragma unroll
        for (int k = 0; k <= KK; ++k) acc[k] = A(0);
        const i64 begin = units * blockIdx.x / n_chunks, end = units * (blockIdx.x + 1) / n_chunks;
        // With PF, units are decoded one ahead so the next unit's rows can be asked for
        // early; without, each unit is decoded where it starts (fewer live registers).
        i64 n = 0;
        int rt = 0, cg = 0;
        if (PF > 0 && begin + threadIdx.x < end) split_unit(begin + threadIdx.x, units, n_cg, n_rt, n, rt, cg);
        for (i64 u = begin + threadIdx.x; u < end; u += blockDim.x) {
            i64 n_next = 0;
            int rt_next = 0, cg_next = 0;
            if constexpr (PF > 0) {
                if (u + blockDim.x < end) {
                    split_unit(u + blockDim.x, units, n_cg, n_rt, n_next, rt_next, cg_next);
                    prefetch_rows<TH>(go + (n_next * CM + o) * plane_out, rt_next * TH, cg_next * TW, OH, OW);
                    prefetch_rows<AH::SPAN>(x + (n_next * C + o / M) * plane_in, rt_next * TH * SH - pad_t,
                                            cg_next * TW * SW - pad_l - SOFF, IH, IW);
                }
            } else {
                split_unit(u, units, n_cg, n_rt, n, rt, cg);
            }
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
                if constexpr (VGO > 1) {
                    // OW is a multiple of VGO: a vector is wholly inside or outside the row.
#pragma unroll
                    for (int k = 0; k < TW / VGO; ++k) {
                        if (ok && ow0 + k * VGO < OW) {
                            load_n<VGO>(rp + k * VGO, &g[t][k * VGO]);
                        } else {
#pragma unroll
                            for (int e = 0; e < VGO; ++e) g[t][k * VGO + e] = A(0);
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
                for_each_tap_in_row<AH, AW, TH, TW, KH, KW>(r, [&](int t, int kh, int kw, int j, int ci) {
                    acc[kh * KW + kw] = fma(g[t][j], buf[SOFF + ci], acc[kh * KW + kw]);
                });
            }
            if constexpr (PF > 0) {
                n = n_next;
                rt = rt_next;
                cg = cg_next;
            }
        }
        block_sum_to<A, KK + 1>(acc, red, partial + ((i64)o * n_chunks + blockIdx.x) * (KK + 1));
    }
}

// wgrad_smem: large kernels at stride 1, dilation 1 (compute-bound: KH*KW FMAs per
// grad_output element). dW is the correlation of x with grad_output, so threads own tap
// micro-tiles of TKH x TKW taps instead of output tiles. Grid (chunks, channels): a block
// walks the planes n of its chunk of one channel, staging each x plane (with its zero
// padding) and grad_output plane (with TKH-1 zero rows on top) in shared memory.
//
// Reuse: with a "base row" B, tap row kh0+i pairs x row B+kh0 with grad_output row B-i.
// So for each B a thread reads ONE staged x row segment and TKH grad_output row segments;
// the grad_output reads are the same address for every thread of the block (broadcast),
// and the 8 lanes of a quarter-warp read one x row at consecutive 16-byte offsets
// (conflict-free with TKW = 4). Per B and U columns: (U+TKW-1)/4 + TKH*U/4 vector reads
// for TKH*TKW*U FMAs. G row groups split the B range; their sums are added in a fixed
// order at the end, so the result is deterministic.
// Bytes: x and grad_output are read once from DRAM per block (each block owns distinct
// planes); partials as wgrad_tile.
//
// ASYNC (sm_80+, no conversion): the planes are double-buffered. The zeros of both stages
// (padding, the grad_output rows above and below, the pitch tails) are written once per
// channel; plane n + 1 is copied in by cp.async (only the plane itself) while plane n's
// FMAs run, so the block no longer waits a memory latency per plane (replk_13x13 float32:
// long-scoreboard stalls were 27 % of the samples) and the copy costs ~12 instructions
// per element instead of a division and two tests.
template <class T, int TKH, int TKW, int U, bool ASYNC>
__global__ void __launch_bounds__(256, 1)
wgrad_smem(const T* __restrict__ x, const T* __restrict__ go, typename Traits<T>::acc* __restrict__ partial,
           const WgradArgs a) {
    typedef typename Traits<T>::acc A;
    constexpr int LV = SmemVec<A>::N;
    constexpr int XS = round_up(U + TKW - 1, LV);
    static_assert(U % LV == 0 && TKW % LV == 0, "16-byte shared-memory reads");
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, KH = a.KH, KW = a.KW, pad_t = a.pad_t, pad_l = a.pad_l;
    const int N = a.N, C = a.C, M = a.M, CM = a.CM, n_chunks = a.n_chunks;
    const int G = a.G, n_tkw = a.n_tkw, xpitch = a.xpitch, gpitch = a.gpitch;
    const int KK = KH * KW;
    const int n_tkh = (KH + TKH - 1) / TKH;
    const int n_tt = n_tkh * n_tkw;
    const int KHP = n_tkh * TKH;
    const int NB = OH + TKH - 1;        // base rows B = oh + i, for oh < OH and i < TKH
    const int XR = OH + KHP - 1;        // staged x rows (x row r - pad_t)
    const int GR = OH + 2 * (TKH - 1);  // staged grad_output rows: TKH-1 zero rows above and below
    const int OWP = (OW + U - 1) / U * U;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* const xs = reinterpret_cast<A*>(smem_raw);
    A* const gs = xs + (i64)XR * xpitch;
    A* const red = xs;  // reduction scratch, reused once the last plane is consumed

    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int tt = tid % n_tt, g = tid / n_tt;
    const bool active = g < G;
    const int kh0 = (tt / n_tkw) * TKH, kw0 = (tt % n_tkw) * TKW;
    // This group's base rows: a contiguous share of [0, NB).
    const int b_lo = (int)((i64)NB * g / G), b_hi = (int)((i64)NB * (g + 1) / G);
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const int n_per = (N + n_chunks - 1) / n_chunks;
    // The staging loop divides every element's index by the row pitches (the staged
    // planes are far below 2^31 elements).
    const FastDiv xdiv(xpitch), gdiv(gpitch);

    for (int o = blockIdx.y; o < CM; o += gridDim.y) {
        A acc[TKH][TKW];
#pragma unroll
        for (int i = 0; i < TKH; ++i)
#pragma unroll
            for (int j = 0; j < TKW; ++j) acc[i][j] = A(0);
        A bias_sum = A(0);
        const int n_begin = blockIdx.x * n_per, n_end = min(N, n_begin + n_per);
        // One staged plane pair's FMAs: for each base row B, one x row segment and TKH
        // grad_output row segments (row B - i, staged at row B - i + TKH - 1).
        auto plane_fma = [&](const A* xsb, const A* gsb) {
            for (int B = b_lo; B < b_hi; ++B) {
                const A* xrow = xsb + (i64)(B + kh0) * xpitch + kw0;
                for (int c0 = 0; c0 < OWP; c0 += U) {
                    A xv[XS];
                    smem_row<A, XS>(xrow + c0, xv);
#pragma unroll
                    for (int i = 0; i < TKH; ++i) {
                        A gv[U];
                        smem_row<A, U>(gsb + (i64)(B - i + TKH - 1) * gpitch + c0, gv);
#pragma unroll
                        for (int u = 0; u < U; ++u)
#pragma unroll
                            for (int j = 0; j < TKW; ++j) acc[i][j] = fma(gv[u], xv[u + j], acc[i][j]);
                    }
                }
            }
        };
        if constexpr (ASYNC) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
            const int stage = XR * xpitch + GR * gpitch;  // one plane pair: x rows, then grad_output rows
            const int x_rows = min(IH, XR - pad_t), x_cols = min(IW, xpitch - pad_l);
            __syncthreads();  // the previous channel's reduction (red = xs) is read
            for (int e = tid; e < 2 * stage; e += nthreads) xs[e] = A(0);
            __syncthreads();  // the zeros land before any copy into the same rows
            const unsigned base = smem_u32(xs);
            auto issue = [&](int n, int b) {
                const A* xp = reinterpret_cast<const A*>(x) + ((i64)n * C + o / M) * plane_in;
                const A* gp = reinterpret_cast<const A*>(go) + ((i64)n * CM + o) * plane_out;
                const unsigned sb = base + (unsigned)(b * stage * (int)sizeof(A));
                cp_async_block<A>(sb + (unsigned)((pad_t * xpitch + pad_l) * (int)sizeof(A)), xp, x_rows, x_cols, IW, xpitch);
                cp_async_block<A>(sb + (unsigned)((XR * xpitch + (TKH - 1) * gpitch) * (int)sizeof(A)), gp, OH, OW, OW, gpitch);
            };
            if (n_begin < n_end) issue(n_begin, 0);
            cp_async_commit();
            for (int n = n_begin; n < n_end; ++n) {
                const int b = (n - n_begin) & 1;
                if (n + 1 < n_end) issue(n + 1, b ^ 1);  // its stage was last read before the barrier below
                cp_async_commit();
                cp_async_wait<1>();  // this thread's copies of plane n have landed
                __syncthreads();     // and every thread's
                const A* xsb = xs + b * stage;
                const A* gsb = xsb + XR * xpitch;
                for (int k = tid; k < OH * OW; k += nthreads) {
                    const int r = k / OW;  // (a few per thread and plane)
                    bias_sum += gsb[(r + TKH - 1) * gpitch + (k - r * OW)];
                }
                if (active) plane_fma(xsb, gsb);
                __syncthreads();  // stage b is free for plane n + 2
            }
            cp_async_wait<0>();
#else
            __trap();  // the host plans ASYNC for sm_80+ only
#endif
        } else {
            for (int n = n_begin; n < n_end; ++n) {
                const T* xp = x + ((i64)n * C + o / M) * plane_in;
                const T* gp = go + ((i64)n * CM + o) * plane_out;
                __syncthreads();  // the previous plane's readers are done
                // Stage with several loads in flight per thread before the stores.
                const int xtotal = XR * xpitch, gtotal = GR * gpitch;
                for (int e0 = tid; e0 < xtotal + gtotal; e0 += 8 * nthreads) {
                    A v[8];
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const int e = e0 + k * nthreads;
                        A val = A(0);
                        if (e < xtotal) {
                            const int r = xdiv(e), c = e - r * xpitch;
                            const int ih = r - pad_t, iw = c - pad_l;
                            if ((unsigned)ih < (unsigned)IH && (unsigned)iw < (unsigned)IW) val = load1(xp + (i64)ih * IW + iw);
                        } else if (e < xtotal + gtotal) {
                            const int f = e - xtotal;
                            const int r = gdiv(f), c = f - r * gpitch;
                            const int oh = r - (TKH - 1);
                            if (oh >= 0 && oh < OH && c < OW) {
                                val = load1(gp + (i64)oh * OW + c);
                                bias_sum += val;  // each element is staged by exactly one thread
                            }
                        }
                        v[k] = val;
                    }
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const int e = e0 + k * nthreads;
                        if (e < xtotal + gtotal) xs[e] = v[k];  // gs follows xs contiguously
                    }
                }
                __syncthreads();
                if (active) plane_fma(xs, gs);
            }
        }
        // Fixed-order reduction over the G groups, then the block's bias sum.
        __syncthreads();
        if (active) {
#pragma unroll
            for (int i = 0; i < TKH; ++i)
#pragma unroll
                for (int j = 0; j < TKW; ++j) red[((i64)g * n_tt + tt) * (TKH * TKW) + i * TKW + j] = acc[i][j];
        }
        __syncthreads();
        A* out = partial + ((i64)o * n_chunks + blockIdx.x) * (KK + 1);
        for (int k = tid; k < n_tt * TKH * TKW; k += nthreads) {
            const int t2 = k / (TKH * TKW), ij = k - t2 * (TKH * TKW);
            const int kh = (t2 / n_tkw) * TKH + ij / TKW, kw = (t2 % n_tkw) * TKW + ij % TKW;
            if (kh >= KH || kw >= KW) continue;
            A s2 = A(0);
            for (int gg = 0; gg < G; ++gg) s2 += red[((i64)gg * n_tt + t2) * (TKH * TKW) + ij];
            out[kh * KW + kw] = s2;
        }
        A bs[1] = {bias_sum};
        __syncthreads();
        block_sum_to<A, 1>(bs, red, out + KK);
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

// wgrad_reduce: stage 2. Output (channel o, tap or bias k) = the sum of its n_chunks
// partials in chunk order (the same order on every run: deterministic).
// OB > 0: a block owns OB consecutive channels, whose partials are one contiguous run of
// OB * n_chunks * (KK+1) values; it copies the run into shared memory with up to 8 loads
// in flight per thread (the host sizes OB so that one round of loads covers it), then
// each thread sums its outputs from shared memory. A thread that summed straight from
// global memory waited one memory latency per chunk (about 6 us for convnext_7x7_s4's
// 8 chunks: as long as its whole first stage). OB == 0 (rows too long for shared memory):
// one thread per output, summing from global memory.
template <class T>
__global__ void __launch_bounds__(256)
wgrad_reduce(const typename Traits<T>::acc* __restrict__ partial, T* __restrict__ gw, T* __restrict__ gb,
             const ReduceArgs a) {
    const int CM = a.CM, KK = a.KK, n_chunks = a.n_chunks, OB = a.OB;
    typedef typename Traits<T>::acc A;
    auto emit = [&](i64 o, int k, A s) {
        if (k < KK) {
            if (gw != nullptr) store1(gw + o * KK + k, s);
        } else if (gb != nullptr) {
            store1(gb + o, s);
        }
    };
    if (OB > 0) {
        extern __shared__ __align__(16) unsigned char smem_raw[];
        A* const buf = reinterpret_cast<A*>(smem_raw);
        const int row = n_chunks * (KK + 1);            // partials of one channel
        const i64 o0 = (i64)blockIdx.x * OB;
        const int nob = (int)min((i64)OB, CM - o0);
        const int total = nob * row;                    // <= the host's shared-memory budget
        const A* src = partial + o0 * row;
        constexpr int U = 8;
        for (int e0 = threadIdx.x; e0 < total; e0 += U * blockDim.x) {
            A v[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int e = e0 + u * blockDim.x;
                if (e < total) v[u] = src[e];
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int e = e0 + u * blockDim.x;
                if (e < total) buf[e] = v[u];
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < nob * (KK + 1); e += blockDim.x) {
            const int ob = e / (KK + 1), k = e - ob * (KK + 1);
            const A* p = buf + ob * row + k;
            A s = A(0);
            for (int c = 0; c < n_chunks; ++c) s += p[c * (KK + 1)];
            emit(o0 + ob, k, s);
        }
        return;
    }
    const i64 total = (i64)CM * (KK + 1);
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const i64 o = idx / (KK + 1);
        const int k = (int)(idx - o * (KK + 1));
        const A* p = partial + o * n_chunks * (KK + 1) + k;
        A s = A(0);
        for (int c = 0; c < n_chunks; ++c) s += p[(i64)c * (KK + 1)];
        emit(o, k, s);
    }
}

}  // namespace dw
