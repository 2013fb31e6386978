"""``python -m capxai.demo`` (``make demo``): the main job, grown issue by issue toward the full captioning demo.

What exists now is the relevance-op layer and the drop-in modules, so the demo is a small real run of them:
1. a ReLU MLP on a synthetic task where only a few input features decide the class: every class of every sample is
   explained at once (all classes as K targets of one ``lrp_linear`` call per layer), and checked: relevance lands
   on the informative features, it is conserved with ``bias_factor=1``, the fused op equals the reference;
2. a sequence model built like a captioner's decoder (Linear -> capxai.nn.LSTM -> capxai.nn.AdditiveAttention ->
   Linear) on sequences whose class is set by one marker step: explained with ONE ``torch.autograd.grad`` under a
   Zennit Epsilon composite and ``capxai.lrp()``; relevance should land on the marker step.
3. the captioning pipeline on the built-in scenes: generate them, train the adaptive-attention and the multi-head
   captioner, caption the test split (greedy and beam 3) and score it: BLEU, METEOR, ROUGE-L, CIDEr, CHAIR and how
   often the probe images get the planted partner object named (the hallucination later work explains and fixes).
Results go to ``OUT/lrp_linear_demo.json``, ``OUT/lrp_sequence_demo.json`` and ``OUT/captioning_demo.json`` (with
``OUT/scenes`` and ``OUT/captioner-*``); an existing result is reused, an interrupted training resumed, unless
``--overwrite`` is given.
"""
import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon

import capxai
from capxai._io import atomic_write_json
from capxai.ops import lrp_linear
from capxai.ops.reference import lrp_linear_reference

RESULT_NAME = "lrp_linear_demo.json"
SEQUENCE_RESULT_NAME = "lrp_sequence_demo.json"


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


def run(out_dir: Path, overwrite: bool, seed: int = 0) -> dict:
    result_path = out_dir / RESULT_NAME
    if result_path.exists() and not overwrite:
        print(f"{result_path} exists; reusing it (pass --overwrite to recompute)")
        return json.loads(result_path.read_text())

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
    atomic_write_json(result_path, summary)
    print(f"wrote {result_path}")
    return summary


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


def run_sequence(out_dir: Path, overwrite: bool, seed: int = 0) -> dict:
    result_path = out_dir / SEQUENCE_RESULT_NAME
    if result_path.exists() and not overwrite:
        print(f"{result_path} exists; reusing it (pass --overwrite to recompute)")
        return json.loads(result_path.read_text())
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
    atomic_write_json(result_path, summary)
    print(f"wrote {result_path}")
    return summary


# The recipe measured to reach test CIDEr >= 1.0 within 15 minutes per captioner on 2 CPU cores (README, issue 4).
CAPTIONER_RECIPE = ["--hidden", "128", "--attention-dim", "64", "--dropout", "0.3", "--lr", "1e-3",
                    "--batch-size", "32"]
CAPTIONING_RESULT_NAME = "captioning_demo.json"


def run_captioning(out_dir: Path, overwrite: bool, seed: int = 0, scene_counts=(8000, 1000, 1000),
                   epochs: int = 6, captioners=("adaptive", "multihead"), extra_train_args=()) -> dict:
    """Built-in scenes -> train each captioner (resuming an interrupted run, reusing a finished one) -> caption the
    test split greedily and with beam 3 -> metrics, CHAIR and the probe hallucination rate, through the ``capxai``
    command line, so the demo runs exactly what a user runs."""
    from capxai import cli

    result_path = out_dir / CAPTIONING_RESULT_NAME
    if result_path.exists() and not overwrite:
        print(f"{result_path} exists; reusing it (pass --overwrite to recompute)")
        return json.loads(result_path.read_text())
    scenes_dir = out_dir / "scenes"
    if overwrite or not (scenes_dir / "dataset_scenes.json").exists():
        train_count, val_count, test_count = scene_counts
        _run_cli(cli, ["data", "scenes", "--out", str(scenes_dir), "--train", str(train_count), "--val",
                       str(val_count), "--test", str(test_count), "--seed", str(seed), "--overwrite"])
    data = ["--split-file", str(scenes_dir / "dataset_scenes.json"), "--image-root", str(scenes_dir)]
    summary = {}
    for captioner in captioners:
        run_dir = out_dir / f"captioner-{captioner}"
        started = time.perf_counter()
        _run_cli(cli, ["train", *data, "--out", str(run_dir), "--model", captioner, "--epochs", str(epochs),
                       "--seed", str(seed), *CAPTIONER_RECIPE, *extra_train_args, *(["--overwrite"] if overwrite else [])])
        history = json.loads((run_dir / "history.json").read_text())
        summary[captioner] = {"train_seconds_this_run": time.perf_counter() - started,
                              "train_seconds_all_epochs": sum(e.get("seconds", 0.0) for e in history["epochs"]),
                              "best_val_cider": history["best_cider"], "best_epoch": history["best_epoch"] + 1}
        for beam in (1, 3):
            evaluation = run_dir / "evaluation"
            if not (evaluation / f"metrics_test_beam{beam}.json").exists():
                _run_cli(cli, ["evaluate", "--checkpoint", str(run_dir / "best.pt"), *data, "--beam-size", str(beam),
                               "--out", str(evaluation), "--overwrite"])
            metrics = json.loads((evaluation / f"metrics_test_beam{beam}.json").read_text())["overall"]
            found = json.loads((evaluation / f"hallucination_test_beam{beam}.json").read_text())
            summary[captioner][f"test_beam{beam}"] = {
                **metrics, "CHAIRi": found["chair"]["overall"]["CHAIRi"], "CHAIRs": found["chair"]["overall"]["CHAIRs"],
                "probe_hallucination_rate": found["probes"]["rate"] if "probes" in found else None}
    atomic_write_json(result_path, summary)
    print(f"wrote {result_path}")
    return summary


def _run_cli(cli, arguments) -> None:
    print("$ capxai " + " ".join(arguments))
    code = cli.main(arguments)
    if code != 0:
        raise RuntimeError(f"capxai {arguments[0]} failed (exit {code}); see the message above")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m capxai.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="result folder (default runs/demo)")
    parser.add_argument("--overwrite", action="store_true", help="recompute even if a result exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, nargs=3, default=(8000, 1000, 2000), metavar=("TRAIN", "VAL", "TEST"),
                        help="built-in scenes per split (default 8000 1000 2000)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each captioner")
    parser.add_argument("--captioners", nargs="*", choices=["adaptive", "multihead"],
                        default=["adaptive", "multihead"], help="which captioners to train (none: skip captioning)")
    args = parser.parse_args(argv)
    jobs = [("MLP, lrp_linear", run), ("LSTM + attention, capxai.nn", run_sequence)]
    if args.captioners:
        jobs.append(("captioners on the built-in scenes", functools.partial(
            run_captioning, scene_counts=tuple(args.scenes), epochs=args.epochs, captioners=tuple(args.captioners))))
    for title, job in jobs:
        summary = job(args.out, args.overwrite, args.seed)
        print(title)
        _print_summary(summary, "  ")
    return 0


def _print_summary(summary: dict, indent: str) -> None:
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_summary(value, indent + "  ")
        else:
            print(f"{indent}{key}: {value:.6g}" if isinstance(value, float) else f"{indent}{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
