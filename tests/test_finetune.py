"""LRP-inference fine-tuning and baseline fine-tuning (issue 11): the weights against an independent computation
from the op references, one step against the two-term loss, LRP == baseline when every word is a stop word, SCST's
reward and baseline by hand, resume == uninterrupted, bad input."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from capxai import cli
from capxai.data.vocabulary import Vocabulary
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner
from capxai.ops import lrp_linear
from capxai.train import (CiderReward, FinetuneConfig, FinetuneObjective, feature_weights, finetune,
                          load_stop_words, load_trained, stop_word_mask)
from capxai.models.checkpoint import load_checkpoint, save_checkpoint
from capxai.train.lrp_weights import _explained_output_relevance
from explain_reference import reference_feature_weights
from helpers import free_port, training_batch, training_model
from capxai.train.scst import sample_captions, self_critical_advantage, sequence_log_probs

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "the", "ball", "box", "red", "of"]


def _captioner(kind, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    if kind == "adaptive":
        return AdaptiveAttentionCaptioner(len(WORDS), 6, hidden=8, attention_dim=5, dropout=dropout).double()
    return MultiHeadCaptioner(len(WORDS), 6, hidden=8, heads=2, dropout=dropout).double()


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_weights_equal_the_op_references_and_carry_no_gradient(kind):
    captioner = _captioner(kind)
    vocabulary = Vocabulary(WORDS)
    skipped = stop_word_mask(vocabulary, ["a", "the", "of"])
    assert skipped.tolist() == [True] * 4 + [True, True, False, False, False, True]
    features = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    captions = torch.tensor([[1, 4, 8, 6, 2], [1, 7, 9, 6, 2], [1, 5, 6, 2, 0]])
    trace = captioner(features, captions)
    first, second = (trace.activations[name] for name in captioner.output_terms)
    top = trace.logits.argmax(-1)
    weights_first, weights_second, explained = feature_weights(captioner.output, first, second, trace.logits,
                                                               skipped, eps=0.01)
    expected_first, expected_second = reference_feature_weights(captioner.output, first.detach(), second.detach(),
                                                         trace.logits.detach(), skipped, 0.01)
    torch.testing.assert_close(weights_first, expected_first, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(weights_second, expected_second, rtol=1e-9, atol=1e-12)
    assert not weights_first.requires_grad and not weights_second.requires_grad
    assert (explained == ~skipped[top]).all()
    assert (weights_first.min() >= 0) and (weights_first.max() <= 2)
    # every step skipped -> all ones; every step explained -> weights differ from one somewhere
    everything = torch.ones(len(WORDS), dtype=torch.bool)
    ones_first, ones_second, none = feature_weights(captioner.output, first, second, trace.logits, everything)
    assert (ones_first == 1).all() and (ones_second == 1).all() and not none.any()
    nothing = torch.zeros(len(WORDS), dtype=torch.bool)
    all_first, _, all_explained = feature_weights(captioner.output, first, second, trace.logits, nothing)
    assert all_explained.all() and (all_first != 1).any()


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_one_step_follows_the_two_term_loss(kind):
    """SGD step of FinetuneObjective == the step computed from CE(W_o(m (w_a a + w_b b)) + b) + CE(W_o(m (a + b)) +
    b) with the reference weights as constants, the top words of the logits without dropout, and one dropout mask
    m for both terms (drawn from the same seed here)."""
    class Model(torch.nn.Module):  # encoder + captioner, as CaptionModel
        def __init__(self):
            super().__init__()
            self.encoder, self.captioner = torch.nn.Identity(), _captioner(kind, seed=3, dropout=0.5)

        def forward(self, images, captions, image_index):
            return self.captioner(self.encoder(images).index_select(0, image_index), captions)

    vocabulary = Vocabulary(WORDS)
    skipped = stop_word_mask(vocabulary, ["a", "the"])
    features = torch.randn(2, 4, 6, dtype=torch.float64)
    captions = torch.tensor([[1, 4, 8, 6, 2], [1, 7, 9, 2, 0], [1, 5, 6, 2, 0]])
    image_index = torch.tensor([0, 1, 1])
    model = Model()
    expected = Model()
    expected.load_state_dict(model.state_dict())

    objective = FinetuneObjective(model, skipped)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    torch.manual_seed(7)
    objective(features, captions, image_index).backward()
    optimizer.step()

    captioner = expected.captioner
    captioner.eval()  # the logits whose top words are explained: no dropout
    trace = captioner(features.index_select(0, image_index), captions)
    captioner.train()
    first, second = (trace.activations[name] for name in captioner.output_terms)
    weights_first, weights_second = reference_feature_weights(captioner.output, first.detach(), second.detach(),
                                                       trace.logits.detach(), skipped, 0.01)
    torch.manual_seed(7)
    mask = torch.nn.functional.dropout(torch.ones_like(first), 0.5, training=True)
    assert (mask == 0).any()  # dropout is really on
    targets = captions[:, 1:].reshape(-1)
    weighted = captioner.output(mask * (weights_first * first + weights_second * second))
    plain = captioner.output(mask * (first + second))
    loss = (torch.nn.functional.cross_entropy(weighted.reshape(-1, len(WORDS)), targets, ignore_index=0)
            + torch.nn.functional.cross_entropy(plain.reshape(-1, len(WORDS)), targets, ignore_index=0))
    loss.backward()
    with torch.no_grad():
        for parameter in expected.parameters():
            if parameter.grad is not None:
                parameter -= 0.1 * parameter.grad
    changed = 0
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    start = Model()
    for got, initial in zip(model.parameters(), start.parameters()):
        changed += not torch.equal(got, initial)
    assert changed > 5


def test_output_rule_for_the_explained_word_equals_the_fused_op():
    torch.manual_seed(1)
    output = torch.nn.Linear(7, 11).double()
    total = torch.randn(5, 7, dtype=torch.float64)
    total[0] = 0.0  # a zero logit up to the bias: the sign(0) case of stab
    logits = output(total).detach()
    words = torch.tensor([0, 3, 10, 3, 5])
    start = torch.zeros_like(logits).scatter_(1, words[:, None], logits.gather(1, words[:, None]))
    expected = lrp_linear(total, output.weight.detach(), output.bias.detach(), start, 0.01)
    got = _explained_output_relevance(output, total, logits, words, 0.01)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-9, atol=1e-12)


def test_stop_words(tmp_path):
    shipped = load_stop_words()
    assert {"a", "the", "of", "and", "is"} <= shipped and "ball" not in shipped and len(shipped) == 179
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="holds no words"):
        load_stop_words(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_stop_words(tmp_path / "missing.txt")
    (tmp_path / "words.txt").write_text("A  # capitals are lowered\nthe\n")
    assert load_stop_words(tmp_path / "words.txt") == {"a", "the"}


def test_cider_reward_and_self_critical_advantage_by_hand():
    """Corpus of two images with disjoint words: every n-gram of the corpus has document frequency 1, so
    idf = log(2) for all; words never seen have df 0 -> log(max(1, 0)) = 0, idf log(2) as well. For 2-word captions
    CIDEr-D = 10 * mean over n = 1..4 of the clipped cosine; n = 3, 4 have no n-grams (0)."""
    reward = CiderReward([["a b"], ["c d"]])
    exact = reward(["a b"], [["a b"]])  # cosine 1 for n = 1, 2
    assert exact[0] == pytest.approx(10 * (1 + 1 + 0 + 0) / 4)
    half = reward(["a c"], [["a b"]])  # unigrams: one of two shared -> cosine 1/2; bigrams: none shared
    assert half[0] == pytest.approx(10 * 0.5 / 4)
    # longer hypothesis: gaussian length penalty exp(-delta^2 / (2 * 6^2)) with delta = 1
    longer = reward(["a b a"], [["a b"]])
    # hyp tf {a: 2, b: 1}, ref {a: 1, b: 1}: clipped sum min(2, 1) * 1 + min(1, 1) * 1, norms sqrt(5), sqrt(2)
    unigram = (1 * 1 + 1 * 1) / (math.sqrt(5) * math.sqrt(2))
    bigram = (1 * 1) / (math.sqrt(2) * 1)  # hyp {ab, ba}, ref {ab}
    assert longer[0] == pytest.approx(10 * (unigram + bigram) / 4 * math.exp(-1 / 72))
    advantage = self_critical_advantage(reward, ["a b", "a c"], ["a c", "a c"], [["a b"], ["a b"]])
    np.testing.assert_allclose(advantage, [5 - 1.25, 0.0])
    with pytest.raises(ValueError, match="empty"):
        CiderReward([])


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_sampling_and_scoring(kind):
    captioner = _captioner(kind).eval()
    features = torch.randn(4, 4, 6, dtype=torch.float64)
    skipped = stop_word_mask(Vocabulary(WORDS), ["a", "the"])
    generator = torch.Generator().manual_seed(0)
    samples = sample_captions(captioner, features, 6, skipped, generator)
    again = sample_captions(captioner, features, 6, skipped, torch.Generator().manual_seed(0))
    assert torch.equal(samples, again) and samples.shape[0] == 4 and samples.shape[1] <= 6
    for row in samples.tolist():  # after <end> only <pad>
        if 2 in row:
            assert all(word == 0 for word in row[row.index(2) + 1:])
    # summed log-probability of a caption == the product of its step probabilities under the weighted logits
    tokens = torch.tensor([[4, 6, 2, 0], [7, 9, 6, 2]])
    log_probs = sequence_log_probs(captioner, features[:2], tokens, skipped)
    state = captioner.init_state(features[:2])
    words, expected = torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.float64)
    for t in range(tokens.shape[1]):
        logits, state, trace = captioner.step(state, words)
        first, second = (trace[name] for name in captioner.output_terms)
        weights_first, weights_second, _ = feature_weights(captioner.output, first, second, logits, skipped)
        step = torch.log_softmax(captioner.output(weights_first * first + weights_second * second), -1)
        expected += step.gather(1, tokens[:, t:t + 1]).squeeze(1) * (tokens[:, t] != 0)
        words = tokens[:, t]
    torch.testing.assert_close(log_probs, expected)


# -- the command, on a tiny trained model --------------------------------------------------------------------------
def _run(tiny_trained, out, **options):
    checkpoint, data = tiny_trained
    config = FinetuneConfig(**{"batch_size": 8, "samples_per_image": 2, **options})
    return finetune(config, checkpoint, data / "dataset_scenes.json", data, out, progress=False)


def _weights(path):
    return load_checkpoint(path)["model"]


def test_lrp_equals_baseline_when_every_word_is_a_stop_word(tiny_trained, tmp_path):
    model, vocabulary, _ = load_trained(tiny_trained[0])
    (tmp_path / "all.txt").write_text("\n".join(vocabulary.words[4:]) + "\n")
    _run(tiny_trained, tmp_path / "lrp", method="lrp", stop_words=str(tmp_path / "all.txt"))
    _run(tiny_trained, tmp_path / "baseline", method="baseline")
    _run(tiny_trained, tmp_path / "some", method="lrp")
    lrp, baseline, some = (_weights(tmp_path / name / "last.pt") for name in ("lrp", "baseline", "some"))
    start = model.state_dict()
    for name in start:
        torch.testing.assert_close(lrp[name], baseline[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(lrp[name], start[name]) for name in start)  # it did train
    assert any(not torch.equal(some[name], baseline[name]) for name in start)  # and the weights matter


@pytest.mark.parametrize("objective", ["xe", "scst"])
def test_resume_equals_an_uninterrupted_run(tiny_trained, tmp_path, objective):
    whole = _run(tiny_trained, tmp_path / "whole", method="lrp", objective=objective, epochs=2)
    _run(tiny_trained, tmp_path / "parts", method="lrp", objective=objective, epochs=1)
    parts = _run(tiny_trained, tmp_path / "parts", method="lrp", objective=objective, epochs=2)
    assert [e["loss"] for e in whole["epochs"]] == pytest.approx([e["loss"] for e in parts["epochs"]])
    statistic = "explained_share" if objective == "xe" else "sample_reward"
    assert [e[statistic] for e in whole["epochs"]] == pytest.approx([e[statistic] for e in parts["epochs"]])
    if objective == "xe":
        assert 0 < whole["epochs"][0]["explained_share"] < 1
    for name, value in _weights(tmp_path / "whole" / "last.pt").items():
        torch.testing.assert_close(value, _weights(tmp_path / "parts" / "last.pt")[name], msg=name)
    # the result is an ordinary model checkpoint
    model, _, _ = load_trained(tmp_path / "parts" / "best.pt")
    assert load_checkpoint(tmp_path / "parts" / "best.pt")["finetune"]["method"] == "lrp"


def test_bad_input(tiny_trained, tmp_path):
    checkpoint, data = tiny_trained
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="method must be one of"):
        FinetuneConfig(method="gradcam")
    with pytest.raises(ValueError, match=r"objective must be one of \['xe', 'scst'\], got 'rl'"):
        FinetuneConfig(objective="rl")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds no words"):
        _run(tiny_trained, tmp_path / "x", stop_words=str(tmp_path / "empty.txt"))
    # a file that is not a capxai checkpoint
    save_checkpoint(tmp_path / "foreign.pt", {"weights": torch.zeros(2)})
    with pytest.raises(ValueError, match="not a capxai checkpoint"):
        finetune(FinetuneConfig(), tmp_path / "foreign.pt", data / "dataset_scenes.json", data, tmp_path / "y",
                 progress=False)
    # resuming a folder fine-tuned from another model
    _run(tiny_trained, tmp_path / "run", method="baseline")
    other = load_checkpoint(checkpoint)
    other["model"] = {name: value + 1 for name, value in other["model"].items()}
    save_checkpoint(tmp_path / "other.pt", other)
    with pytest.raises(ValueError, match="another start checkpoint"):
        finetune(FinetuneConfig(method="baseline", batch_size=8), tmp_path / "other.pt", data / "dataset_scenes.json",
                 data, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="fine-tuned with method"):
        _run(tiny_trained, tmp_path / "run", method="lrp")
    # never into the folder of the model it starts from, nor over what capxai train wrote
    before = (checkpoint.parent / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="would replace the model it starts from"):
        finetune(FinetuneConfig(batch_size=8), checkpoint, data / "dataset_scenes.json", data, checkpoint.parent,
                 progress=False, overwrite=True)
    shutil.copytree(checkpoint.parent, tmp_path / "trained")  # a copy of a training folder (manifest included)
    with pytest.raises(FileExistsError, match="written by capxai train"):
        finetune(FinetuneConfig(batch_size=8), checkpoint, data / "dataset_scenes.json", data, tmp_path / "trained",
                 progress=False, overwrite=True)
    assert (checkpoint.parent / "last.pt").read_bytes() == before
    assert (tmp_path / "trained" / "last.pt").read_bytes() == before
    with pytest.raises(ValueError, match="eps must be > 0"):
        FinetuneConfig(eps=0.0)


def test_cli(tiny_trained, tmp_path, capsys):
    checkpoint, data = tiny_trained
    arguments = ["finetune", "--checkpoint", str(checkpoint), "--split-file", str(data / "dataset_scenes.json"),
                 "--image-root", str(data), "--out", str(tmp_path / "cli"), "--method", "lrp", "--batch-size", "8"]
    assert cli.main(arguments) == 0
    assert "validation CIDEr" in capsys.readouterr().out
    assert cli.main(arguments[:-2] + ["--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n")
    assert cli.main(arguments + ["--stop-words", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "b")]) != 0
    assert "holds no words" in capsys.readouterr().err


def test_table_from_real_evaluations(tiny_trained, tmp_path, capsys):
    """capxai evaluate --explanations lrp on the start model and a fine-tuned one, then capxai finetune-table."""
    checkpoint, data = tiny_trained
    _run(tiny_trained, tmp_path / "lrp", method="lrp")
    common = ["--split-file", str(data / "dataset_scenes.json"), "--image-root", str(data), "--beam-size", "2",
              "--explanations", "lrp", "--no-ablation"]
    for name, model in (("ce", checkpoint), ("lrp", tmp_path / "lrp" / "best.pt")):
        assert cli.main(["evaluate", "--checkpoint", str(model), "--out", str(tmp_path / f"eval-{name}"), *common]) == 0
    arguments = ["finetune-table", "--row", f"tiny/xe={tmp_path / 'eval-ce'}", "--row",
                 f"tiny/lrp-xe={tmp_path / 'eval-lrp'}", "--beam-size", "2", "--out", str(tmp_path / "table")]
    assert cli.main(arguments) == 0
    table = json.loads((tmp_path / "table" / "finetune_table.json").read_text())
    assert [row["variant"] for row in table["rows"]] == ["xe", "lrp-xe"] and table["differences"] == []
    assert (tmp_path / "table" / "finetune_table.md").read_text().startswith("| captioner | variant |")
    assert cli.main(arguments) == 2  # an existing table is kept unless --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(arguments + ["--overwrite"]) == 0


def _ddp_finetune_worker(rank, port, steps, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model = training_model()
    ddp = torch.nn.parallel.DistributedDataParallel(FinetuneObjective(model, _SKIPPED_20))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(steps):
        batch = training_batch(step, 8)
        images, captions = batch["images"][rank * 4:(rank + 1) * 4], batch["captions"][rank * 4:(rank + 1) * 4]
        optimizer.zero_grad()
        ddp(images, captions.reshape(-1, captions.shape[-1]), torch.arange(4).repeat_interleave(2)).backward()
        optimizer.step()
    if rank == 0:
        torch.save(model.state_dict(), result_path)
    torch.distributed.destroy_process_group()


_SKIPPED_20 = torch.tensor([True] * 4 + [False, True] * 8)  # a 20-word vocabulary: every other word a stop word


def test_two_gloo_processes_equal_one_process_on_the_global_batch(tmp_path):
    """LRP fine-tuning under DistributedDataParallel: two processes on half a batch each == one on all of it."""
    steps = 2
    mp.spawn(_ddp_finetune_worker, args=(free_port(), steps, str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    model = training_model()
    objective = FinetuneObjective(model, _SKIPPED_20)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(steps):
        batch = training_batch(step, 8)
        optimizer.zero_grad()
        objective(batch["images"], batch["captions"].reshape(-1, batch["captions"].shape[-1]),
                  torch.arange(8).repeat_interleave(2)).backward()
        optimizer.step()
    ddp_state = torch.load(tmp_path / "ddp.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
