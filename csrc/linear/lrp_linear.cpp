// Argument checks of lrp_linear, shared by the CPU and CUDA kernels.
#include "lrp_linear.h"

#include "../common/checks.h"
#include "../common/precision.h"

namespace capxai {

LinearArgs check_lrp_linear_args(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& relevance, double eps,
                                 double bias_factor) {
  constexpr const char* op = "lrp_linear";
  check_hyperparameters(eps, bias_factor, op);
  check_floating(x, op, "x");
  check_floating(weight, op, "weight");
  check_floating(relevance, op, "relevance");
  check_like(weight, x, op, "weight", "x");
  check_like(relevance, x, op, "relevance", "x");
  check_dim(x, 2, op, "x", "[N, In]");
  check_dim(weight, 2, op, "weight", "[Out, In]");
  check_size(weight, 1, x.size(1), op, "weight", "[Out, In]", "In = x.shape[1]");
  const int64_t n_rows = x.size(0);
  const int64_t n_out = weight.size(0);
  TORCH_CHECK_VALUE(relevance.dim() == 2 || relevance.dim() == 3, op,
                    ": relevance must be [N, Out] or [K, N, Out], got ", relevance.sizes());
  const int64_t last = relevance.dim() - 1;
  check_size(relevance, last - 1, n_rows, op, "relevance", "[(K,) N, Out]", "N = x.shape[0]");
  check_size(relevance, last, n_out, op, "relevance", "[(K,) N, Out]", "Out = weight.shape[0]");

  LinearArgs args;
  args.eps = eps;
  args.result_dtype = x.scalar_type();
  args.x = to_compute(x);
  args.weight = to_compute(weight);
  if (bias.has_value() && bias->defined()) {
    check_floating(*bias, op, "bias");
    check_like(*bias, x, op, "bias", "x");
    check_dim(*bias, 1, op, "bias", "[Out]");
    check_size(*bias, 0, n_out, op, "bias", "[Out]", "Out = weight.shape[0]");
    args.bias = to_compute(*bias);
  }
  args.had_target_dim = relevance.dim() == 3;
  args.relevance = to_compute(args.had_target_dim ? relevance : relevance.unsqueeze(0));
  return args;
}

void raise_non_finite(const LinearArgs& args) {
  raise_first_non_finite("lrp_linear", args.eps, args.result_dtype, {{&args.relevance, "relevance"}, {&args.x, "x"}, {&args.weight, "weight"},
                                        {&args.bias, "bias"}});
}

}  // namespace capxai
