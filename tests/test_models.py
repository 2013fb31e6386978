"""Captioners: shapes, cached activations equal a plain recomputation, decoding (beam 1 == greedy), encoders."""
import pytest
import torch

from capxai.models import (AdaptiveAttentionCaptioner, MultiHeadCaptioner, SceneCNN, TorchvisionEncoder,
                           beam_search, greedy)

VOCAB = 23


def _models():
    torch.manual_seed(0)
    return [AdaptiveAttentionCaptioner(VOCAB, 12, hidden=16, attention_dim=8).eval(),
            MultiHeadCaptioner(VOCAB, 12, hidden=16, heads=4).eval()]


@pytest.mark.parametrize("model", _models(), ids=["adaptive", "multihead"])
def test_teacher_forcing_shapes_and_trace_equal_stepwise_recomputation(model):
    features = torch.randn(3, 10, 12)
    captions = torch.randint(3, VOCAB, (3, 7))
    captions[:, 0] = 1
    trace = model(features, captions)
    assert trace.logits.shape == (3, 6, VOCAB)
    state = model.init_state(features)
    for t in range(6):
        logits, state, step = model.step(state, captions[:, t])
        torch.testing.assert_close(trace.logits[:, t], logits)
        for name, value in step.items():
            torch.testing.assert_close(trace.activations[name][:, t], value)
    weights = trace.activations.get("alpha", trace.activations.get("attention"))
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("model", _models(), ids=["adaptive", "multihead"])
def test_padded_rows_equal_their_own_run_and_stop_at_their_end(model):
    features = torch.randn(4, 10, 12)
    lengths = [7, 3, 5, 2]  # <start> w .. <end>, unsorted so the model must reorder and restore
    captions = torch.zeros(4, 7, dtype=torch.long)
    for row, length in enumerate(lengths):
        captions[row, :length] = torch.randint(3, VOCAB, (length,))
        captions[row, 0], captions[row, length - 1] = 1, 2
    trace = model(features, captions)
    assert trace.logits.shape == (4, 6, VOCAB)
    for row, length in enumerate(lengths):
        alone = model(features[row:row + 1], captions[row:row + 1, :length])
        torch.testing.assert_close(trace.logits[row, :length - 1], alone.logits[0])
        assert not trace.logits[row, length - 1:].any()
        for name, value in alone.activations.items():
            torch.testing.assert_close(trace.activations[name][row, :length - 1], value[0])
            assert not trace.activations[name][row, length - 1:].any()


def test_adaptive_context_mixes_sentinel_and_regions():
    model = _models()[0]
    features = torch.randn(2, 10, 12)
    captions = torch.tensor([[1, 5, 6], [1, 7, 2]])
    trace = model(features, captions)
    regions = model.init_state(features)["regions"]
    act = trace.activations
    expected = act["beta"][..., None] * act["sentinel"] + (1 - act["beta"][..., None]) * torch.einsum(
        "btk,bkh->bth", act["alpha"], regions)
    torch.testing.assert_close(act["context"], expected)
    torch.testing.assert_close(act["sentinel"], act["sentinel_gate"] * torch.tanh(act["c1"]))


@pytest.mark.parametrize("model", _models(), ids=["adaptive", "multihead"])
def test_beam_one_is_greedy_and_beams_are_valid(model):
    features = torch.randn(4, 10, 12)
    greedy_result = greedy(model, features, max_length=8)
    beam_one = beam_search(model, features, beam_size=1, max_length=8)
    assert torch.equal(greedy_result.tokens, beam_one.tokens)
    torch.testing.assert_close(greedy_result.log_probs, beam_one.log_probs)
    # greedy really takes the argmax at every step
    state, words = model.init_state(features), torch.ones(4, dtype=torch.long)
    logits, _, _ = model.step(state, words)
    assert torch.equal(greedy_result.tokens[:, 0], logits.argmax(-1))
    beam = beam_search(model, features, beam_size=3, max_length=8)
    assert beam.tokens.shape[0] == 4 and beam.tokens.shape[1] <= 8
    assert beam.attention.shape[:2] == beam.tokens.shape
    # beam 3 finds a hypothesis at least as likely as the greedy one (no length penalty)
    assert bool((beam.log_probs.sum(-1) >= greedy_result.log_probs.sum(-1) - 1e-5).all())
    for row in beam.tokens.tolist():  # nothing but <pad> after <end>
        if 2 in row:
            assert all(token == 0 for token in row[row.index(2) + 1:])


def test_bad_input_is_named():
    model = _models()[0]
    with pytest.raises(ValueError, match=r"features must be \[B, regions, C\]"):
        model(torch.randn(3, 12), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="captions must be"):
        model(torch.randn(3, 10, 12), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="caption indices must be in"):
        model(torch.randn(3, 10, 12), torch.full((3, 4), VOCAB))
    with pytest.raises(ValueError, match="divisible by heads"):
        MultiHeadCaptioner(VOCAB, 12, hidden=10, heads=4)
    with pytest.raises(ValueError, match="beam_size and max_length"):
        beam_search(model, torch.randn(1, 10, 12), beam_size=0)


def test_encoders(tmp_path):
    grid = SceneCNN(channels=32)(torch.randn(2, 3, 96, 96))
    assert grid.shape == (2, 144, 32)
    with pytest.warns(UserWarning, match="random initialisation"):
        vgg = TorchvisionEncoder("vgg16")
    assert vgg(torch.randn(1, 3, 224, 224)).shape == (1, 196, 512)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TorchvisionEncoder("resnet101", weights=str(tmp_path / "none.pth"))
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a vgg16 state_dict"):
        TorchvisionEncoder("vgg16", weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="'vgg16' or 'resnet101'"):
        TorchvisionEncoder("alexnet")
