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
// Data flow (persistent blocks; one output tile of BH x BW = 16*WR x 8*WN of one plane
// per item):
//   1. Input tiles plus halo are staged in a STAGES-deep shared-memory ring by cp.async
//      (16- or 4-byte copies, zero-filled outside the plane: that is the padding), so the
//      next items' loads are in flight while one item is computed.
//   2. The Toeplitz fragments of every (kh, k-step) are kept in shared memory, laid out
//      so that each lane reads its own 8 bytes (conflict-free); small tables are loaded
//      one item ahead through registers.
//   3. Warp w owns output rows 16w..16w+15 and all BW columns: for each tap row it loads
//      the WN + 2*KS - 1 8-column chunks of its 16 input rows with ldmatrix (the A
//      fragment of block j, k-step s is chunks j + 2s and j + 2s + 1: neighbouring output
//      blocks share chunks, so each chunk is read once per tap row), then issues WN * KS
//      MMAs into WN float32 accumulator fragments.
//   4. Accumulators are rounded to 16 bits and stored two columns per lane: straight
//      from the fragments where OW is even (DIRECT; 2 WN 4-byte stores per lane), else
//      through shared memory, one output row at a time.
//
// Bytes per output: one input element read (plus halo, served by L2) and one output
// element written, 2 + 2 bytes; shared-memory traffic is KH * (WN + 2KS - 1) * 256 bytes
// per 128 * WN outputs.
#include "tc.cuh"

namespace dw {

// Compile-time geometry of one conv_mma specialization. The host mirrors these
// formulas (_kernels.mma_geometry); the kernel checks the shared memory it was given.
// Staged column 0 is input column (ow0 - pad_l - SHIFT), on a GRAN-byte boundary, so
// output column n of a block reads staged columns n + SHIFT .. n + SHIFT + KW - 1.
template <int KH, int KW, int WN, int WR, int SHIFT, int STAGES, int NT, bool DIRECT>
struct MmaTile {
    static constexpr int KS = (SHIFT + 7 + KW + 15) / 16;  // k-steps: 8 outputs need SHIFT + 7 + KW columns
    static constexpr int BH = 16 * WR, BW = 8 * WN;        // output tile
    static constexpr int NCH = WN + 2 * KS - 1;            // 8-column chunks per staged row
    static constexpr int TIH = BH + KH - 1;                // staged rows
    static constexpr int TIW = 8 * NCH;                    // staged columns
    // Row pitch in 16-bit elements: an odd number of 16-byte units, so the 8 row
    // addresses of one ldmatrix phase fall in 8 different bank groups.
    static constexpr int PITCH = (NCH % 2) ? TIW : TIW + 8;
    static constexpr int XS_BYTES = TIH * PITCH * 2;       // a multiple of 16
    static constexpr int WT_ENTRIES = KH * KS * 32;
    // Toeplitz tables of up to two entries per thread are prefetched through registers
    // one item ahead (double-buffered); larger ones are built after the item's barrier.
    static constexpr bool WPRE = WT_ENTRIES <= 2 * NT;
    static constexpr int WPT = WPRE ? (WT_ENTRIES + NT - 1) / NT : 1;
    static constexpr int WT_BYTES = WT_ENTRIES * 8;
    // Output staging (not with DIRECT stores), one 16 x BW buffer per warp. A fragment
    // write puts 4 words in each of 8 rows; they hit 32 different banks when the row pitch
    // is an odd multiple of 4 words (BW / 2 = 4 WN words, padded by 4 when WN is even). An
    // even multiple serializes the write 8 ways: the earlier fixed +4 made WN = 7
    // (56-column planes) a 32-word pitch.
    static constexpr int OPW = 4 * (WN % 2 ? WN : WN + 1);  // 32-bit words per staged output row
    static constexpr int OUT_OFF = STAGES * XS_BYTES + (WPRE ? 2 : 1) * WT_BYTES;
    static constexpr int SMEM = OUT_OFF + (DIRECT ? 0 : WR * 16 * OPW * 4);
};

// Template arguments: T half_t or bf16_t; KH KW kernel; WN 8-column output blocks per warp
// (BW = 8 WN); WR warps per block (BH = 16 WR); SHIFT as in MmaTile; GRAN staging copy
// width in bytes: 16, 8 or 4 (cp.async; the host sets it only when IW and the plane base
// allow it, so every aligned copy lies wholly inside or outside a row) or 2 (checked
// 16-bit loads through registers); STAGES input tiles in flight per block; FLIP reads the
// kernel rotated by 180 degrees (grad input at stride 1); MINB blocks per SM the
// registers must allow; DIRECT stores the accumulator pairs straight from the fragments
// (the host sets it only for even OW), else through per-warp shared-memory rows.
//
// Blocks are persistent: block b takes tiles b, b + gridDim.x, ...; with R > 1 input
// planes per output plane (grad input with a channel multiplier) an *item* is one (tile,
// plane) pair. Items flow through a STAGES-deep ring of shared-memory tiles filled by
// cp.async, so the loads of the next STAGES - 1 items are in flight while one is
// computed, with one barrier per item.
template <class T, int KH, int KW, int WN, int WR, int SHIFT, int GRAN, int STAGES, bool FLIP, int MINB, bool DIRECT>
__global__ void __launch_bounds__(32 * WR, MINB)
conv_mma(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
         const MmaArgs a) {
    static_assert(sizeof(T) == 2, "tensor-core path: 16-bit storage");
    constexpr int NT = 32 * WR;
    typedef MmaTile<KH, KW, WN, WR, SHIFT, STAGES, NT, DIRECT> G;
    static_assert(G::KS <= 4 && WN >= 1 && WN <= 16 && WR >= 1 && WR <= 8, "geometry");
    static_assert(STAGES >= 2 && STAGES <= 4, "ring depth");
    static_assert((GRAN == 16 && SHIFT < 8) || (GRAN == 8 && SHIFT < 4) || (GRAN == 4 && SHIFT < 2) ||
                  (GRAN == 2 && SHIFT == 0), "staging");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int KS = G::KS, PITCH = G::PITCH, TIH = G::TIH, TIW = G::TIW;
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, pad_t = a.pad_t, pad_l = a.pad_l;
    const int n_tx = a.n_tx, n_ty = a.n_ty, QC = a.QC, DIV = a.DIV, R = a.R;
    const i64 n_tiles = a.n_tiles, IC = a.IC;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    uint2* const wt = reinterpret_cast<uint2*>(smem_raw + STAGES * G::XS_BYTES);
    {
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)G::SMEM) __trap();  // host and kernel disagree on the tile geometry
    }
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const unsigned xs_addr = smem_u32(smem_raw);
    // ldmatrix.x4 address of this lane: lanes 0-15 give rows 0-15 of chunk c, lanes 16-31
    // rows 0-15 of chunk c + 1 (registers: chunk c rows 0-7, 8-15, chunk c+1 rows 0-7, 8-15).
    const unsigned lane_addr = xs_addr + (unsigned)(((16 * warp + (lane & 15)) * PITCH + 8 * (lane >> 4)) * 2);
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const unsigned short* const xb = reinterpret_cast<const unsigned short*>(x);
    const unsigned short* const wb = reinterpret_cast<const unsigned short*>(w);

    const i64 my_tiles = n_tiles > (i64)blockIdx.x ? (n_tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    const i64 n_items = my_tiles * R;

    struct Item {
        i64 q;
        int oh0, ow0, m;
        PlaneMap pm;
    };
    // Items are decoded once each, by thread 0 (see the ring below): 64-bit math is cheap
    // at that rate.
    auto item = [&](i64 k) {
        Item it;
        const i64 t = R == 1 ? k : k / R;
        it.m = (int)(k - t * R);
        const i64 z = blockIdx.x + t * gridDim.x;
        int tx, ty;
        if (z <= 0xffffffffLL) {  // 32-bit divisions in the common case (warp 0's decode delays the item barrier)
            const unsigned zz = (unsigned)z, y32 = zz / (unsigned)n_tx, q32 = y32 / (unsigned)n_ty;
            tx = (int)(zz - y32 * (unsigned)n_tx);
            ty = (int)(y32 - q32 * (unsigned)n_ty);
            it.q = q32;
        } else {
            const i64 zy = z / n_tx;
            tx = (int)(z - zy * n_tx);
            it.q = zy / n_ty;
            ty = (int)(zy - it.q * n_ty);
        }
        it.ow0 = tx * G::BW;
        it.oh0 = ty * G::BH;
        it.pm = map_plane(it.q, QC, IC, DIV, R);
        return it;
    };

    // Decoded items live in a small shared ring: item k + STAGES is decoded (a handful of
    // divisions) at iteration k and published by thread 0 into slot
    // (k + STAGES) % (STAGES + 1), which held item k - 1, whose readers finished before
    // this iteration's barrier. Every other use of an item reads the ring after a barrier
    // that follows its write, so each item is decoded once instead of four times.
    constexpr int RING = STAGES + 1;
    __shared__ Item ring[RING];
    auto publish = [&](i64 k) {
        if (tid == 0 && k < n_items) ring[(int)(k % RING)] = item(k);
    };
    auto ring_at = [&](i64 k) { return ring[(int)(k % RING)]; };

    // Stage item k into ring slot k % STAGES (one cp.async group per call, empty past the
    // end, so that group counting stays uniform). Outside the plane a copy reads 0 bytes
    // and zero-fills: that is the padding.
    auto stage = [&](i64 k) {
        if (k < n_items) {
            const Item it = ring_at(k);
            const unsigned short* xp = xb + (it.pm.in_plane0 + it.m) * plane_in;
            const int ih0 = it.oh0 - pad_t, c0 = it.ow0 - pad_l - SHIFT;
            const int slot = (int)(k % STAGES);
            const unsigned dst = xs_addr + (unsigned)(slot * G::XS_BYTES);
            if constexpr (GRAN == 16 || GRAN == 8 || GRAN == 4) {
                // U copies per staged row, E elements each. Thread tid takes units tid,
                // tid + NT, ...: its (row, unit) and its source row pointer advance by a
                // fixed step (DQ rows and DR units, wrapping into the next row), so a copy
                // costs a few integer adds instead of a division and a 64-bit multiply
                // (which were ~25 instructions per copy, a quarter of an item's issue).
                constexpr int E = GRAN / 2, U = TIW / E, DQ = NT / U, DR = NT % U;
                int i = tid / U, c = tid % U;
                const unsigned short* rp = xp + (i64)(ih0 + i) * IW;
                unsigned d = dst + (unsigned)((i * PITCH + E * c) * 2);
#pragma unroll 4
                for (int u = tid; u < TIH * U; u += NT) {
                    const int ih = ih0 + i, col = c0 + E * c;
                    const bool ok = (unsigned)ih < (unsigned)IH && (unsigned)col < (unsigned)IW;
                    if constexpr (GRAN == 16)
                        cp_async16(d, ok ? rp + col : xp, ok ? 16 : 0);
                    else if constexpr (GRAN == 8)
                        cp_async8(d, ok ? rp + col : xp, ok ? 8 : 0);
                    else
                        cp_async4(d, ok ? rp + col : xp, ok ? 4 : 0);
                    i += DQ;
                    c += DR;
                    rp += (i64)DQ * IW;
                    d += (unsigned)((DQ * PITCH + E * DR) * 2);
                    if (DR != 0 && c >= U) {
                        c -= U;
                        ++i;
                        rp += IW;
                        d += (unsigned)((PITCH - E * U) * 2);
                    }
                }
            } else {
                unsigned short* xs = reinterpret_cast<unsigned short*>(smem_raw + slot * G::XS_BYTES);
                for (int u = tid; u < TIH * TIW; u += NT) {
                    const int i = u / TIW, c = u - (u / TIW) * TIW;
                    const int ih = ih0 + i, col = c0 + c;
                    const bool ok = (unsigned)ih < (unsigned)IH && (unsigned)col < (unsigned)IW;
                    xs[i * PITCH + c] = ok ? __ldg(xp + (i64)ih * IW + col) : (unsigned short)0;
                }
            }
        }
        cp_async_commit();
    };

    // Toeplitz entries: toeplitz_pos / toeplitz_entry (tc.cuh). Which weights an entry
    // reads does not depend on the item. w_meta packs the offset of its first weight (+16,
    // to stay positive) and, in the top 4 bits, which of its 4 weights lie inside the
    // kernel; the others are base + {1, 8, 9} (base - ... for FLIP). w_fetch loads them for
    // an item: the tables prefetched through registers (WPRE) keep their metadata per
    // thread, so that per item only the loads remain.
    // (Larger tables, built after the item barrier, take toeplitz_entry: w_fetch(w_meta(e))
    // there measured replk_31x31 fp16 147.6 -> 155.0 us.)
    auto w_meta = [&](int e) {
        int kh, d;
        toeplitz_pos<KS, SHIFT>(e, kh, d);
        unsigned mask = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int kw = d + (i & 1) + 8 * (i >> 1);
            if (kw >= 0 && kw < KW) mask |= 1u << i;
        }
        const int base = FLIP ? (KH - 1 - kh) * KW + (KW - 1 - d) : kh * KW + d;
        return (unsigned)(base + 16) | (mask << 28);
    };
    auto w_fetch = [&](const unsigned short* wp, unsigned m, unsigned (&h)[4]) {
        const int base = (int)(m & 0x0fffffffu) - 16;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int o = (i & 1) + 8 * (i >> 1);
            h[i] = ((m >> (28 + i)) & 1u) ? (unsigned)__ldg(wp + (FLIP ? base - o : base + o)) : 0u;
        }
    };
    auto w_row = [&](i64 k) {
        const Item it = ring_at(k);
        return wb + (it.pm.w_row0 + it.m) * (KH * KW);
    };

    // The bias of the next item is loaded one item ahead too (its latency would otherwise
    // stall every item).
    auto bias_of = [&](i64 k) {
        return (!FLIP && bias != nullptr && k < n_items) ? load1(bias + ring_at(k).pm.ch) : 0.f;
    };
    unsigned wreg[G::WPT][4];  // WPRE: the next item's table entries, loaded one item ahead
    // WPRE: this thread's entries' metadata, worked out once (per item it cost ~75
    // instructions per entry: convnext_7x7, a fifth of an item's issue).
    unsigned wmeta[G::WPT];
#pragma unroll
    for (int r = 0; r < G::WPT; ++r) {
        const int e = tid + r * NT;
        wmeta[r] = (G::WPRE && e < G::WT_ENTRIES) ? w_meta(e) : 0u;  // mask 0: nothing loaded
    }
    auto w_load = [&](i64 k) {
        const unsigned short* wp = w_row(k);
#pragma unroll
        for (int r = 0; r < G::WPT; ++r) w_fetch(wp, wmeta[r], wreg[r]);
    };

    for (int s = 0; s < STAGES; ++s) publish(s);
    __syncthreads();
    for (int s = 0; s < STAGES - 1; ++s) stage(s);
    if (G::WPRE && n_items > 0) w_load(0);

    float acc[WN][4];
    float b_next = bias_of(0);
    for (i64 k = 0; k < n_items; ++k) {
        uint2* const tab = wt + (G::WPRE ? (int)(k & 1) * G::WT_ENTRIES : 0);
        if constexpr (G::WPRE) {
            // This half of the table was last read by item k - 2: free since the
            // previous barrier.
#pragma unroll
            for (int r = 0; r < G::WPT; ++r) {
                const int e = tid + r * NT;
                if (e < G::WT_ENTRIES) tab[e] = toeplitz_pack(wreg[r]);
            }
        }
        cp_async_wait<STAGES - 2>();  // this thread's copies of item k have landed
        __syncthreads();              // ... everyone's; and item k-1's readers are done
        stage(k + STAGES - 1);        // refill the slot item k-1 used
        publish(k + STAGES);
        if constexpr (G::WPRE) {
            if (k + 1 < n_items) w_load(k + 1);
        } else {
            const unsigned short* wp = w_row(k);
            for (int e = tid; e < G::WT_ENTRIES; e += NT) tab[e] = toeplitz_entry<KH, KW, KS, SHIFT, FLIP>(wp, e);
            __syncthreads();
        }
        const Item it = ring_at(k);
        if (it.m == 0) {
            const float b0 = b_next;
#pragma unroll
            for (int j = 0; j < WN; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = b0;
        }
        if (it.m == R - 1) b_next = bias_of(k + 1);  // the next item starts a tile

        // Tap rows: 16 input rows of NCH chunks, then WN * KS MMAs.
        const unsigned base = lane_addr + (unsigned)((int)(k % STAGES) * G::XS_BYTES);
#pragma unroll (KH <= 8 ? KH : 2)
        for (int kh = 0; kh < KH; ++kh)
            toeplitz_row<T, WN, KS>(acc, base + (unsigned)(kh * PITCH * 2), tab + kh * KS * 32, lane);

        if (DIRECT && it.m == R - 1) {
            // DIRECT (the host checks that OW is even): each lane stores its fragment pairs
            // straight to global memory, rows g and g + 8 of the warp, columns 2 (lane % 4)
            // and +1 of each block: 4-byte aligned, since OW, ow0 and the column are even.
            // 2 WN stores per lane and item, no shared-memory pass and no row loop.
            unsigned short* const yp = reinterpret_cast<unsigned short*>(y) + it.q * plane_out;
#pragma unroll
            for (int hlf = 0; hlf < 2; ++hlf) {
                const int oh = it.oh0 + 16 * warp + g + 8 * hlf;
                if (oh < OH) {
                    unsigned* const rp = reinterpret_cast<unsigned*>(yp + (i64)oh * OW + it.ow0 + 2 * t4);
#pragma unroll
                    for (int j = 0; j < WN; ++j)
                        if (it.ow0 + 8 * j + 2 * t4 < OW) rp[4 * j] = pack2(T(), acc[j][2 * hlf], acc[j][2 * hlf + 1]);
                }
            }
        } else if (it.m == R - 1) {
            // The lane holds rows g and g + 8, columns 2 (lane % 4) and +1 of each block:
            // 16-byte pieces of 8 rows per instruction, which would split most 32-byte
            // sectors between instructions (output rows rarely start on a sector). The warp
            // stages its 16 rows in shared memory and writes each row as one contiguous
            // run of 4-byte stores instead.
            unsigned* const ob = reinterpret_cast<unsigned*>(smem_raw + G::OUT_OFF) + warp * 16 * G::OPW;
#pragma unroll
            for (int j = 0; j < WN; ++j)
#pragma unroll
                for (int hlf = 0; hlf < 2; ++hlf)
                    ob[(g + 8 * hlf) * G::OPW + 4 * j + t4] = pack2(T(), acc[j][2 * hlf], acc[j][2 * hlf + 1]);
            __syncwarp();
            // The row pointer advances by OW per row (no 64-bit multiply per row).
            unsigned short* rp = reinterpret_cast<unsigned short*>(y) + it.q * plane_out + (i64)(it.oh0 + 16 * warp) * OW;
            const int rows = min(16, OH - (it.oh0 + 16 * warp));
#pragma unroll 4
            for (int r = 0; r < rows; ++r, rp += OW) {
                // ow is even, so a pair is 4-byte aligned exactly when its row is: one
                // warp-uniform test per row (per-pair tests made the loop divergent).
                const bool aligned = (reinterpret_cast<unsigned long long>(rp) & 3) == 0;
#pragma unroll
                for (int c0 = 0; c0 < G::BW / 2; c0 += 32) {
                    const int c = c0 + lane;
                    const int ow = it.ow0 + 2 * c;
                    if (c < G::BW / 2 && ow < OW) {
                        const unsigned v = ob[r * G::OPW + c];
                        if (aligned && ow + 1 < OW) {
                            *reinterpret_cast<unsigned*>(rp + ow) = v;
                        } else {
                            rp[ow] = (unsigned short)(v & 0xffffu);
                            if (ow + 1 < OW) rp[ow + 1] = (unsigned short)(v >> 16);
                        }
                    }
                }
            }
            __syncwarp();  // the buffer is rewritten by the next item
        }
    }
    cp_async_wait<0>();  // no copy outlives the block
#else
    __trap();  // the host plans conv_mma only on sm_80 and newer
#endif
}

}  // namespace dw
