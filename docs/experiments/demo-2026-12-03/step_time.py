"""One training step of the demo's recipe, alone, one thread: python docs/experiments/demo-2026-12-03/step_time.py
adaptive|multihead|transformer [CAPTIONS_PER_IMAGE] (reads runs/demo/scenes; mean of 5 steps after one warm-up)."""
import time, sys, torch
from capxai.data.vocabulary import Vocabulary
from capxai.data.captions import collate, open_split, load_karpathy
from capxai.train import TrainConfig, build_model, train_step
torch.set_num_threads(1)
from capxai.data.captions import CaptionDataset
import json
split="runs/demo/scenes/dataset_scenes.json"
entries=[e for e in load_karpathy(split) if e["split"]=="train"]
vocab=Vocabulary.build([s["tokens"] for e in entries for s in e["sentences"]], min_count=5)
ds=CaptionDataset(split,"runs/demo/scenes","train",vocab,16,96)
batches=[collate([ds[i] for i in range(b*32,(b+1)*32)], int(sys.argv[2]) if len(sys.argv)>2 else 0) for b in range(6)]
kind=sys.argv[1]
args=dict(hidden=128, attention_dim=64, dropout=0.3, lr=1e-3) if kind!="transformer" else dict(hidden=96, heads=4, layers=2, dropout=0.1, lr=1e-3)
cfg=TrainConfig(model=kind, **args)
model=build_model(cfg, len(vocab.words))
opt=torch.optim.Adam(model.parameters(), lr=1e-3)
train_step(model,opt,batches[0],2.0)
t=time.perf_counter()
for b in batches[1:]: train_step(model,opt,b,2.0)
print(kind, sys.argv[2:] , "s/batch", (time.perf_counter()-t)/5)
