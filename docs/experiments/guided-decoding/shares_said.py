"""The visual share of the object words greedy decoding says, on 100 probe images of the test split, for the demo's
adaptive and multi-head models: python docs/experiments/guided-decoding/shares_said.py (reads runs/demo)."""
import torch, sys
from pathlib import Path
from capxai.models import load_trained, beam_search
from capxai.data.captions import open_split, collate
from capxai.evaluate.objects import ObjectWords
from capxai.explain.guided_decoding import object_word_mask, visual_share, visual_and_language
torch.set_num_threads(2)
for kind in ("adaptive", "multihead"):
    model, vocab, config = load_trained(f"runs/demo/captioner-{kind}/best.pt"); model.eval()
    ds = open_split(Path("runs/demo/scenes/dataset_scenes.json"), Path("runs/demo/scenes"), "test", vocab, 16, config.image_size)
    objects = object_word_mask(vocab.words, ObjectWords.load("runs/demo/scenes/synonyms.txt"))
    batch = collate([ds[i] for i in range(1000, 1100)])  # probes are in the second half
    cap = model.captioner
    shares = []
    with torch.no_grad():
        features = model.encoder(batch["images"])
        state = cap.init_state(features); words = torch.ones(100, dtype=torch.long)
        for step in range(12):
            logits, state, trace = cap.step(state, words)
            words = logits.argmax(-1)
            share = visual_share(cap.output, *visual_and_language(cap, trace))
            picked = share.gather(1, words[:, None])[:, 0]
            shares += [float(s) for s, w in zip(picked, words) if objects[w]]
    t = torch.tensor(shares)
    print(kind, "object words said:", len(shares), "share quantiles 10/50/90 %:", [round(float(q), 3) for q in t.quantile(torch.tensor([0.1, 0.5, 0.9]))], "below 0.5:", round(float((t < 0.5).float().mean()), 3))
