"""capxai.nn: same forward and parameters as torch's modules; inside capxai.lrp() their backward is relevance, and
one autograd.grad through a model (with Zennit rules on its Linear layers) equals the explicit op-by-op result."""
import pytest
import torch
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon

import capxai
from helpers import assert_matches
from capxai.ops import lrp_additive_attention, lrp_linear, lrp_lstm, lrp_sdpa

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("num_layers,batch_first", [(1, False), (2, True), (3, False)])
def test_lstm_matches_torch_inside_and_outside_lrp(num_layers, batch_first):
    ours = capxai.nn.LSTM(5, 7, num_layers=num_layers, batch_first=batch_first).to(DTYPE)
    theirs = torch.nn.LSTM(5, 7, num_layers=num_layers, batch_first=batch_first).to(DTYPE)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 5, dtype=DTYPE)
    hx = (torch.randn(num_layers, 3 if batch_first else 4, 7, dtype=DTYPE),) * 2
    expected = theirs(x, hx)
    for context in (capxai.lrp(), torch.enable_grad()):
        with context:
            output, (h_n, c_n) = ours(x, hx)
        torch.testing.assert_close(output, expected[0])
        torch.testing.assert_close(h_n, expected[1][0])
        torch.testing.assert_close(c_n, expected[1][1])
    with capxai.lrp():
        unbatched = ours(x[0] if not batch_first else x[:, 0])
    assert unbatched[0].dim() == 2


def test_lstm_cell_matches_torch_and_its_backward_is_the_op():
    ours = capxai.nn.LSTMCell(5, 6).to(DTYPE)
    theirs = torch.nn.LSTMCell(5, 6).to(DTYPE)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, dtype=DTYPE, requires_grad=True)
    h, c = torch.randn(3, 6, dtype=DTYPE), torch.randn(3, 6, dtype=DTYPE)
    with capxai.lrp(eps=0.05, bias_factor=1.0):
        h_new, c_new = ours(x, (h, c))
        relevance_h = torch.randn_like(h_new)
        (relevance_x,) = torch.autograd.grad(h_new, x, relevance_h)
    torch.testing.assert_close((h_new, c_new), theirs(x, (h, c)))
    expected = capxai.ops.lrp_lstm_cell(x.detach(), h, c, ours.weight_ih, ours.weight_hh, ours.bias_ih, ours.bias_hh,
                                        relevance_h, eps=0.05, bias_factor=1.0)[0]
    assert_matches(relevance_x, expected.detach())


def test_lstm_unsupported_configurations_say_so():
    with capxai.lrp():
        with pytest.raises(ValueError, match="bidirectional"):
            capxai.nn.LSTM(3, 4, bidirectional=True)(torch.randn(2, 1, 3))


class TinyCaptionHead(torch.nn.Module):
    """Linear -> capxai LSTM -> additive attention over the LSTM outputs -> Linear, the issue's test model."""

    def __init__(self, n_in=6, n_embed=5, hidden=7, n_out=4):
        super().__init__()
        self.embed = torch.nn.Linear(n_in, n_embed)
        self.lstm = capxai.nn.LSTM(n_embed, hidden, batch_first=True)
        self.attention = capxai.nn.AdditiveAttention(hidden, hidden, 8)
        self.classifier = torch.nn.Linear(hidden, n_out)

    def forward(self, x):
        embedded = self.embed(x)
        outputs, (h_n, _) = self.lstm(embedded)
        context, alpha, _ = self.attention(outputs, h_n[-1])
        return self.classifier(context), (embedded, outputs, alpha, context)


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_one_autograd_grad_equals_op_by_op(bias_factor):
    model = TinyCaptionHead().to(DTYPE).eval()
    x = torch.randn(3, 9, 6, dtype=DTYPE, requires_grad=True)
    composite = LayerMapComposite([(torch.nn.Linear, Epsilon(epsilon=0.01))])
    with composite.context(model) as hooked, capxai.lrp(eps=0.01, bias_factor=bias_factor):
        logits, _ = hooked(x)
        start = torch.eye(4, dtype=DTYPE)[logits.argmax(-1)] * logits  # R_logits = onehot(w) * logit_w
        (relevance_pixels,) = torch.autograd.grad(logits, x, grad_outputs=start.detach())

    # The same explanation, op by op: Zennit's Epsilon on the Linears (no bias_factor), capxai's rules on the rest.
    with torch.no_grad():
        logits, (embedded, outputs, alpha, context) = model(x)
        lstm = model.lstm
        relevance_context = lrp_linear(context, model.classifier.weight, model.classifier.bias, start)
        relevance_outputs = lrp_additive_attention(outputs, alpha, relevance_context, bias_factor=bias_factor)
        zeros = torch.zeros(3, 7, dtype=DTYPE)
        relevance_embedded, _, _ = lrp_lstm(embedded.transpose(0, 1), zeros, zeros, lstm.weight_ih_l0,
                                            lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0,
                                            relevance_outputs.transpose(0, 1), bias_factor=bias_factor)
        relevance_x = lrp_linear(x.reshape(-1, 6), model.embed.weight, model.embed.bias,
                                 relevance_embedded.transpose(0, 1).reshape(-1, 5))
    assert_matches(relevance_pixels, relevance_x.reshape(3, 9, 6))
    assert relevance_pixels.abs().sum() > 0


def test_additive_attention_with_sentinel_two_stages():
    attention = capxai.nn.AdditiveAttention(6, 5, 4, sentinel=True).to(DTYPE)
    values = torch.randn(2, 7, 6, dtype=DTYPE, requires_grad=True)
    sentinel = torch.randn(2, 6, dtype=DTYPE, requires_grad=True)
    query = torch.randn(2, 5, dtype=DTYPE)
    with capxai.lrp(bias_factor=1.0):
        mixed, alpha, beta = attention(values, query, sentinel)
        relevance = torch.randn_like(mixed)
        relevance_values, relevance_sentinel = torch.autograd.grad(mixed, (values, sentinel), relevance)
    context = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
    torch.testing.assert_close(mixed, beta[:, None] * sentinel + (1 - beta[:, None]) * context)
    stage_one = lrp_additive_attention(torch.stack([sentinel, context], 1).detach(),
                                       torch.stack([beta, 1 - beta], 1).detach(), relevance, bias_factor=1.0)
    assert_matches(relevance_sentinel, stage_one[:, 0])
    assert_matches(relevance_values, lrp_additive_attention(values.detach(), alpha.detach(), stage_one[:, 1],
                                                            bias_factor=1.0))
    torch.testing.assert_close(relevance_values.sum() + relevance_sentinel.sum(), relevance.sum())


@pytest.mark.parametrize("mode", ["constant", "attnlrp"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_matches_torch_and_relevance_is_op_by_op(mode, batch_first):
    ours = capxai.nn.MultiheadAttention(8, 2, batch_first=batch_first).to(DTYPE).eval()
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first).to(DTYPE).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    shape = (3, 4, 8) if batch_first else (4, 3, 8)
    query = torch.randn(*shape, dtype=DTYPE, requires_grad=True)
    memory = torch.randn(3, 5, 8, dtype=DTYPE) if batch_first else torch.randn(5, 3, 8, dtype=DTYPE)
    memory.requires_grad_(True)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -2:] = True
    causal_ish = torch.zeros(4, 5, dtype=torch.bool)
    causal_ish[0, 3] = True
    expected, expected_weights = theirs(query, memory, memory, key_padding_mask=padding, attn_mask=causal_ish)
    with capxai.lrp(mode=mode):
        output, weights = ours(query, memory, memory, key_padding_mask=padding, attn_mask=causal_ish)
        relevance = torch.randn_like(output)
        relevance_query, relevance_memory = torch.autograd.grad(output, (query, memory), relevance)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(weights, expected_weights)

    # op by op: out_proj, SDPA rule, in-projections
    with torch.no_grad():
        q_in = query if not batch_first else query.transpose(0, 1)
        m_in = memory if not batch_first else memory.transpose(0, 1)
        rel = relevance if not batch_first else relevance.transpose(0, 1)
        w_q, w_k, w_v = ours.in_proj_weight.chunk(3)
        b_q, b_k, b_v = ours.in_proj_bias.chunk(3)

        def heads(t):
            return t.reshape(t.shape[0], 3, 2, 4).permute(1, 2, 0, 3)

        q, k, v = heads(q_in @ w_q.T + b_q), heads(m_in @ w_k.T + b_k), heads(m_in @ w_v.T + b_v)
        mask = torch.zeros(3, 2, 4, 5, dtype=DTYPE).masked_fill(causal_ish, float("-inf"))
        mask = mask.masked_fill(padding[:, None, None, :], float("-inf"))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attended = attended.permute(2, 0, 1, 3).reshape(4, 3, 8)
        rel_attended = lrp_linear(attended.reshape(-1, 8), ours.out_proj.weight, ours.out_proj.bias,
                                  rel.reshape(-1, 8)).reshape(4, 3, 2, 4).permute(1, 2, 0, 3)
        result = lrp_sdpa(q, k, v, rel_attended, attn_mask=mask, mode=mode)
        rel_q, rel_k, rel_v = (None, None, result) if mode == "constant" else result

        def merge(t, length):
            return t.permute(2, 0, 1, 3).reshape(length * 3, 8)

        rel_memory = lrp_linear(m_in.reshape(-1, 8), w_v, b_v, merge(rel_v, 5)).reshape(5, 3, 8)
        rel_query = torch.zeros_like(q_in)
        if rel_q is not None:
            rel_memory = rel_memory + lrp_linear(m_in.reshape(-1, 8), w_k, b_k, merge(rel_k, 5)).reshape(5, 3, 8)
            rel_query = lrp_linear(q_in.reshape(-1, 8), w_q, b_q, merge(rel_q, 4)).reshape(4, 3, 8)
    if batch_first:
        rel_memory, rel_query = rel_memory.transpose(0, 1), rel_query.transpose(0, 1)
    assert_matches(relevance_memory, rel_memory)
    assert_matches(relevance_query, rel_query)


def test_lrp_settings_are_validated_and_nest():
    with pytest.raises(ValueError, match="mode must be one of"):
        with capxai.lrp(mode="gradient"):
            pass
    with pytest.raises(ValueError, match="eps must be finite"):
        with capxai.lrp(eps=-1):
            pass
    assert capxai.nn.active_settings() is None
    with capxai.lrp(eps=0.1):
        with capxai.lrp(eps=0.2) as inner:
            assert capxai.nn.active_settings() is inner
        assert capxai.nn.active_settings().eps == 0.1
    assert capxai.nn.active_settings() is None


def test_outside_lrp_modules_are_ordinary_differentiable_modules():
    ours = capxai.nn.LSTM(3, 4).to(DTYPE)
    theirs = torch.nn.LSTM(3, 4).to(DTYPE)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, dtype=DTYPE, requires_grad=True)
    (ours_grad,) = torch.autograd.grad(ours(x)[0].sum(), x)
    (theirs_grad,) = torch.autograd.grad(theirs(x)[0].sum(), x)
    torch.testing.assert_close(ours_grad, theirs_grad)
