"""Figures for docs/: a trained scenes captioner's own captions of a few test images, every word under every method,
among them probe images whose caption names the absent co-occurrence partner.

    .venv/bin/python tools/explain_figures.py --checkpoint runs/models/adaptive/best.pt --scenes runs/scenes \
        --out docs/figures
"""
import argparse
import json
from pathlib import Path

import numpy as np

from capxai.data.captions import CaptionDataset, collate, open_image
from capxai.evaluate.hallucination import ObjectWords
from capxai.explain import METHODS
from capxai.report.figures import overview_figure
from capxai.models import load_trained


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--scenes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ordinary", type=int, default=2, help="non-probe images to draw")
    parser.add_argument("--probes", type=int, default=2, help="probe images naming the absent partner to draw")
    parser.add_argument("--search", type=int, default=300, help="test images to caption in search of probes")
    args = parser.parse_args()

    model, vocabulary, config = load_trained(args.checkpoint)
    split_file = args.scenes / "dataset_scenes.json"
    dataset = CaptionDataset(split_file, args.scenes, "test", vocabulary, config.max_length, config.image_size)
    objects = ObjectWords.load(args.scenes / "synonyms.txt")
    explainers = {name: method(model, vocabulary=vocabulary) for name, method in METHODS.items()}
    chosen, summary = {"ordinary": [], "probe": []}, []
    probes_first = sorted(range(len(dataset)), key=lambda i: "probe" not in dataset.entries[i])
    for position in probes_first[:args.search]:
        entry = dataset.entries[position]
        kind = "probe" if "probe" in entry else "ordinary"
        limit = args.probes if kind == "probe" else args.ordinary
        if len(chosen[kind]) >= limit:
            if all(len(chosen[k]) >= (args.probes if k == "probe" else args.ordinary) for k in chosen):
                break
            continue
        batch = collate([dataset[position]])
        lrp = explainers["lrp"].explain(batch["images"], max_length=config.max_length)
        caption = " ".join(w for w in lrp.words[0] if w != "<end>")
        if kind == "probe" and entry["probe"]["absent"] not in objects.mentions(caption):
            continue
        chosen[kind].append(position)
        explanations = [lrp] + [explainer.explain(batch["images"], captions=lrp.captions)
                                for name, explainer in explainers.items() if name != "lrp"]
        image_path = args.scenes / entry.get("filepath", "") / entry["filename"]
        picture = np.asarray(open_image(image_path).resize((config.image_size,) * 2), dtype=np.float32) / 255.0
        note = (f"probe: {entry['probe']['present']} shown, {entry['probe']['absent']} absent"
                if kind == "probe" else "")
        path = overview_figure(explanations, picture, 0, args.out / f"explain_{kind}_{batch['image_ids'][0]}.png",
                               f"'{caption}' {note}")
        summary.append({"image": str(image_path), "caption": caption, "kind": kind, "figure": str(path)})
        print(path, caption, note)
    (args.out / "figures.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
