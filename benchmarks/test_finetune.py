"""Cost of LRP-inference fine-tuning against baseline fine-tuning: one cross-entropy fine-tuning step (forward,
backward, Adam) of the captioners, 32 images x 5 captions of 16 words, SceneCNN on 96x96 images, float32, in two
sizes: "scenes" (the demo's: hidden 128, a 64-word vocabulary) and "coco" (the paper's decoder: hidden 512, a
10000-word vocabulary, where the output layer is a large share of the decoder). Issue 11's target: an LRP step
costs at most 1.3x a baseline step (an epoch is steps plus a validation pass that is the same for both).

Where the extra cost is: the LRP weights (the explained word's row of ``W_o`` and the two-term rule: O(H) a word,
without gradient) and a second output-layer forward and backward for the weighted logits (``[N, H] x [H, V]`` three
times), which the method needs by definition. Everything else (encoder, LSTMs, attention) is shared, so the ratio
grows with the vocabulary's share of the step's work.
Run: ``make bench`` or ``pytest benchmarks/test_finetune.py --benchmark-only``; the ratio is
``mean(lrp) / mean(baseline)`` of one run.
"""
import pytest
import torch

from capxai.data.vocabulary import Vocabulary
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner, SceneCNN
from capxai.train.lrp_weights import FinetuneObjective, load_stop_words, stop_word_mask
from capxai.train.trainer import CaptionModel

IMAGES, CAPTIONS_PER_IMAGE, STEPS = 32, 5, 16
SIZES = {"scenes": dict(vocab=64, hidden=128, attention=64), "coco": dict(vocab=10000, hidden=512, attention=512)}
# the vocabulary: the specials, some stop words the scenes use, then content words
STOP = ["<pad>", "<start>", "<end>", "<unk>", "a", "the", "of", "to", "and", "is", "in", "there", "this", "we"]


def _setup(kind, size):
    torch.manual_seed(0)
    sizes = SIZES[size]
    vocab, hidden = sizes["vocab"], sizes["hidden"]
    encoder = SceneCNN()
    if kind == "adaptive":
        captioner = AdaptiveAttentionCaptioner(vocab, encoder.channels, hidden, sizes["attention"], dropout=0.3)
    else:
        captioner = MultiHeadCaptioner(vocab, encoder.channels, hidden, 8, dropout=0.3)
    model = CaptionModel(encoder, captioner, 96).train()
    images = torch.randn(IMAGES, 3, 96, 96)
    captions = torch.randint(4, vocab, (IMAGES * CAPTIONS_PER_IMAGE, STEPS + 1))
    captions[:, 0], captions[:, -1] = 1, 2
    image_index = torch.arange(IMAGES).repeat_interleave(CAPTIONS_PER_IMAGE)
    return model, images, captions, image_index


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
@pytest.mark.parametrize("method", ["baseline", "lrp"])
def test_finetune_step(benchmark, kind, method, size):
    model, images, captions, image_index = _setup(kind, size)
    words = STOP + [f"word{i}" for i in range(SIZES[size]["vocab"] - len(STOP))]
    skipped = stop_word_mask(Vocabulary(words), load_stop_words()) if method == "lrp" else None
    objective = FinetuneObjective(model, skipped)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step():
        optimizer.zero_grad()
        loss = objective(images, captions, image_index)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    benchmark.group = f"finetune step {kind} {size}"
    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert loss == loss
    if method == "lrp":  # random weights: most top words are content words, so most steps are explained
        assert objective.take_statistics()["explained_share"] > 0.5
