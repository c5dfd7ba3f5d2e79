// conv_mma_rows: 16-bit depthwise correlations at stride 1 and dilation 1 on tensor cores
// (mma.sync m16n8k16, float32 accumulation; sm_80 and newer), as a sweep down the plane
// in steps of 16 output rows.
//
// Why a third tensor-core correlation: on memory-bound problems (small kernels on large
// planes) the float32 FMAs of the row sweeps (rows.cu) make the kernel issue-bound: each
// 16-bit element is converted, and each output costs KH * KW FFMAs (seed_3x7 float16:
// 168 FFMAs and ~80 other instructions per lane and row, 74 % of the issue slots). On
// tensor cores the products cost one MMA per 16 x 8 outputs and tap row. conv_mma does
// them per 2-D tile, and its per-tile copy planning (integer divisions, per-element
// predicates) and the tile halos cost more than the MMAs on a 3 x 7 kernel (seed_3x7
// float16: 219-371 us against the row sweep's 164). conv_stack needs 16 images of a
// channel per MMA, which lie a whole C planes apart on large planes. Here a block owns
// whole rows (a column segment of a plane) and sweeps down a band of them, so every input
// row is copied once, as contiguous 16-, 8- or 4-byte pieces, and the copy plan is made
// once per unit and only advanced per step (seed_3x7 float16 forward: 154 us against the
// row sweep's 164; ncu: 55 M warp instructions against 129 M, L2 83 % busy).
//
// One tap row kh of 16 output rows m and 8 output columns n is, as in conv_mma,
//
//     D[m][n] += sum_k X[oh + m + kh][c0 + k] * B_kh[k][n],   B_kh[k][n] = w[kh][k - n - SHIFT]
//
// (B_kh banded, its fragments in registers for the whole unit). Data flow: the block's NW
// warps own NB = WN * NW 8-column output blocks of a unit = (plane, band of RB output rows,
// column segment); step s computes band output rows 16 s .. 16 s + 15, which read band input
// rows 16 s .. 16 s + 14 + KH: groups s and s + 1 of 16 staged rows. Groups are staged by
// cp.async PFS - 1 steps ahead into a ring of PFS + 1 group slots (zero-filled outside the
// plane: that is the padding). Per step and tap row a warp reads its WN + 2 KS - 1 chunks of
// 16 rows with ldmatrix and issues WN * KS MMAs; the sums (started from the bias) are rounded
// into a shared-memory block of 16 output rows, which the block stores after the next step's
// barrier as row-contiguous pieces (each store instruction writes consecutive bytes of one
// row; from the fragments, a lane's 4-byte pairs would split each sector between
// instructions).
//
// Bytes per output: one input element read (plus 8 (2 KS - 1) halo columns per segment and
// KH - 1 halo rows per band, mostly L2 hits) and one output element written, 2 + 2 bytes.
// Shared memory per 16 x 8 WN outputs and tap row: (WN + 2 KS - 1) * 256 bytes read by
// ldmatrix; the outputs pass through it once more (2 bytes written, 2 read).
#include "tc.cuh"

namespace dw {

// Compile-time geometry; the host mirrors it (_kernels.mma_rows_geometry) and the kernel
// checks the shared memory it was given. Staged column 0 is input column ow0 - PL - SHIFT,
// on a GRAN-byte boundary, so output column n of a block reads staged columns n + SHIFT ..
// n + SHIFT + KW - 1 of it.
template <int KH, int KW, int WN, int NW, int SHIFT, int GRAN, int PFS>
struct MrowsTile {
    static constexpr int NT = 32 * NW;
    static constexpr int KS = (SHIFT + 7 + KW + 15) / 16;  // k-steps: 8 outputs read SHIFT + 7 + KW columns
    static constexpr int NB = WN * NW;                     // 8-column output blocks per unit
    static constexpr int NCH = NB + 2 * KS - 1;            // 8-column chunks per staged row
    static constexpr int NCW = WN + 2 * KS - 1;            // of which one warp reads
    static constexpr int TIW = 8 * NCH;                    // staged columns
    // Row pitch in 16-bit elements: an odd number of 16-byte units, so the 8 row addresses
    // of an ldmatrix phase (consecutive rows modulo the ring, a multiple of 8 rows) fall
    // in 8 different bank groups.
    static constexpr int PITCH = (NCH % 2) ? TIW : TIW + 8;
    static constexpr int E = GRAN / 2;                     // elements per copy
    static constexpr int CPR = TIW / E;                    // copies per staged row
    static constexpr int CPT = (16 * CPR + NT - 1) / NT;   // copies per thread and group
    // Ring of NS groups of 16 rows: at step s, groups s and s + 1 are read and groups
    // s + 2 .. s + PFS are in flight.
    static constexpr int NS = PFS + 1;
    static constexpr int ROWS = 16 * NS;
    static constexpr int GROUP = 16 * PITCH * 2;           // bytes per group slot
    // Output staging, two buffers of 16 rows (one written while the other is stored) of
    // OPW 32-bit words: an odd multiple of 4 words, so a fragment write (8 rows x 4 lanes)
    // hits 32 different banks, and each row starts on 16 bytes.
    static constexpr int OPW = 4 * NB + ((NB % 2) ? 0 : 4);
    static constexpr int OUT_OFF = NS * GROUP;
    static constexpr int OUT_BYTES = 16 * OPW * 4;
    static constexpr int SMEM = OUT_OFF + 2 * OUT_BYTES;
};

// One staged piece of OSW bytes (16, 4 or 2) from shared address sa to global p.
template <int OSW>
__device__ __forceinline__ void store_piece(void* p, unsigned sa) {
    if constexpr (OSW == 16) {
        *reinterpret_cast<uint4*>(p) = lds128(sa);
    } else if constexpr (OSW == 4) {
        *reinterpret_cast<unsigned*>(p) = lds32(sa);
    } else {
        static_assert(OSW == 2, "output pieces of 16, 4 or 2 bytes");
        unsigned short v;
        asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(sa));
        *reinterpret_cast<unsigned short*>(p) = v;
    }
}

// Template arguments: T half_t or bf16_t; KH KW kernel (stride 1, dilation 1); WN 8-column
// output blocks per warp; NW warps per block; SHIFT as in MrowsTile; GRAN copy width in
// bytes (16, 8 or 4; the host sets it only where IW and the plane base allow it, so that
// every copy lies wholly inside or outside a row); PFS groups of 16 rows staged per step
// ahead of the two read (>= 2); OSW output piece width in bytes (16 where OW is a multiple
// of 8, 4 where it is even, else 2); FLIP reads the kernel rotated by 180 degrees (grad
// input); MINB blocks per SM the registers must allow. The host guarantees one input plane
// per output plane (R == 1) and 32-bit row and column counts; planes and units are 64-bit.
template <class T, int KH, int KW, int WN, int NW, int SHIFT, int GRAN, int PFS, int OSW, bool FLIP, int MINB>
__global__ void __launch_bounds__(32 * NW, MINB)
conv_mma_rows(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
              const MrowsArgs a) {
    static_assert(sizeof(T) == 2, "tensor-core path: 16-bit storage");
    typedef MrowsTile<KH, KW, WN, NW, SHIFT, GRAN, PFS> G;
    static_assert(G::KS <= 2, "at most two k-steps (KW + SHIFT <= 25)");
    static_assert(KH >= 1 && KH <= 16, "a step's input rows lie in two groups of 16");
    static_assert(WN >= 1 && WN <= 8 && NW >= 1 && NW <= 8, "geometry");
    static_assert(PFS >= 2 && PFS <= 4, "ring depth");
    static_assert((GRAN == 16 || GRAN == 8 || GRAN == 4) && G::TIW % G::E == 0, "staging copies");
    static_assert(SHIFT >= 0 && SHIFT < G::E, "staged column 0 on a copy boundary");
    static_assert(OSW == 16 || OSW == 4 || OSW == 2, "output pieces");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int NT = G::NT, KS = G::KS, NB = G::NB, NCW = G::NCW, PITCH = G::PITCH, E = G::E, CPR = G::CPR;
    constexpr int CPT = G::CPT, NS = G::NS, ROWS = G::ROWS, OPW = G::OPW;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    {
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)G::SMEM) __trap();  // host and kernel disagree on the geometry
    }
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, PT = a.PT, RB = a.RB;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3, m = lane & 15;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const unsigned xs_addr = smem_u32(smem_raw);
    // ldmatrix.x4 address of this lane in ring row 0: lanes 0-15 give rows 0-15 of the
    // warp's first chunk, lanes 16-31 those of the next (registers: chunk j rows 0-7,
    // 8-15, chunk j + 1 rows 0-7, 8-15).
    const unsigned a_lane = xs_addr + (unsigned)((m * PITCH + 8 * (warp * WN + (lane >> 4))) * 2);
    // Output staging: this lane's fragment words (rows g and g + 8, word 4 (block) + t4).
    const unsigned ob_lane = xs_addr + (unsigned)(G::OUT_OFF + (g * OPW + 4 * warp * WN + t4) * 4);
    // Stores of a staged block: warp w stores rows w, w + NW, ...; lane l pieces l, l + 32,
    // ... of each (consecutive lanes, consecutive pieces).
    constexpr int EPP = OSW / 2;             // elements per piece
    constexpr int PPR = 8 * NB / EPP;        // pieces per staged row
    constexpr int PPL = (PPR + 31) / 32;     // per lane and row
    constexpr int RPW = (16 + NW - 1) / NW;  // rows per warp
    const unsigned fl_lane = xs_addr + (unsigned)(G::OUT_OFF + warp * OPW * 4 + lane * OSW);
    const unsigned short* const wb = reinterpret_cast<const unsigned short*>(w);

    for (i64 unit = blockIdx.x; unit < a.units; unit += gridDim.x) {
        // unit = (q * n_bands + band) * n_cs + cs: neighbouring units share rows or bands.
        i64 q;
        int band, cs;
        split_unit(unit, a.units, a.n_cs, a.n_bands, q, band, cs);
        const PlaneMap pm = map_plane(q, a.QC, a.IC, a.DIV, 1);
        const int oh0 = band * RB, ow0 = cs * 8 * NB;
        const int rows = min(RB, OH - oh0);
        const int nsteps = (rows + 15) >> 4;
        const int need = rows + KH - 1;        // band input rows that feed a stored output
        const int ih0 = oh0 - PT;              // input row of band row 0
        const int c0 = ow0 - a.PL - SHIFT;     // input column of staged column 0 (a multiple of E)

        // The plane's Toeplitz fragments (toeplitz_entry: entry (kh KS + s) 32 + lane).
        uint2 bt[KH][KS];
        const unsigned short* wp = wb + pm.w_row0 * (KH * KW);
#pragma unroll
        for (int kh = 0; kh < KH; ++kh)
#pragma unroll
            for (int s = 0; s < KS; ++s) bt[kh][s] = toeplitz_entry<KH, KW, KS, SHIFT, FLIP>(wp, (kh * KS + s) * 32 + lane);
        const float b0 = (bias != nullptr) ? load1(bias + pm.ch) : 0.f;

        // Copies of this thread: u = tid + k NT of a group's 16 x CPR is row u / CPR, chunk
        // u % CPR, at element offset off[k] from the group's first staged element (32-bit:
        // the host keeps 16 rows of a plane below 2^31 elements), and whether its columns
        // are in the plane. A row outside the plane copies zeros (its address there is
        // never read); a row past `need` copies nothing: it feeds only output rows that are
        // not stored (an MMA's row m reads row m of A).
        int off[CPT], crow[CPT];
        unsigned dst[CPT];
        bool col_ok[CPT], on[CPT];
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
            const int u = tid + k * NT;
            const int r = u / CPR, ch = u - (u / CPR) * CPR;
            const int col = c0 + ch * E;
            on[k] = u < 16 * CPR;
            crow[k] = r;
            col_ok[k] = on[k] && (unsigned)col < (unsigned)IW;
            off[k] = r * IW + ch * E;
            dst[k] = (unsigned)((r * PITCH + ch * E) * 2);
        }
        // Group 0's first staged element: input row ih0, column c0 (outside the plane where
        // the padding is; only addresses of copies inside it are read).
        const unsigned short* gsrc = reinterpret_cast<const unsigned short*>(x) + pm.in_plane0 * plane_in +
                                     (i64)ih0 * IW + c0;
        const i64 group_elems = (i64)IW * 16;
        int g_next = 0;  // the next group to stage
        // Stage group g_next into `slot` (one cp.async group per call, empty past the band).
        auto stage = [&](int slot) {
            const unsigned sb = xs_addr + (unsigned)(slot * G::GROUP);
#pragma unroll
            for (int k = 0; k < CPT; ++k) {
                const int br = 16 * g_next + crow[k];  // band row
                cp_async_pred<GRAN>(sb + dst[k], gsrc + off[k], col_ok[k] && (unsigned)(ih0 + br) < (unsigned)IH,
                                    on[k] && br < need);
            }
            gsrc += group_elems;
            ++g_next;
            cp_async_commit();
        };

        // Output: this thread's row `warp` of band row 0 and its first piece; the pieces
        // in the plane.
        T* const yw = y + q * plane_out + (i64)(oh0 + warp) * OW + ow0 + lane * EPP;
        bool p_ok[PPL];
#pragma unroll
        for (int k = 0; k < PPL; ++k) p_ok[k] = lane + 32 * k < PPR && ow0 + (lane + 32 * k) * EPP < OW;
        // Store band output rows 16 s .. 16 s + 15, staged in buffer `buf` (after a barrier
        // that follows its writes).
        auto flush = [&](int buf, int s) {
#pragma unroll
            for (int i = 0; i < RPW; ++i) {
                const int r = warp + NW * i;
                if ((RPW * NW == 16 || r < 16) && 16 * s + r < rows) {
                    char* const yp = reinterpret_cast<char*>(yw + (i64)(16 * s + NW * i) * OW);
                    const unsigned sa = fl_lane + (unsigned)(buf * G::OUT_BYTES + NW * i * OPW * 4);
#pragma unroll
                    for (int k = 0; k < PPL; ++k)
                        if (p_ok[k]) store_piece<OSW>(yp + 32 * k * OSW, sa + 32 * k * OSW);
                }
            }
        };

        __syncthreads();  // the previous unit's reads of the ring and the output buffers are done
#pragma unroll
        for (int k = 0; k < PFS; ++k) stage(k);
        int ob = 0;
        for (int s0 = 0; s0 < nsteps; s0 += NS) {
#pragma unroll
            for (int u = 0; u < NS; ++u) {
                const int s = s0 + u;
                if (s >= nsteps) break;  // uniform across the block
                // Groups s and s + 1 have landed for this thread's copies; after the barrier
                // for every thread's, and every warp is done with step s - 1: group s - 1's
                // slot takes group s + PFS, and output buffer ob ^ 1 (step s - 1) is complete.
                cp_async_wait<PFS - 2>();
                __syncthreads();
                stage((u + PFS) % NS);
                if (s > 0) flush(ob ^ 1, s - 1);

                float acc[WN][4];
#pragma unroll
                for (int j = 0; j < WN; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = b0;
#pragma unroll
                for (int kh = 0; kh < KH; ++kh) {
                    // Output row m reads ring row (16 u + m + kh) mod ROWS: only the last slot's
                    // rows wrap (u is a constant: s0 is a multiple of NS).
                    unsigned ra = a_lane + (unsigned)((16 * u + kh) * PITCH * 2);
                    if (16 * u + kh + 15 >= ROWS && m + 16 * u + kh >= ROWS) ra -= (unsigned)(ROWS * PITCH * 2);
                    unsigned c[NCW + 1][2];
#pragma unroll
                    for (int j = 0; j + 1 < NCW; j += 2) ldsm_x4(ra + 16 * j, c[j][0], c[j][1], c[j + 1][0], c[j + 1][1]);
                    if (NCW % 2) ldsm_x2(ra + 16 * (NCW - 1), c[NCW - 1][0], c[NCW - 1][1]);
#pragma unroll
                    for (int j = 0; j < WN; ++j)
#pragma unroll
                        for (int ks = 0; ks < KS; ++ks)
                            Mma<T>::run(acc[j], c[j + 2 * ks][0], c[j + 2 * ks][1], c[j + 2 * ks + 1][0],
                                        c[j + 2 * ks + 1][1], bt[kh][ks].x, bt[kh][ks].y);
                }
                // Rounded to 16 bits into buffer ob (rows g and g + 8).
                const unsigned oa = ob_lane + (unsigned)(ob * G::OUT_BYTES);
#pragma unroll
                for (int j = 0; j < WN; ++j) {
                    asm volatile("st.shared.b32 [%0], %1;" ::"r"(oa + 16 * j), "r"(pack2(T(), acc[j][0], acc[j][1]))
                                 : "memory");
                    asm volatile("st.shared.b32 [%0], %1;" ::"r"(oa + 16 * j + 8 * OPW * 4),
                                 "r"(pack2(T(), acc[j][2], acc[j][3])) : "memory");
                }
                ob ^= 1;
            }
        }
        __syncthreads();
        flush(ob ^ 1, nsteps - 1);  // the last step's rows
        cp_async_wait<0>();         // no copy outlives its unit
    }
#else
    __trap();  // the host plans conv_mma_rows only on sm_80 and newer
#endif
}

}  // namespace dw
