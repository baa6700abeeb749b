// Sliding PSN, banded:  H[t] = sum_{i<k} w_i X[t-k+1+i] + b  (zero history),
// S = Θ(H); X/S/grads [T, M] time-major, any T, k a compile-time constant (SJP_K,
// 1..64). Write d = k-1-i for the delay of weight i: H[t] = sum_d w_{k-1-d} X[t-d].
//
// Launch layout: blocks of 128 threads walk tiles of neuron columns (grid-stride; the
// launcher sizes the grid from the device). A column is served by S adjacent lanes
// (S a power of two); lane s of a column handles the delays [SEG*s, SEG*s + SEG) and
// keeps the inputs of those delays in a register ring. Only lane 0 of a column reads
// X; every step each lane hands its oldest value to lane s+1 with one shuffle, so the
// window travels through the lanes (a systolic pipeline). The time loop is unrolled
// by SEG, so every ring slot is a compile-time register index: no `%`, no local
// memory.
//
// Forward (sjp_sliding_forward): SEG = 16, S = ceil(k / 16); per step each lane adds
// its 16 products, the S partial sums are combined with shuffles, lane 0 writes S[t].
// Bytes: read T*M*sizeof(X), write T*M*sizeof(S); nothing is saved.
//
// Backward (sjp_sliding_backward): SEG = 8, S = ceil(k / 8). Per step, as in forward,
// H[t] is recomputed and GH[t] = grad_S[t] * surrogate'(H[t]) (grad_S read by lane 0,
// broadcast to the column's lanes). grad_X[j] = sum_d w_{k-1-d} GH[j+d] is accumulated
// in a second ring of pending outputs that travels through the lanes the same way; an
// output leaving the last lane is complete and is written. grad_w[k-1-d] =
// sum_t GH[t] X[t-d] and grad_b = sum_t GH[t] are summed per lane, then over the
// columns of the block in a fixed order (butterfly shuffles, then warps in order) and
// written as one partial per block (work[block][0..k-1] weights, [k] bias), which the
// same launch adds over the blocks in a fixed order (sjp_finish_sums, common.cuh)
// into grad_w [k] and grad_b [1].
// Bytes: read 2*T*M (X, grad_S), write T*M (grad_X).
#include "common.cuh"

#ifndef SJP_K
#error "sliding_psn.cu needs a compile-time k: -DSJP_K=<1..64>"
#endif
#if SJP_K < 1 || SJP_K > 64
#error "SJP_K must be in [1, 64]"
#endif

#define SJP_SLIDE_BLOCK 128
#define SJP_FSEG 16
#define SJP_FS (SJP_K <= 16 ? 1 : SJP_K <= 32 ? 2 : 4)
#define SJP_BSEG 8
#define SJP_BS (SJP_K <= 8 ? 1 : SJP_K <= 16 ? 2 : SJP_K <= 32 ? 4 : 8)

// Sum over the S lanes of a column (all of them get the total).
template <int S>
__device__ __forceinline__ float sjp_group_sum(float v) {
#pragma unroll
  for (int o = S / 2; o > 0; o >>= 1) v += __shfl_xor_sync(SJP_FULL_MASK, v, o, S);
  return v;
}

// The value lane s - 1 of the column passes on (lane 0 of a column keeps its own).
template <int S>
__device__ __forceinline__ float sjp_from_prev_lane(float v) {
  if (S == 1) return v;
  return __shfl_up_sync(SJP_FULL_MASK, v, 1, S);
}

// Whether delay e of a lane's segment can have a nonzero weight: with one lane per
// column (S = 1), delays from k on are skipped at compile time.
template <int S>
__device__ __forceinline__ bool sjp_delay_used(int e) {
  return S > 1 || e < SJP_K;
}

// The weights of the SEG delays lane `seg` of a column handles, SEG * seg + e (zero
// past k).
template <int SEG>
__device__ __forceinline__ void sjp_window_weights(const float* __restrict__ w, int seg,
                                                   float (&wreg)[SEG]) {
#pragma unroll
  for (int e = 0; e < SEG; ++e) {
    const int d = SEG * seg + e;
    wreg[e] = d < SJP_K ? w[SJP_K - 1 - d] : 0.0f;
  }
}

// One step of the systolic window: ring slot u takes the step's input (lane 0 of a
// column: xin; the others: what the previous lane held there), then H = sum of the
// column's w_d X[t - d] over its lanes, plus the bias. u is a compile-time index in
// the unrolled time loops.
template <int S, int SEG>
__device__ __forceinline__ float sjp_window_step(float (&ring)[SEG],
                                                 const float (&wreg)[SEG], int u,
                                                 float xin, int seg, float bias) {
  const float passed = sjp_from_prev_lane<S>(ring[u]);
  ring[u] = seg == 0 ? xin : passed;
  float p = 0.0f;
#pragma unroll
  for (int e = 0; e < SEG; ++e)
    if (sjp_delay_used<S>(e)) p += wreg[e] * ring[(u - e) & (SEG - 1)];
  return sjp_group_sum<S>(p) + bias;
}

// at least 8 resident blocks (1024 threads, 50% occupancy): at most 64 registers
extern "C" __global__ void __launch_bounds__(SJP_SLIDE_BLOCK, 8)
    sjp_sliding_forward(const sjp_scalar* __restrict__ x, const float* __restrict__ w,
                        const float* __restrict__ b, sjp_scalar* __restrict__ s_out,
                        const sjp_index M, const int T) {
  constexpr int S = SJP_FS, SEG = SJP_FSEG;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = lane & (S - 1);
  const int cols_per_block = SJP_SLIDE_BLOCK / S;
  float wreg[SEG];  // weight of delay SEG * seg + e
  sjp_window_weights<SEG>(w, seg, wreg);
  const float bias = b[0];
  const sjp_index n_tiles = (M + cols_per_block - 1) / cols_per_block;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index m = tile * cols_per_block + warp * (32 / S) + lane / S;
    const bool valid = m < M;
    float ring[SEG];  // ring[slot]: this lane's input of delay (u - slot) mod SEG
#pragma unroll
    for (int e = 0; e < SEG; ++e) ring[e] = 0.0f;
    const bool io = seg == 0 && valid;  // lane 0 of a column loads and stores
    const sjp_index mc = valid ? m : 0;
    const sjp_scalar* xp = x + mc;  // row t of this column, stepped by M
    sjp_scalar* sp = s_out + mc;
    // time runs in whole chunks of SEG steps (the ring slot of step t is t mod SEG, a
    // compile-time index); steps past T load zeros and store nothing. A chunk's
    // inputs are loaded first, all in flight together, and kept packed until used.
#pragma unroll 1
    for (int t0 = 0; t0 < T; t0 += SEG) {
      unsigned int xr[SEG];
#pragma unroll
      for (int u = 0; u < SEG; ++u)
        xr[u] = io && t0 + u < T ? sjp_raw_bits(xp, (sjp_index)u * M) : 0u;
#pragma unroll
      for (int u = 0; u < SEG; ++u) {
        const bool in_t = t0 + u < T;
        const float h =
            sjp_window_step<S, SEG>(ring, wreg, u, sjp_float_of(xr[u]), seg, bias);
        if (io && in_t) sjp_store(sp, 0, sjp_heaviside(h));
        sp += M;
      }
      xp += (sjp_index)SEG * M;
    }
  }
}

extern "C" __global__ void __launch_bounds__(SJP_SLIDE_BLOCK, 8) sjp_sliding_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ w, const float* __restrict__ b,
    sjp_scalar* __restrict__ grad_x, float* __restrict__ grad_w,
    float* __restrict__ grad_b, float* __restrict__ work,
    unsigned int* __restrict__ counters, const sjp_index M, const int T,
    const float sg_a, const float sg_c, const float sg_d) {
  SJP_DYN_SMEM(red);  // [warps][SJP_K + 1] | k > 8: the rings' flush [SJP_BSEG][block]
  constexpr int S = SJP_BS, SEG = SJP_BSEG;
  constexpr bool PAD = S == 1;  // whole chunks (see the time loop)
  sjp_smem_t ring_s = red + (SJP_SLIDE_BLOCK / 32) * (SJP_K + 1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = lane & (S - 1);
  const int cols_per_block = SJP_SLIDE_BLOCK / S;
  float wreg[SEG];  // weight of delay SEG * seg + e
  sjp_window_weights<SEG>(w, seg, wreg);
  const float bias = b[0];
  float aw[SEG];  // grad of the weight of delay SEG * seg + e, this lane's columns
#pragma unroll
  for (int e = 0; e < SEG; ++e) aw[e] = 0.0f;
  float ab = 0.0f;  // grad_b (lane 0 of each column)
  const sjp_index n_tiles = (M + cols_per_block - 1) / cols_per_block;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index m = tile * cols_per_block + warp * (32 / S) + lane / S;
    const bool valid = m < M;
    float xr[SEG], ga[SEG];  // input ring; pending grad_X of outputs t - SEG*seg - slot
#pragma unroll
    for (int e = 0; e < SEG; ++e) xr[e] = ga[e] = 0.0f;
    // row pointers of this column, stepped by M (lane 0 loads, lane S - 1 stores the
    // output that leaves the pipeline, SEG * S rows behind)
    const sjp_index mc = valid ? m : 0;
    const sjp_scalar* xp = x + mc;
    const sjp_scalar* gp = grad_s + mc;
    sjp_scalar* gxp = grad_x + mc;
    const bool loads = seg == 0 && valid, stores = seg == S - 1 && valid;
    // Time runs in chunks of SEG steps (the ring slot of step t is t mod SEG, a
    // compile-time index). With one lane per column (PAD) the last chunk is run
    // whole: steps past T load zeros, their GH is exactly 0, so they only push
    // complete outputs down the pipeline. With several lanes (k > 8) steps past T
    // are skipped (a block-uniform branch, which keeps ptxas from hoisting a whole
    // chunk's loads: those registers would spill the windows).
#pragma unroll 1
    for (int t0 = 0; t0 < T; t0 += SEG) {
      // one lane per column (PAD): the chunk's inputs first, all in flight together,
      // packed until used; several lanes: loaded per step (more registers spill)
      constexpr int NB = PAD ? SEG : 1;
      unsigned int xraw[NB], graw[NB];
      if (PAD) {
#pragma unroll
        for (int u = 0; u < SEG; ++u) {
          const bool ld = loads && t0 + u < T;
          xraw[u % NB] = ld ? sjp_raw_bits(xp, (sjp_index)u * M) : 0u;
          graw[u % NB] = ld ? sjp_raw_bits(gp, (sjp_index)u * M) : 0u;
        }
      }
#pragma unroll
      for (int u = 0; u < SEG; ++u) {
        const int t = t0 + u;
        if (PAD || t < T) {
          const bool ld = !PAD && loads;
          const float xin = PAD  ? sjp_float_of(xraw[u % NB])
                            : ld ? sjp_load(xp, (sjp_index)u * M)
                                 : 0.0f;
          const float gin = PAD  ? sjp_float_of(graw[u % NB])
                            : ld ? sjp_load(gp, (sjp_index)u * M)
                                 : 0.0f;
          // the pending output in slot u has delay SEG*(seg+1) now: pass it on; the
          // last lane's, output t - SEG*S < T, is complete (delays past k have zero
          // weight)
          const float out = ga[u];
          const float from_prev = sjp_from_prev_lane<S>(out);
          if (stores && t >= SEG * S) sjp_store(gxp, 0, out);
          if (t >= SEG * S) gxp += M;
          ga[u] = seg == 0 ? 0.0f : from_prev;
          const float h = sjp_window_step<S, SEG>(xr, wreg, u, xin, seg, bias);
          const float gs = S == 1 ? gin : __shfl_sync(SJP_FULL_MASK, gin, 0, S);
          const float gh = gs * sjp_sg(h, sg_a, sg_c, sg_d);
#pragma unroll
          for (int e = 0; e < SEG; ++e) {
            if (sjp_delay_used<S>(e)) {
              ga[(u - e) & (SEG - 1)] += wreg[e] * gh;
              aw[e] += gh * xr[(u - e) & (SEG - 1)];
            }
          }
          if (seg == 0) ab += gh;
        }
      }
      xp += (sjp_index)SEG * M;
      gp += (sjp_index)SEG * M;
    }
    // The outputs still in the rings are complete: after the last step run, t_last,
    // output t_last - SEG*seg - e sits in slot (t_last - e) mod SEG; those past T - 1
    // do not exist. PAD: t_last mod SEG = SEG - 1, a static slot; otherwise the ring
    // goes through this thread's own column of shared memory (conflict-free), so the
    // dynamic slot needs no local memory.
    const int t_last = PAD ? (T + SEG - 1) / SEG * SEG - 1 : T - 1;
    if (!PAD) {
#pragma unroll
      for (int e = 0; e < SEG; ++e) ring_s[e * SJP_SLIDE_BLOCK + threadIdx.x] = ga[e];
    }
#pragma unroll
    for (int e = 0; e < SEG; ++e) {
      const sjp_index j = (sjp_index)t_last - SEG * seg - e;
      const float v =
          PAD ? ga[SEG - 1 - e]
              : ring_s[((t_last - e) & (SEG - 1)) * SJP_SLIDE_BLOCK + threadIdx.x];
      if (valid && j >= 0 && j < T) sjp_store(grad_x, j * M + m, v);
    }
  }
  // grad_w, grad_b: sum over the columns of the warp (lanes with the same seg), then
  // over the warps of the block in order
#pragma unroll
  for (int e = 0; e < SEG; ++e) {
    float v = aw[e];
#pragma unroll
    for (int o = 16; o >= S; o >>= 1) v += __shfl_xor_sync(SJP_FULL_MASK, v, o);
    const int d = SEG * seg + e;
    if (lane < S && d < SJP_K) red[warp * (SJP_K + 1) + (SJP_K - 1 - d)] = v;
  }
  ab = sjp_warp_sum(ab);
  if (lane == 0) red[warp * (SJP_K + 1) + SJP_K] = ab;
  __syncthreads();
  for (int i = threadIdx.x; i <= SJP_K; i += blockDim.x) {
    float sum = 0.0f;
    for (int wp = 0; wp < (int)(blockDim.x >> 5); ++wp) sum += red[wp * (SJP_K + 1) + i];
    work[(sjp_index)blockIdx.x * (SJP_K + 1) + i] = sum;
  }
  sjp_finish_sums(work, counters, SJP_K + 1, grad_w, SJP_K, grad_b, 1.0f);
}
