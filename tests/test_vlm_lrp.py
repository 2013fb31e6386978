"""Every word of a VLM's caption explained in one vmapped backward (capxai.explain.vlm_lrp, issue 38): on tiny
models of four families, all words at once equal one at a time and in chunks (given, or sized to a memory budget),
each word's relevance on the pixels and the text conserves its logit (offsets zeroed, float64; float32's precision in
HF's RMSNorm), a word gets nothing from the words after it, and bad input is named."""
import pytest
import torch

from capxai.explain.vlm_image import image_token_grid, place_image_tokens
from capxai.explain.vlm_lrp import attention_implementation, vlm_relevance
from capxai.models.vlm import decoder_offset, sequence_ids
from capxai.models.vlm import generate_caption as caption
from capxai.nn.context import LRPSettings

pytest.importorskip("transformers")
from helpers import TINY_VLMS, ImplicitRules, tiny_vlm, token_leaves  # noqa: E402

SETTINGS = LRPSettings(eps=1e-12)


@pytest.mark.parametrize("family", sorted(TINY_VLMS))
def test_all_words_at_once_equal_one_at_a_time_and_chunks(family):
    model, inputs, image_token = tiny_vlm(family, seed=11)
    length = sequence_ids(inputs).shape[1]  # prompt then caption (Florence-2: its encoder's, then its decoder's)
    caption = torch.arange(length - 3, length)  # the last three tokens: the caption
    together = vlm_relevance(model, inputs, caption, SETTINGS)
    chunked = vlm_relevance(model, inputs, caption, SETTINGS, chunk_size=2)
    budgeted = vlm_relevance(model, inputs, caption, SETTINGS, memory_budget=1)  # a byte: one word a backward
    assert (together.words_per_backward, chunked.words_per_backward, budgeted.words_per_backward) == (3, 2, 1)
    torch.testing.assert_close(budgeted.pixels, together.pixels, rtol=1e-10, atol=1e-13)
    for k, position in enumerate(caption):
        alone = vlm_relevance(model, inputs, position[None], SETTINGS)
        torch.testing.assert_close(together.pixels[k], alone.pixels[0], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(together.tokens[k], alone.tokens[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(chunked.pixels, together.pixels, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(chunked.tokens, together.tokens, rtol=1e-10, atol=1e-13)
    # BLIP-2: the Q-Former's learned queries are inputs too, and take their share
    learned = together.learned if together.learned is not None else torch.zeros_like(together.logits)
    totals = together.pixels.flatten(1).sum(1) + together.tokens.sum(1) + learned
    torch.testing.assert_close(totals, together.logits, rtol=1e-5, atol=1e-9)  # conserved (float32 in RMSNorm)
    for k, position in enumerate(caption):
        assert together.tokens[k, position:].abs().sum() == 0  # the word itself and later ones: causal
    placeholders = sequence_ids(inputs)[0] == image_token
    assert together.tokens[:, placeholders].abs().sum() == 0 and together.pixels.abs().sum() > 0
    # the image tokens as the language model reads them: one per placeholder, and with the text all of the logit;
    # the vision tower (no offsets) passes their relevance on to the pixels
    assert together.image_tokens.shape == (3, int(placeholders.sum()))
    torch.testing.assert_close(together.image_tokens.sum(1) + together.tokens.sum(1), together.logits, rtol=1e-5,
                               atol=1e-9)
    torch.testing.assert_close(together.image_tokens.sum(1), together.pixels.flatten(1).sum(1) + learned, rtol=1e-5,
                               atol=1e-9)


def test_bad_input_is_named():
    model, inputs, _ = tiny_vlm("llava", seed=11)
    with pytest.raises(ValueError, match="caption_positions must be in"):
        vlm_relevance(model, inputs, torch.tensor([0]), SETTINGS)
    with pytest.raises(ValueError, match=r"input_ids must be \[1, L\]"):
        vlm_relevance(model, {**inputs, "input_ids": inputs["input_ids"].repeat(2, 1)}, torch.tensor([3]), SETTINGS)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        vlm_relevance(model, inputs, torch.tensor([3]), SETTINGS, chunk_size=0)
    with pytest.raises(ValueError, match="memory_budget must be > 0 bytes"):
        vlm_relevance(model, inputs, torch.tensor([3]), SETTINGS, memory_budget=0)
    with pytest.raises(ValueError, match="not both"):
        vlm_relevance(model, inputs, torch.tensor([3]), SETTINGS, memory_budget=1 << 20, chunk_size=1)


@pytest.mark.parametrize("family", sorted(TINY_VLMS))
def test_the_explained_words_are_the_models_own_greedy_caption(family):
    """Teacher forcing on the caption ``generate`` gave reproduces it: each explained logit is the largest at its
    step, so what is explained is what the model said."""
    model, inputs, image_token = tiny_vlm(family, seed=11)
    cut = int((inputs["input_ids"][0] == image_token).nonzero().max()) + 2  # the image and one prompt token
    prompt = {name: value[:, :cut] if name in ("input_ids", "token_type_ids") else value
              for name, value in inputs.items() if name != "decoder_input_ids"}
    extended, positions = caption(model, prompt, max_new_tokens=3)
    # Florence-2's caption follows its decoder's start token, after the encoder's prompt
    first = cut + int(model.config.is_encoder_decoder)
    assert positions.tolist() == list(range(first, sequence_ids(extended).shape[1])) and len(positions) >= 1
    explained = vlm_relevance(model, extended, positions, SETTINGS)
    with torch.no_grad():
        logits = model(**extended, use_cache=False).logits[0]
    torch.testing.assert_close(explained.logits, logits[positions - 1 - decoder_offset(extended)].max(-1).values)


@pytest.mark.parametrize("family", sorted(TINY_VLMS))
def test_equals_gradient_x_input_under_the_implicit_rules_with_offsets(family):
    """The independent per-word reference: Gradient x Input of each word's logit through the family's own HF code
    run under the rules in implicit form (tests/helpers.py ImplicitRules), biases and position embeddings as they
    are, equals capxai's relevance on the pixels and the text (constant attention, eps 1e-12)."""
    model, inputs, _ = tiny_vlm(family, seed=13, offsets=True)
    ids = sequence_ids(inputs)
    positions = torch.arange(ids.shape[1] - 2, ids.shape[1])
    explained = vlm_relevance(model, inputs, positions, SETTINGS)
    for k, position in enumerate(positions):
        pixels = inputs["pixel_values"].clone().requires_grad_()
        with token_leaves(model) as leaves, ImplicitRules():
            logits = model(**{**inputs, "pixel_values": pixels}, use_cache=False).logits[0]
        logit = logits[position - 1 - decoder_offset(inputs), ids[0, position]]
        to_pixels, *to_text = torch.autograd.grad(logit, [pixels, *leaves])
        on_tokens = torch.cat([(leaf.detach() * gradient).sum(-1)[0] for leaf, gradient in zip(leaves, to_text)])
        torch.testing.assert_close(explained.pixels[k], pixels.detach() * to_pixels, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(explained.tokens[k], on_tokens, rtol=1e-5, atol=1e-9)


GRIDS = {"llava": (4, 4), "qwen2.5-vl": (2, 2), "idefics3-smolvlm": (2, 2), "paligemma": (4, 4), "gemma3": (2, 2)}


@pytest.mark.parametrize("family", sorted(GRIDS))  # BLIP-2's image tokens are learned queries: no grid
def test_the_image_tokens_on_the_grid_of_the_image(family):
    """LLaVA and PaliGemma: 32 px in patches of 8 (4 x 4); Qwen2.5-VL: 4 x 4 patches merged 2 x 2; Idefics3: 4 x 4
    patches pixel-shuffled 2 x 2; Gemma 3: 4 x 4 patches average-pooled 2 x 2."""
    model, inputs, _ = tiny_vlm(family, seed=11)
    explained = vlm_relevance(model, inputs, torch.tensor([inputs["input_ids"].shape[1] - 1]), SETTINGS)
    placed = place_image_tokens(explained.image_tokens, model, inputs)
    assert placed.shape == (1, *GRIDS[family])
    torch.testing.assert_close(placed.flatten(1), explained.image_tokens)


def test_several_tiles_are_refused_by_name():
    model, inputs, _ = tiny_vlm("llava", seed=11)
    with pytest.raises(ValueError, match="do not form the grid of one image"):
        image_token_grid(model, inputs, 20)
    model, inputs, _ = tiny_vlm("qwen2.5-vl", seed=11)
    with pytest.raises(ValueError, match="one image of one frame"):
        image_token_grid(model, {**inputs, "image_grid_thw": torch.tensor([[2, 4, 4]])}, 8)


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_gradient_x_input_of_every_word_at_once(family):
    """Gradient x Input through the same batched backward: each word's equals its own autograd gradient times the
    inputs, and it is not LRP (the rules change the result)."""
    model, inputs, _ = tiny_vlm(family, seed=13, offsets=True)
    length = inputs["input_ids"].shape[1]
    positions = torch.arange(length - 2, length)
    together = vlm_relevance(model, inputs, positions, method="gradient-x-input")
    pixels = inputs["pixel_values"].clone().requires_grad_()
    with attention_implementation(model, "eager"):  # the attention vlm_relevance runs the gradient with
        logits = model(**{**inputs, "pixel_values": pixels}, use_cache=False).logits[0]
    for k, position in enumerate(positions):
        (gradient,) = torch.autograd.grad(logits[position - 1, inputs["input_ids"][0, position]], pixels,
                                          retain_graph=True)
        torch.testing.assert_close(together.pixels[k], gradient * pixels.detach(), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(together.pixels, vlm_relevance(model, inputs, positions, SETTINGS).pixels)
    with pytest.raises(ValueError, match="method must be one of"):
        vlm_relevance(model, inputs, positions, method="occlusion")


@pytest.mark.parametrize("family", sorted(TINY_VLMS))
def test_attnlrp_mode_through_the_attention_scores(family):
    """Mode "attnlrp" (AttnLRP's softmax rule, relevance also through the queries and keys): finite, all words at
    once equal one at a time, and not the constant mode's result (the scores now get relevance)."""
    model, inputs, _ = tiny_vlm(family, seed=11)
    length = sequence_ids(inputs).shape[1]
    positions = torch.arange(length - 2, length)
    attnlrp = LRPSettings(eps=1e-12, mode="attnlrp")
    together = vlm_relevance(model, inputs, positions, attnlrp)
    assert bool(torch.isfinite(together.pixels).all()) and bool(torch.isfinite(together.tokens).all())
    alone = vlm_relevance(model, inputs, positions[1:], attnlrp)
    torch.testing.assert_close(together.pixels[1], alone.pixels[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(together.tokens[1], alone.tokens[0], rtol=1e-10, atol=1e-13)
    assert not torch.allclose(together.tokens, vlm_relevance(model, inputs, positions, SETTINGS).tokens)
