// Dense PSN (also masked PSN through its masked weight):  H = W X + b,  S = Θ(H);
// X/S/grads [T, M] time-major, W [T, T] (float32), b [T] (float32). T is a compile-time
// constant (SJP_T, 1..64): every loop over T unrolls and every array is sized by T.
//
// Forward (sjp_psn_forward), FP32 FMAs (H decides spikes, so it is computed exactly as
// the torch path does, in float32):
// * T <= 32: blocks of 128 threads; lane l of warp w in tile i owns the SJP_FV columns
//   i * 128 SJP_FV + w * 32 SJP_FV + l + 32 v (v < SJP_FV, chosen so that T SJP_FV <= 32):
//   its column of X is loaded once into registers (coalesced: a warp reads 32
//   consecutive columns of a row), then for each t, h = b_t + W[t] . x with W read from
//   shared memory as float4 broadcasts (every lane reads the same address: one
//   wavefront), and S[t] is stored at once.
// * 32 < T <= 64: blocks of SJP_FP x 64 threads; the SJP_FP = ceil(T / 16) groups of 64
//   threads share the tile's 128 columns, each group owns 16 of the t's: per j it loads
//   x_j of its 2 columns (the other groups' loads of the same x hit in L1) and
//   accumulates 16 x 2 outputs from W^T[j][t0 .. t0 + 15] (float4 broadcasts).
// Bytes: read T*M*sizeof(X), write T*M*sizeof(S); nothing is saved.
//
// Backward (sjp_psn_backward), tensor cores (mma.sync m16n8k8 tf32, float32
// accumulation), blocks of 256 threads (8 warps) walking tiles of 32 columns:
//   0. X and grad_S of the tile are staged in shared memory as float, [Tm][32] with an
//      XOR swizzle (conflict-free for every fragment pattern below);
//   1. H = W X + b (mma), then GH = grad_S * surrogate'(H) in place of grad_S;
//   2. grad_X = W^T GH (mma), stored from the accumulator fragments;
//   3. grad_W += GH X^T (mma) into accumulators held for the whole kernel, and
//      grad_b += sum_c GH (from the fragments of step 1).
// Every operand is split into a tf32 high and low part and each product is
// a_hi b_hi + a_hi b_lo + a_lo b_hi ("3xTF32", ~fp32 accuracy); the low part of X is
// dropped for float16/bfloat16 input, which tf32 holds exactly. The block's grad_W and
// grad_b are written as one partial per block (gw_partial[block][T][T],
// gb_partial[block][T]); the launcher adds the partials over blocks in a fixed order.
// Bytes: read 2*T*M (X, grad_S), write T*M (grad_X); H is recomputed, never stored.
#include "common.cuh"

#ifndef SJP_T
#error "psn.cu needs a compile-time T: -DSJP_T=<1..64>"
#endif
#if SJP_T < 1 || SJP_T > 64
#error "SJP_T must be in [1, 64]"
#endif

// ------------------------------------------------------------------- forward
#define SJP_TP (((SJP_T + 3) / 4) * 4)  // row stride of W in shared memory (float4 rows)
#if SJP_T <= 32
#define SJP_FWD_BLOCK 128
#define SJP_FV (SJP_T <= 4 ? 8 : SJP_T <= 8 ? 4 : SJP_T <= 16 ? 2 : 1)
#define SJP_FWD_COLS (SJP_FWD_BLOCK * SJP_FV)
#else
#define SJP_FP ((SJP_T + 15) / 16)       // t-groups of 16
#define SJP_FWD_BLOCK (SJP_FP * 64)
#define SJP_FWD_COLS 128
#define SJP_TQ (SJP_FP * 16)             // padded t extent of W^T rows
#endif

__device__ __forceinline__ float4 sjp_lds4(sjp_smem_t s, int i) {
#ifdef SJP_INSTRUMENT
  SJP_EMU_SHARED(SJP_SMEM_RAW(s) + i, 16, 0);
  const float* p = SJP_SMEM_RAW(s) + i;
  return float4{p[0], p[1], p[2], p[3]};
#else
  return *reinterpret_cast<const float4*>(SJP_SMEM_RAW(s) + i);
#endif
}

// at least 1024 resident threads per SM (50% occupancy): at most 64 registers
extern "C" __global__ void __launch_bounds__(SJP_FWD_BLOCK, 1024 / SJP_FWD_BLOCK)
    sjp_psn_forward(const sjp_scalar* __restrict__ x, const float* __restrict__ W,
                    const float* __restrict__ b, sjp_scalar* __restrict__ s,
                    const sjp_index M) {
  SJP_DYN_SMEM(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#if SJP_T <= 32
  // W[t][j] at t * SJP_TP + j (zero beyond T), then b
  sjp_smem_t W_s = smem, b_s = smem + SJP_T * SJP_TP;
  for (int i = tid; i < SJP_T * SJP_TP; i += blockDim.x) {
    const int t = i / SJP_TP, j = i - t * SJP_TP;
    W_s[i] = j < SJP_T ? W[t * SJP_T + j] : 0.0f;
  }
  for (int i = tid; i < SJP_T; i += blockDim.x) b_s[i] = b[i];
  __syncthreads();
  const sjp_index n_tiles = (M + SJP_FWD_COLS - 1) / SJP_FWD_COLS;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index base = tile * SJP_FWD_COLS + warp * 32 * SJP_FV + lane;
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
        const float4 w = sjp_lds4(W_s, t * SJP_TP + j);
#pragma unroll
        for (int v = 0; v < SJP_FV; ++v) {
          acc[v] += w.x * xv[j][v];
          acc[v] += w.y * xv[j + 1][v];
          acc[v] += w.z * xv[j + 2][v];
          acc[v] += w.w * xv[j + 3][v];
        }
      }
#pragma unroll
      for (int v = 0; v < SJP_FV; ++v) {
        const sjp_index m = base + 32 * v;
        if (m < M) sjp_store(s, (sjp_index)t * M + m, sjp_heaviside(acc[v]));
      }
    }
  }
#else
  // W^T[j][t] at j * SJP_TQ + t (zero beyond T), then b (zero beyond T)
  sjp_smem_t Wt_s = smem, b_s = smem + SJP_T * SJP_TQ;
  for (int i = tid; i < SJP_T * SJP_TQ; i += blockDim.x) {
    const int j = i / SJP_TQ, t = i - j * SJP_TQ;
    Wt_s[i] = t < SJP_T ? W[t * SJP_T + j] : 0.0f;
  }
  for (int i = tid; i < SJP_TQ; i += blockDim.x) b_s[i] = i < SJP_T ? b[i] : 0.0f;
  __syncthreads();
  const int group = tid >> 6, t0 = group * 16;
  const int col = ((tid & 63) >> 5) * 64 + lane;  // this thread's first column in tile
  const sjp_index n_tiles = (M + SJP_FWD_COLS - 1) / SJP_FWD_COLS;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index m0 = tile * SJP_FWD_COLS + col, m1 = m0 + 32;
    float acc[16][2];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i][0] = acc[i][1] = b_s[t0 + i];
#pragma unroll 1
    for (int j = 0; j < SJP_T; ++j) {
      const float x0 = m0 < M ? sjp_load(x, (sjp_index)j * M + m0) : 0.0f;
      const float x1 = m1 < M ? sjp_load(x, (sjp_index)j * M + m1) : 0.0f;
#pragma unroll
      for (int i = 0; i < 16; i += 4) {
        const float4 w = sjp_lds4(Wt_s, j * SJP_TQ + t0 + i);
        acc[i][0] += w.x * x0;
        acc[i + 1][0] += w.y * x0;
        acc[i + 2][0] += w.z * x0;
        acc[i + 3][0] += w.w * x0;
        acc[i][1] += w.x * x1;
        acc[i + 1][1] += w.y * x1;
        acc[i + 2][1] += w.z * x1;
        acc[i + 3][1] += w.w * x1;
      }
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int t = t0 + i;
      if (t < SJP_T) {
        if (m0 < M) sjp_store(s, (sjp_index)t * M + m0, sjp_heaviside(acc[i][0]));
        if (m1 < M) sjp_store(s, (sjp_index)t * M + m1, sjp_heaviside(acc[i][1]));
      }
    }
  }
#endif
}

// ------------------------------------------------------------------ backward
#define SJP_BWD_BLOCK 256
#define SJP_BWD_WARPS 8
#define SJP_C 32                               // columns per tile
#define SJP_TM (((SJP_T + 15) / 16) * 16)      // rows (t or j) padded to the mma's 16
#define SJP_TK (((SJP_T + 7) / 8) * 8)         // reduction extent over t or j (k = 8)
#define SJP_TN SJP_TK                          // grad_W columns (j), padded to 8
#define SJP_WS (SJP_TK + ((36 - SJP_TK % 32) % 32))  // W row stride, = 4 (mod 32)
#if SJP_DTYPE == 0
#define SJP_X_LO 1  // float32 X needs its tf32 low part
#else
#define SJP_X_LO 0  // float16 / bfloat16 X is exact in tf32
#endif

// Warp work. Each warp owns ONE 16-row m-tile and several 8-column n-tiles, so it
// loads (and splits) the A fragment of a k-step once and reuses it for every n-tile.
#define SJP_NM (SJP_TM / 16)                    // m-tiles (1..4)
#define SJP_WPM (SJP_BWD_WARPS / SJP_NM)        // warps per m-tile (8, 4, 2, 2)
// phases 1/2: outputs [SJP_TM][SJP_C]: SJP_C / 8 = 4 n-tiles per m-tile
#define SJP_NN12 (SJP_C / 8)
#define SJP_NP12 ((SJP_NN12 + SJP_WPM - 1) / SJP_WPM)  // n-tiles per warp
// phase 3: outputs [SJP_TM][SJP_TN]; if there are fewer n-tiles than warps per
// m-tile, the warps of an n-tile split the tile's 4 k-steps (k-groups) instead
#define SJP_NN3 (SJP_TN / 8)
#define SJP_KG3 (SJP_NN3 >= SJP_WPM ? 1 : (SJP_WPM / SJP_NN3 > 4 ? 4 : SJP_WPM / SJP_NN3))
#define SJP_NP3 (SJP_NN3 >= SJP_WPM ? (SJP_NN3 + SJP_WPM - 1) / SJP_WPM : 1)
#define SJP_RS (SJP_TN + 4)  // row stride of the grad_W reduction buffer (<= 2-way)

// swizzled [rows][32] layout of the staged tiles: element (r, c) at r * 32 + (c ^ sw(r))
__device__ __forceinline__ int sjp_sw(int r, int c) {
  return r * SJP_C + (c ^ (((r & 3) << 3) | (r & 4)));
}

// a fragment (rows r0 + g, r0 + g + 8; cols k0 + q, k0 + q + 4) of a row-major smem
// matrix with row stride ld, split into tf32 hi/lo
__device__ __forceinline__ void sjp_frag_a_rowmajor(sjp_smem_t A, int ld, int r0, int k0,
                                                    int g, int q, unsigned int* hi,
                                                    unsigned int* lo) {
  const float v[4] = {A[(r0 + g) * ld + k0 + q], A[(r0 + g + 8) * ld + k0 + q],
                      A[(r0 + g) * ld + k0 + q + 4], A[(r0 + g + 8) * ld + k0 + q + 4]};
#pragma unroll
  for (int i = 0; i < 4; ++i) sjp_split_tf32(v[i], hi + i, lo + i);
}

// the same fragment of a swizzled staged tile
__device__ __forceinline__ void sjp_frag_a_tile(sjp_smem_t A, int r0, int k0, int g, int q,
                                                unsigned int* hi, unsigned int* lo) {
  const float v[4] = {A[sjp_sw(r0 + g, k0 + q)], A[sjp_sw(r0 + g + 8, k0 + q)],
                      A[sjp_sw(r0 + g, k0 + q + 4)], A[sjp_sw(r0 + g + 8, k0 + q + 4)]};
#pragma unroll
  for (int i = 0; i < 4; ++i) sjp_split_tf32(v[i], hi + i, lo + i);
}

// b fragment B[k][n] (rows k0 + q, k0 + q + 4; col n0 + g) where B[k][n] = tile[k][n]
__device__ __forceinline__ void sjp_frag_b_kn(sjp_smem_t B, int k0, int n0, int g, int q,
                                              bool need_lo, unsigned int* hi,
                                              unsigned int* lo) {
  const float v[2] = {B[sjp_sw(k0 + q, n0 + g)], B[sjp_sw(k0 + q + 4, n0 + g)]};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (need_lo) {
      sjp_split_tf32(v[i], hi + i, lo + i);
    } else {
      hi[i] = sjp_to_tf32(v[i]);
      lo[i] = 0u;
    }
  }
}

// b fragment B[k][n] = tile[n][k] (X^T): rows k0 + q, k0 + q + 4; col n0 + g
__device__ __forceinline__ void sjp_frag_b_nk(sjp_smem_t B, int k0, int n0, int g, int q,
                                              bool need_lo, unsigned int* hi,
                                              unsigned int* lo) {
  const float v[2] = {B[sjp_sw(n0 + g, k0 + q)], B[sjp_sw(n0 + g, k0 + q + 4)]};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (need_lo) {
      sjp_split_tf32(v[i], hi + i, lo + i);
    } else {
      hi[i] = sjp_to_tf32(v[i]);
      lo[i] = 0u;
    }
  }
}

// acc += A B with the 3xTF32 split (the b low part only if b_lo_used)
__device__ __forceinline__ void sjp_mma3(float* acc, const unsigned int* a_hi,
                                         const unsigned int* a_lo, const unsigned int* b_hi,
                                         const unsigned int* b_lo, bool b_lo_used) {
  if (b_lo_used) sjp_mma_tf32(acc, a_hi, b_lo, acc);
  sjp_mma_tf32(acc, a_lo, b_hi, acc);
  sjp_mma_tf32(acc, a_hi, b_hi, acc);
}

extern "C" __global__ void __launch_bounds__(SJP_BWD_BLOCK, 4) sjp_psn_backward(
    const sjp_scalar* __restrict__ x, const sjp_scalar* __restrict__ grad_s,
    const float* __restrict__ W, const float* __restrict__ b,
    sjp_scalar* __restrict__ grad_x, float* __restrict__ gw_partial,
    float* __restrict__ gb_partial, const sjp_index M, const float sg_a,
    const float sg_c, const float sg_d) {
  SJP_DYN_SMEM(smem);
  // [Xs | Gs] staged tiles (SJP_TM x 32 each), then W, W^T (SJP_TM x SJP_WS each), b
  sjp_smem_t Xs = smem, Gs = smem + SJP_TM * SJP_C;
  sjp_smem_t Ws = smem + 2 * SJP_TM * SJP_C, Wts = Ws + SJP_TM * SJP_WS;
  sjp_smem_t bs = Wts + SJP_TM * SJP_WS;
  sjp_smem_t gbs = bs + SJP_TM;  // [SJP_TM][SJP_NN12]: grad_b per row and n-tile
  static_assert(SJP_KG3 * SJP_TM * SJP_RS <= 2 * SJP_TM * (SJP_C + SJP_WS),
                "the grad_W reduction must fit in the staged tiles and W, W^T");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, q = lane & 3;
  for (int i = tid; i < SJP_TM * SJP_WS; i += blockDim.x) {
    const int r = i / SJP_WS, c = i - r * SJP_WS;
    const bool in = r < SJP_T && c < SJP_T;
    Ws[i] = in ? W[r * SJP_T + c] : 0.0f;   // W[t][j]
    Wts[i] = in ? W[c * SJP_T + r] : 0.0f;  // W^T[j][t] = W[t][j]
  }
  for (int i = tid; i < SJP_TM; i += blockDim.x) bs[i] = i < SJP_T ? b[i] : 0.0f;
  for (int i = tid; i < SJP_TM * SJP_NN12; i += blockDim.x) gbs[i] = 0.0f;
  // padding rows of the staged tiles stay zero for the whole kernel
  for (int i = tid; i < 2 * SJP_TM * SJP_C; i += blockDim.x) smem[i] = 0.0f;
  __syncthreads();

  // this warp's m-tile and its n-tiles / k-group in phases 1/2 and 3
  const int mt = warp / SJP_WPM, sub = warp % SJP_WPM;
  const bool busy = mt < SJP_NM;  // warp-uniform
  const int r0 = mt * 16;
  const int nt12 = sub * SJP_NP12;  // first n-tile of phases 1/2
  const int nt3 = SJP_KG3 == 1 ? sub * SJP_NP3 : sub % SJP_NN3;  // first n-tile, phase 3
  const int kg3 = SJP_KG3 == 1 ? 0 : sub / SJP_NN3;               // k-group, phase 3
  const bool busy3 = busy && kg3 < SJP_KG3;
  float acc3[SJP_NP3][4];  // grad_W tiles of this warp, summed over all its tiles
#pragma unroll
  for (int p = 0; p < SJP_NP3; ++p) acc3[p][0] = acc3[p][1] = acc3[p][2] = acc3[p][3] = 0.0f;

  const sjp_index n_tiles = (M + SJP_C - 1) / SJP_C;
#pragma unroll 1
  for (sjp_index tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const sjp_index m_base = tile * SJP_C;
    // 0. stage X and grad_S (coalesced: a warp reads 32 columns of one row)
#pragma unroll 1
    for (int r = warp; r < SJP_T; r += SJP_BWD_WARPS) {
      const sjp_index m = m_base + lane;
      const bool valid = m < M;
      Xs[sjp_sw(r, lane)] = valid ? sjp_load(x, (sjp_index)r * M + m) : 0.0f;
      Gs[sjp_sw(r, lane)] = valid ? sjp_load(grad_s, (sjp_index)r * M + m) : 0.0f;
    }
    __syncthreads();
    // 1. H = W X + b; GH = grad_S surrogate'(H), written over grad_S
    if (busy && nt12 < SJP_NN12) {
      float acc[SJP_NP12][4];
#pragma unroll
      for (int p = 0; p < SJP_NP12; ++p) {
        acc[p][0] = acc[p][1] = bs[r0 + g];
        acc[p][2] = acc[p][3] = bs[r0 + g + 8];
      }
#pragma unroll 1
      for (int k0 = 0; k0 < SJP_TK; k0 += 8) {
        unsigned int a_hi[4], a_lo[4];
        sjp_frag_a_rowmajor(Ws, SJP_WS, r0, k0, g, q, a_hi, a_lo);
#pragma unroll
        for (int p = 0; p < SJP_NP12; ++p) {
          unsigned int b_hi[2], b_lo[2];
          sjp_frag_b_kn(Xs, k0, (nt12 + p) * 8, g, q, SJP_X_LO, b_hi, b_lo);
          sjp_mma3(acc[p], a_hi, a_lo, b_hi, b_lo, SJP_X_LO);
        }
      }
#pragma unroll
      for (int p = 0; p < SJP_NP12; ++p) {
        const int n0 = (nt12 + p) * 8;
        float rsum[2] = {0.0f, 0.0f};  // grad_b parts of rows r0 + g, r0 + g + 8
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = r0 + g + (e >= 2 ? 8 : 0), c = n0 + 2 * q + (e & 1);
          const int idx = sjp_sw(r, c);
          const float gh =
              r < SJP_T
                  ? Gs[idx] * sjp_sg(acc[p][e], sg_a, sg_c, sg_d)
                  : 0.0f;
          Gs[idx] = gh;
          rsum[e >> 1] += gh;
        }
        // add the 4 lanes of a row group (butterfly), then lane q = 0 adds the row's
        // 8 columns to the (row, n-tile) slot this warp alone owns
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          rsum[h] += __shfl_xor_sync(SJP_FULL_MASK, rsum[h], 1);
          rsum[h] += __shfl_xor_sync(SJP_FULL_MASK, rsum[h], 2);
        }
        if (q == 0) {
          gbs[(r0 + g) * SJP_NN12 + nt12 + p] += rsum[0];
          gbs[(r0 + g + 8) * SJP_NN12 + nt12 + p] += rsum[1];
        }
      }
    }
    __syncthreads();
    // 2. grad_X = W^T GH
    if (busy && nt12 < SJP_NN12) {
      float acc[SJP_NP12][4];
#pragma unroll
      for (int p = 0; p < SJP_NP12; ++p) acc[p][0] = acc[p][1] = acc[p][2] = acc[p][3] = 0.0f;
#pragma unroll 1
      for (int k0 = 0; k0 < SJP_TK; k0 += 8) {
        unsigned int a_hi[4], a_lo[4];
        sjp_frag_a_rowmajor(Wts, SJP_WS, r0, k0, g, q, a_hi, a_lo);
#pragma unroll
        for (int p = 0; p < SJP_NP12; ++p) {
          unsigned int b_hi[2], b_lo[2];
          sjp_frag_b_kn(Gs, k0, (nt12 + p) * 8, g, q, true, b_hi, b_lo);
          sjp_mma3(acc[p], a_hi, a_lo, b_hi, b_lo, true);
        }
      }
#pragma unroll
      for (int p = 0; p < SJP_NP12; ++p)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = r0 + g + (e >= 2 ? 8 : 0);
          const sjp_index m = m_base + (nt12 + p) * 8 + 2 * q + (e & 1);
          if (j < SJP_T && m < M) sjp_store(grad_x, (sjp_index)j * M + m, acc[p][e]);
        }
    }
    // 3. grad_W += GH X^T over this tile's columns
    if (busy3 && nt3 < SJP_NN3) {
#pragma unroll 1
      for (int k0 = kg3 * 8; k0 < SJP_C; k0 += 8 * SJP_KG3) {
        unsigned int a_hi[4], a_lo[4];
        sjp_frag_a_tile(Gs, r0, k0, g, q, a_hi, a_lo);
#pragma unroll
        for (int p = 0; p < SJP_NP3; ++p) {
          if (nt3 + p < SJP_NN3) {
            unsigned int b_hi[2], b_lo[2];
            sjp_frag_b_nk(Xs, k0, (nt3 + p) * 8, g, q, SJP_X_LO, b_hi, b_lo);
            sjp_mma3(acc3[p], a_hi, a_lo, b_hi, b_lo, SJP_X_LO);
          }
        }
      }
    }
    __syncthreads();
  }

  // grad_W: each warp writes its tiles (one k-group's share each) to shared memory,
  // then the block adds the k-groups in order: gw_partial[block][t][j]
  // SJP_KG3 x SJP_TM x SJP_RS floats over the staged tiles and W, W^T (no longer
  // needed); b and the grad_b slots lie beyond
  sjp_smem_t red = smem;
  if (busy3 && nt3 < SJP_NN3) {
#pragma unroll
    for (int p = 0; p < SJP_NP3; ++p) {
      if (nt3 + p < SJP_NN3) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = r0 + g + (e >= 2 ? 8 : 0), c = (nt3 + p) * 8 + 2 * q + (e & 1);
          red[(kg3 * SJP_TM + r) * SJP_RS + c] = acc3[p][e];
        }
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < SJP_T * SJP_T; i += blockDim.x) {
    const int r = i / SJP_T, c = i - r * SJP_T;
    float sum = 0.0f;
    for (int kg = 0; kg < SJP_KG3; ++kg) sum += red[(kg * SJP_TM + r) * SJP_RS + c];
    gw_partial[(sjp_index)blockIdx.x * SJP_T * SJP_T + i] = sum;
  }
  __syncthreads();
  // grad_b: the block adds the column tiles of each row in order
  for (int r = tid; r < SJP_T; r += blockDim.x) {
    float sum = 0.0f;
    for (int nt = 0; nt < SJP_NN12; ++nt) sum += gbs[r * SJP_NN12 + nt];
    gb_partial[(sjp_index)blockIdx.x * SJP_T + r] = sum;
  }
}
