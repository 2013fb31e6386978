"""What every captioner offers the shared decoding, training and explanation code: an encoder-side state, one
decoding step, and teacher-forced decoding that returns every step's activations in one typed structure."""
import abc
import dataclasses
from typing import Dict, Tuple

import torch
from torch import nn

State = Dict[str, torch.Tensor]  # every tensor batch-first, so beams can reorder them with index_select


@dataclasses.dataclass
class DecoderTrace:
    """Teacher-forced decoding of a batch: ``logits [B, T, V]`` and, per model, the activations of every step
    stacked as ``[B, T, ...]`` (gates, states, attention weights, sentinel...), named in the model's docstring."""

    logits: torch.Tensor
    activations: Dict[str, torch.Tensor]


class Captioner(nn.Module, abc.ABC):
    """Base of the captioners: subclasses define ``init_state`` and ``step``; ``forward`` runs teacher forcing."""

    vocab_size: int

    @abc.abstractmethod
    def init_state(self, features: torch.Tensor) -> State:
        """Encoder-side state for ``features [B, regions, C]``: projected regions and zero decoder states."""

    @abc.abstractmethod
    def step(self, state: State, words: torch.Tensor) -> Tuple[torch.Tensor, State, Dict[str, torch.Tensor]]:
        """One word for each row: ``words [B]`` -> ``(logits [B, V], new state, this step's activations)``."""

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> DecoderTrace:
        """Teacher forcing: ``features [B, regions, C]``, ``captions [B, L]`` (``<start> ... <end> <pad>..``) ->
        logits for positions 1..L-1 (``[B, L-1, V]``) and every step's activations."""
        if features.dim() != 3:
            raise ValueError(f"{type(self).__name__}: features must be [B, regions, C], got {list(features.shape)}")
        if captions.dim() != 2 or captions.shape[0] != features.shape[0] or captions.shape[1] < 2:
            raise ValueError(f"{type(self).__name__}: captions must be [B, L >= 2] with B = {features.shape[0]}, "
                             f"got {list(captions.shape)}")
        if captions.min() < 0 or captions.max() >= self.vocab_size:
            raise ValueError(f"{type(self).__name__}: caption indices must be in [0, {self.vocab_size})")
        state = self.init_state(features)
        logits, traces = [], []
        for t in range(captions.shape[1] - 1):
            step_logits, state, trace = self.step(state, captions[:, t])
            logits.append(step_logits)
            traces.append(trace)
        activations = {name: torch.stack([trace[name] for trace in traces], dim=1) for name in traces[0]}
        return DecoderTrace(torch.stack(logits, dim=1), activations)
