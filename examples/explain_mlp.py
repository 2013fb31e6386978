"""Explain a small ReLU MLP with the fused ``lrp_linear`` op: every class of every sample at once.

A synthetic task where only the first few input features decide the class; all classes are explained as the K
targets of one ``lrp_linear`` call per layer, and checked: relevance lands on the informative features, it is
conserved with ``bias_factor=1``, the fused op equals the pure-PyTorch reference. Prints the summary as json.

    python examples/explain_mlp.py
"""
import argparse
import json
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from capxai.ops import lrp_linear
from capxai.ops.reference import lrp_linear_reference


def make_task(n_samples, n_features, n_informative, n_classes, generator):
    """Inputs and labels where only the first ``n_informative`` features decide the class."""
    inputs = torch.randn(n_samples, n_features, generator=generator)
    mixing = torch.randn(n_informative, n_classes, generator=generator)
    labels = (inputs[:, :n_informative] @ mixing).argmax(dim=1)
    return inputs, labels


def train_classifier(inputs, labels, n_classes, steps, generator):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    model = nn.Sequential(nn.Linear(inputs.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, n_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in tqdm(range(steps), desc="train MLP", unit="step"):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.eval()


def explain_all_classes(model, inputs, rule, eps=0.01, bias_factor=0.0):
    """Input relevance ``[C, N, F]`` for every class C at once: start ``onehot(c) * logit_c``, epsilon rule through
    each Linear (``rule`` is the fused op or the reference), ReLU passes relevance unchanged."""
    layer_inputs, activation = [], inputs
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer_inputs.append(activation)
            activation = layer(activation)
        logits = activation
        n_classes = logits.shape[1]
        relevance = torch.eye(n_classes)[:, None, :] * logits[None]  # [C, N, C]
        linears = [layer for layer in model if isinstance(layer, nn.Linear)]
        for layer, layer_input in zip(reversed(linears), reversed(layer_inputs)):
            relevance = rule(layer_input, layer.weight, layer.bias, relevance, eps=eps, bias_factor=bias_factor)
    return relevance, logits


def _timed(job, repeats=5):
    """(median seconds of ``repeats`` runs after one warm-up run, the last result)."""
    result = job()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = job()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2], result


def run(seed: int = 0) -> dict:
    """Trains the MLP, explains every class of every sample, and returns what the explanations show."""
    generator = torch.Generator().manual_seed(seed)
    n_informative = 4
    inputs, labels = make_task(4096, 32, n_informative, 3, generator)
    model = train_classifier(inputs, labels, 3, steps=300, generator=generator)

    fused_seconds, (relevance, logits) = _timed(lambda: explain_all_classes(model, inputs, lrp_linear))
    reference_seconds, (reference, _) = _timed(lambda: explain_all_classes(model, inputs, lrp_linear_reference))
    conserved, _ = explain_all_classes(model, inputs, lrp_linear, bias_factor=1.0)

    predicted = logits.argmax(dim=1)
    own_class = relevance[predicted, torch.arange(len(inputs))]  # [N, F] relevance of each predicted class
    share_informative = own_class[:, :n_informative].abs().sum() / own_class.abs().sum()
    start_relevance = logits.T  # [C, N]: the start relevance of each class is its logit
    conservation_error = ((conserved.sum(-1) - start_relevance).abs().max() / start_relevance.abs().max()).item()
    summary = {
        "accuracy": (predicted == labels).float().mean().item(),
        "relevance_share_on_informative_features": share_informative.item(),
        "informative_feature_fraction": n_informative / inputs.shape[1],
        "conservation_relative_error_bias_factor_1": conservation_error,
        "max_abs_difference_fused_vs_reference": (relevance - reference).abs().max().item(),
        "seconds_fused": fused_seconds,
        "seconds_reference": reference_seconds,
        "samples": len(inputs),
        "targets_per_sample": int(logits.shape[1]),
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
