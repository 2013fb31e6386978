"""LRP of a vision-language model's caption, every word in one vmapped backward (issue 38; docs/LRP_RULES.md Part 3,
"The blocks of vision-language models").

The model (a Hugging Face ``...ForConditionalGeneration`` of LLaVA, Qwen2.5-VL, Idefics3 / SmolVLM, PaliGemma: any
whose forward takes ``pixel_values`` and ``input_ids`` and places the image features into the text embeddings) runs
once, teacher-forced on prompt + caption, inside ``capxai.lrp()`` and ``capxai.nn.relevance_rules()``; the pixels and
the text embeddings (the output of ``get_input_embeddings()``) are the leaves. Word k of the caption starts from its
logit at the step before it; the backward is vmapped over the words, in chunks (``chunk_size``) that bound the
memory of one backward, with the same result as all at once.
"""
import contextlib
import dataclasses
from typing import Dict, Optional

import torch
from torch import nn

from capxai.explain.generic_lrp import frozen
from torch.overrides import TorchFunctionMode

from capxai.nn import relevance_rules
from capxai.nn.function_rules import scatter_by_index
from capxai.nn.context import LRPSettings, lrp


@dataclasses.dataclass
class VLMRelevance:
    """Relevance of each explained word (K of them) on the model's inputs.

    Attributes:
        pixels: ``[K, *pixel_values.shape]``, relevance on the processor's pixel values (per channel).
        tokens: ``[K, L]``, relevance on each input token (its embedding's relevance summed over dimensions): the
            prompt, the earlier caption words; the image placeholders get none (the image features replace them).
        image_tokens: ``[K, N]``, relevance on the N image tokens as the language model reads them (the image
            features at the placeholders, in order; summed over dimensions): the map on the image's token grid.
        logits: ``[K]``, the explained logits (each word's start relevance).
    """

    pixels: torch.Tensor
    tokens: torch.Tensor
    image_tokens: torch.Tensor
    logits: torch.Tensor


def caption(model: nn.Module, inputs: Dict[str, torch.Tensor], max_new_tokens: int = 16):
    """The model's own greedy caption (its ``generate``) of the image and prompt in ``inputs`` (the processor's,
    ``input_ids [1, L]``): ``(inputs with the caption appended, the caption's positions [C])``, ready for
    :func:`vlm_relevance`. The per-token inputs grow with the caption: ``attention_mask`` with ones,
    ``token_type_ids`` with ones (a prefix LM such as PaliGemma reads the caption as its causal suffix)."""
    ids = inputs["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"caption: input_ids must be [1, L] (one image and its prompt), got {list(ids.shape)}")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    added = generated.shape[1] - ids.shape[1]
    if added < 1:
        raise ValueError("caption: the model generated no token (its first word ended the caption)")
    extended = dict(inputs, input_ids=generated)
    for name, fill in (("attention_mask", 1), ("token_type_ids", 1)):
        if name in inputs:
            extended[name] = torch.cat([inputs[name], inputs[name].new_full((1, added), fill)], 1)
    return extended, torch.arange(ids.shape[1], generated.shape[1], device=ids.device)


VLM_METHODS = ("lrp", "gradient-x-input")


class _VmappableScatter(TorchFunctionMode):
    """Gradient x Input's forward with ``masked_scatter`` written as LRP's is (:func:`scatter_by_index`): the same
    values, and a backward that vmaps over the words instead of looping (a fair comparison of the two)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.masked_scatter, torch.Tensor.masked_scatter):
            values = dict(zip(("input", "mask", "source"), args), **kwargs)
            return scatter_by_index(values["input"], values["mask"], values["source"])
        return func(*args, **kwargs)


def vlm_relevance(model: nn.Module, inputs: Dict[str, torch.Tensor], caption_positions: torch.Tensor,
                  settings: Optional[LRPSettings] = None, chunk_size: Optional[int] = None,
                  method: str = "lrp") -> VLMRelevance:
    """Explains the tokens of ``inputs["input_ids"]`` (``[1, L]``, prompt then caption) at ``caption_positions``
    (``[K]``, positions in the sequence, each > 0): word k's start is its logit at position ``caption_positions[k] -
    1`` (what the model predicted there). ``inputs`` are the processor's (``pixel_values``, ``input_ids``, and what
    the family adds: ``image_grid_thw``, ``pixel_attention_mask``...). ``settings``: eps, bias_factor and attention
    mode (default ``LRPSettings()``); ``chunk_size``: words per backward (default: all at once). ``method``: "lrp"
    (the rules of docs/LRP_RULES.md Part 3) or "gradient-x-input" (each input times the gradient of the word's logit,
    the same backward without the rules)."""
    if method not in VLM_METHODS:
        raise ValueError(f"vlm_relevance: method must be one of {VLM_METHODS}, got {method!r}")
    ids = inputs["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"vlm_relevance: input_ids must be [1, L] (one image and its caption), got {list(ids.shape)}")
    positions = torch.as_tensor(caption_positions, dtype=torch.long, device=ids.device).flatten()
    if positions.numel() == 0 or int(positions.min()) < 1 or int(positions.max()) >= ids.shape[1]:
        raise ValueError(f"vlm_relevance: caption_positions must be in [1, {ids.shape[1] - 1}], got "
                         f"{positions.tolist()}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"vlm_relevance: chunk_size must be >= 1, got {chunk_size}")
    settings = settings if settings is not None else LRPSettings()
    pixels = inputs["pixel_values"].detach().clone().requires_grad_(True)
    leaves = []

    def as_leaf(module, arguments, output):
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    merged = []  # what the language model reads: the text embeddings with the image features placed in them

    def read_merged(module, arguments, keywords):
        merged.append(keywords.get("inputs_embeds"))

    hooks = [model.get_input_embeddings().register_forward_hook(as_leaf),
             model.get_decoder().register_forward_pre_hook(read_merged, with_kwargs=True)]
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen(model))
            if method == "lrp":
                stack.enter_context(relevance_rules(stack.enter_context(
                    lrp(settings.eps, settings.bias_factor, settings.mode))))
            else:
                stack.enter_context(_VmappableScatter())
            logits = model(**{**inputs, "pixel_values": pixels}, use_cache=False).logits[0]  # [L, V]
    finally:
        for hook in hooks:
            hook.remove()
    if len(leaves) != 1 or len(merged) != 1 or merged[0] is None:
        raise ValueError(f"vlm_relevance: {type(model).__name__} embedded its tokens {len(leaves)} times and fed its "
                         f"language model {len(merged)} times with inputs_embeds; expected once each (a family whose "
                         "forward does not place image features into the text embeddings is not covered)")
    embeddings, language_input = leaves[0], merged[0]
    steps = positions - 1
    explained = logits.detach()[steps, ids[0, positions]]  # [K]
    start = logits.new_zeros(positions.numel(), *logits.shape)
    # LRP starts from the logit itself; Gradient x Input from its gradient (1), times the inputs after
    start[torch.arange(positions.numel()), steps, ids[0, positions]] = explained if method == "lrp" else 1.0
    leaves_read = [pixels, embeddings, language_input]
    backward = torch.func.vmap(lambda target: torch.autograd.grad(logits, leaves_read, target, retain_graph=True))
    chunks = start.split(chunk_size or positions.numel())
    results = [backward(chunk) for chunk in chunks]
    per_input = [torch.cat([result[i] for result in results]) for i in range(3)]
    if method == "gradient-x-input":
        per_input = [gradient * leaf.detach() for gradient, leaf in zip(per_input, leaves_read)]
    to_pixels = per_input[0]
    to_tokens = per_input[1].sum(-1)[:, 0]  # [K, L]
    to_language_input = per_input[2].sum(-1)[:, 0]  # [K, L]
    image_rows = (embeddings.detach() != language_input.detach()).any(-1)[0]  # the placeholders the image filled
    return VLMRelevance(pixels=to_pixels, tokens=to_tokens, image_tokens=to_language_input[:, image_rows],
                        logits=explained)


def image_token_grid(model: nn.Module, inputs: Dict[str, torch.Tensor], count: int):
    """``(rows, columns)`` of the ``count`` image tokens of one image as the language model reads them, row by row:
    Qwen2-VL / Qwen2.5-VL from ``image_grid_thw`` over the merge size (one frame); the families whose image becomes
    a square of tokens (LLaVA without tiles, PaliGemma, Idefics3 / SmolVLM with one tile) from the square root.
    Several images, frames or tiles are refused by name (their grids are not placed yet)."""
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        if grid.shape[0] != 1 or int(grid[0, 0]) != 1:
            raise ValueError(f"image_token_grid: one image of one frame is placed, got image_grid_thw "
                             f"{grid.tolist()}")
        merge = getattr(getattr(model.config, "vision_config", None), "spatial_merge_size", 1)
        rows, columns = int(grid[0, 1]) // merge, int(grid[0, 2]) // merge
    else:
        side = int(round(count ** 0.5))
        rows, columns = side, side
    if rows * columns != count:
        raise ValueError(f"image_token_grid: {count} image tokens do not form the grid of one image "
                         f"({rows} x {columns}); several images or tiles (e.g. Idefics3's image splitting, "
                         "LLaVA-NeXT's any-resolution) are not placed yet")
    return rows, columns


def image_token_map(relevance: VLMRelevance, model: nn.Module, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``[K, rows, columns]``: each word's relevance on the image tokens, placed on the image's token grid
    (:func:`image_token_grid`)."""
    rows, columns = image_token_grid(model, inputs, relevance.image_tokens.shape[1])
    return relevance.image_tokens.reshape(-1, rows, columns)
