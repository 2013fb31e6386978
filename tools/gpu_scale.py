"""``make gpu-check``'s headline (issue 21): LRP of every word of a whole 5,000-image test split at the paper's scale
(adaptive-attention captioner, VGG16 encoder on 224x224 images, hidden 512), timed through the ``capxai`` commands.

    python tools/gpu_scale.py --out runs/gpu-check/explain5k --result runs/gpu-check/explain5k.json

1. ``capxai data scenes``: 200 training, 20 validation and 5,000 test scenes at 224 px in ``OUT/scenes`` (reused
   when a complete set of these sizes is there; about 2 minutes on one core otherwise).
2. A checkpoint in ``OUT/model``, untrained (VGG16 and the decoder from random weights, the scenes' vocabulary):
   what an explanation costs does not depend on the weights, and an untrained model rarely says ``<end>``, so
   every caption has the most words (16): the worst case. No training also means no validation CIDEr, whose
   tokenizer needs Java, which a bare GPU machine may lack.
3. ``capxai explain --split test --method lrp`` over every test image into ``OUT/explain``, timed (the wall time of
   the whole command: start, loading, decoding in its workers, explaining, writing the shards).

A full explanation is large (per word: the pixels' relevance ``3 x 224 x 224`` and the feature grid's
``196 x 512`` in float32, about 1 MB; some 50 GB for 5,000 captions of about 10 words, more than a GPU machine's
disk may hold), so each shard's tensors (``shard-NNNNN.pt``) are deleted once the shard is complete, and their
size counted; ``--keep-shards`` keeps them. The shards' small ``.json`` files stay (the words explained).
Writes ``RESULT`` (json): images, explained words, wall seconds, images/s and words/s, bytes written, the device, and
the times of the other steps. ``--test``, ``--size`` and ``--device`` make a small run elsewhere (e.g. on a CPU).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

METHOD = "lrp"


def capxai(*arguments) -> float:
    """Runs ``python -m capxai ARGUMENTS`` (its output goes to ours); returns its wall time in seconds."""
    command = [sys.executable, "-m", "capxai", *map(str, arguments)]
    print("+ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def scenes_ready(folder: Path, sizes: dict) -> bool:
    """True when ``folder`` holds a complete scene set of these sizes (``capxai data scenes`` writes atomically: its
    split file exists only when everything does)."""
    try:
        config = json.loads((folder / "dataset_scenes.json").read_text()).get("config", {})
    except (OSError, ValueError):
        return False
    return all(config.get(name) == value for name, value in sizes.items())


class ShardSweeper(threading.Thread):
    """Counts (and unless ``keep``, deletes) the tensors of every complete shard of the explain run in ``folder``:
    a shard is complete once its ``.images.json`` exists, which ``capxai explain`` writes last."""

    def __init__(self, folder: Path, keep: bool):
        super().__init__(daemon=True)
        self.folder, self.keep = folder, keep
        self.done = threading.Event()
        self.seen = set()
        self.bytes = 0

    def sweep(self) -> None:
        for marker in sorted(self.folder.glob("shard-*.images.json")):
            tensors = marker.with_name(marker.name[:-len(".images.json")] + ".pt")
            if tensors in self.seen or not tensors.is_file():
                continue
            self.seen.add(tensors)
            self.bytes += tensors.stat().st_size
            if not self.keep:
                tensors.unlink()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.sweep()

    def finish(self) -> None:
        self.done.set()
        self.join()
        self.sweep()


def write_untrained_checkpoint(path: Path, split_file: Path, image_size: int, hidden: int) -> None:
    """A capxai model checkpoint of the adaptive captioner with the VGG16 encoder, random weights (seed 0), the
    vocabulary of the split's training captions, at most 16 words a caption."""
    import dataclasses
    import warnings

    import torch
    from capxai.data.captions import load_karpathy
    from capxai.data.vocabulary import Vocabulary
    from capxai.train import TrainConfig, build_model, save_checkpoint

    entries = [entry for entry in load_karpathy(split_file) if entry["split"] in ("train", "restval")]
    vocabulary = Vocabulary.build([s["tokens"] for entry in entries for s in entry["sentences"]], 5)
    config = TrainConfig(model="adaptive", encoder="vgg16", hidden=hidden, attention_dim=hidden,
                         image_size=image_size, max_length=16)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random initialisation", category=UserWarning)
        model = build_model(config, len(vocabulary))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "config": dataclasses.asdict(config),
                           "vocabulary": vocabulary.words, "epoch": 0}, kind="model")


def explained_words(folder: Path) -> tuple:
    """(images, words) the shards of ``folder`` explain, from their ``.json`` files."""
    images = words = 0
    for meta in folder.glob("shard-*.json"):
        if meta.name.endswith(".images.json"):
            continue
        rows = json.loads(meta.read_text()).get("words") or []
        images += len(rows)
        words += sum(len(row) for row in rows)
    return images, words


def device_name(device: str) -> str:
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{os.cpu_count()} CPU cores"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (scenes, model, explain)")
    parser.add_argument("--result", type=Path, required=True, help="the json to write")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--keep-shards", action="store_true", help="keep the explanations' tensors (~10 MB an image)")
    args = parser.parse_args(argv)

    scenes, model, explained = args.out / "scenes", args.out / "model", args.out / "explain"
    times = {}
    sizes = {"train": args.train, "val": args.val, "test": args.test, "image_size": args.size}
    reused = scenes_ready(scenes, sizes)
    if reused:
        print(f"reusing the scenes in {scenes}", flush=True)
    else:
        times["scenes_seconds"] = capxai("data", "scenes", "--out", scenes, "--train", args.train, "--val", args.val,
                                         "--test", args.test, "--size", args.size, "--overwrite")
    split_file = scenes / "dataset_scenes.json"
    write_untrained_checkpoint(model / "best.pt", split_file, args.size, args.hidden)

    shutil.rmtree(explained, ignore_errors=True)  # every shard is explained (and timed) anew
    sweeper = ShardSweeper(explained / METHOD, args.keep_shards)
    sweeper.start()
    try:
        seconds = capxai("explain", "--checkpoint", model / "best.pt", "--split-file", split_file, "--image-root",
                         scenes, "--split", "test", "--method", METHOD, "--device", args.device, "--out", explained,
                         "--overwrite")
    finally:
        sweeper.finish()
    images, words = explained_words(explained / METHOD)
    if images != args.test:
        raise SystemExit(f"gpu_scale: the explain run's shards hold {images} images, expected {args.test}")
    result = {"images": images, "words": words, "words_per_image": words / images, "seconds": seconds,
              "images_per_second": images / seconds, "words_per_second": words / seconds,
              "bytes_written": sweeper.bytes, "megabytes_per_image": sweeper.bytes / images / 1e6,
              "shards_kept": args.keep_shards, "method": METHOD, "model": "adaptive", "encoder": "vgg16",
              "image_size": args.size, "hidden": args.hidden, "device": args.device,
              "device_name": device_name(args.device), "scenes_reused": reused, **times}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.result.with_name(args.result.name + ".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(args.result)
    print(f"explained {images} images ({words} words) in {seconds:.1f} s: {images / seconds:.1f} images/s, "
          f"{words / seconds:.1f} words/s on {result['device_name']}; wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
