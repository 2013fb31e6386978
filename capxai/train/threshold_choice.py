"""``capxai finetune --method gated --threshold auto`` (issue 35): the gate's threshold chosen on the validation split
from what a COCO user has, the validation images' object annotations that CHAIR reads and the captions, never the
test split and never the hidden-instance annotations of the training images (what only the ``oracle`` arm reads).

Baseline fine-tuning and ``gated`` at each candidate threshold are fine-tuned from the same start with the same
seed and schedule (each in its own folder under ``OUT/threshold-choice/``, resumable); each captions the validation
split (beam 3), scored by CIDEr and CHAIR-i. The threshold kept is the candidate with the lowest validation CHAIR-i
among those whose validation CIDEr stays within ``CIDER_TOLERANCE`` (2 %) of baseline fine-tuning's and whose
CHAIR-i is below it. Its model becomes ``OUT``'s (``best.pt``, ``last.pt``, ``vocabulary.json``, ``history.json``,
the history recording the choice), and ``OUT/threshold_choice.json`` every candidate's scores. When no candidate
qualifies nothing is written to ``OUT`` but that file, and the error says why: a gate that does not help on the
model at hand is not run (its models stay in their folders).
"""
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from capxai._io import atomic_path, atomic_write_json, file_sha256
from capxai.data.captions import load_karpathy, open_split
from capxai.evaluate.hallucination import load_hallucination_data
from capxai.evaluate.validation_choice import (BEAM, CIDER_TOLERANCE, SPLIT, ValidationScores, choose, dataset_ids,
                                               score_captions)
from capxai.models.factory import load_trained
from capxai.outputs import OutputFolder
from capxai.runtime import RunSettings, default_run

CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)
CHOICE_FOLDER, CHOICE_FILE = "threshold-choice", "threshold_choice.json"


def validation_inputs(split_file: Path, instances: Optional[Path] = None,
                      synonyms: Optional[Path] = None) -> Tuple[Path, Optional[Path]]:
    """The validation split's instances json and the synonyms file, checked before any training: the split file
    must have validation images, the instances file must exist (default ``annotations/instances_val.json`` beside
    the split file; synonyms default ``synonyms.txt`` there, else CHAIR's COCO table)."""
    entries = load_karpathy(split_file)
    if not any(entry.get("split") == SPLIT for entry in entries):
        raise ValueError(f"--threshold auto chooses the threshold on the validation split, and {split_file} has no "
                         "'val' images; give a split file with a validation split, or a --threshold in [0, 1]")
    instances = Path(instances) if instances is not None else split_file.parent / "annotations" / "instances_val.json"
    if not instances.is_file():
        raise FileNotFoundError(f"--threshold auto scores CHAIR-i on the validation split and needs its instances "
                                f"json; {instances} does not exist")
    beside = split_file.parent / "synonyms.txt"
    return instances, (Path(synonyms) if synonyms is not None else beside if beside.is_file() else None)


def validation_scores(checkpoint: Path, split_file: Path, image_root: Path, instances: Path,
                      synonyms: Optional[Path], run: Optional[RunSettings] = None,
                      progress: bool = False) -> ValidationScores:
    """Captions the validation split with ``checkpoint`` (beam 3) and scores CIDEr and CHAIR-i
    (:func:`capxai.evaluate.validation_choice.score_captions`)."""
    run = default_run(run)
    model, vocabulary, config = load_trained(checkpoint, device=run.device)
    dataset = open_split(split_file, image_root, SPLIT, vocabulary, config.max_length, config.image_size, progress)
    hallucination = load_hallucination_data(instances, synonyms, split_file, dataset_ids(dataset))
    return score_captions(model, dataset, hallucination, config.max_length, run, progress=progress)


def choose_threshold(candidates: Dict[float, ValidationScores], baseline: ValidationScores,
                     tolerance: float = CIDER_TOLERANCE) -> Tuple[Optional[float], str]:
    """``(threshold, why)`` by the rule of :func:`capxai.evaluate.validation_choice.choose`, baseline fine-tuning
    the reference, or ``(None, why not)``."""
    threshold, why = choose(candidates, baseline, "baseline fine-tuning", tolerance)
    return threshold, (f"threshold {why}" if threshold is not None else why)


def finetune_with_threshold_choice(config, checkpoint, split_file, image_root, out_dir, progress: bool = True,
                                   overwrite: bool = False, run: Optional[RunSettings] = None,
                                   candidates: Optional[Sequence[float]] = None) -> dict:
    """``finetune`` of ``config`` (method ``gated``, threshold ``"auto"``) with the threshold chosen as the module
    says, among ``candidates`` (default :data:`CANDIDATES`). Returns the chosen model's history (its
    ``threshold_choice`` entry holds every candidate's scores)."""
    from capxai.train.finetune import finetune

    candidates = CANDIDATES if candidates is None else candidates

    run = default_run(run)
    if run.distributed:
        raise ValueError("--threshold auto runs in one process (it fine-tunes and evaluates one candidate after "
                         "another); give a threshold to fine-tune under torchrun")
    split_file, out_dir = Path(split_file), Path(out_dir)
    instances, synonyms = validation_inputs(split_file, synonyms=config.synonyms)
    output = OutputFolder(out_dir, "finetune")
    targets = [out_dir / name for name in ("best.pt", "last.pt", "vocabulary.json", "history.json", CHOICE_FILE)]
    output.check_writable(targets, overwrite, group="checkpoints")
    arms = {"baseline": dataclasses.replace(config, method="baseline", threshold=0.5)}
    arms.update({f"gated-{threshold:g}": dataclasses.replace(config, threshold=float(threshold))
                 for threshold in candidates})
    scores = {}
    for name, arm in arms.items():
        folder = out_dir / CHOICE_FOLDER / name
        finetune(arm, checkpoint, split_file, image_root, folder, progress=progress, overwrite=overwrite, run=run)
        scores[name] = validation_scores(folder / "best.pt", split_file, image_root, instances, synonyms, run,
                                         progress)
    baseline = scores.pop("baseline")
    by_threshold = {arms[name].threshold: value for name, value in scores.items()}
    threshold, why = choose_threshold(by_threshold, baseline)
    record = {"rule": f"lowest validation CHAIR-i with validation CIDEr within {CIDER_TOLERANCE:.0%} of baseline "
                      "fine-tuning's", "split": SPLIT, "beam_size": BEAM, "chosen": threshold, "why": why,
              "baseline": dataclasses.asdict(baseline),
              "candidates": {f"{value:g}": dataclasses.asdict(by_threshold[value]) for value in sorted(by_threshold)},
              "start_checkpoint_sha256": file_sha256(checkpoint), "instances": str(instances)}
    atomic_write_json(out_dir / CHOICE_FILE, record)
    output.record([out_dir / CHOICE_FILE], "checkpoints")
    if threshold is None:
        raise ValueError(f"--threshold auto: {why}; the gate is not run on this model (every candidate's model and "
                         f"scores: {out_dir / CHOICE_FOLDER}, {out_dir / CHOICE_FILE})")
    chosen = out_dir / CHOICE_FOLDER / f"gated-{threshold:g}"
    history = json.loads((chosen / "history.json").read_text())
    history["threshold_choice"] = record
    for name in ("best.pt", "last.pt", "vocabulary.json"):
        with atomic_path(out_dir / name) as path:
            shutil.copyfile(chosen / name, path)
    atomic_write_json(out_dir / "history.json", history)
    output.record(targets, "checkpoints")
    return history
