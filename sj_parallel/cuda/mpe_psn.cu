// MPE-PSN (see sj_parallel/reference.py for the math), X/S/grads [T, M] time-major.
//
//   û_t = (1 - b_t) I_t, b_t = [hash(seed, (t0+t)*M + m) < sigmoid(I_t)]  (stochastic)
//   û_t = (1 - sigmoid(I_t)) I_t                                          (expectation)
//   previous wiring: h_t = I_t + tau * û_{t-1}   (û_{-1} = u_hat0 or 0)
//   current wiring:  h_t = I_t + tau * c_t û_t,  c_t = [t0 + t > 0]
//   o_t = Θ(h_t - v), u_t = (1 - o_t) h_t
//   mse_t = mean_m e_t^2, e_t = û_t - u_t (previous) or c_t (û_t - u_{t-1}) (current)
//
// Launch layout: 1-D grid of SJP_MPE_BLOCK (128) threads, grid-stride over neuron
// columns; each thread walks its column over time (forward) or backwards (backward).
//
// Forward (sjp_mpe_forward): reads I once, writes S once, and [M] last-step states
// (û_{T-1}, u_{T-1}) for the next call. With need_mse, e_t^2 is summed per step in
// shared memory (T <= SJP_MPE_MAX_T_MSE) and flushed with one atomicAdd per step per
// block into mse_sum[T] (the caller divides by M). Nothing is saved for backward:
// the Bernoulli samples are regenerated from the hash.
// Bytes: read T*M*sizeof(I) (+ 2*M states in), write T*M*sizeof(S) + 2*M.
//
// Backward (sjp_mpe_backward): walks t from T-1 to 0 recomputing û, h, o, u of steps
// t and t-1 from I (two reads of each I, the second from cache), carrying grad_h of
// step t+1; writes grad_I once. grad_v = -sum g_S * surrogate'(h - v) is reduced in
// the block and added with one atomicAdd per block.
// Bytes: read 2*T*M (I, grad_S), write T*M (grad_I) (+ [M] state grads).
#include "common.cuh"

#define SJP_MPE_BLOCK 128
#define SJP_MPE_MAX_T_MSE 1024

struct SjpEst {
  float uh;    // the estimate û
  float dudx;  // dû/dI
};

__device__ __forceinline__ SjpEst sjp_mpe_estimate(float xi, int stochastic,
                                                   unsigned int seed_lo,
                                                   unsigned int seed_hi,
                                                   unsigned long long index) {
  SjpEst r;
  const float p = sjp_sigmoid(xi);
  if (stochastic) {
    const float b = sjp_hash_uniform(seed_lo, seed_hi, index) < p ? 1.0f : 0.0f;
    r.uh = (1.0f - b) * xi;
    r.dudx = 1.0f - b;
  } else {
    r.uh = (1.0f - p) * xi;
    r.dudx = (1.0f - p) - p * (1.0f - p) * xi;
  }
  return r;
}

extern "C" __global__ void sjp_mpe_forward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ u_hat0,
    const sjp_scalar* __restrict__ u0, sjp_scalar* __restrict__ s,
    sjp_scalar* __restrict__ u_hat_last, sjp_scalar* __restrict__ u_last,
    float* __restrict__ mse_sum, const float* __restrict__ v_th, const sjp_index M,
    const int T, const float tau, const int current_wiring, const int stochastic,
    const unsigned int seed_lo, const unsigned int seed_hi, const long long t0,
    const int need_mse) {
  __shared__ float mse_s[SJP_MPE_MAX_T_MSE];
  if (need_mse) {
    for (int t = threadIdx.x; t < T; t += blockDim.x) mse_s[t] = 0.0f;
  }
  __syncthreads();
  const float v = v_th[0];
  const sjp_index stride = (sjp_index)gridDim.x * blockDim.x;
  for (sjp_index m = (sjp_index)blockIdx.x * blockDim.x + threadIdx.x; m < M;
       m += stride) {
    float uh_prev = u_hat0 ? sjp_load(u_hat0, m) : 0.0f;
    float u_prev = u0 ? sjp_load(u0, m) : 0.0f;
    for (int t = 0; t < T; ++t) {
      const float xi = sjp_load(x, (sjp_index)t * M + m);
      const unsigned long long index = (unsigned long long)(t0 + t) * M + m;
      const SjpEst e = sjp_mpe_estimate(xi, stochastic, seed_lo, seed_hi, index);
      const bool first = (t0 + t) == 0;
      float h;
      if (current_wiring) {
        h = first ? xi : xi + tau * e.uh;
      } else {
        h = xi + tau * uh_prev;
      }
      const float o = sjp_heaviside(h - v);
      sjp_store(s, (sjp_index)t * M + m, o);
      const float u = (1.0f - o) * h;
      if (need_mse) {
        float err;
        if (current_wiring) {
          err = first ? 0.0f : e.uh - u_prev;
        } else {
          err = e.uh - u;
        }
        atomicAdd(mse_s + t, err * err);
      }
      uh_prev = e.uh;
      u_prev = u;
    }
    if (u_hat_last) sjp_store(u_hat_last, m, uh_prev);
    if (u_last) sjp_store(u_last, m, u_prev);
  }
  __syncthreads();
  if (need_mse) {
    for (int t = threadIdx.x; t < T; t += blockDim.x) atomicAdd(mse_sum + t, mse_s[t]);
  }
}

// Step values recomputed in backward.
struct SjpStep {
  SjpEst est;
  float h, z, s, u;
};

extern "C" __global__ void sjp_mpe_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ u_hat0,
    const sjp_scalar* __restrict__ u0, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ grad_mse, const sjp_scalar* __restrict__ grad_uhl,
    const sjp_scalar* __restrict__ grad_ul, sjp_scalar* __restrict__ grad_x,
    float* __restrict__ grad_u_hat0, float* __restrict__ grad_u0,
    float* __restrict__ grad_v, const float* __restrict__ v_th, const sjp_index M,
    const int T, const float tau, const int current_wiring, const int stochastic,
    const unsigned int seed_lo, const unsigned int seed_hi, const long long t0,
    const int sg_kind, const float sg_a, const float sg_c, const float sg_d) {
  __shared__ float red[SJP_MPE_BLOCK];
  const float v = v_th[0];
  const float two_over_m = 2.0f / (float)M;
  float acc_v = 0.0f;
  const sjp_index stride = (sjp_index)gridDim.x * blockDim.x;
  for (sjp_index m = (sjp_index)blockIdx.x * blockDim.x + threadIdx.x; m < M;
       m += stride) {
    const float uh_init = u_hat0 ? sjp_load(u_hat0, m) : 0.0f;
    const float u_init = u0 ? sjp_load(u0, m) : 0.0f;
    // estimate of step t (t >= 0) or the carried state (t == -1)
#define SJP_EST(tq)                                                                 \
  ((tq) >= 0 ? sjp_mpe_estimate(sjp_load(x, (sjp_index)(tq) * M + m), stochastic,  \
                                seed_lo, seed_hi,                                   \
                                (unsigned long long)(t0 + (tq)) * M + m)            \
             : SjpEst{uh_init, 0.0f})
    // full step values of step tq >= 0 given the estimate of step tq - 1
    auto step_of = [&](int tq, const SjpEst& est_prev) {
      SjpStep r;
      const float xi = sjp_load(x, (sjp_index)tq * M + m);
      r.est = SJP_EST(tq);
      if (current_wiring) {
        r.h = (t0 + tq) == 0 ? xi : xi + tau * r.est.uh;
      } else {
        r.h = xi + tau * est_prev.uh;
      }
      r.z = r.h - v;
      r.s = sjp_heaviside(r.z);
      r.u = (1.0f - r.s) * r.h;
      return r;
    };
    float grad_h_next = 0.0f;   // grad of h_{t+1} (previous wiring)
    float mse_next_term = 0.0f; // gm_{t+1} * e_{t+1} (current wiring)
    SjpEst est_prev = SJP_EST(T - 2);
    SjpStep cur = step_of(T - 1, est_prev);
    for (int t = T - 1; t >= 0; --t) {
      // values of step t - 1 (needed for h_t in the previous wiring, for u_{t-1} in
      // the current wiring), carried into the next iteration as `cur`
      SjpStep prev;
      float u_before;
      if (t >= 1) {
        prev = step_of(t - 1, SJP_EST(t - 2));
        u_before = prev.u;
      } else {
        u_before = u_init;
      }
      const float gs = sjp_load(grad_s, (sjp_index)t * M + m);
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
        err = ((t0 + t) == 0 ? 0.0f : 1.0f) * (cur.est.uh - u_before);
      } else {
        err = cur.est.uh - cur.u;
        adj_u -= gm * err;
      }
      const float sg_term = (gs - adj_u * cur.h) *
                            sjp_surrogate_grad(sg_kind, cur.z, sg_a, sg_c, sg_d);
      acc_v -= sg_term;
      const float grad_h = sg_term + adj_u * (1.0f - cur.s);
      if (current_wiring) {
        const float c = (t0 + t) == 0 ? 0.0f : 1.0f;
        grad_uh += gm * c * err + tau * c * grad_h;
        mse_next_term = gm * c * err;
        if (t == 0 && grad_u0) grad_u0[m] = -mse_next_term;
      } else {
        grad_uh += gm * err + tau * grad_h_next;
        grad_h_next = grad_h;
        if (t == 0 && grad_u_hat0) grad_u_hat0[m] = tau * grad_h;
      }
      sjp_store(grad_x, (sjp_index)t * M + m, grad_h + grad_uh * cur.est.dudx);
      if (t >= 1) cur = prev;
    }
#undef SJP_EST
  }
  const float r = sjp_block_sum(acc_v, red);
  if (threadIdx.x == 0) atomicAdd(grad_v, r);
}
