// Sliding PSN, banded:  H[t] = sum_{i<k} w_i X[t-k+1+i] + b  (zero history),
// S = Θ(H); X/S/grads [T, M] time-major, any T, 1 <= k <= SJP_SLIDING_MAX_K.
//
// Launch layout: 1-D grid of SJP_SLIDING_BLOCK (128) threads, grid-stride over neuron
// columns; each thread walks its column over time.
//
// Forward (sjp_sliding_forward): w, b in shared memory; each H[t] reads the k-window
// of its column (DRAM reads each X element once, the window's re-reads hit cache);
// writes S once. Bytes: read T*M*sizeof(X), write T*M*sizeof(S); nothing saved.
//
// Backward (sjp_sliding_backward): recomputes H[t] (never stored), keeps the last k
// values of GH = grad_S * surrogate'(H) in a per-thread ring, and finalises
// grad_X[j] = sum_i w_i GH[j+k-1-i] as soon as its window is complete. grad_w_i =
// sum GH[t] X[t-k+1+i] and grad_b = sum GH are accumulated per thread, reduced in the
// block (shared-memory tree) and added with one atomicAdd per block.
// Bytes: read 2*T*M (X, grad_S), write T*M (grad_X).
#include "common.cuh"

#define SJP_SLIDING_BLOCK 128
#define SJP_SLIDING_MAX_K 64

extern "C" __global__ void sjp_sliding_forward(const sjp_scalar* __restrict__ x,
                                               const float* __restrict__ w,
                                               const float* __restrict__ b,
                                               sjp_scalar* __restrict__ s,
                                               const sjp_index M, const int T,
                                               const int k) {
  __shared__ float w_s[SJP_SLIDING_MAX_K];
  for (int i = threadIdx.x; i < k; i += blockDim.x) w_s[i] = w[i];
  __syncthreads();
  const float bias = b[0];
  const sjp_index stride = (sjp_index)gridDim.x * blockDim.x;
  for (sjp_index m = (sjp_index)blockIdx.x * blockDim.x + threadIdx.x; m < M;
       m += stride) {
    for (int t = 0; t < T; ++t) {
      float h = bias;
      const int i0 = t - k + 1 < 0 ? k - 1 - t : 0;
      for (int i = i0; i < k; ++i) h += w_s[i] * sjp_load(x, (sjp_index)(t - k + 1 + i) * M + m);
      sjp_store(s, (sjp_index)t * M + m, sjp_heaviside(h));
    }
  }
}

extern "C" __global__ void sjp_sliding_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ w, const float* __restrict__ b,
    sjp_scalar* __restrict__ grad_x, float* __restrict__ grad_w,
    float* __restrict__ grad_b, const sjp_index M, const int T, const int k,
    const int sg_kind, const float sg_a, const float sg_c, const float sg_d) {
  __shared__ float w_s[SJP_SLIDING_MAX_K];
  __shared__ float red[SJP_SLIDING_BLOCK];
  for (int i = threadIdx.x; i < k; i += blockDim.x) w_s[i] = w[i];
  __syncthreads();
  const float bias = b[0];
  float acc_w[SJP_SLIDING_MAX_K];
  for (int i = 0; i < k; ++i) acc_w[i] = 0.0f;
  float acc_b = 0.0f;
  float ring[SJP_SLIDING_MAX_K];
  const sjp_index stride = (sjp_index)gridDim.x * blockDim.x;
  for (sjp_index m = (sjp_index)blockIdx.x * blockDim.x + threadIdx.x; m < M;
       m += stride) {
    for (int tt = 0; tt < T + k - 1; ++tt) {
      float gh = 0.0f;
      if (tt < T) {
        const int i0 = tt - k + 1 < 0 ? k - 1 - tt : 0;
        float h = bias;
        for (int i = i0; i < k; ++i)
          h += w_s[i] * sjp_load(x, (sjp_index)(tt - k + 1 + i) * M + m);
        gh = sjp_load(grad_s, (sjp_index)tt * M + m) *
             sjp_surrogate_grad(sg_kind, h, sg_a, sg_c, sg_d);
        acc_b += gh;
        for (int i = i0; i < k; ++i)
          acc_w[i] += gh * sjp_load(x, (sjp_index)(tt - k + 1 + i) * M + m);
      }
      ring[tt % k] = gh;
      const int j = tt - k + 1;  // every GH this input feeds is now known
      if (j >= 0) {
        float gx = 0.0f;
        for (int i = 0; i < k; ++i) gx += w_s[i] * ring[(j + k - 1 - i) % k];
        sjp_store(grad_x, (sjp_index)j * M + m, gx);
      }
    }
  }
  for (int i = 0; i < k; ++i) {
    const float r = sjp_block_sum(acc_w[i], red);
    if (threadIdx.x == 0) atomicAdd(grad_w + i, r);
  }
  const float rb = sjp_block_sum(acc_b, red);
  if (threadIdx.x == 0) atomicAdd(grad_b, rb);
}
