"""What a split knows about its images besides pixels, read once: the object boxes of a COCO-format instances json
(read with pycocotools), the reference captions and probe marks of the Karpathy-style split file. Grounding,
hallucination and ablation metrics are functions of this structure; they never open files."""
import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from capxai.data.captions import image_id_of, load_karpathy
from capxai.data.coco import read_coco

Box = Tuple[float, float, float, float]  # x, y, width, height in the image's own pixels (COCO's bbox)
BOX_SLACK = 1.0  # pixels a box may pass the image border by (COCO's float boxes round outwards)


@dataclasses.dataclass
class SplitAnnotations:
    """Per image id: its size ``(width, height)``, its boxes per category name, its reference captions (word
    lists), on the built-in scenes' probe images ``(present, absent partner)``, and the categories of instances
    marked ``"hidden": true`` (wholly covered by another object: present, but with no visible box, so they are
    not in ``boxes`` and grounding never scores relevance against them)."""

    sizes: Dict[int, Tuple[int, int]]
    boxes: Dict[int, Dict[str, List[Box]]]
    references: Dict[int, List[List[str]]]
    probes: Dict[int, Tuple[str, str]]
    categories: Set[str]
    hidden: Dict[int, Set[str]] = dataclasses.field(default_factory=dict)

    def annotated(self, image_id: int) -> Set[str]:
        """The categories the instances file places in the image (hidden ones included)."""
        return set(self.boxes.get(image_id, {})) | self.hidden.get(image_id, set())

    def check_covers(self, image_ids: Iterable[int], source: str = "the instances file") -> None:
        """Refuses image ids that the instances file does not list (another split's, or a wrong file)."""
        missing = [image_id for image_id in image_ids if image_id not in self.sizes]
        if missing:
            raise ValueError(f"{source} has no entry for {len(missing)} images of the split (e.g. image id "
                             f"{missing[0]}); is it the instances file of this split?")


def load_split_annotations(instances_file, split_file=None, image_ids: Optional[Sequence[int]] = None
                           ) -> SplitAnnotations:
    """Reads the boxes of ``instances_file`` (every box checked: inside its image, positive size) and, with
    ``split_file``, the reference captions and probe marks; with ``image_ids``, the instances must cover them."""
    coco = read_coco(instances_file, "instances")
    categories = coco.dataset.get("categories")
    names = ({category.get("id"): category.get("name") for category in categories if isinstance(category, dict)}
             if isinstance(categories, list) else {})
    if not names or not all(isinstance(name, str) for name in names.values()):
        raise ValueError(f"instances file {instances_file} lists no categories (is it a captions file?); give the "
                         "COCO instances_*.json of the split")
    sizes = {}
    for image in coco.dataset.get("images", []):
        width, height = image.get("width"), image.get("height")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            raise ValueError(f"instances file {instances_file}: image {image.get('id')} has no positive 'width' and "
                             "'height'")
        sizes[image["id"]] = (int(width), int(height))
    boxes: Dict[int, Dict[str, List[Box]]] = {image_id: {} for image_id in sizes}
    hidden: Dict[int, Set[str]] = {}
    for annotation in coco.anns.values():
        name = names.get(annotation.get("category_id"))
        if name is None:
            raise ValueError(f"instances file {instances_file}: annotation {annotation.get('id')} has no known "
                             "'category_id' (is it a captions file?); give the COCO instances_*.json of the split")
        image_id = annotation.get("image_id")
        if image_id not in sizes:
            raise ValueError(f"instances file {instances_file}: annotation {annotation.get('id')} is of image "
                             f"{image_id}, which its 'images' do not list")
        box = _checked_box(annotation, sizes[image_id], instances_file)
        if annotation.get("hidden"):
            hidden.setdefault(image_id, set()).add(name)
        else:
            boxes[image_id].setdefault(name, []).append(box)
    references, probes = {}, {}
    if split_file is not None:
        for position, entry in enumerate(load_karpathy(split_file)):
            image_id = image_id_of(entry, position)
            references[image_id] = [sentence["tokens"] for sentence in entry["sentences"]]
            if "probe" in entry:
                probes[image_id] = (entry["probe"]["present"], entry["probe"]["absent"])
    annotations = SplitAnnotations(sizes, boxes, references, probes, set(names.values()), hidden)
    if image_ids is not None:
        annotations.check_covers(image_ids, f"instances file {instances_file}")
    return annotations


def _checked_box(annotation: dict, size: Tuple[int, int], source) -> Box:
    box = annotation.get("bbox")
    where = f"instances file {source}: annotation {annotation.get('id')} (image {annotation.get('image_id')})"
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise ValueError(f"{where}: 'bbox' must be [x, y, width, height], got {box!r:.60}")
    x, y, w, h = (float(v) for v in box)
    width, height = size
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: box {box} has no area (width and height must be > 0)")
    if x < -BOX_SLACK or y < -BOX_SLACK or x + w > width + BOX_SLACK or y + h > height + BOX_SLACK:
        raise ValueError(f"{where}: box {box} lies outside the {width}x{height} image; fix the annotation or the "
                         "image's width/height")
    return (x, y, w, h)
