"""The generic LRP path (one vmapped autograd backward with capxai.nn.relevance_rules) against the fused fast paths
of the two built-in captioners, which share no code with it above the ops (float64, rtol 1e-9); the transformer
captioner through it: conservation, all words at once == one at a time, LRP == Gradient x Input where the rules
reduce to it; the batching rules that make a vmapped op one call; functions without a rule refused by name."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import capxai.explain as explain
import capxai.nn as cnn
from capxai import ops
from capxai.explain.decoder_lrp import Rules
from capxai.explain.forward import teacher_force
from capxai.explain.lrp_paths import decoder_relevance
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner, SceneCNN, TransformerCaptioner
from helpers import assert_matches

VOCAB, CHANNELS = 30, 12
FIELDS = ("features", "words", "initial_state")


def perturbed(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # every weight and bias away from its initial pattern
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.double().eval()


def captioner(kind, seed=0, **options):
    torch.manual_seed(seed)
    if kind == "adaptive":
        model = AdaptiveAttentionCaptioner(VOCAB, CHANNELS, hidden=16, attention_dim=8)
    elif kind == "multihead":
        model = MultiHeadCaptioner(VOCAB, CHANNELS, hidden=16, heads=4)
    else:
        model = TransformerCaptioner(VOCAB, CHANNELS, hidden=16, layers=2, heads=4, **options)
    return perturbed(model, seed + 100)


def inputs(batch=3, regions=6, seed=3):
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, regions, CHANNELS, generator=generator, dtype=torch.float64)
    captions = torch.randint(4, VOCAB, (batch, 6), generator=generator)
    captions[:, 0], captions[:, -1] = 1, 2
    captions[0, 3], captions[0, 4:] = 2, 0  # a shorter caption, padded
    mask = (captions[:, 1:] != 0)
    return features, captions, mask


def relevance(model, features, captions, mask, path, mode="constant", eps=0.01, bias_factor=0.0):
    with torch.no_grad():
        forward = teacher_force(model, features, captions)
    return decoder_relevance(model, features, forward, captions, mask, Rules(eps, bias_factor), mode, path=path)


@pytest.mark.parametrize("kind,mode", [("adaptive", "constant"), ("multihead", "constant"),
                                       ("multihead", "attnlrp")])
@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_generic_equals_fused_on_the_built_in_captioners(kind, mode, bias_factor):
    model = captioner(kind)
    features, captions, mask = inputs()
    fused = relevance(model, features, captions, mask, "fused", mode, bias_factor=bias_factor)
    generic = relevance(model, features, captions, mask, "generic", mode, bias_factor=bias_factor)
    assert fused.features.shape[0] == captions.shape[1] - 1  # K targets: every word
    for name in FIELDS:
        assert_matches(getattr(generic, name), getattr(fused, name), rtol=1e-9)
    assert fused.features.abs().sum() > 0 and fused.words.abs().sum() > 0


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_explainer_paths_agree_end_to_end(kind):
    """LRP(path="generic") == LRP(path="fused") with images (the encoder's pixels too)."""
    model = captioner(kind)
    torch.manual_seed(4)
    encoder = SceneCNN(channels=CHANNELS).double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    captions = inputs(batch=2)[1]
    fused = explain.LRP(model, encoder, path="fused").explain(images, captions=captions)
    generic = explain.LRP(model, encoder, path="generic").explain(images, captions=captions)
    for name in ("feature_relevance", "word_relevance", "pixel_relevance", "initial_state_relevance"):
        assert_matches(getattr(generic, name), getattr(fused, name), rtol=1e-9)
    assert generic.settings["path"] == "generic"


@pytest.mark.parametrize("mode", ["constant", "attnlrp"])
def test_transformer_conserves_the_logit(mode):
    """bias_factor 1, tiny eps: the fed words, the feature grid and the initial states share the explained logit
    (AttnLRP's softmax rule is not conservative: there only the constant mode's sum is exact)."""
    model = captioner("transformer")
    features, captions, mask = inputs()
    result = relevance(model, features, captions, mask, "generic", mode, eps=1e-9, bias_factor=1.0)
    with torch.no_grad():
        logits = teacher_force(model, features, captions).word_logits(captions[:, 1:]) * mask
    total = result.features.flatten(2).sum(-1) + result.words.sum(-1) + result.initial_state  # [K, B]
    if mode == "constant":
        assert_matches(total.T, logits, rtol=1e-7)
    else:
        assert torch.isfinite(total).all() and total.abs().sum() > 0


def test_transformer_all_words_at_once_equal_each_alone():
    model = captioner("transformer")
    features, captions, mask = inputs()
    together = relevance(model, features, captions, mask, "generic")
    for k in range(mask.shape[1]):
        alone_mask = torch.zeros_like(mask)
        alone_mask[:, k] = mask[:, k]
        alone = relevance(model, features, captions, alone_mask, "generic")
        for name in FIELDS:
            assert_matches(getattr(alone, name)[k], getattr(together, name)[k], rtol=1e-10)


class _RuleConstants(TorchFunctionMode):
    """The gradient with the rules' constants: attention weights and LayerNorm's standard deviation detached."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
            return weights.detach() @ v
        if func is F.layer_norm:
            x, shape = args[0], args[1]
            dims = tuple(range(-len(shape), 0))
            sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + 1e-5)
            y = (x - x.mean(dims, keepdim=True)) / sigma.detach()
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            return y * weight if weight is not None else y
        return func(*args, **kwargs)


def test_transformer_lrp_equals_gradient_x_input_where_the_rules_reduce_to_it():
    """eps -> 0, no biases, ReLU, constant attention: LRP-0 through linear maps, sums and ReLU is Gradient x Input
    of the network whose attention weights and LayerNorm scale are constants."""
    model = captioner("transformer", activation="relu")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or name == "positions":
                parameter.zero_()
    features, captions, mask = inputs()
    result = relevance(model, features, captions, mask, "generic", eps=1e-12)
    grid = features.clone().requires_grad_(True)
    words = []
    hook = model.embedding.register_forward_hook(lambda m, i, o: words.append(o.detach().requires_grad_(True))
                                                 or words[-1])
    with _RuleConstants():
        forward = teacher_force(model, grid, captions)
    hook.remove()
    word_logits = forward.word_logits(captions[:, 1:]) * mask
    for k in range(mask.shape[1]):
        gradients = torch.autograd.grad(word_logits[:, k].sum(), [grid] + words, retain_graph=True,
                                        allow_unused=True, materialize_grads=True)
        assert_matches(result.features[k], gradients[0] * features, rtol=1e-6)
        gxi_words = torch.stack([(g * w).sum(-1) for g, w in zip(gradients[1:], words)], -1)
        assert_matches(result.words[k], gxi_words, rtol=1e-6)


def test_a_vmapped_op_is_one_call_with_the_targets():
    """The batching rules: the backward of a capxai.nn module vmapped over K start relevances calls its op once,
    with K targets, and equals the op called with them directly."""
    calls = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "capxai" in str(func):
                calls.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    layer = torch.nn.Linear(4, 3).double()
    with cnn.lrp(eps=0.01):
        y = cnn.functions.LinearRelevance.apply(x, layer.weight.detach(), layer.bias.detach(), cnn.active_settings())
    start = torch.randn(7, 5, 3, dtype=torch.float64)
    with Count():
        (batched,) = torch.func.vmap(lambda s: torch.autograd.grad(y, x, s, retain_graph=True))(start)
    assert len(calls) == 1
    assert_matches(batched, ops.lrp_linear(x.detach(), layer.weight.detach(), layer.bias.detach(), start))


def test_a_function_without_a_rule_is_refused_by_name():
    class Exponential(AdaptiveAttentionCaptioner):
        def init_state(self, features):
            return super().init_state(torch.exp(features))

    model = perturbed(Exponential(VOCAB, CHANNELS, hidden=8, attention_dim=8), 0)
    features, captions, mask = inputs()
    with pytest.raises(cnn.NoRelevanceRule, match="exp"):
        relevance(model, features, captions, mask, "generic")
    with pytest.raises(ValueError, match="no fused path"):
        explain.LRP(model, path="fused")


def test_the_rules_leave_no_mode_and_no_frozen_parameter_behind():
    model = captioner("transformer")
    features, captions, mask = inputs()
    relevance(model, features, captions, mask, "generic")
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert cnn.active_settings() is None
    x = torch.randn(3, requires_grad=True)
    assert (x * 2).grad_fn is not None and torch.exp(x).grad_fn is not None  # plain autograd again


def test_refusals_of_the_rules_name_what_is_unsupported():
    """Division by a signal, a linear layer or LayerNorm whose parameters carry relevance: refused, not
    differentiated."""
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    with cnn.lrp() as settings, cnn.relevance_rules(settings):
        with pytest.raises(cnn.NoRelevanceRule, match="division by a relevance-carrying tensor"):
            x / (x + 1)
        with pytest.raises(cnn.NoRelevanceRule, match="F.linear with a relevance-carrying weight"):
            F.linear(x, weight)
        with pytest.raises(cnn.NoRelevanceRule, match="layer_norm with relevance-carrying parameters"):
            F.layer_norm(x, (4,), weight[0])
        # the Hugging Face layers' functions (issue 26): GPT-2's Conv1D and a patch embedding with a trained weight,
        # attention with dropout
        with pytest.raises(cnn.NoRelevanceRule, match="torch.addmm with a relevance-carrying weight or bias"):
            torch.addmm(torch.zeros(3, dtype=torch.float64), x, weight.t())
        with pytest.raises(cnn.NoRelevanceRule, match="conv2d with a relevance-carrying weight or bias"):
            F.conv2d(x.view(1, 2, 2, 2), weight[:1, :2].reshape(1, 2, 1, 1))
        q = x.view(1, 1, 2, 4)
        with pytest.raises(cnn.NoRelevanceRule, match="dropout_p > 0 .explain the model in eval mode."):
            F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
        assert (x / 2).requires_grad  # division by a constant passes relevance
    with pytest.raises(RuntimeError, match="inside capxai.lrp"):
        with cnn.relevance_rules():
            pass


def _affine_relevance(handler, function, *arguments, carried, start):
    """Relevance of ``arguments[carried]`` through ``function`` under the rules, with ``handler`` in place of the
    rule the mode has for ``function`` when given."""
    from capxai.nn import function_rules

    saved = function_rules._HANDLERS.get(function)
    if handler is not None:
        function_rules._HANDLERS[function] = handler
    try:
        with cnn.lrp(eps=1e-6) as settings, cnn.relevance_rules(settings):
            output = function(*arguments)
    finally:
        function_rules._HANDLERS[function] = saved
    return output, torch.autograd.grad(output, arguments[carried], grad_outputs=start)[0]


def test_addmm_takes_the_fused_linear_rule_equal_to_the_general_affine_one():
    """GPT-2's ``Conv1D`` (``torch.addmm(bias, x, W)``) goes through ``lrp_linear`` (no recomputed forward): the
    same output and relevance as the general affine rule (``torch.func.vjp`` of the map), and the same refusals;
    an ``addmm`` with ``beta`` still takes the general rule."""
    from capxai.nn import function_rules

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, dtype=torch.float64, generator=generator).requires_grad_()
    weight, bias = torch.randn(8, 6, dtype=torch.float64, generator=generator), torch.randn(6, dtype=torch.float64)
    start = torch.randn(5, 6, dtype=torch.float64, generator=generator)
    fused = _affine_relevance(None, torch.addmm, bias, x, weight, carried=1, start=start)
    general = _affine_relevance(function_rules._affine((1,)), torch.addmm, bias, x, weight, carried=1, start=start)
    assert fused[0].grad_fn is not None and "LinearRelevance" in type(fused[0].grad_fn).__name__
    torch.testing.assert_close(fused[0], general[0], rtol=0, atol=0)
    torch.testing.assert_close(fused[1], general[1], rtol=1e-10, atol=1e-10)
    with cnn.lrp() as settings, cnn.relevance_rules(settings):
        scaled = torch.addmm(bias, x, weight, beta=0.5)
    assert "LinearMapRule" in type(scaled.grad_fn).__name__
