"""Insertion / deletion curves (capxai.evaluate.faithfulness) on a captioner whose word depends on one known patch:
the expected curves, exactly, for the right order and the reverse one; and in ``evaluate_explanations``' tables."""
import numpy as np
import pytest
import torch
from torch import nn

from capxai.evaluate import faithfulness
from capxai.models import Captioner

GRID, SIZE, WORD, KNOWN, SCALE = 4, 16, 5, 6, 4.0  # 4 x 4 patches of 4 px; word 5's logit reads patch 6


class PatchEncoder(nn.Module):
    """features [B, 1, 1]: the mean of the known patch."""

    def forward(self, images):
        row, column = divmod(KNOWN, GRID)
        side = SIZE // GRID
        return images[:, :, row * side:(row + 1) * side, column * side:(column + 1) * side].mean((1, 2, 3))[:, None,
                                                                                                            None]


class PatchCaptioner(Captioner):
    """Every step: logit SCALE * feature for WORD, 0 for the other 9 words."""

    vocab_size = 10

    def init_state(self, features):
        return {"features": features}

    def step(self, state, words):
        logits = torch.zeros(words.shape[0], self.vocab_size, dtype=state["features"].dtype)
        logits[:, WORD] = SCALE * state["features"][:, 0, 0]
        return logits, state, {}


def _probability(feature):
    return float(torch.softmax(torch.tensor([SCALE * feature] + [0.0] * 9, dtype=torch.float64), 0)[0])


def test_a_word_that_reads_one_patch_gives_the_expected_curves():
    images = torch.ones(2, 3, SIZE, SIZE)
    right = torch.tensor([KNOWN] + [p for p in range(GRID * GRID) if p != KNOWN])  # the known patch first
    order = torch.stack([right, right.flip(0)])  # row 1: the known patch last
    prefixes = [torch.tensor([1, 3]), torch.tensor([1, 3])]
    result = faithfulness.curves(PatchEncoder(), PatchCaptioner(), images, prefixes, torch.tensor([WORD, WORD]),
                                 order, GRID, steps=4)  # 0, 4, 8, 12, 16 patches
    seen, blank = _probability(1.0), _probability(0.0)
    np.testing.assert_allclose(result["deletion"][0], [seen, blank, blank, blank, blank])
    np.testing.assert_allclose(result["deletion"][1], [seen, seen, seen, seen, blank])
    np.testing.assert_allclose(result["insertion"][0], [blank, seen, seen, seen, seen])
    np.testing.assert_allclose(result["insertion"][1], [blank, blank, blank, blank, seen])
    np.testing.assert_allclose(result["fractions"], [0, 0.25, 0.5, 0.75, 1])
    assert result["deletion_auc"][0] < result["deletion_auc"][1]
    assert result["insertion_auc"][0] > result["insertion_auc"][1]
    np.testing.assert_allclose(result["insertion_auc"][0], 0.125 * blank + 0.875 * seen)


def test_bad_orders_are_named():
    with pytest.raises(ValueError, match=r"order must be \[N, 16\] patch indices"):
        faithfulness.curves(PatchEncoder(), PatchCaptioner(), torch.ones(1, 3, SIZE, SIZE), [torch.tensor([1])],
                            torch.tensor([WORD]), torch.zeros(1, 8, dtype=torch.long), GRID)


def test_bad_steps_are_named():
    from capxai.evaluate.explanations import ExplanationSettings

    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        faithfulness.curves(PatchEncoder(), PatchCaptioner(), torch.ones(1, 3, SIZE, SIZE), [torch.tensor([1])],
                            torch.tensor([WORD]), torch.arange(GRID * GRID)[None], GRID, steps=0)
    with pytest.raises(ValueError, match="curve_steps must be >= 1, got 0"):
        ExplanationSettings(curve_steps=0)
