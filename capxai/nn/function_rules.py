"""``capxai.nn.relevance_rules()``: relevance rules for the torch functions a model calls between its capxai.nn
modules, so that one autograd backward through any model built from capxai.nn modules and ordinary layers (Linear,
Embedding, sums and products, LayerNorm, GELU/ReLU/tanh, softmax, means) returns relevance.

A ``TorchFunctionMode`` sees every torch function the model calls while it records the graph and puts the function's
rule (``capxai.nn.rules``, docs/LRP_RULES.md "The generic path") in its place: the epsilon rule for linear maps and
sums, the LSTM rule for ``torch.nn.LSTMCell``, the identity rule for elementwise nonlinearities, signal-take-all for
gates, AttnLRP's uniform rule for the product of two signals and its identity rule for LayerNorm; softmax weights are
constants (mode "constant") or get AttnLRP's softmax rule (mode "attnlrp"). Functions that only move values (views,
concatenation, indexing) keep their gradient, which routes relevance exactly. Any other function on a relevance-carrying
tensor raises an error naming it, rather than returning a gradient that is not a relevance.

Only tensors that carry relevance count: those that require grad. Freeze the model's parameters and make its
inputs leaves that require grad (what ``capxai.explain`` does), so that a parameter added to a signal is a bias.
"""
import contextlib
import weakref
from typing import Dict, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from capxai.nn.context import LRPSettings, active_settings
from capxai.nn.functions import LinearRelevance, LSTMCellRelevance, SDPARelevance
from capxai.nn.rules import (LayerNormRule, LinearMapRule, MeanRule, PassRule, ProductRule, SoftmaxRule, StopRule,
                             SumRule)

Tensor = torch.Tensor


class NoRelevanceRule(NotImplementedError):
    """A torch function on the relevance path that has no relevance rule (or a parameter that carries relevance):
    a refusal by name, rather than a gradient that is not relevance. A NotImplementedError, so callers that caught
    that before still do."""


def _carries(value) -> bool:
    if isinstance(value, Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(_carries(item) for item in value)
    return False


def _name(function) -> str:
    owner = getattr(function, "__objclass__", None) or getattr(function, "__self__", None)
    prefix = getattr(owner, "__name__", None) or getattr(function, "__module__", None) or "torch"
    return f"{prefix}.{getattr(function, '__name__', repr(function))}"


class RelevanceRules(TorchFunctionMode):
    """The mode behind :func:`relevance_rules` (settings: eps, bias_factor, attention mode)."""

    def __init__(self, settings: LRPSettings):
        super().__init__()
        self.settings = settings
        self._weights: Dict[int, weakref.ref] = {}  # gates and attention weights: constant factors of a product
        # an RMS-type normaliser's statistics (constants): "moment" (a power of a signal, its mean, plus eps), "scale"
        # (its rsqrt / sqrt / reciprocal); id -> (tensor, kind)
        self._statistics: Dict[int, tuple] = {}

    def mark_weight(self, tensor: Tensor) -> Tensor:
        self._weights[id(tensor)] = weakref.ref(tensor)
        return tensor

    def is_weight(self, value) -> bool:
        reference = self._weights.get(id(value)) if isinstance(value, Tensor) else None
        return reference is not None and reference() is value

    def mark_statistic(self, tensor: Tensor, kind: str) -> Tensor:
        self._statistics[id(tensor)] = (weakref.ref(tensor), kind)
        return tensor

    def statistic_kind(self, value) -> Optional[str]:
        """"moment", "scale" or None: what ``value`` is of an RMS-type normaliser (see :func:`_power`)."""
        entry = self._statistics.get(id(value)) if isinstance(value, Tensor) else None
        return entry[1] if entry is not None and entry[0]() is value else None

    def _follow_statistics(self, func, args, kwargs, result):
        """A function of statistics is one: a moment stays a moment through means, sums and added constants, and
        becomes a scale through ``rsqrt``, ``sqrt``, ``reciprocal`` or a negative power."""
        kinds = {self.statistic_kind(x) for x in (*args, *kwargs.values())} - {None}
        if not kinds or not isinstance(result, Tensor):
            return result
        kind = "moment" if "moment" in kinds else "scale"
        if kind == "moment" and (func in _INVERSES or (func in _POWERS and _exponent(args, kwargs) < 0)):
            kind = "scale"
        return self.mark_statistic(result, kind)

    def refuse_moments(self, func, operands) -> None:
        """A signal combined with a raw moment of a signal (``x * x.pow(2)``) has no rule: only its inverse square
        root (or reciprocal) scales a signal, as an RMS normaliser does."""
        if any(self.statistic_kind(x) == "moment" for x in operands):
            raise NoRelevanceRule(f"capxai.nn.relevance_rules: {_name(func)} of a signal and a power of a signal "
                                  "that is not a normaliser's scale (only rsqrt / sqrt / reciprocal of a moment "
                                  "scales a signal: RMSNorm); no relevance rule for it")

    def _keep_weight_mark(self, args, result):
        """A view or copy of weights (``alpha.unsqueeze(-1)``) is weights too."""
        carried = [x for x in args if isinstance(x, Tensor) and x.requires_grad]
        if isinstance(result, Tensor) and carried and all(self.is_weight(x) for x in carried):
            self.mark_weight(result)
        return result

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled() or not (_carries(args) or _carries(tuple(kwargs.values()))):
            result = func(*args, **kwargs)
            return self._follow_statistics(func, args, kwargs, result) if self._statistics else result
        handler = _HANDLERS.get(func)
        if handler is not None:
            return handler(self, func, args, kwargs)
        result = func(*args, **kwargs)
        if func in _ROUTING:
            return self._keep_weight_mark(args, result)
        if not _carries(result):
            return result
        raise NoRelevanceRule(
            f"capxai.nn.relevance_rules: no relevance rule for {_name(func)} on a relevance-carrying tensor; "
            "build that part from capxai.nn modules or the supported functions (docs/LRP_RULES.md, 'The generic "
            "path'), or compute it under torch.no_grad() if it should get no relevance")


# -- handlers: (mode, func, args, kwargs) -> result -------------------------------------------------------------
def _plain(func, args, kwargs):
    with torch.no_grad():
        return func(*args, **kwargs)


def _sum(mode: RelevanceRules, func, args, kwargs, signs):
    """``a + b`` / ``a - b`` (``signs`` of the two operands, as written): epsilon rule over the carrying terms."""
    mode.refuse_moments(func, args[:2])
    z = _plain(func, args, kwargs)
    alpha = kwargs.get("alpha", 1)
    terms, term_signs = [], []
    for position, (operand, sign) in enumerate(zip(args[:2], signs)):
        if _carries(operand):
            terms.append(operand)
            term_signs.append(sign * (alpha if position == 1 else 1))
    return SumRule.apply(mode.settings, tuple(term_signs), z, *terms)


def _add(mode, func, args, kwargs):
    return _sum(mode, func, args, kwargs, (1, 1))


def _subtract(mode, func, args, kwargs):
    return _sum(mode, func, args, kwargs, (1, -1))


def _reverse_subtract(mode, func, args, kwargs):  # Tensor.__rsub__(self, other) = other - self
    return _sum(mode, func, args, kwargs, (-1, 1))


def _in_place(out_of_place, signs):
    """``x.add_(y)`` / ``x.sub_(y)`` (BLIP's ``embeddings += position_embeddings``): the rule of the out-of-place sum
    on a copy of ``x`` (its saved values stay intact), written back into ``x``, whose history then goes through the
    rule; a caller that ignores the return value sees the same as one that uses it."""
    def handler(mode, func, args, kwargs):
        target = args[0]
        result = _sum(mode, out_of_place, (target.clone(), *args[1:]), kwargs, signs)
        return target.copy_(result)
    return handler


def _multiply(mode: RelevanceRules, func, args, kwargs):
    a, b = args[0], args[1]
    mode.refuse_moments(func, (a, b))
    if not (_carries(a) and _carries(b)):  # scaling by a constant passes the relevance
        source = a if _carries(a) else b
        return PassRule.apply(source, _plain(func, args, kwargs))
    weight_a, weight_b = mode.is_weight(a), mode.is_weight(b)
    take = (not weight_a or weight_b, not weight_b or weight_a)
    return ProductRule.apply(mode.settings, take, a, b)


def _divide(mode, func, args, kwargs):
    mode.refuse_moments(func, args[:2])
    if _carries(args[1]):
        raise NoRelevanceRule("capxai.nn.relevance_rules: no relevance rule for a division by a "
                                  "relevance-carrying tensor (a normalisation: use torch.nn.LayerNorm)")
    return PassRule.apply(args[0], _plain(func, args, kwargs))


def _exponent(args, kwargs):
    exponent = args[1] if len(args) > 1 else kwargs.get("exponent", 2)  # torch.square: 2
    return exponent.item() if isinstance(exponent, Tensor) and exponent.numel() == 1 else exponent


def _power(mode: RelevanceRules, func, args, kwargs):
    """``x.pow(p)`` / ``x ** p`` / ``torch.square(x)`` of a signal: the moment of an RMS-type normaliser
    (``x * rsqrt(mean(x ** 2) + eps)``: Hugging Face's RMSNorm of LLaMA, Qwen, Gemma, SmolVLM; QK-norm). AttnLRP's
    identity rule on the normalisation holds the statistic constant: the power is computed without relevance and
    marked a moment; its ``rsqrt`` (``sqrt``, ``reciprocal``) is a scale, and a signal times a scale passes its
    relevance unchanged (the identity rule, exact). A moment used any other way (``x * x ** 2``) is refused."""
    exponent = _exponent(args, kwargs)
    if _carries(exponent) or not isinstance(exponent, (int, float)):
        raise NoRelevanceRule(f"capxai.nn.relevance_rules: {_name(func)} with a tensor exponent has no relevance "
                              "rule")
    if exponent == 1:
        return PassRule.apply(args[0], _plain(func, args, kwargs))
    return mode.mark_statistic(_plain(func, args, kwargs), "moment" if exponent > 0 else "scale")


def _pass(mode, func, args, kwargs):
    return PassRule.apply(args[0], _plain(func, args, kwargs))


def _gate(mode, func, args, kwargs):
    return mode.mark_weight(PassRule.apply(args[0], _plain(func, args, kwargs)))


def _reduce(mean: bool):
    def handler(mode, func, args, kwargs):
        x = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dim is None:
            dims = tuple(range(x.dim()))
        else:
            dims = tuple(sorted(d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)))
        return MeanRule.apply(mode.settings, x, dims, bool(keepdim), mean)

    return handler


def _linear(mode, func, args, kwargs):
    x = args[0]
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if _carries(weight) or _carries(bias):
        raise NoRelevanceRule("capxai.nn.relevance_rules: F.linear with a relevance-carrying weight or bias "
                                  "(freeze the parameters, as capxai.explain does)")
    return LinearRelevance.apply(x, weight, bias, mode.settings)


def _linear_map(mode: RelevanceRules, function, operands):
    carries = tuple(_carries(x) and not mode.is_weight(x) for x in operands)
    if not any(carries):
        carries = tuple(_carries(x) for x in operands)
    return LinearMapRule.apply(mode.settings, function, carries, *operands)


def _matmul(mode, func, args, kwargs):
    return _linear_map(mode, lambda a, b: func(a, b, **kwargs), args[:2])


def _affine(positions):
    """A map affine in the operands at ``positions`` (their other arguments constant): ``torch.addmm(bias, x, W)``
    (Hugging Face's GPT-2 ``Conv1D``), ``conv2d(x, W, b)`` (a ViT's patch embedding), ``torch.baddbmm(M, q, k)``
    (bilinear in ``q`` and ``k``: half each, as ``matmul`` of two signals). Epsilon rule: the bias is in
    the stabilised denominator and absorbs its share, as the linear map's own."""
    def handler(mode, func, args, kwargs):
        carried = [position for position in positions if position < len(args) and _carries(args[position])]
        if len(carried) != sum(_carries(x) for x in args) + sum(_carries(x) for x in kwargs.values()):
            raise NoRelevanceRule(f"capxai.nn.relevance_rules: {_name(func)} with a relevance-carrying weight or "
                                      "bias (freeze the parameters, as capxai.explain does)")

        def function(*operands):
            filled = list(args)
            for position, operand in zip(carried, operands):
                filled[position] = operand
            return func(*filled, **kwargs)
        return _linear_map(mode, function, tuple(args[position] for position in carried))
    return handler


def _addmm(mode, func, args, kwargs):
    """``torch.addmm(bias, x, W)`` (Hugging Face's GPT-2 ``Conv1D``) is ``F.linear(x, W.t(), bias)``: the fused
    ``lrp_linear`` rule, whose backward does not run the map again (the general affine rule's ``torch.func.vjp``
    does: 54 % of an HF captioner's LRP before). Other forms (``beta``/``alpha``, a 2-D bias) take the general rule."""
    names = ("input", "mat1", "mat2")
    bias, x, weight = (args[i] if i < len(args) else kwargs.get(name) for i, name in enumerate(names))
    plain = set(kwargs) <= set(names) and isinstance(bias, Tensor) and bias.dim() == 1
    if not plain or not _carries(x) or _carries(weight) or _carries(bias):
        return _affine((1,))(mode, func, args, kwargs)
    return LinearRelevance.apply(x, weight.t(), bias, mode.settings)


def _einsum(mode, func, args, kwargs):
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    return _linear_map(mode, lambda *tensors: torch.einsum(equation, *tensors), tuple(operands))


def _softmax(mode: RelevanceRules, func, args, kwargs):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    weights = _plain(func, args, kwargs)
    if mode.settings.mode == "constant":
        return mode.mark_weight(StopRule.apply(x, weights))
    return SoftmaxRule.apply(x, dim, weights)


def _layer_norm(mode, func, args, kwargs):
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    values = dict(zip(names, args), **kwargs)
    if _carries(values.get("weight")) or _carries(values.get("bias")):
        raise NoRelevanceRule("capxai.nn.relevance_rules: layer_norm with relevance-carrying parameters "
                                  "(freeze them)")
    return LayerNormRule.apply(mode.settings, values["input"], tuple(values["normalized_shape"]),
                               values.get("weight"), values.get("bias"), values.get("eps", 1e-5))


def _sdpa(mode, func, args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    values = dict(zip(names, args), **kwargs)
    if values.get("dropout_p"):
        raise NoRelevanceRule("capxai.nn.relevance_rules: scaled_dot_product_attention with dropout_p > 0 "
                                  "(explain the model in eval mode)")
    q, k, v, mask = values["query"], values["key"], values["value"], values.get("attn_mask")
    if values.get("enable_gqa") and k.shape[-3] != q.shape[-3]:  # grouped-query attention: each kv head serves a group
        k, v = (t.repeat_interleave(q.shape[-3] // t.shape[-3], dim=-3) for t in (k, v))
    if values.get("is_causal"):
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    return SDPARelevance.apply(q, k, v, mask, mode.settings, values.get("scale"))


def _masked_scatter(mode, func, args, kwargs):
    """``base.masked_scatter(mask, source)`` (a VLM placing its image features into the text embeddings): values
    placed, so the gradient routes relevance exactly; written as an ``index_put`` and a ``where``, whose backward
    has a batching rule (``masked_scatter``'s runs once per word under the vmapped backward)."""
    names = ("input", "mask", "source")
    values = dict(zip(names, args), **kwargs)
    base, mask, source = values["input"], values["mask"], values["source"]
    if _carries(mask):
        raise NoRelevanceRule("capxai.nn.relevance_rules: masked_scatter with a relevance-carrying mask")
    return scatter_by_index(base, mask, source)


def scatter_by_index(base: Tensor, mask: Tensor, source: Tensor) -> Tensor:
    """``base.masked_scatter(mask, source)`` as an ``index_put`` and a ``where``: the same values, and a backward
    that vmaps (torch has no batching rule for ``masked_scatter``'s)."""
    mask = mask.expand_as(base)
    where = mask.nonzero(as_tuple=True)
    placed = torch.zeros_like(base).index_put(where, source.reshape(-1)[:where[0].numel()])
    return torch.where(mask, placed, base)


def _lstm_cell(mode, func, args, kwargs):
    """``torch.nn.LSTMCell``'s kernel: the fused LSTM rule, as capxai.nn.LSTMCell's."""
    names = ("input", "hx", "w_ih", "w_hh", "b_ih", "b_hh")
    values = dict(zip(names, args), **kwargs)
    weights = [values.get(name) for name in names[2:]]
    if _carries(weights):
        raise NoRelevanceRule("capxai.nn.relevance_rules: an LSTM cell with relevance-carrying weights "
                                  "(freeze them)")
    (h, c) = values["hx"]
    return LSTMCellRelevance.apply(values["input"], h, c, *weights, mode.settings)


def _functions(*names):
    """The torch callables named, those this torch has."""
    found = []
    for name in names:
        owner, _, attribute = name.rpartition(".")
        namespace = {"torch": torch, "Tensor": Tensor, "F": F}[owner]
        value = getattr(namespace, attribute, None)
        if isinstance(value, property):
            value = value.__get__
        if value is not None:
            found.append(value)
    return found


_HANDLER_NAMES = {
    _add: ("torch.add", "Tensor.add", "Tensor.__add__", "Tensor.__radd__", "Tensor.__iadd__"),
    _subtract: ("torch.sub", "torch.subtract", "Tensor.sub", "Tensor.__sub__", "Tensor.__isub__"),
    _reverse_subtract: ("Tensor.__rsub__",),
    _in_place(torch.add, (1, 1)): ("Tensor.add_",),
    _in_place(torch.sub, (1, -1)): ("Tensor.sub_",),
    _multiply: ("torch.mul", "torch.multiply", "Tensor.mul", "Tensor.__mul__", "Tensor.__rmul__",
                "Tensor.__imul__"),
    _divide: ("torch.div", "torch.divide", "Tensor.div", "Tensor.__truediv__", "Tensor.__itruediv__"),
    _pass: ("torch.neg", "Tensor.neg", "Tensor.__neg__", "torch.relu", "Tensor.relu", "F.relu", "torch.tanh",
            "Tensor.tanh", "F.tanh", "F.gelu", "F.silu", "F.elu", "F.leaky_relu", "F.softplus", "F.mish"),
    _gate: ("torch.sigmoid", "Tensor.sigmoid", "F.sigmoid"),
    _power: ("torch.pow", "Tensor.pow", "Tensor.__pow__", "torch.square", "Tensor.square"),
    _reduce(True): ("torch.mean", "Tensor.mean"),
    _reduce(False): ("torch.sum", "Tensor.sum"),
    _linear: ("F.linear",),
    _matmul: ("torch.matmul", "Tensor.matmul", "Tensor.__matmul__", "torch.bmm", "Tensor.bmm", "torch.mm",
              "Tensor.mm"),
    _einsum: ("torch.einsum",),
    _addmm: ("torch.addmm", "Tensor.addmm"),
    _affine((1, 2)): ("torch.baddbmm", "Tensor.baddbmm"),  # GPT-2's reorder_and_upcast_attn scores
    _affine((0,)): ("torch.conv1d", "torch.conv2d", "torch.conv3d", "F.conv1d", "F.conv2d", "F.conv3d",
                    # average pooling: linear in its input, weights 1/n (Gemma 3's projector pools the patches)
                    "torch.avg_pool1d", "F.avg_pool1d", "F.avg_pool2d", "F.avg_pool3d", "F.adaptive_avg_pool1d",
                    "F.adaptive_avg_pool2d", "F.adaptive_avg_pool3d"),
    _softmax: ("torch.softmax", "Tensor.softmax", "F.softmax"),
    _layer_norm: ("F.layer_norm",),
    _sdpa: ("F.scaled_dot_product_attention",),
    _lstm_cell: ("torch.lstm_cell",),
    _masked_scatter: ("torch.masked_scatter", "Tensor.masked_scatter"),
}
_HANDLERS = {function: handler for handler, names in _HANDLER_NAMES.items() for function in _functions(*names)}
_POWERS = frozenset(_functions("torch.pow", "Tensor.pow", "Tensor.__pow__", "torch.square", "Tensor.square"))
_INVERSES = frozenset(_functions("torch.rsqrt", "Tensor.rsqrt", "torch.sqrt", "Tensor.sqrt", "torch.reciprocal",
                                 "Tensor.reciprocal"))

# functions that only select, copy or rearrange values: their gradient routes relevance exactly
_ROUTING = frozenset(_functions(
    "torch.cat", "torch.concat", "torch.concatenate", "torch.stack", "torch.hstack", "torch.vstack", "torch.split",
    "torch.chunk", "torch.unbind", "torch.reshape", "torch.flatten", "torch.unflatten", "torch.transpose",
    "torch.permute", "torch.squeeze", "torch.unsqueeze", "torch.movedim", "torch.narrow", "torch.select",
    "torch.index_select", "torch.gather", "torch.take_along_dim", "torch.masked_fill", "torch.where", "torch.flip",
    "torch.roll", "torch.repeat_interleave", "torch.tile", "torch.clone", "torch.t", "F.pad", "F.dropout",
    "F.embedding", "Tensor.view", "Tensor.view_as", "Tensor.reshape", "Tensor.reshape_as", "Tensor.flatten",
    "Tensor.unflatten", "Tensor.transpose", "Tensor.t", "Tensor.permute", "Tensor.squeeze", "Tensor.unsqueeze",
    "Tensor.expand", "Tensor.expand_as", "Tensor.contiguous", "Tensor.clone", "Tensor.__getitem__",
    "Tensor.__setitem__", "Tensor.select", "Tensor.narrow", "Tensor.index_select", "Tensor.gather", "Tensor.split",
    "Tensor.chunk", "Tensor.unbind", "Tensor.repeat", "Tensor.repeat_interleave", "Tensor.masked_fill",
    "Tensor.to", "Tensor.float", "Tensor.double", "Tensor.type", "Tensor.type_as", "Tensor.movedim", "Tensor.flip",
    "Tensor.roll", "Tensor.T", "Tensor.mT", "Tensor.tile", "Tensor.view_as", "Tensor.__iter__",
))


@contextlib.contextmanager
def relevance_rules(settings: Optional[LRPSettings] = None) -> Iterator[RelevanceRules]:
    """Within this block, the torch functions a model calls record their relevance rule instead of their gradient
    (see the module docstring); ``settings`` default to the innermost ``capxai.lrp()``'s. Use it inside
    ``capxai.lrp()`` (the capxai.nn modules read their settings there), run the forward within it, and the backward
    after leaving it.

    Example:
        >>> with capxai.lrp(eps=0.01) as settings, capxai.nn.relevance_rules(settings):
        ...     logits = model(x.requires_grad_())
        >>> (relevance,) = torch.autograd.grad(logits, x, grad_outputs=start_relevance)
    """
    settings = settings if settings is not None else active_settings()
    if settings is None:
        raise RuntimeError("capxai.nn.relevance_rules: use it inside capxai.lrp() or pass settings")
    with RelevanceRules(settings) as mode:
        yield mode
