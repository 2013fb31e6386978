"""The captioners of one demo run side by side: caption quality, hallucination and how well each method's
explanations do on each captioner (grounding, pointing game, ablation, hallucinated-word detection), every value
with its 95 % bootstrap interval over images. Reads RUN_DIR/eval-CAPTIONER/*_test_beam3.json (what ``make demo``
writes). Usage: ``python docs/experiments/demo-2026-12-03/compare_captioners.py runs/demo [adaptive multihead transformer]``
-> markdown on standard output."""
import json
import sys
from pathlib import Path

GROUP = "test_beam3"
METHODS = ("lrp", "gradcam", "guided-gradcam", "guided-backprop", "gradient-x-input", "attention")


def _ci(entry) -> str:
    low, high = entry["ci"] if entry.get("ci") else (float("nan"), float("nan"))
    return f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]"


def _load(run: Path, captioner: str, kind: str) -> dict:
    return json.loads((run / f"eval-{captioner}" / f"{kind}_{GROUP}.json").read_text())


def _entry(report: dict, what: str, method: str):
    """``{"value", "ci"}`` of one method's measurement (None where the method has none)."""
    if what in ("grounding", "pointing") and method in report["grounding"]:
        measured = report["grounding"][method]
        return measured["thresholds"]["0.0"] if what == "grounding" else measured["pointing_game"]
    if what == "ablation" and method in report.get("ablation", {}).get("image", {}):
        return report["ablation"]["image"][method]["disappeared"]
    if what == "detection" and method in report["detection"]["best"]:
        best = report["detection"]["best"][method]
        low, high = best["ci"]  # the interval of "value", the AUC of "higher means hallucinated"
        ci = [low, high] if best["value"] == best["detection_auc"] else [1 - high, 1 - low]
        return {"value": best["detection_auc"], "ci": ci}
    return None


def main(run: Path, captioners) -> str:
    lines = [f"# The captioners of {run} side by side (test split, beam 3)", "",
             "## Captions and hallucination (all test images)", "",
             "| captioner | BLEU-4 | METEOR | CIDEr | CHAIR-i | CHAIR-s | probes naming the absent partner |",
             "|---|---|---|---|---|---|---|"]
    for captioner in captioners:
        overall = _load(run, captioner, "metrics")["overall"]
        hallucination = _load(run, captioner, "hallucination")
        chair, probes = hallucination["chair"]["overall"], hallucination["probes"]
        lines.append(f"| {captioner} | {overall['Bleu_4']:.3f} | {overall['METEOR']:.3f} | {overall['CIDEr']:.3f} | "
                     f"{_ci({'value': chair['CHAIRi'], 'ci': chair['CHAIRi_ci']})} | "
                     f"{_ci({'value': chair['CHAIRs'], 'ci': chair['CHAIRs_ci']})} | "
                     f"{_ci({'value': probes['rate'], 'ci': probes['rate_ci']})} of {probes['images']} |")
    explained = {captioner: _load(run, captioner, "explanations") for captioner in captioners}
    images = {captioner: report["images"] for captioner, report in explained.items()}
    lines += ["", f"## Explanations ({', '.join(f'{c}: {n} images' for c, n in images.items())})", "",
              "Grounding: share of the positive relevance in the named object's box (threshold 0). Pointing: the "
              "maximum in the box. Ablation: the word disappears from the new caption when the method's 20 most "
              "relevant of 8x8 patches are blanked. Detection: ROC AUC of the method's best statistic for telling "
              "hallucinated object words from grounded ones (either direction of the statistic)."]
    for what, title in (("grounding", "Grounding (threshold 0)"), ("pointing", "Pointing game"),
                        ("ablation", "Image ablation: word gone"), ("detection", "Detection ROC AUC")):
        lines += ["", f"### {title}", "", "| method | " + " | ".join(captioners) + " |",
                  "|---|" + "---|" * len(captioners)]
        for method in ("uniform", "random", *METHODS, "model"):
            cells = [_entry(explained[captioner], what, method) for captioner in captioners]
            if any(cells):
                lines.append(f"| {method} | " + " | ".join(_ci(cell) if cell else "" for cell in cells) + " |")
    lines.append("")
    lines.append("Words measured: " + "; ".join(
        f"{c}: grounding {explained[c]['grounding']['lrp']['thresholds']['0.0']['words']}, detection "
        f"{explained[c]['detection']['words']} ({explained[c]['detection']['hallucinated']} hallucinated)"
        for c in captioners) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2:] or ["adaptive", "multihead", "transformer"]), end="")
