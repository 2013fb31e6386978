"""Screen explanation-guided decoding (capxai.explain.guided_decoding) on one trained captioner: caption a split
with beam search for each (threshold, penalty), score CIDEr / BLEU-4 and the hallucination metrics, and write one
json line per setting. Usage:

    python docs/experiments/guided-decoding/screen.py CHECKPOINT SPLIT_FILE IMAGE_ROOT SPLIT OUT.jsonl \
        [--grid 0.3:1,0.3:3,0.5:1,0.5:3,0.7:3] [--beam-size 3]

The instances and synonyms are read beside the split file, as ``capxai evaluate`` does. Penalty 0 (plain beam
search) is always the first line.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from capxai.data.captions import image_id_of, open_split
from capxai.evaluate.captioning import caption_dataset, references_of
from capxai.evaluate.hallucination import hallucination_report, load_hallucination_data
from capxai.evaluate.metrics import caption_metrics
from capxai.explain.guided_decoding import VisualShareGuidance, object_word_mask
from capxai.models import load_trained
from capxai.runtime import RunSettings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("checkpoint", "split_file", "image_root", "split", "out"):
        parser.add_argument(name)
    parser.add_argument("--grid", default="0.3:1,0.3:3,0.5:1,0.5:3,0.7:3")
    parser.add_argument("--beam-size", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, vocabulary, config = load_trained(args.checkpoint)
    split_file = Path(args.split_file)
    dataset = open_split(split_file, Path(args.image_root), args.split, vocabulary, config.max_length,
                         config.image_size)
    ids = [image_id_of(entry, position) for position, entry in enumerate(dataset.entries)]
    data = load_hallucination_data(split_file.parent / "annotations" / f"instances_{args.split}.json",
                                   split_file.parent / "synonyms.txt", split_file, ids)
    objects = object_word_mask(vocabulary.words, data.objects)
    references = references_of(dataset)
    settings = [(1.0, 0.0)] + [tuple(map(float, item.split(":"))) for item in args.grid.split(",")]
    with open(args.out, "a") as out:
        for threshold, penalty in settings:
            started = time.perf_counter()
            guidance = None if penalty == 0 else VisualShareGuidance(model.captioner, objects, threshold, penalty)
            captions = caption_dataset(model, dataset, args.beam_size, config.max_length, run=RunSettings(),
                                       guidance=guidance)
            scores = caption_metrics(references, captions, spice=False, metrics=("Bleu", "CIDEr"))["overall"]
            report = hallucination_report(captions, data)
            line = {"checkpoint": args.checkpoint, "split": args.split, "threshold": threshold, "penalty": penalty,
                    "CIDEr": scores["CIDEr"], "Bleu_4": scores["Bleu_4"],
                    "CHAIRi": report["chair"]["overall"]["CHAIRi"], "CHAIRs": report["chair"]["overall"]["CHAIRs"],
                    "probe_rate": report["probes"]["rate"], "probe_ci": report["probes"]["rate_ci"],
                    "mentions": report["chair"]["overall"]["mentions"],
                    "frequent": {name: entry["value"] for name, entry in report["frequent_words"]["overall"].items()},
                    "seconds": round(time.perf_counter() - started, 1),
                    "captions": {str(k): v for k, v in captions.items()}}
            out.write(json.dumps(line) + "\n")
            out.flush()
            print({k: v for k, v in line.items() if k != "captions"}, flush=True)


if __name__ == "__main__":
    main()
