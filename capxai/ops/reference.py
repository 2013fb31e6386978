"""Pure-PyTorch reference of every capxai op: the plain, vectorised statement of LRP_RULES.md.

The fused C++/CUDA kernels are tested against these functions. They are written for clarity, not speed, but are
vectorised over targets and batch so that they also serve as the "eager reference" in the benchmarks.
"""
import torch
import torch.nn.functional as F


def sign_nonneg_as_plus(z: torch.Tensor) -> torch.Tensor:
    """sign(z) with sign(0) = +1 (LRP_RULES.md, Notation)."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """stab(z) = z + eps * sign(z), sign(0) = +1 (LRP_RULES.md, Notation)."""
    return z + eps * sign_nonneg_as_plus(z)


def lrp_linear_reference(x, weight, bias, relevance, eps=0.01, bias_factor=0.0):
    """Epsilon rule through ``z = x W^T + b`` (LRP_RULES.md, "Linear / elementwise sum").

    Shapes: x [N, In], weight [Out, In], bias [Out] or None, relevance [N, Out] or [K, N, Out] -> [(K,) N, In].
    ``R_i = sum_j x_i W_ji R_j / stab(z_j)``; with ``bias_factor`` each input also gets
    ``bias_factor * sum_j (b_j + eps sign z_j) R_j / stab(z_j) / In``.
    """
    z = F.linear(x, weight, bias)
    ratio = relevance / stabilize(z, eps)
    result = x * (ratio @ weight)
    if bias_factor != 0.0 and x.shape[1] > 0:
        absorbed = eps * sign_nonneg_as_plus(z)
        if bias is not None:
            absorbed = absorbed + bias
        result = result + bias_factor * (ratio * absorbed).sum(-1, keepdim=True) / x.shape[1]
    return result
