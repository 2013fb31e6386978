"""Explanations of a vision-language model's captions as capxai's one :class:`Explanation` type (issue 38): every
word of the caption explained teacher-forced on prompt + caption by each method, one image a row.

Methods (:data:`VLM_EXPLAINERS`):

- ``lrp``, ``gradient-x-input``: relevance on the pixels (through the vision tower), the image tokens (on their
  grid), the prompt and the earlier caption words (:func:`capxai.explain.vlm_lrp.vlm_relevance`).
- ``gradcam``: Grad-CAM on the image features the language model reads (the projector's output, one row per image
  token), upsampled from the token grid to the image.
- ``attention``: the language model's attention from each word's step to the image tokens, averaged over heads and
  layers (the baseline the VLM visualisers show), upsampled likewise.
- ``integrated-gradients``, ``occlusion``: on the pixel values, as for the other captioners
  (:func:`capxai.explain.vlm_lrp.vlm_integrated_gradients`, :func:`capxai.explain.vlm_lrp.vlm_occlusion`).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from capxai.explain.explanation import Explanation
from capxai.explain.vlm_image import image_size, image_token_grid, pixel_image, place_image_tokens
from capxai.explain.vlm_lrp import vlm_attention, vlm_gradcam, vlm_integrated_gradients, vlm_occlusion, vlm_relevance
from capxai.models.vlm import VisionLanguageModel, VLMFamily, VLMInputs, sequence_ids
from capxai.nn.context import LRPSettings

VLM_EXPLAINERS = {
    "lrp": "LRP (AttnLRP's rules for the attention blocks; docs/LRP_RULES.md Part 3)",
    "gradient-x-input": "each input times the gradient of the word's logit",
    "gradcam": "Grad-CAM on the image features the language model reads (the projector's output)",
    "attention": "the language model's attention to the image tokens, mean over heads and layers",
    "integrated-gradients": "Integrated Gradients on the pixel values (Captum's quadrature, 16 steps)",
    "occlusion": "the logits' drop with each square of the image hidden (Captum's feature ablation)",
}


def _upsample(token_maps: torch.Tensor, size) -> torch.Tensor:
    """``[K, rows, columns]`` on the grid of tokens -> ``[K, H, W]`` (bilinear)."""
    return F.interpolate(token_maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def explain_one(vlm: VisionLanguageModel, forced: VLMInputs, method: str, *, contrast: Optional[int] = None,
                settings: Optional[LRPSettings] = None, chunk_size: Optional[int] = None,
                memory_budget: Optional[int] = None) -> Explanation:
    """The explanation (one row) of the caption in ``forced`` by ``method`` (:data:`VLM_EXPLAINERS`); the words go
    through the backward ``chunk_size`` at a time, or as many as ``memory_budget`` bytes hold (default: half the
    memory available, :mod:`capxai.explain.memory_budget`)."""
    if method not in vlm_methods(vlm.spec):
        why = (f"does not apply to {vlm.family}: {NO_GRID}" if method in VLM_EXPLAINERS else
               "is unknown for a vision-language model")
        raise ValueError(f"method {method!r} {why}; choose from {', '.join(vlm_methods(vlm.spec))}")
    model, inputs, positions = vlm.model, forced.inputs, forced.positions
    count, fed_from = positions.numel(), forced.prompt_length - 1  # the last prompt token is fed at step 0
    sequence = sequence_ids(inputs)[0]  # prompt then caption (an encoder-decoder's: its encoder's, then its decoder's)
    prompt_ids = sequence[:fed_from]
    prompt_text = prompt_ids != image_token_id(model)  # the placeholders' relevance is the image tokens'
    fields, chunking = {}, {"chunk_size": chunk_size, "memory_budget": memory_budget}
    tiles, token_map = forced.tiles, None  # token_map: [K, rows, columns] on the image's token grid
    if method in ("lrp", "gradient-x-input"):
        relevance = vlm_relevance(model, inputs, positions, settings=settings, method=method, contrast=contrast,
                                  **chunking)
        chunk_size = relevance.words_per_backward
        explained, step_logits = relevance.logits, relevance.step_logits
        token_map = (place_image_tokens(relevance.image_tokens, model, inputs, tiles) if vlm.spec.image_tokens_on_grid
                     else relevance.image_tokens)  # BLIP-2's queries: in the order the language model reads them
        fed = relevance.tokens[:, fed_from:fed_from + count]  # [K, K]: the last prompt token, then the caption's
        fields.update(pixel_relevance=pixel_image(relevance.pixels, model, inputs, tiles)[None],
                      feature_relevance=token_map.reshape(1, count, -1, 1), word_relevance=torch.tril(fed)[None],
                      prompt_relevance=relevance.tokens[:, :fed_from][:, prompt_text][None])
    elif method == "gradcam":
        token_values, explained, step_logits = vlm_gradcam(model, inputs, positions, contrast=contrast, **chunking)
        token_map = place_image_tokens(token_values, model, inputs, tiles)
    elif method in ("integrated-gradients", "occlusion"):
        if method == "occlusion":
            pixels, explained, step_logits = vlm_occlusion(model, inputs, positions, contrast=contrast)
        else:
            pixels, explained, step_logits = vlm_integrated_gradients(model, inputs, positions, contrast=contrast,
                                                                      **chunking)
        fields.update(pixel_relevance=pixel_image(pixels, model, inputs, tiles)[None])
    else:
        if contrast is not None:
            raise ValueError("attention does not depend on the word explained: --contrast does not apply to it")
        token_values, step_logits = vlm_attention(model, inputs, positions)
        explained = step_logits.gather(1, forced.caption_ids[:, None])[:, 0]
        token_map = place_image_tokens(token_values, model, inputs, tiles)
        fields.update(attention=token_map.flatten(1)[None])
    grid = (list(image_token_grid(model, inputs, int((inputs["input_ids"] == image_token_id(model)).sum()), tiles))
            if vlm.spec.image_tokens_on_grid else None)
    if "pixel_relevance" not in fields:
        fields.update(pixel_map=_upsample(token_map.to(step_logits.dtype), image_size(model, inputs, tiles))[None])
    ids = forced.caption_ids
    words = vlm.token_texts(ids.tolist())
    fed_ids = sequence[fed_from:fed_from + count + 1]
    fed_words = vlm.token_texts(fed_ids[:1].tolist())  # the prompt's last token, fed at step 0: the same every image
    result = Explanation(
        tokens=ids[None], lengths=torch.tensor([count], device=ids.device), logits=explained[None],
        probabilities=step_logits.softmax(-1).gather(1, ids[:, None])[:, 0][None], captions=fed_ids[None],
        method=method, grid_size=grid, words=[words],
        settings={"family": vlm.family, "prompt": vlm.prompt, "prompt_end": fed_words[0],
                  **_settings_of(method, settings, chunk_size)},
        prompt_words=[vlm.token_texts(prompt_ids[prompt_text].tolist())], **fields)
    if contrast is not None:
        result.contrast = torch.full_like(ids, int(contrast))[None]
        result.contrast_words = [vlm.token_texts([int(contrast)]) * count]
    return result


NO_GRID = ("its image tokens are not places of the image (BLIP-2's are its Q-Former's learned queries), so a map of "
           "them is no map of the image")
GRID_METHODS = ("gradcam", "attention")  # maps of the image tokens, upsampled to the image


def vlm_methods(family: VLMFamily) -> List[str]:
    """The methods of :data:`VLM_EXPLAINERS` that apply to a ``family`` (a :class:`VisionLanguageModel`'s ``spec``):
    all, but for a family whose image tokens are not on the image's grid
    (:attr:`capxai.models.vlm.VLMFamily.image_tokens_on_grid`) those that map the image tokens (Grad-CAM on them, the
    attention to them)."""
    return [method for method in VLM_EXPLAINERS if family.image_tokens_on_grid or method not in GRID_METHODS]


def image_token_id(model) -> int:
    """The id of the image placeholder token in a family's config."""
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise ValueError(f"{type(config).__name__} names no image token (image_token_id / image_token_index)")


def _settings_of(method: str, settings: Optional[LRPSettings], chunk_size: Optional[int]) -> dict:
    if method != "lrp":
        return {}
    settings = settings if settings is not None else LRPSettings()
    return {"eps": settings.eps, "bias_factor": settings.bias_factor, "mode": settings.mode,
            "chunk_size": chunk_size}


def explain_vlm(vlm: VisionLanguageModel, images: Sequence, methods: Sequence[str] = ("lrp",),
                captions: Optional[Sequence[str]] = None, contrast: Optional[str] = None,
                settings: Optional[LRPSettings] = None, chunk_size: Optional[int] = None, max_new_tokens: int = 16,
                progress: bool = False, memory_budget: Optional[int] = None) -> Dict[str, Explanation]:
    """Explains the caption of each PIL image (the model's own greedy caption, or ``captions``) with each method:
    ``{method: Explanation}``, one row per image (words padded to the longest caption). ``contrast``: a word (one
    token of the tokenizer) each word is explained against. ``chunk_size`` / ``memory_budget``: as in
    :func:`explain_one`."""
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images; give one caption per image")
    contrast_id = None if contrast is None else vlm.token_id(contrast)
    rows: Dict[str, List[Explanation]] = {method: [] for method in methods}
    for index, image in enumerate(tqdm(images, desc="explaining", unit="image", disable=not progress)):
        forced = (vlm.caption(image, max_new_tokens) if captions is None
                  else vlm.teacher_forced(image, captions[index]))
        for method in methods:
            rows[method].append(explain_one(vlm, forced, method, contrast=contrast_id, settings=settings,
                                            chunk_size=chunk_size, memory_budget=memory_budget))
    return {method: stack_rows(explained) for method, explained in rows.items()}


def stack_rows(rows: Sequence[Explanation]) -> Explanation:
    """One explanation of B captions from B one-row explanations of the same method: tensors padded with zeros to
    the longest caption (and prompt), lists joined."""
    first = rows[0]
    words = max(int(row.lengths[0]) for row in rows)
    prompt = max(len(row.prompt_words[0]) for row in rows)
    stacked = {}
    for name in ("tokens", "logits", "probabilities", "captions", "pixel_relevance", "feature_relevance",
                 "word_relevance", "prompt_relevance", "pixel_map", "attention", "contrast"):
        values = [getattr(row, name) for row in rows]
        if values[0] is None:
            continue
        padded = [_pad_to(value, words, prompt, name) for value in values]
        if len({value.shape[2:] for value in padded}) > 1:
            raise ValueError(f"the images' {name} differ in shape ({[list(v.shape[2:]) for v in padded]}): images "
                             "the processor brings to different sizes are explained one call each")
        stacked[name] = torch.cat(padded)
    return Explanation(lengths=torch.cat([row.lengths for row in rows]), method=first.method,
                       settings=first.settings, grid_size=first.grid_size, words=[row.words[0] for row in rows],
                       prompt_words=[row.prompt_words[0] for row in rows],
                       contrast_words=None if first.contrast_words is None else [row.contrast_words[0] for row in
                                                                                  rows], **stacked)


def _pad_to(value: torch.Tensor, words: int, prompt: int, name: str) -> torch.Tensor:
    """Pads a row's word dimension to ``words`` (``captions``, the fed tokens: one more), and the second dimension of
    ``word_relevance`` to ``words``, of ``prompt_relevance`` to ``prompt``."""
    padding = [0] * (2 * value.dim())  # F.pad's order: the last dimension's (left, right) first
    padding[-3] = (words + 1 if name == "captions" else words) - value.shape[1]
    if name in ("word_relevance", "prompt_relevance"):
        padding[-5] = (words if name == "word_relevance" else prompt) - value.shape[2]
    return F.pad(value, padding)
