// lrp_lstm's argument checks (shared by the CPU and CUDA kernels) and lrp_lstm_cell, which is lrp_lstm with T = 1
// on every backend (a composite op: it calls capxai::lrp_lstm through the dispatcher).
#include "lrp_lstm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/precision.h"

namespace capxai {

LstmArgs check_lrp_lstm_args(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                             const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                             const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                             const at::Tensor& relevance_h, const std::optional<at::Tensor>& relevance_c, double eps,
                             double bias_factor, const char* op) {
  check_hyperparameters(eps, bias_factor, op);
  check_floating(x, op, "x");
  check_dim(x, 3, op, "x", "[T, B, D]");
  const int64_t steps = x.size(0), batch = x.size(1), n_in = x.size(2);
  check_floating(weight_hh, op, "weight_hh");
  check_like(weight_hh, x, op, "weight_hh", "x");
  check_dim(weight_hh, 2, op, "weight_hh", "[4H, H]");
  const int64_t hidden = weight_hh.size(1);
  check_size(weight_hh, 0, 4 * hidden, op, "weight_hh", "[4H, H]", "4H = 4 * weight_hh.shape[1]");
  check_floating(weight_ih, op, "weight_ih");
  check_like(weight_ih, x, op, "weight_ih", "x");
  check_dim(weight_ih, 2, op, "weight_ih", "[4H, D]");
  check_size(weight_ih, 0, 4 * hidden, op, "weight_ih", "[4H, D]", "4H = weight_hh.shape[0]");
  check_size(weight_ih, 1, n_in, op, "weight_ih", "[4H, D]", "D = x.shape[-1]");
  for (const auto& [state, name] : {std::pair{&h0, "h0"}, std::pair{&c0, "c0"}}) {
    check_floating(*state, op, name);
    check_like(*state, x, op, name, "x");
    check_dim(*state, 2, op, name, "[B, H]");
    check_size(*state, 0, batch, op, name, "[B, H]", "B = x.shape[-2]");
    check_size(*state, 1, hidden, op, name, "[B, H]", "H = weight_hh.shape[1]");
  }

  LstmArgs args;
  args.eps = eps;
  args.result_dtype = x.scalar_type();
  args.bias = at::zeros({4 * hidden}, x.options().dtype(compute_dtype(x.scalar_type())));
  for (const auto& [bias, name] : {std::pair{&bias_ih, "bias_ih"}, std::pair{&bias_hh, "bias_hh"}}) {
    if (!bias->has_value() || !(*bias)->defined()) continue;
    const at::Tensor& b = **bias;
    check_floating(b, op, name);
    check_like(b, x, op, name, "x");
    check_dim(b, 1, op, name, "[4H]");
    check_size(b, 0, 4 * hidden, op, name, "[4H]", "4H = weight_hh.shape[0]");
    args.bias.add_(b);
    (bias == &bias_ih ? args.bias_ih : args.bias_hh) = b;
  }

  check_floating(relevance_h, op, "relevance_h");
  check_like(relevance_h, x, op, "relevance_h", "x");
  TORCH_CHECK_VALUE(relevance_h.dim() == 3 || relevance_h.dim() == 4, op,
                    ": relevance_h must be [T, B, H] or [K, T, B, H], got ", relevance_h.sizes());
  args.had_target_dim = relevance_h.dim() == 4;
  const int64_t first = args.had_target_dim ? 1 : 0;
  check_size(relevance_h, first, steps, op, "relevance_h", "[(K,) T, B, H]", "T = x.shape[0]");
  check_size(relevance_h, first + 1, batch, op, "relevance_h", "[(K,) T, B, H]", "B = x.shape[1]");
  check_size(relevance_h, first + 2, hidden, op, "relevance_h", "[(K,) T, B, H]", "H = weight_hh.shape[1]");
  args.relevance_h = to_compute(args.had_target_dim ? relevance_h : relevance_h.unsqueeze(0));
  if (relevance_c.has_value() && relevance_c->defined()) {
    check_floating(*relevance_c, op, "relevance_c");
    check_like(*relevance_c, x, op, "relevance_c", "x");
    TORCH_CHECK_VALUE(relevance_c->sizes() == relevance_h.sizes(), op,
                      ": relevance_c must have the shape of relevance_h (", relevance_h.sizes(), "), got ",
                      relevance_c->sizes());
    args.relevance_c = to_compute(args.had_target_dim ? *relevance_c : relevance_c->unsqueeze(0));
  }
  args.x = to_compute(x);
  args.h0 = to_compute(h0);
  args.c0 = to_compute(c0);
  args.weight_ih = to_compute(weight_ih);
  args.weight_hh = to_compute(weight_hh);
  return args;
}

void raise_lstm_non_finite(const LstmArgs& args, const char* op) {
  raise_first_non_finite(op, args.eps, args.result_dtype, {{&args.relevance_h, "relevance_h"}, {&args.relevance_c, "relevance_c"}, {&args.x, "x"},
                              {&args.h0, "h0"}, {&args.c0, "c0"}, {&args.weight_ih, "weight_ih"},
                              {&args.weight_hh, "weight_hh"}, {&args.bias_ih, "bias_ih"}, {&args.bias_hh, "bias_hh"}});
}

namespace {

// One step: unsqueeze a T = 1 axis, call lrp_lstm, squeeze it out of relevance_x.
LstmRelevance lrp_lstm_cell(const at::Tensor& x, const at::Tensor& h_prev, const at::Tensor& c_prev,
                            const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                            const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                            const at::Tensor& relevance_h, const std::optional<at::Tensor>& relevance_c, double eps,
                            double bias_factor) {
  constexpr const char* op = "lrp_lstm_cell";
  check_floating(x, op, "x");
  check_dim(x, 2, op, "x", "[B, D]");
  check_floating(relevance_h, op, "relevance_h");
  TORCH_CHECK_VALUE(relevance_h.dim() == 2 || relevance_h.dim() == 3, op,
                    ": relevance_h must be [B, H] or [K, B, H], got ", relevance_h.sizes());
  const int64_t step_dim = relevance_h.dim() - 2;
  std::optional<at::Tensor> step_relevance_c;
  if (relevance_c.has_value() && relevance_c->defined()) {
    check_floating(*relevance_c, op, "relevance_c");
    TORCH_CHECK_VALUE(relevance_c->sizes() == relevance_h.sizes(), op,
                      ": relevance_c must have the shape of relevance_h (", relevance_h.sizes(), "), got ",
                      relevance_c->sizes());
    step_relevance_c = relevance_c->unsqueeze(step_dim);
  }
  static auto sequence_op = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("capxai::lrp_lstm", "")
                                .typed<LstmRelevance(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&,
                                                     const std::optional<at::Tensor>&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&, double, double)>();
  // Errors come from lrp_lstm's checks; say which op the user called and its argument names.
  const auto as_cell_message = [](const c10::Error& error) {
    std::string message = error.msg();
    for (const auto& [sequence_name, cell_name] : {std::pair{"h0", "h_prev"}, std::pair{"c0", "c_prev"}}) {
      const std::string from = std::string(" ") + sequence_name + " ", to = std::string(" ") + cell_name + " ";
      for (size_t at = message.find(from); at != std::string::npos; at = message.find(from, at + to.size()))
        message.replace(at, from.size(), to);
    }
    return "lrp_lstm_cell (as lrp_lstm with T = 1): " + message;
  };
  // Below autograd: lrp_lstm's autograd kernel (which refuses a backward) runs in Python and would turn the errors
  // caught here into Python ones; the cell's result does not require grad (relevance is not differentiable).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  try {
    auto [rel_x, rel_h, rel_c] =
        sequence_op.call(x.unsqueeze(0), h_prev, c_prev, weight_ih, weight_hh, bias_ih, bias_hh,
                         relevance_h.unsqueeze(step_dim), step_relevance_c, eps, bias_factor);
    return {rel_x.squeeze(step_dim), rel_h, rel_c};
  } catch (const c10::TypeError& error) {
    C10_THROW_ERROR(TypeError, as_cell_message(error));
  } catch (const c10::ValueError& error) {
    C10_THROW_ERROR(ValueError, as_cell_message(error));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CompositeImplicitAutograd, m) {
  m.impl("lrp_lstm_cell", &lrp_lstm_cell);
}

}  // namespace capxai
