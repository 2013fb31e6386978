"""Object hallucination in captions: CHAIR (Rohrbach et al. 2018: the share of object mentions, and of captions,
naming an object the image does not contain) from a CHAIR-style synonyms file and COCO-format instances read with
pycocotools; and, on the built-in scenes' probe images (category A shown without its planted partner B), how often a
caption names B anyway."""
import dataclasses
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

from capxai.data.captions import image_id_of, load_karpathy
from capxai.data.coco import read_coco


def _plural_forms(word: str) -> Tuple[str, ...]:
    forms = (word, word + "s", word + "es")
    return forms + ((word[:-1] + "ies",) if word.endswith("y") else ())


class ObjectWords:
    """Which object category each word (or phrase) of a caption names, from a CHAIR-style synonyms file: one line
    per category, ``category, synonym, synonym ...`` (the first name is the category's). Plurals (``-s``, ``-es``,
    ``-ies``) count as the word; phrases of several words are matched before single words."""

    def __init__(self, synonyms: Mapping[str, Iterable[str]]):
        self.categories = list(synonyms)
        self._phrases: Dict[Tuple[str, ...], str] = {}
        for category, names in synonyms.items():
            for name in [category, *names]:
                words = tuple(name.lower().split())
                for last in _plural_forms(words[-1]):
                    self._phrases[words[:-1] + (last,)] = category
        self._longest = max((len(phrase) for phrase in self._phrases), default=1)

    @classmethod
    def load(cls, path) -> "ObjectWords":
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"synonyms file {path} does not exist") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"synonyms file {path} is not text ({error})") from None
        synonyms = {}
        for number, line in enumerate(lines, 1):
            names = [name.strip() for name in line.split(",") if name.strip()]
            if not names:
                continue
            if names[0] in synonyms:
                raise ValueError(f"synonyms file {path}, line {number}: category {names[0]!r} is listed twice")
            synonyms[names[0]] = names[1:]
        if not synonyms:
            raise ValueError(f"synonyms file {path} names no categories")
        return cls(synonyms)

    def mentions(self, caption: str) -> List[str]:
        """The categories the caption names, in order, once per mention."""
        words = "".join(c if c.isalnum() else " " for c in caption.lower()).split()
        found, position = [], 0
        while position < len(words):
            for size in range(min(self._longest, len(words) - position), 0, -1):
                category = self._phrases.get(tuple(words[position:position + size]))
                if category is not None:
                    found.append(category)
                    position += size
                    break
            else:
                position += 1
        return found


def objects_per_image(instances_file) -> Dict[int, Set[str]]:
    """Category names present in each image of a COCO-format instances json (read with pycocotools). A file
    without categories, or with annotations that name none (a captions file given by mistake), is refused."""
    return _read_instances(instances_file)[0]


def _read_instances(instances_file) -> Tuple[Dict[int, Set[str]], Set[str]]:
    coco = read_coco(instances_file, "instances")
    categories = coco.dataset.get("categories")
    names = ({category.get("id"): category.get("name") for category in categories if isinstance(category, dict)}
             if isinstance(categories, list) else {})
    if not names or not all(isinstance(name, str) for name in names.values()):
        raise ValueError(f"instances file {instances_file} lists no categories (is it a captions file?); give the "
                         "COCO instances_*.json of the split")
    unnamed = [a for a in coco.anns.values() if a.get("category_id") not in names]
    if unnamed:
        raise ValueError(f"instances file {instances_file}: annotation {unnamed[0].get('id')} has no known "
                         "'category_id' (is it a captions file?); give the COCO instances_*.json of the split")
    present = {image_id: {names[a["category_id"]] for a in coco.imgToAnns.get(image_id, [])}
               for image_id in coco.getImgIds()}
    return present, set(names.values())


def chair(captions: Mapping[int, str], present: Mapping[int, Set[str]], objects: ObjectWords) -> Dict[str, object]:
    """CHAIR-i (hallucinated mentions / all object mentions) and CHAIR-s (captions with a hallucinated object /
    all captions), with each image's hallucinated categories."""
    missing = [image_id for image_id in captions if image_id not in present]
    if missing:
        raise ValueError(f"chair: no ground-truth objects for image ids {missing[:5]}")
    mentions = hallucinated_mentions = hallucinating_captions = 0
    per_image = {}
    for image_id, caption in captions.items():
        named = objects.mentions(caption)
        wrong = [category for category in named if category not in present[image_id]]
        mentions += len(named)
        hallucinated_mentions += len(wrong)
        hallucinating_captions += bool(wrong)
        per_image[image_id] = sorted(set(wrong))
    return {"CHAIRi": hallucinated_mentions / max(mentions, 1), "CHAIRs": hallucinating_captions / len(captions),
            "mentions": mentions, "hallucinated": per_image}


def probes_of(split_file) -> Dict[int, Tuple[str, str]]:
    """The built-in scenes' probe images of a Karpathy-style json: ``{image_id: (present, absent partner)}``."""
    return {image_id_of(entry, position): (entry["probe"]["present"], entry["probe"]["absent"])
            for position, entry in enumerate(load_karpathy(split_file)) if "probe" in entry}


def probe_hallucination(captions: Mapping[int, str], probes: Mapping[int, Tuple[str, str]], objects: ObjectWords,
                        present: Optional[Mapping[int, Set[str]]] = None) -> Dict[str, object]:
    """On each probe image that was captioned: does the caption name the absent partner (hallucination) and the
    present category? Returns the overall rate and one per (present, absent) pair.

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
    result = {"images": len(scored), "rate": sum(p["hallucinated"] for p in pairs.values()) / len(scored),
              "present_named": sum(probes[i][0] in named[i] for i in scored) / len(scored), "pairs": pairs}
    if present is not None:
        controls = sum(p["control_images"] for p in pairs.values())
        result["control_rate"] = (sum(p["control_rate"] * p["control_images"] for p in pairs.values()
                                      if p["control_images"]) / controls) if controls else None
    return result


@dataclasses.dataclass
class HallucinationData:
    """What the hallucination metrics need of one split, read once: the object words, the objects present in each
    image, and the probe marks (``{image_id: (present, absent)}``, empty for data without probes)."""

    objects: ObjectWords
    present: Dict[int, Set[str]]
    probes: Dict[int, Tuple[str, str]]


def load_hallucination_data(instances_file, synonyms_file, split_file=None,
                            image_ids: Optional[Iterable[int]] = None) -> HallucinationData:
    """Reads and cross-checks the files before any captioning: the instances must cover every image of
    ``image_ids`` (the split to be captioned), and the synonyms must name categories that the instances hold (a
    synonyms file naming none of them would give CHAIR 0 whatever the captions say)."""
    objects = ObjectWords.load(synonyms_file)
    present, categories = _read_instances(instances_file)
    named = set(objects.categories)
    if not named & categories:
        raise ValueError(f"synonyms file {synonyms_file} names none of the {len(categories)} categories of "
                         f"instances file {instances_file} (e.g. {sorted(categories)[:3]}); CHAIR would be 0 whatever "
                         "the captions say: give the synonyms file of this data set")
    unnamed = sorted(categories - named)
    if unnamed:
        warnings.warn(f"synonyms file {synonyms_file} has no line for {len(unnamed)} categories of the instances "
                      f"(e.g. {unnamed[:3]}); captions naming them are not counted", stacklevel=2)
    if image_ids is not None:
        uncovered = [image_id for image_id in image_ids if image_id not in present]
        if uncovered:
            raise ValueError(f"instances file {instances_file} has no entry for {len(uncovered)} images of the split "
                             f"(e.g. image id {uncovered[0]}); is it the instances file of this split?")
    return HallucinationData(objects, present, probes_of(split_file) if split_file is not None else {})


def hallucination_report(captions: Mapping[int, str], data: HallucinationData) -> Dict[str, object]:
    """``{"chair": ..., "probes": ...}`` for captions of one split: CHAIR against the split's objects, and the
    probe rate (with its control) when probe images are among the captioned ones."""
    report: Dict[str, object] = {"chair": chair(captions, data.present, data.objects)}
    if any(image_id in captions for image_id in data.probes):
        report["probes"] = probe_hallucination(captions, data.probes, data.objects, data.present)
    return report
