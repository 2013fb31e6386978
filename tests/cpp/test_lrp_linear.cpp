// lrp_linear's CPU kernel against values computed by hand, called directly and through the dispatcher.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "check.h"
#include "linear/lrp_linear.h"

using capxai_test::check;
using capxai_test::check_close;
using capxai_test::check_throws;

namespace {

at::Tensor tensor(std::vector<double> values, std::vector<int64_t> shape) {
  return at::tensor(values, at::kDouble).reshape(shape);
}

void hand_computed_with_bias() {
  // z0 = 1*1 + 2*0 + 0.5 = 1.5 -> stab 1.51; z1 = 1*1 + 2*(-1) + 0 = -1 -> stab -1.01; R = [1, 2].
  const at::Tensor x = tensor({1, 2}, {1, 2});
  const at::Tensor weight = tensor({1, 0, 1, -1}, {2, 2});
  const at::Tensor bias = tensor({0.5, 0}, {2});
  const at::Tensor relevance = tensor({1, 2}, {1, 2});
  const at::Tensor result = capxai::lrp_linear_cpu(x, weight, bias, relevance, 0.01, 0.0);
  check(result.sizes() == at::IntArrayRef({1, 2}), "shape [N, In]");
  check_close(result[0][0].item<double>(), 1.0 / 1.51 - 2.0 / 1.01, 1e-12, "R_x0");
  check_close(result[0][1].item<double>(), 2.0 * 2.0 / 1.01, 1e-12, "R_x1");

  // bias_factor = 1: each input also gets (b_j + eps sign z_j) R_j / stab(z_j) / In.
  const double absorbed = (0.51 * 1.0 / 1.51 + (-0.01) * 2.0 / -1.01) / 2.0;
  const at::Tensor spread = capxai::lrp_linear_cpu(x, weight, bias, relevance, 0.01, 1.0);
  check_close(spread[0][0].item<double>(), 1.0 / 1.51 - 2.0 / 1.01 + absorbed, 1e-12, "R_x0 with bias_factor");
  check_close(spread.sum().item<double>(), 3.0, 1e-12, "conservation with bias_factor=1");
}

void zero_preactivation_counts_as_positive() {
  // z = 1 - 1 = 0 -> stab(0) = +eps = 0.01, ratio = 0.5 / 0.01 = 50.
  const at::Tensor x = tensor({1, -1}, {1, 2});
  const at::Tensor weight = tensor({1, 1}, {1, 2});
  const at::Tensor relevance = tensor({0.5}, {1, 1});
  const at::Tensor result = capxai::lrp_linear_cpu(x, weight, std::nullopt, relevance, 0.01, 0.0);
  check_close(result[0][0].item<double>(), 50.0, 1e-12, "sign(0)=+1, input 0");
  check_close(result[0][1].item<double>(), -50.0, 1e-12, "sign(0)=+1, input 1");
}

void targets_through_dispatcher() {
  // Two targets share one forward; through torch's dispatcher as Python would call it.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("capxai::lrp_linear", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                  const at::Tensor&, double, double)>();
  const at::Tensor x = tensor({1, 2}, {1, 2});
  const at::Tensor weight = tensor({1, 0, 1, -1}, {2, 2});
  const at::Tensor relevance = tensor({1, 0, 0, 1}, {2, 1, 2});  // target 0: output 0, target 1: output 1
  const at::Tensor result = op.call(x, weight, std::nullopt, relevance, 0.01, 0.0);
  check(result.sizes() == at::IntArrayRef({2, 1, 2}), "shape [K, N, In]");
  check_close(result[0][0][0].item<double>(), 1.0 / 1.01, 1e-12, "target 0, input 0");
  check_close(result[0][0][1].item<double>(), 0.0, 1e-12, "target 0, input 1");
  check_close(result[1][0][0].item<double>(), 1.0 / -1.01, 1e-12, "target 1, input 0");
  check_close(result[1][0][1].item<double>(), -2.0 / -1.01, 1e-12, "target 1, input 1");
}

void bad_input_names_the_argument() {
  const at::Tensor x = tensor({1, 2}, {1, 2});
  const at::Tensor weight = tensor({1, 0, 1, -1}, {2, 2});
  const at::Tensor relevance = tensor({1, 2}, {1, 2});
  check_throws([&] { capxai::lrp_linear_cpu(x.view({2}), weight, std::nullopt, relevance, 0.01, 0.0); },
               "x must be [N, In]", "rank of x");
  check_throws([&] { capxai::lrp_linear_cpu(x, weight.to(at::kFloat), std::nullopt, relevance, 0.01, 0.0); },
               "weight must have the dtype of x", "dtype of weight");
  check_throws([&] { capxai::lrp_linear_cpu(x, weight, std::nullopt, relevance.fill_(NAN), 0.01, 0.0); },
               "relevance contains NaN", "NaN relevance");
}

}  // namespace

int main() {
  hand_computed_with_bias();
  zero_preactivation_counts_as_positive();
  targets_through_dispatcher();
  bad_input_names_the_argument();
  return capxai_test::finish();
}
