// MPE-PSN (see sj_parallel/reference.py for the math), X/S/grads [T, M] time-major.
//
//   û_t = (1 - b_t) I_t, b_t = [hash(seed, (t0+t)*M + m) < sigmoid(I_t)]  (stochastic)
//   û_t = (1 - sigmoid(I_t)) I_t                                          (expectation)
//   previous wiring: h_t = I_t + tau * û_{t-1}   (û_{-1} = u_hat0 or 0)
//   current wiring:  h_t = I_t + tau * c_t û_t,  c_t = [t0 + t > 0]
//   o_t = Θ(h_t - v), u_t = (1 - o_t) h_t  (the spike is not detached in the loss)
//   mse_t = mean_m e_t^2, e_t = û_t - u_t (previous) or c_t (û_t - u_{t-1}) (current)
//
// Launch layout: blocks of SJP_MPE_BLOCK (128) threads walk tiles of 128 neuron
// columns (grid-stride over tiles; the launcher sizes the grid from the SM count and
// the resident blocks per SM); thread `tid` owns column m = tile * 128 + tid and walks
// its column over time (forward) or backwards (backward) with pointers and the hash
// index stepped by M (no 64-bit multiplies in the time loop). Loads and stores of a
// warp are 32 consecutive columns of one row: fully coalesced.
//
// Forward (sjp_mpe_forward): reads I once, writes S once, and [M] last-step states
// (û_{T-1}, u_{T-1}) for the next call. With need_mse, time runs in chunks of
// SJP_MPE_CHUNK (8) steps: each lane keeps its 8 values e_t^2 in registers and the warp
// sums the 8 rows at once with a transposed butterfly (9 shuffles instead of 40); lane
// 4 i ends with the warp's sum for step i of the chunk and adds it to its warp's row of
// a [warps, T] table in dynamic shared memory (one writer per entry: no atomics). At
// the end the block adds the rows in warp order and writes one partial per step,
// work[block][t]; the same launch adds them over the blocks in a fixed order and
// writes mse[t] = sum / M (sjp_finish_sums, common.cuh). Without need_mse, mse = 0.
// Nothing is saved for backward: the Bernoulli samples are regenerated from the hash.
// Bytes: read T*M*sizeof(I) (+ 2*M states in), write T*M*sizeof(S) + 2*M.
//
// Backward (sjp_mpe_backward): walks t from T-1 to 0 keeping the estimates of steps t,
// t-1, t-2 and the step values of t, t-1 in registers, so every estimate (hash,
// sigmoid) is computed once; carries the gradient of h_{t+1}; writes grad_I once.
// grad_v = -sum sg'(z) (g_S - adj_u h) is reduced per block in a fixed order, then
// over the blocks in the same launch (sjp_finish_sums). grad_S may be null (zero);
// the [M] state gradients are written for every column (0 where the wiring has none).
// Bytes: read 2*T*M (I, grad_S), write T*M (grad_I) (+ [M] state grads).
#include "common.cuh"

#define SJP_MPE_BLOCK 128
#define SJP_MPE_CHUNK 8  // forward: steps per warp reduction of e_t^2
#define SJP_MPE_BCHUNK 4  // backward: steps whose loads are issued together
// compile-time switches (each build has branch-free loops)
#ifndef SJP_MPE_CURRENT
#define SJP_MPE_CURRENT 0  // 1: the current wiring, 0: the previous (paper) wiring
#endif
#ifndef SJP_MPE_STOCHASTIC
#define SJP_MPE_STOCHASTIC 1  // 1: sampled estimate, 0: the expectation
#endif
#ifndef SJP_MPE_MSE
#define SJP_MPE_MSE 1  // forward: 1 sums e_t^2 for the membrane loss
#endif
#ifndef SJP_MPE_WIDE
// backward: 0 when a column's counters span less than 2^32 ((T - 1) M < 2^32, the
// launcher checks): the keys of the first high word and the one below are computed
// once per column and a borrow from the low word selects the second; 1: the key is
// looked up per step (cached, recomputed when the high word changes)
#define SJP_MPE_WIDE 0
#endif

struct SjpEst {
  float uh;    // the estimate û
  float dudx;  // dû/dI
};

// The estimate of step value xi with global index lo (low word) under key.
__device__ __forceinline__ SjpEst sjp_mpe_estimate(float xi, unsigned int key,
                                                   unsigned int lo) {
  SjpEst r;
  const float p = sjp_sigmoid(xi);
  if (SJP_MPE_STOCHASTIC) {
    const float b = sjp_hash_uniform_key(key, lo) < p ? 1.0f : 0.0f;
    r.uh = (1.0f - b) * xi;
    r.dudx = 1.0f - b;
  } else {
    r.uh = (1.0f - p) * xi;
    r.dudx = (1.0f - p) - p * (1.0f - p) * xi;
  }
  return r;
}

// Key of the index's high word, recomputed only when it changes (past 2^32 elements).
struct SjpKeyCache {
  unsigned int seed_lo, seed_hi, hi, key;
  __device__ __forceinline__ unsigned int get(unsigned long long index) {
    const unsigned int h = (unsigned int)(index >> 32);
    if (__builtin_expect(h != hi, 0)) {
      hi = h;
      key = sjp_hash_key(seed_lo, seed_hi, h);
    }
    return key;
  }
};

// The warp sums of 8 values per lane, v[i] summed over the 32 lanes for each i, in 9
// shuffles: three halving exchanges (lanes differing in bit 4 swap halves of v, then
// bit 3, then bit 2), then two plain butterfly steps (bits 1, 0). Lane l returns the
// sum for i = l >> 2 (every lane of a group of 4 holds the same value). The order of
// the additions is fixed: deterministic.
__device__ __forceinline__ float sjp_warp_sum8_transposed(const float (&v)[8], int lane) {
  float a[4], b[2];
  const bool u4 = lane & 16, u3 = lane & 8, u2 = lane & 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float keep = u4 ? v[i + 4] : v[i], give = u4 ? v[i] : v[i + 4];
    a[i] = keep + __shfl_xor_sync(SJP_FULL_MASK, give, 16);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float keep = u3 ? a[i + 2] : a[i], give = u3 ? a[i] : a[i + 2];
    b[i] = keep + __shfl_xor_sync(SJP_FULL_MASK, give, 8);
  }
  const float keep = u2 ? b[1] : b[0], give = u2 ? b[0] : b[1];
  float r = keep + __shfl_xor_sync(SJP_FULL_MASK, give, 4);
  r += __shfl_xor_sync(SJP_FULL_MASK, r, 2);
  r += __shfl_xor_sync(SJP_FULL_MASK, r, 1);
  return r;
}

extern "C" __global__ void __launch_bounds__(SJP_MPE_BLOCK, 8)
    sjp_mpe_forward(const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ u_hat0,
                    const sjp_scalar* __restrict__ u0, sjp_scalar* __restrict__ s,
                    sjp_scalar* __restrict__ u_hat_last, sjp_scalar* __restrict__ u_last,
                    float* __restrict__ mse, float* __restrict__ work,
                    unsigned int* __restrict__ counters, const float* __restrict__ v_th,
                    const sjp_index M, const int T, const float tau,
                    const unsigned int seed_lo, const unsigned int seed_hi,
                    const long long t0) {
  constexpr bool need_mse = SJP_MPE_MSE, current_wiring = SJP_MPE_CURRENT;
  SJP_DYN_SMEM(err_s);  // [warps][T] per-warp sums of e_t^2 (need_mse only)
  if (T <= 0) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  if (need_mse)
    for (int i = threadIdx.x; i < warps * T; i += blockDim.x) err_s[i] = 0.0f;
  __syncthreads();
  const float v = v_th[0];
  SjpKeyCache kc{seed_lo, seed_hi, 0u, sjp_hash_key(seed_lo, seed_hi, 0u)};  // steps
  const int t_first = t0 == 0 ? 0 : -1;  // the step with t0 + t = 0, if in this call
  const sjp_index n_tiles = (M + blockDim.x - 1) / blockDim.x;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index m = tile * blockDim.x + threadIdx.x;
    const bool valid = m < M;
    // lanes past M compute column M - 1 and store nothing (no branches in the loop)
    const sjp_index mc = valid ? m : M - 1;
    float uh_prev = u_hat0 ? sjp_load(u_hat0, mc) : 0.0f;
    float u_prev = u0 ? sjp_load(u0, mc) : 0.0f;
    const sjp_scalar* xp = x + mc;  // step t of this column
    sjp_scalar* sp = s + mc;
    unsigned long long index = (unsigned long long)t0 * M + mc;  // the hash counter
    // one step under the hash key of its counter's high word and its low word lo:
    // spike, state update, e_t^2 (0 for lanes past M)
    auto step = [&](int t, unsigned int key, unsigned int lo) {
      const float xi = sjp_load(xp, 0);
      const SjpEst e = sjp_mpe_estimate(xi, key, lo);
      const bool first = t == t_first;
      const float h = current_wiring ? (first ? xi : xi + tau * e.uh)
                                     : xi + tau * uh_prev;
      const float o = sjp_heaviside(h - v);
      if (valid) sjp_store(sp, 0, o);
      const float u = (1.0f - o) * h;
      const float err = current_wiring ? (first ? 0.0f : e.uh - u_prev) : e.uh - u;
      uh_prev = e.uh;
      u_prev = u;
      xp += M;
      sp += M;
      return valid ? err * err : 0.0f;
    };
    // one step whatever its counter (the key looked up per step)
    auto step_any = [&](int t) {
      const float e2 = step(t, kc.get(index), (unsigned int)index);
      index += M;
      return e2;
    };
    // Whole chunks, when this column's counters span less than 2^32 ((T - 1) M <
    // 2^32): the keys of the first high word and the next are computed once per
    // column, and a wrap of the 32-bit low word (below its first value) selects the
    // second. Otherwise, and for the last T % 8 steps, step by step.
    const bool narrow = (unsigned long long)(T - 1) * (unsigned long long)M < (1ull << 32);
    const int t_full = narrow ? T / SJP_MPE_CHUNK * SJP_MPE_CHUNK : 0;
    const unsigned int hi0 = (unsigned int)(index >> 32), lo0 = (unsigned int)index;
    const unsigned int key_a = sjp_hash_key(seed_lo, seed_hi, hi0);
    const unsigned int key_b = sjp_hash_key(seed_lo, seed_hi, hi0 + 1u);
    unsigned int lo = lo0;
    int tc = 0;
#pragma unroll 1
    for (; tc < t_full; tc += SJP_MPE_CHUNK) {  // straight-line code
      float e2[SJP_MPE_CHUNK];
#pragma unroll
      for (int j = 0; j < SJP_MPE_CHUNK; ++j) {
        e2[j] = step(tc + j, lo < lo0 ? key_b : key_a, lo);  // wrapped: hi0 + 1
        lo += (unsigned int)M;
      }
      if (need_mse) {  // block-uniform: every lane takes part in the shuffles
        // the warp's sums (lane 4 i: step tc + i) into its row of the table
        const float sum = sjp_warp_sum8_transposed(e2, lane);
        if ((lane & 3) == 0) err_s[warp * T + tc + (lane >> 2)] += sum;
      }
    }
    index += (unsigned long long)t_full * M;
#pragma unroll 1
    for (; tc < T; ++tc) {  // the last T % 8 steps, one at a time
      const float e2 = step_any(tc);
      if (need_mse) {
        const float sum = sjp_warp_sum(e2);
        if (lane == 0) err_s[warp * T + tc] += sum;
      }
    }
    if (valid && u_hat_last) sjp_store(u_hat_last, m, uh_prev);
    if (valid && u_last) sjp_store(u_last, m, u_prev);
  }
  if (!need_mse) {  // the loss is not asked for: mse = 0
    if (blockIdx.x == 0)
      for (int t = threadIdx.x; t < T; t += blockDim.x) mse[t] = 0.0f;
    return;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < T; t += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) sum += err_s[w * T + t];
    work[(sjp_index)blockIdx.x * T + t] = sum;
  }
  // mse[t] = (sum over the blocks, in a fixed order) / M
  sjp_finish_sums(work, counters, T, mse, T, nullptr, (float)M);
}

// Step values recomputed in backward.
struct SjpStep {
  float h, z, s, u;
};

__device__ __forceinline__ SjpStep sjp_mpe_step(float xi, float uh_own, float uh_prev,
                                                bool first, float tau, float v) {
  SjpStep r;
  r.h = SJP_MPE_CURRENT ? (first ? xi : xi + tau * uh_own) : xi + tau * uh_prev;
  r.z = r.h - v;
  r.s = sjp_heaviside(r.z);
  r.u = (1.0f - r.s) * r.h;
  return r;
}

extern "C" __global__ void __launch_bounds__(SJP_MPE_BLOCK, 8) sjp_mpe_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ u_hat0,
    const sjp_scalar* __restrict__ u0, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ grad_mse, const sjp_scalar* __restrict__ grad_uhl,
    const sjp_scalar* __restrict__ grad_ul, sjp_scalar* __restrict__ grad_x,
    float* __restrict__ grad_u_hat0, float* __restrict__ grad_u0,
    float* __restrict__ grad_v, float* __restrict__ work,
    unsigned int* __restrict__ counters, const float* __restrict__ v_th, const sjp_index M,
    const int T, const float tau, const unsigned int seed_lo, const unsigned int seed_hi,
    const long long t0, const float sg_a, const float sg_c, const float sg_d) {
  constexpr bool current_wiring = SJP_MPE_CURRENT;
  SJP_DYN_SMEM(scratch);  // one float per warp
  const float v = v_th[0];
  const float two_over_m = 2.0f / (float)M;
  float acc_v = 0.0f;
  SjpKeyCache kc{seed_lo, seed_hi, 0u, sjp_hash_key(seed_lo, seed_hi, 0u)};
  const sjp_index n_tiles = (M + blockDim.x - 1) / blockDim.x;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles && T > 0; tile += gridDim.x) {
    const sjp_index m = tile * blockDim.x + threadIdx.x;
    if (m >= M) continue;
    const float uh_init = u_hat0 ? sjp_load(u_hat0, m) : 0.0f;
    const float u_init = u0 ? sjp_load(u0, m) : 0.0f;
    // The estimates are read backwards in time, one step ahead of t - 2: xq and iq
    // (pointer into I and hash counter) are those of step tq, stepped by -M.
    int tq = T - 1;
    const sjp_scalar* xq = x + (sjp_index)tq * M + m;
    unsigned long long iq = (unsigned long long)(t0 + tq) * M + m;
#if !SJP_MPE_WIDE
    const unsigned int hi0 = (unsigned int)(iq >> 32), m_lo = (unsigned int)M;
    const unsigned int key_a = sjp_hash_key(seed_lo, seed_hi, hi0);
    const unsigned int key_b = sjp_hash_key(seed_lo, seed_hi, hi0 - 1u);
    unsigned int lo = (unsigned int)iq;
    bool borrowed = false;  // the counter is in high word hi0 - 1
#endif
    // x and estimate of step tq from its raw bits, then move to tq - 1 (before step 0:
    // the carried state)
    auto est_of = [&](float& xi, unsigned int raw) {
      if (tq < 0) {
        xi = 0.0f;
        return SjpEst{uh_init, 0.0f};
      }
      xi = sjp_float_of(raw);
#if SJP_MPE_WIDE
      const SjpEst e = sjp_mpe_estimate(xi, kc.get(iq), (unsigned int)iq);
      iq -= M;
#else
      const SjpEst e = sjp_mpe_estimate(xi, borrowed ? key_b : key_a, lo);
      const unsigned int lo_next = lo - m_lo;
      borrowed = borrowed || lo_next > lo;
      lo = lo_next;
#endif
      xq -= M;
      --tq;
      return e;
    };
    // the raw bits of x at step tq - ahead (0 before step 0)
    auto load_x = [&](int ahead) -> unsigned int {
      return tq - ahead >= 0 ? sjp_raw_bits(xq - (sjp_index)ahead * M, 0) : 0u;
    };
    // rolling window: x, estimate and step values of t and t - 1, estimate of t - 2
    float x_t, x_p, x_pp;
    SjpEst e_t = est_of(x_t, load_x(0));
    SjpEst e_p = est_of(x_p, load_x(0));
    SjpEst e_pp = est_of(x_pp, load_x(0));
    SjpStep st_t = sjp_mpe_step(x_t, e_t.uh, e_p.uh, (t0 + T - 1) == 0, tau, v);
    // grad_S may be null (the spikes are not used): then it is 0
    const bool has_gs = grad_s != nullptr;
    sjp_index gi = (sjp_index)(T - 1) * M + m;  // grad_S / grad_I of step t
    float grad_h_next = 0.0f;    // grad of h_{t+1} (previous wiring)
    float mse_next_term = 0.0f;  // gm_{t+1} * e_{t+1} (current wiring)
    // Time runs backwards in chunks of SJP_MPE_BCHUNK steps; a chunk's loads (grad_S
    // of its steps, x of the estimates they move to) are issued together before any
    // is used and kept packed until their step, so they are in flight at once.
#pragma unroll 1
    for (int tc = T - 1; tc >= 0; tc -= SJP_MPE_BCHUNK) {
      unsigned int xr[SJP_MPE_BCHUNK], gr[SJP_MPE_BCHUNK];
#pragma unroll
      for (int c = 0; c < SJP_MPE_BCHUNK; ++c) {
        xr[c] = load_x(c);
        gr[c] = has_gs && tc - c >= 0 ? sjp_raw_bits(grad_s, gi - (sjp_index)c * M) : 0u;
      }
#pragma unroll
      for (int c = 0; c < SJP_MPE_BCHUNK; ++c) {
        const int t = tc - c;
        if (t >= 0) {
          // step values of t - 1 (its h needs û_{t-2} or û_{t-1}); u_{t-1} is the
          // current wiring's loss target of step t
          SjpStep st_p;
          float u_before = u_init;
          if (t >= 1) {
            st_p = sjp_mpe_step(x_p, e_p.uh, e_pp.uh, (t0 + t - 1) == 0, tau, v);
            u_before = st_p.u;
          }
          const float gs = sjp_float_of(gr[c]);
          // adj_u: gradient reaching u_t = (1 - o_t) h_t (membrane loss, u_last). The
          // spike inside u is not detached: du/dh = (1 - o) - h sg'(z), du/dv = h sg'(z).
          float adj_u = 0.0f;
          float grad_uh = 0.0f;
          if (t == T - 1) {
            if (grad_ul) adj_u += sjp_load(grad_ul, m);
            if (grad_uhl) grad_uh += sjp_load(grad_uhl, m);
          }
          const float gm = grad_mse ? grad_mse[t] * two_over_m : 0.0f;
          float err;
          if (current_wiring) {
            adj_u -= mse_next_term;
            err = ((t0 + t) == 0 ? 0.0f : 1.0f) * (e_t.uh - u_before);
          } else {
            err = e_t.uh - st_t.u;
            adj_u -= gm * err;
          }
          const float sg_term = (gs - adj_u * st_t.h) * sjp_sg(st_t.z, sg_a, sg_c, sg_d);
          acc_v -= sg_term;
          const float grad_h = sg_term + adj_u * (1.0f - st_t.s);
          if (current_wiring) {
            const float cw = (t0 + t) == 0 ? 0.0f : 1.0f;
            grad_uh += gm * cw * err + tau * cw * grad_h;
            mse_next_term = gm * cw * err;
          } else {
            grad_uh += gm * err + tau * grad_h_next;
            grad_h_next = grad_h;
          }
          if (t == 0) {  // the incoming state's gradients (0 where the wiring has none)
            if (grad_u0) grad_u0[m] = current_wiring ? -mse_next_term : 0.0f;
            if (grad_u_hat0) grad_u_hat0[m] = current_wiring ? 0.0f : tau * grad_h;
          }
          sjp_store(grad_x, gi, grad_h + grad_uh * e_t.dudx);
          gi -= M;
          // shift the window one step back in time
          x_t = x_p;
          e_t = e_p;
          st_t = st_p;
          x_p = x_pp;
          e_p = e_pp;
          e_pp = est_of(x_pp, xr[c]);
        }
      }
    }
  }
  const float r = sjp_block_sum(acc_v, scratch);
  if (threadIdx.x == 0) work[blockIdx.x] = r;
  sjp_finish_sums(work, counters, 1, grad_v, 1, nullptr, 1.0f);
}
