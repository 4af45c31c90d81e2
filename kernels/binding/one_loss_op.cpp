// Torch binding of the native fused ONE loss: the only file of kernels/ that includes torch.
//
// Defines the operator one_fast_native::one_loss with the fused-op schema of
// one_fast/loss/fused_op.py (FUSED_SCHEMA) and registers its CPU implementation (and the CUDA
// one when built with ONE_FAST_WITH_CUDA). Shape inference (fake/meta) and autograd are attached
// from Python (one_fast/loss/native.py calls fused_op.attach_fake_and_autograd), so every fused
// backend shares one backward formula.
//
// No CUDA header is included even in the CUDA build: the current stream comes from c10's
// device-generic stream API as an opaque handle, and the kernels live behind the C ABI of
// one_loss_api.h. That keeps this file compilable against a CPU-only torch as well.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <tuple>
#include <vector>

#include "../one_loss_api.h"

namespace {

using at::Tensor;

// Test hook (see poison_outputs below): fill the outputs with NaN before the kernels run.
std::atomic<bool> g_poison_outputs{false};

int dtype_code(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat: return ONE_FAST_F32;
    case at::kDouble: return ONE_FAST_F64;
    case at::kBFloat16: return ONE_FAST_BF16;
    case at::kHalf: return ONE_FAST_F16;
    default: TORCH_CHECK(false, "one_fast_native::one_loss: ", what,
                         " must be float32, float64, bfloat16 or float16, got ", t);
  }
  return ONE_FAST_F32;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> one_loss(
    const Tensor& logits, const Tensor& gate, const Tensor& target, const Tensor& kl_weight,
    double temperature, bool detach_teacher, int64_t ignore_index, bool compute_grad) {
  TORCH_CHECK(logits.dim() == 3, "one_fast_native::one_loss: logits must be (N, m, C), got ",
              logits.sizes());
  const int64_t n = logits.size(0), m = logits.size(1), c = logits.size(2);
  TORCH_CHECK(m >= 1 && m <= ONE_FAST_MAX_BRANCHES,
              "one_fast_native::one_loss: supports 1 to ", ONE_FAST_MAX_BRANCHES,
              " branches, got m = ", m);
  TORCH_CHECK(c >= 1, "one_fast_native::one_loss: logits need at least one class");
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == n && gate.size(1) == m,
              "one_fast_native::one_loss: gate must be (N, m) = (", n, ", ", m, "), got ",
              gate.sizes());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == n && target.scalar_type() == at::kLong,
              "one_fast_native::one_loss: target must be an (N,) int64 tensor");
  TORCH_CHECK(kl_weight.numel() == 1 && kl_weight.scalar_type() == at::kDouble,
              "one_fast_native::one_loss: kl_weight must be a 1-element float64 tensor");
  TORCH_CHECK(gate.device() == logits.device() && target.device() == logits.device() &&
                  kl_weight.device() == logits.device(),
              "one_fast_native::one_loss: all tensors must be on one device");
  TORCH_CHECK(temperature > 0, "one_fast_native::one_loss: temperature must be > 0");
  const int logits_code = dtype_code(logits.scalar_type(), "logits");
  const int gate_code = dtype_code(gate.scalar_type(), "gate");

  // The kernels need unit stride along the classes; the other strides are passed through.
  const Tensor z = (logits.stride(2) == 1 || c == 1) ? logits : logits.contiguous();
  const Tensor klw = kl_weight.reshape({1});  // a view: the value stays on the device
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto term_opts = logits.options().dtype(acc);
  Tensor loss = at::empty({n}, term_opts);
  Tensor ce_branch = at::empty({n, m}, term_opts);
  Tensor ce_ensemble = at::empty({n}, term_opts);
  Tensor kl = at::empty({n, m}, term_opts);
  const std::vector<int64_t> no_grad_shape{0};  // gradients not requested: empty (0,) tensors
  Tensor grad_logits =
      at::empty(compute_grad ? logits.sizes() : at::IntArrayRef(no_grad_shape), logits.options());
  // grad_gate stays in the accumulator type: autograd rounds it to the gate's dtype once, after
  // scaling (one_fast/loss/fused_op.py).
  Tensor grad_gate =
      at::empty(compute_grad ? gate.sizes() : at::IntArrayRef(no_grad_shape), term_opts);

  if (g_poison_outputs.load(std::memory_order_relaxed)) {  // any element left unwritten shows
    for (Tensor* t : {&loss, &ce_branch, &ce_ensemble, &kl, &grad_logits, &grad_gate}) {
      t->fill_(std::numeric_limits<double>::quiet_NaN());
    }
  }

  OneLossArgs args{};
  args.logits = z.data_ptr();
  args.logits_stride_n = z.stride(0);
  args.logits_stride_m = z.stride(1);
  args.gate = gate.data_ptr();
  args.gate_stride_n = gate.stride(0);
  args.gate_stride_m = gate.stride(1);
  args.target = target.data_ptr<int64_t>();
  args.target_stride = target.stride(0);
  args.kl_weight = klw.data_ptr<double>();
  args.n = n;
  args.m = m;
  args.c = c;
  args.logits_dtype = logits_code;
  args.gate_dtype = gate_code;
  args.temperature = temperature;
  args.ignore_index = ignore_index;
  args.detach_teacher = detach_teacher ? 1 : 0;
  args.compute_grad = compute_grad ? 1 : 0;
  args.loss = loss.data_ptr();
  args.ce_branch = ce_branch.data_ptr();
  args.ce_ensemble = ce_ensemble.data_ptr();
  args.kl = kl.data_ptr();
  args.grad_logits = compute_grad ? grad_logits.data_ptr() : nullptr;
  args.grad_gate = compute_grad ? grad_gate.data_ptr() : nullptr;
  if (n == 0) return {loss, ce_branch, ce_ensemble, kl, grad_logits, grad_gate};

  if (logits.device().is_cpu()) {
    // Rows are independent: split them so each task has at least ~32k logits to process.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (m * c));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      one_fast_one_loss_cpu(&args, begin, end);
    });
  } else {
#ifdef ONE_FAST_WITH_CUDA
    TORCH_CHECK(logits.device().is_cuda(), "one_fast_native::one_loss: unsupported device ",
                logits.device());
    const c10::DeviceGuard guard(logits.device());
    const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    const c10::Stream stream = impl.getStream(logits.device());  // the current stream
    const int err =
        one_fast_one_loss_cuda(&args, static_cast<cudaStream_t>(stream.native_handle()));
    TORCH_CHECK(err == 0, "one_fast_native::one_loss: kernel launch failed: ",
                one_fast_cuda_error_string(err));
#else
    TORCH_CHECK(false, "one_fast_native::one_loss: this build has no kernels for ",
                logits.device(), " (built without CUDA)");
#endif
  }
  return {loss, ce_branch, ce_ensemble, kl, grad_logits, grad_gate};
}

// Test hook (see one_fast_cpu_chunk): classes per online-softmax step of the CPU implementation.
int64_t cpu_chunk(int64_t chunk) { return one_fast_cpu_chunk(chunk); }

// Test hook: outputs NaN-filled before the kernels run (so a test sees any element they skip);
// returns the previous setting.
bool poison_outputs(bool enable) { return g_poison_outputs.exchange(enable); }

}  // namespace

TORCH_LIBRARY(one_fast_native, m) {
  // Keep in sync with one_fast/loss/fused_op.py FUSED_SCHEMA.
  m.def(
      "one_loss(Tensor logits, Tensor gate, Tensor target, Tensor kl_weight, float temperature, "
      "bool detach_teacher, int ignore_index, bool compute_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def("_cpu_chunk(int chunk) -> int", &cpu_chunk);
  m.def("_poison_outputs(bool enable) -> bool", &poison_outputs);
}

TORCH_LIBRARY_IMPL(one_fast_native, CPU, m) { m.impl("one_loss", &one_loss); }

#ifdef ONE_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(one_fast_native, CUDA, m) { m.impl("one_loss", &one_loss); }
#endif

// `import one_fast._native` loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__native(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT,
                               "_native",
                               "Native (C++/CUDA) fused ONE loss; see one_fast.loss.native.",
                               -1,
                               nullptr,
                               nullptr,
                               nullptr,
                               nullptr,
                               nullptr};
  return PyModule_Create(&module);
}
