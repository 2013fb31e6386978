"""Relevance rules for the ordinary layers of a model (docs/LRP_RULES.md, "The generic path"), as autograd functions:
the forward is the plain computation, the backward takes the relevance of the output in the gradient slot and
returns that of the inputs. ``capxai.nn.relevance_rules()`` puts them in place of torch's functions; they follow
AttnLRP (Achtibat et al. 2024, as LXT implements it) where the paper has no rule.

Every backward is made of torch operations (or capxai ops with batching rules), so it runs under ``torch.func.vmap``:
all explained words go through one backward as a leading batch of the start relevance.
"""
from typing import Optional, Sequence

import torch

from capxai.nn.context import LRPSettings


def _sign(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * _sign(z)


def _reduce_to(relevance: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The relevance of a broadcast operand: the sum over the positions it was broadcast to."""
    return relevance.sum_to_size(shape) if tuple(relevance.shape) != tuple(shape) else relevance


class PassRule(torch.autograd.Function):
    """Identity rule (AttnLRP): an elementwise nonlinearity ``y = f(x)`` (ReLU, GELU, tanh...) passes the relevance
    of ``y`` to ``x`` unchanged. Conservative."""

    @staticmethod
    def forward(ctx, x, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, relevance):
        return relevance, None


class StopRule(torch.autograd.Function):
    """No relevance flows back through ``y`` (attention weights in the paper's "constant" mode)."""

    @staticmethod
    def forward(ctx, x, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, relevance):
        return None, None


class SumRule(torch.autograd.Function):
    """Epsilon rule over the terms of ``z = sum_i sign_i * input_i + constant`` (a residual, a sum of two paths, a
    difference): ``R_i = (term_i + bias_factor * absorbed / n) / stab(z) * R`` with ``term_i = sign_i * input_i``
    and ``absorbed = stab(z) - sum_i term_i`` (the constant terms and the stabiliser). Terms may broadcast; a
    broadcast input gets the sum over its copies. Conservative up to the absorbed share (exactly with
    ``bias_factor=1``)."""

    @staticmethod
    def forward(ctx, settings: LRPSettings, signs, z, *inputs):
        ctx.settings, ctx.signs, ctx.shapes = settings, signs, [x.shape for x in inputs]
        ctx.save_for_backward(z, *inputs)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, relevance):
        z, *inputs = ctx.saved_tensors
        eps, bias_factor = ctx.settings.eps, ctx.settings.bias_factor
        terms = [x * sign if sign != 1 else x for x, sign in zip(inputs, ctx.signs)]
        stabilized = _stabilize(z, eps)
        ratio = relevance / stabilized
        share = 0.0
        if bias_factor != 0.0:
            share = bias_factor * (stabilized - sum(term.expand_as(z) for term in terms)) / len(terms)
        results = [_reduce_to((term + share) * ratio, shape) for term, shape in zip(terms, ctx.shapes)]
        return (None, None, None, *results)


class ProductRule(torch.autograd.Function):
    """``z = a * b`` elementwise. A factor that is a gate (a sigmoid's output) or attention weights (in "constant"
    mode) is a constant and the other factor takes all relevance (signal-take-all, as the paper's LSTM and gate
    rules); two signals share it by AttnLRP's uniform rule, half each (``R/2 * z / stab(z)``, the bias share given
    back with ``bias_factor``). ``take``: which factors receive relevance, (True, False) = a alone."""

    @staticmethod
    def forward(ctx, settings: LRPSettings, take, a, b):
        z = a * b
        ctx.settings, ctx.take, ctx.shapes = settings, take, (a.shape, b.shape)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx, relevance):
        (z,) = ctx.saved_tensors
        take_a, take_b = ctx.take
        if take_a and take_b:
            eps, bias_factor = ctx.settings.eps, ctx.settings.bias_factor
            half = relevance * (z + bias_factor * eps * _sign(z)) / _stabilize(z, eps) / 2
            shares = (half, half)
        else:
            shares = (relevance if take_a else None, relevance if take_b else None)
        return (None, None, *[None if share is None else _reduce_to(share, shape)
                              for share, shape in zip(shares, ctx.shapes)])


class MeanRule(torch.autograd.Function):
    """Epsilon rule through a sum or mean over ``dims`` (the global or mean feature of the paper's captioners):
    each summand ``x_i / n`` (``x_i`` for a sum) gets its share of the output's relevance, the stabiliser's share
    given back equally with ``bias_factor``."""

    @staticmethod
    def forward(ctx, settings: LRPSettings, x, dims, keepdim, mean):
        z = x.mean(dims, keepdim=True) if mean else x.sum(dims, keepdim=True)
        count = 1
        for dim in dims:
            count *= x.shape[dim]
        ctx.settings, ctx.count, ctx.mean, ctx.keepdim, ctx.dims = settings, count, mean, keepdim, dims
        ctx.save_for_backward(x, z)
        return z if keepdim else z.squeeze(dims)

    @staticmethod
    def backward(ctx, relevance):
        x, z = ctx.saved_tensors
        eps, bias_factor = ctx.settings.eps, ctx.settings.bias_factor
        if not ctx.keepdim:
            relevance = relevance.reshape(z.shape)
        terms = x / ctx.count if ctx.mean else x
        share = bias_factor * eps * _sign(z) / ctx.count
        return None, (terms + share) * (relevance / _stabilize(z, eps)), None, None, None


class LinearMapRule(torch.autograd.Function):
    """Epsilon rule through a map that is linear in each relevance-carrying input (a matmul with constant weights,
    an einsum): ``R_x = x * J^T (R / stab(z))``; with two such inputs (a bilinear product) AttnLRP's uniform rule
    gives each half. No bias share is given back (the map has no bias; the stabiliser's share is absorbed)."""

    @staticmethod
    def forward(ctx, settings: LRPSettings, function, carries, *inputs):
        ctx.settings, ctx.function, ctx.carries = settings, function, carries
        ctx.save_for_backward(*inputs)
        return function(*inputs)

    @staticmethod
    def backward(ctx, relevance):
        inputs = list(ctx.saved_tensors)
        carried = [x for x, carry in zip(inputs, ctx.carries) if carry]

        def of_carried(*operands):  # the map as a function of the relevance-carrying inputs only
            filled, given = [], iter(operands)
            for x, carry in zip(inputs, ctx.carries):
                filled.append(next(given) if carry else x)
            return ctx.function(*filled)

        # torch.func.vjp, not autograd.grad on fresh leaves: this backward runs under vmap over the targets
        z, transpose = torch.func.vjp(of_carried, *carried)
        gradients = iter(transpose(relevance / _stabilize(z, ctx.settings.eps)))
        share = 1.0 / len(carried)
        results = [next(gradients) * x * share if carry else None for x, carry in zip(inputs, ctx.carries)]
        return (None, None, None, *results)


class LayerNormRule(torch.autograd.Function):
    """LayerNorm by AttnLRP's identity rule on the normalisation: the standard deviation is a constant, so
    ``y = (x - mean(x)) / sigma * gamma + beta`` is linear in ``x`` and the epsilon rule applies:
    ``R_x = x * J^T (R / stab(y))`` with ``J = (I - 1/n) gamma / sigma``; ``beta`` and the stabiliser absorb,
    their share given back with ``bias_factor``. Conservative up to that share."""

    @staticmethod
    def forward(ctx, settings: LRPSettings, x, normalized_shape, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], eps_norm: float):
        y = torch.nn.functional.layer_norm(x, normalized_shape, weight, bias, eps_norm)
        ctx.settings, ctx.dims = settings, tuple(range(-len(normalized_shape), 0))
        ctx.eps_norm = eps_norm
        ctx.save_for_backward(x, y, weight, bias)
        return y

    @staticmethod
    def backward(ctx, relevance):
        x, y, weight, bias = ctx.saved_tensors
        eps, bias_factor, dims = ctx.settings.eps, ctx.settings.bias_factor, ctx.dims
        sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + ctx.eps_norm)
        stabilized = _stabilize(y, eps)
        ratio = relevance / stabilized
        scaled = ratio / sigma if weight is None else ratio * weight / sigma
        result = x * (scaled - scaled.mean(dims, keepdim=True))
        if bias_factor != 0.0:
            absorbed = stabilized - y if bias is None else stabilized - y + bias  # beta and the stabiliser
            count = 1
            for dim in dims:
                count *= x.shape[dim]
            result = result + bias_factor * (ratio * absorbed).sum(dims, keepdim=True) / count
        return None, result, None, None, None, None


class SoftmaxRule(torch.autograd.Function):
    """AttnLRP's softmax rule (mode "attnlrp"): ``R_s = s * (R_A - A * sum_j R_A_j)`` on the scores ``s``
    (masked scores, at minus infinity, get none)."""

    @staticmethod
    def forward(ctx, scores, dim: int, weights):
        ctx.dim = dim
        ctx.save_for_backward(scores, weights)
        return weights.view_as(weights)

    @staticmethod
    def backward(ctx, relevance):
        scores, weights = ctx.saved_tensors
        finite = torch.isfinite(scores)
        result = torch.where(finite, scores, 0.0) * (relevance - weights * relevance.sum(ctx.dim, keepdim=True))
        return torch.where(finite, result, 0.0), None, None
