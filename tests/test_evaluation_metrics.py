"""Explanation metrics on inputs with known answers: grounding and pointing game on synthetic heatmaps, ablation on a
model whose answer is known, ROC AUC against a hand-computed case, bootstrap interval coverage on a known
distribution."""
import numpy as np
import pytest
import torch

from capxai.evaluate import ablation
from capxai.evaluate.grounding import THRESHOLDS, box_masks, grounding_scores, pointing_game
from capxai.evaluate.statistics import mean_ci, ratio_ci, roc_auc, statistic_ci

SIZE = (40, 40)
BOX = (10, 5, 10, 20)  # x, y, w, h: 200 of the 1600 pixels


def test_box_masks_scale_boxes_to_the_map_and_grow_them():
    mask = box_masks([BOX], SIZE, SIZE)[0]
    assert mask.sum() == 200 and mask[5, 10] and mask[24, 19] and not mask[25, 19] and not mask[5, 20]
    half = box_masks([(20, 10, 20, 40)], (80, 80), SIZE)[0]  # the same box on an image twice as large
    assert torch.equal(half, mask)
    grown = box_masks([BOX], SIZE, SIZE, tolerance=2)[0]
    assert grown.sum() == 14 * 24


def test_grounding_of_known_maps():
    inside = box_masks([BOX], SIZE, SIZE)
    all_in_box = torch.rand(*SIZE) * inside[0]
    uniform = torch.ones(*SIZE)
    empty = -torch.rand(*SIZE)  # no positive relevance at all
    scores = grounding_scores(torch.stack([all_in_box, uniform, empty]), [inside, inside, inside])
    assert torch.allclose(scores[0], torch.ones(len(THRESHOLDS), dtype=torch.float64))
    assert scores[1, 0] == pytest.approx(200 / 1600)  # a uniform map gives the box's area share
    assert torch.all(scores[2] == 0)


def test_grounding_takes_the_best_box_and_the_threshold():
    boxes = box_masks([(0, 0, 10, 10), (20, 20, 10, 10)], SIZE, SIZE)
    heatmap = torch.zeros(*SIZE)
    heatmap[:10, :10] = 0.3  # 30 % of the mass in box 1 (all values 0.3 of the peak)
    heatmap[20:30, 20:30] = 0.7  # 70 % in box 2
    scores = grounding_scores(heatmap[None], [boxes])[0]
    assert scores[0] == pytest.approx(0.7)  # the best box, not the sum of both
    assert scores[THRESHOLDS.index(0.5)] == pytest.approx(1.0)  # 0.3 / 0.7 = 0.43 of the peak is zeroed at 0.5
    with pytest.raises(ValueError, match="one box mask set per map"):
        grounding_scores(heatmap[None], [boxes, boxes])


def test_pointing_game():
    inside = box_masks([BOX], SIZE, SIZE)
    peak_in, peak_out = torch.zeros(*SIZE), torch.zeros(*SIZE)
    peak_in[10, 12] = 1.0
    peak_out[30, 30] = 1.0
    near = torch.zeros(*SIZE)
    near[26, 15] = 1.0  # one pixel below the box: a hit with 2 pixels of tolerance
    hits = pointing_game(torch.stack([peak_in, peak_out, near, torch.ones(*SIZE)]), [inside] * 4)
    assert hits.tolist() == pytest.approx([1.0, 0.0, 0.0, 200 / 1600])  # a flat map: the area share
    assert pointing_game(near[None], [box_masks([BOX], SIZE, SIZE, tolerance=2)])[0] == 1.0


class BrightCornerModel(torch.nn.Module):
    """Says word 5 when the top-left 5x5 pixels are bright, else word 6; then <end>. Its encoder returns that
    brightness as the only feature."""

    def __init__(self):
        super().__init__()
        self.encoder = lambda images: images[:, :, :5, :5].mean((1, 2, 3)).reshape(-1, 1, 1)
        self.captioner = self

    def init_state(self, features):
        return {"bright": features[:, 0, 0], "t": torch.zeros(features.shape[0])}

    def step(self, state, words):
        logits = torch.full((words.shape[0], 8), -10.0)
        first = state["t"] == 0
        logits[first, 5] = torch.where(state["bright"][first] > 0.5, 5.0, -5.0)
        logits[first, 6] = 0.0
        logits[~first, 2] = 10.0  # <end>
        return logits, {**state, "t": state["t"] + 1}, {}


def test_image_ablation_on_a_model_whose_answer_is_known():
    model = BrightCornerModel()
    images = torch.ones(2, 3, 40, 40)
    relevance = torch.zeros(2, *SIZE)
    relevance[:, :5, :5] = 1.0  # the explanation points at the corner that decides
    scores = ablation.patch_relevance(relevance, grid=8)
    patches = ablation.most_relevant_patches(scores, k=1)
    assert patches[:, 0].tolist() == [0, 0]
    elsewhere = torch.tensor([[63], [27]])
    blanked = torch.cat([ablation.blank_patches(images[:1], patches[:1]), ablation.blank_patches(images[1:],
                                                                                                   elsewhere[1:])])
    assert blanked[0, :, :5, :5].abs().sum() == 0 and blanked[1, :, :5, :5].min() == 1
    before = torch.softmax(torch.tensor([0.0, 5.0]), 0)[1].repeat(2)
    gone, drop = ablation.image_ablation(model.encoder, model, blanked, torch.tensor([5, 5]), before, 1, 3)
    assert gone.tolist() == [True, False]  # blanking the relevant patch removes the word; another patch does not
    assert torch.isnan(drop[0]) and drop[1] == pytest.approx(0.0, abs=1e-5)


def test_word_ablation_deletes_the_most_relevant_words_never_start():
    relevance = torch.tensor([9.0, 1.0, 5.0, 3.0, 4.0])  # fed words <start>, w1..w4
    assert sorted(ablation.word_deletions(relevance, 4, 2).tolist()) == [2, 3]  # among w1..w3, never <start>
    model = BrightCornerModel()
    features = torch.tensor([[[1.0]], [[0.0]]])
    prefixes = [torch.tensor([1]), torch.tensor([1, 5])]
    probability = ablation.teacher_forced_probability(model, features, prefixes, torch.tensor([5, 2]))
    assert probability[0] == pytest.approx(float(torch.softmax(torch.tensor([5.0, 0.0]), 0)[0]), rel=1e-4)
    assert probability[1] > 0.99


def test_roc_auc_against_a_hand_computed_case():
    # pairs (hallucinated, present) ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([1, 1], [0.1, 0.2]) is None


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, covered = 200, 0
    for trial in range(trials):
        sample = rng.binomial(1, 0.3, size=120).astype(float)
        interval = mean_ci(sample, resamples=1000, seed=trial)["ci"]
        covered += interval[0] <= 0.3 <= interval[1]
    assert 0.90 <= covered / trials <= 0.99


def test_ratio_and_statistic_intervals():
    result = ratio_ci([1, 2, 0, 3], [2, 2, 1, 3])
    assert result["value"] == pytest.approx(6 / 8) and result["images"] == 4
    assert result["ci"][0] <= 6 / 8 <= result["ci"][1]
    assert ratio_ci([0, 0], [0, 0])["value"] is None
    with pytest.raises(ValueError, match="one length"):
        ratio_ci([1, 2], [1])
    values = np.arange(10.0)
    entry = statistic_ci(10, lambda chosen: float(values[chosen].mean()))
    assert entry["value"] == pytest.approx(4.5) and entry["ci"][0] < 4.5 < entry["ci"][1]


def test_weighted_roc_auc_equals_scikit_learn_row_by_row():
    from capxai.evaluate.statistics import weighted_roc_auc

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 12, 60) / 4.0  # many ties
    weights = rng.integers(0, 3, (40, 60)).astype(float)
    weights[0] = 1.0
    weights[1] = labels  # only one label weighed: undefined
    result = weighted_roc_auc(labels, scores, weights)
    assert np.isnan(result[1])
    for row in [0] + list(range(2, 40)):
        keep = weights[row] > 0
        assert result[row] == pytest.approx(roc_auc(labels[keep], scores[keep], weights[row][keep]), abs=1e-12)


def test_the_vectorised_bootstrap_draws_what_the_looped_one_draws():
    from capxai.evaluate.statistics import multiplicity_ci, weighted_roc_auc

    rng = np.random.default_rng(5)
    image_of_word = rng.integers(0, 25, 90)
    labels, scores = rng.integers(0, 2, 90), rng.normal(size=90)

    def looped(chosen):
        weights = np.bincount(chosen, minlength=25)[image_of_word].astype(float)
        keep = weights > 0
        return roc_auc(labels[keep], scores[keep], weights[keep])

    expected = statistic_ci(25, looped, resamples=300, seed=2)
    entry = multiplicity_ci(25, lambda counts: weighted_roc_auc(labels, scores, counts[:, image_of_word]),
                            resamples=300, seed=2)
    assert entry["value"] == pytest.approx(expected["value"], abs=1e-12)
    assert entry["ci"] == pytest.approx(expected["ci"], abs=1e-12) and entry["images"] == 25
