"""Explanations written to files: a few images (an ``explanation.pt`` per method and a figure per image and word),
or a whole split in shards (one ``.pt`` + ``.json`` per shard of images, resumable, each process of ``torchrun``
taking its own shards). What ``capxai explain`` runs."""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from capxai._io import atomic_write_json
from capxai.data.captions import CaptionDataset, default_transform, image_id_of, open_image
from capxai.explain import METHODS, Explanation
from capxai.report.figures import word_figures

ALL_METHODS = tuple(METHODS)


def methods_of(method: str) -> List[str]:
    """``"all"`` or one of ``ALL_METHODS``."""
    if method == "all":
        return list(ALL_METHODS)
    if method not in METHODS:
        raise ValueError(f"capxai explain: method must be 'all' or one of {list(ALL_METHODS)}, got {method!r}")
    return [method]


def make_explainer(method: str, model, vocabulary, composite: str = "paper"):
    if method == "lrp":
        return METHODS[method](model, composite=composite, vocabulary=vocabulary)
    return METHODS[method](model, vocabulary=vocabulary)


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")


def explain_images(model, vocabulary, image_size: int, image_paths: Sequence[Path], out_dir, methods: Sequence[str],
                   captions: Optional[Sequence[str]] = None, beam_size: int = 1, max_length: int = 16,
                   composite: str = "paper", overwrite: bool = False, figures: bool = True) -> Dict[str, Path]:
    """Explains ``image_paths`` (their own captions, or ``captions``) with each method: ``OUT/METHOD/explanation.pt``
    (+ ``.json``) and, with ``figures``, ``OUT/METHOD/IMAGE/TT_WORD.png`` per word."""
    out_dir = Path(out_dir)
    if captions is not None and len(captions) != len(image_paths):
        raise ValueError(f"capxai explain: {len(captions)} captions for {len(image_paths)} images")
    _refuse_existing([out_dir / method / "explanation.pt" for method in methods], overwrite)
    pictures = [open_image(Path(path)).resize((image_size, image_size)) for path in image_paths]
    transform = default_transform(image_size)
    images = torch.stack([transform(picture) for picture in pictures])
    display = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in pictures]) / 255.0
    names = _unique_names(image_paths)
    written = {}
    for method in tqdm(methods, desc="explaining", unit="method", disable=len(methods) == 1):
        explanation = make_explainer(method, model, vocabulary, composite).explain(
            images, captions=list(captions) if captions is not None else None, beam_size=beam_size,
            max_length=max_length)
        written[method] = explanation.save(out_dir / method / "explanation.pt")
        if figures:
            word_figures(explanation, display, out_dir / method, names)
    return written


def _unique_names(paths: Sequence[Path]) -> List[str]:
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def process_rank() -> Tuple[int, int]:
    """(rank, world size) of this process under ``torchrun`` (its RANK / WORLD_SIZE), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def explain_split(model, vocabulary, split_file, image_root, split: str, out_dir, methods: Sequence[str],
                  image_size: int, limit: Optional[int] = None, shard_size: int = 32, beam_size: int = 1,
                  max_length: int = 16, composite: str = "paper", progress: bool = True) -> List[Path]:
    """Explains the model's own captions of a split, ``shard_size`` images at a time: ``OUT/METHOD/shard-NNNNN.pt``
    (+ ``.json`` with the image ids and captions). A shard whose files exist is complete (written atomically) and
    skipped, so an interrupted run resumes; process r of W (torchrun) takes shards r, r + W, ..."""
    if shard_size < 1:
        raise ValueError(f"capxai explain: --shard-size must be >= 1, got {shard_size}")
    dataset = CaptionDataset(split_file, image_root, split, vocabulary, max_length, image_size)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError(f"capxai explain: split {split!r} of {split_file} holds no image")
    dataset[0]  # an unreadable first image is found before any work
    explainers = {method: make_explainer(method, model, vocabulary, composite) for method in methods}
    rank, world = process_rank()
    shards = list(range(rank, (count + shard_size - 1) // shard_size, world))
    written = []
    for shard in tqdm(shards, desc=f"explaining {split} (process {rank + 1}/{world})", unit="shard",
                      disable=not progress):
        positions = range(shard * shard_size, min((shard + 1) * shard_size, count))
        pending = [method for method in methods
                   if not _shard_done(Path(out_dir) / method / f"shard-{shard:05d}.pt")]
        if not pending:
            continue
        items = [dataset[i] for i in positions]
        images = torch.stack([item["image"] for item in items])
        ids = [image_id_of(dataset.entries[i], i) for i in positions]
        for method in pending:
            explanation = explainers[method].explain(images, beam_size=beam_size, max_length=max_length)
            path = Path(out_dir) / method / f"shard-{shard:05d}.pt"
            written.append(_save_shard(explanation, path, ids))
    return written


def _shard_done(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file() and _shard_ids_path(path).is_file()


def _shard_ids_path(path: Path) -> Path:
    return path.with_name(path.stem + ".images.json")


def _save_shard(explanation: Explanation, path: Path, image_ids: Sequence[int]) -> Path:
    explanation.save(path)
    captions = [" ".join(w for w in words if w != "<end>") for words in (explanation.words or [])]
    atomic_write_json(_shard_ids_path(path), {"image_ids": list(image_ids), "captions": captions})
    return path


def load_shards(folder) -> List[dict]:
    """The shards a split run wrote into ``folder`` (one method's): ``[{"explanation", "image_ids", "captions"}]``."""
    shards = []
    for path in sorted(Path(folder).glob("shard-*.pt")):
        if not _shard_done(path):
            continue
        meta = json.loads(_shard_ids_path(path).read_text())
        shards.append({"explanation": Explanation.load(path), **meta})
    return shards
