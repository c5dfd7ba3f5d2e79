// conv_stack: 16-bit depthwise correlations at stride 1 and dilation 1 on tensor cores,
// with the 16 rows of each MMA taken by 16 images of one channel (mma.sync m16n8k16,
// float32 accumulation; sm_80 and newer).
//
// Why a second tensor-core correlation: conv_mma puts 16 output rows of one plane in an
// MMA's rows, so tap row kh multiplies the input rows shifted by kh: every staged element
// is read from shared memory once per tap row, and those reads bound it (convnext_7x7
// float16: ~11 us of ldmatrix wavefronts in a 36 us forward). Images of one channel share
// its weights, so here the MMA's rows are 16 images and its A operand is one input row of
// all of them: one ldmatrix.x4 per input row and 8 output columns feeds KH MMAs, tap row
// kh into the sums of output row (row - kh). Those KH rows of sums are a ring in
// registers, as in the row sweeps (rows.cu); the banded (Toeplitz) B fragments of the
// channel's KH tap rows stay in registers for the whole unit.
//
//     D[image][n] += sum_k X[image][ih][c0 + k] * B_kh[k][n],  B_kh[k][n] = w[kh][k - n - SHIFT]
//
// Data flow: a block of WN warps owns a unit = (16 images, RB output rows, 8 WN output
// columns, channel) and sweeps virtual rows v = 0 .. RB + KH - 2 of it: v is input row
// oh0 + v - PT of the 16 images, staged by cp.async RS - 1 rows ahead into a ring of RS
// slots (zero-filled outside the plane and past the last image: that is the padding).
// Warp j owns output columns 8j .. 8j + 7 of the unit; per virtual row it reads its
// 16 x 16 A block (one ldmatrix.x4, or four 4-byte reads per lane), issues KH MMAs, and
// rounds output row v - KH + 1, which has had its last tap row, into a shared-memory row
// of the 16 images; after the next row's barrier the block stores that row as whole
// 16-byte pieces (4-byte words where OW % 8 != 0). Stored from the fragments (a lane
// holds 4 bytes of images g and g + 8: 8 images x 16 bytes per instruction), the output
// ran at a fraction of the copy rate (convnext_7x7 float16: 39.7 us, 28.8 with the
// stores left out).
//
// Bytes per output: one input element read (plus 8 or 16 halo columns per 8 WN and
// (KH - 1) / RB halo rows, mostly L2 hits) and one output element written, 2 + 2 bytes.
// Shared memory: 512 bytes read per 8 columns of 16 images and input row (4 wavefronts
// per KH MMAs), 1 / KH of conv_mma's; the output row passes through it once more.
#include "tc.cuh"

namespace dw {

// The row copies one thread issues into a ring slot of 16 image rows: copy u = tid + k NT
// of the 16 x CPR is image u / CPR, chunk u % CPR (E = GRAN / 2 elements). Each keeps its
// source address at the unit's first row (a byte address, advanced one row per issue)
// and whether its image and columns exist; the row's own test comes with each issue.
// Outside the plane a copy reads nothing and zero-fills (its address there is never
// dereferenced): that is the padding.
template <class T, int GRAN, int CPR, int NT>
struct StackCopies {
    static constexpr int E = GRAN / 2, CPT = (16 * CPR + NT - 1) / NT;
    const char* src[CPT];
    unsigned dst[CPT];
    bool ok[CPT], on[CPT];
    i64 row_bytes;
    // Images n0 .. n0 + 15 of channel c (plane n C + c of `plane` elements, rows of W), row
    // row0; staged column 0 is column col0 (a multiple of E); image rows `pitch` elements
    // apart from byte `off` of a slot.
    __device__ __forceinline__ StackCopies(const T* base, int n0, int N, int C, int c, i64 plane, int row0, int W,
                                           int col0, int pitch, unsigned off) {
        row_bytes = (i64)W * (i64)sizeof(T);
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
            const int u = threadIdx.x + k * NT;
            const int r = u / CPR, ch = u - (u / CPR) * CPR;
            const int col = col0 + ch * E;
            on[k] = u < 16 * CPR;
            ok[k] = on[k] && n0 + r < N && (unsigned)col < (unsigned)W;
            src[k] = reinterpret_cast<const char*>(base) +
                     (((i64)(n0 + r) * C + c) * plane + (i64)row0 * W + col) * (i64)sizeof(T);
            dst[k] = off + (unsigned)((r * pitch + ch * E) * 2);
        }
    }
    // The next row into the slot at shared address `slot`: `row_ok`, the row lies in the
    // plane; `live`, it is one of the unit's (else nothing is copied).
    __device__ __forceinline__ void issue(unsigned slot, bool row_ok, bool live) {
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
            cp_async_pred<GRAN>(slot + dst[k], src[k], row_ok && ok[k], live && on[k]);
            src[k] += row_bytes;
        }
    }
};

// Compile-time geometry; the host mirrors it (_kernels.stack_geometry) and the kernel
// checks the shared memory it was given.
template <int KH, int WN, int ALD, int GRAN, int PF>
struct StackTile {
    static constexpr int NT = 32 * WN;
    // Staged columns: warp j reads 8j + ALD .. 8j + ALD + 15; whole 16-byte units.
    static constexpr int TIW = 8 * WN + 8 + (ALD > 0 ? 8 : 0);
    // Image-row pitch in 16-bit elements: an odd number of 16-byte units, so that the 8
    // row addresses of one ldmatrix phase (8 images) fall in 8 different bank groups,
    // and the 4-byte A reads of 8 images x 4 lanes (ALD > 0) in 32 different banks.
    static constexpr int PITCH = ((TIW / 8) % 2) ? TIW : TIW + 8;
    static constexpr int E = GRAN / 2;        // elements per copy
    static constexpr int CPR = TIW / E;       // copies per image row
    // Ring slots: a multiple of KH of at least PF + 1, so that in the sweep unrolled by RS
    // every slot and every ring index of the sums is a constant; RS - 1 rows are in
    // flight beside the one read.
    static constexpr int RS = KH * ((PF + KH) / KH);
    static constexpr int SLOT = 16 * PITCH * 2;
    // Output rows are staged (two buffers: one written while the other is stored) as
    // 16 image rows of 4 WN words; an odd multiple of 4 words per row, so a fragment
    // write (8 images x 4 lanes) hits 32 different banks.
    static constexpr int OPW = 4 * WN + ((WN % 2) ? 0 : 4);
    static constexpr int OUT_OFF = RS * SLOT;
    static constexpr int SMEM = OUT_OFF + 2 * 16 * OPW * 4;
};

// Template arguments: T half_t or bf16_t; KH KW kernel (stride 1, dilation 1); WN warps
// per block, one 8-column output block each; ALD the staged column (even, < 8) where
// warp 0's A block starts (0: ldmatrix; else four 4-byte reads per lane, which lets
// 16-byte copies serve paddings whose window would start too far into a k-step); SHIFT
// the columns of the A block before the first one an output reads (SHIFT + 7 + KW <= 16:
// one k-step); GRAN copy width in bytes (16, 8 or 4; the host sets it only where IW and
// the plane base allow it, so that every copy lies wholly inside or outside a row); PF
// rows in flight; OSW output store width in bytes (16 where OW is a multiple of 8, else
// 4); FLIP reads the kernel rotated by 180 degrees (grad input); MINB blocks per SM the
// registers must allow. The host guarantees even OW, one input plane per output plane
// (multiplier 1) and 32-bit row and column counts; planes and units are 64-bit.
template <class T, int KH, int KW, int WN, int ALD, int SHIFT, int GRAN, int PF, int OSW, bool FLIP, int MINB>
__global__ void __launch_bounds__(32 * WN, MINB)
conv_stack(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
           const StackArgs a) {
    static_assert(sizeof(T) == 2, "tensor-core path: 16-bit storage");
    typedef StackTile<KH, WN, ALD, GRAN, PF> G;
    static_assert(SHIFT >= 0 && SHIFT + 7 + KW <= 16, "one k-step: 8 outputs read SHIFT + 7 + KW columns");
    static_assert(ALD >= 0 && ALD < 8 && ALD % 2 == 0, "A blocks start on a 4-byte boundary");
    static_assert(KH >= 1 && KH <= 16 && WN >= 1 && WN <= 16 && PF >= 1 && PF <= 16, "geometry");
    static_assert((GRAN == 16 || GRAN == 8 || GRAN == 4) && G::TIW % G::E == 0, "staging copies");
    static_assert(OSW == 16 || OSW == 4, "output stores");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int NT = G::NT, PITCH = G::PITCH, CPR = G::CPR, RS = G::RS, OPW = G::OPW;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    {
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)G::SMEM) __trap();  // host and kernel disagree on the geometry
    }
    const int IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW, PT = a.PT, RB = a.RB;
    const int N = a.N, C = a.C, n_bands = a.n_bands, n_cs = a.n_cs;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const i64 plane_in = (i64)IH * IW, plane_out = (i64)OH * OW;
    const unsigned xs_addr = smem_u32(smem_raw);
    // This lane's A address in slot 0. ldmatrix.x4 (ALD 0): lanes 0-15 give images 0-15
    // of chunk `warp`, lanes 16-31 of chunk warp + 1 (registers: chunk j images 0-7, 8-15,
    // chunk j + 1 images 0-7, 8-15). 4-byte reads: image g, columns 2 t4 and +1 (a0), the
    // same of image g + 8 (a1), and both 8 columns on (a2, a3).
    const unsigned a_addr =
        ALD == 0 ? xs_addr + (unsigned)(((lane & 15) * PITCH + 8 * (warp + (lane >> 4))) * 2)
                 : xs_addr + (unsigned)((g * PITCH + 8 * warp + ALD + 2 * t4) * 2);
    // Output staging: this lane's fragment words (images g and g + 8, word 4 warp + t4).
    const unsigned ob_addr = xs_addr + (unsigned)(G::OUT_OFF + (g * OPW + 4 * warp + t4) * 4);
    const unsigned short* const wb = reinterpret_cast<const unsigned short*>(w);
    // Stores of a staged output row: OSW 16, thread tid < 16 WN stores 8 columns (image
    // tid / WN, chunk tid % WN); OSW 4, thread tid stores words tid and tid + NT of the 16
    // x 4 WN (image u / (4 WN), word u % (4 WN)): consecutive threads, consecutive words.
    constexpr int NST = OSW == 16 ? 1 : 2;

    for (i64 unit = blockIdx.x; unit < a.units; unit += gridDim.x) {
        // unit = ((group * n_bands + band) * n_cs + cs) * C + c.
        i64 t = unit / C;
        const int c = (int)(unit - t * C);
        const int cs = (int)(t % n_cs);
        t /= n_cs;
        const int band = (int)(t % n_bands);
        const int grp = (int)(t / n_bands);
        const int n0 = 16 * grp, oh0 = band * RB, ow0 = cs * 8 * WN;
        const int rows = min(RB, OH - oh0);
        const int steps = rows + KH - 1;  // virtual rows of the unit
        const int c0 = ow0 - a.PL - SHIFT - ALD;  // input column of staged column 0 (a multiple of E)

        // The channel's Toeplitz fragments, one per tap row (toeplitz_entry, k-step 0).
        uint2 bt[KH];
        const unsigned short* wp = wb + (i64)c * (KH * KW);
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) bt[kh] = toeplitz_entry<KH, KW, 1, SHIFT, FLIP>(wp, kh * 32 + lane);
        const float b0 = (bias != nullptr) ? load1(bias + c) : 0.f;
        const float bias4[4] = {b0, b0, b0, b0};

        StackCopies<T, GRAN, CPR, NT> copies(x, n0, N, C, c, plane_in, oh0 - PT, IW, c0, PITCH, 0u);
        int ih_next = oh0 - PT;  // input row of the next staged virtual row
        // Stage the next virtual row into `slot` (one cp.async group per call; past the
        // unit's rows an empty group keeps the count per row uniform).
        auto stage = [&](bool live, int slot) {
            copies.issue(xs_addr + (unsigned)(slot * G::SLOT), (unsigned)ih_next < (unsigned)IH, live);
            ++ih_next;
            cp_async_commit();
        };

        // Output stores of this thread: the staged word offset and global address at the
        // unit's first output row (advanced by OW per stored row), and whether it stores.
        T* yp[NST];
        unsigned ob_off[NST];
        bool st_ok[NST];
#pragma unroll
        for (int k = 0; k < NST; ++k) {
            const int u = tid + k * NT;
            const int r = OSW == 16 ? u / WN : u / (4 * WN);
            const int wd = OSW == 16 ? 4 * (u - r * WN) : u - r * (4 * WN);  // first word in the image row
            const int col = ow0 + 2 * wd;
            st_ok[k] = r < 16 && n0 + r < N && col < OW;
            ob_off[k] = (unsigned)(G::OUT_OFF + (r * OPW + wd) * 4);
            yp[k] = y + ((i64)(st_ok[k] ? n0 + r : 0) * C + c) * plane_out + (i64)oh0 * OW + col;
        }
        // Store the output row staged in buffer `buf` (after a barrier that follows its writes).
        auto flush = [&](int buf) {
#pragma unroll
            for (int k = 0; k < NST; ++k) {
                const unsigned sa = xs_addr + ob_off[k] + (unsigned)(buf * 16 * OPW * 4);
                if (st_ok[k]) {
                    if constexpr (OSW == 16) *reinterpret_cast<uint4*>(yp[k]) = lds128(sa);
                    else *reinterpret_cast<unsigned*>(yp[k]) = lds32(sa);
                }
                yp[k] += OW;
            }
        };

        float acc[KH][4];
#pragma unroll
        for (int s = 0; s < KH; ++s) acc[s][0] = acc[s][1] = acc[s][2] = acc[s][3] = 0.f;

        __syncthreads();  // the previous unit's reads of the ring and the output buffers are done
#pragma unroll
        for (int k = 0; k < RS - 1; ++k) stage(k < steps, k);
        int ob = 0;
        for (int v0 = 0; v0 < steps; v0 += RS) {
#pragma unroll
            for (int u = 0; u < RS; ++u) {
                const int v = v0 + u;
                if (v >= steps) break;  // uniform across the block
                // Row v has landed for this thread's copies; after the barrier for every
                // thread's, and every warp is done reading row v - 1, whose slot takes
                // row v + RS - 1, and done writing output buffer ob ^ 1.
                cp_async_wait<RS - 2>();
                __syncthreads();
                stage(v + RS - 1 < steps, (u + RS - 1) % RS);
                if (v >= KH) flush(ob ^ 1);  // output row v - KH, staged at step v - 1
                unsigned a0, a1, a2, a3;
                const unsigned ra = a_addr + (unsigned)(u * G::SLOT);
                if constexpr (ALD == 0) {
                    ldsm_x4(ra, a0, a1, a2, a3);
                } else {
                    a0 = lds32(ra);
                    a1 = lds32(ra + 8 * PITCH * 2);
                    a2 = lds32(ra + 16);
                    a3 = lds32(ra + 8 * PITCH * 2 + 16);
                }
                // Tap row kh feeds output row v - kh: ring slot (v - kh) mod KH, a constant
                // (v0 is a multiple of RS, a multiple of KH). Tap row 0 starts its row from
                // the bias (the MMA's C operand), overwriting the slot's previous row,
                // staged at step v - 1.
#pragma unroll
                for (int kh = 0; kh < KH; ++kh) {
                    const int s = ((u - kh) % KH + KH) % KH;
                    if (kh == 0)
                        Mma<T>::run_c(acc[s], a0, a1, a2, a3, bt[kh].x, bt[kh].y, bias4);
                    else
                        Mma<T>::run(acc[s], a0, a1, a2, a3, bt[kh].x, bt[kh].y);
                }
                // Output row v - (KH - 1) has had its last tap row: rounded to 16 bits
                // into buffer ob (images g and g + 8).
                if (v >= KH - 1) {
                    const float* d = acc[(u + 1) % KH];
                    const unsigned oa = ob_addr + (unsigned)(ob * 16 * OPW * 4);
                    asm volatile("st.shared.b32 [%0], %1;" ::"r"(oa), "r"(pack2(T(), d[0], d[1])) : "memory");
                    asm volatile("st.shared.b32 [%0], %1;" ::"r"(oa + 8 * OPW * 4), "r"(pack2(T(), d[2], d[3]))
                                 : "memory");
                }
                ob ^= 1;
            }
        }
        __syncthreads();
        flush(ob ^ 1);       // the last output row
        cp_async_wait<0>();  // no copy outlives its unit
    }
#else
    __trap();  // the host plans conv_stack only on sm_80 and newer
#endif
}

// ---- wgrad_stack: the weight gradient on the same stacking -----------------------------
//
// Why: the weight gradient is a sum over the batch, and with 16 images of one channel as
// the MMA's K its products are matrix products as they stand:
//
//     D_kh[m][n] += sum_i X[i][xr][8j - PL - SX + m] * GO[i][gr][8j + n],   xr - gr = kh - PT
//
// (A: 16 staged x columns x 16 images, ldmatrix.trans; B: 8 grad_output columns x 16
// images, ldmatrix.trans), and dW[kh][kw] is the sum of D_kh over m - n - SX = kw, taken
// once per block. At step v, x row oh0 + v - KH + 1 (one A block) meets the grad_output
// rows of steps v - kh (KH B blocks); grad_bias is one more MMA per step, a matrix of ones
// against the step's grad_output. Per 8 columns of 16 images and row: 4 + 2 KH shared
// wavefronts and KH + 1 MMAs. (The float32 FMAs of wgrad_tile: 2 x 49 per element for
// convnext_7x7, 117.8 us against 44.5 here.)
//
// Units: the block (b, o) sweeps bands of RB x rows of channel o, 16 images at a time
// (units (group, band) b, b + chunks, ...); step v stages grad_output row oh0 + v - PTg
// (PTg = KH - 1 - PT: the rows that meet x row oh0 + v - KH + 1 at tap row 0 .. KH - 1 are
// those of steps v - KH + 1 .. v) and x row oh0 + v of the 16 images in one ring slot, kept
// KH steps (RS >= KH + PF slots). The tap sums stay in registers for the block's units,
// then are added in a fixed order into the block's partial row (wgrad_reduce adds the
// rows in chunk order: deterministic, like every weight-gradient path here).
//
// A fused backward on this stacking (grad_x as conv_stack's sweep of the rotated problem,
// in the same pass) measured 80.8 us against bwd_mma's 68.4 on convnext_7x7 float16: 144
// registers, two blocks per SM (benchmarks/NOTES.md, session 24).
//
// Bytes per element: x and grad_output read once (2 + 2), plus KH - 1 halo rows per band.
template <int KH, int KW, int WN, int PF>
struct WstackTile {
    static constexpr int NT = 32 * WN, KK = KH * KW;
    // Staged rows: grad_output columns 0 .. 8 WN - 1 (B blocks of 8 columns); x columns
    // -PL - SX .. -PL - SX + 8 WN + 7 (warp j's A block: staged columns 8j .. 8j + 15).
    // Pitches an odd number of 16-byte units: the 8 row addresses of an ldmatrix phase
    // (8 images) fall in 8 different bank groups.
    static constexpr int TIWG = 8 * WN, PG = ((TIWG / 8) % 2) ? TIWG : TIWG + 8;
    static constexpr int TIWX = 8 * WN + 8, PX = ((TIWX / 8) % 2) ? TIWX : TIWX + 8;
    // A slot's rows live KH steps (a grad_output row meets KH x rows), so RS >= KH + PF
    // slots, a multiple of KH (every slot index a constant in the sweep unrolled by RS).
    static constexpr int RS = KH * (1 + (PF + KH - 1) / KH);
    static constexpr int XOFF = 16 * PG * 2;  // the x rows within a slot
    static constexpr int SLOT = 16 * (PG + PX) * 2;
    static constexpr int RED_OFF = RS * SLOT;
    static constexpr int SMEM = RED_OFF + WN * (KK + 1) * 4;
};

// Template arguments: T half_t or bf16_t; KH KW kernel (stride 1, dilation 1, multiplier
// 1, padding within the kernel); WN warps, one 8-column block of grad_output each (8 WN =
// OW: whole rows); SX the staged x columns before column -PL (staged column
// 0 is x column -PL - SX, on an XG-byte copy boundary; SX + KW <= 9: the 8 + KW - 1 x
// columns of 8 grad_output columns in one A block of 16); XG the x copy width (16, 8 or
// 4; grad_output rows take 16-byte copies: OW % 8 == 0); PF rows in flight; MINB blocks
// per SM, as a register cap (__launch_bounds__(224, 3) made ptxas take 80 registers and
// spill; 96 fit).
template <class T, int KH, int KW, int WN, int SX, int XG, int PF, int MINB>
__global__ void __launch_bounds__(32 * WN) __maxnreg__((65536 / (32 * WN * MINB)) / 8 * 8)
wgrad_stack(const T* __restrict__ x, const T* __restrict__ go, float* __restrict__ partial, const WstackArgs a) {
    static_assert(sizeof(T) == 2, "tensor-core path: 16-bit storage");
    typedef WstackTile<KH, KW, WN, PF> G;
    static_assert(SX >= 0 && SX + KW <= 9, "one A block of 16 x columns per 8 grad_output columns");
    static_assert(KH >= 1 && KH <= 16 && WN >= 1 && WN <= 8 && PF >= 1 && PF <= 16, "geometry");
    static_assert((XG == 16 || XG == 8 || XG == 4) && G::TIWX % (XG / 2) == 0, "x copies");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int KK = G::KK, NT = G::NT, RS = G::RS, PG = G::PG, PX = G::PX;
    constexpr int CPRG = G::TIWG / 8, CPRX = G::TIWX / (XG / 2);  // copies per image row (grad_output, x)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    {
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)G::SMEM) __trap();  // host and kernel disagree on the geometry
    }
    const int N = a.N, C = a.C, n_chunks = a.n_chunks, IH = a.IH, IW = a.IW, OH = a.OH, OW = a.OW;
    const int PTg = KH - 1 - a.PT;  // grad_output row oh0 + v - PTg is staged at step v
    const int n_groups = (N + 15) / 16, n_bands = a.n_bands, RB = a.RB;
    const i64 plane_x = (i64)IH * IW, plane_g = (i64)OH * OW;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const unsigned xs_addr = smem_u32(smem_raw);
    // A: x columns 8 warp .. + 15 of the 16 images, transposed (lanes 0-7: images 0-7 at
    // staged column 8 warp, 8-15: the same images 8 columns on, 16-31: images 8-15).
    const unsigned a_xt = xs_addr + (unsigned)(G::XOFF + (((lane & 7) + 8 * (lane >> 4)) * PX + 8 * warp +
                                                          8 * ((lane >> 3) & 1)) * 2);
    // B: grad_output columns 8 warp .. + 7 of images 0-15 (lanes 0-15).
    const unsigned b_go = xs_addr + (unsigned)(((lane & 15) * PG + 8 * warp) * 2);
    constexpr unsigned ONES = (unsigned)OneBits<T>::value * 0x10001u;
    float* const red = reinterpret_cast<float*>(smem_raw + G::RED_OFF);

    for (int o = blockIdx.y; o < C; o += gridDim.y) {
        float dw[KH][4], db[4];
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) dw[kh][0] = dw[kh][1] = dw[kh][2] = dw[kh][3] = 0.f;
        db[0] = db[1] = db[2] = db[3] = 0.f;

        for (int unit = blockIdx.x; unit < n_groups * n_bands; unit += n_chunks) {
            const int grp = unit / n_bands, band = unit - grp * n_bands;
            const int n0 = 16 * grp, oh0 = band * RB;
            const int steps = min(RB, IH - oh0) + KH - 1;  // x rows oh0 - KH + 1 .. oh0 + RB - 1 at steps KH - 1 ..
            // Copies of grad_output rows (16 bytes; column 0 at staged column 0) and of x rows
            // (XG bytes; column -PL - SX at staged column 0), from step 0's rows (grad_output
            // row oh0 - PTg, x row oh0).
            StackCopies<T, 16, CPRG, NT> gcopies(go, n0, N, C, o, plane_g, oh0 - PTg, OW, 0, PG, 0u);
            StackCopies<T, XG, CPRX, NT> xcopies(x, n0, N, C, o, plane_x, oh0, IW, -a.PL - SX, PX, G::XOFF);
            int next = 0;  // the step whose rows the next stage() copies
            auto stage = [&](int slot) {
                const bool live = next < steps;
                const unsigned base = xs_addr + (unsigned)(slot * G::SLOT);
                gcopies.issue(base, (unsigned)(oh0 + next - PTg) < (unsigned)OH, live);
                xcopies.issue(base, oh0 + next < IH, live);
                ++next;
                cp_async_commit();
            };

            __syncthreads();  // the previous unit's reads of the ring are done
#pragma unroll
            for (int k = 0; k < PF; ++k) stage(k);
            for (int v0 = 0; v0 < steps; v0 += RS) {
#pragma unroll
                for (int u = 0; u < RS; ++u) {
                    const int v = v0 + u;
                    if (v >= steps) break;  // uniform across the block
                    // Step v's rows have landed (this thread's copies; after the barrier,
                    // everyone's); the slot of step v + PF held step v + PF - RS, whose last
                    // reader was step v + PF - RS + KH - 1 < v.
                    cp_async_wait<PF - 1>();
                    __syncthreads();
                    stage((u + PF) % RS);
                    // grad_bias: the ones against this step's grad_output row, from step KH - 1
                    // on, and before that in band 0 only (every grad_output row once: band
                    // b >= 1 owns rows oh0 + PT .. oh0 + rows + PT - 1). grad_weight: x row
                    // oh0 + v - KH + 1 against the grad_output rows of steps v - kh, from step
                    // KH - 1 on: each x row of the band once, with every tap row (the rows
                    // above the band are the previous band's: their slots, never staged in
                    // this unit, are skipped, not read).
                    unsigned b0, b1;
                    ldsm_x2_t(b_go + (unsigned)(u * G::SLOT), b0, b1);
                    if (band == 0 || v >= KH - 1) Mma<T>::run(db, ONES, ONES, ONES, ONES, b0, b1);
                    if (v >= KH - 1) {
                        unsigned x0, x1, x2, x3;
                        ldsm_x4_t(a_xt + (unsigned)(((u - KH + 1 + RS) % RS) * G::SLOT), x0, x1, x2, x3);
                        Mma<T>::run(dw[0], x0, x1, x2, x3, b0, b1);
#pragma unroll
                        for (int kh = 1; kh < KH; ++kh) {
                            unsigned c0, c1;
                            ldsm_x2_t(b_go + (unsigned)(((u - kh + RS) % RS) * G::SLOT), c0, c1);
                            Mma<T>::run(dw[kh], x0, x1, x2, x3, c0, c1);
                        }
                    }
                }
            }
            cp_async_wait<0>();  // no copy outlives its unit
        }

        // The block's tap sums: D_kh[m][n] (this lane: m = g, g + 8; n = 2 t4, + 1) belongs to
        // tap (kh, m - n - SX); grad_bias is row m = 0 of the ones product (lanes g == 0).
        // Each warp adds its lanes by a fixed butterfly, one tap row at a time (all KK + 1
        // sums at once spilled), and thread k adds the warps' sums k in warp order into the
        // block's partial row: a fixed order, as block_sum_to.
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            float v[KW];
#pragma unroll
            for (int kw = 0; kw < KW; ++kw) {
                const int d = kw + SX;  // m - n
                v[kw] = (g - 2 * t4 == d ? dw[kh][0] : 0.f) + (g - 2 * t4 - 1 == d ? dw[kh][1] : 0.f) +
                        (g + 8 - 2 * t4 == d ? dw[kh][2] : 0.f) + (g + 7 - 2 * t4 == d ? dw[kh][3] : 0.f);
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) v[kw] += __shfl_xor_sync(0xffffffffu, v[kw], off);
            }
            if (lane == 0) {
#pragma unroll
                for (int kw = 0; kw < KW; ++kw) red[warp * (KK + 1) + kh * KW + kw] = v[kw];
            }
        }
        {
            float v = g == 0 ? db[0] + db[1] : 0.f;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            if (lane == 0) red[warp * (KK + 1) + KK] = v;
        }
        __syncthreads();
        float* const row = partial + ((i64)o * n_chunks + blockIdx.x) * (KK + 1);
        for (int k = tid; k < KK + 1; k += NT) {
            float sum = 0.f;
            for (int i = 0; i < WN; ++i) sum += red[i * (KK + 1) + k];
            row[k] = sum;
        }
        __syncthreads();  // red is rewritten for the next channel
    }
#else
    __trap();  // the host plans wgrad_stack only on sm_80 and newer
#endif
}

}  // namespace dw
