"""``capxai.lrp()``: inside it, capxai.nn modules' backward carries relevance instead of the gradient.

Zennit's convention: the gradient slot carries relevance, so one ``torch.autograd.grad(output, input,
grad_outputs=start_relevance)`` through a model built from capxai.nn modules (and Zennit rules on its other layers)
returns the input relevance. The settings are read when a module runs its forward, so run the forward inside the
context; the backward may run later.
"""
import contextlib
import dataclasses
import math
import threading
from typing import Iterator, Optional

MODES = ("constant", "attnlrp")


@dataclasses.dataclass(frozen=True)
class LRPSettings:
    """Rule settings of docs/LRP_RULES.md: ``eps`` (stabiliser), ``bias_factor`` (share of absorbed relevance given
    back; 1 makes every rule conservative) and ``mode`` of attention ("constant": weights are constants, the paper;
    "attnlrp": AttnLRP's rules through the attention scores)."""

    eps: float = 0.01
    bias_factor: float = 0.0
    mode: str = "constant"

    def __post_init__(self):
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"capxai.lrp: eps must be finite and >= 0, got {self.eps}")
        if not math.isfinite(self.bias_factor):
            raise ValueError(f"capxai.lrp: bias_factor must be finite, got {self.bias_factor}")
        if self.mode not in MODES:
            raise ValueError(f"capxai.lrp: mode must be one of {MODES}, got {self.mode!r}")


_state = threading.local()


def active_settings() -> Optional[LRPSettings]:
    """The settings of the innermost active ``capxai.lrp()`` on this thread, or None outside any."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def lrp(eps: float = 0.01, bias_factor: float = 0.0, mode: str = "constant") -> Iterator[LRPSettings]:
    """Within this context, the backward of capxai.nn modules returns relevance (docs/LRP_RULES.md) computed by the
    fused capxai ops instead of the gradient. Contexts nest; the innermost wins.

    Example:
        >>> with capxai.lrp(eps=0.01), zennit_composite.context(model):
        ...     output = model(x)
        ...     (relevance,) = torch.autograd.grad(output, x, grad_outputs=start_relevance)
    """
    settings = LRPSettings(eps, bias_factor, mode)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(settings)
    try:
        yield settings
    finally:
        stack.pop()
