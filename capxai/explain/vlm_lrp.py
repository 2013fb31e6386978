"""LRP of a vision-language model's caption, every word in one vmapped backward (issue 38; docs/LRP_RULES.md Part 3,
"The blocks of vision-language models").

The model (a Hugging Face ``...ForConditionalGeneration`` of LLaVA, Qwen2.5-VL, Idefics3 / SmolVLM, PaliGemma: any
whose forward takes ``pixel_values`` and ``input_ids`` and places the image features into the text embeddings) runs
once, teacher-forced on prompt + caption, inside ``capxai.lrp()`` and ``capxai.nn.relevance_rules()``; the pixels and
the text embeddings (the output of ``get_input_embeddings()``) are the leaves. Word k of the caption starts from its
logit at the step before it; the backward is vmapped over the words, in chunks that bound the memory of one
backward (sized to a memory budget, :mod:`capxai.explain.memory_budget`, or ``chunk_size`` words), with the same result
as all at once.
"""
import contextlib
import dataclasses
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from capxai.explain.generic_lrp import frozen
from capxai.explain.memory_budget import SavedActivations, check_budget, word_bytes, words_per_backward
from capxai.explain.vlm_image import occlusion_features
from capxai.models.vlm import VLM_FAMILIES, decoder_offset, sequence_ids
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
        logits: ``[K]``, the explained logits (each word's start relevance; with a contrast, the word's logit minus
            the contrast word's).
        step_logits: ``[K, V]``, the model's logits at the step that predicts each word.
        words_per_backward: how many words went through one backward (the chunk size used).
        learned: ``[K]``, relevance on the parameters the model reads as inputs (its family's ``learned_inputs``:
            BLIP-2's Q-Former queries), summed; None for a family without them. Pixels, tokens and these hold all of
            a word's logit (up to what biases and the stabiliser absorb).
    """

    pixels: torch.Tensor
    tokens: torch.Tensor
    image_tokens: torch.Tensor
    logits: torch.Tensor
    step_logits: Optional[torch.Tensor] = None
    words_per_backward: int = 0
    learned: Optional[torch.Tensor] = None


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


@contextlib.contextmanager
def attention_implementation(model: nn.Module, name: str):
    """The model's attention implementation set to ``name`` ("eager", "sdpa") inside the block, and back after."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


@dataclasses.dataclass
class _Backward:
    """What one teacher-forced forward and the vmapped backward of every word give: per word the gradient (or
    relevance) on each leaf, ``[K, ...]``, with the leaves' values and the placeholders the image filled."""

    on_leaves: List[torch.Tensor]  # pixels, the language model's input embeddings, token embeddings..., learned...
    leaves: List[torch.Tensor]
    token_leaves: int  # how many token embeddings: 1, or an encoder-decoder's 2 (the prompt's, the caption's)
    image_rows: torch.Tensor  # [L] bool
    explained: torch.Tensor  # [K]
    step_logits: torch.Tensor  # [K, V]
    words_per_backward: int

    @property
    def on_tokens(self) -> torch.Tensor:
        """``[K, L]`` each word's relevance (or gradient x input...) on the tokens of :func:`sequence_ids`, summed
        over the embedding's dimensions: the on_leaves of the token embeddings, joined in sequence order."""
        return torch.cat([values.sum(-1)[:, 0] for values in self.on_leaves[2:2 + self.token_leaves]], 1)


def _check_positions(inputs: Dict[str, torch.Tensor], caption_positions, contrast, chunk_size, caller: str,
                     memory_budget: Optional[int] = None):
    ids = sequence_ids(inputs)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"{caller}: input_ids must be [1, L] (one image and its caption), got {list(ids.shape)}")
    positions = torch.as_tensor(caption_positions, dtype=torch.long, device=ids.device).flatten()
    if positions.numel() == 0 or int(positions.min()) < 1 or int(positions.max()) >= ids.shape[1]:
        raise ValueError(f"{caller}: caption_positions must be in [1, {ids.shape[1] - 1}], got {positions.tolist()}")
    check_budget(memory_budget, chunk_size, caller)
    if contrast is not None:
        contrast = torch.as_tensor(contrast, dtype=torch.long, device=ids.device).flatten()
        if contrast.numel() == 1:
            contrast = contrast.expand(positions.numel())
        if contrast.numel() != positions.numel():
            raise ValueError(f"{caller}: contrast must be one token id or one per word ({positions.numel()}), got "
                             f"{contrast.numel()}")
    return positions, contrast


def _backward(model: nn.Module, inputs: Dict[str, torch.Tensor], positions: torch.Tensor,
              contrast: Optional[torch.Tensor], rules: Optional[LRPSettings], chunk_size: Optional[int],
              memory_budget: Optional[int] = None) -> _Backward:
    """One forward (inside the relevance rules when ``rules`` is given) and the vmapped backward of every word's
    start: LRP's (the logit on its index, minus the contrast's on its own) or the gradient's (1, and -1), in chunks of
    ``chunk_size`` words, or as many as ``memory_budget`` bytes hold (default: half the memory available)."""
    ids, offset = sequence_ids(inputs), decoder_offset(inputs)
    pixels = inputs["pixel_values"].detach().clone().requires_grad_(True)
    leaves = []  # the token embeddings: the prompt's and caption's (an encoder-decoder: its encoder's, decoder's)

    def as_leaf(module, arguments, output):
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    merged = []  # what the language model reads: the text embeddings with the image features placed in them
    reader = model.get_encoder() if model.config.is_encoder_decoder else model.get_decoder()
    embedders = {model.get_input_embeddings()}
    if model.config.is_encoder_decoder:  # its decoder may embed the caption with a module of its own (tied weights)
        decoder = model.get_decoder()
        embedders.add(getattr(decoder, "get_decoder", lambda: decoder)().embed_tokens)

    def read_merged(module, arguments, keywords):
        merged.append(keywords.get("inputs_embeds"))

    family = VLM_FAMILIES.get(getattr(model.config, "model_type", None))
    # the parameters read as inputs, as leaves of their own in the call (torch.func.functional_call), not constants
    learned = {name: parameter.detach().clone().requires_grad_(True) for name, parameter in model.named_parameters()
               if family is not None and name.rsplit(".", 1)[-1] in family.learned_inputs}
    hooks = [*(embedder.register_forward_hook(as_leaf) for embedder in embedders),
             reader.register_forward_pre_hook(read_merged, with_kwargs=True)]
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen(model))
            saved = stack.enter_context(SavedActivations(model))
            if rules is not None:
                stack.enter_context(relevance_rules(stack.enter_context(lrp(rules.eps, rules.bias_factor,
                                                                            rules.mode))))
            else:  # torch has no vmap rule for the CPU flash attention's backward: eager, not a loop over words
                stack.enter_context(_VmappableScatter())
                stack.enter_context(attention_implementation(model, "eager"))
            # the logits of the steps that predict the words only ([K, V], not [L, V]): the starts of K words are
            # then K x K x V, not K x L x V (a 150k vocabulary and 600 tokens: 360 MB a word)
            logits = torch.func.functional_call(model, learned, (), {
                **inputs, "pixel_values": pixels, "use_cache": False,
                "logits_to_keep": positions - 1 - offset}).logits[0]
    finally:
        for hook in hooks:
            hook.remove()
    expected = 2 if model.config.is_encoder_decoder else 1
    if len(leaves) != expected or len(merged) != 1 or merged[0] is None:
        raise ValueError(f"vlm_relevance: {type(model).__name__} embedded its tokens {len(leaves)} times and fed its "
                         f"language model {len(merged)} times with inputs_embeds; expected {expected} and 1 (a family "
                         "whose forward does not place image features into the text embeddings is not covered)")
    language_input = merged[0]
    words = ids[0, positions]
    count = torch.arange(positions.numel(), device=ids.device)
    step_logits = logits.detach()  # [K, V]: row k is the step predicting word k
    explained = step_logits[count, words]
    against = None if contrast is None else step_logits[count, contrast]
    leaves_read = [pixels, language_input, *leaves, *learned.values()]
    if chunk_size is None:
        per_word = word_bytes(saved.largest, leaves_read, logits.numel() * logits.element_size())
        chunk_size = words_per_backward(positions.numel(), per_word, logits.device, memory_budget)
    backward = torch.func.vmap(lambda target: torch.autograd.grad(logits, leaves_read, target, retain_graph=True))
    results = []
    for begin in range(0, positions.numel(), chunk_size):  # each chunk's starts made for it: [chunk, K, V]
        chunk = count[begin:begin + chunk_size]
        start = logits.new_zeros(chunk.numel(), *logits.shape)
        rows = torch.arange(chunk.numel(), device=ids.device)
        start[rows, chunk, words[chunk]] = explained[chunk] if rules is not None else 1.0
        if against is not None:  # where the contrast is the word itself the two cancel: a zero start
            start[rows, chunk, contrast[chunk]] -= against[chunk] if rules is not None else 1.0
        results.append(backward(start))
    if against is not None:
        explained = explained - against
    on_leaves = [torch.cat([result[i] for result in results]) for i in range(len(leaves_read))]
    image_rows = (leaves[0].detach() != language_input.detach()).any(-1)[0]  # the placeholders the image filled
    return _Backward(on_leaves, [leaf.detach() for leaf in leaves_read], len(leaves), image_rows, explained,
                     step_logits, chunk_size)


def vlm_relevance(model: nn.Module, inputs: Dict[str, torch.Tensor], caption_positions: torch.Tensor,
                  settings: Optional[LRPSettings] = None, chunk_size: Optional[int] = None,
                  method: str = "lrp", contrast: Optional[torch.Tensor] = None,
                  memory_budget: Optional[int] = None) -> VLMRelevance:
    """Explains the tokens of ``inputs["input_ids"]`` (``[1, L]``, prompt then caption) at ``caption_positions``
    (``[K]``, positions in the sequence, each > 0): word k's start is its logit at position ``caption_positions[k] -
    1`` (what the model predicted there). ``inputs`` are the processor's (``pixel_values``, ``input_ids``, and what
    the family adds: ``image_grid_thw``, ``pixel_attention_mask``...). ``settings``: eps, bias_factor and attention
    mode (default ``LRPSettings()``); ``chunk_size``: words per backward, or ``memory_budget``: the bytes the words'
    backward may take (default: half the memory available on the device; :mod:`capxai.explain.memory_budget`), the
    result the same for any chunking. ``method``: "lrp"
    (the rules of docs/LRP_RULES.md Part 3) or "gradient-x-input" (each input times the gradient of the word's logit,
    the same backward without the rules). ``contrast``: a token id (or one per word) each word is explained against:
    the start is the word's logit minus the contrast's, as for the other captioners' ``contrast=``."""
    if method not in VLM_METHODS:
        raise ValueError(f"vlm_relevance: method must be one of {VLM_METHODS}, got {method!r}")
    positions, contrast = _check_positions(inputs, caption_positions, contrast, chunk_size,
                                           "vlm_relevance", memory_budget)
    rules = (settings if settings is not None else LRPSettings()) if method == "lrp" else None
    result = _backward(model, inputs, positions, contrast, rules, chunk_size, memory_budget)
    if method == "gradient-x-input":
        result.on_leaves = [gradient * leaf for gradient, leaf in zip(result.on_leaves, result.leaves)]
    per_input, learned_from = result.on_leaves, 2 + result.token_leaves
    to_language_input = per_input[1].sum(-1)[:, 0]  # [K, L]
    learned = (sum(values.flatten(1).sum(1) for values in per_input[learned_from:])
               if len(per_input) > learned_from else None)
    return VLMRelevance(pixels=per_input[0], tokens=result.on_tokens,
                        image_tokens=to_language_input[:, result.image_rows],
                        logits=result.explained, step_logits=result.step_logits,
                        words_per_backward=result.words_per_backward, learned=learned)


def vlm_gradcam(model: nn.Module, inputs: Dict[str, torch.Tensor], caption_positions: torch.Tensor,
                chunk_size: Optional[int] = None, contrast: Optional[torch.Tensor] = None,
                memory_budget: Optional[int] = None):
    """Grad-CAM on the image features as the language model reads them (the vision tower's output after its
    projector / merger / connector: one row per image token, on the image's token grid): per word,
    ``relu(sum_c alpha_c A[n, c])`` with ``alpha_c`` the gradient of the word's logit (minus the contrast's) on
    channel c averaged over the N image tokens. Returns ``([K, N] maps, [K] explained logits, [K, V] step logits)``.
    """
    positions, contrast = _check_positions(inputs, caption_positions, contrast, chunk_size,
                                           "vlm_gradcam", memory_budget)
    result = _backward(model, inputs, positions, contrast, None, chunk_size, memory_budget)
    features = result.leaves[1][0, result.image_rows]  # [N, C]
    gradients = result.on_leaves[1][:, 0][:, result.image_rows]  # [K, N, C]
    weights = gradients.mean(1, keepdim=True)  # [K, 1, C]
    return torch.relu((weights * features).sum(-1)), result.explained, result.step_logits


def vlm_attention(model: nn.Module, inputs: Dict[str, torch.Tensor], caption_positions: torch.Tensor):
    """The attention baseline of the VLM visualisers: the language model's attention from the step predicting each
    word to the image tokens (an encoder-decoder's: its decoder's cross-attention to them), averaged over heads and
    layers (eager attention for the call, so that the weights are returned). Returns ``([K, N], [K, V] step
    logits)``."""
    positions, _ = _check_positions(inputs, caption_positions, None, None, "vlm_attention")
    steps = positions - 1 - decoder_offset(inputs)
    rows = []

    def read_merged(module, arguments, keywords):
        rows.append(keywords.get("inputs_embeds"))

    encoder_decoder = model.config.is_encoder_decoder
    reader = model.get_encoder() if encoder_decoder else model.get_decoder()
    hook = reader.register_forward_pre_hook(read_merged, with_kwargs=True)
    try:
        with torch.no_grad(), frozen(model), attention_implementation(model, "eager"):
            output = model(**inputs, use_cache=False, output_attentions=True)
            embeddings = model.get_input_embeddings()(inputs["input_ids"])
    finally:
        hook.remove()
    layers = output.cross_attentions if encoder_decoder else output.attentions
    if not layers:
        raise ValueError(f"vlm_attention: {type(model).__name__} returned no attention weights")
    image_rows = (embeddings != rows[0]).any(-1)[0]
    weights = torch.stack([layer[0] for layer in layers]).mean((0, 1))  # [L, L], an encoder-decoder's [L_dec, L]
    return weights[steps][:, image_rows], output.logits[0, steps]


def _explained_logits(model: nn.Module, inputs: Dict[str, torch.Tensor], positions: torch.Tensor,
                      contrast: Optional[torch.Tensor]):
    """``([K] explained logits, [K, V] step logits)`` of one forward without gradients."""
    with torch.no_grad():
        step_logits = model(**inputs, use_cache=False,
                            logits_to_keep=positions - 1 - decoder_offset(inputs)).logits[0]
    count = torch.arange(positions.numel(), device=positions.device)
    explained = step_logits[count, sequence_ids(inputs)[0, positions]]
    if contrast is not None:
        explained = explained - step_logits[count, contrast]
    return explained, step_logits


def vlm_integrated_gradients(model: nn.Module, inputs: Dict[str, torch.Tensor], caption_positions: torch.Tensor,
                             steps: int = 16, baseline: float = 0.0, chunk_size: Optional[int] = None,
                             contrast: Optional[torch.Tensor] = None, memory_budget: Optional[int] = None):
    """Integrated Gradients of every word's logit (minus the contrast's) on the processor's pixel values: Captum's
    Gauss-Legendre points and weights on the path from ``baseline`` (0: the mean colour of the normalised image) to
    the pixel values; at each point one forward and the vmapped backward of every word (the same as Captum's
    ``IntegratedGradients`` word by word). Returns ``([K, *pixel_values.shape], [K] explained logits, [K, V] step
    logits)``."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    if steps < 1:
        raise ValueError(f"vlm_integrated_gradients: steps must be >= 1, got {steps}")
    positions, contrast = _check_positions(inputs, caption_positions, contrast, chunk_size,
                                           "vlm_integrated_gradients", memory_budget)
    step_sizes, alphas = approximation_parameters("gausslegendre")
    path = inputs["pixel_values"] - baseline
    integral = torch.zeros(positions.numel(), *path.shape, dtype=path.dtype, device=path.device)
    for alpha, size in zip(alphas(steps), step_sizes(steps)):
        point = {**inputs, "pixel_values": baseline + alpha * path}
        integral += size * _backward(model, point, positions, contrast, None, chunk_size,
                                     memory_budget).on_leaves[0]
    return (integral * path, *_explained_logits(model, inputs, positions, contrast))


def vlm_occlusion(model: nn.Module, inputs: Dict[str, torch.Tensor], caption_positions: torch.Tensor,
                  window: Optional[int] = None, baseline: float = 0.0, contrast: Optional[torch.Tensor] = None):
    """Occlusion by Captum's ``FeatureAblation``: each square of the image (:func:`occlusion_features`; default an
    eighth of its side) set to ``baseline`` in turn; a pixel's value is the drop of every word's logit (minus its
    contrast's) with its square hidden, all words from each forward. Returns ``([K, *pixel_values.shape], [K]
    explained logits, [K, V] step logits)``."""
    from captum.attr import FeatureAblation

    positions, contrast = _check_positions(inputs, caption_positions, contrast, None, "vlm_occlusion")
    pixels = inputs["pixel_values"]
    if window is not None and window < 1:  # checked before the default, so that 0 is refused, not replaced
        raise ValueError(f"vlm_occlusion: window must be >= 1, got {window}")
    window = window or max(1, pixels.shape[-1] // 8)

    def word_logits(batch: torch.Tensor) -> torch.Tensor:  # [copies, *pixel_values.shape] -> [copies, K]
        return torch.stack([_explained_logits(model, {**inputs, "pixel_values": copy}, positions, contrast)[0]
                            for copy in batch])

    with torch.no_grad():
        attributions = FeatureAblation(word_logits).attribute(
            pixels[None], baselines=baseline, feature_mask=occlusion_features(model, inputs, window))
    return (attributions.to(pixels.dtype), *_explained_logits(model, inputs, positions, contrast))
