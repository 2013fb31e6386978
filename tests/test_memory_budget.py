"""Words per backward from a memory budget (capxai.explain.memory_budget, issue 38): the largest activation autograd
saves is measured without the model's weights, and the chunk is what the budget holds, at least one word, at most
all."""
import torch
from torch import nn

from capxai.explain.memory_budget import SavedActivations, available_bytes, word_bytes, words_per_backward


def test_the_largest_saved_activation_leaves_the_weights_out():
    model = nn.Sequential(nn.Linear(10, 1000), nn.ReLU()).requires_grad_(False)  # a 40 000-byte weight
    inputs = torch.randn(4, 10, requires_grad=True)
    with SavedActivations(model) as saved:
        model(inputs).sum()
    # the linear saves its input (160 bytes) and its weight (left out); the ReLU its output, [4, 1000] float32
    assert saved.largest == 4 * 1000 * 4


def test_a_word_costs_twice_the_largest_activation_its_leaves_and_its_start():
    leaves = [torch.zeros(3, 5), torch.zeros(2, dtype=torch.float64)]
    assert word_bytes(1000, leaves, logit_row=40) == 2000 + 60 + 16 + 40


def test_the_chunk_is_what_the_budget_holds_between_one_word_and_all():
    assert words_per_backward(20, per_word=100, device=torch.device("cpu"), budget=450) == 4
    assert words_per_backward(20, per_word=100, device=torch.device("cpu"), budget=50) == 1
    assert words_per_backward(20, per_word=100, device=torch.device("cpu"), budget=10 ** 9) == 20
    # no budget given: half of what the host has available
    share = words_per_backward(10 ** 9, per_word=1024, device=torch.device("cpu"))
    assert abs(share - available_bytes(torch.device("cpu")) // 2 // 1024) <= available_bytes("cpu") // 1024 // 10
