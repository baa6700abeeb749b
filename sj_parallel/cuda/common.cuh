// sj_parallel: helpers shared by every kernel.
//
// Compile-time switches (passed with -D by the launcher, sj_parallel/backends/_cuda.py):
//   SJP_DTYPE      0 = float32, 1 = float16, 2 = bfloat16  (the type of X, S and grads)
//   SJP_T / SJP_K  compile-time sequence length (PSN) / window (sliding PSN)
//   SJP_SG         the surrogate function of the backward kernels (SJP_SG_* below)
//   SJP_MPE_*      MPE-PSN's wiring, sampling and loss switches (mpe_psn.cu)
//   SJP_EMULATION  defined by the CPU emulation harness (tests/emulation/shim.h),
//                  which supplies the CUDA built-ins, the half types, warp shuffles,
//                  the tf32 mma and (with SJP_INSTRUMENT) access accounting.
// Everything is computed in float32: values are loaded with sjp_load (converting to
// float) and stored with sjp_store (converting back).
//
// Determinism: no kernel adds floats with atomics. Reductions over neurons (weight
// gradients, the MPE-PSN loss) are summed inside a block in a fixed order and written
// as one partial per block; the same launch then adds the partials in a fixed order
// (sjp_finish_sums: the last block of each group of SJP_GROUP blocks to finish, found
// with an integer ticket, adds its group's partials in block order; the last of those
// adds the group sums in group order). The grid depends only on the device, so the
// same inputs on the same device give the same bits.
#pragma once

#ifndef SJP_EMULATION
#include <cuda_fp16.h>
#include <cuda_bf16.h>
typedef float* sjp_smem_t;
#define SJP_SMEM_RAW(s) (s)
#define SJP_EMU_GLOBAL(addr, bytes, w) ((void)0)
#define SJP_EMU_SHARED(addr, bytes, w) ((void)0)
// The block's dynamic shared memory, as floats (sized by the launcher).
#define SJP_DYN_SMEM(name)                                   \
  extern __shared__ __align__(16) float sjp_dyn_smem_[];     \
  sjp_smem_t name = sjp_dyn_smem_
#else
#define SJP_DYN_SMEM(name) sjp_smem_t name = (float*)sjp_emu_dyn_smem
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

// Global loads and stores of the big [T, M] tensors (instrumented in emulation).
__device__ __forceinline__ float sjp_load(const sjp_scalar* p, sjp_index i) {
  SJP_EMU_GLOBAL(p + i, (int)sizeof(sjp_scalar), 0);
  return sjp_to_float(p[i]);
}
__device__ __forceinline__ void sjp_store(sjp_scalar* p, sjp_index i, float v) {
  SJP_EMU_GLOBAL(p + i, (int)sizeof(sjp_scalar), 1);
  sjp_from_float(v, p + i);
}

// ---------------------------------------------------------------- surrogates
// d Θ_surrogate(x) / dx for SpikingJelly's surrogate functions. `a`, `c` and `d` are
// read from the surrogate object by the launcher (sj_parallel/backends/_cuda.py).
// Divisions and exponentials use the fast hardware forms (sjp_rcp, sjp_exp,
// __fdividef: a few ulp), which the gradient tolerances of the tests cover.
#define SJP_SG_ATAN 0                  // a = alpha
#define SJP_SG_SIGMOID 1               // a = alpha
#define SJP_SG_PIECEWISE_QUADRATIC 2   // a = alpha
#define SJP_SG_SOFTSIGN 3              // a = alpha
#define SJP_SG_ERF 4                   // a = alpha
#define SJP_SG_PIECEWISE_LEAKY_RELU 5  // a = w, c = c, d = slope inside |x| < w

// 1 / x (x >= 1 or +inf here) with the hardware's approximate reciprocal (1 ulp).
__device__ __forceinline__ float sjp_rcp(float x) {
#ifdef SJP_EMULATION
  return 1.0f / x;
#else
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#endif
}

// e^x with the hardware's ex2.approx.ftz (2 ulp; results below 2^-126 flush to 0).
__device__ __forceinline__ float sjp_exp(float x) {
#ifdef SJP_EMULATION
  return expf(x);
#else
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.4426950408889634f * x));
  return r;
#endif
}

// max(x, 0), a NaN staying NaN (sm_80+: one max.NaN)
__device__ __forceinline__ float sjp_max0(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, 0f00000000;" : "=f"(r) : "f"(x));
  return r;
#else
  return x != x ? x : fmaxf(x, 0.0f);
#endif
}

__device__ __forceinline__ float sjp_surrogate_grad(int kind, float x, float a,
                                                    float c, float d) {
  switch (kind) {
    case SJP_SG_ATAN: {
      // alpha / 2 / (1 + (pi / 2 * alpha * x)^2)
      const float ax = 1.57079632679489662f * a * x;
      return 0.5f * a * sjp_rcp(1.0f + ax * ax);
    }
    case SJP_SG_SIGMOID: {
      const float s = sjp_rcp(1.0f + sjp_exp(-a * x));
      return a * s * (1.0f - s);
    }
    case SJP_SG_PIECEWISE_QUADRATIC:
      // 0 for |x| > 1 / a, i.e. where a - a^2 |x| < 0 (a > 0; SpikingJelly gives 0
      // for every x when a <= 0, as this does): two instructions, no division
      return sjp_max0(a - a * a * fabsf(x));
    case SJP_SG_SOFTSIGN: {
      // 1 / (2 a (1/a + |x|)^2) = a / (2 (1 + a |x|)^2)
      const float u = 1.0f + a * fabsf(x);
      return __fdividef(a, 2.0f * u * u);
    }
    case SJP_SG_ERF:
      // alpha / sqrt(pi) * exp(-(alpha x)^2)
      return a * 0.56418958354775628f * sjp_exp(-(a * x) * (a * x));
    case SJP_SG_PIECEWISE_LEAKY_RELU:
      return fabsf(x) < a ? d : c;
    default:
      return 0.0f;
  }
}

// The surrogate of this build: SJP_SG (compile-time, so the switch above folds away).
#ifndef SJP_SG
#define SJP_SG SJP_SG_ATAN
#endif
__device__ __forceinline__ float sjp_sg(float x, float a, float c, float d) {
  return sjp_surrogate_grad(SJP_SG, x, a, c, d);
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

// u for the low index word `lo` under `key` (the key of the index's high word)
__device__ __forceinline__ float sjp_hash_uniform_key(unsigned int key, unsigned int lo) {
  return (float)(sjp_mix32(lo ^ key) >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

__device__ __forceinline__ float sjp_hash_uniform(unsigned int seed_lo,
                                                  unsigned int seed_hi,
                                                  unsigned long long index) {
  const unsigned int key =
      sjp_hash_key(seed_lo, seed_hi, (unsigned int)(index >> 32));
  return sjp_hash_uniform_key(key, (unsigned int)(index & 0xffffffffull));
}

// sigmoid from the hardware exponential and reciprocal (MPE-PSN's Bernoulli
// probability): a few ulp from torch.sigmoid, so a draw u = k 2^-24 compared with p can
// differ from the torch path's only when u falls within those ulp of p (about 1e-7 per
// element); 1 for x > 88 and 0 for x < -88 as it should.
__device__ __forceinline__ float sjp_sigmoid(float x) {
#ifdef SJP_EMULATION
  return 1.0f / (1.0f + expf(-x));
#else
  // e^-x flushed to 0 below 2^-126 (then p = 1 exactly); rcp(+inf) = 0 for x < -88
  return sjp_rcp(1.0f + sjp_exp(-x));
#endif
}

// ------------------------------------------------------------ warp and block
#define SJP_FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a warp (butterfly: every lane gets the same total, in the
// same order on every run).
__device__ __forceinline__ float sjp_warp_sum(float v) {
  v += __shfl_xor_sync(SJP_FULL_MASK, v, 16);
  v += __shfl_xor_sync(SJP_FULL_MASK, v, 8);
  v += __shfl_xor_sync(SJP_FULL_MASK, v, 4);
  v += __shfl_xor_sync(SJP_FULL_MASK, v, 2);
  v += __shfl_xor_sync(SJP_FULL_MASK, v, 1);
  return v;
}

// Sum of `v` over the block, in a fixed order: warp sums, then thread 0 adds the
// warp sums in warp order. Every thread must call it; the result is valid in thread
// 0. `scratch` holds blockDim.x / 32 floats; the function ends with a barrier.
__device__ __forceinline__ float sjp_block_sum(float v, sjp_smem_t scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = sjp_warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = 0.0f;
  if (threadIdx.x == 0)
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) r += scratch[w];
  __syncthreads();
  return r;
}

// ------------------------------------------------------ fixed-order final sums
// Blocks per group of the two-level reduction of per-block partials (the launcher's
// _cuda.REDUCE_GROUP): a group's last block reads at most SJP_GROUP partial rows, the
// final block ceil(grid / SJP_GROUP) group rows.
#define SJP_GROUP 16

// A float written by another block of this launch: read through L2 (ld.global.cg), as
// L1 is not coherent between SMs.
__device__ __forceinline__ float sjp_ldcg(const float* p) {
#ifdef SJP_EMULATION
  return *(const volatile float*)p;
#else
  return __ldcg(p);
#endif
}

// Every thread of the block calls this after the block's writes that others will read:
// one ticket per block on *counter (an integer atomic; floats are never added with
// atomics). True, in every thread, for the block that takes the last of `count`
// tickets; that block resets the counter to 0, so it is zero again after every launch
// (no zero-fill before the next one, on this stream or in a CUDA graph replay).
__device__ __forceinline__ bool sjp_last_of(unsigned int* counter, unsigned int count) {
  __shared__ unsigned int sjp_ticket;
  __threadfence();  // this thread's writes are visible to the whole device
  __syncthreads();  // ... for every thread of the block
  if (threadIdx.x == 0) {
    const unsigned int t = atomicAdd(counter, 1u);
    if (t == count - 1u) *counter = 0u;  // every block has counted
    sjp_ticket = t;
  }
  __syncthreads();
  const bool last = sjp_ticket == count - 1u;
  if (last) __threadfence();  // block-uniform: order the reads of the others' data
  return last;
}

// part[b][i] summed over blocks b in [b0, b1) (at most SJP_GROUP), in block order; the
// loads are independent, so a group's rows are in flight at once.
__device__ __forceinline__ float sjp_sum_rows(const float* part, int n, int b0, int b1,
                                              int i) {
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < SJP_GROUP; ++j)
    if (b0 + j < b1) s += sjp_ldcg(part + (sjp_index)(b0 + j) * n + i);
  return s;
}

// Inlined into the kernel by default; psn.cu's tensor-core backward keeps it a
// separate function (SJP_FINISH_INLINE = __noinline__), which keeps that kernel within
// 64 registers without spills.
#ifndef SJP_FINISH_INLINE
#define SJP_FINISH_INLINE __forceinline__
#endif

// The end of a kernel that wrote its block's partial sums to work[blockIdx.x][0..n):
// the fixed-order sum over the blocks, divided by `divisor`, goes to out0[i] for
// i < n0 and to out1[i - n0] for n0 <= i < n. work holds grid rows of partials and then
// ceil(grid / SJP_GROUP) rows of group sums; counters holds ceil(grid / SJP_GROUP) + 1
// zeros (left zero). Every thread of every block must call it.
__device__ SJP_FINISH_INLINE void sjp_finish_sums(float* work, unsigned int* counters, int n,
                                             float* out0, int n0, float* out1,
                                             float divisor) {
  const int grid = (int)gridDim.x, groups = (grid + SJP_GROUP - 1) / SJP_GROUP;
  const int g = (int)blockIdx.x / SJP_GROUP;
  const int b0 = g * SJP_GROUP, b1 = min(grid, b0 + SJP_GROUP);
  float* gpart = work + (sjp_index)grid * n;
  if (!sjp_last_of(counters + g, (unsigned int)(b1 - b0))) return;
  if (groups > 1) {
    for (int i = threadIdx.x; i < n; i += blockDim.x)
      gpart[(sjp_index)g * n + i] = sjp_sum_rows(work, n, b0, b1, i);
    if (!sjp_last_of(counters + groups, (unsigned int)groups)) return;
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float s;
    if (groups == 1) {
      s = sjp_sum_rows(work, n, 0, grid, i);
    } else {
      s = 0.0f;
      for (int h = 0; h < groups; h += SJP_GROUP)
        s += sjp_sum_rows(gpart, n, h, min(groups, h + SJP_GROUP), i);
    }
    s = divisor == 1.0f ? s : s / divisor;
    if (i < n0) {
      out0[i] = s;
    } else {
      out1[i - n0] = s;
    }
  }
}

// ------------------------------------------------------------------ tf32 mma
// D = A B + C for one warp, mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32:
// lane l (g = l >> 2, q = l & 3) holds a[0..3] = A[g][q], A[g+8][q], A[g][q+4],
// A[g+8][q+4]; b[0..1] = B[q][g], B[q+4][g]; c/d[0..3] = C[g][2q], C[g][2q+1],
// C[g+8][2q], C[g+8][2q+1]. Every lane of the warp must call it.
__device__ __forceinline__ void sjp_mma_tf32(float* d, const unsigned int* a,
                                             const unsigned int* b, const float* c) {
#if defined(SJP_EMULATION) && !defined(SJP_MMA_FALLBACK)
  sjp_emu_mma_tf32(d, a, b, c);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(SJP_MMA_FALLBACK)
  asm(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
      "{%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
  // Before sm_80 (no tf32 tensor cores): the same product with shuffles and FMAs.
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  float acc[4] = {c[0], c[1], c[2], c[3]};
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    // A[row][k] lives in lane (row % 8) * 4 + k % 4, register (row >= 8) + 2 (k >= 4)
    const int src_a = g * 4 + (k & 3), ra = (k >= 4) ? 2 : 0;
    const float a_lo = __uint_as_float(__shfl_sync(SJP_FULL_MASK, a[ra], src_a));
    const float a_hi = __uint_as_float(__shfl_sync(SJP_FULL_MASK, a[ra + 1], src_a));
    // B[k][col] lives in lane col * 4 + k % 4, register (k >= 4)
    const int rb = (k >= 4) ? 1 : 0;
    const float b0 = __uint_as_float(__shfl_sync(SJP_FULL_MASK, b[rb], 2 * q * 4 + (k & 3)));
    const float b1 =
        __uint_as_float(__shfl_sync(SJP_FULL_MASK, b[rb], (2 * q + 1) * 4 + (k & 3)));
    acc[0] += a_lo * b0;
    acc[1] += a_lo * b1;
    acc[2] += a_hi * b0;
    acc[3] += a_hi * b1;
  }
  d[0] = acc[0];
  d[1] = acc[1];
  d[2] = acc[2];
  d[3] = acc[3];
#endif
}

// x = hi + lo, hi = x rounded to tf32 (10 mantissa bits, ties away from zero), lo the
// exact remainder (|lo| <= 2^-11 |x|), passed to the mma as it is (the tensor cores
// read the top 19 bits of an fp32 register). Three instructions; 3xTF32 products
// a_hi b_hi + a_hi b_lo + a_lo b_hi then err by at most ~2^-20 |a b|. Non-finite x
// gives a NaN lo (NaN results), so infinite inputs are not supported by the mma paths.
__device__ __forceinline__ unsigned int sjp_tf32_round(float x) {
  return (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
}
__device__ __forceinline__ void sjp_split(float x, unsigned int& hi, unsigned int& lo) {
  hi = sjp_tf32_round(x);
  lo = __float_as_uint(x - __uint_as_float(hi));
}

// acc += A B on the tensor cores from split operands: a_hi b_lo (if B_LO), a_lo b_hi
// (if A_LO), then a_hi b_hi (small terms first). An operand that is exact in tf32
// (float16/bfloat16 data) has no low part.
template <bool A_LO, bool B_LO>
__device__ __forceinline__ void sjp_mma3(float* acc, const unsigned int* a_hi,
                                         const unsigned int* a_lo,
                                         const unsigned int* b_hi,
                                         const unsigned int* b_lo) {
  if (B_LO) sjp_mma_tf32(acc, a_hi, b_lo, acc);
  if (A_LO) sjp_mma_tf32(acc, a_lo, b_hi, acc);
  sjp_mma_tf32(acc, a_hi, b_hi, acc);
}

// ---------------------------------------------------------------- scheduling
// The same int, opaque to the optimiser: address math that uses it stays where it is
// written (inside a loop) instead of being hoisted and kept in registers for the whole
// loop (which, in the mma kernels, costs more registers than there are).
__device__ __forceinline__ int sjp_opaque(int v) {
#ifndef SJP_EMULATION
  asm volatile("" : "+r"(v));
#endif
  return v;
}

// ------------------------------------------------------------------ vector IO
// N consecutive elements of a [T, M] tensor at element index i, as floats. The caller
// guarantees alignment (i a multiple of N and the tensor N-element aligned): the
// launcher builds these paths only when M and the data pointers allow it. They move
// as 32-bit words (W = N * sizeof(element) / 4 of them: 4 words = one 16-byte
// ld/st.global.v4), half types packed two to a word and converted only when used.
template <int N>
struct alignas(N * sizeof(sjp_scalar)) sjp_vec_t {
  sjp_scalar e[N];
};

// The 32-bit words of a row segment, read or written with one vector instruction.
template <int W>
struct alignas(4 * W) sjp_words_t {
  unsigned int w[W];
};

// element bits <-> float (half types: the upper or lower 16 bits of a word)
__device__ __forceinline__ unsigned int sjp_bits_of(float v) {
#if SJP_DTYPE == 0
  return __float_as_uint(v);
#elif SJP_DTYPE == 1
  return (unsigned int)__half_as_ushort(__float2half_rn(v));
#else
  return (unsigned int)__bfloat16_as_ushort(__float2bfloat16_rn(v));
#endif
}
__device__ __forceinline__ float sjp_float_of(unsigned int bits) {
#if SJP_DTYPE == 0
  return __uint_as_float(bits);
#elif SJP_DTYPE == 1
  return __half2float(__ushort_as_half((unsigned short)bits));
#else
  return __uint_as_float(bits << 16);  // bfloat16 is the top half of a float
#endif
}

// word i of a bit mask (MPE-PSN's samples) = w, instrumented like the tensors
__device__ __forceinline__ void sjp_store_mask_word(unsigned int* p, sjp_index i,
                                                    unsigned int w) {
  SJP_EMU_GLOBAL(p + i, 4, 1);
  p[i] = w;
}

// sjp_float_of(bits), or 0 where mask = sjp_float_mask(false) (bfloat16: the
// conversion's multiply does it)
__device__ __forceinline__ unsigned int sjp_float_mask(bool keep) {
#if SJP_DTYPE == 2
  return keep ? 0x10000u : 0u;
#else
  return keep ? 0xffffffffu : 0u;
#endif
}
__device__ __forceinline__ float sjp_float_of_masked(unsigned int bits, unsigned int mask) {
#if SJP_DTYPE == 2
  return __uint_as_float(bits * mask);
#else
  return sjp_float_of(bits & mask);
#endif
}

// the bits of element i of p (half types in the low 16 bits)
__device__ __forceinline__ unsigned int sjp_raw_bits(const sjp_scalar* p, sjp_index i) {
  SJP_EMU_GLOBAL(p + i, (int)sizeof(sjp_scalar), 0);
#if SJP_DTYPE == 0
  return __float_as_uint(p[i]);
#elif SJP_DTYPE == 1
  return (unsigned int)__half_as_ushort(p[i]);
#else
  return (unsigned int)__bfloat16_as_ushort(p[i]);
#endif
}

// A pointer opaque to the optimiser: p[i] with a 32-bit i then costs one multiply-add
// (the compiler cannot fold a 64-bit column offset into every index instead). The
// compiler no longer knows it points to global memory: access it with sjp_ldg_bits,
// sjp_stg and sjp_ldg_word (explicit global loads and stores).
template <typename P>
__device__ __forceinline__ P* sjp_opaque_ptr(P* p) {
#ifndef SJP_EMULATION
  asm volatile("" : "+l"(p));
#endif
  return p;
}

// the bits of element i of p (half types in the low 16 bits), a read-only global load
__device__ __forceinline__ unsigned int sjp_ldg_bits(const sjp_scalar* p, sjp_index i) {
  SJP_EMU_GLOBAL(p + i, (int)sizeof(sjp_scalar), 0);
#ifdef SJP_EMULATION
  unsigned int r = 0u;
  memcpy(&r, p + i, sizeof(sjp_scalar));
  return r;
#elif SJP_DTYPE == 0
  return __float_as_uint(__ldg(reinterpret_cast<const float*>(p + i)));
#else
  return (unsigned int)__ldg(reinterpret_cast<const unsigned short*>(p + i));
#endif
}

// element i of p = v (converted), a global store
__device__ __forceinline__ void sjp_stg(sjp_scalar* p, sjp_index i, float v) {
  SJP_EMU_GLOBAL(p + i, (int)sizeof(sjp_scalar), 1);
#ifdef SJP_EMULATION
  sjp_from_float(v, p + i);
#elif SJP_DTYPE == 0
  asm volatile("st.global.f32 [%0], %1;" ::"l"(p + i), "f"(v));
#else
  asm volatile("st.global.b16 [%0], %1;" ::"l"(p + i), "h"((unsigned short)sjp_bits_of(v)));
#endif
}

// word i of a bit mask, a read-only global load
__device__ __forceinline__ unsigned int sjp_ldg_word(const unsigned int* p, sjp_index i) {
  SJP_EMU_GLOBAL(p + i, 4, 0);
#ifdef SJP_EMULATION
  return p[i];
#else
  return __ldg(p + i);
#endif
}

template <int W>
__device__ __forceinline__ void sjp_ldg_words(const sjp_scalar* p, sjp_index i,
                                              unsigned int* w) {
  const sjp_words_t<W> r = *reinterpret_cast<const sjp_words_t<W>*>(p + i);
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = r.w[k];
}

// one st.global of W words (v4, v2 or a single word)
template <int W>
__device__ __forceinline__ void sjp_stg_words(sjp_scalar* p, sjp_index i,
                                              const unsigned int* w) {
  static_assert(W == 1 || W == 2 || W == 4, "1, 2 or 4 words per vector store");
#ifdef SJP_EMULATION
  memcpy((void*)(p + i), w, 4 * W);
#else
  // explicit vector stores: NVVM splits a stored struct into scalar stores
  unsigned int* q = reinterpret_cast<unsigned int*>(p + i);
  if (W == 4) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(q), "r"(w[0]),
                 "r"(w[1 % W]), "r"(w[2 % W]), "r"(w[3 % W]));
  } else if (W == 2) {
    asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(q), "r"(w[0]), "r"(w[1 % W]));
  } else {
    *q = w[0];
  }
#endif
}

// element k (0 .. N-1) of the words of a segment
template <int N>
__device__ __forceinline__ float sjp_word_elem(const unsigned int* w, int k) {
#if SJP_DTYPE == 0
  return __uint_as_float(w[k]);
#else
  return sjp_float_of((k & 1) ? (w[k >> 1] >> 16) : (w[k >> 1] & 0xffffu));
#endif
}

template <int N>
__device__ __forceinline__ void sjp_load_vec(const sjp_scalar* p, sjp_index i, float* v) {
  constexpr int W = N * (int)sizeof(sjp_scalar) / 4;
  static_assert(W * 4 == N * (int)sizeof(sjp_scalar), "whole 32-bit words");
  SJP_EMU_GLOBAL(p + i, (int)(N * sizeof(sjp_scalar)), 0);
  unsigned int w[W];
  sjp_ldg_words<W>(p, i, w);
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = sjp_word_elem<N>(w, k);
}

template <int N>
__device__ __forceinline__ void sjp_store_vec(sjp_scalar* p, sjp_index i, const float* v) {
  constexpr int W = N * (int)sizeof(sjp_scalar) / 4;
  static_assert(W * 4 == N * (int)sizeof(sjp_scalar), "whole 32-bit words");
  SJP_EMU_GLOBAL(p + i, (int)(N * sizeof(sjp_scalar)), 1);
  unsigned int w[W];
#if SJP_DTYPE == 0
#pragma unroll
  for (int k = 0; k < N; ++k) w[k] = __float_as_uint(v[k]);
#else
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = sjp_bits_of(v[2 * k]) | (sjp_bits_of(v[2 * k + 1]) << 16);
#endif
  sjp_stg_words<W>(p, i, w);
}

// N (1, 2 or 4) consecutive floats of shared memory at float index i (N-aligned).
template <int N>
struct alignas(4 * N) sjp_fvec_t {
  float e[N];
};

template <int N>
__device__ __forceinline__ void sjp_lds(sjp_smem_t s, int i, float* v) {
  SJP_EMU_SHARED(SJP_SMEM_RAW(s) + i, 4 * N, 0);
  const sjp_fvec_t<N> r = *reinterpret_cast<const sjp_fvec_t<N>*>(SJP_SMEM_RAW(s) + i);
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = r.e[k];
}

template <int N>
__device__ __forceinline__ void sjp_sts(sjp_smem_t s, int i, const float* v) {
  SJP_EMU_SHARED(SJP_SMEM_RAW(s) + i, 4 * N, 1);
  sjp_fvec_t<N> r;
#pragma unroll
  for (int k = 0; k < N; ++k) r.e[k] = v[k];
  *reinterpret_cast<sjp_fvec_t<N>*>(SJP_SMEM_RAW(s) + i) = r;
}
