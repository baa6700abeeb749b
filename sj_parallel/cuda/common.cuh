// sj_parallel: helpers shared by every kernel.
//
// Compile-time switches (passed with -D by the launcher):
//   SJP_DTYPE   0 = float32, 1 = float16, 2 = bfloat16  (the type of X, S and grads)
//   SJP_EMULATION  defined by the CPU emulation harness (tests/emulation/shim.h),
//                  which supplies the CUDA built-ins and the half types.
// Everything is computed in float32: values are loaded with sjp_load (converting to
// float) and stored with sjp_store (converting back).
#pragma once

#ifndef SJP_EMULATION
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

#ifndef SJP_DTYPE
#define SJP_DTYPE 0
#endif

#if SJP_DTYPE == 0
typedef float sjp_scalar;
#elif SJP_DTYPE == 1
typedef __half sjp_scalar;
#elif SJP_DTYPE == 2
typedef __nv_bfloat16 sjp_scalar;
#else
#error "SJP_DTYPE must be 0 (float32), 1 (float16) or 2 (bfloat16)"
#endif

typedef long long sjp_index;  // 64-bit indexing: tensors may exceed 2^31 elements

__device__ __forceinline__ float sjp_to_float(float v) { return v; }
__device__ __forceinline__ float sjp_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float sjp_to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

__device__ __forceinline__ void sjp_from_float(float v, float* out) { *out = v; }
__device__ __forceinline__ void sjp_from_float(float v, __half* out) {
  *out = __float2half_rn(v);
}
__device__ __forceinline__ void sjp_from_float(float v, __nv_bfloat16* out) {
  *out = __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sjp_load(const sjp_scalar* p, sjp_index i) {
  return sjp_to_float(p[i]);
}
__device__ __forceinline__ void sjp_store(sjp_scalar* p, sjp_index i, float v) {
  sjp_from_float(v, p + i);
}

// ---------------------------------------------------------------- surrogates
// d Θ_surrogate(x) / dx for SpikingJelly's surrogate functions. `a` and `c` are read
// from the surrogate object by the launcher (sj_parallel/backends/_cuda.py).
#define SJP_SG_ATAN 0                  // a = alpha
#define SJP_SG_SIGMOID 1               // a = alpha
#define SJP_SG_PIECEWISE_QUADRATIC 2   // a = alpha
#define SJP_SG_SOFTSIGN 3              // a = alpha
#define SJP_SG_ERF 4                   // a = alpha
#define SJP_SG_PIECEWISE_LEAKY_RELU 5  // a = w, c = c, d = slope inside |x| < w

__device__ __forceinline__ float sjp_surrogate_grad(int kind, float x, float a,
                                                    float c, float d) {
  switch (kind) {
    case SJP_SG_ATAN: {
      // alpha / 2 / (1 + (pi / 2 * alpha * x)^2)
      const float ax = 1.57079632679489662f * a * x;
      return 0.5f * a / (1.0f + ax * ax);
    }
    case SJP_SG_SIGMOID: {
      const float s = 1.0f / (1.0f + expf(-a * x));
      return a * s * (1.0f - s);
    }
    case SJP_SG_PIECEWISE_QUADRATIC: {
      const float ax = fabsf(x);
      return ax > 1.0f / a ? 0.0f : a - a * a * ax;
    }
    case SJP_SG_SOFTSIGN: {
      const float t = 1.0f / a + fabsf(x);
      return 1.0f / (2.0f * a * t * t);
    }
    case SJP_SG_ERF:
      // alpha / sqrt(pi) * exp(-(alpha x)^2)
      return a * 0.56418958354775628f * expf(-(a * x) * (a * x));
    case SJP_SG_PIECEWISE_LEAKY_RELU:
      return fabsf(x) < a ? d : c;
    default:
      return 0.0f;
  }
}

// Θ(x) = [x >= 0]; NaN gives 0.
__device__ __forceinline__ float sjp_heaviside(float x) { return x >= 0.0f ? 1.0f : 0.0f; }

// -------------------------------------------------------------- counter hash
// The same stateless generator as sj_parallel/reference.py (lowbias32 mixer):
//   key = mix32(seed_lo ^ mix32(seed_hi + hi32(index)));  r = mix32(lo32(index) ^ key)
//   u = (r >> 8) * 2^-24 in [0, 1)
__device__ __forceinline__ unsigned int sjp_mix32(unsigned int x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__device__ __forceinline__ unsigned int sjp_hash_key(unsigned int seed_lo,
                                                     unsigned int seed_hi,
                                                     unsigned int hi) {
  return sjp_mix32(seed_lo ^ sjp_mix32(seed_hi + hi));
}

__device__ __forceinline__ float sjp_hash_uniform(unsigned int seed_lo,
                                                  unsigned int seed_hi,
                                                  unsigned long long index) {
  const unsigned int lo = (unsigned int)(index & 0xffffffffull);
  const unsigned int hi = (unsigned int)(index >> 32);
  const unsigned int r = sjp_mix32(lo ^ sjp_hash_key(seed_lo, seed_hi, hi));
  return (float)(r >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

__device__ __forceinline__ float sjp_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---------------------------------------------------------- block reduction
// Sum of `v` over the block (blockDim.x a power of two <= SJP_BLOCK). Every thread
// must call it; the result is valid in thread 0. `buf` is shared scratch of
// SJP_BLOCK floats; the function leaves it reusable (ends with a barrier).
__device__ __forceinline__ float sjp_block_sum(float v, float* buf) {
  const int tid = threadIdx.x;
  buf[tid] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) buf[tid] += buf[tid + s];
    __syncthreads();
  }
  const float r = buf[0];
  __syncthreads();
  return r;
}
