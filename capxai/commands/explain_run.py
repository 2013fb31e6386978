"""Explanations written to files: a few images (an ``explanation.pt`` per method and a figure per image and word),
or a whole split in shards (one ``.pt`` + ``.json`` per shard of images, resumable, each process of ``torchrun``
taking its own shards). What ``capxai explain`` runs: explanations are computed on the model's device, the split's
images decoded in the run's DataLoader workers, the files hold CPU tensors."""
import hashlib
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from capxai._io import atomic_write_json, file_sha256
from capxai.data.captions import default_transform, image_id_of, open_image, open_split, stack_images
from capxai.explain import Explanation, make_explainer
from capxai.outputs import OutputFolder
from capxai.runtime import RunSettings
from capxai.interrupts import stoppable

def explain_images(model, vocabulary, *, image_size: int, image_paths: Sequence[Path], out_dir,
                   methods: Sequence[str], captions: Optional[Sequence[str]] = None, beam_size: int = 1,
                   max_length: int = 16, composite: str = "paper", overwrite: bool = False, figures: bool = True,
                   checkpoint=None, contrast: Optional[str] = None,
                   transform: Optional[Callable] = None) -> Dict[str, Path]:
    """Explains ``image_paths`` (their own captions, or ``captions``) with each method: ``OUT/METHOD/explanation.pt``
    (+ ``.json``) and, with ``figures``, ``OUT/METHOD/IMAGE/TT_WORD.png`` per word. ``contrast``: a word each
    word is explained against ("this word rather than CONTRAST"). ``transform``: a PIL image (resized to
    ``image_size``) -> the model's input ``[3, S, S]`` (default: ImageNet normalisation, what capxai's models read).
    ``checkpoint``: the model's file, or folder (a Hugging Face model), stamped in the run with its sha256.

    Each method's folder holds one run: with ``overwrite`` the earlier run's files there (figures of other images
    included) are removed once the new explanation is computed; files capxai did not write stop the call before
    any work."""
    out_dir = Path(out_dir)
    output = _checked_output(out_dir, methods, image_paths, captions, figures, overwrite)
    pictures = [open_image(Path(path)).resize((image_size, image_size)) for path in image_paths]
    transform = transform if transform is not None else default_transform(image_size)
    images = torch.stack([transform(picture) for picture in pictures]).to(next(model.parameters()).device)
    display = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in pictures]) / 255.0
    names = _unique_names(image_paths)
    run = _run_stamp(output, checkpoint, image_paths)
    written = {}
    for method in stoppable(tqdm(methods, desc="explaining", unit="method", disable=len(methods) == 1)):
        explanation = make_explainer(method, model, vocabulary, composite).explain(
            images, captions=list(captions) if captions is not None else None, beam_size=beam_size,
            max_length=max_length, contrast=contrast)
        written[method] = _write(output, out_dir, explanation, run, display if figures else None, names)
    return written


def _checked_output(out_dir: Path, methods: Sequence[str], image_paths, captions, figures: bool,
                    overwrite: bool) -> OutputFolder:
    """Before any work: one caption per image, matplotlib for the figures (capxai[report]; without it the error
    names the extra), and each method's files writable (``overwrite``)."""
    if captions is not None and len(captions) != len(image_paths):
        raise ValueError(f"{len(captions)} --captions for {len(image_paths)} --images; give one caption per image")
    if figures:
        import capxai.report.figures  # noqa: F401
    output = OutputFolder(out_dir, "explain")
    for method in methods:
        target = out_dir / method / "explanation.pt"
        output.check_writable([target, target.with_suffix(".json")], overwrite, group=method)
    return output


def _write(output: OutputFolder, out_dir: Path, explanation: Explanation, run: dict, display, names,
           fed_words=None) -> Path:
    """One method's run: the earlier files of its folder removed, ``explanation.pt`` (+ ``.json``) and, with
    ``display`` (the images ``[B, H, W, 3]``), a figure per image and word; recorded in the output's manifest."""
    explanation.run = run
    output.remove_group(explanation.method)
    path = explanation.save(out_dir / explanation.method / "explanation.pt")
    files = [path, path.with_suffix(".json")]
    if display is not None:
        from capxai.report.figures import word_figures

        files += word_figures(explanation, display, out_dir / explanation.method, names, fed_words)
    output.record(files, explanation.method)
    return path


def explain_vlm_images(vlm, *, image_paths: Sequence[Path], out_dir, methods: Sequence[str],
                       captions: Optional[Sequence[str]] = None, max_length: int = 16,
                       contrast: Optional[str] = None, overwrite: bool = False, figures: bool = True,
                       checkpoint=None, chunk_size: Optional[int] = None,
                       memory_budget: Optional[int] = None) -> Dict[str, Path]:
    """What :func:`explain_images` writes, for a vision-language model (:class:`capxai.models.vlm.VisionLanguageModel`,
    explained by :func:`capxai.explain.vlm.explain_vlm`): each image at the size its processor gives it, the
    figures' word strips showing the prompt's relevance before the caption's words. ``chunk_size`` /
    ``memory_budget`` (bytes): how many words go through one backward (:func:`capxai.explain.vlm.explain_one`)."""
    from capxai.explain.vlm import explain_one, stack_rows

    out_dir = Path(out_dir)
    output = _checked_output(out_dir, methods, image_paths, captions, figures, overwrite)
    pictures = [open_image(Path(path)) for path in image_paths]
    contrast_id = None if contrast is None else vlm.token_id(contrast)
    forced = [vlm.caption(picture, max_length) if captions is None else vlm.teacher_forced(picture, captions[i])
              for i, picture in enumerate(pictures)]
    names, run, written = _unique_names(image_paths), _run_stamp(output, checkpoint, image_paths), {}
    for method in stoppable(tqdm(methods, desc="explaining", unit="method", disable=len(methods) == 1)):
        explanation = stack_rows([explain_one(vlm, one, method, contrast=contrast_id, chunk_size=chunk_size,
                                              memory_budget=memory_budget)
                                  for one in forced])
        height, width = explanation.heatmaps().shape[-2:]
        display = torch.stack([torch.from_numpy(np.asarray(picture.convert("RGB").resize((width, height)),
                                                           dtype=np.float32)) for picture in pictures]) / 255.0
        # the token fed at step 0 is the prompt's last, then the caption's words
        fed = [vlm.token_texts(explanation.captions[row, :1].tolist()) + words[:-1]
               for row, words in enumerate(explanation.words)]
        written[method] = _write(output, out_dir, explanation, run, display if figures else None, names, fed)
    return written


def _run_stamp(output: OutputFolder, checkpoint, image_paths: Sequence[Path] = ()) -> dict:
    """Which run wrote an explanation: its id, the model (and its sha256), the explained images' files (absolute: what
    ``capxai report`` shows the maps over)."""
    run = {"run_id": output.run_id, "images": [str(Path(path).resolve()) for path in image_paths]}
    if checkpoint is not None:
        run.update(checkpoint=str(checkpoint), checkpoint_sha256=_model_sha256(Path(checkpoint)))
    return run


def _model_sha256(path: Path) -> str:
    """A checkpoint file's sha256, or a model folder's: of its files' names and sha256s."""
    if not path.is_dir():
        return file_sha256(path)
    files = sorted(item for item in path.rglob("*") if item.is_file())
    listing = "\n".join(f"{item.relative_to(path)} {file_sha256(item)}" for item in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _unique_names(paths: Sequence[Path]) -> List[str]:
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def explain_split(model, vocabulary, *, split_file, image_root, split: str, out_dir, methods: Sequence[str],
                  image_size: int, limit: Optional[int] = None, shard_size: int = 32, beam_size: int = 1,
                  max_length: int = 16, composite: str = "paper", progress: bool = True, overwrite: bool = False,
                  checkpoint=None, run: Optional[RunSettings] = None, contrast: Optional[str] = None) -> List[Path]:
    """Explains the model's own captions of a split, ``shard_size`` images at a time: ``OUT/METHOD/shard-NNNNN.pt``
    (+ ``.json`` with the explanation's settings, ``.images.json`` with the image ids and captions), and
    ``OUT/METHOD/run.json`` with what the run is (checkpoint and split file sha256, split, settings, run id).

    A shard whose files exist is complete (written atomically) and skipped, so an interrupted run resumes; process
    r of W (torchrun) takes shards r, r + W, ... A folder holding shards of another run (another checkpoint, split
    or setting) is refused, or with ``overwrite`` emptied of them first: shards of two runs are never mixed.
    ``run``: its workers decode the images; its rank and world size (torchrun) choose the shards."""
    run = run if run is not None else RunSettings()
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    output = OutputFolder(out_dir, "explain")
    dataset = open_split(split_file, image_root, split, vocabulary, max_length, image_size, progress)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    identity = {"split_file_sha256": file_sha256(split_file), "split": split, "images": count,
                "shard_size": shard_size, "beam_size": beam_size, "max_length": max_length, "composite": composite,
                "checkpoint_sha256": file_sha256(checkpoint) if checkpoint is not None else None}
    if contrast is not None:  # only then: runs written before contrasts existed keep their identity
        identity["contrast"] = contrast
    rank, world = run.rank, run.world_size
    runs = {method: _start_split_run(output, method, identity, overwrite, rank) for method in methods}
    if overwrite:
        run.barrier()  # process 0 has removed an earlier run's shards before any process writes
    explainers = {method: make_explainer(method, model, vocabulary, composite) for method in methods}
    device = next(model.parameters()).device

    def positions_of(shard: int) -> range:
        return range(shard * shard_size, min((shard + 1) * shard_size, count))

    def pending_of(shard: int) -> List[str]:
        return [method for method in methods if not _shard_done(Path(out_dir) / method / f"shard-{shard:05d}.pt")]

    # the shards left to do are known before any image is decoded: the loader decodes only theirs, a shard a batch
    shards = [shard for shard in range(rank, (count + shard_size - 1) // shard_size, world) if pending_of(shard)]
    loader = run.loader(torch.utils.data.Subset(dataset, [i for shard in shards for i in positions_of(shard)]),
                        shard_size, stack_images)
    written = []
    with tqdm(zip(shards, loader), total=len(shards), desc=f"explaining {split} (process {rank + 1}/{world})",
              unit="shard", disable=not progress) as bar:
        for shard, images in stoppable(bar):
            positions, pending = positions_of(shard), pending_of(shard)
            images = images.to(device, non_blocking=True)
            ids = [image_id_of(dataset.entries[i], i) for i in positions]
            for method in pending:
                explanation = explainers[method].explain(images, beam_size=beam_size, max_length=max_length,
                                                         contrast=contrast)
                explanation.run = runs[method]
                path = Path(out_dir) / method / f"shard-{shard:05d}.pt"
                written.append(_save_shard(explanation, path, ids))
                output.record([path, path.with_suffix(".json"), _shard_ids_path(path)], method,
                              runs[method]["run_id"])
    return written


def _start_split_run(output: OutputFolder, method: str, identity: dict, overwrite: bool, rank: int) -> dict:
    """The run of ``method``'s folder. Its id follows from what the run is (checkpoint, split, settings), so every
    torchrun process and a resumed run stamp the same one, and files of another id are another run's: refused, or
    with ``overwrite`` removed (by process 0, which the others wait for in :func:`explain_split`)."""
    fingerprint = json.dumps({**identity, "method": method}, sort_keys=True).encode()
    run_id = "split-" + hashlib.sha256(fingerprint).hexdigest()[:16]
    run = {**identity, "run_id": run_id, "method": method}
    run_file = output.path / method / "run.json"
    output.check_writable([run_file], overwrite=2)  # a run.json capxai did not write is refused
    if output.group_runs(method) - {run_id}:
        if not overwrite:
            previous = _read_json(run_file) if run_file.is_file() else {}
            keys = list(identity) + [key for key in previous if key not in identity and key not in run]
            changed = [key for key in keys if previous.get(key) != identity.get(key)]
            raise FileExistsError(f"{output.path / method} holds shards of another run (it differs in "
                                  f"{', '.join(changed) or 'its run id'}); pass --overwrite to replace them or "
                                  "choose another --out")
        if rank == 0:
            output.remove_group(method)
    if rank == 0 and not run_file.is_file():
        atomic_write_json(run_file, run)
        output.record([run_file], method, run_id)
    return run


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid json ({error})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not a capxai run file")
    return payload


def _shard_done(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file() and _shard_ids_path(path).is_file()


def _shard_ids_path(path: Path) -> Path:
    return path.with_name(path.stem + ".images.json")


def _save_shard(explanation: Explanation, path: Path, image_ids: Sequence[int]) -> Path:
    explanation.save(path)
    captions = [" ".join(w for w in words if w != "<end>") for words in (explanation.words or [])]
    atomic_write_json(_shard_ids_path(path), {"image_ids": list(image_ids), "captions": captions,
                                              "run_id": explanation.run.get("run_id")})
    return path


def load_shards(folder) -> List[dict]:
    """The shards a split run wrote into ``folder`` (one method's): ``[{"explanation", "image_ids", "captions",
    "run_id"}]``. Shards of another run than ``run.json``'s are refused (never mixed)."""
    folder = Path(folder)
    run_id = _read_json(folder / "run.json").get("run_id") if (folder / "run.json").is_file() else None
    shards = []
    for path in sorted(folder.glob("shard-*.pt")):
        if not _shard_done(path):
            continue
        meta = _read_json(_shard_ids_path(path))
        if meta.get("run_id") != run_id:
            raise ValueError(f"{path} belongs to run {meta.get('run_id')!r}, not to {folder}'s run {run_id!r}; "
                             "rerun capxai explain with --overwrite")
        shards.append({"explanation": Explanation.load(path), **meta})
    return shards
