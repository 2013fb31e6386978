// CPU passes of lrp_lstm (LRP_RULES.md, "LSTM cell"); the driver is lrp_lstm_impl.h. Each pass is one sweep over
// memory, parallel over rows with at::parallel_for, inner loops over H or D left to the compiler's vectoriser.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "../../common/stabilize.h"
#include "../lrp_lstm_impl.h"

namespace capxai {
namespace {

int64_t grain_for(int64_t row_length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length));
}

template <typename scalar_t>
inline scalar_t sigmoid(scalar_t z) {
  return scalar_t(1) / (scalar_t(1) + std::exp(-z));
}

struct CpuPasses {
  // Gates -> c_t, h_t and the target-independent coefficients of the backward (see LstmForward).
  static void forward_step(const at::Tensor& gates, const at::Tensor& bias_g, at::Tensor& cell, at::Tensor hidden_out,
                           at::Tensor keep_cell, at::Tensor to_gate_ratio, at::Tensor absorbed_weight, double eps,
                           double bias_factor) {
    const int64_t batch = cell.size(0), hidden = cell.size(1);
    AT_DISPATCH_FLOATING_TYPES(cell.scalar_type(), "lrp_lstm_forward_cpu", [&] {
      const scalar_t* z = gates.const_data_ptr<scalar_t>();
      const scalar_t* b_g = bias_g.const_data_ptr<scalar_t>();
      scalar_t* c = cell.mutable_data_ptr<scalar_t>();
      scalar_t* h = hidden_out.mutable_data_ptr<scalar_t>();
      scalar_t* keep = keep_cell.mutable_data_ptr<scalar_t>();
      scalar_t* to_gate = to_gate_ratio.mutable_data_ptr<scalar_t>();
      scalar_t* absorb = absorbed_weight.defined() ? absorbed_weight.mutable_data_ptr<scalar_t>() : nullptr;
      const scalar_t e = static_cast<scalar_t>(eps);
      const scalar_t half_share = static_cast<scalar_t>(bias_factor * eps / 2.0);
      at::parallel_for(0, batch, grain_for(4 * hidden), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* z_row = z + b * 4 * hidden;
          for (int64_t j = 0; j < hidden; ++j) {
            const scalar_t i = sigmoid(z_row[j]);
            const scalar_t f = sigmoid(z_row[hidden + j]);
            const scalar_t z_g = z_row[2 * hidden + j];
            const scalar_t g = std::tanh(z_g);
            const scalar_t o = sigmoid(z_row[3 * hidden + j]);
            const int64_t at = b * hidden + j;
            const scalar_t kept = f * c[at];
            const scalar_t written = i * g;
            const scalar_t c_new = kept + written;
            const scalar_t share = half_share * sign_nonneg_as_plus(c_new);
            const scalar_t stab_c = stabilize(c_new, e);
            keep[at] = (kept + share) / stab_c;
            to_gate[at] = (written + share) / stab_c / stabilize(z_g, e);
            if (absorb != nullptr) absorb[at] = b_g[j] + e * sign_nonneg_as_plus(z_g);
            c[at] = c_new;
            h[at] = o * std::tanh(c_new);
          }
        }
      });
    });
  }

  // last[k] = the last step with non-zero injected relevance for target k (-1 if none); checks finiteness.
  static std::vector<int64_t> last_active_steps(const at::Tensor& relevance_h, const at::Tensor& relevance_c,
                                                bool& finite) {
    const int64_t targets = relevance_h.size(0), steps = relevance_h.size(1);
    const int64_t step_size = relevance_h.size(2) * relevance_h.size(3);
    std::vector<int64_t> last(targets, -1);
    std::atomic<bool> all_finite{true};
    AT_DISPATCH_FLOATING_TYPES(relevance_h.scalar_type(), "lrp_lstm_last_step_cpu", [&] {
      const scalar_t* rel_h = relevance_h.const_data_ptr<scalar_t>();
      const scalar_t* rel_c = relevance_c.defined() ? relevance_c.const_data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, targets * steps, grain_for(step_size), [&](int64_t begin, int64_t end) {
        scalar_t probe = 0;
        for (int64_t pair = begin; pair < end; ++pair) {
          bool nonzero = false;
          const int64_t base = pair * step_size;
          for (int64_t e = 0; e < step_size; ++e) {
            probe += rel_h[base + e] - rel_h[base + e];
            nonzero |= rel_h[base + e] != scalar_t(0);
          }
          if (rel_c != nullptr) {
            for (int64_t e = 0; e < step_size; ++e) {
              probe += rel_c[base + e] - rel_c[base + e];
              nonzero |= rel_c[base + e] != scalar_t(0);
            }
          }
          if (nonzero) {
            // Only the chunk owning (k, t) writes last[k] for that t; a later t of the same k may sit in another
            // chunk, so take the maximum atomically.
            std::atomic_ref<int64_t> slot(last[pair / steps]);
            int64_t seen = slot.load();
            const int64_t t = pair % steps;
            while (seen < t && !slot.compare_exchange_weak(seen, t)) {
            }
          }
        }
        if (probe != scalar_t(0)) all_finite.store(false);
      });
    });
    finite = all_finite.load();
    return last;
  }

  // One reverse step for the active slots: gather the injected and carried relevance, split it over the cell's two
  // terms, and leave Rg / stab(z_g) (step_ratio) for the GEMMs; the absorbed share of each (slot, b) row too.
  static void backward_step(const at::Tensor& relevance_h, const at::Tensor& relevance_c,
                            const at::Tensor& slot_target, int64_t t, int64_t active, const at::Tensor& hidden_t,
                            const at::Tensor& hidden_sum, at::Tensor& hidden_absorbed, at::Tensor& carry_cell,
                            const at::Tensor& keep_cell, const at::Tensor& to_gate_ratio,
                            const at::Tensor& absorbed_weight, at::Tensor step_ratio, at::Tensor step_absorbed,
                            double share_scale) {
    const int64_t steps = relevance_h.size(1), batch = relevance_h.size(2), hidden = relevance_h.size(3);
    AT_DISPATCH_FLOATING_TYPES(relevance_h.scalar_type(), "lrp_lstm_backward_step_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* rel_h = relevance_h.const_data_ptr<scalar_t>();
      const scalar_t* rel_c = relevance_c.defined() ? relevance_c.const_data_ptr<scalar_t>() : nullptr;
      const int64_t* target_of = slot_target.const_data_ptr<int64_t>();
      const scalar_t* h_t = hidden_t.const_data_ptr<scalar_t>();
      const scalar_t* h_sum = hidden_sum.const_data_ptr<scalar_t>();
      scalar_t* h_absorbed = hidden_absorbed.mutable_data_ptr<scalar_t>();
      scalar_t* carry = carry_cell.mutable_data_ptr<scalar_t>();
      const scalar_t* keep = keep_cell.const_data_ptr<scalar_t>();
      const scalar_t* to_gate = to_gate_ratio.const_data_ptr<scalar_t>();
      const scalar_t* absorb = absorbed_weight.defined() ? absorbed_weight.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* ratio = step_ratio.mutable_data_ptr<scalar_t>();
      scalar_t* pair_absorbed = step_absorbed.defined() ? step_absorbed.mutable_data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, active * batch, grain_for(hidden), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t slot = row / batch, b = row % batch;
          const int64_t injected = ((target_of[slot] * steps + t) * batch + b) * hidden;
          const int64_t state = b * hidden;  // into [B, H] forward tensors
          const int64_t carried = row * hidden;  // into [K, B, H] slot buffers (slot-major, same as row)
          const scalar_t carried_absorbed = h_absorbed[row];
          acc_t absorbed_sum = 0;
          for (int64_t j = 0; j < hidden; ++j) {
            const scalar_t r_h = rel_h[injected + j] + h_t[state + j] * h_sum[carried + j] + carried_absorbed;
            const scalar_t r_c = (rel_c != nullptr ? rel_c[injected + j] : scalar_t(0)) + carry[carried + j] + r_h;
            carry[carried + j] = keep[state + j] * r_c;
            const scalar_t s = to_gate[state + j] * r_c;
            ratio[carried + j] = s;
            if (absorb != nullptr) absorbed_sum += acc_t(s) * acc_t(absorb[state + j]);
          }
          if (pair_absorbed != nullptr) {
            const scalar_t share = scalar_t(absorbed_sum * acc_t(share_scale));
            pair_absorbed[row] = share;
            h_absorbed[row] = share;
          }
        }
      });
    });
  }

  // relevance_x[k, t, b, :] = x[t, b, :] * input_sum[pair, b, :] + absorbed[pair, b], or 0 for inactive pairs.
  static bool scatter_inputs(const at::Tensor& x, const at::Tensor& input_sum, const at::Tensor& absorbed,
                             const at::Tensor& pair_index, at::Tensor& relevance_x) {
    const int64_t targets = relevance_x.size(0), steps = x.size(0), batch = x.size(1), n_in = x.size(2);
    std::atomic<bool> all_finite{true};
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrp_lstm_scatter_cpu", [&] {
      const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
      const scalar_t* sum = input_sum.const_data_ptr<scalar_t>();
      const scalar_t* share = absorbed.defined() ? absorbed.const_data_ptr<scalar_t>() : nullptr;
      const int64_t* pair_of = pair_index.const_data_ptr<int64_t>();
      scalar_t* out = relevance_x.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, targets * steps * batch, grain_for(n_in), [&](int64_t begin, int64_t end) {
        scalar_t probe = 0;
        for (int64_t row = begin; row < end; ++row) {
          const int64_t pair_row = row / batch, b = row % batch, t = pair_row % steps;
          const int64_t pair = pair_of[pair_row];
          scalar_t* out_row = out + row * n_in;
          if (pair < 0) {
            std::fill(out_row, out_row + n_in, scalar_t(0));
            continue;
          }
          const scalar_t* x_row = x_ptr + (t * batch + b) * n_in;
          const scalar_t* sum_row = sum + (pair * batch + b) * n_in;
          const scalar_t add = share != nullptr ? share[pair * batch + b] : scalar_t(0);
          for (int64_t d = 0; d < n_in; ++d) {
            const scalar_t value = x_row[d] * sum_row[d] + add;
            out_row[d] = value;
            probe += value - value;
          }
        }
        if (probe != scalar_t(0)) all_finite.store(false);
      });
    });
    return all_finite.load();
  }
};

LstmRelevance lrp_lstm_cpu(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                           const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                           const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                           const at::Tensor& relevance_h, const std::optional<at::Tensor>& relevance_c, double eps,
                           double bias_factor) {
  const LstmArgs args = check_lrp_lstm_args(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, relevance_h,
                                            relevance_c, eps, bias_factor, "lrp_lstm");
  return lrp_lstm_impl<CpuPasses>(args, eps, bias_factor, "lrp_lstm");
}

}  // namespace

TORCH_LIBRARY_IMPL(capxai, CPU, m) {
  m.impl("lrp_lstm", &lrp_lstm_cpu);
}

}  // namespace capxai
