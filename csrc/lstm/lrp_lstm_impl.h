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

#include "lrp_lstm.h"

namespace capxai {

// Forward quantities the backward needs, per step, none of them depending on the targets.
struct LstmForward {
  at::Tensor hidden;          // [T + 1, B, H]: h0, h_1, ..., h_T
  at::Tensor keep_cell;       // [T, B, H]: (f c_{t-1} + share) / stab(c_t)       -> Rc_{t-1} = keep_cell * Rc
  at::Tensor to_gate_ratio;   // [T, B, H]: (i g + share) / stab(c_t) / stab(z_g) -> Rg / stab(z_g) = ... * Rc
  at::Tensor absorbed_weight; // [T, B, H]: b_g + eps sign(z_g) (only with bias_factor != 0)
};

template <typename Passes>
LstmForward lstm_forward(const LstmArgs& a, double eps, double bias_factor) {
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
      at::addmm(a.bias, a.x.view({steps * batch, n_in}), a.weight_ih.t()).view({steps, batch, 4 * hidden});
  at::Tensor gates = at::empty({batch, 4 * hidden}, options);
  at::Tensor cell = a.c0.clone();
  const at::Tensor bias_g = a.bias.narrow(0, 2 * hidden, hidden);
  for (int64_t t = 0; t < steps; ++t) {
    at::addmm_out(gates, input_gates[t], fwd.hidden[t], a.weight_hh.t());
    Passes::forward_step(gates, bias_g, cell, fwd.hidden[t + 1], fwd.keep_cell[t], fwd.to_gate_ratio[t],
                         bias_factor != 0.0 ? fwd.absorbed_weight[t] : at::Tensor(), eps, bias_factor);
  }
  return fwd;
}

// Targets in slot order (last step descending) and, per step, how many slots are active.
struct TargetSchedule {
  std::vector<int64_t> slot_target;  // slot -> target
  std::vector<int64_t> target_slot;  // target -> slot
  std::vector<int64_t> active;       // [T]: slots 0..active[t]-1 carry relevance at step t
  std::vector<int64_t> offset;       // [T]: first packed (slot, t) pair of step t
  int64_t pairs = 0;                 // number of packed (slot, t) pairs
};

inline TargetSchedule schedule_targets(const std::vector<int64_t>& last_step, int64_t steps) {
  TargetSchedule schedule;
  const int64_t targets = static_cast<int64_t>(last_step.size());
  schedule.slot_target.resize(targets);
  std::iota(schedule.slot_target.begin(), schedule.slot_target.end(), 0);
  std::stable_sort(schedule.slot_target.begin(), schedule.slot_target.end(),
                   [&](int64_t a, int64_t b) { return last_step[a] > last_step[b]; });
  schedule.target_slot.resize(targets);
  for (int64_t slot = 0; slot < targets; ++slot) schedule.target_slot[schedule.slot_target[slot]] = slot;
  schedule.active.assign(steps, 0);
  schedule.offset.assign(steps, 0);
  for (int64_t t = steps - 1; t >= 0; --t) {
    schedule.active[t] = std::count_if(last_step.begin(), last_step.end(), [&](int64_t last) { return last >= t; });
    schedule.offset[t] = schedule.pairs;
    schedule.pairs += schedule.active[t];
  }
  return schedule;
}

// [K, T] -> index of the packed (slot, step) pair, or -1 where the target carries no relevance at that step.
inline std::vector<int64_t> packed_pair_index(const TargetSchedule& schedule, int64_t steps) {
  const int64_t targets = static_cast<int64_t>(schedule.slot_target.size());
  std::vector<int64_t> pair_of(targets * steps, -1);
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t slot = 0; slot < schedule.active[t]; ++slot)
      pair_of[schedule.slot_target[slot] * steps + t] = schedule.offset[t] + slot;
  return pair_of;
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
  const LstmForward fwd = lstm_forward<Passes>(a, eps, bias_factor);

  const at::Tensor slot_target =
      at::tensor(schedule.slot_target, at::TensorOptions().dtype(at::kLong)).to(options.device());
  at::Tensor gate_ratio = at::empty({schedule.pairs, batch, hidden}, options);  // Rg / stab(z_g) per pair
  at::Tensor absorbed = spread_bias ? at::zeros({schedule.pairs, batch}, options) : at::Tensor();
  at::Tensor hidden_sum = at::zeros({targets, batch, hidden}, options);  // sum_j W_hh[g_j, :] ratio_j, per slot
  at::Tensor hidden_absorbed = at::zeros({targets, batch}, options);    // absorbed share of h, per slot
  at::Tensor carry_cell = at::zeros({targets, batch, hidden}, options);
  const at::Tensor weight_ih_g = a.weight_ih.narrow(0, 2 * hidden, hidden);  // [H, D]
  const at::Tensor weight_hh_g = a.weight_hh.narrow(0, 2 * hidden, hidden);  // [H, H]
  const double share_scale = spread_bias ? bias_factor / double(n_in + hidden) : 0.0;

  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t active = schedule.active[t];
    if (active == 0) continue;
    at::Tensor step_ratio = gate_ratio.narrow(0, schedule.offset[t], active);
    Passes::backward_step(a.relevance_h, a.relevance_c, slot_target, t, active, fwd.hidden[t + 1], hidden_sum,
                          hidden_absorbed, carry_cell, fwd.keep_cell[t], fwd.to_gate_ratio[t],
                          spread_bias ? fwd.absorbed_weight[t] : at::Tensor(), step_ratio,
                          spread_bias ? absorbed.narrow(0, schedule.offset[t], active) : at::Tensor(),
                          share_scale);
    at::Tensor step_sum = hidden_sum.narrow(0, 0, active).view({active * batch, hidden});
    at::mm_out(step_sum, step_ratio.view({active * batch, hidden}), weight_hh_g);
  }

  // Relevance of the initial states, back in the caller's target order.
  at::Tensor relevance_h0 = at::empty({targets, batch, hidden}, options);
  at::Tensor relevance_c0 = at::empty({targets, batch, hidden}, options);
  relevance_h0.index_copy_(0, slot_target, fwd.hidden[0].unsqueeze(0) * hidden_sum + hidden_absorbed.unsqueeze(-1));
  relevance_c0.index_copy_(0, slot_target, carry_cell);

  // Relevance of the inputs: x * (ratio @ W_ih[g rows]) + absorbed share for every active (target, step) pair,
  // 0 for the others; how the GEMMs are batched is the backend's choice.
  at::Tensor relevance_x = at::empty({targets, steps, batch, n_in}, options);
  finite = Passes::input_relevance(a.x, gate_ratio, spread_bias ? absorbed : at::Tensor(), schedule, weight_ih_g,
                                   relevance_x);
  finite = finite && at::isfinite(relevance_h0).all().item<bool>() && at::isfinite(relevance_c0).all().item<bool>();
  if (!finite) raise_lstm_non_finite(a, op);

  if (!a.had_target_dim) return {relevance_x.squeeze(0), relevance_h0.squeeze(0), relevance_c0.squeeze(0)};
  return {relevance_x, relevance_h0, relevance_c0};
}

}  // namespace capxai
