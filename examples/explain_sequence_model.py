"""Explain your own model built from ``capxai.nn`` modules with ONE ``torch.autograd.grad`` call.

A sequence classifier built like a captioner's decoder (Linear -> capxai.nn.LSTM -> capxai.nn.AdditiveAttention ->
Linear) on noise sequences whose class is set by one marker step; Zennit's Epsilon rule on the Linear layers and
``capxai.lrp()`` for the LSTM and the attention give the relevance of every input step. Relevance should land on the
marker step. Prints the summary as json.

    python examples/explain_sequence_model.py
"""
import argparse
import json
import sys
import time

import torch
from torch import nn
from tqdm import tqdm
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon

import capxai


class SequenceClassifier(nn.Module):
    """Linear -> capxai.nn.LSTM -> capxai.nn.AdditiveAttention over the LSTM outputs -> Linear."""

    def __init__(self, n_features, n_classes, hidden=24):
        super().__init__()
        self.embed = nn.Linear(n_features, hidden)
        self.lstm = capxai.nn.LSTM(hidden, hidden, batch_first=True)
        self.attention = capxai.nn.AdditiveAttention(hidden, hidden, hidden)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, sequences):
        outputs, (h_n, _) = self.lstm(torch.tanh(self.embed(sequences)))
        context, _, _ = self.attention(outputs, h_n[-1])
        return self.classifier(context)


def make_marker_task(n_samples, steps, n_features, n_classes, generator):
    """Noise sequences with one marker step whose pattern (one of n_classes) is the label."""
    sequences = torch.randn(n_samples, steps, n_features, generator=generator) * 0.5
    patterns = torch.randn(n_classes, n_features, generator=generator) * 2.0
    labels = torch.randint(0, n_classes, (n_samples,), generator=generator)
    marker = torch.randint(0, steps, (n_samples,), generator=generator)
    sequences[torch.arange(n_samples), marker] += patterns[labels]
    return sequences, labels, marker


def run(seed: int = 0) -> dict:
    """Trains the model, explains its predicted class with one autograd call, and returns where relevance lands."""
    generator = torch.Generator().manual_seed(seed)
    steps, n_classes = 12, 4
    sequences, labels, marker = make_marker_task(2048, steps, 8, n_classes, generator)
    torch.manual_seed(seed)
    model = SequenceClassifier(8, n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in tqdm(range(200), desc="train LSTM + attention", unit="step"):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(sequences), labels).backward()
        optimizer.step()
    model.eval()

    composite = LayerMapComposite([(nn.Linear, Epsilon(epsilon=0.01))])
    inputs = sequences.clone().requires_grad_(True)
    start = time.perf_counter()
    with composite.context(model) as hooked, capxai.lrp(eps=0.01):
        logits = hooked(inputs)
        predicted = logits.argmax(-1)
        start_relevance = nn.functional.one_hot(predicted, n_classes) * logits  # onehot(w) * logit_w
        (relevance,) = torch.autograd.grad(logits, inputs, grad_outputs=start_relevance.detach())
    seconds = time.perf_counter() - start
    per_step = relevance.sum(-1)  # [N, T]
    share_on_marker = (per_step.abs()[torch.arange(len(marker)), marker] / per_step.abs().sum(-1)).mean()
    summary = {
        "accuracy": (predicted == labels).float().mean().item(),
        "relevance_share_on_marker_step": share_on_marker.item(),
        "marker_step_fraction": 1 / steps,
        "top_relevance_step_is_marker": (per_step.argmax(-1) == marker).float().mean().item(),
        "seconds_forward_and_explain": seconds,
        "samples": len(sequences),
    }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
