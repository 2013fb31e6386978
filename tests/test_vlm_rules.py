"""The generic path's rules for the blocks of today's vision-language models (issue 38, docs/LRP_RULES.md Part 3):
RMSNorm (and QK-norm) by AttnLRP's identity rule on the normalisation, the gated MLP (SwiGLU) by the identity rule on
SiLU and the uniform rule on the product, rotary position embeddings as a linear map of constants, Conv3d patch
embeddings by the epsilon rule. Each against Gradient x Input of the same code with the rules in LXT's implicit form
(the normaliser's scale detached, ``x * (silu(x) / x).detach()``, the product of two signals halved), and for
conservation with biases zero, in float64."""
import pytest
import torch
from torch import nn

import capxai
from capxai.nn import NoRelevanceRule, relevance_rules
from helpers import TINY_VLMS, frozen, tiny_vlm, token_leaves

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama as llama  # noqa: E402
from transformers.models.llama.configuration_llama import LlamaConfig  # noqa: E402

EPS = 1e-12
CONFIG = LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2, num_key_value_heads=2,
                     hidden_act="silu", rms_norm_eps=1e-6)


def relevance(forward, x, eps=EPS):
    """LRP of every output of ``forward(x)`` at once (each its own start, R = z) to ``x`` by the generic path. Its
    reference, Gradient x Input with ones as the output gradient: the epsilon rule gives ``x * J^T (R / z)``, and
    ``R / z`` is 1."""
    x = x.detach().clone().requires_grad_()
    with capxai.lrp(eps=eps) as settings, relevance_rules(settings):
        z = forward(x)
    (r,) = torch.autograd.grad(z, x, grad_outputs=z.detach())
    return r, z.detach()


def gradient_x_input(forward, x):
    x = x.detach().clone().requires_grad_()
    z = forward(x)
    (g,) = torch.autograd.grad(z, x, grad_outputs=torch.ones_like(z))
    return x.detach() * g



def rms_norm_reference(norm, x):
    """LlamaRMSNorm with its scale detached (the identity rule in implicit form), in float32 inside as HF's is."""
    inside = x.to(torch.float32)
    scale = torch.rsqrt(inside.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).detach()
    return norm.weight * (inside * scale).to(x.dtype)


# HF's RMSNorm computes in float32 whatever the input's dtype: its relevance is as exact as float32 is
FLOAT32_SUM = dict(rtol=1e-6, atol=0)


def test_rms_norm_is_the_identity_rule_and_conserves():
    torch.manual_seed(0)
    norm = frozen(llama.LlamaRMSNorm(16, eps=1e-6))
    norm.weight.copy_(torch.rand(16, dtype=torch.float64) + 0.5)
    head = frozen(nn.Linear(16, 5, bias=False))
    x = torch.randn(3, 16, dtype=torch.float64)
    r, z = relevance(lambda v: head(norm(v)), x)
    reference = gradient_x_input(lambda v: head(rms_norm_reference(norm, v)), x)
    torch.testing.assert_close(r, reference, rtol=1e-6, atol=1e-9)  # both in float32 inside the norm


def test_rms_norm_in_float64_is_exact():
    """Gemma's form, ``x * rsqrt(mean(x ** 2) + eps) * (1 + w)``, without the float32 upcast: the identity rule
    exactly, and conservation to float64's precision."""
    torch.manual_seed(5)
    weight, head = torch.rand(16, dtype=torch.float64), frozen(nn.Linear(16, 4, bias=False))
    norm = lambda v: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + weight)  # noqa: E731
    held = lambda v: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6).detach() * (1.0 + weight)  # noqa: E731
    x = torch.randn(3, 16, dtype=torch.float64)
    r, z = relevance(lambda v: head(norm(v)), x)
    torch.testing.assert_close(r, gradient_x_input(lambda v: head(held(v)), x), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(r.sum(), z.sum(), rtol=1e-11, atol=0)
    torch.testing.assert_close(r.sum(), z.sum(), **FLOAT32_SUM)  # conserved: no bias, eps 1e-12


def test_qk_norm_on_queries_and_keys():
    """QK-norm (an RMSNorm on q and on k before the scores): the scale of each is constant, the scores a product
    of two signals by the uniform rule, half each."""
    torch.manual_seed(1)
    q_norm, k_norm = frozen(llama.LlamaRMSNorm(8)), frozen(llama.LlamaRMSNorm(8))
    x = torch.randn(4, 8, dtype=torch.float64)
    r, z = relevance(lambda v: (q_norm(v) * k_norm(v)).sum(-1), x)
    torch.testing.assert_close(r.sum(), z.sum(), **FLOAT32_SUM)
    held_q = lambda v: rms_norm_reference(q_norm, v)  # noqa: E731
    held_k = lambda v: rms_norm_reference(k_norm, v)  # noqa: E731
    reference = gradient_x_input(lambda v: 0.5 * (held_q(v) * held_k(v).detach() + held_q(v).detach() * held_k(v))
                                 .sum(-1), x)
    torch.testing.assert_close(r, reference, rtol=1e-6, atol=1e-9)  # float32 inside HF's RMSNorm


def test_gated_mlp_swiglu():
    torch.manual_seed(2)
    mlp = frozen(llama.LlamaMLP(CONFIG))
    x = torch.randn(3, 16, dtype=torch.float64)
    r, z = relevance(mlp, x)
    torch.testing.assert_close(r.sum(), z.sum(), rtol=1e-9, atol=0)  # Linear layers without bias in LLaMA

    def implicit(v):
        gate, up = mlp.gate_proj(v), mlp.up_proj(v)
        activated = gate * (nn.functional.silu(gate) / gate).detach()
        product = 0.5 * (activated * up.detach() + activated.detach() * up)
        return mlp.down_proj(product)

    reference = gradient_x_input(implicit, x)
    torch.testing.assert_close(r, reference, rtol=1e-8, atol=1e-12)


def test_rotary_position_embedding_is_linear_in_the_queries():
    torch.manual_seed(3)
    rotary = llama.LlamaRotaryEmbedding(LlamaConfig(hidden_size=16, num_attention_heads=2)).double()
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    positions = torch.arange(5)[None]
    cos, sin = rotary(q, positions)
    rotate = lambda v: llama.apply_rotary_pos_emb(v, v, cos, sin)[0]  # noqa: E731
    r, z = relevance(rotate, q)
    torch.testing.assert_close(r.sum(), z.sum(), rtol=1e-10, atol=0)
    reference = gradient_x_input(rotate, q)  # a linear map: epsilon -> 0 is Gradient x Input
    torch.testing.assert_close(r, reference, rtol=1e-8, atol=1e-12)


def test_conv3d_patch_embedding_conserves():
    """Qwen2.5-VL's patch embedding: a Conv3d over (frames, height, width) patches, without bias."""
    torch.manual_seed(4)
    patches = frozen(nn.Conv3d(3, 6, kernel_size=(2, 4, 4), stride=(2, 4, 4), bias=False))
    video = torch.randn(1, 3, 2, 8, 8, dtype=torch.float64)
    r, z = relevance(patches, video)
    torch.testing.assert_close(r.sum(), z.sum(), rtol=1e-10, atol=0)
    torch.testing.assert_close(r, gradient_x_input(patches, video), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("misuse", [lambda v: v * v.pow(2), lambda v: v / v.pow(2).mean(-1, keepdim=True),
                                    lambda v: v + torch.square(v), lambda v: v.pow(v)])
def test_a_power_used_other_than_as_a_normaliser_is_refused(misuse):
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(NoRelevanceRule, match="relevance rule"):
        relevance(misuse, x)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_whole_llama_decoder_conserves(attention):
    """A tiny LLaMA (grouped-query attention, RoPE, RMSNorm, SwiGLU; no biases) through the generic path in mode
    "constant": the explained logit is shared by the input embeddings up to float32 (HF's RMSNorm upcast)."""
    from transformers import LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         attn_implementation=attention)
    torch.manual_seed(6)
    model = frozen(LlamaForCausalLM(config))
    embeddings = model.get_input_embeddings()(torch.tensor([[1, 5, 7, 9, 3]]))
    relevances = []
    for word in (0, 1):
        x = embeddings.detach().clone().requires_grad_()
        with capxai.lrp(eps=EPS) as settings, relevance_rules(settings):
            z = model(inputs_embeds=x, use_cache=False).logits[0, -1]
        start = torch.zeros_like(z)
        start[word] = z[word].detach()
        (r,) = torch.autograd.grad(z, x, grad_outputs=start)
        torch.testing.assert_close(r.sum(), z[word].detach(), **FLOAT32_SUM)
        relevances.append(r)
    assert not torch.allclose(relevances[0], relevances[1])  # two words, two explanations


@pytest.mark.parametrize("family", sorted(TINY_VLMS))
def test_a_tiny_vlm_explains_pixels_and_text_and_conserves(family):
    """Each family's whole forward (vision tower, projector or pixel shuffle, the image features placed into the text
    embeddings by ``masked_scatter``, the language model) through the generic path: with biases, position and class
    embeddings zeroed, the explained logit is shared by the pixels and the text embeddings (mode "constant", up to
    float32: HF's RMSNorm); the image placeholder tokens get none (the image features replaced them)."""
    model, inputs, image_token = tiny_vlm(family, seed=7)
    pixels = inputs["pixel_values"].requires_grad_()
    # BLIP-2's Q-Former queries are inputs too (a parameter the model reads): a leaf of their own in the call
    queries = {name: parameter.detach().clone().requires_grad_() for name, parameter in model.named_parameters()
               if name == "query_tokens"}
    with token_leaves(model) as leaves, capxai.lrp(eps=EPS) as settings, relevance_rules(settings):
        z = torch.func.functional_call(model, queries, (), dict(inputs, use_cache=False)).logits[0, -1]
    start = torch.zeros_like(z)
    start[z.argmax()] = z.max().detach()
    # an encoder-decoder (Florence-2) embeds the prompt and the caption apart: two token leaves
    to_pixels, to_text, *to_others = torch.autograd.grad(z, [pixels, *leaves, *queries.values()], grad_outputs=start)
    torch.testing.assert_close(to_pixels.sum() + to_text.sum() + sum(other.sum() for other in to_others),
                               z.max().detach(), **FLOAT32_SUM)
    assert to_pixels.abs().sum() > 0 and bool(torch.isfinite(to_pixels).all())
    placeholders = inputs["input_ids"][0] == image_token
    assert to_text[0, placeholders].abs().sum() == 0 and to_text[0, ~placeholders].abs().sum() > 0
