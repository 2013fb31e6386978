"""LRP of every word of a VLM's caption against one batched Gradient x Input pass (issue 38's target: LRP at most
1.5x), at SmolVLM-256M's sizes with random weights (nothing can be downloaded): an Idefics3 model with a SigLIP tower
of 12 layers at width 768 (patches of 16 px) and a 30-layer SmolLM2-135M-sized LLaMA (width 576, 9 heads, 3 key-value
heads, 49,280 words), one 384 px image (24 x 24 patches, pixel-shuffled 4 x 4 into 36 image tokens), a 5-token
prompt and a 20-word caption, float32, eager attention for both (torch has no vmap batching rule for the CPU flash
attention's backward, which would loop Gradient x Input per word).

Both go through ``capxai.explain.vlm_lrp.vlm_relevance``, the same vmapped backward over the 20 words to the pixels
and the text, once with the rules (LRP) and once without (Gradient x Input). The terminal summary prints
``gradient-x-input`` relative to ``lrp``. Run: ``pytest benchmarks/test_vlm.py --benchmark-only``.
"""
import pytest
import torch

from capxai.explain.vlm_lrp import vlm_relevance

transformers = pytest.importorskip("transformers")

IMAGE, PROMPT, CAPTION, IMAGE_TOKEN = 384, 5, 20, 49279


def _smolvlm_sized():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=IMAGE, patch_size=16)
    text = dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=4, image_token_id=IMAGE_TOKEN)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_tokens = (IMAGE // 16) ** 2 // 16
    ids = torch.cat([torch.tensor([1]), torch.full((image_tokens,), IMAGE_TOKEN), torch.randint(3, 49000, (PROMPT,)),
                     torch.randint(3, 49000, (CAPTION,))])[None]
    return model, dict(input_ids=ids, pixel_values=torch.rand(1, 1, 3, IMAGE, IMAGE))


@pytest.mark.parametrize("method", ["lrp", "gradient-x-input"])
def test_vlm_every_caption_word(benchmark, method):
    benchmark.group = f"SmolVLM-256M-sized Idefics3, {IMAGE}px, {CAPTION} caption words to pixels and text"
    model, inputs = _smolvlm_sized()
    length = inputs["input_ids"].shape[1]
    positions = torch.arange(length - CAPTION, length)
    result = benchmark.pedantic(lambda: vlm_relevance(model, inputs, positions, method=method), rounds=2,
                                warmup_rounds=0)
    assert result.pixels.shape == (CAPTION, 1, 1, 3, IMAGE, IMAGE) and bool(torch.isfinite(result.pixels).all())
