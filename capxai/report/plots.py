"""The report's plots (matplotlib, PNG): grounding over thresholds and ROC curves of hallucination detection, one
line per explanation method, one panel per captioner."""
from pathlib import Path
from typing import Dict

from capxai.report.figures import plt, save_figure


def _panels(count: int, title: str):
    figure, axes = plt.subplots(1, count, figsize=(5.4 * count, 5.0), squeeze=False, layout="constrained")
    figure.suptitle(title, fontsize=11)
    return figure, axes[0]


def plain(text: str) -> str:
    """``text`` shown as it is by matplotlib: a captioner's folder name may hold "$", which starts mathtext (and an
    unbalanced one raises)."""
    return text.replace("$", r"\$")


def _legend(axis, columns: int) -> None:
    """Below the panel; none when nothing was drawn (a method without any measured word)."""
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=columns, frameon=False)


def grounding_plot(evaluations: Dict[str, dict], path: Path) -> Path:
    """``evaluations``: ``{captioner: explanations json}``. Share of positive relevance inside the word's box,
    averaged over object words, against the threshold below which relevance is ignored (fraction of the word's
    largest value); shaded: the 95 % bootstrap interval over images."""
    figure, axes = _panels(len(evaluations), "Grounding: relevance inside the named object's box")
    for axis, (captioner, results) in zip(axes, evaluations.items()):
        for method, entry in results["grounding"].items():
            thresholds = sorted(entry["thresholds"], key=float)
            values = [entry["thresholds"][t]["value"] for t in thresholds]
            if any(value is None for value in values):
                continue
            xs = [float(t) for t in thresholds]
            line, = axis.plot(xs, values, marker="o", markersize=3, label=method,
                              linestyle="--" if method == "uniform" else "-")
            lows = [entry["thresholds"][t]["ci"][0] for t in thresholds]
            highs = [entry["thresholds"][t]["ci"][1] for t in thresholds]
            if None not in lows and None not in highs:
                axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
        axis.set_title(f"{plain(captioner)} ({results['images']} images)", fontsize=10)
        axis.set_xlabel("threshold (fraction of the word's largest value)")
        axis.set_ylabel("share inside the box")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        _legend(axis, columns=3)
    return save_figure(figure, path, dpi=90)


def roc_plot(evaluations: Dict[str, dict], path: Path) -> Path:
    """ROC curves of detecting hallucinated object words, each method by its best statistic (named in the
    legend with its AUC); the diagonal is chance."""
    figure, axes = _panels(len(evaluations), "Hallucinated-word detection (ROC)")
    for axis, (captioner, results) in zip(axes, evaluations.items()):
        detection = results["detection"]
        for method, best in detection.get("best", {}).items():
            if "roc" not in best:
                continue
            axis.plot(best["roc"]["fpr"], best["roc"]["tpr"],
                      label=f"{method}: {best['statistic']} (AUC {best['detection_auc']:.2f})")
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        axis.set_title(f"{plain(captioner)} ({detection.get('hallucinated', 0)} hallucinated of "
                       f"{detection.get('words', 0)} object words)", fontsize=10)
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        _legend(axis, columns=2)
        axis.grid(alpha=0.3)
    return save_figure(figure, path, dpi=90)
