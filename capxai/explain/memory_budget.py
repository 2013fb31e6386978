"""How many words one vmapped backward may explain at once, from a memory budget (DESIGN.md: "explaining a model whose
words are many or large goes in chunks of words sized to a memory budget, with the same result as all at once").

What one forward's graph holds is shared by every word; what grows with the words of one backward is, per word, the
relevance (or gradient) flowing through the graph and landing on the leaves, and the word's start row of the logits.
:class:`SavedActivations` records, during the forward, the largest tensor autograd saves for the backward (the
model's parameters and buffers left out: no word gets a gradient of its own for them); a word's backward holds at most
a few tensors of that size alive at once (the residual stream and the branch it meets), so the estimate of a word is

    2 x the largest saved activation + the leaves' size + one row of the explained logits,

measured against the process's peak on a SmolVLM-256M-sized model (docs/experiments/vlm/README.md): an estimate of
36 MiB a word (its largest saved activation: the vision tower's attention weights, 15.2 MiB) where the measured
growth was 20 MiB a word, so the chunk it gives errs on the small side. The budget bounds what the words add; the
forward's graph (750 MiB there) is taken before the chunk is chosen.
"""
import contextlib
import os
from typing import Iterable, Optional

import torch
from torch import nn

BUDGET_SHARE = 0.5  # of the memory available when no budget is given: the rest is left to the process and others


class SavedActivations(contextlib.AbstractContextManager):
    """Inside the block, the size in bytes of the largest tensor autograd saves for the backward (``largest``),
    parameters and buffers of ``model`` left out."""

    def __init__(self, model: nn.Module):
        self._weights = {tensor.untyped_storage().data_ptr()
                         for tensor in (*model.parameters(), *model.buffers()) if tensor.numel()}
        self.largest = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda saved: saved)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.layout == torch.strided and tensor.untyped_storage().data_ptr() not in self._weights:
            self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return tensor

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def available_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: the CUDA device's free memory, or the host's available memory
    (``MemAvailable`` of ``/proc/meminfo``; the free pages where that file is absent)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def word_bytes(largest_saved: int, leaves: Iterable[torch.Tensor], logit_row: int) -> int:
    """The estimate of what one more word adds to a backward (module docstring): ``2 * largest_saved`` + the leaves'
    bytes (each word gets its relevance on every leaf) + ``logit_row`` (its start's bytes)."""
    return 2 * largest_saved + sum(leaf.numel() * leaf.element_size() for leaf in leaves) + logit_row


def words_per_backward(count: int, per_word: int, device: torch.device, budget: Optional[int] = None) -> int:
    """How many of ``count`` words go through one backward: as many as ``budget`` bytes hold at ``per_word`` bytes
    each (default budget: half the memory available on ``device``, :func:`available_bytes`), at least one, at most
    all."""
    if budget is None:
        budget = int(BUDGET_SHARE * available_bytes(device))
    return max(1, min(count, budget // max(per_word, 1)))


def check_budget(memory_budget: Optional[int], chunk_size: Optional[int], caller: str) -> None:
    """``memory_budget`` (bytes, > 0) and ``chunk_size`` (words, >= 1) are checked; at most one of them is given."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"{caller}: chunk_size must be >= 1, got {chunk_size}")
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"{caller}: memory_budget must be > 0 bytes, got {memory_budget}")
    if memory_budget is not None and chunk_size is not None:
        raise ValueError(f"{caller}: give chunk_size (words per backward) or memory_budget (bytes the words' backward "
                         "may take), not both")
