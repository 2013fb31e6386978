"""Choosing a setting on the validation split, never on the split it is scored on (issue 35): the gate's threshold of
``capxai finetune --threshold auto`` and the setting of ``capxai evaluate --guided-decoding auto``.

Each candidate's captions of the validation split are scored by CIDEr and CHAIR-i (CHAIR's reading of the
validation instances: every annotated object present); the kept candidate has the lowest CHAIR-i among those whose
CIDEr is at most ``CIDER_TOLERANCE`` (2 %) under the reference's (baseline fine-tuning, or plain beam search) and
whose CHAIR-i is under it; when none qualifies, none is kept and the reason says why.
"""
import dataclasses
from typing import Callable, Dict, Hashable, Optional, Tuple

from capxai.data.captions import CaptionDataset, image_id_of
from capxai.evaluate.captioning import caption_dataset, references_of
from capxai.evaluate.hallucination import HallucinationData, chair
from capxai.evaluate.metrics import caption_metrics
from capxai.runtime import RunSettings

CIDER_TOLERANCE = 0.02  # a candidate's validation CIDEr may be at most 2 % under the reference's
SPLIT, BEAM = "val", 3


@dataclasses.dataclass(frozen=True)
class ValidationScores:
    """A model's (or a decoding's) captions of the validation split: CIDEr and CHAIR-i, over ``images``."""

    cider: float
    chair_i: float
    images: int


def score_captions(model, dataset: CaptionDataset, hallucination: HallucinationData, max_length: int,
                   run: Optional[RunSettings] = None, guidance: Optional[Callable] = None,
                   progress: bool = False) -> ValidationScores:
    """Captions ``dataset`` (beam 3, with ``guidance`` if given) and scores CIDEr and CHAIR-i."""
    if dataset.split != SPLIT:
        raise ValueError(f"score_captions: settings are chosen on the validation split, got {dataset.split!r}")
    captions = caption_dataset(model, dataset, BEAM, max_length, progress=progress, run=run, guidance=guidance)
    cider = caption_metrics(references_of(dataset), captions, metrics=("CIDEr",))["overall"]["CIDEr"]
    chair_i = chair(captions, hallucination.present, hallucination.objects)["overall"]["CHAIRi"]
    return ValidationScores(cider=float(cider), chair_i=float(chair_i), images=len(captions))


def dataset_ids(dataset: CaptionDataset):
    """The image ids of a split's dataset, in order (what its instances must cover)."""
    return [image_id_of(entry, position) for position, entry in enumerate(dataset.entries)]


def choose(candidates: Dict[Hashable, ValidationScores], reference: ValidationScores, reference_name: str,
           tolerance: float = CIDER_TOLERANCE) -> Tuple[Optional[Hashable], str]:
    """``(candidate, why)``: the candidate with the lowest CHAIR-i among those within ``tolerance`` of the
    reference's CIDEr and under its CHAIR-i (a tie goes to the smaller candidate: the lower threshold, the gate that
    masks less), or ``(None, why not)``."""
    floor = (1 - tolerance) * reference.cider
    kept = {name: scores for name, scores in candidates.items()
            if scores.cider >= floor and scores.chair_i < reference.chair_i}
    if not kept:
        return None, (f"no setting of {sorted(candidates)} lowered validation CHAIR-i ({reference_name} "
                      f"{reference.chair_i:.3f}) while keeping validation CIDEr within {tolerance:.0%} of "
                      f"{reference_name}'s {reference.cider:.3f}")
    chosen = min(kept, key=lambda name: (kept[name].chair_i, name))
    scores = kept[chosen]
    return chosen, (f"{chosen}: validation CHAIR-i {scores.chair_i:.3f} against {reference_name}'s "
                    f"{reference.chair_i:.3f}, CIDEr {scores.cider:.3f} against {reference.cider:.3f} (at most "
                    f"{tolerance:.0%} lower allowed)")


GUIDED_CANDIDATES = ((0.3, 2.0), (0.5, 1.0), (0.5, 2.0), (0.5, 4.0), (0.7, 2.0))  # (threshold, penalty)


def choose_guided_decoding(model, dataset: CaptionDataset, hallucination: HallucinationData, max_length: int,
                           run: Optional[RunSettings] = None, candidates=GUIDED_CANDIDATES,
                           progress: bool = False) -> Tuple[Optional[Tuple[float, float]], dict]:
    """``capxai evaluate --guided-decoding auto``: each ``(threshold, penalty)`` of ``candidates`` and plain beam
    search caption the validation split ``dataset``; the setting kept by :func:`choose` (plain beam search the
    reference). Returns ``(setting or None, the record: rule, every candidate's scores, the reason)``."""
    from capxai.explain.guided_decoding import VisualShareGuidance, object_word_mask

    objects = object_word_mask(dataset.vocabulary.words, hallucination.objects)
    plain = score_captions(model, dataset, hallucination, max_length, run, progress=progress)
    scores = {tuple(setting): score_captions(model, dataset, hallucination, max_length, run, progress=progress,
                                             guidance=VisualShareGuidance(model.captioner, objects, *setting))
              for setting in candidates}
    chosen, why = choose(scores, plain, "plain beam search")
    record = {"rule": f"lowest validation CHAIR-i with validation CIDEr within {CIDER_TOLERANCE:.0%} of plain beam "
                      "search's", "split": SPLIT, "beam_size": BEAM, "chosen": chosen, "why": why,
              "plain": dataclasses.asdict(plain),
              "candidates": {f"{threshold:g}:{penalty:g}": dataclasses.asdict(value)
                             for (threshold, penalty), value in scores.items()}}
    return chosen, record
