"""The epsilon rule through a linear layer, as a fused op."""
from typing import Optional

import torch


def lrp_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], relevance: torch.Tensor,
               eps: float = 0.01, bias_factor: float = 0.0) -> torch.Tensor:
    """Relevance of the inputs of ``z = x @ weight.T + bias`` by the epsilon rule (docs/LRP_RULES.md, "Linear").

    ``R_x[k, n, i] = sum_j x[n, i] * weight[j, i] * R[k, n, j] / stab(z[n, j])``, with
    ``stab(z) = z + eps * sign(z)`` and ``sign(0) = +1``. The bias and the stabiliser absorb relevance; with
    ``bias_factor=1`` their share is spread equally over the ``In`` inputs and the rule is exactly conservative.

    Args:
        x: layer input ``[N, In]``, float32 or float64.
        weight: ``[Out, In]`` (``torch.nn.Linear`` layout), same dtype and device as ``x``.
        bias: ``[Out]`` or ``None``.
        relevance: relevance of the outputs, ``[N, Out]``, or ``[K, N, Out]`` for K explanation targets that share
            one forward pass (the forward ``z`` is computed once for all of them).
        eps: stabiliser, ``>= 0`` (the paper uses 0.01).
        bias_factor: share of the absorbed relevance given back to the inputs (0 = paper, 1 = conservative).

    Returns:
        ``[N, In]`` or ``[K, N, In]``, matching ``relevance``.

    Raises:
        TypeError: an argument of the wrong dtype (the error names it).
        ValueError: an argument of the wrong shape or on the wrong device, or NaN/Inf inputs (named likewise).

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> x = torch.randn(2, 4)
        >>> out = layer(x)
        >>> relevance = lrp_linear(x, layer.weight.detach(), layer.bias.detach(), out.detach())
    """
    return torch.ops.capxai.lrp_linear(x, weight, bias, relevance, eps, bias_factor)
