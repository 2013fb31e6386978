"""LRP through any captioner's decoder in one autograd backward (docs/LRP_RULES.md, "The generic path").

The captioner is run teacher-forced inside ``capxai.lrp()`` and ``capxai.nn.relevance_rules()``: its capxai.nn
modules (LSTMs, attention) record their fused relevance ops, the torch functions between them their rules. Its
parameters are frozen for the run, and its inputs are leaves: the feature grid, each fed word's embedding (the
output of ``captioner.embedding``) and the initial states (the state tensors that do not depend on the features).
One backward, vmapped over the explained words (each word one slice of the start relevance, the ops' targets
dimension through their batching rules), gives every word's relevance on all of them at once.
"""
import contextlib
from typing import Iterator, List, Optional

import torch
from torch import nn

from capxai.explain.decoder_lrp import DecoderRelevance, logit_start
from capxai.models import Captioner
from capxai.nn import relevance_rules
from capxai.nn.context import LRPSettings, lrp


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """The module's parameters do not require grad within the block (so a parameter is a constant to the rules)."""
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _word_leaves(store: List[torch.Tensor]):
    def hook(module, inputs, output):
        store.append(output.detach().requires_grad_(True))
        return store[-1]

    return hook


def start_relevance(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                    contrast: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[T, B, T, V]``: target k (the word at step k) starts from the raw logit of its word at step k (minus the
    contrast word's, when given: ``logit_start``)."""
    steps = tokens.shape[1]
    per_step = logit_start(logits, tokens, mask, contrast)  # [B, T, V], each step's start at its own step
    start = logits.new_zeros(steps, *logits.shape)
    diagonal = torch.arange(steps, device=logits.device)
    start[diagonal, :, diagonal] = per_step.transpose(0, 1)
    return start


def generic_relevance(captioner: Captioner, features: torch.Tensor, captions: torch.Tensor, mask: torch.Tensor,
                      settings: LRPSettings, targets: Optional[torch.Tensor] = None,
                      contrast: Optional[torch.Tensor] = None) -> DecoderRelevance:
    """Relevance of every explained word (``captions [B, L]`` with ``<start>`` first, ``mask [B, L-1]``) on the
    feature grid ``[K, B, regions, C]``, the fed words ``[K, B, T]`` and the initial states ``[K, B]``. ``targets``
    ``[B, L-1]``: the words whose logits are explained instead of the caption's; ``contrast``: explained against."""
    fed = captions[:, :-1]
    tokens = captions[:, 1:] if targets is None else targets
    words: List[torch.Tensor] = []
    with frozen(captioner), torch.enable_grad():
        grid = features.detach().clone().requires_grad_(True)
        hook = captioner.embedding.register_forward_hook(_word_leaves(words))
        try:
            with lrp(settings.eps, settings.bias_factor, settings.mode), relevance_rules(settings):
                state = dict(captioner.init_state(grid))
                initial = []
                for name, value in state.items():
                    if value.is_floating_point() and not value.requires_grad:
                        state[name] = value.detach().clone().requires_grad_(True)
                        initial.append(state[name])
                logits = []
                for t in range(fed.shape[1]):
                    step_logits, state, _ = captioner.step(state, fed[:, t])
                    logits.append(step_logits)
        finally:
            hook.remove()
        logits = torch.stack(logits, dim=1)
        if len(words) != fed.shape[1]:
            raise TypeError(f"capxai.explain: {type(captioner).__name__}.step must embed the word it is fed with "
                            ".embedding exactly once per step")
        inputs = [grid] + words + initial
        start = start_relevance(logits.detach(), tokens, mask, contrast)
        relevance = torch.func.vmap(lambda target: torch.autograd.grad(
            logits, inputs, target, materialize_grads=True))(start)
    feature_relevance, word_relevance = relevance[0], relevance[1:1 + len(words)]
    initial_relevance = sum((r.flatten(2).sum(-1) for r in relevance[1 + len(words):]),
                            start.new_zeros(start.shape[:2]))
    return DecoderRelevance(feature_relevance, torch.stack([r.sum(-1) for r in word_relevance], dim=-1),
                            initial_relevance)


def generic_pixel_relevance(encoder: nn.Module, images: torch.Tensor, feature_relevance: torch.Tensor,
                            settings: LRPSettings) -> torch.Tensor:
    """Pixel relevance ``[K, B, 3, H, W]`` of the feature relevance ``[K, B, regions, C]`` through any encoder built
    from the functions of the generic path (a ViT: patch embedding, LayerNorm, GELU, attention, residual sums), in one
    backward vmapped over the K targets. Position embeddings and a class token are constants: they absorb their
    share, as a bias does."""
    with frozen(encoder), torch.enable_grad():
        pixels = images.detach().clone().requires_grad_(True)
        with lrp(settings.eps, settings.bias_factor, settings.mode), relevance_rules(settings):
            features = encoder(pixels)
        if features.shape != feature_relevance.shape[1:]:
            raise ValueError(f"capxai.explain: the encoder gives features {list(features.shape)}, the relevance is "
                             f"for {list(feature_relevance.shape[1:])}")
        return torch.func.vmap(lambda target: torch.autograd.grad(features, pixels, target)[0])(feature_relevance)
