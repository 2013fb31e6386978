"""Teacher-forced decoding for explanations: every row runs every step (no reordering by length, unlike
``Captioner.forward``), so step t's activations, embeddings and logits line up with the batch as given; steps after a
caption's end are computed but never receive relevance (their start relevance is zero)."""
import contextlib
import dataclasses
from typing import Dict, Iterator, List

import torch
from torch import nn

from capxai.models import Captioner


@dataclasses.dataclass
class ForwardPass:
    """``logits [B, T, V]``; ``initial_state``: the captioner's state before the first word (projected regions,
    zero decoder states...); ``steps``: per step the activations the captioner traced; ``embeddings``: per step the
    embedding of the word fed (``[B, E]``, part of the autograd graph when gradients are on)."""

    logits: torch.Tensor
    initial_state: Dict[str, torch.Tensor]
    steps: List[Dict[str, torch.Tensor]]
    embeddings: List[torch.Tensor]

    def stacked(self, name: str) -> torch.Tensor:
        """Activation ``name`` of every step, ``[T, B, ...]``."""
        return torch.stack([step[name] for step in self.steps])

    def word_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T]``: the logit of each explained word (``tokens [B, T]``)."""
        return self.logits.gather(2, tokens.unsqueeze(2)).squeeze(2)


@contextlib.contextmanager
def evaluation_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, BatchNorm running statistics) for the block; each module's mode is restored after."""
    modes = [(module, module.training) for module in modules if module is not None]
    for module, _ in modes:
        module.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)


def teacher_force(captioner: Captioner, features: torch.Tensor, captions: torch.Tensor) -> ForwardPass:
    """Feeds ``captions[:, :-1]`` (``[B, L]``, ``<start>`` first) one step at a time; see :class:`ForwardPass`."""
    embedding = getattr(captioner, "embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"capxai.explain: {type(captioner).__name__} has no .embedding (nn.Embedding) to explain "
                        "words by")
    embeddings: List[torch.Tensor] = []
    hook = embedding.register_forward_hook(lambda module, inputs, output: embeddings.append(output))
    try:
        initial_state = state = captioner.init_state(features)
        logits, steps = [], []
        for t in range(captions.shape[1] - 1):
            step_logits, state, trace = captioner.step(state, captions[:, t])
            logits.append(step_logits)
            steps.append(trace)
    finally:
        hook.remove()
    if len(embeddings) != len(steps):
        raise TypeError(f"capxai.explain: {type(captioner).__name__}.step must embed the word it is fed exactly "
                        "once per step")
    return ForwardPass(torch.stack(logits, dim=1), initial_state, steps, embeddings)


def runner_up(captioner, features: torch.Tensor, captions: torch.Tensor, explained: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: at each step the word the captioner finds most likely other than the ``explained`` one (its second
    choice where it chose that word), from one forward of the ``captions`` without gradients."""
    with torch.no_grad():
        logits = teacher_force(captioner, features, captions).logits
    return logits.scatter(-1, explained.unsqueeze(-1), float("-inf")).argmax(-1)
