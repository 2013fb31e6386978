"""Contrastive targets ("why this word rather than that one"): the start is ``logit_A - logit_B`` (Inseq's contrastive
attribution; for LRP ``+logit_A`` on A's index and ``-logit_B`` on B's). Every method that takes a start is linear in
it, so the contrastive explanation equals the explanation of A minus that of B (``targets=B``) on the same forward:
tested for LRP on both fused paths and the generic path (a Hugging Face captioner) and for Gradient x Input."""
import pytest
import torch

import capxai.explain as explain
from capxai.models import hf
from helpers import make_captioner, make_encoder

IMAGES = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
CAPTIONS = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
FIELDS = ("pixel_relevance", "feature_relevance", "word_relevance")


def _difference_holds(explainer, images, captions, contrast):
    together = explainer.explain(images, captions=captions, contrast=contrast)
    first = explainer.explain(images, captions=captions)
    second = explainer.explain(images, captions=captions, targets=contrast)
    checked = 0
    for name in FIELDS:
        if getattr(together, name, None) is not None:
            torch.testing.assert_close(getattr(together, name), getattr(first, name) - getattr(second, name))
            checked += 1
    assert checked and torch.equal(together.contrast, torch.full_like(together.tokens, contrast))
    assert together.pixel_relevance.abs().sum() > 0


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
@pytest.mark.parametrize("path", ["fused", "generic"])
def test_lrp_contrast_is_the_difference_of_the_two_words(kind, path):
    explainer = explain.LRP(make_captioner(kind), make_encoder(), path=path, composite="epsilon_plus_flat")
    _difference_holds(explainer, IMAGES, CAPTIONS, contrast=11)


def test_gradient_x_input_contrast_is_the_difference():
    explainer = explain.GradientXInput(make_captioner("adaptive"), make_encoder())
    _difference_holds(explainer, IMAGES, CAPTIONS, contrast=11)


@pytest.mark.parametrize("method", ["GuidedBackprop", "GradCAM", "GuidedGradCAM"])
def test_nonlinear_methods_take_a_contrast(method):
    """Guided Backprop clamps the backward signal and Grad-CAM applies a ReLU: not linear in the start, so only
    that the contrast changes the map (and stays finite)."""
    explainer = getattr(explain, method)(make_captioner("adaptive"), make_encoder())
    plain = explainer.explain(IMAGES, captions=CAPTIONS).heatmaps()
    contrasted = explainer.explain(IMAGES, captions=CAPTIONS, contrast=11).heatmaps()
    assert torch.isfinite(contrasted).all() and (plain - contrasted).abs().max() > 0.1 * plain.abs().max() > 0


def test_contrast_on_a_hugging_face_captioner():
    torch.manual_seed(0)
    model = hf.vit_gpt2(vocab_size=30, image_size=32, width=32, max_positions=16).double()
    captioner, encoder = hf.split(model)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _difference_holds(explain.LRP(captioner, encoder), images, CAPTIONS, contrast=11)


def test_a_word_against_itself_explains_nothing():
    explainer = explain.LRP(make_captioner("adaptive"), make_encoder())
    same = explainer.explain(IMAGES, captions=CAPTIONS, contrast=CAPTIONS[:, 1:].clone())
    assert same.pixel_relevance.abs().max() == 0 and same.feature_relevance.abs().max() == 0


def test_bad_contrast_is_named():
    explainer = explain.LRP(make_captioner("adaptive"), make_encoder())
    with pytest.raises(ValueError, match=r"contrast ids must be in \[0, 30\)"):
        explainer.explain(IMAGES, captions=CAPTIONS, contrast=30)
    with pytest.raises(ValueError, match=r"contrast must be \[B, T\] = \[2, 4\] word ids"):
        explainer.explain(IMAGES, captions=CAPTIONS, contrast=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="contrast='dog' is a word: pass vocabulary="):
        explainer.explain(IMAGES, captions=CAPTIONS, contrast="dog")
    with pytest.raises(ValueError, match="it explains no logit, so targets= and contrast= do not apply"):
        explain.Attention(make_captioner("adaptive"), make_encoder()).explain(IMAGES, captions=CAPTIONS, contrast=3)


def test_bad_targets_are_named():
    explainer = explain.LRP(make_captioner("adaptive"), make_encoder())
    with pytest.raises(TypeError, match="targets must be a word, a word id or a \\[B, T\\] tensor of ids, got float"):
        explainer.explain(IMAGES, captions=CAPTIONS, targets=3.0)
    with pytest.raises(ValueError, match=r"targets must be \[B, T\] = \[2, 4\] word ids \(long\), got \[2, 4\] "
                                         r"torch.float32"):
        explainer.explain(IMAGES, captions=CAPTIONS, targets=torch.zeros(2, 4))


def test_runner_up_contrast_is_the_models_next_choice():
    """``contrast="<runner-up>"``: at each step the most likely word other than the explained one, from the
    teacher-forced logits (computed here by hand), and the explanation equals passing those ids."""
    captioner, encoder = make_captioner("adaptive"), make_encoder()
    explainer = explain.LRP(captioner, encoder)
    runner = explainer.explain(IMAGES, captions=CAPTIONS, contrast=explain.RUNNER_UP)
    with torch.no_grad():
        logits = explain.forward.teacher_force(captioner, encoder(IMAGES), CAPTIONS).logits
    expected = logits.scatter(-1, CAPTIONS[:, 1:].unsqueeze(-1), float("-inf")).argmax(-1)
    second = logits.topk(2, dim=-1).indices
    chose_the_word = second[..., 0] == CAPTIONS[:, 1:]
    assert torch.equal(expected[chose_the_word], second[..., 1][chose_the_word])  # its second choice there
    assert torch.equal(runner.contrast, expected) and not (runner.contrast == CAPTIONS[:, 1:]).any()
    by_ids = explainer.explain(IMAGES, captions=CAPTIONS, contrast=expected)
    torch.testing.assert_close(runner.pixel_relevance, by_ids.pixel_relevance)
