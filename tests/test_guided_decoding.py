"""Explanation-guided decoding: the visual share of every word against a word-by-word computation from the op
references; beam search with no penalty is plain beam search; a penalty keeps low-share object words out; the
reported log-probabilities stay the model's; bad input is named."""
import pytest
import torch

from capxai.explain.guided_decoding import (VisualShareGuidance, label_share, object_word_mask, visual_and_language,
                                           visual_share)
from capxai.evaluate import ObjectWords
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner, TransformerCaptioner, beam_search
from capxai.ops.reference import lrp_linear_reference, stabilize

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "the", "ball", "box", "red", "star", "of", "ring"]
OBJECTS = ObjectWords({"ball": ["balls"], "box": [], "star": [], "ring": []})


def _captioner(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "adaptive":
        return AdaptiveAttentionCaptioner(len(WORDS), 6, hidden=8, attention_dim=5, dropout=0.0).double().eval()
    return MultiHeadCaptioner(len(WORDS), 6, hidden=8, heads=2, dropout=0.0).double().eval()


def _reference_share(output, visual, language, eps):
    """Word by word: the epsilon rule through W_o from a one-hot start on the word's logit, then over the two terms
    of the sum; the share of the summed relevance on the visual term."""
    shares = torch.zeros(visual.shape[0], output.out_features, dtype=visual.dtype)
    for row in range(visual.shape[0]):
        total = visual[row] + language[row]
        logits = output(total)
        for word in range(output.out_features):
            start = torch.zeros_like(logits)
            start[word] = logits[word]
            relevance = lrp_linear_reference(total[None], output.weight, output.bias, start[None], eps)[0]
            on_visual = (visual[row] / stabilize(total, eps) * relevance).sum()
            on_language = (language[row] / stabilize(total, eps) * relevance).sum()
            both = on_visual + on_language
            shares[row, word] = (on_visual / both).clamp(0, 1) if both > 0 else 0.0
    return shares


@pytest.mark.parametrize("eps", [0.01, 1e-6])
def test_visual_share_equals_the_word_by_word_rule(eps):
    torch.manual_seed(1)
    output = torch.nn.Linear(8, len(WORDS)).double()
    visual, language = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = _reference_share(output, visual, language, eps)
        actual = visual_share(output, visual, language, eps)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    assert ((actual >= 0) & (actual <= 1)).all()


def test_object_word_mask_reads_the_object_words():
    assert object_word_mask(WORDS, OBJECTS).tolist() == [w in ("ball", "box", "star", "ring") for w in WORDS]


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_no_penalty_is_plain_beam_search(kind):
    captioner = _captioner(kind)
    features = torch.randn(4, 9, 6, dtype=torch.float64).relu()
    guidance = VisualShareGuidance(captioner, object_word_mask(WORDS, OBJECTS), threshold=0.5, penalty=0.0)
    plain = beam_search(captioner, features, 3, 6)
    guided = beam_search(captioner, features, 3, 6, guidance=guidance)
    assert torch.equal(plain.tokens, guided.tokens)
    torch.testing.assert_close(plain.log_probs, guided.log_probs)


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_penalty_keeps_low_share_object_words_out_and_reports_the_models_log_probs(kind):
    captioner = _captioner(kind, seed=3)
    # make object words the likeliest so that plain decoding says them
    with torch.no_grad():
        captioner.output.bias[object_word_mask(WORDS, OBJECTS)] += 4.0
    features = torch.randn(6, 9, 6, dtype=torch.float64).relu()
    objects = object_word_mask(WORDS, OBJECTS)
    plain = beam_search(captioner, features, 1, 5)
    assert objects[plain.tokens].any(), "the test needs captions that name objects"
    recorded = []

    class Recording(VisualShareGuidance):
        def __call__(self, log_probs, trace):
            recorded.append(visual_share(self.captioner.output, *visual_and_language(self.captioner, trace),
                                         self.eps))
            return super().__call__(log_probs, trace)

    # greedy (one beam), so that row r of a step's trace is caption r
    guided = beam_search(captioner, features, 1, 5, guidance=Recording(captioner, objects, threshold=1.0,
                                                                        penalty=1e6))
    for row in range(guided.tokens.shape[0]):
        for step, word in enumerate(guided.tokens[row].tolist()):
            if objects[word]:  # only an object word whose share reached the threshold is left unpenalised
                assert recorded[step][row, word] >= 1.0
    assert objects[guided.tokens].sum() < objects[plain.tokens].sum()
    # log_probs are the model's own: replay the caption step by step
    state = captioner.init_state(features)
    words = torch.full((features.shape[0],), 1, dtype=torch.long)
    for step in range(guided.tokens.shape[1]):
        logits, state, _ = captioner.step(state, words)
        words = guided.tokens[:, step]
        own = torch.log_softmax(logits, -1).gather(1, words[:, None])[:, 0]
        alive = guided.log_probs[:, step] != 0
        torch.testing.assert_close(guided.log_probs[alive, step], own[alive].float())


def test_bad_input_is_named():
    captioner = _captioner("adaptive")
    objects = object_word_mask(WORDS, OBJECTS)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        VisualShareGuidance(captioner, objects, threshold=0.0)
    with pytest.raises(ValueError, match="penalty must be >= 0, got -1"):
        VisualShareGuidance(captioner, objects, penalty=-1.0)
    with pytest.raises(ValueError, match=r"objects must be a \[12\] bool mask"):
        VisualShareGuidance(captioner, objects[:5])
    with pytest.raises(TypeError, match="TransformerCaptioner has no output_terms"):
        VisualShareGuidance(TransformerCaptioner(len(WORDS), 6, hidden=8, layers=1, heads=2), objects)
    with pytest.raises(ValueError, match="visual and language must be"):
        visual_share(captioner.output, torch.zeros(2, 8), torch.zeros(3, 8))


def test_label_share_is_the_all_words_share_at_the_label():
    torch.manual_seed(2)
    output = torch.nn.Linear(8, len(WORDS)).double()
    visual, language = torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(3, 4, 8, dtype=torch.float64)
    labels = torch.randint(0, len(WORDS), (3, 4))
    with torch.no_grad():
        every = visual_share(output, visual, language)
        picked = label_share(output, visual, language, labels)
    torch.testing.assert_close(picked, every.gather(-1, labels.unsqueeze(-1)).squeeze(-1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"labels must be \(3, 4\)"):
        label_share(output, visual, language, labels[:, :2])


def test_the_sentinels_share_of_the_adaptive_context_is_language():
    """Adaptive attention: the visual term is (1 - beta) times the attended regions (not c_hat, which mixes in the
    sentinel); the two terms still sum to the output layer's input. The multi-head captioner's terms are its own."""
    captioner = _captioner("adaptive")
    features = torch.randn(3, 9, 6, dtype=torch.float64).relu()
    state = captioner.init_state(features)
    _, _, trace = captioner.step(state, torch.ones(3, dtype=torch.long))
    visual, language = visual_and_language(captioner, trace)
    attended = (trace["alpha"].unsqueeze(-1) * state["regions"]).sum(1)
    torch.testing.assert_close(visual, (1 - trace["beta"]).unsqueeze(-1) * attended)
    torch.testing.assert_close(visual + language, trace["context"] + trace["h2"])
    multihead = _captioner("multihead")
    _, _, trace = multihead.step(multihead.init_state(features), torch.ones(3, dtype=torch.long))
    visual, language = visual_and_language(multihead, trace)
    assert visual is trace[multihead.output_terms[0]] and language is trace[multihead.output_terms[1]]


def test_evaluate_with_guided_decoding(grounded_model, tmp_path, capsys, monkeypatch):
    """``capxai evaluate --guided-decoding``: the stamp says how the captions were decoded; a penalty that makes every
    object word unaffordable (threshold 1) leaves fewer object mentions than plain beam search; the explained
    captions are decoded with the same guidance; bad settings are named."""
    import json
    import re

    from capxai import cli
    from capxai.evaluate import explanations as evaluate_explanations

    decoded_with = []
    original = evaluate_explanations.beam_search

    def recording(*arguments, **options):
        decoded_with.append(options.get("guidance"))
        return original(*arguments, **options)

    monkeypatch.setattr(evaluate_explanations, "beam_search", recording)
    checkpoint, data = grounded_model
    common = ["evaluate", "--checkpoint", str(checkpoint), "--split-file", str(data / "dataset_scenes.json"),
              "--image-root", str(data), "--beam-size", "2", "--device", "cpu"]
    assert cli.main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "guided"), "--guided-decoding", "1:50", "--explanations",
                              "attention", "--explain-limit", "20", "--no-ablation"]) == 0, capsys.readouterr().err
    plain, guided = (json.loads((tmp_path / name / "hallucination_test_beam2.json").read_text())
                     for name in ("plain", "guided"))
    assert guided["run"]["guided_decoding"] == {"threshold": 1.0, "penalty": 50.0}
    assert "guided_decoding" not in plain["run"]
    assert plain["chair"]["overall"]["mentions"] > 0
    assert guided["chair"]["overall"]["mentions"] < plain["chair"]["overall"]["mentions"]
    assert decoded_with and all(isinstance(g, VisualShareGuidance) and g.penalty == 50.0 for g in decoded_with)
    for bad, message in (("0:1", r"must be in \(0, 1\]"), ("0.5", "THRESHOLD:PENALTY"), ("0.5:-1", "must be in")):
        capsys.readouterr()
        assert cli.main(common + ["--out", str(tmp_path / "bad"), "--guided-decoding", bad]) == 2
        assert re.search(message, capsys.readouterr().err)


def test_evaluate_chooses_guided_decoding_on_the_validation_split(grounded_model, tmp_path, capsys, monkeypatch):
    """``--guided-decoding auto``: every candidate and plain beam search caption the validation split only, the
    choice (or the reason for none) is recorded; choosing on the split being evaluated is refused."""
    import json

    from capxai import cli
    from capxai.evaluate import validation_choice

    scored = []
    original = validation_choice.score_captions

    def recording(model, dataset, *arguments, **options):
        scored.append(dataset.split)
        return original(model, dataset, *arguments, **options)

    monkeypatch.setattr(validation_choice, "score_captions", recording)
    checkpoint, data = grounded_model
    common = ["evaluate", "--checkpoint", str(checkpoint), "--split-file", str(data / "dataset_scenes.json"),
              "--image-root", str(data), "--beam-size", "2", "--device", "cpu"]
    code = cli.main(common + ["--out", str(tmp_path / "auto"), "--guided-decoding", "auto"])
    output = capsys.readouterr()
    assert scored == ["val"] * (1 + len(validation_choice.GUIDED_CANDIDATES))
    if code == 0:
        run = json.loads((tmp_path / "auto" / "hallucination_test_beam2.json").read_text())["run"]
        choice = run["guided_decoding"]["choice"]
        assert choice["split"] == "val" and len(choice["candidates"]) == len(validation_choice.GUIDED_CANDIDATES)
        assert [run["guided_decoding"]["threshold"], run["guided_decoding"]["penalty"]] == choice["chosen"]
    else:
        assert code == 2 and "guided decoding does not help this model" in output.err
    assert cli.main(common + ["--split", "val", "--out", str(tmp_path / "bad"), "--guided-decoding", "auto"]) == 2
    assert "chooses its setting on the validation split" in capsys.readouterr().err
