"""Issue 11 analysis: what LRP-inference fine-tuning's weights look like at the words that matter.

For a model and its own test captions (an evaluation folder), teacher-force each probe image's caption and, at
every object mention, compute the LRP weights of the output layer's two inputs (c_hat / gated context, and h2 / h)
and the share of the explained logit's relevance on the visual term (the first). Compare hallucinated partner
mentions on the probes with correctly named objects.
Usage: python analyze_weights.py CHECKPOINT EVAL_DIR SPLIT_FILE IMAGE_ROOT
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from capxai.data.captions import image_id_of, open_split
from capxai.evaluate.hallucination import load_hallucination_data
from capxai.explain.decoder_lrp import Rules, two_term_relevance
from capxai.train import load_stop_words, load_trained, stop_word_mask
from capxai.train.lrp_weights import _explained_output_relevance, dropout_off

checkpoint, eval_dir, split_file, image_root = sys.argv[1:5]
torch.set_num_threads(1)
model, vocabulary, config = load_trained(checkpoint)
captions = {c["image_id"]: c["caption"] for c in json.loads((Path(eval_dir) / "captions_test_beam3.json").read_text())}
dataset = open_split(split_file, image_root, "test", vocabulary, config.max_length, config.image_size)
root = Path(split_file).parent
data = load_hallucination_data(root / "annotations" / "instances_test.json", root / "synonyms.txt", split_file)
skipped = stop_word_mask(vocabulary, load_stop_words())
groups = {"hallucinated partner (probe)": [], "named present object (probe)": []}
positions = [p for p, e in enumerate(dataset.entries) if image_id_of(e, p) in data.probes]
with torch.no_grad():
    for start in range(0, len(positions), 50):
        batch = [dataset[p] for p in positions[start:start + 50]]
        ids = [item["image_id"] for item in batch]
        words = [captions[i].split() for i in ids]
        tokens = [[vocabulary.start] + [vocabulary.index.get(w, 3) for w in ws] + [vocabulary.end]
                  for ws in words]
        length = max(map(len, tokens))
        tensor = torch.tensor([t + [0] * (length - len(t)) for t in tokens])
        images = torch.stack([item["image"] for item in batch])
        trace = model.captioner(model.encoder(images), tensor)
        first, second = (trace.activations[n] for n in model.captioner.output_terms)
        for row, image_id in enumerate(ids):
            absent = data.probes[image_id][1]
            for mention in data.objects.find(words[row]):
                t = mention.end - 1  # logits at step t predict caption word t (word t+1 of tokens)
                word = tensor[row, t + 1]
                total = (first[row, t] + second[row, t]).unsqueeze(0)
                relevance_total = _explained_output_relevance(model.captioner.output, total,
                                                              trace.logits[row, t].unsqueeze(0), word.unsqueeze(0),
                                                              0.01)
                r_first, r_second = two_term_relevance(first[row, t:t + 1], second[row, t:t + 1], relevance_total,
                                                       Rules(0.01))
                share = float(r_first.sum() / (r_first.sum() + r_second.sum()))
                w_first = r_first / r_first.abs().max() + 1
                w_second = r_second / r_second.abs().max() + 1
                top_is_word = int(trace.logits[row, t].argmax()) == int(word)
                key = ("hallucinated partner (probe)" if mention.category == absent else
                       "named present object (probe)" if mention.category in data.present[image_id] else None)
                if key:
                    groups[key].append((share, float(w_first.mean()), float(w_second.mean()),
                                        float((w_first - 1).abs().mean()), float((w_second - 1).abs().mean()),
                                        top_is_word, float(torch.softmax(trace.logits[row, t], -1)[word])))
for key, rows in groups.items():
    a = np.array(rows, dtype=float)
    print(f"{key}: n={len(a)}; relevance share on visual term {a[:, 0].mean():.3f} (median {np.median(a[:, 0]):.3f});"
          f" mean weight visual {a[:, 1].mean():.3f}, language {a[:, 2].mean():.3f}; mean |w-1| visual "
          f"{a[:, 3].mean():.3f}, language {a[:, 4].mean():.3f}; top word is the word {a[:, 5].mean():.3f}; "
          f"probability {a[:, 6].mean():.3f}")
