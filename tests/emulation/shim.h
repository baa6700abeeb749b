// CPU emulation of the CUDA built-ins the sj_parallel kernels use, so the very same
// .cu sources compile with g++ (-fopenmp -include shim.h) and run on the CPU.
//
// * One block runs at a time; its threads are an OpenMP team of blockDim.x threads.
// * __shared__ is function-static storage: shared by the team, i.e. the block.
// * __syncthreads() is an OpenMP barrier; atomicAdd is an OpenMP atomic capture.
// * __half is _Float16 (round to nearest even, as CUDA); __nv_bfloat16 keeps the
//   upper 16 bits of a float, rounded to nearest even.
#pragma once
#define SJP_EMULATION 1

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

struct sjp_dim3 {
  unsigned int x, y, z;
};
static thread_local sjp_dim3 threadIdx;
static sjp_dim3 blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __syncthreads() _Pragma("omp barrier")

static inline float atomicAdd(float* address, float value) {
  float old;
#pragma omp atomic capture
  {
    old = *address;
    *address += value;
  }
  return old;
}

struct __half {
  _Float16 v;
};
static inline float __half2float(__half h) { return (float)h.v; }
static inline __half __float2half_rn(float f) {
  __half h;
  h.v = (_Float16)f;
  return h;
}

struct __nv_bfloat16 {
  uint16_t bits;
};
static inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = (uint32_t)b.bits << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  __nv_bfloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a quiet NaN
    r.bits = 0x7fc0;
    return r;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  r.bits = (uint16_t)(u >> 16);
  return r;
}
