// CPU implementation of the fused ONE loss: the row mathematics of one_loss_row.h, compiled by the
// host C++ compiler (no torch, no CUDA). Callers split rows across threads; one call runs a plain
// loop over its rows.
//
// A row's classes go through the online state in chunks of `chunk` columns (default 512). Chunk j
// is absorbed by lane j % kLanes and the lanes are merged at the end, the way GPU threads hold
// strided column sets and merge: so rows with C > chunk exercise both the running-max rescale
// and the merge that the CUDA kernel relies on.
#include <algorithm>
#include <atomic>

#include "one_loss_api.h"
#include "one_loss_row.h"

namespace one_fast {
namespace {

constexpr int kMaxM = ONE_FAST_MAX_BRANCHES;
constexpr int64_t kChunkMax = 512;  // scratch columns per branch (a chunk of <= 18 KiB in fp32)
constexpr int kLanes = 4;

std::atomic<int64_t> g_chunk{kChunkMax};

// Rows [r0, r1). T: logits element type, A: accumulator (float, or double for double logits).
// Inlined into each instruction-set clone of the entry point (see the bottom of the file).
template <typename T, typename A>
ONE_HD void cpu_rows(const OneLossArgs& a, int64_t r0, int64_t r1) {
  const int m = static_cast<int>(a.m);
  const int64_t C = a.c;
  const int64_t chunk = g_chunk.load(std::memory_order_relaxed);
  const T* logits = static_cast<const T*>(a.logits);
  T* grad_logits = static_cast<T*>(a.grad_logits);
  A* loss = static_cast<A*>(a.loss);
  A* ce_branch = static_cast<A*>(a.ce_branch);
  A* ce_ensemble = static_cast<A*>(a.ce_ensemble);
  A* kl = static_cast<A*>(a.kl);

  const A temperature = static_cast<A>(a.temperature);
  const A inv_t = A(1) / temperature;
  const A w = static_cast<A>(*a.kl_weight);
  const A wt = w * temperature;    // w T: scale of the KL gradients
  const A wtt = wt * temperature;  // w T^2: weight of the KL terms in the loss
  const bool detach = a.detach_teacher != 0;

  // Scratch for one chunk in the accumulator type: z[i * kChunkMax + k], ze[k], and the
  // per-class temporaries of accum_absorb / grad_columns.
  A z[kMaxM * kChunkMax];
  A ze[kChunkMax];
  A tmp[2 * kChunkMax];

  // Load classes [c0, c0 + K) of every branch into z and form the ensemble logits.
  auto load_chunk = [&](const T* zrow, const A* g, int64_t c0, int K) {
    for (int i = 0; i < m; ++i) {
      const T* src = zrow + i * a.logits_stride_m + c0;
      A* dst = z + i * kChunkMax;
      for (int k = 0; k < K; ++k) dst[k] = Cvt<T>::template load<A>(src[k]);
    }
    for (int k = 0; k < K; ++k) ze[k] = g[0] * z[k];
    for (int i = 1; i < m; ++i) {
      const A* zi = z + i * kChunkMax;
      for (int k = 0; k < K; ++k) ze[k] += g[i] * zi[k];
    }
  };

  for (int64_t n = r0; n < r1; ++n) {
    const int64_t y = a.target[n * a.target_stride];
    A* ce_row = ce_branch + n * m;
    A* kl_row = kl + n * m;
    if (y == a.ignore_index) {  // ignored row: every term and gradient is 0
      loss[n] = A(0);
      ce_ensemble[n] = A(0);
      for (int i = 0; i < m; ++i) ce_row[i] = kl_row[i] = A(0);
      if (a.compute_grad) {
        const T zero = Cvt<T>::template store<A>(A(0));
        std::fill(grad_logits + n * m * C, grad_logits + (n + 1) * m * C, zero);
        for (int i = 0; i < m; ++i) static_cast<A*>(a.grad_gate)[n * m + i] = A(0);
      }
      continue;
    }
    const bool in_range = y >= 0 && y < C;
    const A poison = in_range ? A(0) : quiet_nan<A>();

    A g[kMaxM];
    for (int i = 0; i < kMaxM; ++i) {
      g[i] = i < m ? load_any<A>(a.gate, a.gate_dtype, n * a.gate_stride_n + i * a.gate_stride_m)
                   : A(0);
    }
    const T* zrow = logits + n * a.logits_stride_n;

    // Pass 1: normalisers and KL over all classes.
    RowAccum<A, kMaxM> lanes[kLanes];
    for (auto& lane : lanes) accum_init(lane);
    int64_t j = 0;
    for (int64_t c0 = 0; c0 < C; c0 += chunk, ++j) {
      const int K = static_cast<int>(std::min(chunk, C - c0));
      load_chunk(zrow, g, c0, K);
      accum_absorb(lanes[j % kLanes], m, inv_t, K, z, static_cast<int>(kChunkMax), ze, tmp);
    }
    for (int l = 1; l < kLanes; ++l) accum_merge(lanes[0], lanes[l], m, inv_t);
    RowStats<A, kMaxM> st;
    accum_finalize(lanes[0], m, inv_t, st);

    A z_y[kMaxM];
    A ze_y = A(0);
    for (int i = 0; i < m; ++i) {
      z_y[i] = in_range ? Cvt<T>::template load<A>(zrow[i * a.logits_stride_m + y]) : A(0);
      ze_y += g[i] * z_y[i];
    }
    loss[n] = row_terms(st, m, wtt, poison, z_y, ze_y, ce_row, ce_ensemble + n, kl_row);

    if (!a.compute_grad) continue;
    // Pass 2: gradients, written chunk by chunk.
    A dg[kMaxM] = {};
    T* grow = grad_logits + n * m * C;
    for (int64_t c0 = 0; c0 < C; c0 += chunk) {
      const int K = static_cast<int>(std::min(chunk, C - c0));
      load_chunk(zrow, g, c0, K);
      grad_columns(st, m, inv_t, wt, detach, poison, K, c0, y, g, z, static_cast<int>(kChunkMax),
                   ze, tmp, dg);
      for (int i = 0; i < m; ++i) {
        const A* src = z + i * kChunkMax;
        T* dst = grow + i * C + c0;
        for (int k = 0; k < K; ++k) dst[k] = Cvt<T>::template store<A>(src[k]);
      }
    }
    for (int i = 0; i < m; ++i) static_cast<A*>(a.grad_gate)[n * m + i] = dg[i];
  }
}

}  // namespace
}  // namespace one_fast

// The row loops are inlined here, so each clone is the whole implementation compiled for its
// instruction set (AVX-512 / AVX2+FMA / baseline), picked once at load time by the dynamic
// linker: vector exp and sums at the widest width the machine has, with a portable build.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define ONE_FAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", \
                                                         "default")))
#else
#define ONE_FAST_CPU_CLONES
#endif

extern "C" ONE_FAST_CPU_CLONES void one_fast_one_loss_cpu(const OneLossArgs* args,
                                                          int64_t row_begin, int64_t row_end) {
  using namespace one_fast;
  switch (args->logits_dtype) {
    case ONE_FAST_F64: cpu_rows<double, double>(*args, row_begin, row_end); break;
    case ONE_FAST_BF16: cpu_rows<bf16, float>(*args, row_begin, row_end); break;
    case ONE_FAST_F16: cpu_rows<f16, float>(*args, row_begin, row_end); break;
    default: cpu_rows<float, float>(*args, row_begin, row_end); break;
  }
}

extern "C" int64_t one_fast_cpu_chunk(int64_t chunk) {
  using one_fast::g_chunk;
  if (chunk <= 0) return g_chunk.load();
  return g_chunk.exchange(std::min<int64_t>(chunk, one_fast::kChunkMax));
}
