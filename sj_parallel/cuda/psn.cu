// Dense PSN (also masked PSN through its masked weight):  H = W X + b,  S = Θ(H);
// X/S/grads [T, M] time-major, W [T, T] (float32), b [T] (float32). T is a compile-time
// constant (SJP_T, 1..64): loops over T unroll and every array is sized by T.
// SJP_VEC = 1 (the launcher's choice when M is a multiple of 8 and the [T, M] tensors
// are 16-byte aligned) moves X, S and the gradients in 4- to 16-byte vectors; SJP_VEC
// = 0 moves single elements.
//
// Everything is computed in float32. Large products run on the tensor cores
// (mma.sync m16n8k8, tf32 operands, float32 accumulation) in "3xTF32" form: each fp32
// operand is split as hi + lo (sjp_split) and a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi
// (relative error ~2^-20 per product); float16/bfloat16 data is exact in tf32 and has no
// low part. Below sm_80 the same products run on FP32 FMAs (sjp_mma_tf32's fallback).
//
// Forward (sjp_psn_forward)
// * T <= 8, FP32 FMAs: blocks of 128 threads; lane l of warp w in tile i owns the SJP_FV
//   columns i * 128 SJP_FV + w * 32 SJP_FV + l + 32 v: its column of X is loaded once
//   into registers (a warp reads 32 consecutive columns of a row), then for each t,
//   h = b_t + W[t] . x with W read from shared memory as float4 broadcasts.
// * T > 8, tensor cores: blocks of 256 threads; each warp owns 16 SJP_F_NMT columns
//   and computes H^T = X^T W^T for them: the A fragments (columns x j) come straight
//   from global memory (each lane reads 2 SJP_F_NMT consecutive columns of a row), the
//   B fragments from W, pre-split into hi/lo and XOR-swizzled in shared memory
//   (conflict-free), the accumulators start at b, and the spikes leave from the
//   accumulator fragments (2 SJP_F_NMT consecutive columns of a row per store).
// Bytes: read T*M*sizeof(X), write T*M*sizeof(S); nothing is saved.
//
// Backward (sjp_psn_backward)
// * T <= 4, FP32 FMAs: blocks of 128 threads, one column per thread at a time; W and b
//   in registers; grad_W and grad_b summed per thread, then over the block in a fixed
//   order (warp butterflies, then warps in order).
// * T > 4, tensor cores: blocks of 256 threads (8 warps) walk tiles of SJP_CB columns:
//   0. X and grad_S of the tile are staged in shared memory as float ([rows][SJP_CB],
//      row stride = 4 mod 32: every fragment pattern below is conflict-free);
//   1. each warp (or pair of warps for T > 32, splitting the t range) computes
//      H^T = X^T W^T + b for its 16 SJP_NMT columns, then GH = grad_S surrogate'(H),
//      written over grad_S in shared memory; grad_b is summed in registers;
//   2. the same warps compute grad_X^T = GH^T W (A fragments from the staged GH) and
//      store it from the accumulator fragments (vector stores);
//   3. the block computes grad_W += GH X^T over the tile: each warp owns a 16-row band
//      of grad_W (SJP_JG 8-column tiles) and a share of the tile's columns (k-group),
//      with accumulators held for the whole kernel.
//   W lives in shared memory (fp32, or pre-split hi/lo for T <= 32), XOR-swizzled so
//   both of its fragment patterns (rows of W for H, columns of W for grad_X) are
//   conflict-free. grad_W and grad_b are written as one partial per block
//   (work[block] = [grad_W (T*T) | grad_b (T)]), the k-groups and warps added in a
//   fixed order; sjp_finish_sums (common.cuh) then adds the partials over blocks in a
//   fixed order inside the same launch and writes grad_W [T][T] and grad_b [T].
// Bytes: read 2*T*M (X, grad_S), write T*M (grad_X); H is recomputed, never stored.
// the tensor-core backward (T > 4) calls the sums over blocks as a function (see
// common.cuh)
#if defined(SJP_T) && SJP_T > 4
#define SJP_FINISH_INLINE __noinline__
#endif
#include "common.cuh"

#ifndef SJP_T
#error "psn.cu needs a compile-time T: -DSJP_T=<1..64>"
#endif
#if SJP_T < 1 || SJP_T > 64
#error "SJP_T must be in [1, 64]"
#endif
#ifndef SJP_VEC
#error "psn.cu needs -DSJP_VEC=<0|1> (vector IO: M % 8 == 0 and 16-byte aligned tensors)"
#endif

#define SJP_TK (((SJP_T + 7) / 8) * 8)    // t or j extent padded to the mma's 8
#define SJP_NT (SJP_TK / 8)               // 8-wide tiles over t or j
#define SJP_TM3 (((SJP_T + 15) / 16) * 16)  // grad_W rows padded to the mma's 16
#define SJP_SW (SJP_TK <= 32 ? 32 : 64)   // row stride of W in shared memory
#define SJP_X_LO (SJP_DTYPE == 0)         // float32 X needs a tf32 low part
#define SJP_VE (SJP_DTYPE == 0 ? 4 : 8)   // elements per 16-byte vector

// W[t][j] in shared memory at sjp_wsw(t, j): the column XOR-ed with 8 f(t % 8),
// f(u) = (u ^ (u >> 2)) & 3, so that lanes (g, q) reading W[8n + g][8k + 2q .. +1]
// (64-bit) or W[8k + 2q (+1)][8n + g] (32-bit) all hit different banks.
__device__ __forceinline__ int sjp_wf(int t) { return ((t ^ (t >> 2)) & 3) << 3; }
__device__ __forceinline__ int sjp_wsw(int t, int j) {
  return t * SJP_SW + (j ^ sjp_wf(t & 7));
}

// N consecutive columns m.. of row r of a [T, M] tensor (zeros beyond M).
template <int N>
__device__ __forceinline__ void sjp_load_cols(const sjp_scalar* p, int r, sjp_index m,
                                              sjp_index M, float* v) {
#if SJP_VEC
  // M is a multiple of 8 and m of N: the N columns are all valid or all not
  if (m < M) {
    sjp_load_vec<N>(p, (sjp_index)r * M + m, v);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = 0.0f;
  }
#else
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = m + k < M ? sjp_load(p, (sjp_index)r * M + m + k) : 0.0f;
#endif
}

// The same N columns as raw 32-bit words (half types: two elements per word), left
// packed until used (sjp_word_elem), so the loads stay in flight.
template <int N>
__device__ __forceinline__ void sjp_load_cols_raw(const sjp_scalar* p, int r, sjp_index m,
                                                  sjp_index M, unsigned int* w) {
  constexpr int W = N * (int)sizeof(sjp_scalar) / 4;
#if SJP_VEC
  if (m < M) {
    SJP_EMU_GLOBAL(p + (sjp_index)r * M + m, (int)(N * sizeof(sjp_scalar)), 0);
    sjp_ldg_words<W>(p, (sjp_index)r * M + m, w);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) w[k] = 0u;
  }
#else
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = 0u;
#pragma unroll
  for (int k = 0; k < N; ++k)
    if (m + k < M) {
      const unsigned int bits = sjp_raw_bits(p, (sjp_index)r * M + m + k);
      if (sizeof(sjp_scalar) == 4) {
        w[k] = bits;
      } else {
        w[k >> 1] |= bits << (16 * (k & 1));
      }
    }
#endif
}

template <int N>
__device__ __forceinline__ void sjp_store_cols(sjp_scalar* p, int r, sjp_index m,
                                               sjp_index M, const float* v) {
#if SJP_VEC
  if (m < M) sjp_store_vec<N>(p, (sjp_index)r * M + m, v);
#else
#pragma unroll
  for (int k = 0; k < N; ++k)
    if (m + k < M) sjp_store(p, (sjp_index)r * M + m + k, v[k]);
#endif
}

// W fragments. A lane's offsets inside a k-step: row part of W[8n + g][8k + 2q] is
// sjp_wrow(g, q, k) + 8n SJP_SW (the swizzle of row 8n + g depends on g only).
__device__ __forceinline__ int sjp_wrow(int g, int q, int kk) {
  return g * SJP_SW + 2 * q + ((8 * kk) ^ sjp_wf(g));
}

// B fragment of H^T = X^T W^T from the rows of W (or of W^T for grad_X^T = GH^T W):
// b[0] = W[8n + g][8k + 2q], b[1] = W[8n + g][8k + 2q + 1] at `off` = sjp_wrow(g, q, k)
// + 8n SJP_SW, from the pre-split copy (SPLIT: hi at Wh, lo at Wl) or split here.
template <bool SPLIT, bool NEED_LO = true>
__device__ __forceinline__ void sjp_wfrag(sjp_smem_t Wh, sjp_smem_t Wl, int off,
                                          unsigned int* hi, unsigned int* lo) {
  float w[2];
  sjp_lds<2>(Wh, off, w);
  if (SPLIT) {
    hi[0] = __float_as_uint(w[0]);
    hi[1] = __float_as_uint(w[1]);
    if (NEED_LO) {
      float l[2];
      sjp_lds<2>(Wl, off, l);
      lo[0] = __float_as_uint(l[0]);
      lo[1] = __float_as_uint(l[1]);
    }
  } else if (NEED_LO) {
    sjp_split(w[0], hi[0], lo[0]);
    sjp_split(w[1], hi[1], lo[1]);
  } else {
    hi[0] = sjp_tf32_round(w[0]);
    hi[1] = sjp_tf32_round(w[1]);
  }
}

// A fragments of NMT m-tiles (16 columns each) from two rows of values: lane (g, q)
// holds columns 2 NMT g .. 2 NMT g + 2 NMT - 1 of rows r0 (v0) and r0 + 1 (v1); m-tile
// i's rows g and g + 8 are columns 2 NMT g + 2i and 2 NMT g + 2i + 1, its k = q and
// q + 4 are the rows r0 and r0 + 1 (the k order inside an 8-step is free, and B uses
// the same). LO: split into hi/lo; else hi only, rounded to tf32 (ROUND) or as it is
// (data exact in tf32).
template <int NMT, bool LO, bool ROUND = false>
__device__ __forceinline__ void sjp_afrags(const float* v0, const float* v1,
                                           unsigned int (*hi)[4], unsigned int (*lo)[4]) {
#pragma unroll
  for (int i = 0; i < NMT; ++i) {
    const float a[4] = {v0[2 * i], v0[2 * i + 1], v1[2 * i], v1[2 * i + 1]};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (LO) {
        sjp_split(a[e], hi[i][e], lo[i][e]);
      } else {
        hi[i][e] = ROUND ? sjp_tf32_round(a[e]) : __float_as_uint(a[e]);
        lo[i][e] = 0u;
      }
    }
  }
}

// ================================================================== forward
#if SJP_T <= 8
#define SJP_FWD_BLOCK 128
#define SJP_TP (((SJP_T + 3) / 4) * 4)  // row stride of W in shared memory (float4 rows)
#define SJP_FV (SJP_T <= 4 ? 8 : 4)
#define SJP_FWD_COLS (SJP_FWD_BLOCK * SJP_FV)

// at least 1024 resident threads per SM (50% occupancy): at most 64 registers
extern "C" __global__ void __launch_bounds__(SJP_FWD_BLOCK, 1024 / SJP_FWD_BLOCK)
    sjp_psn_forward(const sjp_scalar* __restrict__ x, const float* __restrict__ W,
                    const float* __restrict__ b, sjp_scalar* __restrict__ s,
                    const sjp_index M) {
  SJP_DYN_SMEM(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // W[t][j] at t * SJP_TP + j (zero beyond T), then b
  sjp_smem_t W_s = smem, b_s = smem + SJP_T * SJP_TP;
  for (int i = tid; i < SJP_T * SJP_TP; i += blockDim.x) {
    const int t = i / SJP_TP, j = i - t * SJP_TP;
    W_s[i] = j < SJP_T ? W[t * SJP_T + j] : 0.0f;
  }
  for (int i = tid; i < SJP_T; i += blockDim.x) b_s[i] = b[i];
  __syncthreads();
  const int n_tiles = (int)((M + SJP_FWD_COLS - 1) / SJP_FWD_COLS);  // < 2^31 (launcher)
#pragma unroll 1
  for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index base = (sjp_index)tile * SJP_FWD_COLS + warp * 32 * SJP_FV + lane;
    float xv[SJP_TP][SJP_FV];
#pragma unroll
    for (int j = 0; j < SJP_TP; ++j)
#pragma unroll
      for (int v = 0; v < SJP_FV; ++v) {
        const sjp_index m = base + 32 * v;
        xv[j][v] = (j < SJP_T && m < M) ? sjp_load(x, (sjp_index)j * M + m) : 0.0f;
      }
#pragma unroll 1
    for (int t = 0; t < SJP_T; ++t) {  // not unrolled: keeps W loads from piling up
      float acc[SJP_FV];
      const float bt = b_s[t];
#pragma unroll
      for (int v = 0; v < SJP_FV; ++v) acc[v] = bt;
#pragma unroll
      for (int j = 0; j < SJP_TP; j += 4) {
        float w[4];
        sjp_lds<4>(W_s, t * SJP_TP + j, w);
#pragma unroll
        for (int v = 0; v < SJP_FV; ++v) {
          acc[v] += w[0] * xv[j][v];
          acc[v] += w[1] * xv[j + 1][v];
          acc[v] += w[2] * xv[j + 2][v];
          acc[v] += w[3] * xv[j + 3][v];
        }
      }
#pragma unroll
      for (int v = 0; v < SJP_FV; ++v) {
        const sjp_index m = base + 32 * v;
        if (m < M) sjp_store(s, (sjp_index)t * M + m, sjp_heaviside(acc[v]));
      }
    }
  }
}
#else  // T > 8: tensor cores
#define SJP_FWD_BLOCK 256
#define SJP_F_NMT (SJP_NT <= 2 ? 2 : 1)  // 16-column m-tiles per warp
#define SJP_FWD_COLS (8 * 16 * SJP_F_NMT)
// k-steps of X in flight (_cuda.psn_forward_ahead): half types all of them for
// T <= 32, 4 at T > 56, else 2 (4 spills on sm_80 there); float32 2 for 16 < T <= 32
// (lanes of 2 columns; more registers spill above T = 32), else 1
#if SJP_DTYPE != 0
#define SJP_F_AHEAD (SJP_NT <= 4 ? SJP_NT : SJP_NT == 8 ? 4 : 2)
#else
#define SJP_F_AHEAD (SJP_NT > 2 && SJP_NT <= 4 ? 2 : 1)
#endif

extern "C" __global__ void __launch_bounds__(SJP_FWD_BLOCK, 1024 / SJP_FWD_BLOCK)
    sjp_psn_forward(const sjp_scalar* __restrict__ x, const float* __restrict__ W,
                    const float* __restrict__ b, sjp_scalar* __restrict__ s,
                    const sjp_index M) {
  constexpr int NMT = SJP_F_NMT, NV = 2 * SJP_F_NMT;
  SJP_DYN_SMEM(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, q = lane & 3;
  // W hi | W lo (swizzled [SJP_TK][SJP_SW], zero beyond T) | b (zero beyond T)
  sjp_smem_t Wh = smem, Wl = smem + SJP_TK * SJP_SW, bs = smem + 2 * SJP_TK * SJP_SW;
  for (int i = tid; i < SJP_TK * SJP_SW; i += blockDim.x) {
    const int t = i / SJP_SW, j = i - t * SJP_SW;
    unsigned int hi, lo;
    sjp_split(t < SJP_T && j < SJP_T ? W[t * SJP_T + j] : 0.0f, hi, lo);
    Wh[sjp_wsw(t, j)] = __uint_as_float(hi);
    Wl[sjp_wsw(t, j)] = __uint_as_float(lo);
  }
  for (int i = tid; i < SJP_TK; i += blockDim.x) bs[i] = i < SJP_T ? b[i] : 0.0f;
  __syncthreads();
  const int n_tiles = (int)((M + SJP_FWD_COLS - 1) / SJP_FWD_COLS);  // < 2^31 (launcher)
#pragma unroll 1
  for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    // this lane's first column: m-tile i's rows g, g + 8 are columns mw + 2i, + 1
    const sjp_index mw = (sjp_index)tile * SJP_FWD_COLS + warp * 16 * NMT + NV * g;
    float acc[NMT][SJP_NT][4];
    const int bo = sjp_opaque(2 * q);
#pragma unroll
    for (int nt = 0; nt < SJP_NT; ++nt) {
      float bb[2];
      sjp_lds<2>(bs, bo + 8 * nt, bb);
#pragma unroll
      for (int i = 0; i < NMT; ++i) {
        acc[i][nt][0] = acc[i][nt][2] = bb[0];
        acc[i][nt][1] = acc[i][nt][3] = bb[1];
      }
    }
    // rows 8 kk + 2q and + 1 of X for the lane's columns, as raw words, loaded
    // SJP_F_AHEAD k-steps ahead (a ring: slot d holds k-step k0 + d) and converted
    // only when the k-step is used, so several k-steps' loads are in flight
    constexpr int D = SJP_F_AHEAD, NW = NV * (int)sizeof(sjp_scalar) / 4;
    unsigned int xw[D][2][NW];
#pragma unroll
    for (int d = 0; d < D; ++d)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = 8 * d + 2 * q + e;
        if (j < SJP_T) {
          sjp_load_cols_raw<NV>(x, j, mw, M, xw[d][e]);
        } else {
#pragma unroll
          for (int c = 0; c < NW; ++c) xw[d][e][c] = 0u;
        }
      }
#pragma unroll 1
    for (int k0 = 0; k0 < SJP_NT; k0 += D) {
#pragma unroll
      for (int d = 0; d < D; ++d) {
        const int kk = k0 + d;
        if (SJP_NT % D == 0 || kk < SJP_NT) {
          float v0[NV], v1[NV];
#pragma unroll
          for (int c = 0; c < NV; ++c) {
            v0[c] = sjp_word_elem<NV>(xw[d][0], c);
            v1[c] = sjp_word_elem<NV>(xw[d][1], c);
          }
          unsigned int ah[NMT][4], al[NMT][4];
          sjp_afrags<NMT, SJP_X_LO>(v0, v1, ah, al);
          if (kk + D < SJP_NT) {  // refill the slot with k-step kk + D
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int j = 8 * (kk + D) + 2 * q + e;
              if (j < SJP_T) {
                sjp_load_cols_raw<NV>(x, j, mw, M, xw[d][e]);
              } else {
#pragma unroll
                for (int c = 0; c < NW; ++c) xw[d][e][c] = 0u;
              }
            }
          }
          const int wo = sjp_opaque(sjp_wrow(g, q, kk));
#pragma unroll
          for (int nt = 0; nt < SJP_NT; ++nt) {
            unsigned int bh[2], bl[2];
            sjp_wfrag<true>(Wh, Wl, wo + 8 * nt * SJP_SW, bh, bl);
#pragma unroll
            for (int i = 0; i < NMT; ++i)
              sjp_mma3<SJP_X_LO, true>(acc[i][nt], ah[i], al[i], bh, bl);
          }
        }
      }
    }
    // spikes: accumulator (i, nt)[2r + e] is H[8 nt + 2q + e] of column mw + 2i + r
#pragma unroll
    for (int nt = 0; nt < SJP_NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = 8 * nt + 2 * q + e;
        if (t < SJP_T) {
          float v[NV];
#pragma unroll
          for (int i = 0; i < NMT; ++i) {
            v[2 * i] = sjp_heaviside(acc[i][nt][e]);
            v[2 * i + 1] = sjp_heaviside(acc[i][nt][2 + e]);
          }
          sjp_store_cols<NV>(s, t, mw, M, v);
        }
      }
  }
}
#endif

// ================================================================= backward
#if SJP_T <= 4
#define SJP_BWD_BLOCK 128
#define SJP_BV 4  // columns per thread per tile
#define SJP_BWD_COLS (SJP_BWD_BLOCK * SJP_BV)
#define SJP_NACC (SJP_T * SJP_T + SJP_T)

extern "C" __global__ void __launch_bounds__(SJP_BWD_BLOCK, 8) sjp_psn_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ W, const float* __restrict__ b,
    sjp_scalar* __restrict__ grad_x, float* __restrict__ grad_w,
    float* __restrict__ grad_b, float* __restrict__ work,
    unsigned int* __restrict__ counters, const sjp_index M, const float sg_a,
    const float sg_c, const float sg_d) {
  SJP_DYN_SMEM(smem);  // [warps][SJP_NACC] for the block's sums
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float w[SJP_T][SJP_T], bb[SJP_T], acc[SJP_NACC];
#pragma unroll
  for (int t = 0; t < SJP_T; ++t) {
    bb[t] = b[t];
#pragma unroll
    for (int j = 0; j < SJP_T; ++j) w[t][j] = W[t * SJP_T + j];
  }
#pragma unroll
  for (int i = 0; i < SJP_NACC; ++i) acc[i] = 0.0f;
  const int n_tiles = (int)((M + SJP_BWD_COLS - 1) / SJP_BWD_COLS);  // < 2^31 (launcher)
#pragma unroll 1
  for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
#pragma unroll
    for (int v = 0; v < SJP_BV; ++v) {
      const sjp_index m = (sjp_index)tile * SJP_BWD_COLS + v * SJP_BWD_BLOCK + tid;
      if (m < M) {
        float xv[SJP_T], gh[SJP_T];
#pragma unroll
        for (int t = 0; t < SJP_T; ++t) {
          xv[t] = sjp_load(x, (sjp_index)t * M + m);
          gh[t] = sjp_load(grad_s, (sjp_index)t * M + m);
        }
#pragma unroll
        for (int t = 0; t < SJP_T; ++t) {
          float h = bb[t];
#pragma unroll
          for (int j = 0; j < SJP_T; ++j) h += w[t][j] * xv[j];
          gh[t] *= sjp_sg(h, sg_a, sg_c, sg_d);
          acc[SJP_T * SJP_T + t] += gh[t];
#pragma unroll
          for (int j = 0; j < SJP_T; ++j) acc[t * SJP_T + j] += gh[t] * xv[j];
        }
#pragma unroll
        for (int j = 0; j < SJP_T; ++j) {
          float gx = 0.0f;
#pragma unroll
          for (int t = 0; t < SJP_T; ++t) gx += w[t][j] * gh[t];
          sjp_store(grad_x, (sjp_index)j * M + m, gx);
        }
      }
    }
  }
  // the block's sums, in a fixed order: warp butterflies, then the warps in order
#pragma unroll
  for (int i = 0; i < SJP_NACC; ++i) {
    const float v = sjp_warp_sum(acc[i]);
    if (lane == 0) smem[warp * SJP_NACC + i] = v;
  }
  __syncthreads();
  for (int i = tid; i < SJP_NACC; i += blockDim.x) {
    float sum = 0.0f;
    for (int k = 0; k < SJP_BWD_BLOCK / 32; ++k) sum += smem[k * SJP_NACC + i];
    work[(sjp_index)blockIdx.x * SJP_NACC + i] = sum;  // [grad_W | grad_b]
  }
  sjp_finish_sums(work, counters, SJP_NACC, grad_w, SJP_T * SJP_T, grad_b, 1.0f);
}
#else  // T > 4: tensor cores
#define SJP_BWD_BLOCK 256
#define SJP_P (SJP_T > 32 ? 4 : 1)        // warps sharing a column slice (split t / j)
// 16-column m-tiles per slice (float32 operands need twice the fragment registers)
#define SJP_NMT (SJP_T <= 16 || (SJP_T > 32 && SJP_DTYPE != 0) ? 2 : 1)
#define SJP_CB (128 * SJP_NMT / SJP_P)    // columns per block tile
#define SJP_SS (SJP_CB + 4)               // staged row stride, = 4 (mod 32)
#define SJP_NTP ((SJP_NT + SJP_P - 1) / SJP_P)  // 8-wide t / j tiles per warp
#define SJP_WSPLIT (SJP_TK <= 32)         // W kept pre-split (hi, lo) in shared memory
// grad_W: SJP_NT3 bands of 16 rows x SJP_NG groups of SJP_JG 8-column tiles = SJP_S3
// warp tasks; SJP_KG warps share a task, each taking every SJP_KG-th k-step (8 columns)
#define SJP_NT3 (SJP_TM3 / 16)
#define SJP_NG ((SJP_NT + 3) / 4)
#define SJP_JG ((SJP_NT + SJP_NG - 1) / SJP_NG)
#define SJP_S3 (SJP_NT3 * SJP_NG)
#define SJP_KG (SJP_S3 == 1 ? 8 : SJP_S3 == 2 ? 4 : SJP_S3 <= 4 ? 2 : 1)
#define SJP_KS (SJP_CB / 8)
#define SJP_RS (SJP_TK + (40 - SJP_TK % 32) % 32)  // grad_W partial row stride, = 8 (mod 32)
#define SJP_STAGE_IT ((SJP_T * (SJP_CB / SJP_VE) + SJP_BWD_BLOCK - 1) / SJP_BWD_BLOCK)
#define SJP_W_FLOATS ((1 + 3 * SJP_WSPLIT) * SJP_TK * SJP_SW)  // W [, lo, W^T, W^T lo]
#define SJP_TILE_FLOATS ((SJP_TK + SJP_TM3) * SJP_SS)

static_assert(SJP_KG * SJP_TM3 * (SJP_RS + 1) <= SJP_W_FLOATS + SJP_TK + SJP_TILE_FLOATS,
              "the grad_W and grad_b partials must fit in the shared memory");
static_assert(SJP_WSPLIT || SJP_P == 4, "grad_X reads W's columns with P = 4");

// at least 4 resident blocks (1024 threads, 50% occupancy): at most 64 registers
extern "C" __global__ void __launch_bounds__(SJP_BWD_BLOCK, 4) sjp_psn_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ W, const float* __restrict__ b,
    sjp_scalar* __restrict__ grad_x, float* __restrict__ grad_w,
    float* __restrict__ grad_b, float* __restrict__ work,
    unsigned int* __restrict__ counters, const sjp_index M, const float sg_a,
    const float sg_c, const float sg_d) {
  constexpr int NMT = SJP_NMT, NV = 2 * SJP_NMT, P = SJP_P, SS = SJP_SS;
  SJP_DYN_SMEM(smem);
  // W (hi[, lo, W^T hi, W^T lo]) | b | X tile [SJP_TK][SS] | GH tile [SJP_TM3][SS]
  sjp_smem_t Wh = smem, Wl = smem + SJP_TK * SJP_SW;
  sjp_smem_t Wth = smem + 2 * SJP_TK * SJP_SW, Wtl = smem + 3 * SJP_TK * SJP_SW;
  sjp_smem_t bs = smem + SJP_W_FLOATS;
  sjp_smem_t Xs = bs + SJP_TK, Gs = Xs + SJP_TK * SS;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, q = lane & 3;
  for (int i = tid; i < SJP_TK * SJP_SW; i += blockDim.x) {
    const int t = i / SJP_SW, j = i - t * SJP_SW;
    const bool in = t < SJP_T && j < SJP_T;
    const float w = in ? W[t * SJP_T + j] : 0.0f;
    if (SJP_WSPLIT) {
      const float wt = in ? W[j * SJP_T + t] : 0.0f;
      unsigned int hi, lo;
      sjp_split(w, hi, lo);
      Wh[sjp_wsw(t, j)] = __uint_as_float(hi);
      Wl[sjp_wsw(t, j)] = __uint_as_float(lo);
      sjp_split(wt, hi, lo);
      Wth[sjp_wsw(t, j)] = __uint_as_float(hi);
      Wtl[sjp_wsw(t, j)] = __uint_as_float(lo);
    } else {
      Wh[sjp_wsw(t, j)] = w;
    }
  }
  for (int i = tid; i < SJP_TK; i += blockDim.x) bs[i] = i < SJP_T ? b[i] : 0.0f;
  // rows beyond T (and columns beyond M) of the staged tiles stay zero
  for (int i = tid; i < SJP_TILE_FLOATS; i += blockDim.x) Xs[i] = 0.0f;
  __syncthreads();

  // Work split (recomputed where used from an opaque copy of the warp index, so the
  // compiler does not hold every lane constant in a register for the whole kernel):
  // steps 1-2: warp = slice pi (16 NMT columns) x part h of the t / j tiles
  //   (nt = P s + h); the lane's first column of the tile is cw
#define SJP_STEP12_IDS(w)             \
  const int h = (w) % P;              \
  const int cw = (w) / P * 16 * NMT + NV * g
  // step 3: warp = task s3 (rows 16 tt.., column tiles jt0..) x k-group kg (k-steps
  //   kg, kg + SJP_KG, ...); busy3: the warp has a task (warp-uniform)
#define SJP_STEP3_IDS(w)                                    \
  const int kg = (w) % SJP_KG, s3 = (w) / SJP_KG;           \
  const bool busy3 = s3 < SJP_S3;                           \
  const int tt = s3 / SJP_NG, jt0 = (s3 % SJP_NG) * SJP_JG; \
  const bool gb_owner = busy3 && jt0 == 0
  float acc3[SJP_JG][4];
#pragma unroll
  for (int jj = 0; jj < SJP_JG; ++jj) acc3[jj][0] = acc3[jj][1] = acc3[jj][2] = acc3[jj][3] = 0.0f;
  // grad_b of rows 16 tt + g (+ 8) over this lane's columns of GH, summed by the
  // warps of the first column-tile group (gb_owner) from the A fragments they load
  float gb3[2] = {0.0f, 0.0f};

  const int n_tiles = (int)((M + SJP_CB - 1) / SJP_CB);  // < 2^31 (launcher)
#pragma unroll 1
  for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index m_base = (sjp_index)tile * SJP_CB;
    // 0. stage X and grad_S (coalesced 16-byte vectors)
    const int tid_o = sjp_opaque(tid);  // per-tile address math (not hoisted)
#pragma unroll
    for (int it = 0; it < SJP_STAGE_IT; ++it) {
      const int idx = tid_o + it * SJP_BWD_BLOCK;
      if (idx < SJP_T * (SJP_CB / SJP_VE)) {
        const int r = idx / (SJP_CB / SJP_VE), c = (idx % (SJP_CB / SJP_VE)) * SJP_VE;
        float xv[SJP_VE], gv[SJP_VE];
        sjp_load_cols<SJP_VE>(x, r, m_base + c, M, xv);
        sjp_load_cols<SJP_VE>(grad_s, r, m_base + c, M, gv);
#pragma unroll
        for (int u = 0; u < SJP_VE; u += 4) {
          sjp_sts<4>(Xs, r * SS + c + u, xv + u);
          sjp_sts<4>(Gs, r * SS + c + u, gv + u);
        }
      }
    }
    __syncthreads();
    // 1. H^T = X^T W^T + b, then GH = grad_S surrogate'(H) over grad_S
    {
      SJP_STEP12_IDS(sjp_opaque(warp));
      float acc[SJP_NTP][NMT][4];
      const int bo = sjp_opaque(8 * h + 2 * q);
#pragma unroll
      for (int s = 0; s < SJP_NTP; ++s) {
        float bb[2] = {0.0f, 0.0f};
        if (s * P + h < SJP_NT) sjp_lds<2>(bs, bo + 8 * P * s, bb);
#pragma unroll
        for (int i = 0; i < NMT; ++i) {
          acc[s][i][0] = acc[s][i][2] = bb[0];
          acc[s][i][1] = acc[s][i][3] = bb[1];
        }
      }
#pragma unroll 1
      for (int kk = 0; kk < SJP_NT; ++kk) {
        const int xo = sjp_opaque((8 * kk + 2 * q) * SS + cw);
        float v0[NV], v1[NV];
        sjp_lds<NV>(Xs, xo, v0);
        sjp_lds<NV>(Xs, xo + SS, v1);
        unsigned int ah[NMT][4], al[NMT][4];
        sjp_afrags<NMT, SJP_X_LO>(v0, v1, ah, al);
        const int wo = sjp_opaque(sjp_wrow(g, q, kk) + 8 * h * SJP_SW);
#pragma unroll
        for (int s = 0; s < SJP_NTP; ++s) {
          if (s * P + h < SJP_NT) {
            unsigned int bh[2], bl[2];
            sjp_wfrag<SJP_WSPLIT, SJP_X_LO>(Wh, Wl, wo + 8 * P * s * SJP_SW, bh, bl);
#pragma unroll
            for (int i = 0; i < NMT; ++i)
              sjp_mma3<SJP_X_LO, SJP_X_LO>(acc[s][i], ah[i], al[i], bh, bl);
          }
        }
      }
      // accumulator (s, i)[2r + e] is H[8 nt + 2q + e] of column cw + 2i + r
#pragma unroll
      for (int s = 0; s < SJP_NTP; ++s) {
        const int nt = s * P + h;
        if (nt < SJP_NT) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int t = 8 * nt + 2 * q + e;
            float gv[NV];
            sjp_lds<NV>(Gs, t * SS + cw, gv);
#pragma unroll
            for (int i = 0; i < NMT; ++i)
#pragma unroll
              for (int r = 0; r < 2; ++r)
                gv[2 * i + r] *= sjp_sg(acc[s][i][2 * r + e], sg_a, sg_c, sg_d);
            sjp_sts<NV>(Gs, t * SS + cw, gv);
          }
        }
      }
    }
    __syncthreads();
    // 2. grad_X^T = GH^T W, stored from the accumulators
    {
      SJP_STEP12_IDS(sjp_opaque(warp));
      float acc[SJP_NTP][NMT][4];
#pragma unroll
      for (int s = 0; s < SJP_NTP; ++s)
#pragma unroll
        for (int i = 0; i < NMT; ++i) acc[s][i][0] = acc[s][i][1] = acc[s][i][2] = acc[s][i][3] = 0.0f;
#if !SJP_WSPLIT
      // W[8k + 2q + e][8 nt + g], nt = 4 s + h, at (8k + 2q + e) SJP_SW + 32 s + c_e:
      // the swizzle only touches bits 3-4 of the column, i.e. h's part
      const int c0 = ((8 * h) ^ sjp_wf(2 * q)) + g, c1 = ((8 * h) ^ sjp_wf(2 * q + 1)) + g;
#endif
#pragma unroll 1
      for (int kk = 0; kk < SJP_NT; ++kk) {
        const int go = sjp_opaque((8 * kk + 2 * q) * SS + cw);
        float v0[NV], v1[NV];
        sjp_lds<NV>(Gs, go, v0);
        sjp_lds<NV>(Gs, go + SS, v1);
        // float32: GH split hi/lo; half types: GH rounded to tf32 (grad_X is stored
        // in the half type, whose rounding is coarser)
        unsigned int ah[NMT][4], al[NMT][4];
        sjp_afrags<NMT, SJP_X_LO, true>(v0, v1, ah, al);
#if SJP_WSPLIT
        const int wo = sjp_opaque(sjp_wrow(g, q, kk) + 8 * h * SJP_SW);
#else
        const int wb = sjp_opaque((8 * kk + 2 * q) * SJP_SW);
#endif
#pragma unroll
        for (int s = 0; s < SJP_NTP; ++s) {
          if (s * P + h < SJP_NT) {
            unsigned int bh[2], bl[2];
#if SJP_WSPLIT
            sjp_wfrag<true>(Wth, Wtl, wo + 8 * P * s * SJP_SW, bh, bl);
#else
            sjp_split(Wh[wb + 32 * s + c0], bh[0], bl[0]);
            sjp_split(Wh[wb + SJP_SW + 32 * s + c1], bh[1], bl[1]);
#endif
#pragma unroll
            for (int i = 0; i < NMT; ++i)
              sjp_mma3<SJP_X_LO, true>(acc[s][i], ah[i], al[i], bh, bl);
          }
        }
      }
#pragma unroll
      for (int s = 0; s < SJP_NTP; ++s) {
        const int nt = s * P + h;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = 8 * nt + 2 * q + e;
          if (nt < SJP_NT && j < SJP_T) {
            float v[NV];
#pragma unroll
            for (int i = 0; i < NMT; ++i) {
              v[2 * i] = acc[s][i][e];
              v[2 * i + 1] = acc[s][i][2 + e];
            }
            sjp_store_cols<NV>(grad_x, j, m_base + cw, M, v);
          }
        }
      }
    }
    // 3. grad_W += GH X^T over this tile's columns (k = column)
    SJP_STEP3_IDS(sjp_opaque(warp));
    if (busy3) {
#pragma unroll 1
      for (int ks = kg; ks < SJP_KS; ks += SJP_KG) {
        const int c = 8 * ks + q, r0 = 16 * tt + g;
        const float a[4] = {Gs[r0 * SS + c], Gs[(r0 + 8) * SS + c], Gs[r0 * SS + c + 4],
                            Gs[(r0 + 8) * SS + c + 4]};
        if (gb_owner) {
          gb3[0] += a[0] + a[2];
          gb3[1] += a[1] + a[3];
        }
        unsigned int ah[4], al[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) sjp_split(a[e], ah[e], al[e]);
#pragma unroll
        for (int jj = 0; jj < SJP_JG; ++jj) {
          const int jt = jt0 + jj;
          if (jt < SJP_NT) {
            const int rj = 8 * jt + g;
            unsigned int bh[2], bl[2];
            if (SJP_X_LO) {
              sjp_split(Xs[rj * SS + c], bh[0], bl[0]);
              sjp_split(Xs[rj * SS + c + 4], bh[1], bl[1]);
            } else {
              bh[0] = __float_as_uint((float)Xs[rj * SS + c]);
              bh[1] = __float_as_uint((float)Xs[rj * SS + c + 4]);
              bl[0] = bl[1] = 0u;
            }
            sjp_mma3<true, SJP_X_LO>(acc3[jj], ah, al, bh, bl);
          }
        }
      }
    }
    __syncthreads();
  }

  // grad_W and grad_b: each warp's k-group share, then the k-groups added in order
  SJP_STEP3_IDS(warp);
  // over W, b and the staged tiles (no longer needed)
  sjp_smem_t red = smem;                                // [SJP_KG][SJP_TM3][SJP_RS]
  sjp_smem_t gred = smem + SJP_KG * SJP_TM3 * SJP_RS;   // [SJP_KG][SJP_TM3]
#pragma unroll
  for (int e = 0; e < 2; ++e) {  // add the 4 lanes of a row (fixed order)
    gb3[e] += __shfl_xor_sync(SJP_FULL_MASK, gb3[e], 1);
    gb3[e] += __shfl_xor_sync(SJP_FULL_MASK, gb3[e], 2);
  }
  if (gb_owner && q == 0) {
    gred[kg * SJP_TM3 + 16 * tt + g] = gb3[0];
    gred[kg * SJP_TM3 + 16 * tt + g + 8] = gb3[1];
  }
  if (busy3) {
#pragma unroll
    for (int jj = 0; jj < SJP_JG; ++jj) {
      const int jt = jt0 + jj;
      if (jt < SJP_NT) {
        const int row = kg * SJP_TM3 + 16 * tt + g, col = 8 * jt + 2 * q;
        sjp_sts<2>(red, row * SJP_RS + col, acc3[jj]);
        sjp_sts<2>(red, (row + 8) * SJP_RS + col, acc3[jj] + 2);
      }
    }
  }
  __syncthreads();
  // this block's partial [grad_W | grad_b], then the sums over the blocks
  constexpr int NP = SJP_T * SJP_T + SJP_T;
  float* part = work + (sjp_index)blockIdx.x * NP;
  for (int i = tid; i < SJP_T * SJP_T; i += blockDim.x) {
    const int t = i / SJP_T, j = i - t * SJP_T;
    float sum = 0.0f;
    for (int k = 0; k < SJP_KG; ++k) sum += red[(k * SJP_TM3 + t) * SJP_RS + j];
    part[i] = sum;
  }
  for (int t = tid; t < SJP_T; t += blockDim.x) {
    float sum = 0.0f;
    for (int k = 0; k < SJP_KG; ++k) sum += gred[k * SJP_TM3 + t];
    part[SJP_T * SJP_T + t] = sum;
  }
  sjp_finish_sums(work, counters, NP, grad_w, SJP_T * SJP_T, grad_b, 1.0f);
}
#endif
