// The backend-independent driver of lrp_lstm: buffers, GEMMs (at::mm -> BLAS / cuBLAS), the reverse-time loop and
// the skipping of zero work. `Passes` supplies the fused elementwise passes of one backend (cpu/ or cuda/).
//
// Work skipped: target k carries relevance only at steps <= last[k], its last step with non-zero injected
// relevance (for "explain every word", target k = word k, so half the work is zero). Targets are ordered by last
// step, descending, so that at step t the active targets are a prefix of the slots and every GEMM runs on
// contiguous rows. The forward is computed once for all K targets.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../common/precision.h"
#include "lrp_lstm.h"

namespace capxai {

// Forward quantities the backward needs, per step, none of them depending on the targets.
struct LstmForward {
  at::Tensor hidden;          // [T + 1, B, H]: h0, h_1, ..., h_T
  at::Tensor keep_cell;       // [T, B, H]: (f c_{t-1} + share) / stab(c_t)       -> Rc_{t-1} = keep_cell * Rc
  at::Tensor to_gate_ratio;   // [T, B, H]: (i g + share) / stab(c_t) / stab(z_g) -> Rg / stab(z_g) = ... * Rc
  at::Tensor absorbed_weight; // [T, B, H]: b_g + eps sign(z_g) (only with bias_factor != 0)
};

// Raises the int flag `non_finite` when a gate's pre-activation or a cell state is NaN/Inf: an Inf in a row the rule
// never reads (the i, f, o gates') still enters the forward, and sigmoid(inf) = 1 would hide it from the result.
template <typename Passes>
LstmForward lstm_forward(const LstmArgs& a, double eps, double bias_factor, const at::Tensor& non_finite) {
  const int64_t steps = a.x.size(0), batch = a.x.size(1), n_in = a.x.size(2), hidden = a.h0.size(1);
  const auto options = a.x.options();
  LstmForward fwd;
  fwd.hidden = at::empty({steps + 1, batch, hidden}, options);
  fwd.hidden[0].copy_(a.h0);
  fwd.keep_cell = at::empty({steps, batch, hidden}, options);
  fwd.to_gate_ratio = at::empty({steps, batch, hidden}, options);
  if (bias_factor != 0.0) fwd.absorbed_weight = at::empty({steps, batch, hidden}, options);
  if (steps == 0 || batch == 0 || hidden == 0) return fwd;
  // All steps' input projections in one GEMM; then one small GEMM and one fused pass per step.
  const at::Tensor input_gates =
      affine_full_precision(a.x.view({steps * batch, n_in}), a.weight_ih, a.bias).view({steps, batch, 4 * hidden});
  at::Tensor gates = at::empty({batch, 4 * hidden}, options);
  at::Tensor cell = a.c0.clone();
  const at::Tensor bias_g = a.bias.narrow(0, 2 * hidden, hidden);
  for (int64_t t = 0; t < steps; ++t) {
    at::addmm_out(gates, input_gates[t], fwd.hidden[t], a.weight_hh.t());
    Passes::forward_step(gates, bias_g, cell, fwd.hidden[t + 1], fwd.keep_cell[t], fwd.to_gate_ratio[t],
                         bias_factor != 0.0 ? fwd.absorbed_weight[t] : at::Tensor(), eps, bias_factor, non_finite);
  }
  return fwd;
}

// Targets in slot order (last step descending) and, per step, how many slots are active.
struct TargetSchedule {
  std::vector<int64_t> slot_target;  // slot -> target
  std::vector<int64_t> active;       // [T]: slots 0..active[t]-1 carry relevance at step t
};

inline TargetSchedule schedule_targets(const std::vector<int64_t>& last_step, int64_t steps) {
  TargetSchedule schedule;
  const int64_t targets = static_cast<int64_t>(last_step.size());
  schedule.slot_target.resize(targets);
  std::iota(schedule.slot_target.begin(), schedule.slot_target.end(), 0);
  std::stable_sort(schedule.slot_target.begin(), schedule.slot_target.end(),
                   [&](int64_t a, int64_t b) { return last_step[a] > last_step[b]; });
  schedule.active.assign(steps, 0);
  for (int64_t t = 0; t < steps; ++t)
    schedule.active[t] = std::count_if(last_step.begin(), last_step.end(), [&](int64_t last) { return last >= t; });
  return schedule;
}

// The slot order as a tensor on `device`. To a GPU from pinned memory, asynchronously: a copy from pageable memory
// synchronises the host with the stream (a third sync per call, which also waited for the whole forward when the copy
// came after it). The caching host allocator keeps the pinned block alive until the copy has run.
inline at::Tensor slots_on_device(const std::vector<int64_t>& slot_target, const at::Device& device) {
  const at::Tensor host = at::tensor(slot_target, at::TensorOptions().dtype(at::kLong));
  if (device.is_cpu()) return host;
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

template <typename Passes>
LstmRelevance lrp_lstm_impl(const LstmArgs& a, double eps, double bias_factor, const char* op) {
  const int64_t targets = a.relevance_h.size(0);
  const int64_t steps = a.x.size(0), batch = a.x.size(1), n_in = a.x.size(2), hidden = a.h0.size(1);
  const auto options = a.x.options();
  const bool spread_bias = bias_factor != 0.0;

  bool finite = true;
  const std::vector<int64_t> last_step = Passes::last_active_steps(a.relevance_h, a.relevance_c, finite);
  if (!finite) raise_lstm_non_finite(a, op);
  const TargetSchedule schedule = schedule_targets(last_step, steps);
  const at::Tensor slot_target = slots_on_device(schedule.slot_target, options.device());
  at::Tensor non_finite = at::zeros({1}, options.dtype(at::kInt));  // raised by the passes, read once at the end
  const LstmForward fwd = lstm_forward<Passes>(a, eps, bias_factor, non_finite);

  // One GEMM per step gives both halves of the epsilon rule through the g-rows: Rg / stab(z_g) @ [W_ih_g | W_hh_g].
  const at::Tensor weight_g = at::cat({a.weight_ih.narrow(0, 2 * hidden, hidden),
                                       a.weight_hh.narrow(0, 2 * hidden, hidden)}, 1);  // [H, D + H]
  // Per (slot, b) row. Rows of slots not yet active stay zero, which is exactly their carried relevance.
  at::Tensor sums = at::zeros({targets * batch, n_in + hidden}, options);
  const at::Tensor input_sum = sums.narrow(1, 0, n_in);        // -> relevance of x_t
  const at::Tensor hidden_sum = sums.narrow(1, n_in, hidden);  // -> relevance of h_{t-1}
  at::Tensor gate_ratio = at::empty({targets * batch, hidden}, options);  // Rg / stab(z_g) of the current step
  at::Tensor absorbed = spread_bias ? at::zeros({targets * batch}, options) : at::Tensor();
  at::Tensor carry_cell = at::zeros({targets * batch, hidden}, options);
  const double share_scale = spread_bias ? bias_factor / double(n_in + hidden) : 0.0;
  at::Tensor relevance_x = at::empty({targets, steps, batch, n_in}, options);

  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t active = schedule.active[t];
    if (active > 0) {
      Passes::backward_step(a.relevance_h, a.relevance_c, slot_target, t, active, fwd.hidden[t + 1], hidden_sum,
                            absorbed, carry_cell, fwd.keep_cell[t], fwd.to_gate_ratio[t],
                            spread_bias ? fwd.absorbed_weight[t] : at::Tensor(), gate_ratio, share_scale);
      at::Tensor step_sums = sums.narrow(0, 0, active * batch);
      at::mm_out(step_sums, gate_ratio.narrow(0, 0, active * batch), weight_g);
    }
    Passes::input_step(a.x, t, active, input_sum, absorbed, slot_target, relevance_x, non_finite);
  }

  // Relevance of the initial states, back in the caller's target order.
  at::Tensor relevance_h0 = at::empty({targets, batch, hidden}, options);
  at::Tensor relevance_c0 = at::empty({targets, batch, hidden}, options);
  at::Tensor h0_relevance = fwd.hidden[0].unsqueeze(0) * hidden_sum.view({targets, batch, hidden});
  if (spread_bias) h0_relevance.add_(absorbed.view({targets, batch, 1}));
  relevance_h0.index_copy_(0, slot_target, h0_relevance);
  relevance_c0.index_copy_(0, slot_target, carry_cell.view({targets, batch, hidden}));
  // Every check of the result folds into the device flag; one host synchronisation reads it (the schedule's read
  // of the injected relevance, above, is the other; there is no third: slots_on_device).
  for (const at::Tensor* state : {&relevance_h0, &relevance_c0})
    if (state->numel() > 0) non_finite.bitwise_or_(at::isfinite(*state).logical_not().any());
  relevance_x = round_to(relevance_x, a.result_dtype, non_finite);
  relevance_h0 = round_to(relevance_h0, a.result_dtype, non_finite);
  relevance_c0 = round_to(relevance_c0, a.result_dtype, non_finite);
  if (non_finite.item<int>() != 0) raise_lstm_non_finite(a, op);

  if (!a.had_target_dim) return {relevance_x.squeeze(0), relevance_h0.squeeze(0), relevance_c0.squeeze(0)};
  return {relevance_x, relevance_h0, relevance_c0};
}

}  // namespace capxai
