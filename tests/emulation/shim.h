// CPU emulation of the CUDA built-ins the sj_parallel kernels use, so the very same
// .cu sources compile with g++ (-fopenmp -include shim.h) and run on the CPU.
//
// * One block runs at a time; its threads are an OpenMP team of blockDim.x threads.
// * __shared__ is function-static storage: shared by the team, i.e. the block. The
//   dynamic shared memory (SJP_DYN_SMEM in common.cuh) is a buffer the launch
//   wrapper allocates with the requested size.
// * __syncthreads() is an OpenMP barrier. Warp shuffles, __syncwarp() and the tf32
//   mma synchronise the 32 threads of their warp (a pthread barrier per warp) and
//   exchange values through block-shared storage, so every lane of a warp must reach
//   them together (warp-uniform control flow), as the hardware requires.
// * __half is _Float16 (round to nearest even, as CUDA); __nv_bfloat16 keeps the
//   upper 16 bits of a float, rounded to nearest even.
// * With -DSJP_INSTRUMENT every global load/store (sjp_load/sjp_store) and every
//   shared access through sjp_smem_t is logged with its call site; at the end of each
//   block the accesses of each warp are grouped per site and occurrence (one warp
//   instruction) to count shared-memory wavefronts and bank conflicts, global L1
//   wavefronts and DRAM sectors (tests/emulation/harness.py reads the totals).
#pragma once
#define SJP_EMULATION 1

#include <math.h>
#include <omp.h>
#include <pthread.h>
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
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __shared__ static
#define __syncthreads() _Pragma("omp barrier")
#define __launch_bounds__(...)

struct float4 {
  float x, y, z, w;
};
struct uint2 {
  unsigned int x, y;
};
struct uint4 {
  unsigned int x, y, z, w;
};

// Warp-level barriers (one per warp of the block, initialised by the launch wrapper):
// shuffles and the mma synchronise only the 32 threads of their warp, so warps may
// skip them in warp-uniform branches, as on a GPU.
static pthread_barrier_t sjp_emu_warp_bar[32];
static inline void sjp_emu_warp_sync() {
  pthread_barrier_wait(&sjp_emu_warp_bar[threadIdx.x >> 5]);
}
#define __syncwarp(...) sjp_emu_warp_sync()

// ------------------------------------------------------------- dynamic smem
static unsigned char* sjp_emu_dyn_smem = nullptr;

// ----------------------------------------------------------------- atomics
// Blocks run one after another (in the order the launch wrapper picks, see
// sjp_emu_block_order), so an integer ticket counter sees the blocks finish in that
// order; __threadfence() orders this thread's memory operations (a full fence).
static long long sjp_emu_atomics = 0;       // float atomics (the kernels use none)
static long long sjp_emu_int_atomics = 0;   // integer atomics (tickets)
static inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  unsigned int old;
#pragma omp atomic capture
  {
    old = *address;
    *address += value;
  }
#pragma omp atomic
  sjp_emu_int_atomics += 1;
  return old;
}
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
static inline int min(int a, int b) { return a < b ? a : b; }
static inline float atomicAdd(float* address, float value) {
  float old;
#pragma omp atomic capture
  {
    old = *address;
    *address += value;
  }
#pragma omp atomic
  sjp_emu_atomics += 1;
  return old;
}

// ----------------------------------------------------------- half types
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

static inline unsigned short __half_as_ushort(__half h) {
  unsigned short u;
  memcpy(&u, &h.v, 2);
  return u;
}
static inline __half __ushort_as_half(unsigned short u) {
  __half h;
  memcpy(&h.v, &u, 2);
  return h;
}
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }

// the fast-math intrinsics, exact here
static inline float __fdividef(float a, float b) { return a / b; }
#define __expf(x) expf(x)

static inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  memcpy(&u, &f, 4);
  return u;
}
static inline float __uint_as_float(unsigned int u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// ----------------------------------------------------------- instrumentation
#ifdef SJP_INSTRUMENT
void sjp_emu_log(const void* addr, int bytes, int is_write, int space,
                 const void* site);
#define SJP_EMU_SITE __builtin_return_address(0)
// Called (not inlined) from the inlined access helpers, so the return address is
// the access site in the kernel.
__attribute__((noinline)) static void sjp_emu_access(const void* addr, int bytes,
                                                     int is_write, int space) {
  sjp_emu_log(addr, bytes, is_write, space, SJP_EMU_SITE);
}
#define SJP_EMU_GLOBAL(addr, bytes, w) sjp_emu_access((addr), (bytes), (w), 0)
#else
#define SJP_EMU_GLOBAL(addr, bytes, w) ((void)0)
#endif

// Shared memory seen through sjp_smem_t: plain float* unless instrumented.
#ifdef SJP_INSTRUMENT
struct sjp_sref {
  float* p;
  __attribute__((always_inline)) inline operator float() const {
    sjp_emu_access(p, 4, 0, 1);
    return *p;
  }
  __attribute__((always_inline)) inline sjp_sref& operator=(float v) {
    sjp_emu_access(p, 4, 1, 1);
    *p = v;
    return *this;
  }
  __attribute__((always_inline)) inline sjp_sref& operator=(const sjp_sref& o) {
    return *this = (float)o;
  }
  __attribute__((always_inline)) inline sjp_sref& operator+=(float v) {
    sjp_emu_access(p, 4, 0, 1);
    sjp_emu_access(p, 4, 1, 1);
    *p += v;
    return *this;
  }
};
struct sjp_smem_t {
  float* p;
  sjp_smem_t(float* q = nullptr) : p(q) {}
  __attribute__((always_inline)) inline sjp_sref operator[](long long i) const {
    return sjp_sref{p + i};
  }
  __attribute__((always_inline)) inline sjp_smem_t operator+(long long i) const {
    return sjp_smem_t(p + i);
  }
};
#define SJP_SMEM_RAW(s) ((s).p)
#define SJP_EMU_SHARED(addr, bytes, w) sjp_emu_access((addr), (bytes), (w), 1)
#else
typedef float* sjp_smem_t;
#define SJP_SMEM_RAW(s) (s)
#define SJP_EMU_SHARED(addr, bytes, w) ((void)0)
#endif

// ------------------------------------------------------------- warp exchange
// One 32-bit slot per thread of the block; every exchange is bracketed by barriers.
static uint32_t sjp_emu_xchg[1024];
static uint32_t sjp_emu_mma_a[1024][4], sjp_emu_mma_b[1024][2];
static float sjp_emu_mma_c[1024][4];
static long long sjp_emu_shuffles = 0;

template <typename T>
static inline T sjp_emu_shfl(T v, int src_lane) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  const int tid = threadIdx.x;
  uint32_t bits;
  memcpy(&bits, &v, 4);
  sjp_emu_xchg[tid] = bits;
  sjp_emu_warp_sync();
  uint32_t got = sjp_emu_xchg[(tid & ~31) + (src_lane & 31)];
  sjp_emu_warp_sync();
  if ((tid & 31) == 0) {
#pragma omp atomic
    sjp_emu_shuffles += 1;
  }
  T r;
  memcpy(&r, &got, 4);
  return r;
}
template <typename T>
static inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = threadIdx.x & 31;
  return sjp_emu_shfl(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
static inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = threadIdx.x & 31;
  return sjp_emu_shfl(v, lane ^ mask);
}
template <typename T>
static inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = threadIdx.x & 31;
  const int src = lane + (int)delta;
  return sjp_emu_shfl(v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
static inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = threadIdx.x & 31;
  const int src = lane - (int)delta;
  return sjp_emu_shfl(v, src >= (lane & ~(width - 1)) ? src : lane);
}

// ------------------------------------------------------------- tf32 and mma
// An fp32 register read as a tf32 mma operand: the low 13 mantissa bits are ignored.
static inline float sjp_emu_tf32_operand(uint32_t u) {
  return __uint_as_float(u & 0xffffe000u);
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 for the whole warp: each lane
// holds a[4] (A 16x8: rows g, g+8; cols t, t+4), b[2] (B 8x8: rows t, t+4; col g),
// c/d[4] (C 16x8: rows g, g+8; cols 2t, 2t+1), g = lane >> 2, t = lane & 3.
static long long sjp_emu_mma_count = 0;
static inline void sjp_emu_mma_tf32(float* d, const uint32_t* a, const uint32_t* b,
                                    const float* c) {
  const int tid = threadIdx.x;
  for (int i = 0; i < 4; ++i) sjp_emu_mma_a[tid][i] = a[i];
  for (int i = 0; i < 2; ++i) sjp_emu_mma_b[tid][i] = b[i];
  for (int i = 0; i < 4; ++i) sjp_emu_mma_c[tid][i] = c[i];
  sjp_emu_warp_sync();
  const int w0 = tid & ~31, lane = tid & 31, g = lane >> 2, t = lane & 3;
  float A[16][8], B[8][8];
  for (int l = 0; l < 32; ++l) {
    const int lg = l >> 2, lt = l & 3;
    // the tensor cores read the top 19 bits (tf32) of each 32-bit operand
    A[lg][lt] = sjp_emu_tf32_operand(sjp_emu_mma_a[w0 + l][0]);
    A[lg + 8][lt] = sjp_emu_tf32_operand(sjp_emu_mma_a[w0 + l][1]);
    A[lg][lt + 4] = sjp_emu_tf32_operand(sjp_emu_mma_a[w0 + l][2]);
    A[lg + 8][lt + 4] = sjp_emu_tf32_operand(sjp_emu_mma_a[w0 + l][3]);
    B[lt][lg] = sjp_emu_tf32_operand(sjp_emu_mma_b[w0 + l][0]);
    B[lt + 4][lg] = sjp_emu_tf32_operand(sjp_emu_mma_b[w0 + l][1]);
  }
  const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
  float out[4];
  for (int i = 0; i < 4; ++i) {
    double acc = sjp_emu_mma_c[tid][i];
    for (int k = 0; k < 8; ++k) acc += (double)A[rows[i]][k] * (double)B[k][cols[i]];
    out[i] = (float)acc;
  }
  sjp_emu_warp_sync();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
  if (lane == 0) {
#pragma omp atomic
    sjp_emu_mma_count += 1;
  }
}
