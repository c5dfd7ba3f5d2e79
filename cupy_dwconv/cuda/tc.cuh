// Tensor-core and asynchronous-copy helpers shared by conv_mma (mma.cu) and wgrad_mma
// (wgrad_mma.cu): mma.sync m16n8k16 with float32 accumulation, ldmatrix, cp.async.
// Everything that needs sm_80 is guarded, so the sources also compile for older targets
// (whose kernels trap: the host never plans them there).
#pragma once
#include "common.cuh"

namespace dw {

// Shared-memory loads and stores at 32-bit shared addresses.
__device__ __forceinline__ unsigned lds32(unsigned addr) {
    unsigned v;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ uint4 lds128(unsigned addr) {
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}
__device__ __forceinline__ void sts128(unsigned addr, uint4 v) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" :: "r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}

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
// Transposing loads: register r of matrix i holds (row 2 (lane % 4) and + 1, column lane / 4):
// pairs along the staged rows (the MMA operands whose K runs across rows).
__device__ __forceinline__ void ldsm_x4_t(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_t(unsigned addr, unsigned& r0, unsigned& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(addr));
}
// mma.sync m16n8k16 with float32 accumulation, one specialization per 16-bit format; the
// two differ only in the operand type of the instruction.
template <class T> struct Mma;
#define DW_MMA_M16N8K16(T, PTX_TYPE)                                                                           \
    template <> struct Mma<T> {                                                                               \
        static __device__ __forceinline__ void run(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,      \
                                                   unsigned a3, unsigned b0, unsigned b1) {                   \
            asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 {%0, %1, %2, %3}, "      \
                "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                                               \
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                              \
                : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));                                      \
        }                                                                                                     \
        /* D = A B + C with C in other registers (a sum started from the bias) */                             \
        static __device__ __forceinline__ void run_c(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,    \
                                                     unsigned a3, unsigned b0, unsigned b1, const float (&c)[4]) { \
            asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 {%0, %1, %2, %3}, "      \
                "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"                                           \
                : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                              \
                : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]),      \
                  "f"(c[3]));                                                                                 \
        }                                                                                                     \
    };
DW_MMA_M16N8K16(half_t, "f16")
DW_MMA_M16N8K16(bf16_t, "bf16")
#undef DW_MMA_M16N8K16

// One tap row of the banded correlation of conv_mma and bwd_mma: the NCH = WN + 2 KS - 1
// 8-column chunks of 16 staged rows starting at byte address ra (ldmatrix.x4: lanes 0-15
// address rows 0-15 of chunk j, lanes 16-31 rows 0-15 of chunk j + 1), the tap row's
// Toeplitz fragments tab[s * 32 + lane] (toeplitz_entry), and WN * KS MMAs into acc: output
// block j, k-step s takes chunks j + 2s and j + 2s + 1, so neighbouring blocks share
// chunks and each chunk is read once per tap row.
template <class T, int WN, int KS>
__device__ __forceinline__ void toeplitz_row(float (&acc)[WN][4], unsigned ra, const uint2* tab, int lane) {
    constexpr int NCH = WN + 2 * KS - 1;
    unsigned c[NCH + 1][2];
#pragma unroll
    for (int j = 0; j + 1 < NCH; j += 2) ldsm_x4(ra + 16 * j, c[j][0], c[j][1], c[j + 1][0], c[j + 1][1]);
    if (NCH % 2) ldsm_x2(ra + 16 * (NCH - 1), c[NCH - 1][0], c[NCH - 1][1]);
    uint2 b[KS];
#pragma unroll
    for (int s = 0; s < KS; ++s) b[s] = tab[s * 32 + lane];
#pragma unroll
    for (int j = 0; j < WN; ++j)
#pragma unroll
        for (int s = 0; s < KS; ++s)
            Mma<T>::run(acc[j], c[j + 2 * s][0], c[j + 2 * s][1], c[j + 2 * s + 1][0], c[j + 2 * s + 1][1], b[s].x,
                        b[s].y);
}
#endif

// L2 prefetch size of every cp.async copy (PTX .L2::128B, sm_80+): a copy also brings the
// rest of its aligned 128-byte block into L2, so the copies that follow it along a row,
// and the next rows of a sweep, find their bytes there instead of waiting a DRAM round
// trip. The row sweeps are bound by the bytes they keep in flight (session 30: ~3.1 TB/s
// against the copy's 4.2). Measured in one process (H200, us, none / 128 B / 256 B):
// forward mbv2_3x3 float16 40.0 / 39.6 / 39.35, effnet_5x5 float32 36.2 / 34.9 / 34.9,
// convnext_7x7 float16 (conv_stack) 32.2 / 31.15 / 31.15, seed_3x7 float16 (conv_mma_rows)
// 153.7 / 152.1 / 155.2, seed_3x7 float32 297.2 / 295.0 / 296.0, dilated_3x3_d2 75.6 /
// 75.5 / 76.9; backward effnet_5x5 57.1 / 54.35 / 54.6, seed_3x7 float32 423.2 / 417.3 /
// 420.2, mbv2_3x3 float16 72.2 / 71.6 / 70.9; the other sweeps within 0.5 %. 128 B is
// nowhere slower than none; 256 B is, on some. cp_async_pred's L2W takes 256 B where a
// caller asks: conv_rows_async without rows ahead (L2A 0, the host's rows under 256
// bytes; see there).
#define DW_CP_L2 ".L2::128B"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global" DW_CP_L2 " [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int bytes) {
    asm volatile("cp.async.ca.shared.global" DW_CP_L2 " [%0], [%1], 4, %2;" :: "r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async8(unsigned dst, const void* src, int bytes = 8) {
    asm volatile("cp.async.ca.shared.global" DW_CP_L2 " [%0], [%1], 8, %2;" :: "r"(dst), "l"(src), "r"(bytes));
}
// The predicated copy's text with its L2 qualifier (a string literal: asm takes no other).
#define DW_CP_PRED16(L2) "{ .reg .pred p; setp.ne.b32 p, %3, 0; @p cp.async.cg.shared.global" L2 " [%0], [%1+%4], 16, %2; }"
#define DW_CP_PRED(L2) "{ .reg .pred p; setp.ne.b32 p, %3, 0; @p cp.async.ca.shared.global" L2 " [%0], [%1+%5], %4, %2; }"
// One copy of B bytes (4, 8 or 16) issued only where `on` (a predicated instruction, not
// a branch), zero-filled in shared memory when !ok (src unread). OFF: a constant byte
// offset on the source, written into the instruction (where a caller adds it to the
// pointer instead, ptxas keeps base + OFF in a register pair per copy). L2W: the copy
// prefetches its aligned 256-byte block into L2 instead of the 128-byte one.
template <int B, int OFF = 0, bool L2W = false>
__device__ __forceinline__ void cp_async_pred(unsigned dst, const void* src, bool ok, bool on) {
    static_assert(B == 4 || B == 8 || B == 16, "cp.async sizes");
    if constexpr (B == 16 && L2W)
        asm volatile(DW_CP_PRED16(".L2::256B") :: "r"(dst), "l"(src), "r"(ok ? 16 : 0), "r"((int)on), "n"(OFF));
    else if constexpr (B == 16)
        asm volatile(DW_CP_PRED16(DW_CP_L2) :: "r"(dst), "l"(src), "r"(ok ? 16 : 0), "r"((int)on), "n"(OFF));
    else if constexpr (L2W)
        asm volatile(DW_CP_PRED(".L2::256B") :: "r"(dst), "l"(src), "r"(ok ? B : 0), "r"((int)on), "n"(B), "n"(OFF));
    else
        asm volatile(DW_CP_PRED(DW_CP_L2) :: "r"(dst), "l"(src), "r"(ok ? B : 0), "r"((int)on), "n"(B), "n"(OFF));
}
// Copy a rows x cols block of a row-major global array (row pitch spitch elements) to
// shared memory at byte address dst (row pitch dpitch elements), the whole block together,
// one cp.async per element (4, 8 or 16 bytes: no conversion); BlockCopy is the plan of one
// thread, cp_async_block makes and runs it. A thread's (row, column) starts
// at divmod(threadIdx.x, cols) and advances by divmod(blockDim.x, cols), and both offsets
// are stepped, so the loop does no division and no multiply (SASS: 12 instructions per
// element; a division per element cost 54). 32-bit offsets: the block fits in shared
// memory.
template <class A>
struct BlockCopy {
    static_assert(sizeof(A) == 4 || sizeof(A) == 8 || sizeof(A) == 16, "cp.async of one element");
    int n, c0, cols, dc, g0, g_step, g_wrap;
    unsigned d0, d_step, d_wrap;
    // This thread's start and steps, worked out once (kernels that copy blocks of the same
    // shape per item keep the plan: two divisions and a dozen multiplies per call).
    __device__ __forceinline__ BlockCopy(int rows, int cols_, int spitch, int dpitch) : cols(cols_) {
        const int nthreads = blockDim.x, tid = threadIdx.x;
        n = rows > 0 && cols > 0 ? rows * cols : 0;
        const int cc = cols > 0 ? cols : 1;
        const int r = tid / cc, dr = nthreads / cc;
        c0 = tid - r * cc;
        dc = nthreads - dr * cc;
        d0 = (unsigned)((r * dpitch + c0) * (int)sizeof(A));
        g0 = r * spitch + c0;
        d_step = (unsigned)((dr * dpitch + dc) * (int)sizeof(A));
        d_wrap = (unsigned)((dpitch - cols) * (int)sizeof(A));
        g_step = dr * spitch + dc;
        g_wrap = spitch - cols;
    }
    __device__ __forceinline__ void run(unsigned dst, const A* src) const {
        int c = c0;
        unsigned d = dst + d0;
        const A* g = src + g0;
        for (int k = threadIdx.x; k < n; k += blockDim.x) {
            if constexpr (sizeof(A) == 4) cp_async4(d, g, 4);
            else if constexpr (sizeof(A) == 8) cp_async8(d, g, 8);
            else cp_async16(d, g, 16);
            d += d_step;
            g += g_step;
            c += dc;
            if (c >= cols) { c -= cols; d += d_wrap; g += g_wrap; }
        }
    }
};
template <class A>
__device__ __forceinline__ void cp_async_block(unsigned dst, const A* src, int rows, int cols, int spitch, int dpitch) {
    if (rows <= 0 || cols <= 0) return;
    BlockCopy<A>(rows, cols, spitch, dpitch).run(dst, src);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
#endif

// Banded (Toeplitz) B fragments of a depthwise correlation on mma.sync m16n8k16 (conv_mma,
// bwd_mma). Entry e = (kh * KS + s) * 32 + lane is this lane's fragment of tap row kh,
// k-step s: b0 = (B[k][n], B[k+1][n]), b1 = (B[k+8][n], B[k+9][n]) with k = 16 s + 2 (lane %
// 4), n = lane / 4 and B[k][n] = w[kh][k - n - SHIFT] (zero outside the kernel); FLIP reads
// the kernel rotated by 180 degrees (grad input). toeplitz_pos gives the entry's tap row
// and d = k - n - SHIFT of its b0 (>= -14).
template <int KS, int SHIFT>
__device__ __forceinline__ void toeplitz_pos(int e, int& kh, int& d) {
    const int ln = e & 31, kk = e >> 5;
    kh = kk / KS;
    d = 16 * (kk - kh * KS) + 2 * (ln & 3) - (ln >> 2) - SHIFT;
}
// An entry's four 16-bit weights as the two fragment registers.
__device__ __forceinline__ uint2 toeplitz_pack(const unsigned (&h)[4]) {
    return make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
}
// Entry e, its weights (0 outside the kernel) read from the KH x KW row wp.
template <int KH, int KW, int KS, int SHIFT, bool FLIP>
__device__ __forceinline__ uint2 toeplitz_entry(const unsigned short* wp, int e) {
    int kh, d;
    toeplitz_pos<KS, SHIFT>(e, kh, d);
    unsigned h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int kw = d + (i & 1) + 8 * (i >> 1);
        const int src = FLIP ? (KH - 1 - kh) * KW + (KW - 1 - kw) : kh * KW + kw;
        h[i] = (kw >= 0 && kw < KW) ? (unsigned)__ldg(wp + src) : 0u;
    }
    return toeplitz_pack(h);
}

__device__ __forceinline__ unsigned pack2(half_t, float a, float b) { return pack_h(a, b); }
__device__ __forceinline__ unsigned pack2(bf16_t, float a, float b) { return pack_b(a, b); }

// 1.0 in each 16-bit format.
template <class T> struct OneBits;
template <> struct OneBits<half_t> { static constexpr unsigned short value = 0x3c00; };
template <> struct OneBits<bf16_t> { static constexpr unsigned short value = 0x3f80; };

}  // namespace dw
