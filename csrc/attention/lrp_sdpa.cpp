// lrp_sdpa: argument checks, the forward and the ATen parts of both modes, shared by the CPU and CUDA kernels
// (GEMM-shaped work goes to BLAS / cuBLAS through ATen; the output-sized pass is the backends' fused kernel).
#include "lrp_sdpa.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "../common/checks.h"

namespace capxai {

SdpaArgs check_lrp_sdpa_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& relevance, const std::optional<at::Tensor>& attn_mask, double eps,
                             double bias_factor, std::optional<double> scale, const char* op) {
  check_hyperparameters(eps, bias_factor, op);
  check_floating(q, op, "q");
  check_dim(q, 4, op, "q", "[B, h, Lq, d]");
  for (const auto& [tensor, name, layout] :
       {std::tuple{&k, "k", "[B, h, Lk, d]"}, std::tuple{&v, "v", "[B, h, Lk, dv]"}}) {
    check_floating(*tensor, op, name);
    check_like(*tensor, q, op, name, "q");
    check_dim(*tensor, 4, op, name, layout);
    check_size(*tensor, 0, q.size(0), op, name, layout, "B = q.shape[0]");
    check_size(*tensor, 1, q.size(1), op, name, layout, "h = q.shape[1]");
  }
  check_size(k, 3, q.size(3), op, "k", "[B, h, Lk, d]", "d = q.shape[3]");
  check_size(v, 2, k.size(2), op, "v", "[B, h, Lk, dv]", "Lk = k.shape[2]");
  check_floating(relevance, op, "relevance");
  check_like(relevance, q, op, "relevance", "q");
  TORCH_CHECK_VALUE(relevance.dim() == 4 || relevance.dim() == 5, op,
                    ": relevance must be [B, h, Lq, dv] or [K, B, h, Lq, dv], got ", relevance.sizes());
  const int64_t first = relevance.dim() - 4;
  check_size(relevance, first, q.size(0), op, "relevance", "[(K,) B, h, Lq, dv]", "B = q.shape[0]");
  check_size(relevance, first + 1, q.size(1), op, "relevance", "[(K,) B, h, Lq, dv]", "h = q.shape[1]");
  check_size(relevance, first + 2, q.size(2), op, "relevance", "[(K,) B, h, Lq, dv]", "Lq = q.shape[2]");
  check_size(relevance, first + 3, v.size(3), op, "relevance", "[(K,) B, h, Lq, dv]", "dv = v.shape[3]");

  SdpaArgs args;
  args.eps = eps;
  args.result_dtype = q.scalar_type();
  args.flags = at::zeros({2}, q.options().dtype(at::kInt));
  if (attn_mask.has_value() && attn_mask->defined()) {
    const at::Tensor& mask = *attn_mask;
    TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool || mask.scalar_type() == q.scalar_type(), op,
                     ": attn_mask must be bool (True = attend) or the dtype of q (", q.scalar_type(), "), got ",
                     mask.scalar_type());
    TORCH_CHECK_VALUE(mask.device() == q.device(), op, ": attn_mask must be on the device of q (", q.device(),
                      "), got ", mask.device());
    const std::vector<int64_t> full = {q.size(0), q.size(1), q.size(2), k.size(2)};
    bool broadcastable = mask.dim() <= 4;
    for (int64_t i = 1; broadcastable && i <= mask.dim(); ++i) {
      const int64_t size = mask.size(-i);
      broadcastable = size == 1 || size == full[4 - i];
    }
    TORCH_CHECK_VALUE(broadcastable, op, ": attn_mask must broadcast to [B, h, Lq, Lk] = ", at::IntArrayRef(full),
                      ", got ", mask.sizes());
    args.mask = to_compute(mask);
    // NaN / +Inf in a float mask: a device flag, read with the result's (sdpa_check_flags), not a sync here.
    if (mask.scalar_type() != at::kBool && mask.numel() > 0)
      args.flags.narrow(0, 1, 1).bitwise_or_((at::isnan(args.mask) | at::isposinf(args.mask)).any());
  }
  args.q = to_compute(q);
  args.k = to_compute(k);
  args.v = to_compute(v);
  args.had_target_dim = relevance.dim() == 5;
  args.relevance = to_compute(args.had_target_dim ? relevance : relevance.unsqueeze(0));
  if (scale.has_value()) {
    TORCH_CHECK_VALUE(std::isfinite(*scale), op, ": scale must be finite, got ", *scale);
    args.scale = *scale;
  } else {
    args.scale = q.size(3) > 0 ? 1.0 / std::sqrt(double(q.size(3))) : 1.0;
  }
  return args;
}

SdpaForward sdpa_forward(const SdpaArgs& args) {
  SdpaForward fwd;
  const std::vector<int64_t> full = {args.q.size(0), args.q.size(1), args.q.size(2), args.k.size(2)};
  at::Tensor scores = at::matmul(args.q, args.k.transpose(-2, -1)).mul_(args.scale);
  at::Tensor masked;  // bool, True where masked
  if (args.mask.defined()) {
    if (args.mask.scalar_type() == at::kBool) {
      masked = args.mask.logical_not().expand(full);
    } else {
      masked = at::isneginf(args.mask).expand(full);
      fwd.mask_bias = args.mask.masked_fill(at::isneginf(args.mask), 0.0).expand(full).contiguous();
      scores.add_(fwd.mask_bias);
    }
    fwd.allowed = masked.logical_not().to(args.q.scalar_type()).contiguous();
    fwd.allowed_keys = fwd.allowed.sum(-1, /*keepdim=*/true);
    scores.masked_fill_(masked, -std::numeric_limits<double>::infinity());
  } else {
    fwd.allowed_keys = at::full({full[0], full[1], full[2], 1}, double(full[3]), args.q.options());
  }
  at::Tensor weights = at::softmax(scores, -1);
  if (masked.defined()) {
    weights.masked_fill_(masked, 0.0);  // also the NaN rows of queries with no key at all
    scores.masked_fill_(masked, 0.0);
  }
  fwd.output = at::matmul(weights, args.v);
  // An overflowed output would make R / output a silent 0 (a score that overflowed is already a NaN weight).
  if (fwd.output.numel() > 0) args.flags.narrow(0, 0, 1).bitwise_or_(at::isfinite(fwd.output).logical_not().any());
  fwd.scores = scores;
  fwd.weights = weights.contiguous();
  return fwd;
}

namespace {

// An empty [K, B, h, Lq, dv] tensor whose memory is [B, h, Lq, K, dv] with `targets_inner`, else contiguous.
at::Tensor empty_per_target(const at::Tensor& like, bool targets_inner) {
  if (!targets_inner) return at::empty_like(like, at::MemoryFormat::Contiguous);
  return at::empty({like.size(1), like.size(2), like.size(3), like.size(0), like.size(4)}, like.options())
      .permute({3, 0, 1, 2, 4});
}

}  // namespace

std::pair<at::Tensor, at::Tensor> sdpa_output_ratio(const SdpaArgs& args, const SdpaForward& fwd, double eps,
                                                     double bias_factor, bool targets_inner) {
  const at::Tensor sign = at::where(fwd.output >= 0, 1.0, -1.0).to(fwd.output.scalar_type());
  at::Tensor ratio = empty_per_target(args.relevance, targets_inner);
  at::div_out(ratio, args.relevance, fwd.output + eps * sign);  // [K, B, h, Lq, dv]
  at::Tensor share;
  if (bias_factor != 0.0) {
    const at::Tensor per_key = at::where(fwd.allowed_keys > 0, bias_factor * eps / fwd.allowed_keys.clamp_min(1.0),
                                         at::zeros_like(fwd.allowed_keys));
    share = empty_per_target(args.relevance, targets_inner);
    at::mul_out(share, ratio, sign * per_key);
  }
  return {ratio, share};
}

bool sdpa_use_gemm(const SdpaArgs& args) {
  const char* choice = std::getenv("CAPXAI_SDPA_VALUE_PASS");
  if (choice != nullptr && std::strcmp(choice, "gemm") == 0) return true;
  if (choice != nullptr && std::strcmp(choice, "fused") == 0) return false;
  TORCH_CHECK_VALUE(choice == nullptr || *choice == '\0' || std::strcmp(choice, "auto") == 0,
                    "CAPXAI_SDPA_VALUE_PASS must be auto, gemm or fused, got '", choice, "'");
  // The fused pass reads each query's ratio row once per key (no reuse); the GEMMs tile it. On the GPU the GEMMs
  // win at every size measured; on the CPU the fused pass wins while the queries are few (measured in
  // benchmarks/test_lrp_attention.py, docs/LRP_RULES.md (Part 2)).
  if (args.q.is_cuda()) return true;
  return args.q.size(2) >= kSdpaCpuGemmMinQueries;
}

std::pair<at::Tensor, at::Tensor> sdpa_value_gemms(const SdpaArgs& args, const SdpaForward& fwd,
                                                   const at::Tensor& ratio, const at::Tensor& share) {
  const int64_t targets = ratio.size(0), batch_heads = args.v.size(0) * args.v.size(1);
  const int64_t n_queries = args.q.size(2), n_keys = args.k.size(2), dim_v = args.v.size(3);
  // [K, B, h, Lq, dv] -> [B*h, Lq, K*dv]: a view when the memory is already targets-inner (sdpa_output_ratio).
  const auto by_head = [&](const at::Tensor& per_target) {
    return per_target.permute({1, 2, 3, 0, 4}).reshape({batch_heads, n_queries, targets * dim_v});
  };
  const at::Tensor weights_by_key = fwd.weights.view({batch_heads, n_queries, n_keys}).transpose(1, 2);
  const at::Tensor products = at::bmm(weights_by_key, by_head(ratio));  // [B*h, Lk, K*dv]
  at::Tensor shares;
  if (share.defined()) {
    shares = fwd.allowed.defined()
                 ? at::bmm(fwd.allowed.view({batch_heads, n_queries, n_keys}).transpose(1, 2), by_head(share))
                 : by_head(share).sum(1, /*keepdim=*/true);  // every key gets every query's share
  }
  return {products, shares};
}

void sdpa_check_flags(const SdpaArgs& args, const char* op) {
  const at::Tensor host = args.flags.cpu();
  const int* flags = host.const_data_ptr<int>();
  TORCH_CHECK_VALUE(flags[1] == 0, op, ": attn_mask must not contain NaN or +Inf (use -inf to mask a position)");
  if (flags[0] != 0) raise_sdpa_non_finite(args, op);
}

std::pair<at::Tensor, at::Tensor> sdpa_attnlrp_query_key(const SdpaArgs& args, const SdpaForward& fwd,
                                                         const at::Tensor& ratio, const at::Tensor& share,
                                                         double eps, double bias_factor) {
  // A V: half of each term's relevance to A (the other half went to V); A's share of the absorbed part likewise.
  at::Tensor relevance_weights = at::einsum("kbhie,bhje->kbhij", {ratio, args.v}).mul_(fwd.weights);
  if (share.defined()) {
    const at::Tensor absorbed = share.sum(-1, /*keepdim=*/true);  // [K, B, h, Lq, 1]
    relevance_weights.add_(fwd.allowed.defined() ? absorbed * fwd.allowed : absorbed);
  }
  relevance_weights.mul_(0.5);
  // Softmax (AttnLRP): R_s = s * (R_A - A * sum_j R_A); masked scores are 0, so they get 0.
  const at::Tensor relevance_scores =
      fwd.scores * (relevance_weights - fwd.weights * relevance_weights.sum(-1, /*keepdim=*/true));
  // q k^T * scale (+ mask as a bias): uniform rule, half of each term to q and half to k, epsilon rule over the
  // score. Masked pairs have R_s = 0 and contribute nothing.
  const at::Tensor score_sign = at::where(fwd.scores >= 0, 1.0, -1.0).to(fwd.scores.scalar_type());
  const at::Tensor score_ratio = relevance_scores / (fwd.scores + eps * score_sign);  // [K, B, h, Lq, Lk]
  at::Tensor relevance_q = at::einsum("kbhij,bhjc->kbhic", {score_ratio, args.k}).mul_(args.q).mul_(args.scale);
  at::Tensor relevance_k = at::einsum("kbhij,bhic->kbhjc", {score_ratio, args.q}).mul_(args.k).mul_(args.scale);
  if (bias_factor != 0.0 && args.q.size(3) > 0) {
    at::Tensor absorbed = eps * score_sign;
    if (fwd.mask_bias.defined()) absorbed = absorbed + fwd.mask_bias;
    if (fwd.allowed.defined()) absorbed = absorbed * fwd.allowed;
    const at::Tensor absorbed_ratio = score_ratio * absorbed * (bias_factor / double(args.q.size(3)));
    relevance_q.add_(absorbed_ratio.sum(-1).unsqueeze(-1));
    relevance_k.add_(absorbed_ratio.sum(-2).unsqueeze(-1));
  }
  return {relevance_q.mul_(0.5).contiguous(), relevance_k.mul_(0.5).contiguous()};
}

void raise_sdpa_non_finite(const SdpaArgs& args, const char* op) {
  raise_first_non_finite(op, args.eps, args.result_dtype, {{&args.relevance, "relevance"}, {&args.q, "q"}, {&args.k, "k"}, {&args.v, "v"}});
}

}  // namespace capxai
