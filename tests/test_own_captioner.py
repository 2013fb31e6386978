"""A captioner of a user's own: the README's example runs with every method; a small LSTM captioner of plain torch
layers is explained by every method (LRP through the generic path, conservative); a captioner missing a piece of
the contract gets an error naming it; the transformer decodes with the shared greedy and beam search; registries
list what a user's module registers, in the CLI's help."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import capxai.explain as explain
from capxai.explain.forward import teacher_force
from capxai.models import Captioner, SceneCNN, TransformerCaptioner, beam_search, greedy
from capxai.models.contract import check_captioner
from helpers import assert_matches

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- own-captioner:start -->\n```python\n(.*?)```\n<!-- own-captioner:end -->", text, re.S)
    assert block, "README: the own-captioner example (between its markers) is missing"
    return block.group(1)


def test_readme_own_captioner_example_runs_with_every_method():
    done = subprocess.run([sys.executable, "-c", readme_example()], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert sorted(lines) == sorted(explain.METHODS.names())
    assert all(shape.startswith("(2, ") and shape.endswith(", 96, 96)") for shape in lines.values()), lines


class Tiny(Captioner):
    """The issue's new user: an LSTM captioner of plain torch layers, attention by hand."""

    output_terms = ("context", "h")

    def __init__(self, vocab_size=20, feature_dim=8, hidden=12):
        super().__init__()
        self.vocab_size, self.hidden = vocab_size, hidden  # no feature_dim: optional in the contract
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.regions, self.score = nn.Linear(feature_dim, hidden), nn.Linear(hidden, 1)
        self.lstm = nn.LSTMCell(2 * hidden, hidden)
        self.dropout, self.output = nn.Dropout(0.3), nn.Linear(hidden, vocab_size)

    def init_state(self, features):
        zeros = features.new_zeros(features.shape[0], self.hidden)
        return {"regions": torch.relu(self.regions(features)), "h": zeros, "c": zeros, "context": zeros}

    def step(self, state, words):
        h, c = self.lstm(torch.cat([self.embedding(words), state["context"]], -1), (state["h"], state["c"]))
        alpha = torch.softmax(self.score(torch.tanh(state["regions"] + h.unsqueeze(1))).squeeze(-1), -1)
        context = (alpha.unsqueeze(-1) * state["regions"]).sum(1)
        logits = self.output(self.dropout(context + h))
        return logits, {**state, "h": h, "c": c, "context": context}, {"alpha": alpha, "context": context, "h": h}


def tiny_model():
    torch.manual_seed(0)
    return Tiny().double().eval(), SceneCNN(channels=8).double().eval()


CAPTIONS = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])


@pytest.mark.parametrize("method", ["lrp", "gradcam", "guided-gradcam", "guided-backprop", "gradient-x-input",
                                    "attention"])
def test_a_small_lstm_captioner_of_plain_layers_works_with_every_method(method):
    model, encoder = tiny_model()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    explanation = explain.METHODS[method](model, encoder).explain(images, captions=CAPTIONS)
    maps = explanation.heatmaps()
    assert maps.shape == (2, 4, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0


def test_lrp_of_the_small_captioner_conserves_the_logit():
    model, encoder = tiny_model()
    features = encoder(torch.rand(2, 3, 32, 32, dtype=torch.float64)).detach()
    explanation = explain.LRP(model, eps=1e-9, bias_factor=1.0).explain(features=features, captions=CAPTIONS)
    total = (explanation.feature_relevance.flatten(2).sum(-1) + explanation.word_relevance.sum(-1)
             + explanation.initial_state_relevance)
    assert_matches(total, explanation.logits, rtol=1e-7)


class NoEmbedding(Tiny):
    def __init__(self):
        super().__init__()
        self.words = self.embedding
        del self.embedding

    def step(self, state, words):
        self.embedding = self.words
        try:
            return super().step(state, words)
        finally:
            del self.embedding


class NoAttention(Tiny):
    def step(self, state, words):
        logits, state, trace = super().step(state, words)
        return logits, state, {"h": trace["h"]}


def test_a_captioner_missing_a_piece_gets_an_error_naming_it():
    with pytest.raises(TypeError, match=r"\.embedding"):
        explain.LRP(NoEmbedding())
    model, encoder = NoAttention().double().eval(), SceneCNN(channels=8).double().eval()
    with pytest.raises(ValueError, match="'alpha'.*'attention'"):
        explain.Attention(model, encoder).explain(torch.rand(2, 3, 32, 32, dtype=torch.float64), captions=CAPTIONS)
    with pytest.raises(TypeError, match="output_terms"):
        check_captioner(TransformerCaptioner(20, 8, hidden=8, heads=2), "finetune")
    with pytest.raises(TypeError, match="Captioner subclass"):
        check_captioner(nn.Linear(2, 2))
    assert check_captioner(Tiny(), "finetune") is not None


def test_transformer_decodes_with_the_shared_greedy_and_beam_search():
    torch.manual_seed(1)
    model = TransformerCaptioner(20, 8, hidden=16, layers=2, heads=4).double().eval()
    features = torch.rand(3, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        by_greedy = greedy(model, features, max_length=6)
        by_beam = beam_search(model, features, beam_size=1, max_length=6)
        wide = beam_search(model, features, beam_size=3, max_length=6)
    assert torch.equal(by_greedy.tokens, by_beam.tokens)
    assert wide.tokens.shape[0] == 3 and wide.attention.shape[-1] == 5
    # teacher forcing (rows sorted by length, short ones stopped) == one step at a time
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 4, 9, 2, 0]])
    with torch.no_grad():
        sorted_rows = model(features, captions).logits
        stepwise = teacher_force(model, features, captions).logits
    real = (captions[:, 1:] != 0).unsqueeze(-1)
    assert_matches(sorted_rows * real, stepwise * real, rtol=1e-12)


PLUGIN = '''
import capxai.explain as explain
from capxai.explain import GradientXInput


class ConstantSaliency(GradientXInput):
    method = "constant-saliency"


explain.METHODS.register("constant-saliency", ConstantSaliency, help="a method of a user's package")
'''


def test_a_method_registered_by_a_users_module_appears_in_the_cli(tmp_path):
    (tmp_path / "my_capxai_plugin.py").write_text(PLUGIN)
    environment = {**os.environ, "CAPXAI_PLUGINS": "my_capxai_plugin",
                   "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "capxai", "explain", "--help"], capture_output=True, text=True,
                          env=environment, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    text = " ".join(done.stdout.split())  # argparse wraps the help
    assert "constant-saliency" in text and "a method of a user's package" in text
    missing = subprocess.run([sys.executable, "-m", "capxai", "explain", "--help"], capture_output=True, text=True,
                             env={**environment, "CAPXAI_PLUGINS": "no_such_capxai_plugin"}, timeout=120, cwd=ROOT)
    assert missing.returncode != 0 and "no_such_capxai_plugin" in missing.stderr


def test_explain_knows_no_captioner_but_through_the_contract():
    """capxai.explain names no captioner class but the two whose fused fast paths it registers: the transformer
    (and any user's captioner) is explained through the contract and the generic path alone."""
    named = {}
    for path in sorted((ROOT / "capxai" / "explain").glob("*.py")):
        for name in re.findall(r"\b(\w+Captioner)\b", path.read_text()):
            named.setdefault(name, set()).add(path.name)
    assert set(named) <= {"AdaptiveAttentionCaptioner", "MultiHeadCaptioner"}, named
    assert not re.search(r"transformer", " ".join(p.read_text() for p in (ROOT / "capxai" / "explain").glob("*.py")),
                         re.I)


def test_a_captioner_that_decodes_only_empty_captions_gets_a_clear_error():
    """An untrained captioner whose first word is <pad> for every image used to crash in torch.stack (the README's
    example did once in a clean-clone run: its random weights are now seeded)."""
    captioner, encoder = tiny_model()
    with torch.no_grad():
        captioner.output.bias.fill_(-1e3)
        captioner.output.bias[0] = 1e3  # <pad>
    with pytest.raises(ValueError, match="decoded an empty caption for every image"):
        explain.METHODS["lrp"](captioner, encoder).explain(torch.rand(2, 3, 96, 96, dtype=torch.float64))
    given = explain.METHODS["lrp"](captioner, encoder).explain(torch.rand(2, 3, 96, 96, dtype=torch.float64),
                                                               captions=CAPTIONS)
    assert given.heatmaps().shape[:2] == (2, 4)
