// CUDA kernels of the fused ONE loss: forward and backward of a row in one kernel.
//
// Torch-free (only the CUDA runtime): the torch binding calls the C-ABI launcher at the bottom.
//
// Work decomposition: a group of G threads owns one row n (G = 32, a warp, with 8 rows per
// 256-thread block; or G = blockDim.x, 64..256 threads, one row per block, for wide rows).
// Lane l of the group handles the class vectors c0 = (l + j G) VEC, j = 0, 1, ...:
//   pass 1  load z[i, c0 : c0+VEC] for every branch i (16-byte loads where aligned), form
//           z_e = sum_i g_i z_i, and absorb the VEC classes into the thread's online state
//           (running max + rescaled sums, one_loss_row.h);
//   reduce  merge the G states: warp shuffles, then shared memory across the group's warps;
//   pass 2  (compute_grad) reload the same classes (mostly L1/L2 hits), write d loss_n / d z_i
//           (VEC-wide stores) and accumulate d loss_n / d g_i, reduced like pass 1.
// Offsets are int64 (N * m * C may exceed 2^31). Nothing here allocates or synchronises with the
// host, and the KL weight is read from device memory: the launch can be captured in a CUDA graph.
#include <cuda_runtime.h>

#include "one_loss_api.h"
#include "one_loss_row.h"

namespace one_fast {
namespace {

constexpr int kMaxBlock = 256;            // threads per block, upper bound (launch bounds)
constexpr int kMaxWarps = kMaxBlock / 32;  // warps whose partial states share memory holds
constexpr unsigned kFullMask = 0xffffffffu;

// VEC consecutive elements as one aligned load/store (16 bytes for fp32 x4, bf16 x8).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, typename A, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ src, A* dst) {
  const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(src);
#pragma unroll
  for (int k = 0; k < VEC; ++k) dst[k] = Cvt<T>::template load<A>(p.v[k]);
}

template <typename T, typename A, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ dst, const A* src) {
  Pack<T, VEC> p;
#pragma unroll
  for (int k = 0; k < VEC; ++k) p.v[k] = Cvt<T>::template store<A>(src[k]);
  *reinterpret_cast<Pack<T, VEC>*>(dst) = p;
}

// ---- group reductions -------------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ void shfl_merge_lse(Lse<A>& a, int offset, A inv_t) {
  Lse<A> b;
  b.max = __shfl_xor_sync(kFullMask, a.max, offset);
  b.rest = __shfl_xor_sync(kFullMask, a.rest, offset);
  b.rest_t = __shfl_xor_sync(kFullMask, a.rest_t, offset);
  lse_merge(a, b, inv_t);
}

// Merge the online states of a warp's 32 lanes (xor butterflies, field by field so no second
// copy of the state is live), then broadcast lane 0's result: every lane of a row must use
// bit-identical constants in pass 2, and contracted multiply-adds make a + b and b + a differ.
template <typename A, int MAXM>
__device__ __forceinline__ void warp_merge(RowAccum<A, MAXM>& s, int m, A inv_t) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    // dot_i is weighted by the ensemble's q-weights: rescale both sides to the merged max.
    const A other_max = __shfl_xor_sync(kFullMask, s.ens.max, offset);
    const A mx = one_max(s.ens.max, other_max);
    const A fa = one_exp((s.ens.max - mx) * inv_t);
    const A fb = one_exp((other_max - mx) * inv_t);
#pragma unroll
    for (int i = 0; i < MAXM; ++i) {
      if (i < m) {  // m is uniform: every lane takes the same branches
        const A other_dot = __shfl_xor_sync(kFullMask, s.dot[i], offset);
        s.dot[i] = s.dot[i] * fa + other_dot * fb;
      }
    }
    shfl_merge_lse(s.ens, offset, inv_t);
#pragma unroll
    for (int i = 0; i < MAXM; ++i) {
      if (i < m) shfl_merge_lse(s.br[i], offset, inv_t);
    }
  }
  s.ens.max = __shfl_sync(kFullMask, s.ens.max, 0);
  s.ens.rest = __shfl_sync(kFullMask, s.ens.rest, 0);
  s.ens.rest_t = __shfl_sync(kFullMask, s.ens.rest_t, 0);
#pragma unroll
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) {
      s.br[i].max = __shfl_sync(kFullMask, s.br[i].max, 0);
      s.br[i].rest = __shfl_sync(kFullMask, s.br[i].rest, 0);
      s.br[i].rest_t = __shfl_sync(kFullMask, s.br[i].rest_t, 0);
      s.dot[i] = __shfl_sync(kFullMask, s.dot[i], 0);
    }
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;  // xor butterflies add the same pairs in every lane: all lanes hold the same sum
}

// ---- the kernel -------------------------------------------------------------------------------

// T: logits/grad_logits element type; A: accumulator (float, or double for double logits);
// VEC: classes per thread load (C, the strides and the pointers are multiples of VEC);
// MAXM: branches the registers are laid out for (m <= MAXM; 4 covers the usual m = 3).
// Registers hold MAXM x VEC logits, the row state (4 MAXM + 3 values) and the gates; the launch
// bounds ask for two 256-thread blocks per SM (<= 128 registers a thread) in single precision,
// where 128 fits the MAXM = 4 kernels without spills; double (gradchecks) may use more.
template <typename T, typename A, int VEC, int MAXM>
__global__ void __launch_bounds__(kMaxBlock, sizeof(A) == 8 ? 1 : 2)
    one_loss_kernel(const OneLossArgs args, int group) {
  __shared__ RowAccum<A, MAXM> s_acc[kMaxWarps];  // multi-warp groups: one state per warp
  __shared__ A s_dg[kMaxWarps][MAXM];

  const int G = group;  // 32, or blockDim.x (then the block is one group)
  const int rows_per_block = blockDim.x / G;
  const int lane = threadIdx.x % G;
  const int warp = threadIdx.x / 32;
  const int warp_lane = threadIdx.x % 32;
  const int nwarps = G / 32;  // warps in a group

  const int m = static_cast<int>(args.m);
  const int64_t C = args.c;
  const T* __restrict__ logits = static_cast<const T*>(args.logits);
  T* __restrict__ grad_logits = static_cast<T*>(args.grad_logits);
  A* __restrict__ loss = static_cast<A*>(args.loss);
  A* __restrict__ ce_branch = static_cast<A*>(args.ce_branch);
  A* __restrict__ ce_ensemble = static_cast<A*>(args.ce_ensemble);
  A* __restrict__ kl = static_cast<A*>(args.kl);

  const A temperature = static_cast<A>(args.temperature);
  const A inv_t = A(1) / temperature;
  const A w = static_cast<A>(*args.kl_weight);  // device read: no host sync
  const A wt = w * temperature;                 // w T, scale of the KL gradients
  const A wtt = wt * temperature;               // w T^2, weight of the KL terms
  const bool detach = args.detach_teacher != 0;
  const int64_t col_step = static_cast<int64_t>(G) * VEC;

  for (int64_t n = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / G;
       n < args.n; n += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    const int64_t y = args.target[n * args.target_stride];
    T* grow = args.compute_grad ? grad_logits + n * m * C : nullptr;  // (m, C) row block

    if (y == args.ignore_index) {  // ignored row: every term and gradient is 0
      if (lane == 0) {
        loss[n] = A(0);
        ce_ensemble[n] = A(0);
        for (int i = 0; i < m; ++i) ce_branch[n * m + i] = kl[n * m + i] = A(0);
      }
      if (args.compute_grad) {
        A zeros[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) zeros[k] = A(0);
        for (int i = 0; i < m; ++i) {
          for (int64_t c0 = static_cast<int64_t>(lane) * VEC; c0 < C; c0 += col_step) {
            store_vec<T, A, VEC>(grow + i * C + c0, zeros);
          }
        }
        if (lane < m) static_cast<A*>(args.grad_gate)[n * m + lane] = A(0);
      }
      continue;  // uniform across the group (one row per group)
    }
    const bool in_range = y >= 0 && y < C;
    const A poison = in_range ? A(0) : quiet_nan<A>();

    A g[MAXM];
#pragma unroll
    for (int i = 0; i < MAXM; ++i) {
      g[i] = i < m ? load_any<A>(args.gate, args.gate_dtype,
                                 n * args.gate_stride_n + i * args.gate_stride_m)
                   : A(0);
    }
    const T* zrow = logits + n * args.logits_stride_n;

    // z[i][k]: branch i, class c0 + k, in registers; ze[k] = sum_i g_i z[i][k].
    A z[MAXM][VEC];
    A ze[VEC];
    A tmp[2 * VEC];  // per-class temporaries of accum_absorb / grad_columns
    auto load_classes = [&](int64_t c0) {
#pragma unroll
      for (int i = 0; i < MAXM; ++i) {
        if (i < m) load_vec<T, A, VEC>(zrow + i * args.logits_stride_m + c0, z[i]);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        A e = A(0);
#pragma unroll
        for (int i = 0; i < MAXM; ++i) {
          if (i < m) e += g[i] * z[i][k];
        }
        ze[k] = e;
      }
    };

    // ---- pass 1: online normalisers and KL dot products over this lane's classes
    RowAccum<A, MAXM> acc;
    accum_init(acc);
#pragma unroll 1  // one vector per step: unrolling would multiply the live registers
    for (int64_t c0 = static_cast<int64_t>(lane) * VEC; c0 < C; c0 += col_step) {
      load_classes(c0);
      accum_absorb(acc, m, inv_t, Fixed<VEC>(), &z[0][0], Fixed<VEC>(), ze, tmp);
    }
    warp_merge(acc, m, inv_t);
    if (nwarps > 1) {  // group = block: combine the warps through shared memory
      if (warp_lane == 0) s_acc[warp] = acc;
      __syncthreads();
      acc = s_acc[0];
      for (int wi = 1; wi < nwarps; ++wi) accum_merge(acc, s_acc[wi], m, inv_t);
    }
    RowStats<A, MAXM> st;
    accum_finalize(acc, m, inv_t, st);

    if (lane == 0) {
      A z_y[MAXM];
      A ze_y = A(0);
#pragma unroll
      for (int i = 0; i < MAXM; ++i) {
        if (i < m) {
          z_y[i] = in_range ? Cvt<T>::template load<A>(zrow[i * args.logits_stride_m + y]) : A(0);
          ze_y += g[i] * z_y[i];
        }
      }
      A ce_row[MAXM];
      A kl_row[MAXM];
      A ce_e;
      loss[n] = row_terms(st, m, wtt, poison, z_y, ze_y, ce_row, &ce_e, kl_row);
      ce_ensemble[n] = ce_e;
#pragma unroll
      for (int i = 0; i < MAXM; ++i) {
        if (i < m) {
          ce_branch[n * m + i] = ce_row[i];
          kl[n * m + i] = kl_row[i];
        }
      }
    }

    // ---- pass 2: gradients
    if (args.compute_grad) {
      A dg[MAXM];
#pragma unroll
      for (int i = 0; i < MAXM; ++i) dg[i] = A(0);
#pragma unroll 1
      for (int64_t c0 = static_cast<int64_t>(lane) * VEC; c0 < C; c0 += col_step) {
        load_classes(c0);
        grad_columns(st, m, inv_t, wt, detach, poison, Fixed<VEC>(), c0, y, g, &z[0][0],
                     Fixed<VEC>(), ze, tmp, dg);
#pragma unroll
        for (int i = 0; i < MAXM; ++i) {
          if (i < m) store_vec<T, A, VEC>(grow + i * C + c0, z[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < MAXM; ++i) {
        if (i < m) dg[i] = warp_sum(dg[i]);
      }
      if (nwarps > 1) {
        if (warp_lane == 0) {
#pragma unroll
          for (int i = 0; i < MAXM; ++i) s_dg[warp][i] = dg[i];
        }
        __syncthreads();
        if (lane == 0) {
#pragma unroll
          for (int i = 0; i < MAXM; ++i) {
            for (int wi = 1; wi < nwarps; ++wi) dg[i] += s_dg[wi][i];
          }
        }
      }
      if (lane == 0) {
#pragma unroll
        for (int i = 0; i < MAXM; ++i) {
          if (i < m) static_cast<A*>(args.grad_gate)[n * m + i] = dg[i];
        }
      }
    }
    if (nwarps > 1) __syncthreads();  // shared memory is reused by the block's next row
  }
}

// ---- launcher ---------------------------------------------------------------------------------

template <typename T, typename A, int VEC, int MAXM>
void launch(const OneLossArgs& a, int sm_count, cudaStream_t stream) {
  // Threads per row: enough that a thread handles about 4 vectors per branch and pass, between
  // a warp (narrow rows, many rows per block) and a 256-thread block (wide rows).
  const int64_t vectors = (a.c + VEC - 1) / VEC;
  int group = 32;
  while (group < kMaxBlock && static_cast<int64_t>(group) * 4 < vectors) group *= 2;
  // Few rows cannot fill the GPU with warp-sized groups: spread each row over more threads.
  while (group < kMaxBlock && a.n * group < static_cast<int64_t>(sm_count) * 512 &&
         static_cast<int64_t>(group) * 2 <= vectors) {
    group *= 2;
  }
  const int block = group == 32 ? kMaxBlock : group;
  const int64_t rows_per_block = block / group;
  const int64_t blocks = (a.n + rows_per_block - 1) / rows_per_block;
  const unsigned grid = static_cast<unsigned>(blocks < 0x7fffffff ? blocks : 0x7fffffff);
  one_loss_kernel<T, A, VEC, MAXM><<<grid, block, 0, stream>>>(a, group);
}

// Can classes be moved VEC at a time: pointers, row strides and C all multiples of VEC elements.
bool aligned_for(const OneLossArgs& a, int vec, int elem_size) {
  const uintptr_t bytes = static_cast<uintptr_t>(vec) * elem_size;
  const bool ptrs = reinterpret_cast<uintptr_t>(a.logits) % bytes == 0 &&
                    (!a.compute_grad || reinterpret_cast<uintptr_t>(a.grad_logits) % bytes == 0);
  return ptrs && a.c % vec == 0 && a.logits_stride_n % vec == 0 && a.logits_stride_m % vec == 0;
}

// Instantiations (each is a fully unrolled kernel, so the list is kept short):
//   fp32        VEC 4 (16 B) x MAXM {4, 8},  VEC 1 x MAXM {4, 8}
//   bf16, fp16  VEC 8 (16 B) x MAXM 4, VEC 4 (8 B) x MAXM {4, 8},  VEC 1 x MAXM {4, 8}
//   fp64        VEC 1 x MAXM 8 (gradchecks, not speed)
// VEC x MAXM <= 32 keeps the logits of a step in registers next to the row state. Every kernel
// picked for m <= 4 fits the launch bounds without spilling (CI checks: native_ptxas_check.py);
// the MAXM = 8 vector kernels spill 112-168 bytes on sm_90, so m <= 4 never falls back to them
// (bf16 with C % 8 != 0, e.g. CIFAR-100's C = 100, takes VEC 4 x MAXM 4).
template <typename T>
void dispatch_16bit(const OneLossArgs& a, int sms, cudaStream_t stream) {
  const bool small_m = a.m <= 4;
  if (small_m && aligned_for(a, 8, sizeof(T))) {
    launch<T, float, 8, 4>(a, sms, stream);
  } else if (small_m && aligned_for(a, 4, sizeof(T))) {
    launch<T, float, 4, 4>(a, sms, stream);
  } else if (aligned_for(a, 4, sizeof(T))) {
    launch<T, float, 4, 8>(a, sms, stream);
  } else if (small_m) {
    launch<T, float, 1, 4>(a, sms, stream);
  } else {
    launch<T, float, 1, 8>(a, sms, stream);
  }
}

void dispatch_f32(const OneLossArgs& a, int sms, cudaStream_t stream) {
  const bool small_m = a.m <= 4;
  if (aligned_for(a, 4, sizeof(float))) {
    if (small_m) {
      launch<float, float, 4, 4>(a, sms, stream);
    } else {
      launch<float, float, 4, 8>(a, sms, stream);
    }
  } else if (small_m) {
    launch<float, float, 1, 4>(a, sms, stream);
  } else {
    launch<float, float, 1, 8>(a, sms, stream);
  }
}

int sm_count_of_current_device() {
  static int cache[64] = {};  // per device; a racing first write stores the same value
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
  if (device >= 0 && device < 64 && cache[device] > 0) return cache[device];
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      count <= 0) {
    count = 132;
  }
  if (device >= 0 && device < 64) cache[device] = count;
  return count;
}

}  // namespace
}  // namespace one_fast

extern "C" int one_fast_one_loss_cuda(const OneLossArgs* args, cudaStream_t stream) {
  using namespace one_fast;
  if (args->n <= 0) return 0;
  if (args->m < 1 || args->m > ONE_FAST_MAX_BRANCHES || args->c < 1) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int sms = sm_count_of_current_device();
  switch (args->logits_dtype) {
    case ONE_FAST_F32: dispatch_f32(*args, sms, stream); break;
    case ONE_FAST_BF16: dispatch_16bit<bf16>(*args, sms, stream); break;
    case ONE_FAST_F16: dispatch_16bit<f16>(*args, sms, stream); break;
    case ONE_FAST_F64: launch<double, double, 1, ONE_FAST_MAX_BRANCHES>(*args, sms, stream); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

extern "C" const char* one_fast_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}
