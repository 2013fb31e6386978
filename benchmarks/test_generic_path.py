"""The generic LRP path against the fused fast path, decoder only (features given, all words of every caption as
targets), for the two built-in captioners at the demo's sizes: B = 32 captions of T = 16 words over the SceneCNN's
6x6 grid of 256 channels, hidden 128, float32, random weights, constant attention.

fused: ``capxai.explain.LRP(path="fused")``: the registered sweep over the fused ops (relevance of all K words at once
through each op). generic: ``LRP(path="generic")``: one autograd backward through the captioner's own forward inside
``capxai.lrp()``, vmapped over the K words (docs/LRP_RULES.md, "The generic path"). The transformer captioner (which
has only the generic path) is timed beside them for scale, in its own group.

Both paths compute the same numbers (``tests/test_generic_lrp.py``, float64 at rtol 1e-9); this measures what the
generality costs. Run: ``make bench`` or ``pytest benchmarks/test_generic_path.py --benchmark-only``.
"""
import pytest
import torch

import capxai.explain as explain
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner, TransformerCaptioner

BATCH, STEPS, VOCAB, REGIONS, CHANNELS, HIDDEN = 32, 16, 1000, 36, 256, 128
CAPTIONERS = {"adaptive": lambda: AdaptiveAttentionCaptioner(VOCAB, CHANNELS, HIDDEN, 64),
              "multihead": lambda: MultiHeadCaptioner(VOCAB, CHANNELS, HIDDEN, heads=8),
              "transformer": lambda: TransformerCaptioner(VOCAB, CHANNELS, hidden=96, layers=2, heads=4)}
CASES = [("adaptive", "fused"), ("adaptive", "generic"), ("multihead", "fused"), ("multihead", "generic"),
         ("transformer", "generic")]


def _setup(kind):
    torch.manual_seed(0)
    captioner = CAPTIONERS[kind]().eval()
    features = torch.randn(BATCH, REGIONS, CHANNELS).relu()
    captions = torch.randint(4, VOCAB, (BATCH, STEPS + 1))
    captions[:, 0], captions[:, -1] = 1, 2
    return captioner, features, captions


@pytest.mark.parametrize("kind, path", CASES, ids=[f"{path}-{kind}" for kind, path in CASES])  # method first: conftest
def test_decoder_lrp_all_words(benchmark, kind, path):
    benchmark.group = f"decoder LRP {kind} B={BATCH} T={STEPS} regions={REGIONS} H={HIDDEN}"
    captioner, features, captions = _setup(kind)
    explainer = explain.LRP(captioner, path=path)
    result = benchmark.pedantic(lambda: explainer.explain(features=features, captions=captions), rounds=5,
                                warmup_rounds=1)
    assert result.feature_relevance.shape[:2] == (BATCH, STEPS)


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_paths_agree_at_benchmark_size(kind):
    """The two timed paths compute the same relevance at this size too (float32), so the ratio compares like with
    like."""
    captioner, features, captions = _setup(kind)
    fused = explain.LRP(captioner, path="fused").explain(features=features, captions=captions)
    generic = explain.LRP(captioner, path="generic").explain(features=features, captions=captions)
    scale = fused.feature_relevance.abs().max().item()
    torch.testing.assert_close(generic.feature_relevance, fused.feature_relevance, rtol=1e-3, atol=1e-4 * scale)
