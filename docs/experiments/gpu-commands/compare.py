"""compare two outputs of run.sh: model weights, histories (without times), captions, metrics, explanations"""
import json, sys, torch
from pathlib import Path
a, b = map(Path, sys.argv[1:3])
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in ("seconds", "train_seconds", "run_id", "run", "checkpoint", "start_checkpoint", "data_seconds", "device", "precision", "workers", "processes")}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
bad = 0
for f in ["model/best.pt", "model/last.pt", "ft/best.pt"]:
    x, y = torch.load(a / f, weights_only=True), torch.load(b / f, weights_only=True)
    for k in x["model"]:
        if not torch.equal(x["model"][k], y["model"][k]):
            print("DIFF", f, k); bad += 1; break
for f in ["model/history.json", "ft/history.json", "eval/captions_test_beam3.json", "eval/metrics_test_beam3.json", "eval/hallucination_test_beam3.json", "eval/explanations_test_beam3.json"]:
    x, y = strip(json.loads((a / f).read_text())), strip(json.loads((b / f).read_text()))
    if x != y:
        print("DIFF", f); bad += 1
        if isinstance(x, dict):
            for k in x:
                if x.get(k) != y.get(k): print("   key", k)
for p in sorted((a / "explain/lrp").glob("shard-*.pt")):
    x, y = torch.load(p, weights_only=True), torch.load(b / "explain/lrp" / p.name, weights_only=True)
    for k, v in x.items():
        if isinstance(v, torch.Tensor) and not torch.equal(v, y[k]):
            print("DIFF", p.name, k); bad += 1
print("identical" if not bad else f"{bad} differences")
