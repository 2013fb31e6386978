"""Gradients of every explained word's logit at once: one forward, one backward batched over the words
(``torch.autograd.grad(..., is_grads_batched=True)``, i.e. vmap over the start gradients), and the pieces the
gradient methods add to it (Grad-CAM's layer capture, Guided Backprop's ReLUs)."""
import contextlib
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def all_word_gradients(word_logits: torch.Tensor, mask: torch.Tensor, inputs: Sequence[torch.Tensor],
                       retain_graph: bool = False) -> List[Optional[torch.Tensor]]:
    """``d word_logits[b, t] / d inputs`` for every word t, batched over the words: ``word_logits [B, T]``,
    ``mask [B, T]`` (padding gets no gradient) -> per input ``[T, *input.shape]`` (None when it does not depend on
    the words). Rows are independent (eval mode), so image b's gradient is that of its own words only."""
    steps = word_logits.shape[1]
    start = torch.zeros(steps, *word_logits.shape, dtype=word_logits.dtype, device=word_logits.device)
    diagonal = torch.arange(steps, device=word_logits.device)
    start[diagonal, :, diagonal] = mask.t().to(word_logits.dtype)
    return list(torch.autograd.grad(word_logits, list(inputs), grad_outputs=start, is_grads_batched=True,
                                    allow_unused=True, retain_graph=retain_graph))


def last_conv(encoder: nn.Module) -> nn.Conv2d:
    """The encoder's last Conv2d (Grad-CAM's default layer)."""
    convolutions = [module for module in encoder.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"capxai.explain: {type(encoder).__name__} has no Conv2d for Grad-CAM; pass layer=...")
    return convolutions[-1]


def cam_layer(encoder: nn.Module) -> nn.Module:
    """Grad-CAM's default layer: the one the encoder names (``cam_layer``: a ViT's last encoder block), else
    its last Conv2d."""
    named = getattr(encoder, "cam_layer", None)
    return named if isinstance(named, nn.Module) else last_conv(encoder)


def tokens_to_grid(tokens: torch.Tensor, grid_size, leading_tokens: int) -> torch.Tensor:
    """A ViT layer's tokens ``[..., B, 1 + h*w, C]`` (``leading_tokens`` first, e.g. a class token, then the
    patches row by row) -> ``[..., B, C, h, w]``: the grid Grad-CAM weighs, as pytorch-grad-cam's ViT
    ``reshape_transform`` does."""
    patches = tokens[..., leading_tokens:, :]
    if patches.shape[-2] != grid_size[0] * grid_size[1]:
        raise ValueError(f"capxai.explain.GradCAM: the layer has {tokens.shape[-2]} tokens, not {leading_tokens} "
                         f"leading + {grid_size[0]} x {grid_size[1]} patches")
    return patches.transpose(-1, -2).unflatten(-1, tuple(grid_size))


@contextlib.contextmanager
def captured_output(layer: nn.Module, store: List[torch.Tensor]) -> Iterator[None]:
    """Appends ``layer``'s output to ``store`` at each forward in the block."""
    handle = layer.register_forward_hook(lambda module, inputs, output: store.append(output))
    try:
        yield
    finally:
        handle.remove()


def grad_cam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017), as Captum's ``LayerGradCam(relu_attributions=True)``: channel weights =
    spatial mean of the gradient; map = ReLU(sum_c weight_c * activation_c). ``activation [B, C, h, w]``,
    ``gradient [T, B, C, h, w]`` -> ``[T, B, h, w]``."""
    weights = gradient.mean(dim=(-2, -1), keepdim=True)
    return torch.relu((weights * activation).sum(-3))


def upsample(maps: torch.Tensor, size, mode: str) -> torch.Tensor:
    """``[..., h, w]`` -> ``[..., H, W]`` with ``F.interpolate`` (as Captum's ``LayerAttribution.interpolate``)."""
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=tuple(size), mode=mode).reshape(*maps.shape[:-2], *size)


class _GuidedPass(torch.autograd.Function):
    """Identity whose backward keeps only positive gradients: placed after a ReLU, the ReLU's backward becomes
    Guided Backprop's (Springenberg et al. 2015; Captum's ``GuidedBackprop``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, gradient):
        return gradient.clamp(min=0)


@contextlib.contextmanager
def guided_relus(module: nn.Module) -> Iterator[None]:
    """Guided Backprop's ReLU backward for every ``nn.ReLU`` of ``module`` within the block."""
    handles = [relu.register_forward_hook(lambda m, inputs, output: _GuidedPass.apply(output))
               for relu in module.modules() if isinstance(relu, nn.ReLU)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
