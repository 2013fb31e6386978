"""How well does the output layer's visual share of a ground-truth object word tell a hidden partner (named by the
captions, no pixel shows it) from a visible object? On the training images of the scenes, every caption is teacher
forced; at each object mention's head noun the share of its label (capxai.explain.guided_decoding.label_share) and
the model's probability of it are taken; ROC AUC of each for "hidden" against "visible" (the scenes' annotations
mark hidden instances). Beside them, two statistics of *where* the word is explained: its overlap with the earlier
object words of the caption (the largest cosine similarity between the word's map over the feature grid and an
earlier object word's map), from the attention weights and from LRP's positive relevance on the grid (decoder
LRP, all words at once). A hidden partner is predicted from its occluder's pixels, so its map should repeat the
occluder's. Usage:

    python docs/experiments/explanation-gating/measure_share.py CHECKPOINT SPLIT_FILE IMAGE_ROOT [--split train]
        [--images 1000] [--out shares.json]
"""
import argparse
import json
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from capxai.data.annotations import load_split_annotations
from capxai.data.captions import collate, image_id_of, open_split
from capxai.evaluate.objects import ObjectWords
from capxai.explain.forward import teacher_force
from capxai.explain.guided_decoding import label_share, visual_and_language
from capxai.explain import LRP
from capxai.models import load_trained
from capxai.models.contract import attention_of


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("checkpoint", "split_file", "image_root"):
        parser.add_argument(name)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, vocabulary, config = load_trained(args.checkpoint)
    model.eval()
    split_file = Path(args.split_file)
    dataset = open_split(split_file, Path(args.image_root), args.split, vocabulary, config.max_length,
                         config.image_size)
    ids = [image_id_of(entry, position) for position, entry in enumerate(dataset.entries)]
    annotations = load_split_annotations(split_file.parent / "annotations" / f"instances_{args.split}.json",
                                         split_file, ids)
    objects = ObjectWords.load(split_file.parent / "synonyms.txt")
    captioner = model.captioner
    rows = []
    count = min(args.images, len(dataset))
    for begin in range(0, count, args.batch_size):
        batch = collate([dataset[i] for i in range(begin, min(count, begin + args.batch_size))])
        features = model.encoder(batch["images"])
        captions, real = batch["captions"], batch["caption_mask"]
        images, per_image = captions.shape[:2]
        flat = captions.reshape(images * per_image, -1)
        keep = real.reshape(-1)
        flat, owner = flat[keep], torch.arange(images).repeat_interleave(per_image)[keep]
        forward = teacher_force(captioner, features[owner], flat)
        trace = {name: forward.stacked(name).transpose(0, 1) for name in forward.steps[0]}  # [N, T, ...]
        visual, language = visual_and_language(captioner, trace)
        labels = flat[:, 1:]
        shares = label_share(captioner.output, visual, language, labels)  # [N, T]
        key = attention_of(forward.steps[0], type(captioner).__name__)
        attention = forward.stacked(key).transpose(0, 1).float()  # [N, T, (heads,) regions]
        if attention.dim() == 4:
            attention = attention.mean(2)
        relevance = LRP(captioner).explain(features=features[owner], captions=flat).feature_relevance
        relevance = relevance.sum(-1).clamp_min(0).float()  # [N, T, regions]: positive relevance per region
        probabilities = torch.softmax(forward.logits.float(), -1).gather(2, labels.unsqueeze(2)).squeeze(2)
        for row in range(flat.shape[0]):
            image_id = int(batch["image_ids"][owner[row]])
            words = vocabulary.decode(flat[row, 1:].tolist())
            earlier = []
            for mention in objects.find(words):
                position = mention.end - 1  # the head noun: label at step `position`
                overlaps = {name: max((float(torch.nn.functional.cosine_similarity(maps[row, position],
                                                                                   maps[row, before], dim=0))
                                       for before in earlier), default=0.0)
                            for name, maps in (("attention", attention), ("lrp", relevance))}
                earlier.append(position)
                hidden = mention.category in annotations.hidden.get(image_id, set())
                visible = mention.category in annotations.boxes.get(image_id, {})
                if not (hidden or visible):
                    continue
                rows.append({"image_id": image_id, "category": mention.category, "hidden": hidden,
                             "share": float(shares[row, position]),
                             "probability": float(probabilities[row, position]),
                             "overlap_attention": overlaps["attention"], "overlap_lrp": overlaps["lrp"],
                             "first": len(earlier) == 1})
    hidden = [r for r in rows if r["hidden"]]
    truth = [r["hidden"] for r in rows]
    summary = {"checkpoint": args.checkpoint, "split": args.split, "images": count, "mentions": len(rows),
               "hidden_mentions": len(hidden),
               "mean_share_hidden": sum(r["share"] for r in hidden) / max(1, len(hidden)),
               "mean_share_visible": sum(r["share"] for r in rows if not r["hidden"]) / max(1, len(rows) - len(hidden)),
               "auc_low_share": roc_auc_score(truth, [-r["share"] for r in rows]),
               "auc_low_probability": roc_auc_score(truth, [-r["probability"] for r in rows])}
    later = [r for r in rows if not r["first"]]  # words after an earlier object word: the overlap is defined
    later_truth = [r["hidden"] for r in later]
    summary.update({"later_mentions": len(later), "later_hidden": sum(later_truth),
                    "auc_overlap_attention": roc_auc_score(later_truth, [r["overlap_attention"] for r in later]),
                    "auc_overlap_lrp": roc_auc_score(later_truth, [r["overlap_lrp"] for r in later]),
                    "auc_low_share_later": roc_auc_score(later_truth, [-r["share"] for r in later]),
                    "auc_low_probability_later": roc_auc_score(later_truth, [-r["probability"] for r in later])})
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as out:
            json.dump({"summary": summary, "rows": rows}, out)


if __name__ == "__main__":
    main()
