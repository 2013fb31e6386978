// CPU passes of lrp_lstm (docs/LRP_RULES.md, "LSTM cell"); the driver is lrp_lstm_impl.h. Each pass is one sweep over
// memory, parallel over rows with at::parallel_for, inner loops over H or D left to the compiler's vectoriser.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "../../common/stabilize.h"
#include "../../common/finite.h"
#include "../lrp_lstm_impl.h"

namespace capxai {
namespace {

int64_t grain_for(int64_t row_length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length));
}

struct CpuPasses {
  // Gates -> c_t, h_t and the target-independent coefficients of the backward (see LstmForward). The sigmoid and
  // tanh go through ATen's vectorised kernels (scalar libm calls would cost more than the GEMMs); the rest is one
  // fused pass, which also flags NaN/Inf in the four pre-activations and the cell (see lstm_forward).
  static void forward_step(const at::Tensor& gates, const at::Tensor& bias_g, at::Tensor& cell, at::Tensor hidden_out,
                           at::Tensor keep_cell, at::Tensor to_gate_ratio, at::Tensor absorbed_weight, double eps,
                           double bias_factor, const at::Tensor& non_finite) {
    const int64_t batch = cell.size(0), hidden = cell.size(1);
    at::Tensor activated = at::sigmoid(gates);
    at::Tensor activated_g = activated.narrow(1, 2 * hidden, hidden);
    at::tanh_out(activated_g, gates.narrow(1, 2 * hidden, hidden));
    AT_DISPATCH_FLOATING_TYPES(cell.scalar_type(), "lrp_lstm_forward_cpu", [&] {
      const scalar_t* z = gates.const_data_ptr<scalar_t>();
      const scalar_t* act = activated.const_data_ptr<scalar_t>();
      const scalar_t* b_g = bias_g.const_data_ptr<scalar_t>();
      scalar_t* c = cell.mutable_data_ptr<scalar_t>();
      scalar_t* keep = keep_cell.mutable_data_ptr<scalar_t>();
      scalar_t* to_gate = to_gate_ratio.mutable_data_ptr<scalar_t>();
      scalar_t* absorb = absorbed_weight.defined() ? absorbed_weight.mutable_data_ptr<scalar_t>() : nullptr;
      const scalar_t e = static_cast<scalar_t>(eps);
      const scalar_t half_share = static_cast<scalar_t>(bias_factor * eps / 2.0);
      std::atomic<bool> finite{true};
      at::parallel_for(0, batch, grain_for(4 * hidden), [&](int64_t begin, int64_t end) {
        int bad = 0;
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* act_row = act + b * 4 * hidden;
          const scalar_t* z_row = z + b * 4 * hidden;
          const scalar_t* z_g = z_row + 2 * hidden;
          for (int64_t j = 0; j < hidden; ++j) {
            const int64_t at = b * hidden + j;
            const scalar_t kept = act_row[hidden + j] * c[at];  // f * c_{t-1}
            const scalar_t written = act_row[j] * act_row[2 * hidden + j];  // i * g
            const scalar_t c_new = kept + written;
            const scalar_t share = half_share * sign_nonneg_as_plus(c_new);
            const scalar_t stab_c = stabilize(c_new, e);
            keep[at] = (kept + share) / stab_c;
            to_gate[at] = (written + share) / stab_c / stabilize(z_g[j], e);
            if (absorb != nullptr) absorb[at] = b_g[j] + e * sign_nonneg_as_plus(z_g[j]);
            c[at] = c_new;
            bad |= non_finite_flag(z_row[j]) | non_finite_flag(z_row[hidden + j]) | non_finite_flag(z_g[j]) |
                   non_finite_flag(z_row[3 * hidden + j]) | non_finite_flag(c_new);
          }
        }
        if (bad) finite.store(false, std::memory_order_relaxed);
      });
      if (!finite.load()) non_finite.fill_(1);
    });
    at::tanh_out(hidden_out, cell);
    hidden_out.mul_(activated.narrow(1, 3 * hidden, hidden));  // h_t = o * tanh(c_t)
  }

  // last[k] = the last step with non-zero injected relevance for target k (-1 if none). A scan of (k, t) stops at
  // its first non-zero value; NaN/Inf count as non-zero, so they reach the backward and are caught in its output.
  static std::vector<int64_t> last_active_steps(const at::Tensor& relevance_h, const at::Tensor& relevance_c,
                                                bool& finite) {
    const int64_t targets = relevance_h.size(0), steps = relevance_h.size(1);
    const int64_t step_size = relevance_h.size(2) * relevance_h.size(3);
    std::vector<int64_t> last(targets, -1);
    AT_DISPATCH_FLOATING_TYPES(relevance_h.scalar_type(), "lrp_lstm_last_step_cpu", [&] {
      const scalar_t* rel_h = relevance_h.const_data_ptr<scalar_t>();
      const scalar_t* rel_c = relevance_c.defined() ? relevance_c.const_data_ptr<scalar_t>() : nullptr;
      auto any_nonzero = [&](const scalar_t* values) {
        return std::any_of(values, values + step_size, [](scalar_t v) { return v != scalar_t(0); });
      };
      at::parallel_for(0, targets, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          for (int64_t t = steps - 1; t >= 0; --t) {
            const int64_t base = (k * steps + t) * step_size;
            if (any_nonzero(rel_h + base) || (rel_c != nullptr && any_nonzero(rel_c + base))) {
              last[k] = t;
              break;
            }
          }
        }
      });
    });
    finite = true;
    return last;
  }

  // One reverse step for the active slots: gather the injected and carried relevance, split it over the cell's two
  // terms, and leave Rg / stab(z_g) (gate_ratio) for the GEMM; the absorbed share of each (slot, b) row too.
  // hidden_sum and absorbed hold what step t + 1 sent to h_t; absorbed is overwritten with step t's share.
  static void backward_step(const at::Tensor& relevance_h, const at::Tensor& relevance_c,
                            const at::Tensor& slot_target, int64_t t, int64_t active, const at::Tensor& hidden_t,
                            const at::Tensor& hidden_sum, at::Tensor& absorbed, at::Tensor& carry_cell,
                            const at::Tensor& keep_cell, const at::Tensor& to_gate_ratio,
                            const at::Tensor& absorbed_weight, at::Tensor& gate_ratio, double share_scale) {
    const int64_t steps = relevance_h.size(1), batch = relevance_h.size(2), hidden = relevance_h.size(3);
    const int64_t sum_stride = hidden_sum.stride(0);
    AT_DISPATCH_FLOATING_TYPES(relevance_h.scalar_type(), "lrp_lstm_backward_step_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* rel_h = relevance_h.const_data_ptr<scalar_t>();
      const scalar_t* rel_c = relevance_c.defined() ? relevance_c.const_data_ptr<scalar_t>() : nullptr;
      const int64_t* target_of = slot_target.const_data_ptr<int64_t>();
      const scalar_t* h_t = hidden_t.const_data_ptr<scalar_t>();
      const scalar_t* h_sum = hidden_sum.const_data_ptr<scalar_t>();
      scalar_t* shares = absorbed.defined() ? absorbed.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* carry = carry_cell.mutable_data_ptr<scalar_t>();
      const scalar_t* keep = keep_cell.const_data_ptr<scalar_t>();
      const scalar_t* to_gate = to_gate_ratio.const_data_ptr<scalar_t>();
      const scalar_t* absorb = absorbed_weight.defined() ? absorbed_weight.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* ratio = gate_ratio.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, active * batch, grain_for(hidden), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t slot = row / batch, b = row % batch;
          const scalar_t* injected_h = rel_h + ((target_of[slot] * steps + t) * batch + b) * hidden;
          const scalar_t* injected_c =
              rel_c != nullptr ? rel_c + ((target_of[slot] * steps + t) * batch + b) * hidden : nullptr;
          const scalar_t* h_row = h_t + b * hidden;
          const scalar_t* sum_row = h_sum + row * sum_stride;
          const scalar_t* keep_row = keep + b * hidden;
          const scalar_t* to_gate_row = to_gate + b * hidden;
          scalar_t* carry_row = carry + row * hidden;
          scalar_t* ratio_row = ratio + row * hidden;
          const scalar_t carried_share = shares != nullptr ? shares[row] : scalar_t(0);
          acc_t absorbed_sum = 0;
          for (int64_t j = 0; j < hidden; ++j) {
            const scalar_t r_h = injected_h[j] + h_row[j] * sum_row[j] + carried_share;
            const scalar_t r_c = (injected_c != nullptr ? injected_c[j] : scalar_t(0)) + carry_row[j] + r_h;
            carry_row[j] = keep_row[j] * r_c;
            const scalar_t s = to_gate_row[j] * r_c;
            ratio_row[j] = s;
            if (absorb != nullptr) absorbed_sum += acc_t(s) * acc_t(absorb[b * hidden + j]);
          }
          if (shares != nullptr) shares[row] = scalar_t(absorbed_sum * acc_t(share_scale));
        }
      });
    });
  }

  // relevance_x[k, t] = x[t] * input_sum[slot] + absorbed[slot] for the active slots, 0 for the others; right
  // after the step's GEMM, while its output is still in cache. Sets non_finite[0] on NaN/Inf.
  static void input_step(const at::Tensor& x, int64_t t, int64_t active, const at::Tensor& input_sum,
                         const at::Tensor& absorbed, const at::Tensor& slot_target, at::Tensor& relevance_x,
                         at::Tensor& non_finite) {
    const int64_t targets = relevance_x.size(0), steps = x.size(0), batch = x.size(1), n_in = x.size(2);
    const int64_t sum_stride = input_sum.stride(0);
    std::atomic<bool> all_finite{true};
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrp_lstm_input_step_cpu", [&] {
      const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
      const scalar_t* sum = input_sum.const_data_ptr<scalar_t>();
      const scalar_t* shares = absorbed.defined() ? absorbed.const_data_ptr<scalar_t>() : nullptr;
      const int64_t* target_of = slot_target.const_data_ptr<int64_t>();
      scalar_t* out = relevance_x.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, targets * batch, grain_for(n_in), [&](int64_t begin, int64_t end) {
        int non_finite = 0;
        for (int64_t row = begin; row < end; ++row) {
          const int64_t slot = row / batch, b = row % batch;
          scalar_t* out_row = out + ((target_of[slot] * steps + t) * batch + b) * n_in;
          if (slot >= active) {
            std::fill(out_row, out_row + n_in, scalar_t(0));
            continue;
          }
          const scalar_t* x_row = x_ptr + (t * batch + b) * n_in;
          const scalar_t* sum_row = sum + row * sum_stride;
          const scalar_t add = shares != nullptr ? shares[row] : scalar_t(0);
          for (int64_t d = 0; d < n_in; ++d) {
            const scalar_t value = x_row[d] * sum_row[d] + add;
            out_row[d] = value;
            non_finite |= non_finite_flag(value);
          }
        }
        if (non_finite) all_finite.store(false);
      });
    });
    if (!all_finite.load()) non_finite.fill_(1);
  }
};

LstmRelevance lrp_lstm_cpu(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                           const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                           const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                           const at::Tensor& relevance_h, const std::optional<at::Tensor>& relevance_c, double eps,
                           double bias_factor) {
  const at::NoGradGuard no_grad;  // relevance is not differentiated; inner ATen calls must not track
  const FullPrecisionGemms no_tf32;
  const LstmArgs args = check_lrp_lstm_args(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h,
                                            relevance_c, eps, bias_factor, "lrp_lstm");
  return lrp_lstm_impl<CpuPasses>(args, eps, bias_factor, "lrp_lstm");
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CPU, m) {
  m.impl("lrp_lstm", &lrp_lstm_cpu);
}

}  // namespace capxai
