"""LRP of whole captions (capxai.explain.LRP): against a slow per-word reference built from the op references,
conservation end to end, all words at once == one at a time, the encoder fast path == Zennit, the Gradient x Input
identity, and none of the paper code's bugs (docs/LRP_RULES.md)."""
import pytest
import torch
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon, Pass
from zennit.types import Activation, Convolution

import capxai.explain as explain
from capxai.explain.decoder_lrp import Rules
from capxai.explain.lrp_paths import decoder_relevance
from capxai.explain.encoder_lrp import ExactMergeBatchNorm, fast_relevance, plain_layers, zennit_relevance
from capxai.explain.forward import teacher_force
from capxai.models import TorchvisionEncoder
from explain_reference import adaptive_word, multihead_word
from helpers import CHANNELS, assert_matches, features_of, make_captioner, make_captions, make_encoder

CONFIGS = [("adaptive", "constant", None), ("multihead", "constant", None), ("multihead", "attnlrp", None),
           ("multihead", "constant", 1)]


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
@pytest.mark.parametrize("kind,mode,head", CONFIGS, ids=["adaptive", "multihead", "multihead-attnlrp", "head1"])
def test_decoder_equals_per_word_reference(kind, mode, head, bias_factor):
    model, features, captions = make_captioner(kind), features_of(), make_captions()
    explanation = explain.LRP(model, bias_factor=bias_factor, attention_mode=mode, head=head).explain(
        features=features, captions=captions)
    steps = captions.shape[1] - 1
    for k in range(steps):
        keep = explanation.mask[:, k]
        with torch.no_grad():
            if kind == "adaptive":
                expected = adaptive_word(model, features, captions, k, keep, bias_factor=bias_factor)
            else:
                expected = multihead_word(model, features, captions, k, keep, bias_factor=bias_factor, mode=mode,
                                          head=head)
        assert_matches(explanation.feature_relevance[:, k], expected[0])
        assert_matches(explanation.word_relevance[:, k, :k + 1], expected[1])
        assert bool((explanation.word_relevance[:, k, k + 1:] == 0).all())  # nothing above the diagonal
        assert_matches(explanation.initial_state_relevance[:, k], expected[2])
    assert bool((explanation.feature_relevance[0, 4:] == 0).all())  # padding carries nothing


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_conservation_end_to_end(kind):
    """bias_factor=1: feature grid + words + initial states == the explained logit; with the paper preset the
    pixels hold what the feature grid held (up to Zennit's 1e-6 stabiliser and units with no positive input)."""
    model, encoder = make_captioner(kind), make_encoder()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    explanation = explain.LRP(model, encoder, bias_factor=1.0).explain(images, captions=make_captions())
    total = (explanation.feature_relevance.sum((-2, -1)) + explanation.word_relevance.sum(-1)
             + explanation.initial_state_relevance)
    torch.testing.assert_close(total, explanation.logits, rtol=1e-5, atol=1e-5 * explanation.logits.abs().max())
    pixels = explanation.pixel_relevance.sum((-3, -2, -1))
    features = explanation.feature_relevance.sum((-2, -1))
    torch.testing.assert_close(pixels, features, rtol=1e-4, atol=1e-4 * features.abs().max())


@pytest.mark.parametrize("kind,mode,head", CONFIGS, ids=["adaptive", "multihead", "multihead-attnlrp", "head1"])
def test_all_words_at_once_equal_each_word_alone(kind, mode, head):
    model, encoder, captions = make_captioner(kind), make_encoder(), make_captions()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    explanation = explain.LRP(model, encoder, attention_mode=mode, head=head).explain(images, captions=captions)
    features = encoder(images)
    forward = teacher_force(model, features, captions)
    tokens = captions[:, 1:]
    layers = plain_layers(encoder)
    for k in range(tokens.shape[1]):
        alone = torch.zeros_like(explanation.mask)
        alone[:, k] = explanation.mask[:, k]
        with torch.no_grad():
            relevance = decoder_relevance(model, features, forward, captions, alone, Rules(), mode, head)
        assert_matches(explanation.feature_relevance[:, k], relevance.features[k])
        assert_matches(explanation.word_relevance[:, k], relevance.words[k])
        pixels = fast_relevance(layers, images, relevance.features[k:k + 1], explanation.grid_size, "paper")[0]
        assert_matches(explanation.pixel_relevance[:, k], pixels)
        # no other target received anything
        others = [j for j in range(tokens.shape[1]) if j != k]
        assert bool((relevance.features[others] == 0).all())


def _vgg_like(dtype):
    torch.manual_seed(6)
    with pytest.warns(UserWarning, match="random initialisation"):
        encoder = TorchvisionEncoder("vgg16")
    encoder.body = encoder.body[:10]  # conv-relu-conv-relu-pool twice, then conv-relu-conv-relu: VGG's shape
    encoder.channels = 128
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.uniform_(-0.05, 0.05)
    return encoder.to(dtype).eval()


@pytest.mark.parametrize("composite", ["paper", "epsilon_plus_flat"])
@pytest.mark.parametrize("encoder_kind", ["scene", "vgg"])
def test_encoder_fast_path_equals_zennit(composite, encoder_kind):
    dtype = torch.float64
    encoder = make_encoder(dtype) if encoder_kind == "scene" else _vgg_like(dtype)
    images = torch.randn(2, 3, 32, 36, dtype=dtype, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        grid = encoder.body(images) if encoder_kind == "vgg" else encoder.features(images)
    regions = grid.shape[2] * grid.shape[3]
    relevance = torch.randn(3, 2, regions, grid.shape[1], dtype=dtype, generator=torch.Generator().manual_seed(8))
    fast = fast_relevance(plain_layers(encoder), images, relevance, grid.shape[2:], composite)
    general = zennit_relevance(encoder, images, relevance, explain.make_composite(composite))
    assert_matches(fast, general)
    assert fast.shape == (3, 2, 3, 32, 36)


def test_encoder_fast_path_chunks_targets(monkeypatch):
    """Targets go through in chunks when their relevance would be large; chunking changes nothing."""
    import capxai.explain.encoder_lrp as encoder_lrp

    encoder = make_encoder()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    relevance = torch.randn(5, 2, 16, CHANNELS, dtype=torch.float64)
    whole = fast_relevance(plain_layers(encoder), images, relevance, (4, 4), "paper")
    monkeypatch.setattr(encoder_lrp, "FAST_PATH_BYTES", 1)
    assert_matches(fast_relevance(plain_layers(encoder), images, relevance, (4, 4), "paper"), whole)


def _linearised(kind):
    """A captioner whose words depend on the feature grid only through ReLUs, linear maps and attention with
    constant weights (docs/LRP_RULES.md property 4): all biases zero; for the adaptive model the attention scores, the
    global feature and LSTM-2's input weights are zero; for the multi-head model the query and the mean feature."""
    model = make_captioner(kind)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "bias" in name:
                parameter.zero_()
        zeroed = (["attention.score.weight", "global_proj.weight", "lstm2.weight_ih"] if kind == "adaptive"
                  else ["query.weight", "mean_proj.weight"])
        for name in zeroed:
            model.get_parameter(name).zero_()
    return model


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_gradient_x_input_identity(kind):
    """eps -> 0, zero biases, constant attention weights: LRP == Gradient x Input, on the feature grid (decoder)
    and on the pixels (encoder of conv, ReLU and max pooling, explained with the epsilon rule)."""
    model = _linearised(kind)
    encoder = make_encoder()
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.zero_()
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_()
                module.bias.zero_()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    captions = make_captions(batch=2)
    epsilon = LayerMapComposite([(Activation, Pass()), (Convolution, Epsilon(epsilon=1e-12))],
                                canonizers=[ExactMergeBatchNorm()])
    lrp = explain.LRP(model, encoder, composite=epsilon, eps=1e-12).explain(images, captions=captions)
    gradient = explain.GradientXInput(model, encoder).explain(images, captions=captions)
    assert lrp.feature_relevance.abs().max() > 0
    assert_matches(lrp.feature_relevance, gradient.feature_relevance, rtol=1e-7)
    assert_matches(lrp.pixel_relevance, gradient.pixel_relevance, rtol=1e-7)


# -- the paper code's bugs (docs/LRP_RULES.md, "LSTM cell") must not come back -------------------------------------
@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_lstm_rule_uses_b_ih_plus_b_hh(kind):
    """The paper's explainer built the pre-activation with ``b_ih + b_ih``. With b_hh large and b_ih zero, that
    denominator is far off the forward's, so conservation (bias_factor=1) fails unless b_ih + b_hh is used."""
    model = make_captioner(kind)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias_ih"):
                parameter.zero_()
            if name.endswith("bias_hh"):
                parameter.uniform_(0.5, 1.0)
    explanation = explain.LRP(model, bias_factor=1.0).explain(features=features_of(), captions=make_captions())
    total = (explanation.feature_relevance.sum((-2, -1)) + explanation.word_relevance.sum(-1)
             + explanation.initial_state_relevance)
    torch.testing.assert_close(total, explanation.logits, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_carried_relevance_is_added_not_overwritten(kind):
    """The paper's code overwrote relevance carried to h_{t-1} / c_{t-1} instead of adding to it. The first word's
    embedding reaches the last word along several paths; every path's share must arrive: conservation at the last
    word of a long caption (bias_factor=1) and equality with the reference, which adds."""
    model = make_captioner(kind)
    captions = make_captions(batch=1, length=9)
    explanation = explain.LRP(model, bias_factor=1.0).explain(features=features_of(batch=1), captions=captions)
    last = captions.shape[1] - 2
    total = (explanation.feature_relevance[:, last].sum() + explanation.word_relevance[:, last].sum()
             + explanation.initial_state_relevance[:, last].sum())
    torch.testing.assert_close(total, explanation.logits[0, last], rtol=1e-9, atol=1e-12)
    assert explanation.word_relevance[0, last, 0].abs() > 0  # <start> still receives relevance 8 steps back


def test_sentinel_gate_uses_previous_h1():
    """The paper's fine-tuning forward computed the sentinel gate from h1_t; training (and capxai) uses h1_{t-1}."""
    model = make_captioner("adaptive")
    forward = teacher_force(model, features_of(), make_captions())
    previous_h1 = torch.zeros_like(forward.steps[0]["h1"])
    for trace in forward.steps:
        expected = torch.sigmoid(model.sentinel_input(trace["x1"]) + model.sentinel_hidden(previous_h1))
        torch.testing.assert_close(trace["sentinel_gate"], expected)
        previous_h1 = trace["h1"]


def test_pixel_relevance_of_a_word_is_not_a_running_sum():
    """The paper's pixel map for word t was the sum over words 0..t (the image gradient was never reset)."""
    model, encoder = make_captioner("adaptive"), make_encoder()
    images = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    captions = make_captions(batch=1)
    explanation = explain.LRP(model, encoder).explain(images, captions=captions)
    prefix = explain.LRP(model, encoder).explain(images, captions=captions[:, :3])  # words 1 and 2 only
    assert_matches(explanation.pixel_relevance[:, :2], prefix.pixel_relevance)
    running = explanation.pixel_relevance[:, :2].sum(1)
    assert (running - explanation.pixel_relevance[:, 1]).abs().max() > 1e-3 * running.abs().max()


def test_float32_matches_float64():
    model64, encoder64 = make_captioner("adaptive"), make_encoder()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    captions = make_captions(batch=2)
    expected = explain.LRP(model64, encoder64).explain(images, captions=captions)
    actual = explain.LRP(model64.float(), encoder64.float()).explain(images.float(), captions=captions)
    assert_matches(actual.feature_relevance.double(), expected.feature_relevance, rtol=1e-3)
    assert_matches(actual.pixel_relevance.double(), expected.pixel_relevance, rtol=1e-3)
