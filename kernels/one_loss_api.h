/*
 * C ABI of the native fused ONE loss: one argument block, a CPU entry point and a CUDA launcher.
 *
 * Torch-free and CUDA-header-free on purpose: the CUDA kernels (one_loss_cuda.cu) and the CPU
 * implementation (one_loss_cpu.cpp) are compiled without torch, and the torch binding
 * (binding/one_loss_op.cpp) is compiled without CUDA headers. Everything crosses this boundary
 * as raw pointers, element strides, sizes and a cudaStream_t.
 *
 * Per row n (of N) the operator reads logits[n] (m, C), gate[n] (m), target[n], and writes
 *   loss[n], ce_branch[n] (m), ce_ensemble[n], kl[n] (m)       -- accumulator type, contiguous
 *   grad_logits[n] (m, C), grad_gate[n] (m)                    -- d loss[n] / d input[n], contiguous
 * The accumulator type is double for F64 logits and float otherwise.
 */
#ifndef ONE_FAST_ONE_LOSS_API_H
#define ONE_FAST_ONE_LOSS_API_H

#include <stdint.h>

#if defined(__CUDACC__) || defined(CUDART_VERSION)
#include <cuda_runtime_api.h>
#else
/* The same declaration as CUDA's driver_types.h, so the binding needs no CUDA headers. */
typedef struct CUstream_st* cudaStream_t;
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Element types the operator reads and writes (logits, gate, grad_logits). */
enum OneFastDType {
  ONE_FAST_F32 = 0,
  ONE_FAST_F64 = 1,
  ONE_FAST_BF16 = 2,
  ONE_FAST_F16 = 3
};

/* Most branches a row may have: per-branch state lives in registers, unrolled to this size. */
#define ONE_FAST_MAX_BRANCHES 8

typedef struct OneLossArgs {
  /* inputs; strides are in elements */
  const void* logits;           /* (N, m, C), logits_dtype, unit stride along C */
  int64_t logits_stride_n;
  int64_t logits_stride_m;
  const void* gate;             /* (N, m), gate_dtype */
  int64_t gate_stride_n;
  int64_t gate_stride_m;
  const int64_t* target;        /* (N,) class index, or ignore_index */
  int64_t target_stride;
  const double* kl_weight;      /* (1,), on the same device as the logits (read there) */
  int64_t n;                    /* N rows */
  int64_t m;                    /* branches, 1..ONE_FAST_MAX_BRANCHES */
  int64_t c;                    /* C classes, >= 1 */
  int32_t logits_dtype;         /* OneFastDType; also grad_logits' type */
  int32_t gate_dtype;           /* OneFastDType */
  double temperature;           /* T > 0 */
  int64_t ignore_index;
  int32_t detach_teacher;       /* 1: the KL terms do not backpropagate into z_e */
  int32_t compute_grad;         /* 0: grad_logits / grad_gate are not written (may be NULL) */
  /* outputs, contiguous */
  void* loss;                   /* (N,)   accumulator type */
  void* ce_branch;              /* (N, m) accumulator type */
  void* ce_ensemble;            /* (N,)   accumulator type */
  void* kl;                     /* (N, m) accumulator type */
  void* grad_logits;            /* (N, m, C) logits_dtype */
  void* grad_gate;              /* (N, m) accumulator type (rounded to the gate's once, later) */
} OneLossArgs;

/* CPU implementation: processes rows [row_begin, row_end); callers may split rows across threads. */
void one_fast_one_loss_cpu(const OneLossArgs* args, int64_t row_begin, int64_t row_end);

/* Test hook: sets the CPU chunk (classes per online-softmax step, clamped to [1, 512]) and returns
 * the previous value; chunk <= 0 only returns the current value. */
int64_t one_fast_cpu_chunk(int64_t chunk);

/* CUDA launcher: enqueues one kernel on `stream` (no allocation, no host synchronisation, so it may
 * be captured in a CUDA graph). Returns the cudaError_t of the launch (0 on success). */
int one_fast_one_loss_cuda(const OneLossArgs* args, cudaStream_t stream);

/* cudaGetErrorString of an error returned by one_fast_one_loss_cuda. */
const char* one_fast_cuda_error_string(int error);

#ifdef __cplusplus
}
#endif

#endif /* ONE_FAST_ONE_LOSS_API_H */
