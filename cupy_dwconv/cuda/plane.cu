// Depthwise convolution of whole planes (ConvNeXt's 7x7 stage, Inception's 17x17; large
// kernels on planes that fit in shared memory): a block owns P whole planes, copied in
// as one contiguous run of memory.
//
//   conv_plane   forward (and the grad input at stride 1, as a forward with the rotated
//                kernel): the plane geometry is a template constant, so every padding
//                test and every index folds at compile time.
//   conv_batch   the same problems (one input plane per output plane), a unit per
//                channel (or 4) across 32 (or 8) batch items and a warp per output row
//                (lanes: planes); persistent blocks load the next unit during this one.
//   conv_lines   the same for large kernels (more than 64 taps) on planes up to what
//                shared memory holds: a thread per output row, tap rows outside the
//                plane skipped at run time, columns at compile time.
//   wgrad_plane  weight and bias gradients, stage 1 (partials per batch chunk, summed in
//                order by wgrad_reduce in wgrad.cu: deterministic, no atomics).
//
// Why a kernel of its own: on a 7x7 plane a register tile (conv_tile) is mostly halo, each
// thread loads its KH*KW weights and KH rows of its own for 7 outputs, and neighbouring
// threads read addresses a plane apart, so the kernel is bound by load instructions
// (convnext_7x7_s4: 18 % of the memory floor). Here the P planes of a block are contiguous
// in memory (P*IH*IW elements), so the block stages them with coalesced loads, each thread
// reads its rows from shared memory, and the results leave the same way.
//
// Bytes per output: (R*IH*IW/(OH*OW) + 1) elements of DRAM traffic, every element moved
// once; weights (P*R*KH*KW per block) are L2 hits after the first batch item.
#include "tc.cuh"
#include "blocksum.cuh"

namespace dw {

// The bits of one element, as loaded and stored (16-bit types move as unsigned short).
template <class T> struct Raw { typedef T type; };
template <> struct Raw<half_t> { typedef unsigned short type; };
template <> struct Raw<bf16_t> { typedef unsigned short type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
template <class T> __device__ __forceinline__ float to_acc16(unsigned short v);
template <> __device__ __forceinline__ float to_acc16<half_t>(unsigned short v) { return h2f(v); }
template <> __device__ __forceinline__ float to_acc16<bf16_t>(unsigned short v) { return b2f(v); }
template <class T> __device__ __forceinline__ typename Traits<T>::acc smem_elem(const typename Raw<T>::type* p) {
    if constexpr (sizeof(T) == 2) return to_acc16<T>(*p);
    else return to_acc(*p);
}

// Elements of p's type between the last 16-byte boundary and p: a shared-memory run that
// starts this many elements past a 16-byte boundary has the same remainder as p.
template <class R>
__device__ __forceinline__ int vec_phase(const R* p) {
    return (int)((reinterpret_cast<unsigned long long>(p) / sizeof(R)) % (16 / sizeof(R)));
}

// Copy `count` consecutive elements, the whole block together, from src to dst, where
// both addresses have the same remainder modulo 16 bytes: a scalar head up to the first
// 16-byte boundary, 16-byte vectors, a scalar tail. U vectors per thread are loaded before
// the first is stored, so each thread keeps U requests in flight (a load-then-store loop
// waits a full memory latency per element). GLOBAL_SRC: src is global memory (read
// through the read-only path), else shared memory.
template <int U, bool GLOBAL_SRC, class R>
__device__ __forceinline__ void copy_run(const R* src, R* dst, int count) {
    constexpr int V = 16 / (int)sizeof(R);
    const int head = min(count, (V - vec_phase(src)) % V);
    const int nvec = (count - head) / V;
    for (int i = threadIdx.x; i < head; i += blockDim.x) dst[i] = GLOBAL_SRC ? __ldg(src + i) : src[i];
    const uint4* vs = reinterpret_cast<const uint4*>(src + head);
    uint4* vd = reinterpret_cast<uint4*>(dst + head);
    for (int base = threadIdx.x; base < nvec; base += U * blockDim.x) {
        uint4 v[U];
#pragma unroll
        for (int k = 0; k < U; ++k) {
            const int i = base + k * blockDim.x;
            if (i < nvec) v[k] = GLOBAL_SRC ? __ldg(vs + i) : vs[i];
        }
#pragma unroll
        for (int k = 0; k < U; ++k) {
            const int i = base + k * blockDim.x;
            if (i < nvec) vd[i] = v[k];
        }
    }
    for (int i = head + nvec * V + threadIdx.x; i < count; i += blockDim.x) dst[i] = GLOBAL_SRC ? __ldg(src + i) : src[i];
}

// Starts copying `count` consecutive elements from global src to shared dst (both with
// the same remainder modulo 16 bytes), the whole block together. sm_80+: cp.async, 16-byte
// copies plus element copies at the ends, so every copy of the block is in flight at once
// and no register holds them; stage_commit_wait() waits for them. Older targets: copy_run.
template <class R>
__device__ __forceinline__ void stage_async(const R* src, R* dst, int count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int V = 16 / (int)sizeof(R);
    const int head = min(count, (V - vec_phase(src)) % V);
    const int nvec = (count - head) / V;
    const unsigned d0 = smem_u32(dst);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x)
        cp_async16(d0 + (unsigned)((head + i * V) * (int)sizeof(R)), src + head + i * V, 16);
    for (int i = threadIdx.x; i < count - nvec * V; i += blockDim.x) {
        const int e = i < head ? i : i + nvec * V;  // the head, then the tail
        if constexpr (sizeof(R) == 4) cp_async4(d0 + (unsigned)(e * 4), src + e, 4);
        else if constexpr (sizeof(R) == 8) cp_async8(d0 + (unsigned)(e * 8), src + e);
        else dst[e] = __ldg(src + e);  // 16-bit ends: under 8 elements per run
    }
#else
    copy_run<8, true>(src, dst, count);
#endif
}

// Closes this thread's stage_async copies issued since the last call into one group.
__device__ __forceinline__ void stage_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    cp_async_commit();
#endif
}

// Closes the copies issued since the last commit into a group, waits until at most
// PENDING of this thread's groups are still in flight (sm_80+; older targets copied
// synchronously), then a block barrier makes every thread's finished copies visible.
template <int PENDING>
__device__ __forceinline__ void stage_commit_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    cp_async_commit();
    cp_async_wait<PENDING>();
#endif
    __syncthreads();
}

// One group of conv_plane: planes [q0, q0 + np) of the output, which read the input
// planes [in_lo, in_hi) and the weight rows of channels ch0, ch0 + 1, ... (mod QC).
struct PlaneGroup {
    i64 q0, in_lo, in_hi;
    int np, ch0;
};

// Shared-memory layout of conv_plane (the host sizes it with the same formula,
// _kernels.plane_smem_bytes): NS stages, each the weights of its group [P*R][KH*KW] (two
// runs, + 2 V elements) and its input planes [P*R][IH*IW] (+ V), then one buffer of
// output planes [P][OH*OW] (+ V); storage type, every region on a 16-byte boundary. The
// V spare elements let a run start at its global address's remainder modulo 16 bytes
// (vec_phase), so it moves in 16-byte vectors.
//
// The weights of a group are those of consecutive channels, so they are one contiguous run
// (channels [ch0, ch0 + nA)) plus, where the group crosses into the next batch item, a
// second from channel 0 ([0, nB)); each is copied as a run (16-byte vectors), not row by
// row with a division per element (which cost as many instructions as the FMAs on 7x7).

// conv_plane: thread (p, b) computes output rows [b*ROWS, b*ROWS + ROWS) of plane p of the
// block's group (NB = ceil(OH / ROWS) threads per plane; NB == 1 makes every row test a
// compile-time constant). Row-outer as conv_tile: input row r of the band's window is read
// from shared memory once and feeds every (output row t, tap row kh) pair with
// t*SH + kh*DH == r; columns outside the plane are dropped at compile time, so shared
// memory holds the planes exactly as they lie in global memory (no padding is staged).
//
// A thread's plane starts IH*IW elements after its neighbour's: an odd plane size puts
// the 32 lanes of a warp in 32 different banks.
//
// Pipeline (NS == 2): a block takes groups blockIdx.x, blockIdx.x + gridDim.x, ... and
// starts copying group i+1 into the other stage before it computes group i, so the copies
// of the next group are in flight while this one is computed and stored. NS == 1: copy,
// compute, store, one group after another (several resident blocks overlap instead).
//
// Template arguments: T storage type; KH KW SH SW DH DW kernel geometry; IH IW OH OW PT PL
// plane geometry and padding (negative PT/PL crop: the rotated grad-input problem);
// ROWS output rows per thread; FLIP read the kernel rotated by 180 degrees; NS stages;
// BLOCK, MINB launch bounds.
template <class T, int KH, int KW, int SH, int SW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL,
          int ROWS, bool FLIP, int NS, int BLOCK, int MINB>
__global__ void __launch_bounds__(BLOCK, MINB)
conv_plane(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
           const PlaneArgs a) {
    typedef typename Traits<T>::acc A;
    typedef typename Raw<T>::type RT;
    constexpr int KK = KH * KW, IHW = IH * IW, OHW = OH * OW;
    constexpr int NB = (OH + ROWS - 1) / ROWS;       // threads per plane
    constexpr int WIN = (ROWS - 1) * SH + (KH - 1) * DH + 1;  // input rows of a band
    static_assert(KK <= 64 && ROWS * OW <= 64 && IW <= 64, "register budget: KH*KW weights, ROWS*OW sums, one row");
    static_assert(NS == 1 || NS == 2, "one stage, or two (double buffering)");
    const i64 n_planes = a.n_planes, IC = a.IC;
    const int QC = a.QC, DIV = a.DIV, R = a.R, P = a.P;

    constexpr int V = 16 / (int)sizeof(T);
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int w_bytes = round_up((P * R * KK + 2 * V) * (int)sizeof(T), 16);
    const int x_bytes = round_up((P * R * IHW + V) * (int)sizeof(T), 16);
    RT* const ys0 = reinterpret_cast<RT*>(smem_raw + NS * (w_bytes + x_bytes));
    auto ws_of = [&](int s) { return reinterpret_cast<RT*>(smem_raw + s * (w_bytes + x_bytes)); };
    auto xs_of = [&](int s) { return reinterpret_cast<RT*>(smem_raw + s * (w_bytes + x_bytes) + w_bytes); };
    const RT* const wr_g = reinterpret_cast<const RT*>(w);
    const int RKK = R * KK;  // weight elements per channel

    const int tid = threadIdx.x;
    const int my_p = tid / NB, my_b = tid - my_p * NB;

    auto group_at = [&](i64 q0) {
        PlaneGroup g;
        g.q0 = q0;
        g.np = (int)min((i64)P, n_planes - q0);
        const PlaneMap m0 = map_plane(q0, QC, IC, DIV, R);
        g.in_lo = m0.in_plane0;
        g.ch0 = m0.ch;
        // Input planes n*IC + (ch/DIV)*R + m increase with q, across batch items too: the
        // group's input is one contiguous run.
        g.in_hi = map_plane(q0 + g.np - 1, QC, IC, DIV, R).in_plane0 + R;
        return g;
    };
    // Channels of the group's first weight run, and where each run lies in stage s.
    auto runs = [&](const PlaneGroup& g, int s, RT*& wsA, RT*& wsB) {
        const int nA = min(g.np, QC - g.ch0);
        wsA = ws_of(s) + vec_phase(wr_g + (i64)g.ch0 * RKK);
        const int b = (int)(wsA - ws_of(s)) + nA * RKK;
        wsB = ws_of(s) + b + ((vec_phase(wr_g) - b) % V + V) % V;
        return nA;
    };
    auto issue = [&](const PlaneGroup& g, int s) {
        const RT* xg = reinterpret_cast<const RT*>(x + g.in_lo * IHW);
        stage_async(xg, xs_of(s) + vec_phase(xg), (int)(g.in_hi - g.in_lo) * IHW);
        RT *wsA, *wsB;
        const int nA = runs(g, s, wsA, wsB);
        stage_async(wr_g + (i64)g.ch0 * RKK, wsA, nA * RKK);
        const int nB = min(g.ch0, g.np - nA);  // all QC channels when the group spans them
        if (nB > 0) stage_async(wr_g, wsB, nB * RKK);
    };

    i64 q0 = (i64)blockIdx.x * P;
    if (q0 >= n_planes) return;
    PlaneGroup cur = group_at(q0);
    if constexpr (NS == 2) {
        issue(cur, 0);
        stage_commit();  // a group of its own: the first wait below must not wait for group 1
    }
    for (int it = 0;; ++it) {
        const int s = NS == 2 ? (it & 1) : 0;
        const i64 q_next = cur.q0 + (i64)gridDim.x * P;
        const bool more = q_next < n_planes;
        PlaneGroup nxt = cur;
        if constexpr (NS == 2) {
            // Stage s^1 was last read by the compute of group it-1, which ended before that
            // iteration's second barrier.
            if (more) {
                nxt = group_at(q_next);
                issue(nxt, s ^ 1);
            }
            stage_commit_wait<1>();  // every group but the newest (the next one) has landed
        } else {
            issue(cur, 0);  // the previous group's compute ended before its second barrier
            stage_commit_wait<0>();
        }

        if (my_p < cur.np) {
            const PlaneMap pm = map_plane(cur.q0 + my_p, QC, IC, DIV, R);
            RT *wsA, *wsB;
            runs(cur, s, wsA, wsB);
            const RT* const wch = pm.ch >= cur.ch0 ? wsA + (pm.ch - cur.ch0) * RKK : wsB + pm.ch * RKK;
            const RT* const xs = xs_of(s) + vec_phase(reinterpret_cast<const RT*>(x + cur.in_lo * IHW));
            const A b0 = (!FLIP && bias != nullptr) ? load1(bias + pm.ch) : A(0);
            A acc[ROWS][OW];
#pragma unroll
            for (int t = 0; t < ROWS; ++t)
#pragma unroll
                for (int j = 0; j < OW; ++j) acc[t][j] = b0;
            const int oh0 = my_b * ROWS;
            for (int m = 0; m < R; ++m) {
                const RT* xp = xs + (pm.in_plane0 + m - cur.in_lo) * IHW;
                const RT* wt = wch + m * KK;
                A wr[KK];
#pragma unroll
                for (int k = 0; k < KK; ++k) wr[k] = smem_elem<T>(wt + (FLIP ? KK - 1 - k : k));
#pragma unroll
                for (int r = 0; r < WIN; ++r) {
                    const int ih = oh0 * SH - PT + r;  // a constant when NB == 1
                    if ((unsigned)ih >= (unsigned)IH) continue;
                    A row[IW];
#pragma unroll
                    for (int c = 0; c < IW; ++c) row[c] = smem_elem<T>(xp + ih * IW + c);
#pragma unroll
                    for (int t = 0; t < ROWS; ++t)
#pragma unroll
                        for (int kh = 0; kh < KH; ++kh) {
                            if (t * SH + kh * DH != r) continue;
#pragma unroll
                            for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                                for (int j = 0; j < OW; ++j) {
                                    const int iw = j * SW - PL + kw * DW;
                                    if (iw >= 0 && iw < IW) acc[t][j] = fma(row[iw], wr[kh * KW + kw], acc[t][j]);
                                }
                        }
                }
            }
            // ys was last read by the previous group's copy-out, before the barrier above.
            RT* const yp = ys0 + vec_phase(reinterpret_cast<const RT*>(y + cur.q0 * OHW)) + my_p * OHW;
#pragma unroll
            for (int t = 0; t < ROWS; ++t) {
                if (NB > 1 && oh0 + t >= OH) break;
#pragma unroll
                for (int j = 0; j < OW; ++j) {
                    T v;
                    store1(&v, acc[t][j]);
                    yp[(oh0 + t) * OW + j] = *reinterpret_cast<const RT*>(&v);
                }
            }
        }
        __syncthreads();
        // The group's outputs are one contiguous run too.
        RT* const yg = reinterpret_cast<RT*>(y + cur.q0 * OHW);
        copy_run<4, false>(ys0 + vec_phase(yg), yg, cur.np * OHW);
        // The next compute writes ys only after the next stage_commit_wait's barrier.
        if (!more) break;
        if constexpr (NS == 2) cur = nxt;
        else cur = group_at(q_next);
    }
}

// conv_batch: small planes, CG channels across a chunk of 32 / CG images per unit
// (ConvNeXt's last stage: 64 x 768 planes of 7x7 under a 7x7 kernel). Warp t computes
// output row t of every plane of the unit, one plane per lane (lane = c * NI + image).
//
// Why, against conv_plane (a thread per whole plane, 49 sums, 145 registers, 12 warps per
// SM in one wave whose copies, FMAs and stores do not overlap): here a thread holds one
// output row (OW sums, one staged row, one weight row), so a block of OH warps leaves
// room for ~28 warps per SM. The lanes of a warp share an output row, so the test whether
// a tap row lies inside the plane is uniform across the warp (rows outside the plane are
// skipped without divergence; columns outside it are dropped at compile time), and they
// share CG channels' weights (broadcast reads; conv_plane stages a weight plane per plane).
//
// Staging and copy-out (BatchRuns, BatchOut): an image's CG planes of the unit are one
// contiguous run, consecutive lanes take consecutive accesses (coalesced), spread over
// the block by image or flat (see BatchRuns). CG == 1: element by element (any alignment,
// any multiplier). CG == 4 (float32, 4 | channels, a 16-byte aligned input, one input
// plane per output channel): 16-byte vectors, a quarter of the load and store
// instructions, which were most of CG == 1's (NOTES, session 27).
//
// Pipeline: blocks are persistent (units blockIdx.x, blockIdx.x + gridDim.x, ...). The
// loads of the next unit's planes, weights and bias go out into registers right after
// this unit's first barrier and land while this unit is computed and stored; they are
// written to shared memory after the second barrier (every read of the staged unit is
// done). 16-bit values stay raw in those registers: a conversion next to the load would
// wait for it.
//
// Shared memory: weights [CG][KH][KWP] and input planes [lane][IH][RP], both converted to
// the accumulation type (16-byte row reads, no conversion in the FMA loop); plane stride
// IS with IS*sizeof(A)/16 odd, so the 8 lanes of a quarter-warp reading the same row of 8
// planes hit distinct 16-byte bank groups. Outputs [image][OPS] in the storage type (the
// image's CG output planes, as they lie in memory): CG == 1, OPS*sizeof(T) an odd number
// of 4-byte words (8-byte types: of 8-byte words); CG == 4, an odd number of 16-byte
// vectors; either way the lanes' stores of one output hit distinct banks.
//
// Bytes per output: (IH*IW/(OH*OW) + 1) elements of DRAM traffic, every element moved
// once; the weights (CG*KH*KW per unit) are L2 hits after the first chunk.
//
// One input plane per output plane (forward: any multiplier at CG == 1; grad input at
// stride 1 with multiplier 1, the rotated problem). Template arguments: T storage type;
// KH KW SH SW DH DW kernel geometry; IH IW OH OW PT PL plane geometry and padding
// (negative PT/PL crop: the rotated grad-input problem); FLIP read the kernel rotated by
// 180 degrees; CG channels per unit (1 or 4); MINB launch bound (BLOCK = OH * 32).
template <class A, int IH, int IW>
struct BatchLayout {
    static constexpr int LV = SmemVec<A>::N;       // accumulator values per 16-byte read
    static constexpr int RP = round_up(IW, LV);   // staged row pitch
    static constexpr int PS = IH * RP;            // one staged plane
    // Plane stride: an odd number of 16-byte slots.
    static constexpr int IS = (PS * (int)sizeof(A) / 16) % 2 == 1 ? PS : PS + LV;
};

// The raw bits of BYTES bytes, loaded and stored as one access.
template <int BYTES> struct RawBits;
template <> struct RawBits<2> { typedef unsigned short type; };
template <> struct RawBits<4> { typedef unsigned type; };
template <> struct RawBits<8> { typedef unsigned long long type; };
template <> struct RawBits<16> { typedef uint4 type; };

// One tensor's planes of a batch unit on their way into shared memory (conv_batch's
// input; bwd_batch's x and grad_output): CG consecutive channels of NI = 32 / CG images,
// each image's CG planes one contiguous run of H*W*CG elements, RV accesses of VE elements
// (16-byte vectors at CG == 4), loaded into registers by fetch (coalesced) and converted
// to the accumulation type and written to the staged planes [lane][H][RP], IS apart, by
// put. Where each element lands (soff) is the same for every unit: worked out once. Two
// ways to spread the accesses over the block's NW warps, whichever holds fewer registers:
//   by image (FLAT false): warp w loads images w, w + NW, ..., lane l accesses l, l + 32,
//     ... of each run; soff is the same for every image (one per access of a run).
//   flat (FLAT true): access q = tid + j*BLOCK of the unit's NI * RV is image q / RV,
//     access q % RV of its run; soff per access. With UB (conv_batch), also where it lies
//     past the unit's first element (boff: bytes, 32 bits), so the unit's address is worked
//     out once per unit rather than per access (convnext_7x7_s4: 27 fewer instructions per
//     warp and unit under NVRTC 13.0; bwd_batch's loop grew by ~50 with them, so it keeps
//     the per-access 64-bit offsets; NOTES, session 29). convnext_7x7_s4 float32 (4
//     channels x 8 images of 49 vectors on 7 warps): by image 2 images x 2 rounds of 32
//     lanes (16 of the 32 vector registers idle), flat 2 vectors a thread. (A table of the
//     offsets in shared memory, read back every unit instead of held in registers,
//     measured slower: NOTES, session 28.)
template <class T, int CG, int BLOCK, int H, int W, int RP, int IS, bool UB>
struct BatchRuns {
    typedef typename Traits<T>::acc A;
    static constexpr int NI = 32 / CG, NW = BLOCK / 32;
    static constexpr int VE = CG == 1 ? 1 : 16 / (int)sizeof(T);  // storage elements per access
    typedef typename RawBits<VE * (int)sizeof(T)>::type V;
    static constexpr int HW = H * W, RUN = CG * HW, RV = RUN / VE;
    static constexpr int VR = (VE * (int)sizeof(T) + 3) / 4;      // registers per access
    static constexpr int IPW = (NI + NW - 1) / NW, JW = (RV + 31) / 32;  // by image
    static constexpr int JF = (NI * RV + BLOCK - 1) / BLOCK;             // flat
    // Flat where it holds fewer registers (+ each access's image and position) and at most
    // two accesses a thread: with more, ptxas spilled some specializations at their caps.
    static constexpr bool FLAT = JF <= 2 && JF * (VR + VE + 2) < IPW * JW * VR + JW * VE;
    static constexpr int JV = FLAT ? JF : IPW * JW;  // accesses in flight per thread
    static constexpr int JS = FLAT ? JF : JW;        // soff rows
    static constexpr bool BOFF = UB && FLAT;         // boff held (see fetch)
    static_assert(RUN % VE == 0, "runs of whole vectors");
    V v[JV];
    int soff[JS][VE];  // flat: where access j lands; by image: where access j of image 0's run does
    unsigned boff[BOFF ? JF : 1];  // BOFF: access j's bytes past the unit's first element
    int tid;

    // C: the tensor's channels (its images are C*H*W elements apart; with BOFF the host
    // checks that NI images span fewer than 2^31 bytes, so boff fits 32 bits).
    __device__ __forceinline__ BatchRuns(int tid_, int C) : tid(tid_) {
        if constexpr (BOFF) {
#pragma unroll
            for (int j = 0; j < JF; ++j) {
                const int q = tid + j * BLOCK, img = q / RV;
                boff[j] = (unsigned)(img * C * HW + (q - img * RV) * VE) * (unsigned)sizeof(T);
            }
        }
#pragma unroll
        for (int j = 0; j < JS; ++j) {
            const int q = FLAT ? tid + j * BLOCK : (tid & 31) + 32 * j, img = FLAT ? q / RV : 0, k = q - img * RV;
#pragma unroll
            for (int e = 0; e < VE; ++e) {
                const int el = k * VE + e, c = el / HW, kk = el - c * HW, r = kk / W;
                soff[j][e] = (c * NI + img) * IS + r * RP + (kk - r * W);
            }
        }
    }
    // The unit's runs of tensor x (C channels of H x W planes): images n0 .. n0 + ni - 1,
    // channels c0 .. c0 + CG - 1. Offsets past x in 64 bits (they pass 2^31 on large
    // batches). BOFF: the unit's first element once, then each access's 32-bit boff.
    __device__ __forceinline__ void fetch(const T* x, int n0, i64 c0, int C, int ni) {
        if constexpr (BOFF) {
            const char* const src = reinterpret_cast<const char*>(x + ((i64)n0 * C + c0) * HW);
#pragma unroll
            for (int j = 0; j < JF; ++j)
                if (tid + j * BLOCK < ni * RV) v[j] = __ldg(reinterpret_cast<const V*>(src + boff[j]));
        } else if constexpr (FLAT) {
            const V* const src = reinterpret_cast<const V*>(x) + ((i64)n0 * C + c0) * HW / VE;
            const i64 step = (i64)C * HW / VE;
#pragma unroll
            for (int j = 0; j < JF; ++j) {
                const int q = tid + j * BLOCK, img = q / RV;
                if (q < ni * RV) v[j] = __ldg(src + img * step + (q - img * RV));
            }
        } else {
            const int warp = tid >> 5, lane = tid & 31;
            const V* src = reinterpret_cast<const V*>(x) + ((i64)(n0 + warp) * C + c0) * HW / VE;
            const i64 step = (i64)NW * C * HW / VE;
#pragma unroll
            for (int i = 0; i < IPW; ++i, src += step) {
                if (warp + i * NW < ni) {
#pragma unroll
                    for (int j = 0; j < JW; ++j)
                        if (lane + 32 * j < RV) v[i * JW + j] = __ldg(src + lane + 32 * j);
                }
            }
        }
    }
    __device__ __forceinline__ void put(A* xs, int ni) const {
        typedef typename Raw<T>::type RT;
        if constexpr (FLAT) {
#pragma unroll
            for (int j = 0; j < JF; ++j) {
                if (tid + j * BLOCK < ni * RV) {
                    const RT* const r = reinterpret_cast<const RT*>(&v[j]);
#pragma unroll
                    for (int e = 0; e < VE; ++e) xs[soff[j][e]] = smem_elem<T>(r + e);
                }
            }
        } else {
            const int warp = tid >> 5, lane = tid & 31;
#pragma unroll
            for (int i = 0; i < IPW; ++i) {
                const int img = warp + i * NW;
                if (img < ni) {
#pragma unroll
                    for (int j = 0; j < JW; ++j)
                        if (lane + 32 * j < RV) {
                            const RT* const r = reinterpret_cast<const RT*>(&v[i * JW + j]);
#pragma unroll
                            for (int e = 0; e < VE; ++e) xs[img * IS + soff[j][e]] = smem_elem<T>(r + e);
                        }
                }
            }
        }
    }
};

// A batch unit's output runs (conv_batch's output, bwd_batch's grad_x) from shared memory
// [image][OPS] (storage type, each image's RUN elements as they lie in memory) to global
// memory. 16-byte vectors (CG == 4) of at most two accesses a thread: flat as BatchRuns,
// access q = tid + j*BLOCK; else warp w stores images w, w + NW, ..., lane l accesses l,
// l + 32, ... (no division, where the flat split would hold many accesses per thread: 14
// on 14 x 14 planes at CG == 1).
template <class T, int CG, int BLOCK, int RUN, int OPS, bool UB>
struct BatchOut {
    static constexpr int NI = 32 / CG, NW = BLOCK / 32;
    static constexpr int VE = CG == 1 ? 1 : 16 / (int)sizeof(T);
    typedef typename RawBits<VE * (int)sizeof(T)>::type V;
    static constexpr int RV = RUN / VE, JF = (NI * RV + BLOCK - 1) / BLOCK;
    static constexpr bool FLAT = CG > 1 && JF <= 2, BOFF = UB && FLAT;
    static_assert(OPS % VE == 0 && RUN % VE == 0, "image runs of whole vectors");
    int tid;
    unsigned boff[BOFF ? JF : 1];  // BOFF: access j's bytes past the unit's first element

    // C: the output's channels (with BOFF the host checks that NI images span fewer than
    // 2^31 bytes).
    __device__ __forceinline__ BatchOut(int tid_, int C) : tid(tid_) {
        constexpr int PL = RUN / CG;
        if constexpr (BOFF) {
#pragma unroll
            for (int j = 0; j < JF; ++j) {
                const int q = tid + j * BLOCK, img = q / RV;
                boff[j] = (unsigned)(img * C * PL + (q - img * RV) * VE) * (unsigned)sizeof(T);
            }
        }
    }
    // os: the staged runs; y: C channels of planes of RUN / CG elements, the unit's images
    // n0 .. n0 + ni - 1 and channels c0 .. c0 + CG - 1.
    __device__ __forceinline__ void store(const typename Raw<T>::type* os, T* y, int n0, i64 c0, int C, int ni) const {
        constexpr int PL = RUN / CG;
        const V* const sv = reinterpret_cast<const V*>(os);
        if constexpr (BOFF) {
            char* const dst = reinterpret_cast<char*>(y + ((i64)n0 * C + c0) * PL);
#pragma unroll
            for (int j = 0; j < JF; ++j) {
                const int q = tid + j * BLOCK, img = q / RV, k = q - img * RV;
                if (q < ni * RV) *reinterpret_cast<V*>(dst + boff[j]) = sv[img * (OPS / VE) + k];
            }
        } else if constexpr (FLAT) {
            V* const dst = reinterpret_cast<V*>(y) + ((i64)n0 * C + c0) * PL / VE;
            const i64 step = (i64)C * PL / VE;
#pragma unroll
            for (int j = 0; j < JF; ++j) {
                const int q = tid + j * BLOCK, img = q / RV, k = q - img * RV;
                if (q < ni * RV) dst[img * step + k] = sv[img * (OPS / VE) + k];
            }
        } else {
            const int warp = tid >> 5, lane = tid & 31;
            constexpr int IPW = (NI + NW - 1) / NW, JW = (RV + 31) / 32;
            V* dst = reinterpret_cast<V*>(y) + ((i64)(n0 + warp) * C + c0) * PL / VE;
            const i64 step = (i64)NW * C * PL / VE;
#pragma unroll
            for (int i = 0; i < IPW; ++i, dst += step) {
                const int img = warp + i * NW;
                if (img < ni) {
#pragma unroll
                    for (int j = 0; j < JW; ++j)
                        if (lane + 32 * j < RV) dst[lane + 32 * j] = sv[img * (OPS / VE) + lane + 32 * j];
                }
            }
        }
    }
};

// Pitch (storage elements) of one image's staged output run of CG planes of PLANE
// elements in conv_batch and bwd_batch (the host mirrors it in _kernels.batch_out_pitch):
// CG == 4, an odd number of 16-byte vectors; CG == 1, an odd number of 4-byte words
// (8-byte types: of 8-byte words), so that the lanes' stores of one output hit distinct
// banks.
template <class T, int CG, int PLANE>
__host__ __device__ constexpr int batch_out_pitch() {
    constexpr int RUN = CG * PLANE, VE = CG == 1 ? 1 : 16 / (int)sizeof(T);
    return CG > 1 ? (RUN * (int)sizeof(T) / 16 % 2 == 1 ? RUN : RUN + VE)
         : sizeof(T) == 2 ? (PLANE + 1) / 2 * 2 + ((PLANE + 1) / 2 % 2 == 0 ? 2 : 0)
                          : PLANE + (PLANE % 2 == 0 ? 1 : 0);
}

// One unit of conv_batch and bwd_batch: channels c0 .. c0 + CG - 1 of images n0 .. n0 +
// ni - 1 (chunk `chunk` of NI images, channel group g).
struct BatchUnit {
    int c0, n0, ni;
};
template <int CG>
__device__ __forceinline__ BatchUnit batch_unit(int g, i64 chunk, int N) {
    constexpr int NI = 32 / CG;
    BatchUnit un;
    un.c0 = g * CG;
    un.n0 = (int)chunk * NI;
    un.ni = min(NI, N - un.n0);
    return un;
}

// The next unit of a persistent batch block: blocks walk units blockIdx.x, blockIdx.x +
// gridDim.x, ..., unit u being (chunk u / QG, channel group u % QG); a step by gridDim.x
// moves (chunk, group) by (g_quot, g_rem) = (G / QG, G % QG) with a carry, worked out
// once (a division per unit cost ~20 instructions of ~600).
__device__ __forceinline__ void batch_step(int& g, i64& chunk, int g_rem, i64 g_quot, int QG) {
    unsigned gg = (unsigned)g + (unsigned)g_rem;  // < 2 * QG: no overflow unsigned
    chunk += g_quot;
    if (gg >= (unsigned)QG) {
        gg -= (unsigned)QG;
        ++chunk;
    }
    g = (int)gg;
}

// Row t of one plane's sums in conv_batch and bwd_batch: acc[j] += sum over taps (kh, kw)
// of src[row][col] * wch[kh][kw], row = t*SH + R0 + kh*RS and col = j*SW + C0 + kw*CS,
// taps whose row falls outside the plane skipped (the test is uniform across a warp),
// columns outside it dropped at compile time. conv_batch: (R0, RS, C0, CS) = (-PT, DH,
// -PL, DW); bwd_batch's grad_x at stride 1: (PT, -DH, PL, -DW), the forward's taps read
// backwards. src: the lane's staged plane (rows RP apart, H x W); wch: its channel's
// weight rows (KWP apart; the same addresses across the lanes of a channel: broadcasts).
template <class A, int KH, int KW, int SH, int SW, int R0, int RS, int C0, int CS, int H, int W, int RP, int KWP,
          int OUTW>
__device__ __forceinline__ void batch_row_sums(const A* src, const A* wch, int t, A (&acc)[OUTW]) {
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
        const int r = t * SH + R0 + kh * RS;
        if ((unsigned)r >= (unsigned)H) continue;  // the same for every lane
        A row[RP], wrow[KWP];
        smem_row(src + r * RP, row);
        smem_row(wch + kh * KWP, wrow);
#pragma unroll
        for (int kw = 0; kw < KW; ++kw)
#pragma unroll
            for (int j = 0; j < OUTW; ++j) {
                const int c = j * SW + C0 + kw * CS;
                if (c >= 0 && c < W) acc[j] = fma(row[c], wrow[kw], acc[j]);
            }
    }
}

template <class T, int KH, int KW, int SH, int SW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL,
          bool FLIP, int CG, int MINB>
__global__ void __launch_bounds__(OH * 32, MINB)
conv_batch(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
           const BatchArgs a) {
    typedef typename Traits<T>::acc A;
    typedef typename Raw<T>::type RT;
    typedef BatchLayout<A, IH, IW> L;
    constexpr int BLOCK = OH * 32, NW = OH;
    constexpr int NI = 32 / CG;  // images per unit
    constexpr int KK = KH * KW, IHW = IH * IW, OHW = OH * OW;
    constexpr int RP = L::RP, IS = L::IS;
    constexpr int KWP = round_up(KW, L::LV);
    typedef BatchRuns<T, CG, BLOCK, IH, IW, RP, IS, true> XR;
    constexpr int VE = XR::VE;  // storage elements per global access
    constexpr int ORUN = CG * OHW;                     // an image's output run
    constexpr int OPS = batch_out_pitch<T, CG, OHW>();
    constexpr int WK = (CG * KK + BLOCK - 1) / BLOCK;        // weights per thread
    static_assert(CG == 1 || CG == 4, "one channel per unit, or four");
    static_assert(ORUN % VE == 0, "runs of whole vectors");
    static_assert(BLOCK <= 1024, "one warp per output row");
    static_assert(OW <= 64 && RP <= 64 && KWP <= 64, "register budget: OW sums, one row, one weight row");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* const ws = reinterpret_cast<A*>(smem_raw);
    A* const xs = reinterpret_cast<A*>(smem_raw + round_up(CG * KH * KWP * (int)sizeof(A), 16));
    RT* const ys = reinterpret_cast<RT*>(xs + 32 * IS);  // 32*IS*sizeof(A): a multiple of 16 bytes
    const RT* const wr_g = reinterpret_cast<const RT*>(w);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t = warp;                          // output row: uniform across the warp
    const int cl = lane / NI, img = lane - cl * NI;  // this lane's channel of the unit and image
    XR xr(tid, (int)a.IC);
    const BatchOut<T, CG, BLOCK, ORUN, OPS, true> yo(tid, a.QC);
    const int QG = a.QC / CG;  // channel groups

    typedef BatchUnit Unit;
    // 32-bit divisions (gridDim.x and blockIdx.x < 2^31); bwd_batch's 64-bit form here
    // cost 1-1.5 % (convnext_7x7_s4 forward 11.79 -> 11.97 us, grad input 11.77 -> 11.88,
    // same process; 2 and 9 more registers: NOTES, session 30).
    const i64 g_quot = gridDim.x / (unsigned)QG;
    const int g_rem = (int)(gridDim.x - (unsigned)g_quot * (unsigned)QG);
    const bool has_bias = !FLIP && bias != nullptr;
    RT wv[WK], bv = RT(0);
    // Loads of a unit's runs, weights and bias into registers.
    auto fetch = [&](const Unit& un) {
        const i64 in0 = CG > 1 || a.DIV == 1 ? un.c0 : un.c0 / a.DIV;
        xr.fetch(x, un.n0, in0, a.IC, un.ni);
#pragma unroll
        for (int k = 0; k < WK; ++k) {
            const int e = tid + k * BLOCK;
            if (e < CG * KK) {
                const int c = e / KK, kk = e - c * KK;
                wv[k] = __ldg(wr_g + (i64)(un.c0 + c) * KK + (FLIP ? KK - 1 - kk : kk));
            }
        }
        if (has_bias) bv = __ldg(reinterpret_cast<const RT*>(bias) + un.c0 + cl);
    };
    auto put = [&](const Unit& un) {
        xr.put(xs, un.ni);
#pragma unroll
        for (int k = 0; k < WK; ++k) {
            const int e = tid + k * BLOCK;
            if (e < CG * KK) {
                const int c = e / KK, kk = e - c * KK, kh = kk / KW;
                ws[(c * KH + kh) * KWP + kk - kh * KW] = smem_elem<T>(&wv[k]);
            }
        }
    };

    i64 u = blockIdx.x;
    if (u >= a.units) return;
    Unit cur;
    i64 chunk = blockIdx.x / (unsigned)QG;  // once per block
    int g = (int)(blockIdx.x - (unsigned)chunk * (unsigned)QG);
    cur = batch_unit<CG>(g, chunk, a.N);
    fetch(cur);
    for (;;) {
        // ws and xs were last read by the previous unit's FMAs, before its second barrier.
        put(cur);
        const A b0 = has_bias ? smem_elem<T>(&bv) : A(0);
        __syncthreads();
        const i64 u_next = u + gridDim.x;
        const bool more = u_next < a.units;
        Unit nxt;
        if (more) {
            batch_step(g, chunk, g_rem, g_quot, QG);
            nxt = batch_unit<CG>(g, chunk, a.N);
            fetch(nxt);  // in flight during this unit's FMAs and copy-out
        }

        A acc[OW];
#pragma unroll
        for (int j = 0; j < OW; ++j) acc[j] = b0;
        batch_row_sums<A, KH, KW, SH, SW, -PT, DH, -PL, DW, IH, IW, RP, KWP, OW>(xs + lane * IS, ws + cl * KH * KWP, t,
                                                                               acc);
        if (img < cur.ni) {
#pragma unroll
            for (int j = 0; j < OW; ++j) {
                T o;
                store1(&o, acc[j]);
                ys[img * OPS + cl * OHW + t * OW + j] = *reinterpret_cast<const RT*>(&o);
            }
        }
        __syncthreads();
        // Each image's output run is contiguous; the next unit writes ys only after its
        // first barrier, which every thread reaches after this copy.
        yo.store(ys, y, cur.n0, cur.c0, a.QC, cur.ni);
        if (!more) break;
        cur = nxt;
        u = u_next;
    }
}

// bwd_batch's partial sums of one unit: N sums per lane across the NI images of the
// lane's channel (consecutive lanes), in a fixed butterfly (deterministic); images past
// the batch (img >= ni: their planes were not staged) add zeros. The channel's first lane
// writes the N totals to row[0, N).
template <int NI, int N, class A>
__device__ __forceinline__ void batch_partial(A (&s)[N], int img, int ni, A* row) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
        if (img >= ni) s[k] = A(0);
#pragma unroll
        for (int off = NI / 2; off > 0; off >>= 1) s[k] += __shfl_xor_sync(0xffffffffu, s[k], off);
    }
    if (img == 0) {
#pragma unroll
        for (int k = 0; k < N; ++k) row[k] = s[k];
    }
}

// bwd_batch: the whole backward of small planes (stride 1, multiplier 1) in conv_batch's
// units: CG channels across a chunk of 32 / CG images, one plane pair (x, grad_output) per
// lane, a warp per grad_x row (IH warps). One pass over x and grad_output gives all three
// gradients.
//
// Why, against bwd_plane (a thread per plane pair holding the x plane and the tap sums:
// 168 registers, few warps per SM, and the grad_x phase after the weight phase in the same
// thread): the same reasons as conv_batch against conv_plane. Each thread holds one
// grad_x row, or one tap row's KW sums; the staging and copy-out are conv_batch's.
//
// Per unit, after its barrier:
//   grad_x:  warp t sums grad_x row t of its lane's plane: grad_output row t + PT - kh*DH
//            through tap row kh (stride 1: the forward's taps read backwards, no rotated
//            copy of the weights), tests uniform across the warp as in conv_batch.
//   weights: warp w owns tap rows (w + ROT) % NW + i*NW (no two warps share a tap, so no
//            sum across warps). ROT, from the host, pairs the warps whose grad_x rows
//            meet few tap rows (at the plane's edges) with the tap rows that meet many
//            output rows: convnext_7x7_s4's warps sum 10-11 row products each instead of
//            8 to 14 (each unit waits for its slowest warp; it measured within noise,
//            and costs nothing). For each tap row, KW sums over the plane's output rows
//            and columns, then a fixed butterfly across the unit's NI images (lanes of
//            one channel; images past the batch add zeros) leaves the unit's partial in
//            the channel's first lane, which writes it to partial[channel][chunk][tap].
//            Warp NW - 1 also sums grad_output for the bias partial.
// The partial rows are (channel, chunk) rows as bwd_plane's. At the block's end one fence
// makes its rows visible, then the lanes of warp 0 count up to 32 of its units at once in
// their channel groups' counters (one atomic round trip, not one per unit); the block that
// counts a group's last chunk adds the group's rows in chunk order (add_chunk_rows:
// deterministic, the same order whichever block is last) and resets the counter. With
// null counters the host's wgrad_reduce launch does that instead.
//
// Bytes per grad_x element: x and grad_output read once, grad_x written once (elements of
// DRAM traffic: 1 + OH*OW/(IH*IW) + 1); partials CG*(KH*KW + 1) sums per unit.
//
// Template arguments: T storage type; KH KW DH DW kernel geometry (stride 1); IH IW OH OW
// PT PL plane geometry and padding; CG channels per unit (1, or 4 in float32 with 4 |
// channels and x, grad_output and grad_x 16-byte aligned: grad_x is always a fresh
// allocation); ROT the rotation of tap rows over warps; MINB launch bound (BLOCK = IH * 32).
template <class T, int KH, int KW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL, int CG, int ROT,
          int MINB>
__global__ void __launch_bounds__(IH * 32, MINB)
bwd_batch(const T* __restrict__ x, const T* __restrict__ go, const T* __restrict__ w, T* __restrict__ gx,
          typename Traits<T>::acc* __restrict__ partial, unsigned* __restrict__ counters, T* __restrict__ gw,
          T* __restrict__ gb, const BatchArgs a) {
    typedef typename Traits<T>::acc A;
    typedef typename Raw<T>::type RT;
    typedef BatchLayout<A, IH, IW> LX;
    typedef BatchLayout<A, OH, OW> LG;
    constexpr int NW = IH, BLOCK = NW * 32;
    constexpr int NI = 32 / CG;
    constexpr int KK = KH * KW, IHW = IH * IW, OHW = OH * OW;
    constexpr int KWP = round_up(KW, LX::LV);
    typedef BatchRuns<T, CG, BLOCK, IH, IW, LX::RP, LX::IS, false> XR;
    typedef BatchRuns<T, CG, BLOCK, OH, OW, LG::RP, LG::IS, false> GR;
    constexpr int VE = XR::VE;
    constexpr int ORUN = CG * IHW;               // an image's grad_x run
    constexpr int OPS = batch_out_pitch<T, CG, IHW>();
    constexpr int WK = (CG * KK + BLOCK - 1) / BLOCK;  // weights per thread
    constexpr int KPW = (KH + NW - 1) / NW;             // tap rows per warp
    static_assert(CG == 1 || CG == 4, "one channel per unit, or four");
    static_assert(ORUN % VE == 0, "runs of whole vectors");
    static_assert(BLOCK <= 1024, "one warp per grad_x row");
    static_assert(ROT >= 0 && ROT < NW, "a rotation of the warps");
    static_assert(IW <= 64 && LX::RP <= 64 && LG::RP <= 64 && KWP <= 64,
                  "register budget: IW sums, one row, one weight row");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* const ws = reinterpret_cast<A*>(smem_raw);
    A* const xs = reinterpret_cast<A*>(smem_raw + round_up(CG * KH * KWP * (int)sizeof(A), 16));
    A* const gs = xs + 32 * LX::IS;                       // 16-byte multiples: IS is whole slots
    RT* const os = reinterpret_cast<RT*>(gs + 32 * LG::IS);
    const RT* const wr_g = reinterpret_cast<const RT*>(w);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t = warp;  // grad_x row: uniform across the warp
    const int cl = lane / NI, img = lane - cl * NI;
    const int kr = (warp + ROT) % NW;  // this warp's first tap row
    XR xr(tid, (int)a.IC);
    GR gr(tid, a.QC);
    const BatchOut<T, CG, BLOCK, ORUN, OPS, false> gx_out(tid, a.IC);
    const int QG = a.QC / CG;
    const int n_chunks = (a.N + NI - 1) / NI;

    typedef BatchUnit Unit;
    const i64 g_quot = (i64)gridDim.x / QG;  // unit steps as conv_batch's (batch_step)
    const int g_rem = (int)((i64)gridDim.x - g_quot * QG);
    RT wv[WK];
    auto fetch = [&](const Unit& un) {
        xr.fetch(x, un.n0, un.c0, a.IC, un.ni);
        gr.fetch(go, un.n0, un.c0, a.QC, un.ni);
#pragma unroll
        for (int k = 0; k < WK; ++k) {
            const int e = tid + k * BLOCK;
            if (e < CG * KK) wv[k] = __ldg(wr_g + (i64)un.c0 * KK + e);
        }
    };
    auto put = [&](const Unit& un) {
        xr.put(xs, un.ni);
        gr.put(gs, un.ni);
#pragma unroll
        for (int k = 0; k < WK; ++k) {
            const int e = tid + k * BLOCK;
            if (e < CG * KK) {
                const int c = e / KK, kk = e - c * KK, kh = kk / KW;
                ws[(c * KH + kh) * KWP + kk - kh * KW] = smem_elem<T>(&wv[k]);
            }
        }
    };
    // The unit's partial row of the lane's channel (its chunk's row, from tap k0 on).
    auto partial_row = [&](const Unit& un, int k0) {
        return partial + ((i64)(un.c0 + cl) * n_chunks + un.n0 / NI) * (KK + 1) + k0;
    };
    i64 u = blockIdx.x;
    if (u >= a.units) return;
    Unit cur;
    i64 chunk = u / QG;
    int g = (int)(u - chunk * QG);
    cur = batch_unit<CG>(g, chunk, a.N);
    fetch(cur);
    for (;;) {
        // ws, xs and gs were last read by the previous unit's FMAs, before its second barrier.
        put(cur);
        __syncthreads();
        const i64 u_next = u + gridDim.x;
        const bool more = u_next < a.units;
        Unit nxt;
        if (more) {
            batch_step(g, chunk, g_rem, g_quot, QG);
            nxt = batch_unit<CG>(g, chunk, a.N);
            fetch(nxt);  // in flight during this unit's FMAs and copy-out
        }
        const A* const xp = xs + lane * LX::IS;
        const A* const gp = gs + lane * LG::IS;
        const A* const wp = ws + cl * KH * KWP;
        {
            // grad_x row t.
            A acc[IW];
#pragma unroll
            for (int j = 0; j < IW; ++j) acc[j] = A(0);
            batch_row_sums<A, KH, KW, 1, 1, PT, -DH, PL, -DW, OH, OW, LG::RP, KWP, IW>(gp, wp, t, acc);
            if (img < cur.ni) {
#pragma unroll
                for (int j = 0; j < IW; ++j) {
                    T o;
                    store1(&o, acc[j]);
                    os[img * OPS + cl * IHW + t * IW + j] = *reinterpret_cast<const RT*>(&o);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < KPW; ++i) {
            // Tap row kh's sums over the plane (uniform across the warp).
            const int kh = kr + i * NW;
            if (kh >= KH) break;
            A s[KW];
#pragma unroll
            for (int kw = 0; kw < KW; ++kw) s[kw] = A(0);
#pragma unroll
            for (int oh = 0; oh < OH; ++oh) {
                const int ih = oh - PT + kh * DH;
                if ((unsigned)ih >= (unsigned)IH) continue;
                A grow[LG::RP], xrow[LX::RP];
                smem_row(gp + oh * LG::RP, grow);
                smem_row(xp + ih * LX::RP, xrow);
#pragma unroll
                for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                    for (int ow = 0; ow < OW; ++ow) {
                        const int iw = ow - PL + kw * DW;
                        if (iw >= 0 && iw < IW) s[kw] = fma(grow[ow], xrow[iw], s[kw]);
                    }
            }
            batch_partial<NI>(s, img, cur.ni, partial_row(cur, kh * KW));
        }
        if (warp == NW - 1) {
            A b[1] = {A(0)};
#pragma unroll
            for (int oh = 0; oh < OH; ++oh) {
                A grow[LG::RP];
                smem_row(gp + oh * LG::RP, grow);
#pragma unroll
                for (int ow = 0; ow < OW; ++ow) b[0] += grow[ow];
            }
            batch_partial<NI>(b, img, cur.ni, partial_row(cur, KK));
        }
        __syncthreads();
        // Each image's grad_x run is contiguous; the next unit writes os only after its
        // first barrier, which every thread reaches after this copy.
        gx_out.store(os, gx, cur.n0, cur.c0, a.IC, cur.ni);
        if (!more) break;
        cur = nxt;
        u = u_next;
    }
    if (counters == nullptr) return;
    // Closing: one fence for all of this block's partial rows; then warp 0 counts up to 32
    // units at once, and the groups whose last chunk it counted are finished in turn.
    __shared__ unsigned last_mask;
    __shared__ int last_group[32];
    __threadfence();
    __syncthreads();
    for (i64 first = blockIdx.x; first < a.units; first += 32 * (i64)gridDim.x) {
        if (warp == 0) {
            const i64 un = first + (i64)lane * gridDim.x;
            int gu = 0;
            bool last = false;
            if (un < a.units) {
                gu = (int)(un % QG);
                last = atomicAdd(counters + gu, 1u) == (unsigned)(n_chunks - 1);
            }
            const unsigned mask = __ballot_sync(0xffffffffu, last);
            if (lane == 0) last_mask = mask;
            last_group[lane] = gu;
        }
        __syncthreads();
        const unsigned mask = last_mask;
        if (mask != 0u) {
            __threadfence();  // the rows counted before these atomics are visible to this block
            for (unsigned m = mask; m != 0u; m &= m - 1u) {
                const int gu = last_group[__ffs(m) - 1];
                add_chunk_rows<T, A>(partial, (i64)gu * CG, CG, n_chunks, KK, gw, gb);
                if (tid == 0) counters[gu] = 0u;
            }
        }
        __syncthreads();  // last_mask and last_group are rewritten by the next round
    }
}

// conv_lines: large kernels on whole planes (RepLKNet's 13x13 on 28x28 and 31x31 on 56x56,
// 4- and 8-byte types). A block owns P whole planes as conv_plane does; thread (segment s,
// line l, plane p) computes output row oh(l) of plane p, columns [s*CW, s*CW + CW), and
// loops at run time over the tap rows kh whose input row lies inside the plane only.
//
// Why: with padding (K-1)/2 about a fifth of the taps of a 28x28 plane under a 13x13
// kernel read zeros (a quarter of a 56x56 plane's under 31x31). A register tile (conv_smem)
// multiplies them, since its taps are unrolled for every tile position alike. Here the
// rows outside the plane are skipped by the loop bounds, and the columns outside it at
// compile time: the line's segment and the plane width are template constants, so each
// (input column, kw) pair is either an FMA or nothing. What is left is CW sums, the KW
// weights of the current tap row and a few input vectors in registers; every (tap row,
// line) pair reads its KW weights and the line's input row from shared memory (a vector
// per V columns) for up to CW*KW FMAs.
//
// Lines are numbered so that the lanes of a warp share a row, or rows with the same
// number of tap rows: line l is plane l % P of row rank l / P, and ranks alternate from
// the top and the bottom (0, OH-1, 1, OH-2, ...), whose tap counts are equal for
// symmetric padding. A warp runs its loop as often as its longest line; this keeps the
// idle lanes to a few percent. The segment is a warp's (s = warp / WPS), so the branch on
// it is uniform.
//
// Planes sit in shared memory PITCH elements apart, PITCH / V odd: the lanes of a
// quarter-warp reading the same row of consecutive planes hit distinct 16-byte bank
// groups. Weights as in conv_plane (one or two runs of consecutive channels).
//
// Bytes per output: (R*IH*IW/(OH*OW) + 1) elements of DRAM traffic, every element moved
// once; the kernel is FMA-bound (KH*KW taps per output).
//
// Template arguments: T storage type (float or double); KH KW kernel (stride 1, dilation
// 1); IH IW OH OW PT PL plane geometry and padding (negative PT/PL crop: the rotated
// grad-input problem); CW output columns per thread; FLIP read the kernel rotated by 180
// degrees; WV weights in tap rows of whole vectors (read as vectors) rather than packed
// (read one by one); BLOCK (NSEG segments x WPS warps), MINB launch bounds. A block
// computes one group (no persistent loop: two stages that copy the next group in during
// this one's FMAs measured slower, 62.0 against 57.0 us on replk_13x13; NOTES, sessions
// 21-22).
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }
__host__ __device__ constexpr int cmin(int a, int b) { return a < b ? a : b; }

// Plane pitch in shared memory (elements): whole 16-byte vectors, an odd number of them.
template <class T, int IHW>
__host__ __device__ constexpr int lines_pitch() {
    return ((IHW + 16 / (int)sizeof(T) - 1) / (16 / (int)sizeof(T))) % 2 == 1
               ? round_up(IHW, 16 / (int)sizeof(T))
               : round_up(IHW, 16 / (int)sizeof(T)) + 16 / (int)sizeof(T);
}

// Starts copying npl consecutive planes of IHW elements from global src into shared dst,
// PITCH elements apart, the whole block together (cp.async on sm_80+: 16-byte copies when
// the planes start on 16-byte boundaries, element copies otherwise).
template <class T, int IHW, int PITCH>
__device__ __forceinline__ void stage_planes(const T* src, T* dst, int npl) {
    constexpr int V = 16 / (int)sizeof(T);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned d0 = smem_u32(dst);
    if (IHW % V == 0 && vec_phase(src) == 0) {
        constexpr int PV = IHW / V;  // vectors per plane: a constant divisor
        const int n = npl * PV;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const int k = i / PV;
            cp_async16(d0 + (unsigned)((k * PITCH + (i - k * PV) * V) * (int)sizeof(T)), src + (i64)i * V, 16);
        }
    } else {
        const int n = npl * IHW;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const int k = i / IHW;
            const unsigned d = d0 + (unsigned)((k * PITCH + i - k * IHW) * (int)sizeof(T));
            if constexpr (sizeof(T) == 4) cp_async4(d, src + i, 4);
            else cp_async8(d, src + i);
        }
    }
#else
    const int n = npl * IHW;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int k = i / IHW;
        dst[k * PITCH + i - k * IHW] = __ldg(src + i);
    }
#endif
}

// Columns [C0, C1) of a staged row r, read in 16-byte vectors (VEC: r + C0 / V * V on a
// 16-byte boundary) or one by one, handed to f(column, value) in column order. Fully
// unrolled and inlined: every column index is a constant at each call of f.
template <class A, bool VEC, int C0, int C1, class F>
__device__ __forceinline__ void for_columns(const A* r, F& f) {
    constexpr int V = 16 / (int)sizeof(A);
    constexpr int STEP = VEC ? V : 1;
#pragma unroll
    for (int c0 = VEC ? C0 / V * V : C0; c0 < C1; c0 += STEP) {
        A v[STEP];
        if constexpr (VEC) lds_vec(r + c0, v);
        else v[0] = r[c0];
#pragma unroll
        for (int e = 0; e < STEP; ++e)
            if (c0 + e >= C0 && c0 + e < C1) f(c0 + e, v[e]);
    }
}

// One tap row of a line: acc[j - J0] += sum over kw of xr[j - PL + kw] * wv[kw] for the
// segment's columns j in [J0, J1), the input columns outside [0, IW) dropped at compile
// time. Input vectors are read in column order; each feeds up to KW sums.
template <class A, int KW, int IW, int PL, int J0, int J1, bool VEC>
__device__ __forceinline__ void lines_row(const A* xr, const A (&wv)[KW], A (&acc)[J1 - J0]) {
    constexpr int C0 = cmax(0, J0 - PL), C1 = cmin(IW, J1 - 1 - PL + KW);  // input columns read
    auto feed = [&](int c, A v) {
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
            const int j = c + PL - kw;  // the output column this (input column, tap) feeds
            if (j >= J0 && j < J1) acc[j - J0] = fma(v, wv[kw], acc[j - J0]);
        }
    };
    for_columns<A, VEC, C0, C1>(xr, feed);
}

// Starts copying the weights of a group's n units (unit u: channel (u / R) of the group,
// tap plane u % R) into shared rows of KWP elements (whole 16-byte vectors), so a tap
// row is read as KWP / V vectors; units lie WUP elements apart. Units [0, nA*R) are the run at srcA, the rest the run
// at srcB (the channels from 0 on, where the group crosses into the next batch item).
template <class T, int KH, int KW, int KWP, int WUP>
__device__ __forceinline__ void stage_weight_rows(const T* srcA, const T* srcB, int nA_units, int n_units, T* dst) {
    constexpr int KK = KH * KW;
    const int n = n_units * KK, nA = nA_units * KK;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned d0 = smem_u32(dst);
#endif
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int u = i / KK, e = i - u * KK;  // constant divisors
        const int kh = e / KW;
        const int d = u * WUP + kh * KWP + e - kh * KW;
        const T* const src = i < nA ? srcA + i : srcB + (i - nA);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        if constexpr (sizeof(T) == 4) cp_async4(d0 + (unsigned)(d * 4), src, 4);
        else cp_async8(d0 + (unsigned)(d * 8), src);
#else
        dst[d] = __ldg(src);
#endif
    }
}

// One segment of a conv_lines thread's row: columns [S*CW, S*CW + CW) of the output row
// at yrow, from input row 0 at xrow (tap row kh reads row kh) and the weights at wbase,
// over tap rows [kh0, kh1) and R planes. The segment is a template constant, so each
// (input column, kw) pair is an FMA or nothing; `segment` picks it from the warp-uniform
// run-time index.
template <class T, int KH, int KW, int IW, int OW, int PL, int CW, int KWP, int WUP, int PITCH, bool FLIP, bool WV>
struct LinesRow {
    typedef T A;
    static constexpr int V = 16 / (int)sizeof(T);
    static constexpr bool VEC = IW % V == 0;  // rows start on 16-byte boundaries in shared memory

    template <int S>
    __device__ __forceinline__ static void run(const T* xrow, const T* wbase, int R, int kh0, int kh1, A b0, T* yrow,
                                               bool vout) {
        constexpr int J0 = S * CW, J1 = cmin(OW, J0 + CW), NJ = J1 - J0;
        A acc[NJ];
#pragma unroll
        for (int j = 0; j < NJ; ++j) acc[j] = b0;
        for (int m = 0; m < R; ++m) {
            const A* const xp = xrow + m * PITCH;
            const A* const wt = wbase + m * WUP;
            for (int kh = kh0; kh < kh1; ++kh) {
                A wv[KW];
                const A* const wr = wt + (FLIP ? KH - 1 - kh : kh) * KWP;
                if constexpr (!WV) {
#pragma unroll
                    for (int kw = 0; kw < KW; ++kw) wv[kw] = wr[FLIP ? KW - 1 - kw : kw];
                } else {
#pragma unroll
                    for (int k4 = 0; k4 < KWP; k4 += V) {
                        A t[V];
                        lds_vec(wr + k4, t);
#pragma unroll
                        for (int e = 0; e < V; ++e) {
                            const int k = k4 + e;  // stored tap; the kernel's tap FLIP ? KW-1-k : k
                            if (k < KW) wv[FLIP ? KW - 1 - k : k] = t[e];
                        }
                    }
                }
                lines_row<A, KW, IW, PL, J0, J1, VEC>(xp + kh * IW, wv, acc);
            }
        }
        bool stored = false;
        if constexpr (OW % V == 0 && CW % V == 0) {
            if (vout) {
#pragma unroll
                for (int j = 0; j < NJ; j += V) {
                    if constexpr (sizeof(T) == 4)
                        *reinterpret_cast<float4*>(yrow + J0 + j) =
                            make_float4(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
                    else
                        *reinterpret_cast<double2*>(yrow + J0 + j) = make_double2(acc[j], acc[j + 1]);
                }
                stored = true;
            }
        }
        if (!stored) {
#pragma unroll
            for (int j = 0; j < NJ; ++j) yrow[J0 + j] = acc[j];
        }
    }

    template <int S>
    __device__ __forceinline__ static void segment(int seg, const T* xrow, const T* wbase, int R, int kh0, int kh1,
                                                   A b0, T* yrow, bool vout) {
        constexpr int NSEG = (OW + CW - 1) / CW;
        if constexpr (S < NSEG) {
            if (seg == S) run<S>(xrow, wbase, R, kh0, kh1, b0, yrow, vout);
            else segment<S + 1>(seg, xrow, wbase, R, kh0, kh1, b0, yrow, vout);
        }
    }
};

template <class T, int KH, int KW, int IH, int IW, int OH, int OW, int PT, int PL, int CW, bool FLIP, bool WV,
          int BLOCK, int MINB>
__global__ void __launch_bounds__(BLOCK, MINB)
conv_lines(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
           const PlaneArgs a) {
    typedef T A;
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "4- and 8-byte types (no conversion on the way in)");
    constexpr int KK = KH * KW, IHW = IH * IW, OHW = OH * OW;
    constexpr int V = 16 / (int)sizeof(T);
    constexpr int KWP = WV ? round_up(KW, V) : KW;  // a tap row's pitch in shared memory
    // A unit's weights: KH rows, an odd number of vectors (WV) or of elements in all, so
    // the lanes reading the same row of different channels hit distinct banks.
    constexpr int WUP = WV ? ((KH * KWP / V) % 2 == 1 ? KH * KWP : KH * KWP + V) : (KK % 2 == 1 ? KK : KK + 1);
    constexpr int NSEG = (OW + CW - 1) / CW;
    constexpr int WPS = BLOCK / 32 / NSEG;  // warps per segment
    constexpr int PITCH = lines_pitch<T, IHW>();
    static_assert(BLOCK % (32 * NSEG) == 0, "whole warps per segment");
    static_assert(CW + KWP <= 100 * 4 / (int)sizeof(T), "register budget: CW sums and a tap row");
    const i64 n_planes = a.n_planes, IC = a.IC;
    const int QC = a.QC, DIV = a.DIV, R = a.R, P = a.P;
    const int RKK = R * KK;

    // The group of planes [q0, q0 + np): the weights of P*R units in rows of KWP, then
    // P*R planes PITCH elements apart (_kernels.lines_smem_bytes sizes it the same way).
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* const ws = reinterpret_cast<T*>(smem_raw);
    T* const xs = reinterpret_cast<T*>(smem_raw + round_up(P * R * WUP * (int)sizeof(T), 16));  // on a vector
    const i64 q0 = (i64)blockIdx.x * P;
    if (q0 >= n_planes) return;
    const int np = (int)min((i64)P, n_planes - q0);
    const PlaneMap m0 = map_plane(q0, QC, IC, DIV, R);
    const i64 in_lo = m0.in_plane0, in_hi = map_plane(q0 + np - 1, QC, IC, DIV, R).in_plane0 + R;
    // Copies: the input planes (one contiguous run of planes, laid PITCH apart), then the
    // weights: channels ch0, ch0 + 1, ... (mod QC), as one run of nA from ch0 and, where
    // the group crosses into the next batch item, one of nB from channel 0.
    const int nA = min(np, QC - m0.ch), nB = min(m0.ch, np - nA);
    stage_planes<T, IHW, PITCH>(x + in_lo * IHW, xs, (int)(in_hi - in_lo));
    stage_weight_rows<T, KH, KW, KWP, WUP>(w + (i64)m0.ch * RKK, w, nA * R, (nA + nB) * R, ws);

    // The thread's line, its plane and bias, read while the copies are in flight (a
    // global load after the barrier would hold every warp of the block at its first FMA).
    const int tid = threadIdx.x;
    const int seg = tid / (32 * WPS);
    const int li = tid - seg * (32 * WPS);
    const int rank = li / P, p = li - rank * P;
    const int oh = (rank & 1) ? OH - 1 - (rank >> 1) : (rank >> 1);
    const bool active = rank < OH && p < np;
    const PlaneMap pm = map_plane(q0 + (active ? p : 0), QC, IC, DIV, R);
    const A b0 = (!FLIP && bias != nullptr && active) ? load1(bias + pm.ch) : A(0);
    stage_commit_wait<0>();
    if (!active) return;
    // Tap rows whose input row oh - PT + kh lies in [0, IH).
    const int kh0 = max(0, PT - oh), kh1 = min(KH, IH + PT - oh);
    const int unit0 = (pm.ch >= m0.ch ? pm.ch - m0.ch : nA + pm.ch) * R;
    const T* const xrow = xs + (pm.in_plane0 - in_lo) * PITCH + (oh - PT) * IW;
    T* const yrow = y + (q0 + p) * OHW + oh * OW;
    LinesRow<T, KH, KW, IW, OW, PL, CW, KWP, WUP, PITCH, FLIP, WV>::template segment<0>(
        seg, xrow, ws + unit0 * WUP, R, kh0, kh1, b0, yrow, vec_phase(y) == 0);
}

// One output row's contribution to a tap row's weight gradient: acc[kw] += sum over the
// output columns ow of gr[ow] * xr[ow - PL + kw], the columns outside [0, IW) dropped at
// compile time. The grad_output row is held whole; the x row streams through in vectors,
// each element feeding up to KW independent sums.
template <class A, int KW, int IW, int OW, int PL, bool XVEC, bool GVEC>
__device__ __forceinline__ void lines_wrow(const A* gr, const A* xr, A (&acc)[KW]) {
    A g[OW];
    if constexpr (GVEC) {
        smem_row<A, OW>(gr, g);
    } else {
#pragma unroll
        for (int j = 0; j < OW; ++j) g[j] = gr[j];
    }
    constexpr int C0 = cmax(0, -PL), C1 = cmin(IW, OW - 1 - PL + KW);  // x columns read
    auto feed = [&](int c, A v) {
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
            const int ow = c + PL - kw;  // the output column this (x column, tap) pairs with
            if (ow >= 0 && ow < OW) acc[kw] = fma(g[ow], v, acc[kw]);
        }
    };
    for_columns<A, XVEC, C0, C1>(xr, feed);
}

// A run of 16-bit planes (HW elements each) in global memory, staged converted to float
// planes PITCH elements apart: read E elements (E = 2: a 32-bit word; 4: 8 bytes) at a
// time from the first E-element boundary, the elements before it (head) and after the
// last whole load (tail) read alone. Not 16-byte vectors: a lane converts its elements
// into consecutive floats, so lanes store E words apart (E lanes per bank), where
// 8-element vectors would put eight in one bank.
template <class T, int HW, int PITCH, int E>
struct CvtRun {
    static_assert(E == 2 || E == 4, "loads of 4 or 8 bytes");
    typedef typename RawBits<2 * E>::type L;
    const unsigned short* src;
    float* dst;
    int head, loads, count;
    __device__ __forceinline__ CvtRun(const T* s, float* d, int npl)
        : src(reinterpret_cast<const unsigned short*>(s)), dst(d), count(npl * HW) {
        const int phase = (int)((reinterpret_cast<unsigned long long>(src) >> 1) & (E - 1));
        head = min(count, (E - phase) & (E - 1));
        loads = (count - head) / E;
    }
    __device__ __forceinline__ int scalars() const { return count - E * loads; }
    __device__ __forceinline__ int scalar_index(int i) const { return i < head ? i : i + E * loads; }
    __device__ __forceinline__ L load(int i) const { return __ldg(reinterpret_cast<const L*>(src + head) + i); }
    __device__ __forceinline__ void put(int e, unsigned short v) const {
        const int k = e / HW;  // a constant divisor
        dst[k * PITCH + e - k * HW] = to_acc16<T>(v);
    }
    __device__ __forceinline__ void put_load(int i, L v) const {
        const int e = head + E * i;
        unsigned w[E / 2];
        if constexpr (E == 2) w[0] = v;
        else { w[0] = (unsigned)v; w[1] = (unsigned)(v >> 32); }
#pragma unroll
        for (int j = 0; j < E / 2; ++j) {
            put(e + 2 * j, (unsigned short)(w[j] & 0xffffu));
            put(e + 2 * j + 1, (unsigned short)(w[j] >> 16));
        }
    }
};

// Stages, converted to float, the 16-bit planes of one wgrad_lines item: nx x planes
// (IHW elements each, XP apart in xdst) from the run at xsrc, then ng grad_output planes
// (OHW each, GP apart) from the run at gsrc, the whole block together. Plain loads (a
// 16-bit plane of odd size, 7 x 7 = 98 bytes, rarely starts on a 16-byte boundary, so
// cp.async's 4- to 16-byte copies do not fit it): each thread issues U loads before its
// first store, and its head or tail element (at most 4 (E - 1) in all, so one per thread)
// before those, so that its requests are in flight together (a load-convert-store loop
// would wait a memory latency per load). The caller's barrier publishes the planes.
// 8-byte loads on planes of more than 400 outputs, 4-byte below: measured (H200, float16,
// 13x13, us, 4-byte / 8-byte, 8 loads in flight per thread): 7 x 7 43.8 / 46.3, 14 x 14
// 49.8 / 55.6 (79 registers against 72), 24 x 24 61.4 / 55.2, 28 x 28 80.4 / 72.4, 9x9 on
// 28 x 28 60.9 / 53.1; 16 four-byte loads in flight: 50.0, 55.8, 59.3, 78.8, 58.9.
template <class T, int IHW, int XP, int OHW, int GP>
__device__ __forceinline__ void stage_planes_cvt(const T* xsrc, float* xdst, int nx, const T* gsrc, float* gdst,
                                                 int ng) {
    constexpr int U = 8, E = OHW > 400 ? 4 : 2;
    typedef CvtRun<T, IHW, XP, E> RX;
    typedef CvtRun<T, OHW, GP, E> RG;
    const RX rx(xsrc, xdst, nx);
    const RG rg(gsrc, gdst, ng);
    const int tid = threadIdx.x, nthr = blockDim.x;
    const int sx = rx.scalars(), ns = sx + rg.scalars();  // ns <= 4 (E - 1) < blockDim.x
    int se = -1;
    unsigned short sv = 0;
    if (tid < ns) {
        se = tid < sx ? rx.scalar_index(tid) : rg.scalar_index(tid - sx);
        sv = __ldg((tid < sx ? rx.src : rg.src) + se);
    }
    const int nl = rx.loads + rg.loads;
    for (int i0 = tid; i0 < nl; i0 += U * nthr) {
        typename RX::L v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int i = i0 + u * nthr;
            if (i < nl) v[u] = i < rx.loads ? rx.load(i) : rg.load(i - rx.loads);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int i = i0 + u * nthr;
            if (i < rx.loads) rx.put_load(i, v[u]);
            else if (i < nl) rg.put_load(i - rx.loads, v[u]);
        }
    }
    if (se >= 0) {
        if (tid < sx) rx.put(se, sv);
        else rg.put(se, sv);
    }
}

// wgrad_lines: weight and bias gradients of large kernels on whole planes (stride 1,
// dilation 1; all four types), conv_lines' counterpart:
//   dW[o, kh, kw] = sum over n, oh, ow of go[n, o, oh, ow] * x[n, o / M, oh - PT + kh, ow - PL + kw].
// Grid (channel groups, batch chunks): a block owns P channels and walks the batch items
// of its chunk, staging each item's P x planes and P grad_output planes (cp.async; planes
// an odd number of 16-byte vectors apart). Thread (kh, c) keeps the KW sums of tap row kh
// of channel slot c and loops at run time over only the output rows whose input row
// oh - PT + kh lies inside the plane (the padding taps cost nothing, as in conv_lines);
// per row, a grad_output row and an x row from shared memory feed up to OW*KW FMAs.
// Lanes are channel-fastest (tid = kh*P + c), so a warp's lanes share one or a few tap
// rows and so their loop counts; a quarter-warp reads the same row of consecutive planes.
//
// Bias: thread (kh, c) also adds grad_output rows kh, kh + KH, ... of its channel; the KH
// threads of a channel are added in order at the end. Partials per (channel, chunk) are
// summed in order by wgrad_reduce: deterministic, no atomics.
// 16-bit types are staged converted to float (stage_planes_cvt): the lines then run
// float32's code on float32's layout, the sums in float32 (a 16-bit row would need a
// conversion per FMA operand; the staged planes are small, their shared memory twice
// the 16-bit size). Their x planes are staged once per input channel: a block's channels
// o0 .. o0 + np - 1 read the input channels o0 / M ..; 4- and 8-byte types copy a plane
// per channel (cp.async, no conversion).
// Bytes: x and grad_output read once from DRAM (each block owns distinct planes).
template <class T, int KH, int KW, int IH, int IW, int OH, int OW, int PT, int PL, int BLOCK, int MINB>
__global__ void __launch_bounds__(BLOCK, MINB)
wgrad_lines(const T* __restrict__ x, const T* __restrict__ go, typename Traits<T>::acc* __restrict__ partial,
            const WplaneArgs a) {
    typedef typename Traits<T>::acc A;
    constexpr bool CVT = sizeof(T) == 2;
    static_assert(CVT || sizeof(T) == sizeof(A), "4- and 8-byte types are staged as they are");
    constexpr int KK = KH * KW, IHW = IH * IW, OHW = OH * OW;
    constexpr int V = 16 / (int)sizeof(A);
    constexpr int XP = lines_pitch<A, IHW>(), GP = lines_pitch<A, OHW>();
    static_assert(OW + KW <= 100 * 4 / (int)sizeof(A), "register budget: a grad_output row and KW sums");
    const int N = a.N, C = a.C, M = a.M, CM = a.CM, n_chunks = a.n_chunks, n_per = a.G, P = a.P;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* const xs = reinterpret_cast<A*>(smem_raw);
    A* const gs = xs + P * XP;  // XP is whole vectors: gs starts on a 16-byte boundary
    A* const red = reinterpret_cast<A*>(smem_raw);  // bias sums, once the last item is read

    const int o0 = blockIdx.x * P;
    const int np = min(P, CM - o0);
    const int chunk = blockIdx.y;
    const int n_begin = chunk * n_per, n_end = min(N, n_begin + n_per);
    const int tid = threadIdx.x;
    const int kh = tid / P, c = tid - kh * P;
    const bool active = kh < KH && c < np;
    // Output rows whose input row oh - PT + kh lies in [0, IH).
    const int oh0 = max(0, PT - kh), oh1 = min(OH, IH + PT - kh);

    // The x plane of channel slot c: its own copy, or (CVT) its input channel's.
    const int q0 = CVT ? o0 / M : 0;
    const int xslot = CVT ? (o0 + c) / M - q0 : c;

    A acc[KW];
#pragma unroll
    for (int k = 0; k < KW; ++k) acc[k] = A(0);
    A bsum = A(0);
    for (int n = n_begin; n < n_end; ++n) {
        if constexpr (CVT) {
            const int nq = (o0 + np - 1) / M - q0 + 1;
            stage_planes_cvt<T, IHW, XP, OHW, GP>(x + ((i64)n * C + q0) * IHW, xs, nq, go + ((i64)n * CM + o0) * OHW,
                                                  gs, np);
            __syncthreads();  // the staged planes are in place before any line reads them
        } else {
            for (int cc = 0; cc < np; ++cc) {
                const int o = o0 + cc;
                stage_planes<T, IHW, XP>(x + ((i64)n * C + o / M) * IHW, xs + cc * XP, 1);
                stage_planes<T, OHW, GP>(go + ((i64)n * CM + o) * OHW, gs + cc * GP, 1);
            }
            stage_commit_wait<0>();
        }
        if (active) {
            const A* const gp = gs + c * GP;
            const A* const xp = xs + xslot * XP + (kh - PT) * IW;  // x row of output row oh: xp + oh * IW
            for (int oh = oh0; oh < oh1; ++oh)
                lines_wrow<A, KW, IW, OW, PL, IW % V == 0, OW % V == 0>(gp + oh * OW, xp + oh * IW, acc);
            for (int oh = kh; oh < OH; oh += KH)
#pragma unroll
                for (int j = 0; j < OW; ++j) bsum += gp[oh * OW + j];
        }
        __syncthreads();  // every line has read this item's planes before the next copies
    }
    if (active) {
        A* const out = partial + ((i64)(o0 + c) * n_chunks + chunk) * (KK + 1) + kh * KW;
#pragma unroll
        for (int k = 0; k < KW; ++k) out[k] = acc[k];
        red[tid] = bsum;
    }
    __syncthreads();
    if (tid < np) {
        A s = A(0);
        for (int k = 0; k < KH; ++k) s += red[k * P + tid];
        partial[((i64)(o0 + tid) * n_chunks + chunk) * (KK + 1) + KK] = s;
    }
}

// One (x plane, grad_output plane) pair of wgrad_plane and bwd_plane: adds its products
// to the KH*KW tap sums acc[0, KK) and its grad_output elements to the bias sum acc[KK].
// The x plane is held in registers whole (every tap's index a constant; padding taps
// fold away), the grad_output plane is read a row at a time. Both planes are the calling
// thread's own, in shared memory.
template <class T, int KH, int KW, int SH, int SW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL>
__device__ __forceinline__ void plane_wgrad_item(const typename Raw<T>::type* xs, const typename Raw<T>::type* gs,
                                                 typename Traits<T>::acc (&acc)[KH * KW + 1]) {
    typedef typename Traits<T>::acc A;
    constexpr int KK = KH * KW, IHW = IH * IW;
    A xv[IHW];
#pragma unroll
    for (int i = 0; i < IHW; ++i) xv[i] = smem_elem<T>(xs + i);
#pragma unroll
    for (int oh = 0; oh < OH; ++oh) {
        A gr[OW];
#pragma unroll
        for (int j = 0; j < OW; ++j) {
            gr[j] = smem_elem<T>(gs + oh * OW + j);
            acc[KK] += gr[j];
        }
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = oh * SH - PT + kh * DH;
            if (ih < 0 || ih >= IH) continue;
#pragma unroll
            for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                for (int j = 0; j < OW; ++j) {
                    const int iw = j * SW - PL + kw * DW;
                    if (iw >= 0 && iw < IW) acc[kh * KW + kw] = fma(gr[j], xv[ih * IW + iw], acc[kh * KW + kw]);
                }
        }
    }
}

// grad_x rows [I0, I0 + GR) of one plane at stride 1 (bwd_plane): grad_output row r
// feeds grad_x row r - PT + kh*DH through tap row kh, and column ow feeds grad_x column
// ow - PL + kw*DW; every test folds at compile time, so padding taps cost nothing. gs:
// the thread's grad_output plane; wch: its channel's weight rows, KWP apart (16-byte
// aligned vector reads, one per grad_output row and tap row that meet).
template <class T, int KH, int KW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL, int KWP, int I0,
          int GR>
__device__ __forceinline__ void plane_gx_rows(const typename Raw<T>::type* gs, const typename Traits<T>::acc* wch,
                                              typename Traits<T>::acc (&acc)[GR * IW]) {
    typedef typename Traits<T>::acc A;
#pragma unroll
    for (int i = 0; i < GR * IW; ++i) acc[i] = A(0);
#pragma unroll
    for (int r = 0; r < OH; ++r) {
        // Does row r reach a grad_x row of the band through any tap row? (compile time)
        bool feeds = false;
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = r - PT + kh * DH;
            feeds |= ih >= I0 && ih < I0 + GR && ih < IH;
        }
        if (!feeds) continue;
        A gr[OW];
#pragma unroll
        for (int j = 0; j < OW; ++j) gr[j] = smem_elem<T>(gs + r * OW + j);
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = r - PT + kh * DH;
            if (ih < I0 || ih >= I0 + GR || ih >= IH) continue;
            A wr[KWP];
            smem_row<A, KWP>(wch + kh * KWP, wr);
#pragma unroll
            for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                for (int iw = 0; iw < IW; ++iw) {
                    const int ow = iw + PL - kw * DW;
                    if (ow >= 0 && ow < OW) acc[(ih - I0) * IW + iw] = fma(gr[ow], wr[kw], acc[(ih - I0) * IW + iw]);
                }
        }
    }
}

// The grad_x plane in bands of up to 24 sums (plane_gx_rows), each band stored to gxs
// (storage type) as soon as it is summed: the tap sums stay live beside them (7x7 float32
// at 168 registers: a whole plane at once spilled 68 bytes, bands of 4 rows 4 bytes,
// bands of 3 rows none).
template <class T, int KH, int KW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL, int KWP, int I0>
__device__ __forceinline__ void plane_gx_item(const typename Raw<T>::type* gs, const typename Traits<T>::acc* wch,
                                              typename Raw<T>::type* gxs) {
    constexpr int GR0 = 24 / IW < 1 ? 1 : 24 / IW;
    constexpr int GR = GR0 < IH - I0 ? GR0 : IH - I0;
    typename Traits<T>::acc acc[GR * IW];
    plane_gx_rows<T, KH, KW, DH, DW, IH, IW, OH, OW, PT, PL, KWP, I0, GR>(gs, wch, acc);
#pragma unroll
    for (int i = 0; i < GR * IW; ++i) {
        T v;
        store1(&v, acc[i]);
        gxs[I0 * IW + i] = *reinterpret_cast<const typename Raw<T>::type*>(&v);
    }
    if constexpr (I0 + GR < IH) plane_gx_item<T, KH, KW, DH, DW, IH, IW, OH, OW, PT, PL, KWP, I0 + GR>(gs, wch, gxs);
}

// Shared-memory layout of wgrad_plane and bwd_plane (the host mirrors it in
// _kernels.wgrad_plane_smem_bytes): NS * G runs of the block's x planes, NS * G runs of its
// grad_output planes (storage type, each run with one vector of slack, as conv_plane),
// then (bwd_plane) the weights of its P channels in the accumulation type, KH rows of
// KWP per channel, channels WP apart.
template <class T> struct PlaneRuns {
    int xrun, grun;  // bytes per x run, per grad_output run
    __device__ __forceinline__ PlaneRuns(int P, int IHW, int OHW) {
        constexpr int V = 16 / (int)sizeof(T);
        xrun = round_up((P * IHW + V) * (int)sizeof(T), 16);
        grun = round_up((P * OHW + V) * (int)sizeof(T), 16);
    }
};

// The body of wgrad_plane and bwd_plane: grid (channel groups, batch chunks). A block owns
// P consecutive output channels o and walks the batch items n of its chunk G at a time:
// thread (g, p) takes item n0 + g of each step, with the x plane of channel o / M held in
// registers (whole, so every tap's index is a constant) and the grad_output plane of
// channel o streamed a row at a time; it keeps the KH*KW tap sums and the bias sum. At the
// end the G sums of each channel are added in g order and written as the block's partial
// row: the same reduction tree on every run.
//
// GX (bwd_plane: M == 1, stride 1): after its sums, thread (g, p) also computes the grad_x
// plane (n0 + g, o) from the grad_output plane it holds and writes it over its own x plane
// in shared memory (only this thread reads that plane, and it has read it into registers,
// so no barrier is needed); after a barrier the G runs of grad_x planes leave as
// contiguous runs, like the x runs came in. grad_output is read from DRAM once for all
// three gradients. (Two threads per plane, one for each gradient, measured slower on
// convnext_7x7_s4: 0.0300 against 0.0277 ms; their two unrolled bodies stalled on
// instruction fetch.)
//
// NS == 2: the runs of the next step are copied into the other stage while this step is
// computed (a block with several steps keeps DRAM busy during its FMAs).
//
// Bytes: x and grad_output are read once from DRAM (an x plane twice when M > 1 and its
// channels straddle two blocks), grad_x written once (GX); the partials are
// CM * chunks * (KH*KW + 1) sums.
template <bool GX, int NS, class T, int KH, int KW, int SH, int SW, int DH, int DW, int IH, int IW, int OH, int OW,
          int PT, int PL, class Finish>
__device__ __forceinline__ void plane_backward(const T* __restrict__ x, const T* __restrict__ go,
                                               const T* __restrict__ w, T* __restrict__ gx,
                                               typename Traits<T>::acc* __restrict__ partial, const WplaneArgs& a,
                                               unsigned char* smem_raw, Finish&& finish) {
    typedef typename Traits<T>::acc A;
    typedef typename Raw<T>::type RT;
    constexpr int KK = KH * KW, IHW = IH * IW, OHW = OH * OW;
    constexpr int KWP = round_up(KW, SmemVec<A>::N);
    constexpr int WP = KH * KWP + ((KH * KWP / SmemVec<A>::N) % 2 == 0 ? SmemVec<A>::N : 0);
    static_assert(KK <= 64 && IHW <= 64 && OW <= 64, "register budget: KH*KW + 1 sums, an x plane, a grad_output row");
    static_assert(!GX || (SH == 1 && SW == 1), "bwd_plane: stride 1");
    static_assert(NS == 1 || NS == 2, "one stage, or two (the next step copied during this one)");
    const int N = a.N, C = a.C, M = a.M, CM = a.CM, n_chunks = a.n_chunks, G = a.G, P = a.P;

    const PlaneRuns<T> runs(P, IHW, OHW);
    const int tid = threadIdx.x;
    const int my_g = tid / P, my_p = tid - my_g * P;

    const int o0 = blockIdx.x * P;
    const int np = min(P, CM - o0);
    const int c_lo = o0 / M, c_hi = (o0 + np - 1) / M + 1;  // x channels of the block
    const int n_begin = (int)((i64)N * blockIdx.y / n_chunks), n_end = (int)((i64)N * (blockIdx.y + 1) / n_chunks);
    const bool active = my_g < G && my_p < np;
    const int o = o0 + my_p;
    // Batch item n's run of x planes, of grad_output planes and of grad_x planes (global),
    // and where slot sg = s * G + g holds the first two in shared memory (same remainder
    // modulo 16 bytes, so the runs move in 16-byte vectors).
    auto x_run = [&](i64 n) { return reinterpret_cast<const RT*>(x + (n * C + c_lo) * IHW); };
    auto g_run = [&](i64 n) { return reinterpret_cast<const RT*>(go + (n * CM + o0) * OHW); };
    auto gx_run = [&](i64 n) { return reinterpret_cast<RT*>(gx + (n * C + c_lo) * IHW); };
    auto xs_run = [&](int sg, const RT* src) { return reinterpret_cast<RT*>(smem_raw + sg * runs.xrun) + vec_phase(src); };
    auto gs_run = [&](int sg, const RT* src) {
        return reinterpret_cast<RT*>(smem_raw + NS * G * runs.xrun + sg * runs.grun) + vec_phase(src);
    };
    A* const ws = reinterpret_cast<A*>(smem_raw + NS * G * (runs.xrun + runs.grun));

    // Step n0's runs into stage s.
    auto issue = [&](int n0, int s) {
        for (int g = 0; g < G && n0 + g < n_end; ++g) {
            const RT* xg = x_run(n0 + g);
            const RT* gg = g_run(n0 + g);
            stage_async(xg, xs_run(s * G + g, xg), (c_hi - c_lo) * IHW);
            stage_async(gg, gs_run(s * G + g, gg), np * OHW);
        }
    };
    // The first step's copies go out before anything else, so the weights' loads below wait
    // while they are in flight.
    if (n_begin < n_end) issue(n_begin, 0);
    stage_commit();
    if constexpr (GX) {
        // The block's weights, once (visible after the first step's barrier); U loads in
        // flight per thread before their stores.
        constexpr int U = 4;
        for (int e0 = tid; e0 < np * KH * KWP; e0 += U * (int)blockDim.x) {
            A v[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int e = e0 + u * (int)blockDim.x;
                const int p = e / (KH * KWP), k = e - p * (KH * KWP), kh = k / KWP, kw = k - kh * KWP;
                v[u] = e < np * KH * KWP && kw < KW ? load1(w + (i64)(o0 + p) * KK + kh * KW + kw) : A(0);
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int e = e0 + u * (int)blockDim.x;
                const int p = e / (KH * KWP), k = e - p * (KH * KWP);
                if (e < np * KH * KWP) ws[p * WP + k] = v[u];
            }
        }
    }

    // Step n0's grad_x runs (in stage s's x slots) to global memory.
    auto copy_out = [&](int n0, int s) {
        for (int g = 0; g < G && n0 + g < n_end; ++g) {
            const RT* xg = x_run(n0 + g);
            RT* const dst = gx_run(n0 + g);
            const RT* src = xs_run(s * G + g, xg);
            if (vec_phase(dst) == vec_phase(xg)) {
                copy_run<4, false>(src, dst, np * IHW);
            } else {  // grad_x and x differ modulo 16 bytes: element copies
                for (int i = tid; i < np * IHW; i += blockDim.x) dst[i] = src[i];
            }
        }
    };
    int last_n0 = -1, last_s = 0;

    A acc[KK + 1];
#pragma unroll
    for (int k = 0; k <= KK; ++k) acc[k] = A(0);
    for (int n0 = n_begin, s = 0; n0 < n_end; n0 += G, s = NS == 2 ? s ^ 1 : 0) {
        if constexpr (NS == 2) {
            __syncthreads();  // stage s^1 was last read by the previous step (and copy-out)
            if (n0 + G < n_end) issue(n0 + G, s ^ 1);
            stage_commit_wait<1>();  // every step but the newest (the next one) has landed
        } else {
            if (n0 != n_begin) {
                __syncthreads();  // the previous step's readers (and copy-out) are done
                issue(n0, 0);
            }
            stage_commit_wait<0>();
        }
        if (active && n0 + my_g < n_end) {
            RT* const xs = xs_run(s * G + my_g, x_run(n0 + my_g)) + (o / M - c_lo) * IHW;
            const RT* gs = gs_run(s * G + my_g, g_run(n0 + my_g)) + my_p * OHW;
            plane_wgrad_item<T, KH, KW, SH, SW, DH, DW, IH, IW, OH, OW, PT, PL>(xs, gs, acc);
            if constexpr (GX) plane_gx_item<T, KH, KW, DH, DW, IH, IW, OH, OW, PT, PL, KWP, 0>(gs, ws + my_p * WP, xs);
        }
        if constexpr (GX) {
            if (n0 + G < n_end) {
                __syncthreads();  // every grad_x plane of the step is in shared memory
                copy_out(n0, s);
            } else {
                last_n0 = n0;  // the last step's grad_x leaves after the closing step
                last_s = s;
            }
        }
    }
    // Sums of the G items of each channel, added in g order. (bwd_plane: after the last
    // step's x runs, which hold its grad_x planes.)
    __syncthreads();
    A* red = reinterpret_cast<A*>(smem_raw + (GX ? NS * G * runs.xrun : 0));  // [G][P][KK + 1]
    if (my_g < G) {
#pragma unroll
        for (int k = 0; k <= KK; ++k) red[(my_g * P + my_p) * (KK + 1) + k] = acc[k];
    }
    __syncthreads();
    for (int e = tid; e < np * (KK + 1); e += blockDim.x) {
        const int p = e / (KK + 1), k = e - p * (KK + 1);
        A s = A(0);
        for (int g = 0; g < G; ++g) s += red[(g * P + p) * (KK + 1) + k];
        partial[((i64)(o0 + p) * n_chunks + blockIdx.y) * (KK + 1) + k] = s;
    }
    // The closing step's fence waits for this thread's stores to be visible: the last
    // step's grad_x stores come after it, so it waits for the partial rows only.
    finish();
    if constexpr (GX) {
        if (last_n0 >= 0) copy_out(last_n0, last_s);
    }
}

// wgrad_plane: weight and bias gradients of small planes, stage 1 (plane_backward; the
// chunks' partial rows are summed in order by wgrad_reduce).
template <class T, int KH, int KW, int SH, int SW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL,
          int BLOCK, int MINB>
__global__ void __launch_bounds__(BLOCK, MINB)
wgrad_plane(const T* __restrict__ x, const T* __restrict__ go, typename Traits<T>::acc* __restrict__ partial,
            const WplaneArgs a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    plane_backward<false, 1, T, KH, KW, SH, SW, DH, DW, IH, IW, OH, OW, PT, PL>(x, go, nullptr, nullptr, partial, a,
                                                                                smem_raw, [] {});
}

// bwd_plane: the whole backward of small planes at stride 1 and multiplier 1 in one pass
// over x and grad_output (plane_backward with GX). With `counters`, the last block of each
// channel group adds the chunks' partial rows in order and writes grad_weight and grad_bias
// (finish_channels, blocksum.cuh; counter blockIdx.x; before the last step's grad_x
// leaves); without, wgrad_reduce does. The kernel signature is the fused backward's
// (bwd.cu).
template <class T, int KH, int KW, int DH, int DW, int IH, int IW, int OH, int OW, int PT, int PL, int NS, int BLOCK,
          int MINB>
__global__ void __launch_bounds__(BLOCK, MINB)
bwd_plane(const T* __restrict__ x, const T* __restrict__ go, const T* __restrict__ w, T* __restrict__ gx,
          typename Traits<T>::acc* __restrict__ partial, unsigned* __restrict__ counters, T* __restrict__ gw,
          T* __restrict__ gb, const WplaneArgs a) {
    typedef typename Traits<T>::acc A;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    plane_backward<true, NS, T, KH, KW, 1, 1, DH, DW, IH, IW, OH, OW, PT, PL>(x, go, w, gx, partial, a, smem_raw, [&] {
        if (counters != nullptr) {
            const int o0 = blockIdx.x * a.P;
            finish_channels<T, A>(partial, o0, min(a.P, a.CM - o0), a.n_chunks, KH * KW, counters + blockIdx.x, gw, gb);
        }
    });
}

}  // namespace dw
