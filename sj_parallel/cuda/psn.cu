// Dense PSN (also masked PSN, and sliding PSN for T <= 64 through its Toeplitz
// matrix):  H = W X + b,  S = Θ(H),  X/S/grads [T, M] time-major, W [T, T], b [T].
//
// Launch layout: blocks of SJP_PSN_BLOCK (64) threads; a block walks tiles of 64
// neuron columns (grid-stride over tiles, so the grid can be capped); thread `tid`
// owns column m = tile * 64 + tid and loops over time.
//
// Forward (sjp_psn_forward): W and b staged in shared memory; each thread reads its
// column of X once (T values into registers) and writes its column of S once.
// Bytes moved: read T*M*sizeof(X), write T*M*sizeof(S). Nothing is saved.
//
// Backward (sjp_psn_backward): reads X and grad_S once, recomputes H = W X + b
// (never stored), writes grad_X once. grad_W = GH X^T and grad_b = sum_m GH are
// reduced inside the block: the tile's X and GH columns are staged in shared memory,
// each thread accumulates ceil(T*T / 64) entries of grad_W in registers across all
// tiles the block visits, then one atomicAdd per entry per block.
// Bytes moved: read 2*T*M (X, grad_S), write T*M (grad_X), plus T*T*gridDim atomics.
#include "common.cuh"

#define SJP_PSN_BLOCK 64
#define SJP_PSN_MAX_T 64

#ifdef SJP_FIXED_T
#define SJP_T SJP_FIXED_T  // compile-time T: loops unroll, columns stay in registers
#else
#define SJP_T T
#endif

extern "C" __global__ void sjp_psn_forward(const sjp_scalar* __restrict__ x,
                                           const float* __restrict__ W,
                                           const float* __restrict__ b,
                                           sjp_scalar* __restrict__ s,
                                           const sjp_index M, const int T) {
  __shared__ float W_s[SJP_PSN_MAX_T * SJP_PSN_MAX_T];
  __shared__ float b_s[SJP_PSN_MAX_T];
  for (int i = threadIdx.x; i < SJP_T * SJP_T; i += blockDim.x) W_s[i] = W[i];
  for (int i = threadIdx.x; i < SJP_T; i += blockDim.x) b_s[i] = b[i];
  __syncthreads();
  const sjp_index stride = (sjp_index)gridDim.x * blockDim.x;
  for (sjp_index m = (sjp_index)blockIdx.x * blockDim.x + threadIdx.x; m < M;
       m += stride) {
    float xs[SJP_PSN_MAX_T];
#pragma unroll
    for (int j = 0; j < SJP_T; ++j) xs[j] = sjp_load(x, (sjp_index)j * M + m);
#pragma unroll 1
    for (int t = 0; t < SJP_T; ++t) {
      float h = b_s[t];
#pragma unroll
      for (int j = 0; j < SJP_T; ++j) h += W_s[t * SJP_T + j] * xs[j];
      sjp_store(s, (sjp_index)t * M + m, sjp_heaviside(h));
    }
  }
}

extern "C" __global__ void sjp_psn_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ W, const float* __restrict__ b,
    sjp_scalar* __restrict__ grad_x, float* __restrict__ grad_W,
    float* __restrict__ grad_b, const sjp_index M, const int T, const int sg_kind,
    const float sg_a, const float sg_c, const float sg_d) {
  __shared__ float X_s[SJP_PSN_MAX_T * SJP_PSN_BLOCK];
  __shared__ float G_s[SJP_PSN_MAX_T * SJP_PSN_BLOCK];
  const int tid = threadIdx.x;
  const int TT = SJP_T * SJP_T;
  float acc[SJP_PSN_MAX_T * SJP_PSN_MAX_T / SJP_PSN_BLOCK];
#pragma unroll
  for (int q = 0; q < SJP_PSN_MAX_T * SJP_PSN_MAX_T / SJP_PSN_BLOCK; ++q) acc[q] = 0.0f;
  float acc_b = 0.0f;
  const sjp_index n_tiles = (M + SJP_PSN_BLOCK - 1) / SJP_PSN_BLOCK;
  for (sjp_index tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index m = tile * SJP_PSN_BLOCK + tid;
    const bool valid = m < M;
    // this thread's column: stage X, recompute H, surrogate gradient
#pragma unroll
    for (int j = 0; j < SJP_T; ++j)
      X_s[j * SJP_PSN_BLOCK + tid] = valid ? sjp_load(x, (sjp_index)j * M + m) : 0.0f;
#pragma unroll 1
    for (int t = 0; t < SJP_T; ++t) {
      float h = b[t];
#pragma unroll
      for (int j = 0; j < SJP_T; ++j) h += W[t * SJP_T + j] * X_s[j * SJP_PSN_BLOCK + tid];
      const float g = valid ? sjp_load(grad_s, (sjp_index)t * M + m) : 0.0f;
      G_s[t * SJP_PSN_BLOCK + tid] = g * sjp_surrogate_grad(sg_kind, h, sg_a, sg_c, sg_d);
    }
    // grad_X = W^T GH for this column
    if (valid) {
#pragma unroll 1
      for (int j = 0; j < SJP_T; ++j) {
        float gx = 0.0f;
#pragma unroll
        for (int t = 0; t < SJP_T; ++t) gx += W[t * SJP_T + j] * G_s[t * SJP_PSN_BLOCK + tid];
        sjp_store(grad_x, (sjp_index)j * M + m, gx);
      }
    }
    __syncthreads();
    // grad_W entries owned by this thread, summed over the tile's columns
#pragma unroll
    for (int q = 0; q < SJP_PSN_MAX_T * SJP_PSN_MAX_T / SJP_PSN_BLOCK; ++q) {
      const int p = q * SJP_PSN_BLOCK + tid;
      if (p < TT) {
        const int t = p / SJP_T;
        const int j = p - t * SJP_T;
        float sum = 0.0f;
#pragma unroll 4
        for (int c = 0; c < SJP_PSN_BLOCK; ++c)
          sum += G_s[t * SJP_PSN_BLOCK + c] * X_s[j * SJP_PSN_BLOCK + c];
        acc[q] += sum;
      }
    }
    if (tid < SJP_T) {
      float sum = 0.0f;
      for (int c = 0; c < SJP_PSN_BLOCK; ++c) sum += G_s[tid * SJP_PSN_BLOCK + c];
      acc_b += sum;
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < SJP_PSN_MAX_T * SJP_PSN_MAX_T / SJP_PSN_BLOCK; ++q) {
    const int p = q * SJP_PSN_BLOCK + tid;
    if (p < TT) atomicAdd(grad_W + p, acc[q]);
  }
  if (tid < SJP_T) atomicAdd(grad_b + tid, acc_b);
}
