"""``make gpu-check``'s headline (issue 21): LRP of every word of a whole 5,000-image test split at the paper's scale
(adaptive-attention captioner, VGG16 encoder on 224x224 images, hidden 512), timed through the ``capxai`` commands.

    python tools/gpu_scale.py --out runs/gpu-check/explain5k --result runs/gpu-check/explain5k.json

1. ``capxai data scenes``: 200 training, 20 validation and 5,000 test scenes at 224 px in ``OUT/scenes`` (reused
   when a complete set of these sizes is there; about 2 minutes on one core otherwise).
2. ``capxai train``: a checkpoint in ``OUT/model`` (VGG16 from random weights, one epoch on the 200 images: the
   captions are poor, which does not change what an explanation costs).
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
    times["train_seconds"] = capxai(
        "train", "--split-file", split_file, "--image-root", scenes, "--out", model, "--model", "adaptive",
        "--encoder", "vgg16", "--image-size", args.size, "--epochs", 1, "--hidden", args.hidden, "--attention-dim",
        args.hidden, "--batch-size", 32, "--device", args.device, "--overwrite")

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
