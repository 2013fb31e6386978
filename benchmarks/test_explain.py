"""Explaining all words of B = 32 captions (T = 16 words) of the adaptive-attention captioner, random weights,
float32: (a) "scenes": SceneCNN on 96x96 images, hidden 128 (the demo's model); (b) "vgg16": VGG16 on 224x224
images, hidden 512 (the paper's sizes).

Methods: fused: ``capxai.explain.LRP`` (decoder sweep with the fused ops, all words as targets; encoder fast path).
decoder: the same on the feature grid only (what the decoder costs; the rest of "fused" is the encoder).
per_word_loop: each word alone, as the paper's code does: the decoder by the per-word reference (op references,
one step at a time) and the encoder by Zennit (a hooked forward and backward per word). gradient_x_input: one
batched Gradient x Input pass over all words (``capxai.explain.GradientXInput``: one forward, one backward vmapped
over the words).

The VGG16 case is heavy on a 2-core CPU (the per-word loop runs 16 Zennit passes through VGG16 on 32 images, about
70 TFLOP); ``CAPXAI_BENCH_VGG_BATCH`` sets its batch (default 32) to measure the same ratios on fewer images.
Run: ``make bench`` or ``pytest benchmarks/test_explain.py --benchmark-only``.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

import capxai.explain as explain
from capxai.explain.encoder_lrp import make_composite, zennit_relevance
from capxai.models import AdaptiveAttentionCaptioner, SceneCNN, TorchvisionEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from explain_reference import adaptive_word  # noqa: E402

STEPS, VOCAB = 16, 1000
CASES = {"scenes": dict(batch=32, size=96, hidden=128, attention=64),
         "vgg16": dict(batch=int(os.environ.get("CAPXAI_BENCH_VGG_BATCH", "32")), size=224, hidden=512,
                       attention=512)}
METHODS = ["fused", "decoder", "per_word_loop", "gradient_x_input"]


def _setup(case):
    sizes = CASES[case]
    torch.manual_seed(0)
    if case == "scenes":
        encoder = SceneCNN()
    else:
        with pytest.warns(UserWarning, match="random initialisation"):
            encoder = TorchvisionEncoder("vgg16")
    captioner = AdaptiveAttentionCaptioner(VOCAB, encoder.channels, sizes["hidden"], sizes["attention"])
    encoder.eval(), captioner.eval()
    images = torch.randn(sizes["batch"], 3, sizes["size"], sizes["size"])
    captions = torch.randint(4, VOCAB, (sizes["batch"], STEPS + 1))
    captions[:, 0], captions[:, -1] = 1, 2
    return encoder, captioner, images, captions


def per_word_loop(encoder, captioner, images, captions):
    """Each word alone: the per-word decoder reference, then a Zennit pass through the encoder for that word."""
    composite = make_composite("paper")
    features = encoder(images)
    keep = torch.ones(images.shape[0], dtype=torch.bool)
    pixels = []
    for k in range(captions.shape[1] - 1):
        feature_relevance = adaptive_word(captioner, features, captions, k, keep)[0]
        pixels.append(zennit_relevance(encoder, images, feature_relevance[None], composite)[0])
    return torch.stack(pixels, dim=1)


def _runner(method, encoder, captioner, images, captions):
    if method == "fused":
        return lambda: explain.LRP(captioner, encoder).explain(images, captions=captions).pixel_relevance
    if method == "decoder":
        features = encoder(images)
        return lambda: explain.LRP(captioner).explain(features=features, captions=captions).feature_relevance
    if method == "per_word_loop":
        return lambda: per_word_loop(encoder, captioner, images, captions)
    if method == "gradient_x_input":
        return lambda: explain.GradientXInput(captioner, encoder).explain(images, captions=captions).pixel_relevance
    raise ValueError(method)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_explain_all_words(benchmark, method, case):
    sizes = CASES[case]
    benchmark.group = f"explain {case} adaptive B={sizes['batch']} T={STEPS} {sizes['size']}px H={sizes['hidden']}"
    encoder, captioner, images, captions = _setup(case)
    with torch.no_grad():
        run = _runner(method, encoder, captioner, images, captions)
    rounds = 1 if case == "vgg16" else 3
    result = benchmark.pedantic(run, rounds=rounds, warmup_rounds=0 if case == "vgg16" else 1)
    assert result.shape[:2] == (sizes["batch"], STEPS)


def test_per_word_loop_equals_lrp():
    """The per-word comparator computes what LRP computes, so the timings compare like with like."""
    encoder, captioner, images, captions = _setup("scenes")
    images, captions = images[:2, :, :48, :48], captions[:2, :4]
    with torch.no_grad():
        expected = explain.LRP(captioner, encoder).explain(images, captions=captions).pixel_relevance
        actual = per_word_loop(encoder, captioner, images, captions)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


CUDA = [pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("method", ["fused", "gradient_x_input"])
def test_explain_all_words_gpu(benchmark, method, device):
    """The explanations issue's GPU benchmark: all words of B = 32 captions (fewer if
    CAPXAI_BENCH_VGG_BATCH says so), VGG16 on 224x224, LRP (fused ops, encoder fast path) against one batched
    Gradient x Input pass, float32."""
    encoder, captioner, images, captions = _setup("vgg16")
    encoder, captioner = encoder.to(device), captioner.to(device)
    images, captions = images[:32].to(device), captions[:32].to(device)
    benchmark.group = f"explain vgg16 adaptive {device} B={images.shape[0]} T={STEPS} 224px H=512"
    with torch.no_grad():
        run = _runner(method, encoder, captioner, images, captions)

    def synchronized():
        result = run()
        torch.cuda.synchronize()
        return result
    result = benchmark.pedantic(synchronized, rounds=3, warmup_rounds=1)
    assert result.shape[:2] == (images.shape[0], STEPS) and torch.isfinite(result).all()
