"""The fine-tuning methods of issue 23 (``capxai.train.methods``): each control's weights, the label gates' masks
and the share penalty against independent computations from the op references on a tiny model; the oracle reads
annotations and nothing else does; the gradient clamp; resume; bad input."""
import numpy as np
import pytest
import torch

from capxai import cli
from capxai.data.annotations import load_split_annotations
from capxai.evaluate.objects import ObjectWords
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner
from capxai.ops.reference import lrp_linear_reference, stabilize
from capxai.train import FinetuneConfig, FinetuneObjective, feature_weights, finetune, load_trained
from capxai.train.label_gates import object_phrases
from capxai.train.lrp_weights import Weighting
from capxai.train.methods import FINETUNE_METHODS
from capxai.train.trainer import optimizer_step
from capxai.models.checkpoint import load_checkpoint
from explain_reference import reference_feature_weights

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "the", "ball", "box", "red", "of"]
OBJECTS = ObjectWords({"ball": [], "box": []})
CAPTIONS = torch.tensor([[1, 4, 8, 6, 2], [1, 7, 9, 6, 2], [1, 5, 6, 2, 0]])
# target positions (captions[:, 1:]): row 0 "a red ball": ball at 2; row 1 "box of ball": box 0, ball 2;
# row 2 "the ball"


def _captioner(kind, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    if kind == "adaptive":
        return AdaptiveAttentionCaptioner(len(WORDS), 6, hidden=8, attention_dim=5, dropout=dropout).double()
    return MultiHeadCaptioner(len(WORDS), 6, hidden=8, heads=2, dropout=dropout).double()


class _Model(torch.nn.Module):  # encoder + captioner, as CaptionModel
    def __init__(self, kind, dropout=0.0):
        super().__init__()
        self.encoder, self.captioner = torch.nn.Identity(), _captioner(kind, seed=3, dropout=dropout)

    def forward(self, images, captions, image_index):
        return self.captioner(self.encoder(images).index_select(0, image_index), captions)


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
@pytest.mark.parametrize("method", ["lrp-label", "lrp-common", "lrp-visual"])
def test_control_weights_equal_the_op_references(kind, method):
    captioner = _captioner(kind)
    skipped = torch.tensor([word in ("a", "<pad>") for word in WORDS])  # the untrained top word is "of"
    trace = captioner(torch.randn(3, 4, 6, dtype=torch.float64), CAPTIONS)
    first, second = (trace.activations[name].detach() for name in captioner.output_terms)
    labels = CAPTIONS[:, 1:]
    weighting = FINETUNE_METHODS[method].weighting
    got_first, got_second, explained = feature_weights(captioner.output, first, second, trace.logits.detach(),
                                                       skipped, eps=0.01, weighting=weighting, labels=labels)
    expected_first, expected_second = reference_feature_weights(
        captioner.output, first, second, trace.logits.detach(), skipped, 0.01,
        labels=labels if method == "lrp-label" else None, common=method == "lrp-common",
        visual_only=method == "lrp-visual")
    torch.testing.assert_close(got_first, expected_first, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_second, expected_second, rtol=1e-9, atol=1e-12)
    assert explained.any()
    if method == "lrp-label":  # the explained steps are those whose label is no stop word
        assert (explained == ~skipped[labels]).all()
    if method == "lrp-visual":
        assert (got_second == 1).all() and (got_first != 1).any()
    with pytest.raises(ValueError, match="labels of shape"):
        feature_weights(captioner.output, first, second, trace.logits, skipped, weighting=Weighting(word="label"))


def test_object_phrases_and_the_hidden_ones():
    ids = torch.tensor([10, 11, 12])
    phrases = object_phrases(CAPTIONS, ids, WORDS, OBJECTS, hidden={11: {"ball"}, 12: {"box"}})
    assert phrases.heads.tolist() == [[-1, -1, 2, -1], [0, -1, 2, -1], [-1, 1, -1, -1]]
    assert phrases.hidden.tolist() == [[False] * 4, [False, False, True, False], [False] * 4]
    assert phrases.head_positions().sum() == 4
    # a two-word phrase: all its positions point at its head noun
    two_words = ObjectWords({"ball": ["red ball"]})
    assert object_phrases(CAPTIONS[:1], ids[:1], WORDS, two_words).heads.tolist() == [[-1, 2, 2, -1]]
    # nothing after <end>: a phrase-like pad tail is not read
    assert not object_phrases(CAPTIONS, ids, WORDS, OBJECTS).hidden.any()


def _label_share_reference(captioner, trace, labels, eps=0.01):
    """Per step, from the op reference: the label's relevance through W_o, split over the visual and the language
    term (the adaptive sentinel's share beta*s counted as language), summed; share = visual / both in [0, 1]."""
    activations = trace.activations
    visual, language = (activations[name] for name in captioner.output_terms)
    if "beta" in activations:
        memory = activations["beta"].unsqueeze(-1) * activations["sentinel"]
        visual, language = visual - memory, language + memory
    shares = torch.zeros(labels.shape, dtype=visual.dtype)
    for index in np.ndindex(*labels.shape):
        word = int(labels[index])
        total = visual[index] + language[index]
        logits = captioner.output(total)
        start = torch.zeros_like(logits)
        start[word] = logits[word]
        relevance = lrp_linear_reference(total[None], captioner.output.weight, captioner.output.bias, start[None],
                                         eps)[0]
        part_visual = float((visual[index] / stabilize(total, eps) * relevance).sum())
        part_language = float((language[index] / stabilize(total, eps) * relevance).sum())
        both = part_visual + part_language
        shares[index] = min(1.0, max(0.0, part_visual / both)) if both > 0 else 0.0
    return shares


def _masked_ce(logits, targets, keep):
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               reduction="none").reshape(targets.shape)
    return (losses * keep).sum() / keep.sum()


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_gates_and_penalty_equal_an_independent_computation(kind):
    model = _Model(kind)
    # seeded: the gradient check below needs a head noun whose share is not clamped to 0 or 1 (asserted), which
    # unseeded features did not give on every machine
    features = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    image_index = torch.tensor([0, 1, 1])
    phrases = object_phrases(CAPTIONS, torch.tensor([10, 11, 11]), WORDS, OBJECTS, hidden={11: {"ball"}})
    targets = CAPTIONS[:, 1:]
    valid = targets != 0
    with torch.no_grad():
        trace = model(features, CAPTIONS, image_index)
        shares = _label_share_reference(model.captioner, trace, targets)
    plain_ce = _masked_ce(trace.logits, targets, valid.double())
    head_nouns = shares[phrases.head_positions()]
    assert ((head_nouns > 0) & (head_nouns < 1)).any()
    heads = phrases.heads
    for threshold in (0.0, float(shares[heads >= 0].median()), 1.0):
        head_shares = shares.gather(1, heads.clamp_min(0))
        keep = valid & ~((heads >= 0) & (head_shares < threshold))
        objective = FinetuneObjective(model, None, gate="explanation", threshold=threshold)
        loss = objective(features, CAPTIONS, image_index, phrases)
        torch.testing.assert_close(loss, 2 * _masked_ce(trace.logits, targets, keep.double()))
        masked = int((valid & ~keep).sum())
        assert objective.take_statistics()["masked_share"] == pytest.approx(masked / 4)
    assert FinetuneObjective(model, None, gate="explanation", threshold=1.0)(
        features, CAPTIONS, image_index, phrases) != 2 * plain_ce  # a gate that masks changes the loss
    # the oracle masks exactly the annotated hidden phrases (row 1's ball)
    oracle = FinetuneObjective(model, None, gate="annotation")(features, CAPTIONS, image_index, phrases)
    torch.testing.assert_close(oracle, 2 * _masked_ce(trace.logits, targets, (valid & ~phrases.hidden).double()))
    # the penalty: 2 CE + lambda * mean(1 - share) over the four head nouns, with gradients into W_o and features
    features.requires_grad_(True)
    objective = FinetuneObjective(model, None, penalty=0.5)
    loss = objective(features, CAPTIONS, image_index, phrases)
    expected_penalty = float((1 - shares[phrases.head_positions()]).mean())
    torch.testing.assert_close(loss.detach(), 2 * plain_ce + 0.5 * expected_penalty)
    assert objective.take_statistics()["share_penalty"] == pytest.approx(expected_penalty)
    penalty_only = loss - 2 * _masked_ce(model(features, CAPTIONS, image_index).logits, targets, valid.double())
    gradients = torch.autograd.grad(penalty_only, [features, model.captioner.output.weight])
    assert all(float(g.abs().sum()) > 0 for g in gradients)
    with pytest.raises(ValueError, match="need the captions' object phrases"):
        objective(features, CAPTIONS, image_index)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        FinetuneObjective(model, None, gate="explanation", threshold=1.5)
    with pytest.raises(ValueError, match="penalty must be >= 0"):
        FinetuneObjective(model, None, penalty=-0.1)


def test_the_clamp_bounds_every_gradient_element():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    before = layer.weight.detach().clone()
    loss = (layer(torch.randn(5, 4) * 100) ** 2).sum()
    optimizer_step(loss, layer, optimizer, clip_norm=1e9, clamp=0.1)
    step = (before - layer.weight.detach()).abs()
    assert step.max() == pytest.approx(0.1)  # SGD with lr 1: the step is the clamped gradient


# -- the command, on a tiny trained model --------------------------------------------------------------------------
def _run(tiny_trained, out, **options):
    checkpoint, data = tiny_trained
    config = FinetuneConfig(**{"batch_size": 8, **options})
    return finetune(config, checkpoint, data / "dataset_scenes.json", data, out, progress=False)


def test_each_method_trains_and_the_oracle_alone_reads_annotations(tiny_trained, tmp_path):
    checkpoint, data = tiny_trained
    _, vocabulary, _ = load_trained(checkpoint)
    objects = ObjectWords.load(data / "synonyms.txt")
    train_ids = [entry.get("cocoid", entry.get("imgid")) for entry in
                 __import__("json").loads((data / "dataset_scenes.json").read_text())["images"]
                 if entry["split"] == "train"]
    hidden = load_split_annotations(data / "annotations" / "instances_train.json").hidden
    assert any(hidden.get(i) for i in train_ids)  # the scenes do hide partners in training images
    histories = {method: _run(tiny_trained, tmp_path / method, method=method, threshold=0.6)
                 for method in ("gated", "oracle", "share-penalty", "lrp-objects")}
    assert 0 < histories["oracle"]["epochs"][0]["masked_share"] < 1
    assert 0 <= histories["gated"]["epochs"][0]["masked_share"] <= 1
    assert histories["share-penalty"]["epochs"][0]["share_penalty"] > 0
    assert 0 < histories["lrp-objects"]["epochs"][0]["explained_share"] < 1
    assert any(objects.mentions(word) for word in vocabulary.words)
    # without annotations the methods that do not need them still run; the oracle says what it misses
    (data / "annotations" / "instances_train.json").rename(data / "annotations" / "moved.json")
    try:
        gated = _run(tiny_trained, tmp_path / "gated-again", method="gated", threshold=0.6)
        assert gated["epochs"][0]["loss"] == pytest.approx(histories["gated"]["epochs"][0]["loss"])
        with pytest.raises(FileNotFoundError, match="--method oracle .* needs the training split's instances"):
            _run(tiny_trained, tmp_path / "oracle-again", method="oracle")
        again = _run(tiny_trained, tmp_path / "oracle-given", method="oracle",
                     instances=str(data / "annotations" / "moved.json"))
        assert again["epochs"][0]["loss"] == pytest.approx(histories["oracle"]["epochs"][0]["loss"])
    finally:
        (data / "annotations" / "moved.json").rename(data / "annotations" / "instances_train.json")


def test_resume_of_a_gated_run_equals_an_uninterrupted_one(tiny_trained, tmp_path):
    whole = _run(tiny_trained, tmp_path / "whole", method="gated", epochs=2, clamp=0.1)
    _run(tiny_trained, tmp_path / "parts", method="gated", epochs=1, clamp=0.1)
    parts = _run(tiny_trained, tmp_path / "parts", method="gated", epochs=2, clamp=0.1)
    assert [e["loss"] for e in whole["epochs"]] == pytest.approx([e["loss"] for e in parts["epochs"]])
    for name, value in load_checkpoint(tmp_path / "whole" / "last.pt")["model"].items():
        torch.testing.assert_close(value, load_checkpoint(tmp_path / "parts" / "last.pt")["model"][name])
    with pytest.raises(ValueError, match="fine-tuned with threshold = 0.5, not 0.7"):
        _run(tiny_trained, tmp_path / "parts", method="gated", epochs=3, clamp=0.1, threshold=0.7)


def test_bad_options(tiny_trained, tmp_path, capsys):
    for options, message in (({"threshold": 1.5}, r"threshold must be in \[0, 1\]"),
                             ({"threshold": -0.1}, r"threshold must be in \[0, 1\]"),
                             ({"penalty": -1.0}, "penalty .* must be >= 0"),
                             ({"clamp": 0.0}, "clamp must be > 0"),
                             ({"method": "gated", "objective": "scst"}, "cross-entropy method")):
        with pytest.raises(ValueError, match=message):
            FinetuneConfig(**options)
    checkpoint, data = tiny_trained
    arguments = ["finetune", "--checkpoint", str(checkpoint), "--split-file", str(data / "dataset_scenes.json"),
                 "--image-root", str(data), "--out", str(tmp_path / "cli"), "--batch-size", "8"]
    assert cli.main(arguments + ["--method", "gated", "--threshold", "2"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert cli.main(arguments + ["--method", "share-penalty", "--penalty", "-1"]) == 2
    assert "--penalty" in capsys.readouterr().err
    assert cli.main(arguments + ["--method", "oracle", "--instances", str(tmp_path / "none.json")]) == 2
    assert "--instances" in capsys.readouterr().err
    assert cli.main(arguments + ["--method", "share-penalty", "--penalty", "0.1", "--clamp", "0.1"]) == 0
    assert "share-penalty fine-tuning" in capsys.readouterr().out


# -- several processes: each rank gates and penalises its own half, DistributedDataParallel averages ------------------
DDP_CAPTIONS = torch.cat([CAPTIONS, torch.tensor([[1, 7, 2, 0, 0]])])  # a fourth caption: "box"
DDP_METHODS = {"gated": dict(gate="explanation", threshold=0.5), "oracle": dict(gate="annotation"),
               "share-penalty": dict(penalty=0.5)}


def _ddp_half_loss(objective, features, rows):
    image_ids = torch.tensor([10, 11, 11, 12])[rows]
    phrases = object_phrases(DDP_CAPTIONS[rows], image_ids, WORDS, OBJECTS, hidden={11: {"ball"}})
    return objective(features[rows], DDP_CAPTIONS[rows], torch.arange(len(rows)), phrases)


def _ddp_methods_worker(rank, port, kind, method, features, result_path):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    objective = FinetuneObjective(_Model(kind), None, **DDP_METHODS[method])
    trained = torch.nn.parallel.DistributedDataParallel(objective)
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        _ddp_half_loss(trained, features, torch.arange(2 * rank, 2 * rank + 2)).backward()
        optimizer.step()
    if rank == 0:
        torch.save(objective.model.state_dict(), result_path)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("method", list(DDP_METHODS))
def test_two_gloo_processes_equal_the_average_of_their_halves(tmp_path, method):
    """Under DistributedDataParallel each process gates / penalises the object phrases of its own captions and the
    gradients are averaged: two processes equal one process stepping on the mean of the two halves' losses."""
    import torch.multiprocessing as mp
    from helpers import free_port

    features = torch.randn(4, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mp.spawn(_ddp_methods_worker, args=(free_port(), "adaptive", method, features, str(tmp_path / "ddp.pt")),
             nprocs=2, join=True)
    objective = FinetuneObjective(_Model("adaptive"), None, **DDP_METHODS[method])
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        halves = [_ddp_half_loss(objective, features, torch.arange(2 * rank, 2 * rank + 2)) for rank in (0, 1)]
        (sum(halves) / 2).backward()
        optimizer.step()
    ddp_state = torch.load(tmp_path / "ddp.pt")
    for name, value in objective.model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-9, atol=1e-12, msg=name)
    assert any(not torch.equal(ddp_state[name], value) for name, value in _Model("adaptive").state_dict().items())
