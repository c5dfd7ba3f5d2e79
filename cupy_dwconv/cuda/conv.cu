// Depthwise convolution kernels that produce one output plane per (batch item, channel):
// the forward pass, and the grad-input pass (which is the same kind of problem: each
// grad_x plane gathers its M grad_output planes through the kernel).
//
//   conv_tile    small kernels (KH*KW <= 64): register micro-tiles, inputs straight from
//                global memory, every index known at compile time.
//   conv_smem    large kernels: the input tile staged once in shared memory, row-outer
//                register blocking, weights read as shared-memory broadcasts.
//   conv_generic any shape: runtime kernel geometry, one thread per output.
//
// Bytes per output: the forward reads each input element once from DRAM and writes each
// output once, so it costs (1/(SH*SW) + 1) elements of DRAM traffic per output; halo
// re-reads between neighbouring tiles are served by L1/L2.
#include "tile.cuh"
#include "tc.cuh"

namespace dw {

// Accumulate one input plane into a TH x TW register tile (row-outer: row r of the tile's
// window feeds every (output row t, tap row kh) pair with AH::at(t, kh) == r, all resolved
// at compile time, so the unrolled body is FMAs on registers).
template <class T, int MODE, int KH, int KW, int SH, int SW, int DH, int DW, int TH, int TW,
          int PTR, int PLR, int VIN, int SOFF, int NB>
__device__ __forceinline__ void tile_accumulate(const T* __restrict__ xp, const typename Traits<T>::acc (&wr)[KH * KW],
                                                int r0, int c0, int IH, int IW,
                                                typename Traits<T>::acc (&acc)[TH][TW]) {
    typedef typename Traits<T>::acc A;
    typedef Axis<MODE, KH, SH, DH, TH, PTR> AH;
    typedef Axis<MODE, KW, SW, DW, TW, PLR> AW;
#pragma unroll
    for (int r = 0; r < AH::SPAN; ++r) {
        A buf[NB];
        load_row<T, VIN, NB, AW::SPAN>(xp, r0 + r, c0, IH, IW, buf);
        for_each_tap_in_row<AH, AW, TH, TW, KH, KW>(r, [&](int t, int kh, int kw, int j, int ci) {
            acc[t][j] = fma(buf[SOFF + ci], wr[kh * KW + kw], acc[t][j]);
        });
    }
}

// conv_tile: each thread computes a vertical strip of up to NT micro-tiles of TH x TW
// outputs of one output plane (NT is a run-time argument chosen by the host so the grid
// still fills the GPU). The strip amortizes the per-thread setup (unit decomposition,
// plane mapping, KH*KW weight loads) over NT tiles; the rows a tile shares with the
// previous one are L1 hits. Weights (KH*KW) live in registers. No shared memory and no
// barrier: a thread may leave early.
//
// Template arguments: T storage type; MODE 0 forward / 1 grad input; KH KW SH SW DH DW
// kernel geometry; TH TW micro-tile; PTR PLR pad % stride (MODE 1 only); VIN elements per
// input load (1 scalar, else a 4-, 8- or 16-byte vector); SHIFT = (first input column) mod
// VIN, known on the host; VOUT 16-byte stores on
// rows known to be aligned (otherwise store_row picks the widest aligned access);
// MINB blocks of 256 threads per SM the registers must allow (2: <= 128 registers);
// PF: how many tiles ahead along the strip the input rows are prefetched into L2 (0: off);
// MULTI: a.R may exceed 1 (the grad input of a channel multiplier gathers R planes). The
// host passes false whenever R == 1, so the R-plane loop is not compiled: its second copy
// of the unrolled tile cost the 80-register 3x3 tiles 8-100 bytes of spills.
template <class T, int MODE, int KH, int KW, int SH, int SW, int DH, int DW, int TH, int TW,
          int PTR, int PLR, int VIN, int SHIFT, bool VOUT, int MINB, int PF, bool MULTI>
__global__ void __launch_bounds__(256, MINB)
conv_tile(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
          const TileArgs a) {
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, off_h = a.off_h, off_w = a.off_w;
    const int n_cg = a.n_cg, n_rs = a.n_rs, n_rt = a.n_rt, NT = a.NT, QC = a.QC, DIV = a.DIV, R = a.R;
    const i64 n_units = a.n_units, IC = a.IC;
    typedef typename Traits<T>::acc A;
    constexpr int V = Traits<T>::VEC;
    typedef Axis<MODE, KH, SH, DH, TH, PTR> AH;
    typedef Axis<MODE, KW, SW, DW, TW, PLR> AW;
    constexpr int SOFF = VIN > 1 ? SHIFT : 0;
    constexpr int NB = round_up(SOFF + AW::SPAN, VIN);
    static_assert(KH * KW <= 64, "conv_tile keeps the whole kernel in registers");
    static_assert(MODE == 0 || (TH % SH == 0 && TW % SW == 0), "grad-input tiles start on a stride phase");
    static_assert(VIN >= 1 && V % VIN == 0, "a load is a power-of-two part of 16 bytes");
    static_assert(VIN == 1 || (AW::STEP % VIN == 0 && SHIFT < VIN), "vector loads need tile columns on a vector boundary");
    static_assert(!VOUT || TW % V == 0, "vector stores need whole vectors per tile row");
    static_assert(NB <= 96 && TH * TW <= 64, "register budget");

    const i64 plane_in = (i64)IH * IW;
    const i64 plane_out = (i64)OH * OW;
    for (i64 u = (i64)blockIdx.x * blockDim.x + threadIdx.x; u < n_units; u += (i64)gridDim.x * blockDim.x) {
        i64 q;
        int rs, cg;
        split_unit(u, n_units, n_cg, n_rs, q, rs, cg);
        const PlaneMap pm = map_plane(q, QC, IC, DIV, R);
        // First input column of the window (off_w = -pad in MODE 0, pad / stride in
        // MODE 1), rounded down to a vector boundary by SHIFT.
        const int c0 = cg * AW::STEP + off_w + AW::LO - SOFF;
        const int ow0 = cg * TW;
        const A b0 = (MODE == 0 && bias != nullptr) ? load1(bias + pm.ch) : A(0);
        const T* xp0 = x + pm.in_plane0 * plane_in;
        T* yp = y + q * plane_out + ow0;
        const int rt_end = min(n_rt, (rs + 1) * NT);

        A wr[KH * KW];
        if (!MULTI || R == 1) {
            const T* wp = w + pm.w_row0 * (KH * KW);
#pragma unroll
            for (int i = 0; i < KH * KW; ++i) wr[i] = load1(wp + i);
        }
        // Tile rt asks for the rows that tile rt + PF adds to the window (the last NEW of
        // its rows); the strip's first tile loads its own window at once, so only tiles
        // 1 .. PF-1 need asking for up front. Only the first of R input planes is asked
        // for (R > 1 is the grad input of a channel multiplier; a loop over R here costs
        // registers that the R == 1 tiles spill).
        constexpr int NEW = AH::STEP < AH::SPAN ? AH::STEP : AH::SPAN;
        if constexpr (PF > 1)
            prefetch_rows<(PF - 1) * NEW>(xp0, rs * NT * AH::STEP + off_h + AH::LO + AH::SPAN, c0, IH, IW);
        for (int rt = rs * NT; rt < rt_end; ++rt) {
            const int r0 = rt * AH::STEP + off_h + AH::LO;
            A acc[TH][TW];
#pragma unroll
            for (int t = 0; t < TH; ++t)
#pragma unroll
                for (int j = 0; j < TW; ++j) acc[t][j] = b0;
            if (!MULTI || R == 1) {
                tile_accumulate<T, MODE, KH, KW, SH, SW, DH, DW, TH, TW, PTR, PLR, VIN, SOFF, NB>(xp0, wr, r0, c0, IH, IW, acc);
            } else {
                for (int m = 0; m < R; ++m) {
                    const T* wp = w + (pm.w_row0 + m) * (KH * KW);
#pragma unroll
                    for (int i = 0; i < KH * KW; ++i) wr[i] = load1(wp + i);
                    tile_accumulate<T, MODE, KH, KW, SH, SW, DH, DW, TH, TW, PTR, PLR, VIN, SOFF, NB>(
                        xp0 + m * plane_in, wr, r0, c0, IH, IW, acc);
                }
            }
            if constexpr (PF > 0) {
                // Asked for after this tile's loads and FMAs: fewer registers are live here
                // than before them (asking earlier spilled at the 80-register cap).
                if (rt + PF < rt_end) prefetch_rows<NEW>(xp0, r0 + PF * AH::STEP + AH::SPAN - NEW, c0, IH, IW);
            }
            const int oh0 = rt * TH;
#pragma unroll
            for (int t = 0; t < TH; ++t) {
                const int oh = oh0 + t;
                if (oh >= OH) break;
                T* rp = yp + (i64)oh * OW;
                if constexpr (VOUT) {
                    // OW is a multiple of V: a vector is wholly inside or outside the row.
#pragma unroll
                    for (int k = 0; k < TW / V; ++k)
                        if (ow0 + k * V < OW) store_vec(rp + k * V, &acc[t][k * V]);
                } else {
                    store_row<T, TW>(rp, acc[t], OW - ow0);
                }
            }
        }
    }
}

// Row r of a micro-tile's window feeds output row t through tap row kh = (r - t*SH)/DH;
// the test depends only on (r, t), so it is uniform across the block. Weight rows are
// broadcast reads (every thread of a tile reads the same address).
// FULL: the caller guarantees every output row t takes a tap row from input row r
// (DH == 1, (TH-1)*SH <= r < KH): no test, so the body is one straight block in which the
// compiler can hoist the next pair's weight reads above this pair's FMAs.
template <class A, int KH, int KW, int SH, int SW, int DH, int DW, int TH, int TW, int RWV, int KWP, bool FULL>
__device__ __forceinline__ void smem_row_fma(const A (&seg)[RWV], const A* wt, int r, A (&acc)[TH][TW]) {
    static_assert(!FULL || DH == 1, "a full row needs every tap row reachable");
#pragma unroll
    for (int t = 0; t < TH; ++t) {
        const int d = r - t * SH;
        if (!FULL && (d < 0 || d % DH != 0 || d / DH >= KH)) continue;
        A wr[KWP];
        smem_row<A, KWP>(wt + (FULL ? d : d / DH) * KWP, wr);
#pragma unroll
        for (int kw = 0; kw < KW; ++kw)
#pragma unroll
            for (int j = 0; j < TW; ++j) acc[t][j] = fma(seg[j * SW + kw * DW], wr[kw], acc[t][j]);
    }
}

// conv_smem: large kernels (compute-bound). A block owns P output tiles of BH x BW (whole
// planes when they are small), stages each input tile with its halo in shared memory once
// (zero padding written in place, converted to the accumulation type), plus the weights
// with rows padded to a multiple of 4 for 16-byte broadcast reads. Threads then own
// TH x TW micro-tiles and walk the input window row by row: each staged row is read once
// per micro-tile and reused for every output row t it feeds (tap row kh = r - t*SH), so
// shared-memory traffic per FMA is ~1/(TH*TW) input reads plus one broadcast weight
// vector per 4*TW FMAs.
//
// FLIP reads the weights rotated by 180 degrees: the grad-input pass at stride 1 is this
// same correlation on grad_output with the flipped kernel and padding D*(K-1) - pad.
// MID: the rows that feed every output row of a micro-tile take a test-free body (DH == 1).
// WHOLE: 0 stages each tile's whole window (halo and padding included) per group; 1 and 2
// are for tiles that are whole planes: the window's zeros are written once per block and
// only the plane is copied, through registers (1) or by cp.async (2: sm_80+, T == A).
template <class T, int KH, int KW, int SH, int SW, int DH, int DW, int TH, int TW, bool FLIP, bool MID, int WHOLE>
__global__ void __launch_bounds__(512, 1)
conv_smem(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
          const SmemArgs a) {
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, pad_t = a.pad_t, pad_l = a.pad_l;
    const int BH = a.BH, BW = a.BW, n_tx = a.n_tx, n_ty = a.n_ty, P = a.P, pitch = a.pitch;
    const int QC = a.QC, DIV = a.DIV, R = a.R;
    const i64 n_tiles = a.n_tiles, IC = a.IC;
    typedef typename Traits<T>::acc A;
    constexpr int LV = SmemVec<A>::N;
    constexpr int RH = (TH - 1) * SH + (KH - 1) * DH + 1;
    constexpr int RW = (TW - 1) * SW + (KW - 1) * DW + 1;
    constexpr int RWV = round_up(RW, LV);
    constexpr int KWP = round_up(KW, LV);
    static_assert((TW * SW) % LV == 0, "micro-tile columns start on a 16-byte boundary");
    static_assert(TH * TW <= 64 && RWV <= 96 && KWP <= 64, "register budget");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* const xs = reinterpret_cast<A*>(smem_raw);
    const int TIH = (BH - 1) * SH + (KH - 1) * DH + 1;  // staged input rows per tile
    const int TIW = (BW - 1) * SW + (KW - 1) * DW + 1;  // staged input columns per tile
    const int tile_elems = TIH * pitch;                  // pitch >= TIW + RWV - RW, multiple of LV
    A* const ws = xs + (i64)P * tile_elems;
    // Where each tile of the group reads from: computed once per group by P threads, so
    // the staging loops below do no 64-bit division per row or per weight (they did, and
    // spent as many instructions on it as on the FMAs of a 13x13 kernel on 28x28 planes).
    // Offset: 16-byte aligned (tile_elems and KWP are multiples of LV).
    SmemTile* const desc = reinterpret_cast<SmemTile*>(ws + P * KH * KWP);

    const int ucg = BW / TW, urt = BH / TH;
    const int units = P * ucg * urt;
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    // This thread's micro-tile: (tile p, row tile, column tile).
    const int my_p = tid / (ucg * urt);
    const int my_rem = tid - my_p * (ucg * urt);
    // The host picks the numbering whose row reads have fewer bank conflicts (SmemArgs.RTF).
    const int my_rt = a.RTF ? my_rem % urt : my_rem / ucg;
    const int my_cg = a.RTF ? my_rem / urt : my_rem - my_rt * ucg;
    const bool active = tid < units;

    const i64 plane_in = (i64)IH * IW;
    const i64 plane_out = (i64)OH * OW;
    const int warp = tid >> 5, lane = tid & 31, nwarps = (nthreads + 31) >> 5;

    // WHOLE (tiles are whole planes, corner (-pad_t, -pad_l)): the staged part of a plane
    // is its rows [0, cp_r) and columns [0, cp_c); everything else of the window is zero,
    // written once here. A thread copies elements k = tid + i * nthreads of each plane;
    // its (row, column) starts at divmod(tid, cp_c) and steps by divmod(nthreads, cp_c),
    // so the copy loop does no division.
    // The window can end inside the top or left padding (a stride larger than the plane,
    // padding beyond the kernel): no rows or no columns then, never a negative count.
    const int cp_w = min(IW, TIW - pad_l);
    const int cp_r = (WHOLE && cp_w > 0) ? max(0, min(IH, TIH - pad_t)) : 0, cp_c = max(1, cp_w);
    const int cp_n = cp_r * cp_c;
    const int cp_r0 = tid / cp_c, cp_c0 = tid - cp_r0 * cp_c;
    const int cp_dr = nthreads / cp_c, cp_dc = nthreads - cp_dr * cp_c;
    if constexpr (WHOLE != 0) {
        for (int e = tid; e < P * tile_elems; e += nthreads) xs[e] = A(0);
    }
    for (i64 tile0 = (i64)blockIdx.x * P; tile0 < n_tiles; tile0 += (i64)gridDim.x * P) {
        A acc[TH][TW];
        i64 my_q = 0;
        int my_oy = 0, my_ox = 0;
        {
            const i64 z = tile0 + my_p;
            if (active && z < n_tiles) {
                const i64 zy = z / n_tx;
                const int tx = (int)(z - zy * n_tx);
                my_q = zy / n_ty;
                const int ty = (int)(zy - my_q * n_ty);
                my_oy = ty * BH + my_rt * TH;
                my_ox = tx * BW + my_cg * TW;
            }
        }
        A b0 = A(0);
        if (!FLIP && bias != nullptr && active && tile0 + my_p < n_tiles)
            b0 = load1(bias + map_plane(my_q, QC, IC, DIV, R).ch);
#pragma unroll
        for (int t = 0; t < TH; ++t)
#pragma unroll
            for (int j = 0; j < TW; ++j) acc[t][j] = b0;

        __syncthreads();  // the previous group's readers are done with desc, xs and ws
        if (tid < P) {
            const i64 z = tile0 + tid;
            SmemTile d;
            d.x_plane = -1;  // past the last tile: staged as zeros, never computed
            d.w_row = 0;
            d.ih0 = d.iw0 = 0;
            if (z < n_tiles) {
                const i64 zy = z / n_tx;
                const int tx = (int)(z - zy * n_tx);
                const i64 q = zy / n_ty;
                const int ty = (int)(zy - q * n_ty);
                const PlaneMap pm = map_plane(q, QC, IC, DIV, R);
                d.x_plane = pm.in_plane0;
                d.w_row = pm.w_row0;
                d.ih0 = ty * BH * SH - pad_t;
                d.iw0 = tx * BW * SW - pad_l;
            }
            desc[tid] = d;
        }
        for (int m = 0; m < R; ++m) {
            __syncthreads();  // desc is written (m == 0); the previous m's readers are done
            if constexpr (WHOLE != 0) {
                // Whole planes: only the plane itself is copied (the halo and the pitch
                // tail stay zero), plane by plane, coalesced along its rows. (Copying the
                // whole window, as below, cost replk_13x13 float32 ~4000 instructions per
                // warp and group: 40 % of all, for 28 x 28 planes in 40 x 44 windows.)
                for (int p = 0; p < P; ++p) {
                    const i64 xpl = desc[p].x_plane;
                    if (xpl < 0) break;  // the group's last tiles are past the end (uniform)
                    const T* src = x + (xpl + m) * plane_in;
                    A* dst = xs + p * tile_elems + pad_t * pitch + pad_l;
                    if constexpr (WHOLE == 2) {
                        // sm_80+, no conversion: cp.async, every copy of the group (and the
                        // weights below) in flight at once, one wait before the barrier.
                        static_assert(sizeof(T) == sizeof(A), "cp.async copies without converting");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
                        cp_async_block<A>(smem_u32(dst), reinterpret_cast<const A*>(src), cp_r, cp_c, IW, pitch);
#else
                        __trap();  // the host plans WHOLE == 2 for sm_80+ only
#endif
                    } else {
                        // WB loads in flight before their stores.
                        constexpr int WB = 8;
                        int r = cp_r0, c = cp_c0;
                        for (int k0 = tid; k0 < cp_n; k0 += WB * nthreads) {
                            A v[WB];
                            int at[WB];
#pragma unroll
                            for (int u = 0; u < WB; ++u) {
                                const bool ok = k0 + u * nthreads < cp_n;
                                at[u] = ok ? r * pitch + c : -1;
                                v[u] = ok ? load1(src + (i64)r * IW + c) : A(0);
                                r += cp_dr;
                                c += cp_dc;
                                if (c >= cp_c) { c -= cp_c; ++r; }
                            }
#pragma unroll
                            for (int u = 0; u < WB; ++u)
                                if (at[u] >= 0) dst[at[u]] = v[u];
                        }
                    }
                }
            } else {
                // Stage P input windows. A warp takes SR staged rows at a time and a lane SC
                // columns of each (128-column chunks): all SR*SC loads are issued before the
                // first store, so each thread keeps up to 16 loads in flight (a load-then-store
                // loop would wait a full memory latency per element). One 32-bit division per
                // row (its tile); the rest comes from the tile's descriptor.
                constexpr int SR = 4, SC = 4;
                for (int row0 = warp * SR; row0 < P * TIH; row0 += nwarps * SR) {
                    for (int cb = 0; cb < pitch; cb += 32 * SC) {
                        A v[SR][SC];
#pragma unroll
                        for (int k = 0; k < SR; ++k) {
                            const int row = row0 + k;
                            const int p = (unsigned)row / (unsigned)TIH;
                            const int i = row - p * TIH;
                            bool ok = row < P * TIH;
                            const T* src = x;
                            int iw0 = 0;
                            if (ok) {
                                const SmemTile& d = desc[p];
                                const int ih = d.ih0 + i;
                                ok = d.x_plane >= 0 && (unsigned)ih < (unsigned)IH;
                                iw0 = d.iw0;
                                src = x + (ok ? (d.x_plane + m) * plane_in + (i64)ih * IW : 0);
                            }
#pragma unroll
                            for (int j = 0; j < SC; ++j) {
                                const int c = cb + lane + 32 * j;
                                const int iw = iw0 + c;
                                v[k][j] = (ok && c < TIW && (unsigned)iw < (unsigned)IW) ? load1(src + iw) : A(0);
                            }
                        }
#pragma unroll
                        for (int k = 0; k < SR; ++k) {
                            const int row = row0 + k;
                            if (row >= P * TIH) break;
                            A* dst = xs + (i64)row * pitch;  // tiles are TIH rows of pitch, back to back
#pragma unroll
                            for (int j = 0; j < SC; ++j) {
                                const int c = cb + lane + 32 * j;
                                if (c < pitch) dst[c] = v[k][j];
                            }
                        }
                    }
                }
            }
            // Weight rows, zero-padded to KWP.
            if constexpr (WHOLE == 2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
                const unsigned ws_s = smem_u32(ws);
                for (int p = 0; p < P; ++p) {
                    const SmemTile d = desc[p];
                    if (d.x_plane < 0) break;  // as above: the tiles past the end are not stored
                    const T* wsrc = w + (d.w_row + m) * (KH * KW);
                    for (int k = tid; k < KH * KWP; k += nthreads) {
                        const int kh = k / KWP, kw = k - kh * KWP;
                        const bool ok = kw < KW;
                        const int sk = FLIP ? (KH - 1 - kh) * KW + (KW - 1 - kw) : kh * KW + kw;
                        cp_async_pred<sizeof(A)>(ws_s + (unsigned)((p * (KH * KWP) + k) * (int)sizeof(A)), ok ? wsrc + sk : w, ok, true);
                    }
                }
                cp_async_commit();
                cp_async_wait<0>();
#else
                __trap();  // the host plans WHOLE == 2 for sm_80+ only
#endif
            } else {
                // A thread's WB loads are all issued before its stores, so the loop waits one
                // memory latency per WB weights instead of one per weight (replk_13x13
                // float32: 146 -> 143 us).
                constexpr int WB = 8;
                for (int e0 = tid; e0 < P * KH * KWP; e0 += WB * nthreads) {
                    A v[WB];
#pragma unroll
                    for (int u = 0; u < WB; ++u) {
                        const int e = e0 + u * nthreads;
                        v[u] = A(0);
                        if (e < P * KH * KWP) {
                            const int p = e / (KH * KWP);
                            const int k = e - p * (KH * KWP);
                            const int kh = k / KWP, kw = k - kh * KWP;
                            if (kw < KW && desc[p].x_plane >= 0) {
                                const int sk = FLIP ? (KH - 1 - kh) * KW + (KW - 1 - kw) : kh * KW + kw;
                                v[u] = load1(w + (desc[p].w_row + m) * (KH * KW) + sk);
                            }
                        }
                    }
#pragma unroll
                    for (int u = 0; u < WB; ++u) {
                        const int e = e0 + u * nthreads;
                        if (e < P * KH * KWP) ws[e] = v[u];
                    }
                }
            }
            __syncthreads();

            if (active) {
                const A* xt = xs + (i64)my_p * tile_elems + (my_rt * TH * SH) * pitch + my_cg * TW * SW;
                const A* wt = ws + my_p * (KH * KWP);
                // Input rows are double-buffered in registers: row r+1 is requested from
                // shared memory before row r's FMAs, hiding the load latency.
                // MID: rows [F0, KH) feed all TH output rows and take the test-free body
                // (a warp-uniform choice per row; both bodies are compiled).
                constexpr int F0 = (TH - 1) * SH;
                constexpr bool HAS_MID = MID && DH == 1 && F0 < KH;
                auto row = [&](const A (&seg)[RWV], int r) {
                    if constexpr (HAS_MID) {
                        if (r >= F0 && r < KH) {
                            smem_row_fma<A, KH, KW, SH, SW, DH, DW, TH, TW, RWV, KWP, true>(seg, wt, r, acc);
                            return;
                        }
                    }
                    smem_row_fma<A, KH, KW, SH, SW, DH, DW, TH, TW, RWV, KWP, false>(seg, wt, r, acc);
                };
                A seg0[RWV], seg1[RWV];
                smem_row<A, RWV>(xt, seg0);
                for (int r = 0; r < RH; r += 2) {
                    if (r + 1 < RH) smem_row<A, RWV>(xt + (r + 1) * pitch, seg1);
                    row(seg0, r);
                    if (r + 1 < RH) {
                        if (r + 2 < RH) smem_row<A, RWV>(xt + (r + 2) * pitch, seg0);
                        row(seg1, r + 1);
                    }
                }
            }
        }

        if (active && tile0 + my_p < n_tiles) {
            T* yp = y + my_q * plane_out;
#pragma unroll
            for (int t = 0; t < TH; ++t) {
                const int oh = my_oy + t;
                if (oh >= OH) break;
                store_row<T, TW>(yp + (i64)oh * OW + my_ox, acc[t], OW - my_ox);
            }
        }
    }
}

// conv_generic: any geometry, one thread per output element (64-bit indices throughout).
// MODE 0 forward, MODE 1 grad input (gathers the taps whose stride phase matches).
template <class T, int MODE>
__global__ void __launch_bounds__(256)
conv_generic(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
             const GenericArgs a) {
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, KH = a.KH, KW = a.KW, SH = a.SH, SW = a.SW;
    const int DH = a.DH, DW = a.DW, pad_t = a.pad_t, pad_l = a.pad_l, QC = a.QC, DIV = a.DIV, R = a.R;
    const i64 total = a.total, IC = a.IC;
    typedef typename Traits<T>::acc A;
    const i64 plane_in = (i64)IH * IW;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        // One 64-bit division per level, the remainder by a multiply: with `%` and `/`
        // each, the float64 grad-input kernel kept the division routine's registers on
        // the stack (16 bytes of spills, NVRTC 13.0).
        const i64 t = idx / OW;
        const int ow = (int)(idx - t * OW);
        const i64 q = t / OH;
        const int oh = (int)(t - q * OH);
        const PlaneMap pm = map_plane(q, QC, IC, DIV, R);
        A acc = (MODE == 0 && bias != nullptr) ? load1(bias + pm.ch) : A(0);
        for (int m = 0; m < R; ++m) {
            const T* xp = x + (pm.in_plane0 + m) * plane_in;
            const T* wp = w + (pm.w_row0 + m) * ((i64)KH * KW);
            for (int kh = 0; kh < KH; ++kh) {
                int ih;
                if (MODE == 0) {
                    ih = oh * SH - pad_t + kh * DH;
                } else {
                    const int num = oh + pad_t - kh * DH;
                    if (num < 0 || num % SH) continue;
                    ih = num / SH;
                }
                if (ih < 0 || ih >= IH) continue;
                for (int kw = 0; kw < KW; ++kw) {
                    int iw;
                    if (MODE == 0) {
                        iw = ow * SW - pad_l + kw * DW;
                    } else {
                        const int num = ow + pad_l - kw * DW;
                        if (num < 0 || num % SW) continue;
                        iw = num / SW;
                    }
                    if (iw < 0 || iw >= IW) continue;
                    acc = fma(load1(xp + (i64)ih * IW + iw), load1(wp + kh * KW + kw), acc);
                }
            }
        }
        store1(y + idx, acc);
    }
}

}  // namespace dw
