"""The generic LRP on a Hugging Face captioner (ViT + GPT-2, ``capxai.models.hf``) against one batched Gradient x
Input pass (issue 26's target: LRP at most 1.5x): every word of B = 32 captions of T = 12 words, explained to the
pixels of 96 px images (12 x 12 patches of 8 px + the class token), width 64, 2 layers of 2 heads each side, float32,
random weights.

Both explain the same thing (every word's logit to the pixels, all words at once): LRP by one vmapped backward
through the decoder (the generic path, docs/LRP_RULES.md) and one through the ViT; Gradient x Input by one batched
backward through both. The terminal summary prints ``gradient_x_input`` relative to ``lrp``: the inverse is LRP's
cost in Gradient x Input passes. Run: ``pytest benchmarks/test_hf_captioner.py --benchmark-only``.
"""
import pytest
import torch

import capxai.explain as explain
from capxai.models import hf

BATCH, STEPS, VOCAB, IMAGE = 32, 12, 1000, 96


def _setup():
    torch.manual_seed(0)
    captioner, encoder = hf.split(hf.vit_gpt2(VOCAB, image_size=IMAGE, width=64, layers=2, heads=2,
                                              max_positions=STEPS + 2))
    images = torch.rand(BATCH, 3, IMAGE, IMAGE)
    captions = torch.randint(4, VOCAB, (BATCH, STEPS + 1))
    captions[:, 0], captions[:, -1] = 1, 2
    return captioner, encoder, images, captions


@pytest.mark.parametrize("method", ["lrp", "gradient_x_input"])
def test_hf_captioner_all_words_to_pixels(benchmark, method):
    benchmark.group = f"HF ViT+GPT-2 all words to pixels B={BATCH} T={STEPS} {IMAGE}px width 64"
    captioner, encoder, images, captions = _setup()
    explainer = (explain.LRP if method == "lrp" else explain.GradientXInput)(captioner, encoder)
    result = benchmark.pedantic(lambda: explainer.explain(images, captions=captions), rounds=3, warmup_rounds=1)
    assert result.pixel_relevance.shape == (BATCH, STEPS, 3, IMAGE, IMAGE)
