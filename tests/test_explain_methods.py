"""The gradient methods and attention (batched over all words) against Captum for each word and image taken alone;
the Explanation type; bad input; a model from load_trained used directly."""
import warnings

import pytest
import torch
from captum.attr import GuidedBackprop, GuidedGradCam, InputXGradient, LayerAttribution, LayerGradCam
from torch import nn

import capxai.explain as explain
from capxai.explain.forward import teacher_force
from capxai.explain.gradients import last_conv
from capxai.train import load_trained
from helpers import assert_matches, make_captioner, make_captions, make_encoder

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require:UserWarning",
                                        "ignore:Setting backward hooks on ReLU:UserWarning")


class WordLogits(nn.Module):
    """Captum's view of a captioner: images -> the logits of the caption's words ``[B, T]`` (target = word)."""

    def __init__(self, encoder, captioner, captions):
        super().__init__()
        self.encoder, self.captioner, self.captions = encoder, captioner, captions

    def forward(self, images):
        forward = teacher_force(self.captioner, self.encoder(images), self.captions)
        return forward.word_logits(self.captions[:, 1:])


@pytest.fixture(params=["adaptive", "multihead"])
def setup(request):
    model, encoder = make_captioner(request.param), make_encoder()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    return model, encoder, images, make_captions(batch=2)


def _each_word(explanation):
    for b in range(explanation.tokens.shape[0]):
        for t in range(int(explanation.lengths[b])):
            yield b, t


def test_gradcam_equals_captum(setup):
    model, encoder, images, captions = setup
    explanation = explain.GradCAM(model, encoder).explain(images, captions=captions)
    for b, t in _each_word(explanation):
        captum = LayerGradCam(WordLogits(encoder, model, captions[b:b + 1]), last_conv(encoder))
        layer_map = captum.attribute(images[b:b + 1], target=t, relu_attributions=True)
        expected = LayerAttribution.interpolate(layer_map, images.shape[-2:], "bilinear")[0, 0]
        assert_matches(explanation.pixel_map[b, t], expected)
    assert explanation.heatmaps().shape == (2, captions.shape[1] - 1, 32, 32)


def test_guided_backprop_and_guided_gradcam_equal_captum(setup):
    model, encoder, images, captions = setup
    guided = explain.GuidedBackprop(model, encoder).explain(images, captions=captions)
    guided_cam = explain.GuidedGradCAM(model, encoder).explain(images, captions=captions)
    for b, t in _each_word(guided):
        forward = WordLogits(encoder, model, captions[b:b + 1])
        expected = GuidedBackprop(forward).attribute(images[b:b + 1], target=t)[0]
        assert_matches(guided.pixel_relevance[b, t], expected)
        expected = GuidedGradCam(forward, last_conv(encoder)).attribute(images[b:b + 1], target=t)[0]
        assert_matches(guided_cam.pixel_relevance[b, t], expected)
    assert guided.pixel_relevance.abs().sum() > 0 and guided_cam.pixel_relevance.abs().sum() > 0


def test_gradient_x_input_equals_captum_and_autograd(setup):
    model, encoder, images, captions = setup
    explanation = explain.GradientXInput(model, encoder).explain(images, captions=captions)
    features = encoder(images).detach()
    for b, t in _each_word(explanation):
        expected = InputXGradient(WordLogits(encoder, model, captions[b:b + 1])).attribute(images[b:b + 1],
                                                                                            target=t)[0]
        assert_matches(explanation.pixel_relevance[b, t], expected)
        grid = features[b:b + 1].clone().requires_grad_(True)
        forward = teacher_force(model, grid, captions[b:b + 1])
        logit = forward.word_logits(captions[b:b + 1, 1:])[0, t]
        gradients = torch.autograd.grad(logit, [grid] + forward.embeddings)
        assert_matches(explanation.feature_relevance[b, t], (gradients[0] * grid)[0].detach())
        words = torch.stack([(g * e).sum() for g, e in zip(gradients[1:], forward.embeddings)]).detach()
        assert_matches(explanation.word_relevance[b, t], words)
    assert bool((explanation.word_relevance.triu(1) == 0).all())


def test_attention_explainer(setup):
    model, encoder, images, captions = setup
    explanation = explain.Attention(model, encoder).explain(images, captions=captions)
    mask = explanation.mask
    sums = explanation.attention.sum(-1)
    if isinstance(model, explain.explainers.MultiHeadCaptioner):
        assert explanation.attention_heads.shape[2] == model.heads
        torch.testing.assert_close(explanation.attention, explanation.attention_heads.mean(2))
    else:  # alpha sums to 1 over the regions; beta is the sentinel's share
        assert explanation.beta.shape == mask.shape
    torch.testing.assert_close(sums[mask], torch.ones_like(sums[mask]))
    assert bool((sums[~mask] == 0).all())
    assert explanation.heatmaps().shape == (2, captions.shape[1] - 1, 32, 32)
    grid = explanation.attention[0, 0].reshape(explanation.grid_size)
    assert explanation.pixel_map[0, 0].argmax() // 32 // (32 // grid.shape[0]) == grid.argmax() // grid.shape[1]


def test_explanation_save_load_and_helpers(tmp_path):
    model, encoder = make_captioner("adaptive"), make_encoder()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    explanation = explain.LRP(model, encoder).explain(images, captions=make_captions(batch=2))
    path = explanation.save(tmp_path / "explanation.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explanation.json", "explanation.pt"]
    loaded = explain.Explanation.load(path)
    for name in ("tokens", "pixel_relevance", "feature_relevance", "word_relevance", "attention", "beta"):
        assert torch.equal(getattr(loaded, name), getattr(explanation, name))
    assert loaded.method == "lrp" and loaded.settings["composite"] == "paper" and loaded.grid_size == [4, 4]
    normalised = loaded.normalised_word_relevance()
    assert torch.allclose(normalised.abs().amax(-1)[loaded.mask], torch.ones(int(loaded.mask.sum()),
                                                                             dtype=torch.float64))
    assert loaded.heatmaps().shape == (2, 6, 32, 32)
    assert loaded.select([1]).tokens.shape == (1, 6)
    (tmp_path / "broken.pt").write_bytes(b"not a tensor file")
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(ValueError, match="not a capxai explanation"):
        explain.Explanation.load(tmp_path / "broken.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        explain.Explanation.load(tmp_path / "missing.pt")


def test_bad_input_gets_clear_errors():
    model, encoder = make_captioner("adaptive"), make_encoder()
    lrp = explain.LRP(model, encoder, image_size=32)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    captions = make_captions(batch=2)
    cases = [
        (dict(images=torch.randn(2, 3, 40, 40, dtype=torch.float64)), ValueError, "trained on 32x32"),
        (dict(images=torch.randn(2, 1, 32, 32, dtype=torch.float64)), ValueError, r"\[B, 3, H, W\]"),
        (dict(images=images, features=torch.zeros(2, 16, 24)), ValueError, "exactly one of images and features"),
        (dict(features=torch.zeros(2, 16, 7, dtype=torch.float64)), ValueError, r"\[B, regions, 24\]"),
        (dict(images=images, captions=torch.tensor([[1, 0, 0], [1, 5, 2]])), ValueError, "empty"),
        (dict(images=images, captions=torch.tensor([[5, 6, 2], [1, 5, 2]])), ValueError, "<start>"),
        (dict(images=images, captions=torch.tensor([[1, 99, 2], [1, 5, 2]])), ValueError, r"in \[0, 30\)"),
        (dict(images=images, captions=captions, max_length=3), ValueError, "more than max_length"),
        (dict(images=images, captions=["a caption", "another"]), ValueError, "need the vocabulary"),
        (dict(images=images, captions=["one"]), ValueError, "1 captions for 2 images"),
        (dict(images=images * float("nan")), ValueError, "NaN"),
    ]
    for kwargs, error, message in cases:
        images_arg = kwargs.pop("images", None)
        with pytest.raises(error, match=message):
            lrp.explain(images_arg, **kwargs)
    with pytest.raises(TypeError, match="expected a capxai.models.Captioner"):
        explain.LRP(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="attnlrp"):
        explain.LRP(model, attention_mode="attnlrp")
    with pytest.raises(ValueError, match="head must be None"):
        explain.LRP(make_captioner("multihead"), head=4)
    with pytest.raises(ValueError, match="composite must be one of"):
        explain.LRP(model, composite="nonsense")
    with pytest.raises(ValueError, match="eps must be"):
        explain.LRP(model, eps=-1.0)
    with pytest.raises(ValueError, match="needs images"):
        explain.GuidedBackprop(model, encoder).explain(features=encoder(images).detach(), captions=captions)
    with pytest.raises(ValueError, match="images need an encoder"):
        explain.LRP(model).explain(images, captions=captions)


def test_load_trained_model_is_explained_directly(tiny_trained):
    checkpoint, data = tiny_trained
    model, vocabulary, config = load_trained(checkpoint)
    images = torch.randn(2, 3, config.image_size, config.image_size)
    with pytest.raises(TypeError, match="load_trained"):
        explain.LRP(load_trained(checkpoint))
    decoded = explain.LRP(model, vocabulary=vocabulary).explain(images, beam_size=2, max_length=5)
    assert decoded.tokens.shape[0] == 2 and decoded.pixel_relevance.shape[-2:] == (96, 96)
    assert len(decoded.words[0]) == int(decoded.lengths[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        given = explain.GradCAM(model, vocabulary=vocabulary).explain(images, captions=["a red ball", "a zebra"])
    assert any("zebra" in str(w.message) for w in caught)
    assert given.words[1] == ["a", "<unk>", "<end>"] and given.pixel_map.shape == (2, 4, 96, 96)
    with pytest.raises(ValueError, match="trained on 96x96"):
        explain.LRP(model).explain(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="holds no word"):
        explain.LRP(model, vocabulary=vocabulary).explain(images, captions=["a ball", "  ,  "])


def test_the_gradient_family_shares_its_passes_and_equals_each_method(setup):
    """explain_gradient_family (what evaluate runs when all three methods are asked for) == each explainer alone."""
    model, encoder, images, captions = setup
    explainers = {method: explain.METHODS[method](model, encoder) for method in explain.GRADIENT_FAMILY}
    shared = explain.explain_gradient_family(explainers, images, captions)
    for method, explainer in explainers.items():
        alone = explainer.explain(images, captions=captions)
        assert shared[method].method == method and shared[method].settings == alone.settings
        for name in ("pixel_map", "pixel_relevance", "logits", "probabilities", "tokens"):
            mine, theirs = getattr(shared[method], name), getattr(alone, name)
            assert (mine is None) == (theirs is None), (method, name)
            if mine is not None:
                assert torch.equal(mine, theirs), (method, name)
    other_layer = explain.GradCAM(model, encoder, layer=[m for m in encoder.modules() if isinstance(m, nn.Conv2d)][0])
    with pytest.raises(ValueError, match="one encoder and Grad-CAM layer"):
        explain.explain_gradient_family({**explainers, "gradcam": other_layer}, images, captions)
