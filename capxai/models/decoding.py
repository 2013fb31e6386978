"""One decoding implementation for every captioner (greedy and beam search), batched over images and beams.

Both return ``tokens [B, L]`` (the words after ``<start>``, ending with ``<end>`` when it was produced, then
``<pad>``), ``log_probs [B, L]`` (of each chosen word, 0 after the end) and ``attention [B, L, ...]`` (the model's
attention weights at each step: "alpha" or "attention" of its trace).
"""
import dataclasses
from typing import Callable, Dict, Optional

import torch

from capxai.models.captioner import Captioner, State

ATTENTION_KEYS = ("alpha", "attention")


@dataclasses.dataclass
class Decoded:
    tokens: torch.Tensor
    log_probs: torch.Tensor
    attention: Optional[torch.Tensor]


def _attention_of(trace):
    for key in ATTENTION_KEYS:
        if key in trace:
            return trace[key]
    return None


def _reorder(state: State, index: torch.Tensor) -> State:
    return {name: tensor.index_select(0, index) for name, tensor in state.items()}


def _only_pad_after_end(scores: torch.Tensor, finished: torch.Tensor, pad: int) -> None:
    """A finished hypothesis only continues with <pad>, at no cost (in place)."""
    scores[finished] = float("-inf")
    scores[finished, pad] = 0.0


@torch.no_grad()
def beam_search(model: Captioner, features: torch.Tensor, beam_size: int = 3, max_length: int = 16,
                start: int = 1, end: int = 2, pad: int = 0, length_penalty: float = 0.0,
                guidance: Optional[Callable[[torch.Tensor, Dict[str, torch.Tensor]], torch.Tensor]] = None) -> Decoded:
    """Beam search over ``beam_size`` hypotheses per image, at most ``max_length`` words; the best hypothesis by
    ``sum log p / length ** length_penalty``. ``beam_size = 1`` is greedy decoding. ``guidance(log_probs [N, V],
    trace)`` may change the scores a step's words are ranked by (e.g.
    :class:`capxai.explain.guided_decoding.VisualShareGuidance`); ``log_probs`` stay the model's own."""
    if beam_size < 1 or max_length < 1:
        raise ValueError(f"beam_search: beam_size and max_length must be >= 1, got {beam_size}, {max_length}")
    batch = features.shape[0]
    rows = torch.arange(batch, device=features.device).repeat_interleave(beam_size)
    state = _reorder(model.init_state(features), rows)
    words = torch.full((batch * beam_size,), start, dtype=torch.long, device=features.device)
    scores = torch.full((batch, beam_size), float("-inf"), device=features.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished = torch.zeros(batch * beam_size, dtype=torch.bool, device=features.device)
    lengths = torch.zeros(batch * beam_size, device=features.device)
    tokens, log_probs, attention = [], [], []
    for _ in range(max_length):
        logits, state, trace = model.step(state, words)
        step_log_probs = torch.log_softmax(logits.float(), dim=-1)
        step_scores = step_log_probs if guidance is None else guidance(step_log_probs, trace)
        _only_pad_after_end(step_log_probs, finished, pad)
        if step_scores is not step_log_probs:
            _only_pad_after_end(step_scores, finished, pad)
        vocab = step_log_probs.shape[-1]
        candidates = (scores.reshape(-1, 1) + step_scores).reshape(batch, beam_size * vocab)
        scores, flat = candidates.topk(beam_size, dim=-1)
        origin = (flat // vocab + torch.arange(batch, device=flat.device).unsqueeze(1) * beam_size).reshape(-1)
        words = (flat % vocab).reshape(-1)
        state = _reorder(state, origin)
        chosen = step_log_probs[origin, words]
        tokens = [t.index_select(0, origin) for t in tokens] + [words]
        log_probs = [p.index_select(0, origin) for p in log_probs] + [chosen]
        step_attention = _attention_of(trace)
        if step_attention is not None:
            attention = [a.index_select(0, origin) for a in attention] + [step_attention.index_select(0, origin)]
        lengths = lengths.index_select(0, origin) + (~finished.index_select(0, origin)).float()
        finished = finished.index_select(0, origin) | (words == end)
        if bool(finished.all()):
            break
    normalised = scores / lengths.reshape(batch, beam_size).clamp_min(1.0) ** length_penalty
    best = normalised.argmax(dim=-1) + torch.arange(batch, device=features.device) * beam_size
    tokens = torch.stack(tokens, dim=1).index_select(0, best)
    return Decoded(tokens, torch.stack(log_probs, dim=1).index_select(0, best),
                   torch.stack(attention, dim=1).index_select(0, best) if attention else None)


def greedy(model: Captioner, features: torch.Tensor, max_length: int = 16, start: int = 1, end: int = 2,
           pad: int = 0) -> Decoded:
    """The most likely word at every step (beam search with one beam)."""
    return beam_search(model, features, 1, max_length, start, end, pad)
