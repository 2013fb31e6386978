"""Object hallucination in captions: CHAIR (Rohrbach et al. 2018: the share of object mentions, and of captions,
naming an object the image does not contain) with CHAIR's conventions (:class:`~capxai.evaluate.objects.ObjectWords`;
ground truth from instance annotations and reference captions); the paper's frequent-word precision, recall and F1
(Sun et al. 2022); and, on the built-in scenes' probe images (category A shown without its planted partner B), how
often a caption names B anyway. Every rate carries a 95 % bootstrap interval over images."""
import dataclasses
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from capxai.data.annotations import SplitAnnotations, load_split_annotations
from capxai.data.captions import image_id_of, load_karpathy
from capxai.evaluate.objects import ObjectWords, caption_words, frequent_words
from capxai.evaluate.statistics import ratio_ci


def objects_per_image(instances_file) -> Dict[int, Set[str]]:
    """Category names present in each image of a COCO-format instances json (read with pycocotools). A file
    without categories, or with annotations that name none (a captions file given by mistake), is refused."""
    annotations = load_split_annotations(instances_file)
    return {image_id: annotations.annotated(image_id) for image_id in annotations.sizes}


def ground_truth_objects(annotations: SplitAnnotations, objects: ObjectWords) -> Dict[int, Set[str]]:
    """CHAIR's ground truth: the categories of an image's instance annotations AND those its reference captions
    name (a reference saying "a dog" makes "dog" right even where no box was drawn)."""
    present = {}
    for image_id in annotations.sizes:
        named = {mention.category for words in annotations.references.get(image_id, ())
                 for mention in objects.find(words)}
        present[image_id] = annotations.annotated(image_id) | named
    return present


def chair(captions: Mapping[int, str], present: Mapping[int, Set[str]], objects: ObjectWords) -> Dict[str, object]:
    """CHAIR (Rohrbach et al. 2018) as CHAIR's own tools write it: ``{"overall", "imgToEval"}``.

    ``overall``: CHAIR-i (hallucinated mentions / all object mentions; a category named twice counts twice) and
    CHAIR-s (captions with a hallucinated object / all captions), each with a 95 % bootstrap interval over images
    (``CHAIRi_ci``, ``CHAIRs_ci``), and the counts. ``imgToEval[image_id]``: CHAIR's per-caption fields
    (``mscoco_hallucinated_words`` as ``[word, category]``, ``mscoco_gt_words``, ``mscoco_generated_words``,
    ``hallucination_idxs``, ``words``) and ``metrics`` ``{CHAIRs, CHAIRi}``.
    """
    missing = [image_id for image_id in captions if image_id not in present]
    if missing:
        raise ValueError(f"chair: no ground-truth objects for image ids {missing[:5]} (missing annotations: are the "
                         "captions of another split?)")
    if not captions:
        raise ValueError("chair: no captions to score")
    per_image, wrong_counts, mention_counts = {}, [], []
    for image_id, caption in captions.items():
        words = caption_words(caption)
        found = objects.find(words)
        wrong = [m for m in found if m.category not in present[image_id]]
        wrong_counts.append(len(wrong))
        mention_counts.append(len(found))
        per_image[str(image_id)] = {
            "image_id": image_id, "caption": caption, "words": words,
            "mscoco_hallucinated_words": [[" ".join(words[m.start:m.end]), m.category] for m in wrong],
            "mscoco_gt_words": sorted(present[image_id]),
            "mscoco_generated_words": [m.category for m in found],
            "hallucination_idxs": [m.end - 1 for m in wrong],
            "metrics": {"CHAIRs": int(bool(wrong)), "CHAIRi": len(wrong) / len(found) if found else 0.0}}
    chair_i = ratio_ci(wrong_counts, mention_counts)
    chair_s = ratio_ci([float(count > 0) for count in wrong_counts], [1.0] * len(wrong_counts))
    overall = {"CHAIRi": chair_i["value"] or 0.0, "CHAIRi_ci": chair_i["ci"], "CHAIRs": chair_s["value"],
               "CHAIRs_ci": chair_s["ci"], "captions": len(captions), "mentions": sum(mention_counts),
               "hallucinated_mentions": sum(wrong_counts)}
    return {"overall": overall, "imgToEval": per_image}


def frequent_word_scores(captions: Mapping[int, str], references: Mapping[int, Sequence[Sequence[str]]],
                         words: Sequence[str]) -> Dict[str, object]:
    """The paper's precision, recall and F1 of frequent words (Sun et al. 2022): in the caption of an image, a
    frequent word is right when one of the image's references uses it (true positive), wrong otherwise (false
    positive); a frequent word of the references that the caption lacks is a false negative. ``overall`` pools the
    counts of all words (micro average) with 95 % bootstrap intervals over images; ``per_word`` gives each word's."""
    missing = [image_id for image_id in captions if image_id not in references]
    if missing:
        raise ValueError(f"frequent_word_scores: no references for image ids {missing[:5]}")
    vocabulary = set(words)
    counts = {word: [0, 0, 0] for word in words}  # tp, fp, fn
    tp, fp, fn = [], [], []
    for image_id, caption in captions.items():
        said = set(caption_words(caption)) & vocabulary
        expected = {word for reference in references[image_id] for word in reference} & vocabulary
        for word in said & expected:
            counts[word][0] += 1
        for word in said - expected:
            counts[word][1] += 1
        for word in expected - said:
            counts[word][2] += 1
        tp.append(len(said & expected))
        fp.append(len(said - expected))
        fn.append(len(expected - said))
    tp, fp, fn = (np.asarray(values, dtype=np.float64) for values in (tp, fp, fn))
    overall = {"precision": ratio_ci(tp, tp + fp), "recall": ratio_ci(tp, tp + fn),
               "f1": ratio_ci(2 * tp, 2 * tp + fp + fn)}
    per_word = {word: _precision_recall_f1(*counts[word]) for word in words}
    return {"overall": overall, "per_word": per_word, "words": list(words), "images": len(captions)}


def _precision_recall_f1(tp: int, fp: int, fn: int) -> Dict[str, object]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"precision": precision, "recall": recall, "f1": f1, "said": tp + fp, "in_references": tp + fn}


def scene_frequent_words(references: Mapping[int, Sequence[Sequence[str]]], objects: ObjectWords,
                         count: int = 10) -> List[str]:
    """The built-in scenes' frequent words (the paper's lists are for COCO and Flickr30K): the ``count`` object
    words the references use most often, from word frequencies."""
    frequency: Dict[str, int] = {}
    for sentences in references.values():
        for words in sentences:
            for mention in objects.find(words):
                word = words[mention.end - 1]
                frequency[word] = frequency.get(word, 0) + 1
    return [word for word, _ in sorted(frequency.items(), key=lambda item: (-item[1], item[0]))[:count]]


def probes_of(split_file) -> Dict[int, Tuple[str, str]]:
    """The built-in scenes' probe images of a Karpathy-style json: ``{image_id: (present, absent partner)}``."""
    return {image_id_of(entry, position): (entry["probe"]["present"], entry["probe"]["absent"])
            for position, entry in enumerate(load_karpathy(split_file)) if "probe" in entry}


def probe_hallucination(captions: Mapping[int, str], probes: Mapping[int, Tuple[str, str]], objects: ObjectWords,
                        present: Optional[Mapping[int, Set[str]]] = None) -> Dict[str, object]:
    """On each probe image that was captioned: does the caption name the absent partner (hallucination) and the
    present category? Returns the overall rate, one per (present, absent) pair, and ``per_image`` (1 where the
    caption names the absent partner; the paired comparisons of ``capxai finetune-table`` read it).

    With ``present`` (ground-truth objects per image) each pair also gets a control: how often captions of the other
    images, which show neither category, name the partner; a planted bias shows as ``rate`` well above it.
    """
    scored = [image_id for image_id in probes if image_id in captions]
    if not scored:
        raise ValueError("probe_hallucination: none of the captioned images is a probe image")
    named = {image_id: set(objects.mentions(caption)) for image_id, caption in captions.items()}
    pairs: Dict[str, Dict[str, float]] = {}
    for image_id in scored:
        first, partner = probes[image_id]
        pair = pairs.setdefault(f"{first}->{partner}", {"images": 0, "hallucinated": 0})
        pair["images"] += 1
        pair["hallucinated"] += partner in named[image_id]
    for key, pair in pairs.items():
        pair["rate"] = pair["hallucinated"] / pair["images"]
        if present is not None:
            first, partner = key.split("->")
            controls = [image_id for image_id in captions if image_id not in probes
                        and not {first, partner} & present.get(image_id, {first})]
            pair["control_images"] = len(controls)
            pair["control_rate"] = (sum(partner in named[i] for i in controls) / len(controls)) if controls else None
    rate = ratio_ci([float(probes[i][1] in named[i]) for i in scored], np.ones(len(scored)))
    result = {"images": len(scored), "rate": rate["value"], "rate_ci": rate["ci"],
              "present_named": sum(probes[i][0] in named[i] for i in scored) / len(scored), "pairs": pairs,
              "per_image": {str(i): int(probes[i][1] in named[i]) for i in scored}}
    if present is not None:
        controls = sum(p["control_images"] for p in pairs.values())
        result["control_rate"] = (sum(p["control_rate"] * p["control_images"] for p in pairs.values()
                                      if p["control_images"]) / controls) if controls else None
    return result


@dataclasses.dataclass
class HallucinationData:
    """What the hallucination metrics need of one split, read once: the object words, the split's annotations
    (boxes, references, probe marks), CHAIR's ground truth per image (``present``) and the frequent words."""

    objects: ObjectWords
    annotations: SplitAnnotations
    present: Dict[int, Set[str]]
    frequent: List[str]

    @property
    def probes(self) -> Dict[int, Tuple[str, str]]:
        return self.annotations.probes


def load_hallucination_data(instances_file, synonyms_file=None, split_file=None,
                            image_ids: Optional[Iterable[int]] = None,
                            frequent: Optional[Sequence[str]] = None) -> HallucinationData:
    """Reads and cross-checks the files before any captioning: the instances must cover every image of
    ``image_ids`` (the split to be captioned), and the synonyms must name categories that the instances hold (a
    synonyms file naming none of them would give CHAIR 0 whatever the captions say).

    Args:
        synonyms_file: a CHAIR-style synonyms file; None: CHAIR's own table for COCO (:meth:`ObjectWords.coco`).
        frequent: the frequent words for precision/recall/F1; None: the paper's list when the split file says it
            is COCO or Flickr30K, else the 10 object words the references use most.
    """
    objects = ObjectWords.load(synonyms_file) if synonyms_file is not None else ObjectWords.coco()
    annotations = load_split_annotations(instances_file, split_file,
                                         list(image_ids) if image_ids is not None else None)
    named, categories = set(objects.categories), annotations.categories
    source = synonyms_file if synonyms_file is not None else "CHAIR's COCO table"
    if not named & categories:
        raise ValueError(f"synonyms file {source} names none of the {len(categories)} categories of "
                         f"instances file {instances_file} (e.g. {sorted(categories)[:3]}); CHAIR would be 0 whatever "
                         "the captions say: give the synonyms file of this data set")
    unnamed = sorted(categories - named)
    if unnamed:
        warnings.warn(f"synonyms file {source} has no line for {len(unnamed)} categories of the instances "
                      f"(e.g. {unnamed[:3]}); captions naming them are not counted", stacklevel=2)
    if frequent is None:
        dataset = _dataset_name(split_file) if split_file is not None else None
        frequent = (frequent_words(dataset) if dataset in ("coco", "flickr30k")
                    else scene_frequent_words(annotations.references, objects))
    return HallucinationData(objects, annotations, ground_truth_objects(annotations, objects), list(frequent))


def _dataset_name(split_file) -> Optional[str]:
    import json
    from pathlib import Path

    try:
        name = json.loads(Path(split_file).read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name).lower() if name is not None else None


def hallucination_report(captions: Mapping[int, str], data: HallucinationData) -> Dict[str, object]:
    """For captions of one split: ``chair`` (CHAIR, :func:`chair`), ``frequent_words`` (the paper's P/R/F1) and,
    when probe images are among the captioned ones, ``chair_probes`` (CHAIR on them alone) and ``probes`` (the
    probe rate with its control)."""
    report: Dict[str, object] = {"chair": chair(captions, data.present, data.objects)}
    if data.frequent and data.annotations.references:
        report["frequent_words"] = frequent_word_scores(captions, data.annotations.references, data.frequent)
    probe_captions = {image_id: caption for image_id, caption in captions.items() if image_id in data.probes}
    if probe_captions:
        report["chair_probes"] = chair(probe_captions, data.present, data.objects)
        report["probes"] = probe_hallucination(captions, data.probes, data.objects, data.present)
    return report
