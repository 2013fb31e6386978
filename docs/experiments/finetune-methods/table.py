"""The fine-tuning methods' table (issue 23) from the screen's json lines (screen.sh -> guided-decoding/screen.py, one
line per model and decoding, with every test caption): each line is scored again as ``capxai evaluate`` scores a
split (BLEU, METEOR, ROUGE-L, CIDEr per image, CHAIR, frequent words, probe flags per image) and the rows go
through ``capxai.evaluate.comparison.finetune_table``, so every difference to baseline fine-tuning carries the
per-image paired bootstrap interval (and, with several seeds, the interval over seeds). Usage:

    python docs/experiments/finetune-methods/table.py ARMS.jsonl SPLIT_FILE OUT_PREFIX [--captioner adaptive]

Writes OUT_PREFIX-seed0.{json,md} (every arm, seed 0) and OUT_PREFIX-seeds.{json,md} (the arms that have the most
seeds, with the baseline's same seeds). A line's variant: the fine-tuning folder's arm name (``ft-CAP-ARM-sS``;
``start-...``: "xe", the cross-entropy start), ``+guided`` when decoded with the guidance.
"""
import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from capxai._io import atomic_write_json, atomic_write_text
from capxai.data.captions import load_karpathy, image_id_of
from capxai.evaluate.comparison import finetune_table, table_markdown
from capxai.evaluate.hallucination import hallucination_report, load_hallucination_data
from capxai.evaluate.metrics import caption_metrics


def _variant(line: dict):
    folder = Path(line["checkpoint"]).parent.name
    match = re.fullmatch(r"ft-[a-z]+-(.+)-s(\d+)", folder)
    arm, seed = (match.group(1), int(match.group(2))) if match else ("xe", 0)
    if arm == "xe":
        name = "guided-xe" if line["penalty"] > 0 else "xe"
    else:
        name = f"{arm}{'+guided' if line['penalty'] > 0 else ''}-xe"
    return name, seed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arms")
    parser.add_argument("split_file")
    parser.add_argument("out_prefix")
    parser.add_argument("--captioner", default="adaptive")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    split_file = Path(args.split_file)
    references = {image_id_of(entry, position): [" ".join(s["tokens"]) for s in entry["sentences"]]
                  for position, entry in enumerate(load_karpathy(split_file)) if entry["split"] == args.split}
    data = load_hallucination_data(split_file.parent / "annotations" / f"instances_{args.split}.json",
                                   split_file.parent / "synonyms.txt", split_file, list(references))
    evaluations = defaultdict(dict)  # variant -> seed -> (source, evaluation)
    for line in map(json.loads, Path(args.arms).read_text().splitlines()):
        variant, seed = _variant(line)
        captions = {int(k): v for k, v in line["captions"].items()}
        metrics = caption_metrics({i: references[i] for i in captions}, captions, spice=False,
                                  metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr"))
        source = f"{line['checkpoint']} (threshold {line['threshold']}, penalty {line['penalty']})"
        evaluations[variant][seed] = (source, {"metrics": {**metrics, "run": {"images": len(captions)}},
                                               "hallucination": hallucination_report(captions, data)})
        print(variant, seed, round(metrics["overall"]["CIDEr"], 3), flush=True)
    rows = [(args.captioner, variant, [seeds[0]]) for variant, seeds in evaluations.items() if 0 in seeds]
    _write(finetune_table(rows), Path(f"{args.out_prefix}-seed0"))
    most = max(len(seeds) for seeds in evaluations.values())
    full = sorted({seed for seeds in evaluations.values() if len(seeds) == most for seed in seeds})
    rows = [(args.captioner, variant, [seeds[s] for s in full]) for variant, seeds in evaluations.items()
            if all(s in seeds for s in full) and (len(seeds) == most or variant == "baseline-xe")]
    if most > 1:
        _write(finetune_table(rows), Path(f"{args.out_prefix}-seeds"))


def _write(table: dict, prefix: Path) -> None:
    atomic_write_json(prefix.with_suffix(".json"), table)
    atomic_write_text(prefix.with_suffix(".md"), table_markdown(table))
    print(table_markdown(table))


if __name__ == "__main__":
    main()
