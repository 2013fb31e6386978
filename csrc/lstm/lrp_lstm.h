// lrp_lstm: signal-take-all LRP through a whole LSTM sequence (docs/LRP_RULES.md, "LSTM cell", Arras et al. 2017).
//   x [T, B, D], h0 / c0 [B, H], weight_ih [4H, D], weight_hh [4H, H], bias_ih / bias_hh [4H] or None (torch's gate
//   order i, f, g, o), relevance_h / relevance_c [(K,) T, B, H]  ->  relevance_x [(K,) T, B, D],
//   relevance_h0 [(K,) B, H], relevance_c0 [(K,) B, H].
// lrp_lstm_cell is one step of it (T = 1).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace capxai {

// Validated, contiguous arguments; relevance viewed as [K, T, B, H].
struct LstmArgs {
  at::Tensor x;            // [T, B, D]
  at::Tensor h0, c0;       // [B, H]
  at::Tensor weight_ih;    // [4H, D]
  at::Tensor weight_hh;    // [4H, H]
  at::Tensor bias;         // [4H] = bias_ih + bias_hh (zeros when both are None)
  at::Tensor bias_ih, bias_hh;  // as given (undefined when None), only to name the one holding NaN/Inf
  at::Tensor relevance_h;  // [K, T, B, H]
  at::Tensor relevance_c;  // [K, T, B, H] or undefined
  bool had_target_dim;     // relevance came with a leading K
  at::ScalarType result_dtype;  // the caller's dtype; the tensors above are in the compute dtype (precision.h)
  double eps = -1.0;     // the stabiliser (named when a denominator is 0)
};

LstmArgs check_lrp_lstm_args(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                             const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                             const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                             const at::Tensor& relevance_h, const std::optional<at::Tensor>& relevance_c, double eps,
                             double bias_factor, const char* op);

// Names the argument holding NaN/Inf, or says the computation overflowed.
[[noreturn]] void raise_lstm_non_finite(const LstmArgs& args, const char* op);

using LstmRelevance = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

}  // namespace capxai
