"""What every captioner offers the shared decoding, training and explanation code: an encoder-side state, one
decoding step, and teacher-forced decoding that returns every step's activations in one typed structure."""
import abc
import dataclasses
from typing import Dict, Optional, Tuple

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
    """Base of the captioners: subclasses define ``init_state`` and ``step``; ``forward`` runs teacher forcing.
    What each use needs beyond that (an ``embedding`` for the explainers...): ``capxai.models.contract``."""

    vocab_size: int
    feature_dim: int  # C of the feature grid it reads (optional: checked against features when set)
    output_terms: Optional[Tuple[str, str]] = None  # the two activations whose sum ``self.output`` reads (after
    # dropout): needed by LRP-inference fine-tuning only (capxai.models.contract)

    @abc.abstractmethod
    def init_state(self, features: torch.Tensor) -> State:
        """Encoder-side state for ``features [B, regions, C]``: projected regions and zero decoder states."""

    @abc.abstractmethod
    def step(self, state: State, words: torch.Tensor) -> Tuple[torch.Tensor, State, Dict[str, torch.Tensor]]:
        """One word for each row: ``words [B]`` -> ``(logits [B, V], new state, this step's activations)``."""

    def check_teacher_forcing(self, features: torch.Tensor, captions: torch.Tensor) -> None:
        """The shapes and indices ``forward`` takes, or a ValueError naming what is wrong."""
        if features.dim() != 3:
            raise ValueError(f"{type(self).__name__}: features must be [B, regions, C], got {list(features.shape)}")
        if captions.dim() != 2 or captions.shape[0] != features.shape[0] or captions.shape[1] < 2:
            raise ValueError(f"{type(self).__name__}: captions must be [B, L >= 2] with B = {features.shape[0]}, "
                             f"got {list(captions.shape)}")
        if captions.min() < 0 or captions.max() >= self.vocab_size:
            raise ValueError(f"{type(self).__name__}: caption indices must be in [0, {self.vocab_size})")

    def forward(self, features: torch.Tensor, captions: torch.Tensor, pad: int = 0) -> DecoderTrace:
        """Teacher forcing: ``features [B, regions, C]``, ``captions [B, L]`` (``<start> ... <end> <pad>..``) ->
        logits for positions 1..L-1 (``[B, L-1, V]``) and every step's activations.

        A row stops once the rest of its caption is ``pad``: its logits and activations there are 0 and cost
        nothing (rows are run longest first, each step on the rows still going), so padding a batch to its longest
        caption does not make the short ones pay for it.
        """
        self.check_teacher_forcing(features, captions)
        rows, steps = captions.shape[0], captions.shape[1] - 1
        needed = steps_needed(captions, pad)
        order = None
        if bool((needed < steps).any()):
            needed, order = torch.sort(needed, descending=True, stable=True)
            features, captions = features.index_select(0, order), captions.index_select(0, order)
        active_rows = (needed.unsqueeze(0) > torch.arange(steps, device=needed.device).unsqueeze(1)).sum(1).tolist()
        state = self.init_state(features)
        logits, traces = [], []
        for t, active in enumerate(active_rows):
            if active < len(next(iter(state.values()))):
                state = {name: tensor[:active] for name, tensor in state.items()}
            step_logits, state, trace = self.step(state, captions[:active, t])
            logits.append(_pad_rows(step_logits, rows))
            traces.append({name: _pad_rows(value, rows) for name, value in trace.items()})
        activations = {name: torch.stack([trace[name] for trace in traces], dim=1) for name in traces[0]}
        stacked = torch.stack(logits, dim=1)
        if order is not None:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(rows, device=order.device)
            stacked = stacked.index_select(0, inverse)
            activations = {name: value.index_select(0, inverse) for name, value in activations.items()}
        return DecoderTrace(stacked, activations)


def steps_needed(captions: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """``[B]``: the steps up to each row's last real word (``captions [B, L]``, ``<start>`` first)."""
    positions = torch.arange(1, captions.shape[1], device=captions.device)
    return ((captions[:, 1:] != pad) * positions).amax(1)


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor [n, ...]`` followed by zero rows up to ``[rows, ...]``."""
    if tensor.shape[0] == rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])
