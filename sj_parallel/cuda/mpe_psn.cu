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
// With SJP_MPE_KEEP (training, stochastic) the forward also writes its Bernoulli
// samples for the backward, 1 bit per element: [ceil(T / 32), M] 32-bit words, step t
// in bit t & 31 of word t >> 5 (bits past step T - 1 zero).
// Bytes: read T*M*sizeof(I) (+ 2*M states in), write T*M*sizeof(S) + 2*M (+ T*M/8).
//
// Backward (sjp_mpe_backward): walks t from T-1 to 0 carrying the step values of t
// (I, û, dû/dI, and h, z, o in the current wiring) and the gradients reaching u_t and
// û_t; the estimate of step t - 1 comes from its input and its kept sample (no hash;
// the expectation build computes the sigmoid), so nothing is computed twice. Time
// runs in chunks of SJP_MPE_BCHUNK steps whose loads are issued together; offsets
// inside a column are 32-bit (SJP_MPE_WIDE: 64-bit) from an opaque column pointer.
// The loss weights grad_mse[t] 2 / M are staged in shared memory once per block.
// grad_v = -sum sg'(z) (g_S - adj_u h) is reduced per block in a fixed order, then
// over the blocks in the same launch (sjp_finish_sums). grad_S may be null (zero);
// the [M] state gradients are written for every column (0 where the wiring has none).
// Bytes: read 2*T*M (I, grad_S) + T*M/8 (samples), write T*M (grad_I) (+ [M] state
// grads).
#include "common.cuh"

#define SJP_MPE_BLOCK 128
#define SJP_MPE_CHUNK 8  // forward: steps per warp reduction of e_t^2 (divides 32)
// compile-time switches (each build has branch-free loops)
#ifndef SJP_MPE_KEEP
#define SJP_MPE_KEEP 0  // forward: 1: write the samples for the backward (training)
#endif
#ifndef SJP_MPE_CURRENT
#define SJP_MPE_CURRENT 0  // 1: the current wiring, 0: the previous (paper) wiring
#endif
#ifndef SJP_MPE_STOCHASTIC
#define SJP_MPE_STOCHASTIC 1  // 1: sampled estimate, 0: the expectation
#endif
#ifndef SJP_MPE_MSE
#define SJP_MPE_MSE 1  // forward: 1 sums e_t^2 for the membrane loss
#endif

struct SjpEst {
  float uh;    // the estimate û
  float dudx;  // dû/dI
  float nb;    // 1 - the sample b (forward, stochastic; 1 otherwise)
};

// The estimate of step value xi with global index lo (low word) under key.
__device__ __forceinline__ SjpEst sjp_mpe_estimate(float xi, unsigned int key,
                                                   unsigned int lo) {
  SjpEst r;
  const float p = sjp_sigmoid(xi);
  if (SJP_MPE_STOCHASTIC) {
    r.nb = sjp_hash_uniform_key(key, lo) < p ? 0.0f : 1.0f;
    r.uh = r.nb * xi;
    r.dudx = r.nb;
  } else {
    r.nb = 1.0f;
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
                    unsigned int* __restrict__ samples, float* __restrict__ mse, float* __restrict__ work,
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
    // the samples (training build): step t is bit t & 31 of word t >> 5 of the
    // column; a word is written when its 32 steps are done, the last one at the end
    // (bits past step T - 1 zero)
    constexpr bool keep_samples = SJP_MPE_STOCHASTIC && SJP_MPE_KEEP;
    unsigned int* wp = samples + mc;  // word g of this column: wp + g M
    unsigned int word = 0u;
    auto flush = [&](int g) {
      if (keep_samples && valid) sjp_store_mask_word(wp, (sjp_index)g * M, word);
      word = 0u;
    };
    // one step under the hash key of its counter's high word and its low word lo:
    // spike, state update, 1 - its sample (nb), e_t^2 (0 for lanes past M)
    auto step = [&](int t, unsigned int key, unsigned int lo, float& nb) {
      const float xi = sjp_load(xp, 0);
      const SjpEst e = sjp_mpe_estimate(xi, key, lo);
      nb = e.nb;
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
      float nb;
      const float e2 = step(t, kc.get(index), (unsigned int)index, nb);
      if (keep_samples) {
        word |= (nb == 0.0f ? 1u : 0u) << (t & 31);
        if ((t & 31) == 31) flush(t >> 5);
      }
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
      // the chunk's (1 - samples) summed as (1 - b_j) 2^j: one multiply-add per
      // step, exact; its complement in the chunk's bits is the samples
      float nbits = 0.0f;
#pragma unroll
      for (int j = 0; j < SJP_MPE_CHUNK; ++j) {
        float nb;
        e2[j] = step(tc + j, lo < lo0 ? key_b : key_a, lo, nb);  // wrapped: hi0 + 1
        nbits = fmaf(nb, (float)(1u << j), nbits);
        lo += (unsigned int)M;
      }
      if (keep_samples) {
        word |= (~(unsigned int)nbits & 0xffu) << (tc & 31);
        if (((tc + SJP_MPE_CHUNK) & 31) == 0) flush(tc >> 5);
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
    if (keep_samples && (T & 31) != 0) flush(T >> 5);  // the last, partial word
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

// ------------------------------------------------------------------ backward
// Steps per chunk of the backward's time loop, whose loads are issued together (a
// divisor of 32, so a chunk never straddles two sample words); half types move half
// the bytes per load, so they take twice the steps to keep as many bytes in flight.
#ifndef SJP_MPE_BCHUNK
#if SJP_DTYPE == 0
#define SJP_MPE_BCHUNK 4
#else
#define SJP_MPE_BCHUNK 8
#endif
#endif
#ifndef SJP_MPE_WIDE
// 0: offsets inside a column (t M, t < T) fit 32 bits ((T - 1) M < 2^32, the launcher
// checks): one multiply-add per address; 1: 64-bit offsets
#define SJP_MPE_WIDE 0
#endif
#if SJP_MPE_WIDE
typedef sjp_index sjp_moff;
#else
typedef unsigned int sjp_moff;
#endif

// The estimate of a step from its input xi and whether its sample was drawn (then
// û = 0; the expectation build has no samples and `taken` is false there).
__device__ __forceinline__ SjpEst sjp_mpe_estimate_of(float xi, bool taken) {
  SjpEst r;
  r.nb = 1.0f;  // unused
  if (SJP_MPE_STOCHASTIC) {
    r.uh = taken ? 0.0f : xi;
    r.dudx = taken ? 0.0f : 1.0f;
  } else {
    const float p = sjp_sigmoid(xi);
    r.uh = taken ? 0.0f : (1.0f - p) * xi;
    r.dudx = taken ? 0.0f : (1.0f - p) - p * (1.0f - p) * xi;
  }
  return r;
}

extern "C" __global__ void __launch_bounds__(SJP_MPE_BLOCK, 8) sjp_mpe_backward(
    const sjp_scalar* __restrict__ x, const unsigned int* __restrict__ samples,
    const sjp_scalar* __restrict__ u_hat0, const sjp_scalar* __restrict__ u0,
    const sjp_scalar* __restrict__ grad_s, const float* __restrict__ grad_mse,
    const sjp_scalar* __restrict__ grad_uhl, const sjp_scalar* __restrict__ grad_ul,
    sjp_scalar* __restrict__ grad_x, float* __restrict__ grad_u_hat0,
    float* __restrict__ grad_u0, float* __restrict__ grad_v, float* __restrict__ work,
    unsigned int* __restrict__ counters, const float* __restrict__ v_th, const sjp_index M,
    const int T, const float tau, const long long t0, const float sg_a, const float sg_c,
    const float sg_d) {
  constexpr bool current_wiring = SJP_MPE_CURRENT, has_mse = SJP_MPE_MSE;
  constexpr int CH = SJP_MPE_BCHUNK;
  SJP_DYN_SMEM(smem);  // [4] the block sum's scratch | [T] gm_t = grad_mse[t] 2 / M
  const sjp_smem_t gm_s = smem + 4;
  if (has_mse)
    for (int i = threadIdx.x; i < T; i += blockDim.x)
      gm_s[i] = grad_mse[i] * (2.0f / (float)M);
  __syncthreads();
  const float v = v_th[0];
  const bool has_gs = grad_s != nullptr;  // null: the spikes' gradient is 0
  const unsigned int gs_mask = sjp_float_mask(has_gs);
  // the current wiring at global step 0 (t0 = 0): h_0 = I_0 and e_0 = 0, so û_0
  // reaches neither (only û_last, when T = 1)
  const bool first0 = current_wiring && t0 == 0;
  const sjp_moff Mo = (sjp_moff)M;
  const int n_chunks = T > 0 ? T / CH : 0;  // whole chunks: steps 0 .. CH n_chunks - 1
  float acc_v = 0.0f;
  const sjp_index n_tiles = (M + blockDim.x - 1) / blockDim.x;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles && T > 0; tile += gridDim.x) {
    const sjp_index m = tile * blockDim.x + threadIdx.x;
    if (m >= M) continue;
    // step t of this column is at offset t M from these
    const sjp_scalar* xm = sjp_opaque_ptr(x + m);
    // without grad_S, x is read in its place (its element of the step before was
    // just read: a cache hit) and masked to 0
    const sjp_scalar* gsm = sjp_opaque_ptr(has_gs ? grad_s + m : x + m);
    sjp_scalar* gxm = sjp_opaque_ptr(grad_x + m);
    // the sample word of group g (bit i: step 32 g + i)
    const unsigned int* wm = SJP_MPE_STOCHASTIC ? sjp_opaque_ptr(samples + m) : nullptr;
    auto word = [&](int g) -> unsigned int {
      return SJP_MPE_STOCHASTIC ? sjp_ldg_word(wm, (sjp_moff)g * Mo) : 0u;
    };
    const float uh_init = u_hat0 ? sjp_load(u_hat0, m) : 0.0f;
    const float u_init = u0 && t0 != 0 ? sjp_load(u0, m) : 0.0f;  // u_{-1}
    // carried into step t: I_t, û_t, dû_t/dI_t and, current wiring, h_t, z_t, o_t;
    // ca: the gradient reaching u_t from later steps (u_last's at T - 1), cu: the one
    // reaching û_t (û_last's at T - 1, then the previous wiring's tau grad_h_{t+1})
    float x_t = sjp_float_of(sjp_ldg_bits(xm, (sjp_moff)(T - 1) * Mo));
    const SjpEst e_top =
        sjp_mpe_estimate_of(x_t, (word((T - 1) >> 5) >> ((T - 1) & 31)) & 1u);
    float uh_t = e_top.uh, du_t = e_top.dudx;
    float h_t = T == 1 && first0 ? x_t : x_t + tau * uh_t, z_t = h_t - v;
    bool s_t = z_t >= 0.0f;
    float ca = grad_ul ? sjp_load(grad_ul, m) : 0.0f;  // current wiring: minus it
    float cu = grad_uhl ? sjp_load(grad_uhl, m) : 0.0f;
    if (current_wiring) ca = -ca;
    // Step t at offset off: xr and taken are the input bits and sample of step t - 1,
    // gr the grad_S bits and gm the loss weight of step t; bottom: t = 0 (step -1 is
    // the incoming state); at: t = 1. Writes grad_I_t and moves the carried values to
    // t - 1.
    auto step = [&](sjp_moff off, unsigned int xr, bool taken, unsigned int gr, float gm,
                    bool bottom, bool at1) {
      const float xp = sjp_float_of(xr);
      SjpEst ep = sjp_mpe_estimate_of(xp, taken);
      float hh, zz, err, hp = 0.0f, zp = 0.0f;
      bool ss, sp = false;
      // the current wiring's global step 0 is step t (t = 0) or t - 1 (t = 1)
      const bool at0 = current_wiring && first0 && bottom;
      if (current_wiring) {  // the step values of t - 1 give u_{t-1}
        hp = first0 && at1 ? xp : xp + tau * ep.uh;
        zp = hp - v;
        sp = zp >= 0.0f;
        const float up = bottom ? u_init : sp ? 0.0f : hp;
        hh = h_t;
        zz = z_t;
        ss = s_t;
        err = at0 ? 0.0f : uh_t - up;
      } else {  // h_t needs û_{t-1}
        if (bottom) ep.uh = uh_init;
        hh = x_t + tau * ep.uh;
        zz = hh - v;
        ss = zz >= 0.0f;
        err = uh_t - (ss ? 0.0f : hh);
      }
      // adj: gradient reaching u_t = (1 - o_t) h_t; the spike inside u is not
      // detached: du/dh = (1 - o) - h sg'(z), du/dv = h sg'(z)
      // (the current wiring carries -ca: no negations)
      const float ge = has_mse ? gm * err : 0.0f;
      const float gs = sjp_float_of_masked(gr, gs_mask);
      float sg_term, grad_h;
      if (current_wiring) {
        sg_term = (gs + ca * hh) * sjp_sg(zz, sg_a, sg_c, sg_d);
        grad_h = sg_term - (ss ? 0.0f : ca);
      } else {
        const float adj = ca - ge;
        sg_term = (gs - adj * hh) * sjp_sg(zz, sg_a, sg_c, sg_d);
        grad_h = sg_term + (ss ? 0.0f : adj);
      }
      acc_v -= sg_term;
      const float grad_uh = current_wiring ? (at0 ? cu : ge + cu + tau * grad_h) : ge + cu;
      sjp_stg(gxm, off, grad_h + grad_uh * du_t);
      if (current_wiring) {
        ca = ge;
        cu = 0.0f;
      } else {
        ca = 0.0f;
        cu = tau * grad_h;
      }
      x_t = xp;
      uh_t = ep.uh;
      du_t = ep.dudx;
      h_t = hp;
      z_t = zp;
      s_t = sp;
    };
    // the top T % CH steps one at a time
    int t = T - 1;
#pragma unroll 1
    for (; t >= n_chunks * CH; --t) {
      const sjp_moff off = (sjp_moff)t * Mo;
      const bool bottom = t == 0;
      const unsigned int xr = bottom ? 0u : sjp_ldg_bits(xm, off - Mo);
      const bool taken = !bottom && ((word((t - 1) >> 5) >> ((t - 1) & 31)) & 1u);
      const unsigned int gr = sjp_ldg_bits(gsm, off);
      step(off, xr, taken, gr, has_mse ? (float)gm_s[t] : 0.0f, bottom, t == 1);
    }
    // then whole chunks, each inside one sample word: its loads (grad_S of its steps,
    // I of the steps before them) are issued together before any is used and kept
    // packed until their step; wh, wl: the words of the chunk's group and the one
    // below (the sample of the step before the chunk's first)
    int g = n_chunks > 0 ? ((n_chunks - 1) * CH) >> 5 : 0;
    unsigned int wh = word(g), wl = g > 0 ? word(g - 1) : 0u;
#pragma unroll 1
    for (int q = n_chunks - 1; q >= 0; --q) {
      const int tb = q * CH;  // the chunk's first step
      const sjp_moff off0 = (sjp_moff)(tb + CH - 1) * Mo;  // and its last
      unsigned int xr[CH], gr[CH];
      sjp_moff off = off0;
#pragma unroll
      for (int c = 0; c < CH; ++c) {
        gr[c] = sjp_ldg_bits(gsm, off);
        off -= Mo;
        xr[c] = c < CH - 1 || q > 0 ? sjp_ldg_bits(xm, off) : 0u;
      }
      // bit i: the sample of step tb - 1 + i
      const unsigned int w =
          (unsigned int)((((unsigned long long)wh << 32) | wl) >> (31 + (tb & 31)));
#pragma unroll
      for (int c = 0; c < CH; ++c)
        step(off0 - (sjp_moff)c * Mo, xr[c], (w >> (CH - 1 - c)) & 1u, gr[c],
             has_mse ? (float)gm_s[tb + CH - 1 - c] : 0.0f, c == CH - 1 && q == 0,
             c == CH - 2 && q == 0);
      if ((tb & 31) == 0 && q > 0) {  // the next chunk is in the group below
        --g;
        wh = wl;
        wl = g > 0 ? word(g - 1) : 0u;
      }
    }
    // the incoming state's gradients (0 where the wiring has none)
    if (grad_u0) grad_u0[m] = current_wiring ? -ca : 0.0f;
    if (grad_u_hat0) grad_u_hat0[m] = current_wiring ? 0.0f : cu;
  }
  const float r = sjp_block_sum(acc_v, smem);
  if (threadIdx.x == 0) work[blockIdx.x] = r;
  sjp_finish_sums(work, counters, 1, grad_v, 1, nullptr, 1.0f);
}
