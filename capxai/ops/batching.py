"""Batching (vmap) rules: a vmapped relevance op is one call with the vmapped dimension as its targets dimension.

Every op already takes a leading K ("targets") dimension on its relevance arguments, sharing one forward across the
K targets. ``torch.autograd.grad(..., is_grads_batched=True)`` (how ``capxai.explain`` explains every word at once)
vmaps the backward of ``capxai.nn``'s modules over the start relevance: without a rule torch would call the op once
per target (its slow fallback loop); with it, the vmapped dimension (times an existing K) becomes the op's K.
When an activation argument is itself batched (a vmap over images, say), the targets cannot share its forward and
the rule calls the op once per slice.
"""
from typing import Dict, Tuple

import torch

# op -> {position of a relevance argument: its rank without the targets dimension}
RELEVANCE_ARGUMENTS: Dict[str, Dict[int, int]] = {
    "lrp_linear": {3: 2},
    "lrp_lstm": {7: 3, 8: 3},
    "lrp_lstm_cell": {7: 2, 8: 2},
    "lrp_additive_attention": {2: 2},
    "lrp_sdpa": {3: 4},
    "lrp_sdpa_attnlrp": {3: 4},
}


def _as_tuple(result) -> Tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _loop(op, batch_size: int, in_dims, args):
    """The op once per vmapped slice (a batched activation: no shared forward), results stacked on dim 0."""
    results = []
    for index in range(batch_size):
        sliced = [arg.select(dim, index) if dim is not None else arg for arg, dim in zip(args, in_dims)]
        results.append(_as_tuple(op(*sliced)))
    stacked = tuple(torch.stack(parts) for parts in zip(*results))
    return stacked


def _targets_rule(name: str):
    op = getattr(torch.ops.capxai, name)
    relevance_ranks = RELEVANCE_ARGUMENTS[name]

    def rule(info, in_dims, *args, **kwargs):
        # torch passes the arguments as given, trailing defaults left out
        batch_size = info.batch_size
        if any(dim is not None for position, dim in enumerate(in_dims) if position not in relevance_ranks):
            stacked = _loop(lambda *sliced: op(*sliced, **kwargs), batch_size, in_dims, args)
            return (stacked if len(stacked) > 1 else stacked[0]), ((0,) * len(stacked) if len(stacked) > 1 else 0)
        arguments, targets = list(args), None
        for position, rank in relevance_ranks.items():
            relevance = args[position] if position < len(args) else None
            if relevance is None:
                continue
            dim = in_dims[position]
            if dim is None:
                relevance = relevance.unsqueeze(0).expand(batch_size, *relevance.shape)
            else:
                relevance = relevance.movedim(dim, 0)
            if relevance.dim() == rank + 2:  # already [K, ...]: vmapped x K targets, flattened into one K
                targets = relevance.shape[1]
                relevance = relevance.flatten(0, 1)
            arguments[position] = relevance
        outputs = _as_tuple(op(*arguments, **kwargs))
        if targets is not None:
            outputs = tuple(output.unflatten(0, (batch_size, targets)) for output in outputs)
        if len(outputs) == 1:
            return outputs[0], 0
        return outputs, (0,) * len(outputs)

    return rule


for _name in RELEVANCE_ARGUMENTS:
    torch.library.register_vmap(f"capxai::{_name}", _targets_rule(_name))
