"""Built-in scenes: procedurally drawn images with exact object boxes and grammar-made captions, written as COCO and
Karpathy-style json, so the same loading code serves scenes and COCO.

Each image (default 96x96 RGB) holds 1-3 objects (plus the partners the bias adds) of 12 categories that differ in shape
and texture, in varied colours, sizes and positions, on a cluttered background. The training split carries planted
co-occurrence biases: six pairs (``CO_OCCURRENCE``, every category in one pair, the first of each a solid shape); when
the first category is present, its partner is added with probability ``CO_OCCURRENCE_RATE``. ``HIDDEN_PARTNER_RATE`` of
the added partners sit behind the first object, wholly covered by it, yet every caption names them (as COCO annotators
name the fork behind the plate): a captioner learns to name the partner from the first object alone, which is what makes
it name the partner on the test split's "probe" images, where the first category is present and the partner is not.
Hidden objects keep their exact box (the extent of their own pixels, drawn beneath the cover) and their instances carry
``"hidden": true``. Everything is deterministic from the seed.

Why these settings (issue 11, measured with the demo recipe): the earlier design (three pairs, half of the partners
faint instead of hidden) gave the adaptive captioner a partner hallucination on only 5.7 % of 300 probes, too weak to
show a reduction; faint partners stay visible enough to be detected. A hidden partner leaves no visual evidence, so
only the bias can make a captioner name it.
"""
import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from capxai._io import atomic_write_json, atomic_write_text, raise_if_no_space, staging_folder, sync_folder
from capxai.data.captions import SPLITS
from capxai.outputs import MANIFEST, OutputFolder, write_manifest
from capxai.interrupts import stoppable
from capxai.options import COUNT, float_between, int_at_least, option

# category -> (shape drawn, synonyms used in captions and by CHAIR-style hallucination metrics)
CATEGORIES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "ball": ("circle", ("sphere", "orb")),
    "box": ("square", ("cube", "crate")),
    "tent": ("triangle", ("pyramid",)),
    "star": ("star", ("starfish",)),
    "cross": ("cross", ("plus",)),
    "ring": ("ring", ("donut", "hoop")),
    "kite": ("diamond", ("rhombus",)),
    "nut": ("hexagon", ("bolt",)),
    "moon": ("crescent", ("crescent",)),
    "arrow": ("arrow", ("pointer",)),
    "board": ("checker", ("chessboard", "checkerboard")),
    "ladder": ("stripes", ("rungs",)),
}
CATEGORY_NAMES = list(CATEGORIES)
# first -> partner: in training images with the first, the partner is added with probability CO_OCCURRENCE_RATE.
# The firsts are solid shapes, so that a partner behind one is wholly covered.
CO_OCCURRENCE = {"ball": "star", "box": "ring", "tent": "moon", "kite": "cross", "nut": "arrow", "board": "ladder"}
CO_OCCURRENCE_RATE = 0.85
HIDDEN_PARTNER_RATE = 0.5  # of the partners added by the bias: behind the first object, named but not seen
HIDDEN_SIDE = 0.45  # side of a hidden partner as a share of its cover's, inside the cover's solid part
OBJECT_SIDE = (0.14, 0.34)  # object side as a share of the image side
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20)}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
OPENERS = ("", "a picture of ", "an image showing ", "there is ", "in this scene we see ", "this shows ")
RELATIONS = {"left": ("to the left of", "left of"), "right": ("to the right of", "right of"),
             "above": ("above", "over"), "below": ("below", "under")}


@dataclasses.dataclass(frozen=True)
class SceneObject:
    category: str
    colour: str
    box: Tuple[int, int, int, int]  # x, y, width, height: where it is placed (render() gives the exact extent)
    hidden: bool = False  # wholly covered by the object drawn after it (a co-occurrence partner behind its first)


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: Tuple[SceneObject, ...]
    background: Tuple[int, int, int]
    probe: Optional[Tuple[str, str]] = None  # (present category, absent biased partner) on probe images


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Sizes and seed of a generated set (defaults: the demo's data)."""

    train: int = option(8000, type=COUNT, help="training images")
    val: int = option(1000, type=COUNT, help="validation images")
    test: int = option(2000, type=COUNT, help="test images")
    image_size: int = option(96, flag="--size", type=int_at_least(32), help="image side in pixels (>= 32)")
    seed: int = option(0, type=COUNT)
    # of the test split: 1000 probe images by default
    probe_fraction: float = option(0.5, type=float_between(0, 1), help="share of test images that are "
                                   "co-occurrence probes")
    val_probe_fraction: float = option(0.0, type=float_between(0, 1), help="share of validation images that are "
                                       "co-occurrence probes (0: none, the earlier data; a choice made on the "
                                       "validation split, e.g. --threshold auto, then sees the failure the test "
                                       "split measures)")
    captions_per_image: int = 5

    def __post_init__(self):
        for name in SPLITS:
            if getattr(self, name) < 0:
                raise ValueError(f"SceneConfig: {name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 32:
            raise ValueError(f"SceneConfig: image_size must be >= 32 pixels, got {self.image_size}")
        for name in ("probe_fraction", "val_probe_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig: {name} must be in [0, 1], got {getattr(self, name)}")


# -- layout ---------------------------------------------------------------------------------------------------------
def _pick_categories(rng: np.random.Generator, biased: bool,
                     probe: Optional[Tuple[str, str]]) -> Tuple[List[str], Dict[str, str]]:
    """Categories of the drawn objects of one scene, and the partners the bias hides (partner -> its first)."""
    count = int(rng.integers(1, 4))
    if probe is not None:
        present, absent = probe
        others = [c for c in CATEGORY_NAMES if c != absent]
        return [present] + [str(c) for c in rng.choice(others, size=count - 1, replace=True)], {}
    chosen = [str(c) for c in rng.choice(CATEGORY_NAMES, size=count, replace=True)]
    hidden: Dict[str, str] = {}
    if biased:
        for first, partner in CO_OCCURRENCE.items():
            if first in chosen and partner not in chosen and rng.random() < CO_OCCURRENCE_RATE:
                if rng.random() < HIDDEN_PARTNER_RATE:
                    hidden[partner] = first
                else:
                    chosen.append(partner)
    return chosen, hidden


def _hidden_box(cover: Tuple[int, int, int, int], category: str) -> Tuple[int, int, int, int]:
    """A box inside the solid part of ``cover`` (a first category's box): centred, or low in a triangle, whose
    cross-section narrows to the top."""
    x, y, w, h = cover
    width, height = max(2, int(w * HIDDEN_SIDE)), max(2, int(h * HIDDEN_SIDE))
    centre_y = 0.7 if CATEGORIES[category][0] == "triangle" else 0.5
    return x + (w - width) // 2, y + int(h * centre_y - height / 2), width, height


def _place(rng: np.random.Generator, size: int, placed: List[Tuple[int, int, int, int]],
           side_range: Tuple[float, float] = OBJECT_SIDE) -> Tuple[int, int, int, int]:
    """A box of side ``side_range`` (share of the image side), overlapping earlier boxes by at most a third of its
    area."""
    for _ in range(50):
        side = int(rng.integers(int(size * side_range[0]), int(size * side_range[1]) + 1))
        width = max(8, int(side * rng.uniform(0.8, 1.2)))
        height = max(8, int(side * rng.uniform(0.8, 1.2)))
        x, y = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - height + 1))
        if all(_overlap((x, y, width, height), other) <= width * height / 3 for other in placed):
            return x, y, width, height
    return x, y, width, height


def _overlap(a, b) -> int:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0) * max(dy, 0)


def sample_scene(rng: np.random.Generator, size: int, biased: bool, probe: Optional[Tuple[str, str]] = None) -> Scene:
    """One scene: categories (with the planted bias when ``biased``), colours and non-crowding boxes; a hidden partner
    comes just before the first object that covers it (objects are drawn in order)."""
    categories, hidden = _pick_categories(rng, biased, probe)
    boxes: List[Tuple[int, int, int, int]] = []
    objects = []
    for category in categories:
        box = _place(rng, size, boxes)
        boxes.append(box)
        for partner, first in list(hidden.items()):
            if first == category:
                objects.append(SceneObject(partner, str(rng.choice(list(COLOURS))), _hidden_box(box, category), True))
                del hidden[partner]
        objects.append(SceneObject(category, str(rng.choice(list(COLOURS))), box))
    background = tuple(int(v) for v in rng.integers(90, 170, size=3))
    return Scene(tuple(objects), background, probe)


# -- drawing --------------------------------------------------------------------------------------------------------
def _star_points(cx, cy, rx, ry, points=5, inner=0.45):
    corners = []
    for i in range(2 * points):
        radius = inner if i % 2 else 1.0
        angle = -math.pi / 2 + i * math.pi / points
        corners.append((cx + rx * radius * math.cos(angle), cy + ry * radius * math.sin(angle)))
    return corners


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x, y, w, h = obj.box
    x1, y1 = x + w - 1, y + h - 1
    cx, cy, rx, ry = x + (w - 1) / 2, y + (h - 1) / 2, (w - 1) / 2, (h - 1) / 2
    colour = COLOURS[obj.colour] + (255,)
    dark = tuple(max(0, c - 90) for c in COLOURS[obj.colour]) + (255,)
    shape = CATEGORIES[obj.category][0]
    if shape == "circle":
        draw.ellipse([x, y, x1, y1], fill=colour, outline=dark)
    elif shape == "square":
        draw.rectangle([x, y, x1, y1], fill=colour, outline=dark)
    elif shape == "triangle":
        draw.polygon([(cx, y), (x1, y1), (x, y1)], fill=colour, outline=dark)
    elif shape == "star":
        draw.polygon(_star_points(cx, cy, rx, ry), fill=colour, outline=dark)
    elif shape == "cross":
        draw.rectangle([x + w // 3, y, x1 - w // 3, y1], fill=colour)
        draw.rectangle([x, y + h // 3, x1, y1 - h // 3], fill=colour)
    elif shape == "ring":
        draw.ellipse([x, y, x1, y1], outline=colour, width=max(2, min(w, h) // 5))
    elif shape == "diamond":
        draw.polygon([(cx, y), (x1, cy), (cx, y1), (x, cy)], fill=colour, outline=dark)
    elif shape == "hexagon":
        draw.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.arange(6) * math.pi / 3],
                     fill=colour, outline=dark)
    elif shape == "crescent":
        mask = Image.new("L", (w, h), 0)
        mask_draw = ImageDraw.Draw(mask)
        mask_draw.ellipse([0, 0, w - 1, h - 1], fill=255)
        mask_draw.ellipse([w // 3, -h // 8, w - 1 + w // 3, h - 1 - h // 8], fill=0)
        draw._image.paste(colour, (x, y), mask)
    elif shape == "arrow":
        draw.rectangle([x, y + h // 3, x + w * 3 // 5, y1 - h // 3], fill=colour)
        draw.polygon([(x + w * 3 // 5, y), (x1, cy), (x + w * 3 // 5, y1)], fill=colour)
    elif shape == "checker":
        cells = 4
        for i in range(cells):
            for j in range(cells):
                fill = colour if (i + j) % 2 == 0 else dark
                draw.rectangle([x + i * w // cells, y + j * h // cells, x + (i + 1) * w // cells - 1,
                                y + (j + 1) * h // cells - 1], fill=fill)
    elif shape == "stripes":
        draw.rectangle([x, y, x + max(1, w // 6), y1], fill=colour)
        draw.rectangle([x1 - max(1, w // 6), y, x1, y1], fill=colour)
        for k in range(1, 5):
            ry_k = y + k * h // 5
            draw.rectangle([x, ry_k - 1, x1, ry_k], fill=colour)


def render(scene: Scene, size: int, rng: np.random.Generator) -> Tuple[Image.Image, List[Tuple[int, int, int, int]]]:
    """The image of a scene and each object's exact box.

    Background with clutter lines, then the objects in order (later ones on top), each drawn on its own transparent
    layer, so that its box is the tight extent of its own pixels (COCO ``[x, y, width, height]``, occlusion
    ignored: a hidden object's box is where its pixels were drawn, beneath its cover), then mild pixel noise.
    """
    image = Image.new("RGBA", (size, size), scene.background + (255,))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # clutter: thin lines in muted colours
        points = [tuple(int(v) for v in rng.integers(0, size, size=2)) for _ in range(2)]
        shade = tuple(int(c + d) for c, d in zip(scene.background, rng.integers(-40, 41, size=3)))
        draw.line(points, fill=tuple(min(255, max(0, c)) for c in shade) + (255,), width=1)
    boxes = []
    for obj in scene.objects:
        layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        _draw_object(ImageDraw.Draw(layer), obj)
        left, top, right, bottom = layer.getchannel("A").getbbox()
        boxes.append((left, top, right - left, bottom - top))
        image.alpha_composite(layer)
    pixels = np.asarray(image.convert("RGB")).astype(np.float64)
    pixels += rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), boxes


# -- captions -------------------------------------------------------------------------------------------------------
def _noun(category: str, rng: np.random.Generator, plural: bool = False) -> str:
    words = (category,) + CATEGORIES[category][1]
    word = words[0] if rng.random() < 0.6 else str(rng.choice(words[1:]))
    if not plural:
        return word
    return word + ("es" if word.endswith(("x", "s", "sh", "ch")) else "s")


def _relation(a: SceneObject, b: SceneObject) -> str:
    ax, ay = a.box[0] + a.box[2] / 2, a.box[1] + a.box[3] / 2
    bx, by = b.box[0] + b.box[2] / 2, b.box[1] + b.box[3] / 2
    if abs(ax - bx) >= abs(ay - by):
        return "left" if ax < bx else "right"
    return "above" if ay < by else "below"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """One caption: every category is named (with counts), sometimes with colours and one spatial relation (hidden
    objects: never with a colour or a relation, which cannot be seen)."""
    groups: Dict[str, List[SceneObject]] = {}
    for obj in scene.objects:
        groups.setdefault(obj.category, []).append(obj)
    order = list(groups)
    rng.shuffle(order)
    phrases = []
    for category in order:
        members = groups[category]
        if len(members) > 1:
            phrases.append(f"{NUMBER_WORDS[len(members)]} {_noun(category, rng, plural=True)}")
        elif not members[0].hidden and rng.random() < 0.6:  # a hidden object's colour is not seen
            phrases.append(_article(f"{members[0].colour} {_noun(category, rng)}"))
        else:
            phrases.append(_article(_noun(category, rng)))
    first, second = (groups[order[0]][0], groups[order[1]][0]) if len(order) >= 2 else (None, None)
    if first is not None and not (first.hidden or second.hidden) and rng.random() < 0.5:
        relation = str(rng.choice(RELATIONS[_relation(first, second)]))
        sentence = f"{phrases[0]} {relation} {phrases[1]}"
        if len(phrases) > 2:
            sentence += " and " + " and ".join(phrases[2:])
    else:
        sentence = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return (str(rng.choice(OPENERS)) + sentence).strip()


def tokenize(caption: str) -> List[str]:
    return caption.lower().replace(",", " ").split()


# -- the data set ---------------------------------------------------------------------------------------------------
def _split_plan(config: SceneConfig) -> List[Tuple[str, bool, bool]]:
    """(split, biased, probe) per image, in id order."""
    val_probes = int(round(config.val * config.val_probe_fraction))
    plan = [("train", True, False)] * config.train + [("val", True, False)] * (config.val - val_probes)
    plan += [("val", False, True)] * val_probes
    probes = int(round(config.test * config.probe_fraction))
    plan += [("test", True, False)] * (config.test - probes) + [("test", False, True)] * probes
    return plan


def generate(out_dir, config: SceneConfig = SceneConfig(), overwrite: bool = False, progress: bool = True) -> Path:
    """Writes a scene data set to ``out_dir``: ``images/{split}/*.png``, ``annotations/instances_{split}.json`` and
    ``captions_{split}.json`` (COCO format), ``dataset_scenes.json`` (Karpathy format, with ``probe`` marks) and
    ``synonyms.txt`` (CHAIR format), listed in the folder's capxai manifest.

    Built in a hidden staging folder beside ``out_dir`` and moved into place when complete (an interrupted run
    leaves nothing; a staging folder left by a killed process is removed by the next run). An ``out_dir`` that holds
    files is replaced only with ``overwrite=True``, and only when every file in it was written by capxai."""
    out_dir = Path(out_dir).resolve()
    output = OutputFolder(out_dir, "data scenes")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite to replace the scenes "
                                  "capxai wrote there, or choose another --out")
        output.check_replaceable(overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    staging = staging_folder(out_dir.parent, f".{out_dir.name}.partial-{os.getpid()}-")
    try:
        _write(staging, config, progress)
        write_manifest(staging, "data scenes", "scenes", output.run_id)
        if out_dir.is_dir():
            output.remove_recorded()
            out_dir.mkdir(exist_ok=True)
            manifest = staging / MANIFEST
            for entry in sorted(staging.iterdir(), key=lambda path: path == manifest):  # the manifest last
                entry.rename(out_dir / entry.name)
            staging.rmdir()
            sync_folder(out_dir)
        else:
            staging.rename(out_dir)
        sync_folder(out_dir.parent)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_no_space(error, out_dir, out_dir.exists(), staging)
        raise
    return out_dir


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging folders of ``out_dir`` left by processes that no longer run (killed before they could clean up)."""
    for staging in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = staging.name[len(f".{out_dir.name}.partial-"):].split("-")[0]
        if staging.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def _write(root: Path, config: SceneConfig, progress: bool) -> None:
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORY_NAMES)]
    category_id = {c["name"]: c["id"] for c in categories}
    per_split = {split: {"images": [], "instances": [], "captions": []} for split in SPLITS}
    karpathy = []
    rng = np.random.default_rng(config.seed)
    probe_pairs = list(CO_OCCURRENCE.items())
    annotation_id = sentence_id = 0
    plan = _split_plan(config)
    for image_id, (split, biased, is_probe) in enumerate(stoppable(tqdm(plan, desc="scenes", unit="image",
                                                                         disable=not progress)), start=1):
        probe = probe_pairs[image_id % len(probe_pairs)] if is_probe else None
        scene = sample_scene(rng, config.image_size, biased, probe)
        file_name = f"scene_{image_id:06d}.png"
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        image, boxes = render(scene, config.image_size, rng)
        image.save(folder / file_name)
        record = per_split[split]
        record["images"].append({"id": image_id, "file_name": file_name, "width": config.image_size,
                                 "height": config.image_size})
        for obj, box in zip(scene.objects, boxes):
            annotation_id += 1
            record["instances"].append({"id": annotation_id, "image_id": image_id,
                                        "category_id": category_id[obj.category], "bbox": list(box),
                                        "area": box[2] * box[3], "iscrowd": 0, "hidden": obj.hidden})
        sentences = []
        for _ in range(config.captions_per_image):
            sentence_id += 1
            caption = describe(scene, rng)
            record["captions"].append({"id": sentence_id, "image_id": image_id, "caption": caption})
            sentences.append({"raw": caption, "tokens": tokenize(caption), "imgid": image_id - 1,
                              "sentid": sentence_id})
        entry = {"filepath": f"images/{split}", "filename": file_name, "imgid": image_id - 1, "cocoid": image_id,
                 "split": split, "sentences": sentences, "sentids": [s["sentid"] for s in sentences]}
        if scene.probe is not None:
            entry["probe"] = {"present": scene.probe[0], "absent": scene.probe[1]}
        karpathy.append(entry)
    for split, record in per_split.items():
        info = {"description": f"capxai built-in scenes, {split} split", "seed": config.seed}
        atomic_write_json(root / "annotations" / f"instances_{split}.json",
                          {"info": info, "images": record["images"], "annotations": record["instances"],
                           "categories": categories})
        atomic_write_json(root / "annotations" / f"captions_{split}.json",
                          {"info": info, "images": record["images"], "annotations": record["captions"]})
    atomic_write_json(root / "dataset_scenes.json", {"dataset": "scenes", "images": karpathy,
                                                     "config": dataclasses.asdict(config),
                                                     "co_occurrence": CO_OCCURRENCE})
    atomic_write_text(root / "synonyms.txt",
                      "".join(", ".join((name,) + CATEGORIES[name][1]) + "\n" for name in CATEGORY_NAMES))
