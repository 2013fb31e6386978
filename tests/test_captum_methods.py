"""Integrated Gradients and occlusion (Captum's) for every captioner, every word in one Captum call: each equals its
definition computed by hand on the captioner's own forward (occlusion: the logit's drop with a window hidden;
Integrated Gradients: Captum on one word alone, and completeness), the contrast is the difference of the two words,
and both are in the registry the command line and the evaluation read."""
import pytest
import torch

import capxai.explain as explain
from capxai.explain.forward import teacher_force
from helpers import make_captioner, make_encoder

IMAGES = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
CAPTIONS = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])


def _word_logits(captioner, encoder, images, captions=CAPTIONS):
    with torch.no_grad():
        return teacher_force(captioner, encoder(images), captions).logits.gather(2, captions[:, 1:, None])[..., 0]


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_occlusion_is_the_logits_drop_with_each_window_hidden(kind):
    captioner, encoder = make_captioner(kind), make_encoder()
    explanation = explain.Occlusion(captioner, encoder, window=32).explain(IMAGES, captions=CAPTIONS)
    assert explanation.pixel_relevance.shape == (2, 4, 3, 96, 96)
    whole = _word_logits(captioner, encoder, IMAGES)
    for row, column in ((0, 0), (1, 2)):
        hidden = IMAGES.clone()
        hidden[:, :, 32 * row:32 * row + 32, 32 * column:32 * column + 32] = 0.0
        drop = whole - _word_logits(captioner, encoder, hidden)  # [B, T]
        drop = drop * (torch.arange(4) < explanation.lengths[:, None])
        torch.testing.assert_close(explanation.pixel_relevance[:, :, 0, 32 * row + 5, 32 * column + 7], drop)
    assert (explanation.pixel_relevance[1, 3] == 0).all()  # after the second caption's end


def test_integrated_gradients_equals_captum_on_one_word_and_is_complete():
    from captum.attr import IntegratedGradients

    captioner, encoder = make_captioner("adaptive"), make_encoder()
    explanation = explain.IntegratedGradients(captioner, encoder, steps=16).explain(IMAGES, captions=CAPTIONS)
    b, t = 1, 1
    def word(images):
        captions = CAPTIONS[b:b + 1].expand(images.shape[0], -1)
        return teacher_force(captioner, encoder(images), captions).logits[:, t, CAPTIONS[b, t + 1]]

    alone = IntegratedGradients(word)
    reference = alone.attribute(IMAGES[b:b + 1], baselines=0.0, n_steps=16)
    torch.testing.assert_close(explanation.pixel_relevance[b, t], reference[0])
    # completeness: the attributions sum to the logit at the image minus at the baseline (up to the quadrature)
    gap = _word_logits(captioner, encoder, IMAGES) - _word_logits(captioner, encoder, torch.zeros_like(IMAGES))
    real = torch.arange(4) < explanation.lengths[:, None]
    torch.testing.assert_close(explanation.pixel_relevance.sum((2, 3, 4))[real], gap[real], rtol=2e-2, atol=2e-2)
    assert (explanation.pixel_relevance[1, 3] == 0).all()


@pytest.mark.parametrize("method", ["integrated-gradients", "occlusion"])
def test_the_contrast_is_the_difference_of_the_two_words(method):
    settings = {"steps": 4} if method == "integrated-gradients" else {"window": 32}
    explainer = explain.METHODS[method](make_captioner("multihead"), make_encoder(), **settings)
    together = explainer.explain(IMAGES, captions=CAPTIONS, contrast=11)
    first = explainer.explain(IMAGES, captions=CAPTIONS)
    second = explainer.explain(IMAGES, captions=CAPTIONS, targets=11)
    torch.testing.assert_close(together.pixel_relevance, first.pixel_relevance - second.pixel_relevance)
    assert together.pixel_relevance.abs().sum() > 0


def test_both_are_registered_and_refuse_bad_settings():
    assert {"integrated-gradients", "occlusion"} <= set(explain.methods_of("all"))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        explain.IntegratedGradients(make_captioner("adaptive"), make_encoder(), steps=0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        explain.Occlusion(make_captioner("adaptive"), make_encoder(), window=0)
    with pytest.raises(ValueError, match="needs images"):
        explain.Occlusion(make_captioner("adaptive"), make_encoder()).explain(
            features=make_encoder()(IMAGES).detach(), captions=CAPTIONS)
