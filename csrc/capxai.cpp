// capxai._C: the op schemas (TORCH_LIBRARY), the Python module with build facts (PYBIND11_MODULE, only in the
// torch.utils.cpp_extension build), and, in a build without CUDA, CUDA kernels that say how to get real ones.
// Kernels live one folder per op family: csrc/<family>/cpu/*.cpp and csrc/<family>/cuda/*.cu.
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <array>

namespace capxai {

// Every op of the library (capxai.info lists them) and those of them with their own CPU/CUDA kernels (the others
// are composites of these, e.g. lrp_lstm_cell calls lrp_lstm).
constexpr std::array<const char*, 6> kOpNames = {"lrp_linear",         "lrp_lstm", "lrp_lstm_cell",
                                                 "lrp_additive_attention", "lrp_sdpa", "lrp_sdpa_attnlrp"};
constexpr std::array<const char*, 5> kBackendOpNames = {"lrp_linear", "lrp_lstm", "lrp_additive_attention",
                                                        "lrp_sdpa", "lrp_sdpa_attnlrp"};

TORCH_LIBRARY(capxai, m) {
  // Fake (meta) kernels are registered in Python; torch imports this module when it needs them.
  m.set_python_module("capxai.ops.fake");
  m.def("lrp_linear(Tensor x, Tensor weight, Tensor? bias, Tensor relevance, float eps=0.01, "
        "float bias_factor=0.0) -> Tensor");
  m.def("lrp_lstm(Tensor x, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
        "Tensor? bias_hh, Tensor relevance_h, Tensor? relevance_c=None, float eps=0.01, float bias_factor=0.0) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("lrp_lstm_cell(Tensor x, Tensor h_prev, Tensor c_prev, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
        "Tensor? bias_hh, Tensor relevance_h, Tensor? relevance_c=None, float eps=0.01, float bias_factor=0.0) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("lrp_additive_attention(Tensor values, Tensor weights, Tensor relevance, float eps=0.01, "
        "float bias_factor=0.0) -> Tensor");
  m.def("lrp_sdpa(Tensor q, Tensor k, Tensor v, Tensor relevance, Tensor? attn_mask=None, float eps=0.01, "
        "float bias_factor=0.0, float? scale=None) -> Tensor");
  m.def("lrp_sdpa_attnlrp(Tensor q, Tensor k, Tensor v, Tensor relevance, Tensor? attn_mask=None, "
        "float eps=0.01, float bias_factor=0.0, float? scale=None) -> (Tensor, Tensor, Tensor)");
}

namespace {

// Under torch.autocast the inputs of one op arrive in mixed dtypes (a float16 activation, float32 weights), which the
// kernels refuse. Autocast's "promote" policy (as for torch.cat): every floating argument is cast to the widest
// floating dtype among them (float16 with bfloat16 -> float32), bool masks stay, and the op runs below autocast.
at::ScalarType widest_floating(at::ScalarType a, at::ScalarType b) {
  if (a == at::ScalarType::Undefined) return b;
  if (a == b) return a;
  if (a == at::kDouble || b == at::kDouble) return at::kDouble;
  return at::kFloat;  // float32 with anything narrower, or float16 with bfloat16
}

void autocast_promote(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/, torch::jit::Stack* stack) {
  const size_t n_arguments = op.schema().arguments().size();
  const auto arguments = torch::jit::last(*stack, n_arguments);
  at::ScalarType widest = at::ScalarType::Undefined;
  for (const c10::IValue& value : arguments) {
    if (value.isTensor() && value.toTensor().defined() && value.toTensor().is_floating_point())
      widest = widest_floating(widest, value.toTensor().scalar_type());
  }
  if (widest != at::ScalarType::Undefined) {
    for (size_t i = stack->size() - n_arguments; i < stack->size(); ++i) {
      c10::IValue& value = (*stack)[i];
      if (value.isTensor() && value.toTensor().defined() && value.toTensor().is_floating_point())
        value = value.toTensor().to(widest);
    }
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  op.callBoxed(stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, AutocastCPU, m) {
  for (const char* name : kBackendOpNames) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&autocast_promote>());
}

TORCH_LIBRARY_IMPL(capxai, AutocastCUDA, m) {
  for (const char* name : kBackendOpNames) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&autocast_promote>());
}

#ifndef CAPXAI_WITH_CUDA
namespace {
void cuda_kernels_not_built(const c10::OperatorHandle& op, torch::jit::Stack* /*stack*/) {
  TORCH_CHECK(false, op.schema().name(),
              " received CUDA tensors, but this capxai extension was built without CUDA kernels. Rebuild it on a "
              "machine with nvcc and a GPU: `FORCE_CUDA=1 pip install --no-build-isolation -e .` (or "
              "`make build FORCE_CUDA=1`), or move the inputs to the CPU.");
}
}  // namespace

TORCH_LIBRARY_IMPL(capxai, CUDA, m) {
  for (const char* name : kBackendOpNames) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&cuda_kernels_not_built>());
  }
}
#endif

}  // namespace capxai

#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>

#ifdef CAPXAI_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "capxai's compiled relevance ops; use them through capxai.ops or torch.ops.capxai.";
#ifdef CAPXAI_WITH_CUDA
  module.attr("cuda_built") = true;
  module.attr("cuda_version") = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#else
  module.attr("cuda_built") = false;
  module.attr("cuda_version") = pybind11::none();
#endif
  module.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                                std::to_string(TORCH_VERSION_PATCH);
  pybind11::list names;
  for (const char* name : capxai::kOpNames) names.append(name);
  module.attr("op_names") = names;
}
#endif
