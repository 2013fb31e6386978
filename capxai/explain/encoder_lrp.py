"""LRP through the CNN encoder, from the feature-grid relevance of every explained word to the pixels
(docs/LRP_RULES.md, "CNN encoder").

Zennit is the general path: its composites hook the encoder, and one ``autograd.grad`` per word through the hooked
encoder gives that word's pixel relevance (the forward is shared). The fast path serves plain encoders (a sequence
of Conv2d, BatchNorm2d, ReLU and MaxPool2d, as SceneCNN and VGG16) under the paper preset and EpsilonPlusFlat: a
rule's modified forward (``conv(x+, W+) + conv(x-, W-)``, its stabilised denominator, the max-pool winners)
depends on the image only, so it is computed once per image and all words' relevance goes through it as one batched
transposed pass. It equals Zennit's result (tested).
"""
import dataclasses
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlusFlat, LayerMapComposite
from zennit.core import Composite
from zennit.rules import AlphaBeta, Epsilon, Pass
from zennit.types import Activation, Convolution

from capxai.registry import Registry

ZENNIT_STABILIZER = 1e-6  # Zennit's default for the z+ / flat rules, which the fast path reproduces
FAST_PATH_BYTES = 1 << 30  # relevance of this many bytes per layer at most in one batched pass (targets chunked)


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit's ``SequentialMergeBatchNorm``, except that the emptied BatchNorm is an exact identity: Zennit keeps
    its ``eps``, so each merged BatchNorm still divides by ``sqrt(1 + eps)`` (2e-5 relative over SceneCNN's four)."""

    def register(self, linears, batch_norm):
        self.batch_norm_eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.batch_norm_eps


COMPOSITES: Registry = Registry("composites")  # name -> (eps) -> a zennit Composite


@COMPOSITES.register("paper", help="alpha=1, beta=0 on every conv, bias ignored; epsilon on linear layers (Sun et "
                     "al.)")
def _paper(eps: float) -> Composite:
    return LayerMapComposite([(Activation, Pass()),
                              (Convolution, AlphaBeta(alpha=1.0, beta=0.0, zero_params="bias")),
                              (nn.Linear, Epsilon(epsilon=eps))], canonizers=[ExactMergeBatchNorm()])


COMPOSITES.register("epsilon_plus_flat", lambda eps: EpsilonPlusFlat(epsilon=eps, canonizers=[ExactMergeBatchNorm()]),
                    help="Zennit's EpsilonPlusFlat")
COMPOSITES.register("epsilon_alpha2_beta1",
                    lambda eps: EpsilonAlpha2Beta1(epsilon=eps, canonizers=[ExactMergeBatchNorm()]),
                    help="Zennit's EpsilonAlpha2Beta1")


def make_composite(composite: Union[str, Composite], eps: float = 0.01) -> Composite:
    """A Zennit composite by name (``COMPOSITES``) or the one given. "paper": alpha=1, beta=0 on every conv with
    the bias ignored, ReLU passes relevance, max pooling by the gradient, epsilon on linear layers, BatchNorm merged
    into the conv before it (Zennit's canonizer, made exact: :class:`ExactMergeBatchNorm`)."""
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ValueError(f"capxai.explain.LRP: composite must be one of {COMPOSITES.names()} or a zennit Composite, "
                         f"got {composite!r}")
    return COMPOSITES[composite](eps)


def grid_relevance(feature_relevance: torch.Tensor, grid_size) -> torch.Tensor:
    """``[K, B, regions, C]`` -> ``[K, B, C, h, w]``: back onto the grid the encoder flattened
    (``grid.flatten(2).transpose(1, 2)``)."""
    return feature_relevance.transpose(-1, -2).unflatten(-1, tuple(grid_size))


def zennit_relevance(encoder: nn.Module, images: torch.Tensor, feature_relevance: torch.Tensor,
                     composite: Composite) -> torch.Tensor:
    """The general path: ``[K, B, regions, C]`` -> pixel relevance ``[K, B, 3, H, W]``, one backward per target
    through the composite-hooked encoder (one forward)."""
    inputs = images.detach().clone().requires_grad_(True)
    with composite.context(encoder) as hooked, torch.enable_grad():
        features = hooked(inputs)
        results = [torch.autograd.grad(features, inputs, grad_outputs=relevance, retain_graph=True)[0]
                   for relevance in feature_relevance]
    return torch.stack(results)


# -- fast path ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _ConvStep:
    """One conv (BatchNorm folded in) with the z+ rule: ``x+ W+ + x- W-`` (+ ``b+`` when the rule keeps the
    bias), or the flat rule (all weights and inputs 1, no bias)."""

    conv: nn.Conv2d
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    flat: bool
    image_shape: Sequence[int] = ()  # [C, H, W] of the input
    positive_input: Optional[torch.Tensor] = None
    negative_input: Optional[torch.Tensor] = None
    inverse: Optional[torch.Tensor] = None  # 1 / the stabilised denominator, computed once per image

    def _conv(self, x, weight, bias=None):
        c = self.conv
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def _transposed(self, ratio, weight):
        """The conv's input gradient for output gradient ``ratio``, as a transposed conv on channels-last data
        (oneDNN's fastest path here: about 2x ``conv2d_input`` on NCHW, measured on SceneCNN's layers)."""
        c = self.conv
        height, width = self.image_shape[1:]
        produced = [(size - 1) * stride - 2 * pad + dilation * (kernel - 1) + 1 for size, stride, pad, dilation, kernel
                    in zip(ratio.shape[2:], c.stride, c.padding, c.dilation, c.kernel_size)]
        return F.conv_transpose2d(ratio.contiguous(memory_format=torch.channels_last), weight, None, c.stride,
                                  c.padding, (height - produced[0], width - produced[1]), c.groups, c.dilation)

    def forward(self, x: torch.Tensor, keep_bias: bool) -> torch.Tensor:
        self.image_shape = tuple(x.shape[1:])
        if self.flat:
            self.inverse = 1.0 / _stabilize(self._conv(torch.ones_like(x), torch.ones_like(self.weight)))
        else:
            self.positive_input = x.clamp(min=0)
            positive = self._conv(self.positive_input, self.weight.clamp(min=0),
                                  self.bias.clamp(min=0) if keep_bias and self.bias is not None else None)
            if bool((x < 0).any()):
                self.negative_input = x.clamp(max=0)
                positive = positive + self._conv(self.negative_input, self.weight.clamp(max=0))
            self.inverse = 1.0 / _stabilize(positive)
        return self._conv(x, self.weight, self.bias)

    def backward(self, relevance: torch.Tensor, targets: int) -> torch.Tensor:
        ratio = (relevance.unflatten(0, (targets, -1)) * self.inverse).flatten(0, 1)
        if self.flat:
            return self._transposed(ratio, torch.ones_like(self.weight))
        result = _times_input(self._transposed(ratio, self.weight.clamp(min=0)), self.positive_input, targets)
        if self.negative_input is not None:
            result = result + _times_input(self._transposed(ratio, self.weight.clamp(max=0)), self.negative_input,
                                           targets)
        return result


@dataclasses.dataclass
class _PoolStep:
    """Max pooling by the gradient: all relevance to each window's winner."""

    pool: nn.MaxPool2d
    input_shape: Sequence[int] = ()
    winners: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, keep_bias: bool) -> torch.Tensor:
        p = self.pool
        output, self.winners = F.max_pool2d(x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode,
                                            return_indices=True)
        self.input_shape = tuple(x.shape[1:])
        return output

    def backward(self, relevance: torch.Tensor, targets: int) -> torch.Tensor:
        # on channels-last data: each position's C values are contiguous, so the winners scatter along positions
        channels, height, width = self.input_shape
        winners = self.winners.permute(0, 2, 3, 1).reshape(self.winners.shape[0], -1, channels).repeat(targets, 1, 1)
        source = relevance.permute(0, 2, 3, 1).reshape(relevance.shape[0], -1, channels)
        result = source.new_zeros(relevance.shape[0], height * width, channels).scatter_add_(1, winners, source)
        return result.reshape(-1, height, width, channels).permute(0, 3, 1, 2)


class _ReluStep:
    """ReLU: passes relevance unchanged (Zennit's ``Pass``)."""

    def forward(self, x: torch.Tensor, keep_bias: bool) -> torch.Tensor:
        return torch.relu(x)

    def backward(self, relevance: torch.Tensor, targets: int) -> torch.Tensor:
        return relevance


def _stabilize(z: torch.Tensor) -> torch.Tensor:
    return z + ZENNIT_STABILIZER * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _times_input(gradient: torch.Tensor, inputs: torch.Tensor, targets: int) -> torch.Tensor:
    return (gradient.unflatten(0, (targets, -1)) * inputs).flatten(0, 1)


def plain_layers(encoder: nn.Module) -> Optional[List[nn.Module]]:
    """The encoder's layers in order when it is a plain sequence of Conv2d, BatchNorm2d, ReLU and MaxPool2d whose
    output it flattens to ``[B, regions, C]`` (SceneCNN, TorchvisionEncoder("vgg16")), else None."""
    body = getattr(encoder, "features", None)
    if not isinstance(body, nn.Sequential):
        body = getattr(encoder, "body", None)
    if not isinstance(body, nn.Sequential):
        return None
    layers = list(body)
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)
    if not layers or not all(type(layer) in allowed for layer in layers):
        return None
    return layers


def _fold(layers: List[nn.Module], first_flat: bool) -> List[object]:
    """Steps of the fast path: each conv with the BatchNorm after it folded in, ReLUs, max pooling."""
    steps: List[object] = []
    for position, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            weight = layer.weight
            bias = layer.bias if layer.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
            following = layers[position + 1] if position + 1 < len(layers) else None
            if isinstance(following, nn.BatchNorm2d):
                scale = following.weight / torch.sqrt(following.running_var + following.eps)
                weight = weight * scale.reshape(-1, 1, 1, 1)
                bias = (bias - following.running_mean) * scale + following.bias
            steps.append(_ConvStep(layer, weight, bias, flat=first_flat and not steps))
        elif isinstance(layer, nn.MaxPool2d):
            steps.append(_PoolStep(layer))
        elif isinstance(layer, nn.ReLU):
            steps.append(_ReluStep())
        elif isinstance(layer, nn.BatchNorm2d):
            previous = layers[position - 1] if position else None
            if not isinstance(previous, nn.Conv2d):
                raise ValueError("capxai.explain: a BatchNorm2d must follow a Conv2d to be folded")
    return steps


def fast_relevance(layers: List[nn.Module], images: torch.Tensor, feature_relevance: torch.Tensor, grid_size,
                   composite: str, progress: Optional[Callable] = None) -> torch.Tensor:
    """The fast path for ``composite`` "paper" or "epsilon_plus_flat": ``[K, B, regions, C]`` -> ``[K, B, 3, H, W]``.
    The modified forward runs once on the images; targets go through the transposed pass together, in chunks that
    keep each layer's relevance under ``FAST_PATH_BYTES``."""
    if composite not in ("paper", "epsilon_plus_flat"):
        raise ValueError(f"capxai.explain: the encoder fast path serves 'paper' and 'epsilon_plus_flat', not "
                         f"{composite!r}")
    keep_bias = composite == "epsilon_plus_flat"  # Zennit's ZPlus keeps b+; the paper preset ignores the bias
    with torch.no_grad():
        steps = _fold(layers, first_flat=composite == "epsilon_plus_flat")
        # channels-last throughout: oneDNN's transposed convs are about 2x faster on it, and no layout copies
        activation, largest = images.contiguous(memory_format=torch.channels_last), images[0].numel()
        for step in steps:
            activation = step.forward(activation, keep_bias)
            largest = max(largest, activation[0].numel())
        relevance = grid_relevance(feature_relevance, grid_size)
        targets, batch = relevance.shape[:2]
        per_target = largest * batch * relevance.element_size()
        chunk = max(1, min(targets, FAST_PATH_BYTES // max(per_target, 1)))
        results = []
        for begin in range(0, targets, chunk):
            part = relevance[begin:begin + chunk]
            count = part.shape[0]
            current = part.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            for step in reversed(steps):
                current = step.backward(current, count)
            results.append(current.contiguous().unflatten(0, (count, batch)))
        return torch.cat(results)


def pixel_relevance(encoder: nn.Module, images: torch.Tensor, feature_relevance: torch.Tensor, grid_size,
                    composite: Union[str, Composite], eps: float, fast: bool = True) -> torch.Tensor:
    """Pixel relevance ``[K, B, 3, H, W]`` of the feature-grid relevance ``[K, B, regions, C]``: the fast path
    where it applies, else Zennit."""
    layers = plain_layers(encoder)
    if fast and isinstance(composite, str) and composite in ("paper", "epsilon_plus_flat") and layers is not None \
            and grid_size is not None:
        return fast_relevance(layers, images, feature_relevance, grid_size, composite)
    return zennit_relevance(encoder, images, feature_relevance, make_composite(composite, eps))
