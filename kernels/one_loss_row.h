// Per-row mathematics of the fused ONE loss, shared by the CUDA kernels and the CPU implementation.
//
// Plain C++ (no torch, no CUDA requirement): under nvcc every function is __host__ __device__,
// under a host compiler the qualifier is defined away, so the CPU build runs the same algorithm
// and formulas that the GPU runs and the CPU tests check the GPU's numerics. Two differences by
// design: exp (CPU: a vectorisable polynomial, GPU: expf) and the order within sums (CPU: SIMD
// partial sums over a chunk, GPU: a thread's vector then a tree across threads).
//
// Notation for one row (valid target y in [0, C)), branches i = 0..m-1, classes c = 0..C-1:
//   z_i     branch logits (C,)                    g_i   gate weight
//   z_e     = sum_i g_i z_i, ensemble teacher     T     temperature, w the KL weight
//   p_i     = softmax(z_i)        q_i = softmax(z_i / T)       (p_e, q_e likewise for z_e)
//   loss    = sum_i CE_i + CE_e + w T^2 sum_i KL_i
//   CE_i    = lse(z_i) - z_i[y]                    KL_i = sum_c q_e (log q_e - log q_i)
// Gradients (the row's own derivative, scaled later by the incoming gradient):
//   dL/dz_e = (p_e - onehot_y) + [not detach] w T sum_i q_e * (log q_e - log q_i - KL_i)
//   dL/dz_i = (p_i - onehot_y) + w T (q_i - q_e) + g_i dL/dz_e
//   dL/dg_i = sum_c z_i,c dL/dz_e,c
//
// The classes of a row are consumed in chunks (a thread's vector on the GPU, a block of columns
// on the CPU) by an online, running-max log-sum-exp: one pass gives every normaliser and KL_i,
// a second pass writes the gradients. Partial states over disjoint column sets merge exactly
// (accum_merge), which is how GPU threads and CPU lanes combine.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#define ONE_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define ONE_HD __host__ __device__ __forceinline__
#define ONE_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
// Always inlined on the host too: the CPU entry point is cloned per instruction set, and only
// code inlined into a clone is compiled for that clone's vector width.
#define ONE_HD inline __attribute__((always_inline))
#define ONE_UNROLL
#else
#define ONE_HD inline
#define ONE_UNROLL
#endif
// Loops over the classes of a chunk: unrolled on the GPU (a thread's few vector elements),
// vectorised on the CPU (hundreds of classes; OpenMP simd reductions may reorder the sums).
#if defined(__CUDA_ARCH__) || !defined(_OPENMP)
#define ONE_CLASS_LOOP ONE_UNROLL
#define ONE_CLASS_SUM(...) ONE_UNROLL
#define ONE_CLASS_MAX(v) ONE_UNROLL
#else
#define ONE_CLASS_LOOP ONE_PRAGMA(omp simd)
#define ONE_CLASS_SUM(...) ONE_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define ONE_CLASS_MAX(v) ONE_PRAGMA(omp simd reduction(max : v))
#endif

#include "one_loss_api.h"

namespace one_fast {

// ---------------------------------------------------------------------------------------------
// Storage types and conversions. bf16/f16 are 2-byte bit patterns, layout-compatible with
// at::BFloat16 / at::Half / __nv_bfloat16 / __half. Rounding to them is round-to-nearest-even.
// ---------------------------------------------------------------------------------------------
struct alignas(2) bf16 {
  uint16_t bits;
};
struct alignas(2) f16 {
  uint16_t bits;
};

ONE_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

ONE_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

ONE_HD float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

ONE_HD uint16_t float_to_bf16(float f) {
#if defined(__CUDA_ARCH__)
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even at bit 16
  return static_cast<uint16_t>(u >> 16);
#endif
}

ONE_HD float f16_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // m * 2^-24
  return sign ? -magnitude : magnitude;
#endif
}

ONE_HD uint16_t float_to_f16(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;  // |f| >= 65520 rounds to inf
  if (u < 0x38800000u) {                        // |f| < 2^-14: a subnormal half (or zero)
    const float scaled = bits_to_float(u) * 16777216.0f;  // |f| * 2^24, exact, in [0, 1024]
    return sign | static_cast<uint16_t>(nearbyintf(scaled));  // ties to even; 1024 = min normal
  }
  u += 0xfffu + ((u >> 13) & 1u);  // round to nearest even at bit 13 (may carry into exponent)
  return sign | static_cast<uint16_t>((u - 0x38000000u) >> 13);  // rebias exponent 127 -> 15
#endif
}

// Cvt<T>: element type T <-> accumulator type A (float or double). The primary template serves
// the built-in float and double; the 16-bit storage types are specialised below.
template <typename T>
struct Cvt {
  template <typename A>
  ONE_HD static A load(T x) { return static_cast<A>(x); }
  template <typename A>
  ONE_HD static T store(A a) { return static_cast<T>(a); }
};
template <>
struct Cvt<bf16> {
  template <typename A>
  ONE_HD static A load(bf16 x) { return static_cast<A>(bf16_to_float(x.bits)); }
  template <typename A>
  ONE_HD static bf16 store(A a) { return bf16{float_to_bf16(static_cast<float>(a))}; }
};
template <>
struct Cvt<f16> {
  template <typename A>
  ONE_HD static A load(f16 x) { return static_cast<A>(f16_to_float(x.bits)); }
  template <typename A>
  ONE_HD static f16 store(A a) { return f16{float_to_f16(static_cast<float>(a))}; }
};

// Element idx of a tensor whose type is only known at run time (the gate: N*m values per call,
// so a switch costs nothing and spares a template dimension).
template <typename A>
ONE_HD A load_any(const void* p, int dtype, int64_t idx) {
  switch (dtype) {
    case ONE_FAST_F64: return static_cast<A>(static_cast<const double*>(p)[idx]);
    case ONE_FAST_BF16: return static_cast<A>(bf16_to_float(static_cast<const uint16_t*>(p)[idx]));
    case ONE_FAST_F16: return static_cast<A>(f16_to_float(static_cast<const uint16_t*>(p)[idx]));
    default: return static_cast<A>(static_cast<const float*>(p)[idx]);
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar helpers
// ---------------------------------------------------------------------------------------------
// exp for float. GPU: the full-precision expf (not __expf). CPU: a branch-free version the
// compiler vectorises: exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in
// [-ln2/2, ln2/2] (ln 2 split in two so n ln 2 is exact), exp(r) = 1 + r + r^2 P(r) with the
// minimax coefficients published in the Cephes library's expf (about 1 ulp), and 2^n put into
// the exponent bits. Below -87.3 the result is 0 (no subnormals); NaN stays NaN.
ONE_HD float one_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float lo = -87.3f;
  const float hi = 88.7f;
  const float xc = x > hi ? hi : (x < lo ? lo : x);  // NaN passes through both selects
  const float shifter = 12582912.0f;                  // 1.5 * 2^23: adding it rounds to an integer
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const int32_t ni = static_cast<int32_t>(float_to_bits(t) - float_to_bits(shifter));
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r2 + r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(ni + 127) << 23);
  return x < lo ? 0.0f : er * scale;
#endif
}
ONE_HD double one_exp(double x) { return exp(x); }
ONE_HD float one_log1p(float x) { return log1pf(x); }
ONE_HD double one_log1p(double x) { return log1p(x); }
// max that keeps `a` when b is NaN; a NaN logit still reaches the sums (exp(NaN) = NaN).
template <typename A>
ONE_HD A one_max(A a, A b) { return b > a ? b : a; }

// Start of a running max: the lowest finite value, so exp(start - x) is 0 for any finite x and
// merging two empty states gives exp(0) * 0 = 0 (an infinite start would give NaN).
template <typename A>
ONE_HD A lowest();
template <>
ONE_HD float lowest<float>() { return -3.402823466e+38f; }
template <>
ONE_HD double lowest<double>() { return -1.7976931348623157e+308; }

template <typename A>
ONE_HD A quiet_nan() { return static_cast<A>(NAN); }

// A loop count fixed at compile time (GPU: a thread's vector width) that converts to int, so the
// same loops run with a run-time count on the CPU and unroll on the GPU.
template <int N>
struct Fixed {
  ONE_HD constexpr operator int() const { return N; }
};

// ---------------------------------------------------------------------------------------------
// Online state over a set of classes
// ---------------------------------------------------------------------------------------------
// One distribution's running normalisers. The max is shared by z and z / T (T > 0). The sums
// leave out the max element's own exp(0) = 1:
//   lse(z)     = max + log1p(rest)       rest   = sum_{c != argmax} exp(z_c - max)
//   lse(z / T) = max / T + log1p(rest_t) rest_t = sum_{c != argmax} exp((z_c - max) / T)
// so a confident row (rest ~ 1e-7) keeps its tail instead of rounding 1 + rest to 1: CE_y and
// log-probabilities stay accurate to a few ulps of the small quantity itself. An empty state
// has max = lowest() and rest = -1 (the sum is 0).
template <typename A>
struct Lse {
  A max;     // running max of the raw logits
  A rest;    // sum over the classes but one instance of the max of exp(z_c - max)
  A rest_t;  // the same of exp((z_c - max) / T)
};

// A row's partial state: every branch, the ensemble, and the unnormalised expectations
//   dot_i = sum_c exp((z_e,c - ens.max) / T) * (z_e,c - z_i,c)
// so that mu_i = E_{q_e}[z_e - z_i] = dot_i / (1 + ens.rest_t), the only class sum KL_i needs
// besides the normalisers (sum_c q_e = 1).
template <typename A, int MAXM>
struct RowAccum {
  Lse<A> br[MAXM];
  Lse<A> ens;
  A dot[MAXM];
};

template <typename A>
ONE_HD void lse_init(Lse<A>& l) {
  l.max = lowest<A>();
  l.rest = A(-1);
  l.rest_t = A(-1);
}

template <typename A, int MAXM>
ONE_HD void accum_init(RowAccum<A, MAXM>& s) {
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    lse_init(s.br[i]);
    s.dot[i] = A(0);
  }
  lse_init(s.ens);
}

// Raise a state's max to vmax if that is larger: the old "1" moves into the rest (rest' = f +
// f rest, no cancellation). Returns whether it moved, i.e. whether one element equal to the new
// max (the chunk's) must still be left out of the sums; f_t = exp((old - new max) / T) is the
// factor applied to q-weights (1 if the max did not move).
template <typename A>
ONE_HD bool lse_raise(Lse<A>& l, A vmax, A inv_t, A& f_t) {
  f_t = A(1);
  if (!(vmax > l.max)) return false;
  const A d = l.max - vmax;  // < 0 (-inf from the lowest() start)
  const A f = one_exp(d);
  f_t = one_exp(d * inv_t);
  l.rest = f + f * l.rest;
  l.rest_t = f_t + f_t * l.rest_t;
  l.max = vmax;
  return true;
}

// Index of the first of the K values equal to the new max, or -1 if the max did not move.
template <typename A, typename KT>
ONE_HD int first_top(bool raised, A max, KT K, const A* v) {
  int top = -1;
  if (raised) {
    ONE_UNROLL
    for (int k = K - 1; k >= 0; --k) top = v[k] == max ? k : top;
  }
  return top;
}

// Absorb the K values v[k] into one distribution's state. The sums of the chunk are formed
// locally first: on the CPU, where a chunk is hundreds of classes, that makes a two-level
// summation (error ~ chunk + C / chunk ulps rather than C).
template <typename A, typename KT>
ONE_HD void lse_absorb(Lse<A>& l, A inv_t, KT K, const A* v) {
  A vmax = l.max;
  ONE_CLASS_MAX(vmax)
  for (int k = 0; k < K; ++k) vmax = one_max(vmax, v[k]);
  A f_t;
  const bool raised = lse_raise(l, vmax, inv_t, f_t);  // before reading l.max below
  const int top = first_top(raised, l.max, K, v);
  const A mx = l.max;
  A part = A(0);
  A part_t = A(0);
  ONE_CLASS_SUM(part, part_t)
  for (int k = 0; k < K; ++k) {
    const A d = v[k] - mx;
    const A e = one_exp(d);
    const A e_t = one_exp(d * inv_t);
    part += k == top ? A(0) : e;  // the new max's own exp(0) = 1 is not in the rest
    part_t += k == top ? A(0) : e_t;
  }
  l.rest += part;
  l.rest_t += part_t;
}

// Absorb K classes held in registers/scratch:
//   z  : branch i, class k at z[i * zs + k]   (i < m, k < K)
//   ze : ensemble logits of the same classes, ze[k] = sum_i g_i z[i * zs + k]
//   wq : scratch for K values (the ensemble's q-weights)
template <typename A, int MAXM, typename KT, typename ST>
ONE_HD void accum_absorb(RowAccum<A, MAXM>& s, int m, A inv_t, KT K, const A* z, ST zs,
                         const A* ze, A* wq) {
  // Ensemble: its q-weights wq = exp((z_e - max_e) / T) serve rest_t and every dot_i.
  A emax = s.ens.max;
  ONE_CLASS_MAX(emax)
  for (int k = 0; k < K; ++k) emax = one_max(emax, ze[k]);
  A f_t;
  const bool raised = lse_raise(s.ens, emax, inv_t, f_t);  // before reading s.ens.max below
  const int top = first_top(raised, s.ens.max, K, ze);
  const A mx = s.ens.max;
  A part = A(0);
  A part_t = A(0);
  ONE_CLASS_SUM(part, part_t)
  for (int k = 0; k < K; ++k) {
    const A d = ze[k] - mx;
    const A w = one_exp(d * inv_t);
    const A e = one_exp(d);
    wq[k] = w;
    part += k == top ? A(0) : e;
    part_t += k == top ? A(0) : w;
  }
  s.ens.rest += part;
  s.ens.rest_t += part_t;
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) {
      const A* zi = z + i * zs;
      A dot = A(0);
      ONE_CLASS_SUM(dot)
      for (int k = 0; k < K; ++k) dot += wq[k] * (ze[k] - zi[k]);
      s.dot[i] = s.dot[i] * f_t + dot;
    }
  }
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) lse_absorb(s.br[i], inv_t, K, z + i * zs);
  }
}

// a <- state of the union of a's and b's (disjoint) class sets. The larger max keeps its
// left-out element; the other side's max element joins the rest (f + f rest).
template <typename A>
ONE_HD void lse_merge(Lse<A>& a, const Lse<A>& b, A inv_t) {
  const bool a_top = a.max >= b.max;
  const A d = a_top ? b.max - a.max : a.max - b.max;  // <= 0
  const A f = one_exp(d);
  const A f_t = one_exp(d * inv_t);
  const A lo = a_top ? b.rest : a.rest;
  const A lo_t = a_top ? b.rest_t : a.rest_t;
  const A hi = a_top ? a.rest : b.rest;
  const A hi_t = a_top ? a.rest_t : b.rest_t;
  a.rest = hi + (f + f * lo);
  a.rest_t = hi_t + (f_t + f_t * lo_t);
  a.max = a_top ? a.max : b.max;
}

template <typename A, int MAXM>
ONE_HD void accum_merge(RowAccum<A, MAXM>& a, const RowAccum<A, MAXM>& b, int m, A inv_t) {
  const A mx = one_max(a.ens.max, b.ens.max);
  const A fa = one_exp((a.ens.max - mx) * inv_t);
  const A fb = one_exp((b.ens.max - mx) * inv_t);
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) a.dot[i] = a.dot[i] * fa + b.dot[i] * fb;
  }
  lse_merge(a.ens, b.ens, inv_t);
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) lse_merge(a.br[i], b.br[i], inv_t);
  }
}

// ---------------------------------------------------------------------------------------------
// Row constants once all classes are absorbed
// ---------------------------------------------------------------------------------------------
template <typename A, int MAXM>
struct RowStats {
  A max[MAXM];     // per branch: max_c z_i,c
  A log_s[MAXM];   //   log sum_c exp(z_i,c - max)          (lse(z_i) = max + log_s)
  A log_st[MAXM];  //   log sum_c exp((z_i,c - max) / T)    (lse(z_i/T) = max/T + log_st)
  A mu[MAXM];      //   E_{q_e}[z_e - z_i]
  A kl[MAXM];      //   KL_i = KL(q_e || q_i)
  A max_e, log_s_e, log_st_e;
};

// KL_i = sum_c q_e (log q_e - log q_i)
//      = E_{q_e}[z_e - z_i] / T - (lse(z_e/T) - lse(z_i/T))          (sum_c q_e = 1)
//      = (mu_i - (max_e - max_i)) / T - log(S_e / S_i),   S = 1 + rest_t,
// with log(S_e / S_i) = log1p((rest_t_e - rest_t_i) / S_i): exact for identical branches.
template <typename A, int MAXM>
ONE_HD void accum_finalize(const RowAccum<A, MAXM>& s, int m, A inv_t, RowStats<A, MAXM>& st) {
  st.max_e = s.ens.max;
  st.log_s_e = one_log1p(s.ens.rest);
  st.log_st_e = one_log1p(s.ens.rest_t);
  const A inv_st_e = A(1) / (A(1) + s.ens.rest_t);
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) {
      const Lse<A>& b = s.br[i];
      st.max[i] = b.max;
      st.log_s[i] = one_log1p(b.rest);
      st.log_st[i] = one_log1p(b.rest_t);
      st.mu[i] = s.dot[i] * inv_st_e;
      const A dlog_st = one_log1p((s.ens.rest_t - b.rest_t) / (A(1) + b.rest_t));
      // mu_i and max_e - max_i are both z_e - z_i for a single class: subtract them before
      // scaling, so KL is exactly 0 there even when the compiler fuses multiply-adds.
      st.kl[i] = (st.mu[i] - (st.max_e - b.max)) * inv_t - dlog_st;
    } else {  // unused slots, defined so that no uninitialised value is ever copied
      st.max[i] = st.log_s[i] = st.log_st[i] = st.mu[i] = st.kl[i] = A(0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gradients of K classes, in place
// ---------------------------------------------------------------------------------------------
// In:  z[i * zs + k] branch logits, ze[k] ensemble logits of classes c0 + k.
// Out: z[i * zs + k] = dL/dz_i for those classes; dg[i] += this chunk's share of dL/dg_i.
// scratch: 2 K values. wt = w T. poison is 0, or NaN for a row whose target is out of range
// (it then reaches every output).
//
// Per class, with de = z_e - max_e and di = z_i - max_i (centred, so no large cancelling terms):
//   p_e = exp(de - log_s_e)             q_e = exp(de / T - log_st_e)
//   log q_e - log q_i - KL_i = ((z_e - z_i) - mu_i) / T   (the log-normalisers cancel exactly,
//       so a one-hot q_e gives exactly 0 where mu_i is that class's z_e - z_i)
//   dze = (p_e - onehot) + [not detach] w T q_e sum_i ((z_e - z_i) - mu_i) / T
//   dz_i = (p_i - onehot) + w T (q_i - q_e) + g_i dze        (differences of float probabilities)
//   dg_i += di * dze   (= z_i dze summed over classes, since sum_c dze_c = 0 for a valid row)
template <typename A, int MAXM, typename KT, typename ST>
ONE_HD void grad_columns(const RowStats<A, MAXM>& st, int m, A inv_t, A wt, bool detach,
                         A poison, KT K, int64_t c0, int64_t y, const A* g, A* z, ST zs,
                         const A* ze, A* scratch, A* dg) {
  A* q_e = scratch;      // (K,) q_e of each class
  A* dze = scratch + K;  // (K,) dL/dz_e of each class
  const int ky = (y >= c0 && y < c0 + K) ? static_cast<int>(y - c0) : -1;  // target in chunk
  ONE_CLASS_LOOP
  for (int k = 0; k < K; ++k) {
    const A de = ze[k] - st.max_e;
    q_e[k] = one_exp(de * inv_t - st.log_st_e);
    dze[k] = (one_exp(de - st.log_s_e) - (k == ky ? A(1) : A(0))) + poison;
  }
  if (!detach) {
    // + w T q_e sum_i ((z_e - z_i) - mu_i) / T, added branch by branch
    ONE_UNROLL
    for (int i = 0; i < MAXM; ++i) {
      if (i < m) {
        const A* zi = z + i * zs;
        const A mu = st.mu[i];
        const A scale = wt * inv_t;
        ONE_CLASS_LOOP
        for (int k = 0; k < K; ++k) dze[k] += scale * q_e[k] * ((ze[k] - zi[k]) - mu);
      }
    }
  }
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) {
      A* zi = z + i * zs;
      const A mx = st.max[i];
      const A log_s = st.log_s[i];
      const A log_st = st.log_st[i];
      const A gi = g[i];
      A part = A(0);
      ONE_CLASS_SUM(part)
      for (int k = 0; k < K; ++k) {
        const A di = zi[k] - mx;
        part += di * dze[k];
        const A p_i = one_exp(di - log_s);
        const A q_i = one_exp(di * inv_t - log_st);
        zi[k] = (p_i - (k == ky ? A(1) : A(0))) + wt * (q_i - q_e[k]) + gi * dze[k];
      }
      dg[i] += part;
    }
  }
}

// The row's terms from its constants and the target logits z_y[i] = z_i,y, ze_y = z_e,y.
//   CE_i = (max_i - z_i,y) + log_s_i,  CE_e likewise,  loss = sum CE_i + CE_e + w T^2 sum KL_i
template <typename A, int MAXM>
ONE_HD A row_terms(const RowStats<A, MAXM>& st, int m, A wtt, A poison, const A* z_y, A ze_y,
                   A* ce_branch, A* ce_ensemble, A* kl) {
  A total = A(0);
  A kl_sum = A(0);
  ONE_UNROLL
  for (int i = 0; i < MAXM; ++i) {
    if (i < m) {
      const A ce = (st.max[i] - z_y[i]) + st.log_s[i] + poison;
      ce_branch[i] = ce;
      kl[i] = st.kl[i];
      total += ce;
      kl_sum += st.kl[i];
    }
  }
  const A ce_e = (st.max_e - ze_y) + st.log_s_e + poison;
  *ce_ensemble = ce_e;
  return total + ce_e + wtt * kl_sum;
}

}  // namespace one_fast
