"""Built-in scenes: deterministic, exact boxes, planted biases and probes, COCO / Karpathy files that load."""
import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from capxai import cli
from capxai.data import scenes

SMALL = scenes.SceneConfig(train=120, val=20, test=40, seed=3)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return scenes.generate(tmp_path_factory.mktemp("scenes") / "set", SMALL, progress=False)


def _digest(folder):
    """Of the data (the manifest's run id differs from run to run by design)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".capxai-manifest"):
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(small_set, tmp_path):
    again = scenes.generate(tmp_path / "again", SMALL, progress=False)
    assert _digest(again) == _digest(small_set)
    other = scenes.generate(tmp_path / "other", scenes.SceneConfig(train=120, val=20, test=40, seed=4),
                            progress=False)
    assert _digest(other) != _digest(small_set)


def test_files_load_with_pycocotools_and_karpathy_splits(small_set):
    for split, count in (("train", 120), ("val", 20), ("test", 40)):
        instances = COCO(str(small_set / "annotations" / f"instances_{split}.json"))
        captions = COCO(str(small_set / "annotations" / f"captions_{split}.json"))
        assert len(instances.getImgIds()) == count
        assert len(instances.getCatIds()) == 12
        for image_id in instances.getImgIds()[:10]:
            assert 1 <= len(instances.getAnnIds(imgIds=image_id)) <= 5
            assert len(captions.getAnnIds(imgIds=image_id)) == 5
            info = instances.loadImgs(image_id)[0]
            assert Image.open(small_set / "images" / split / info["file_name"]).size == (96, 96)
    karpathy = json.loads((small_set / "dataset_scenes.json").read_text())
    assert [sum(1 for i in karpathy["images"] if i["split"] == s) for s in ("train", "val", "test")] == [120, 20, 40]
    assert all(len(i["sentences"]) == 5 and i["sentences"][0]["tokens"] for i in karpathy["images"])
    synonyms = (small_set / "synonyms.txt").read_text().splitlines()
    assert synonyms[0].startswith("ball, sphere") and len(synonyms) == 12


def test_every_caption_names_every_object(small_set):
    karpathy = json.loads((small_set / "dataset_scenes.json").read_text())
    instances = COCO(str(small_set / "annotations" / "instances_train.json"))
    words_of = {name: {name, *synonyms} for name, (_, synonyms) in scenes.CATEGORIES.items()}
    for image in karpathy["images"][:60]:
        if image["split"] != "train":
            continue
        present = {instances.loadCats(a["category_id"])[0]["name"]
                   for a in instances.loadAnns(instances.getAnnIds(imgIds=image["cocoid"]))}
        for sentence in image["sentences"]:
            tokens = {t.rstrip("s") if t not in words_of else t for t in sentence["tokens"]} | set(sentence["tokens"])
            for name in present:
                assert tokens & words_of[name] or any(t.startswith(w) for t in tokens for w in words_of[name]), \
                    (name, sentence["raw"])


@pytest.mark.parametrize("colour", ["red", "blue", "orange", "yellow"])  # far from the grey clutter
def test_boxes_are_the_exact_extent_of_the_object(colour):
    rng = np.random.default_rng(0)
    for category in scenes.CATEGORY_NAMES:
        placed = scenes.SceneObject(category, colour, (20, 25, 40, 36))
        scene = scenes.Scene((placed,), background=(128, 128, 128))
        image, (box,) = scenes.render(scene, 96, rng)
        pixels = np.asarray(image).astype(int)
        close = np.abs(pixels - np.array(scenes.COLOURS[colour])).max(-1) < 30
        rows, cols = np.nonzero(close)
        x, y, w, h = box
        assert cols.min() >= x and cols.max() <= x + w - 1 and rows.min() >= y and rows.max() <= y + h - 1, category
        assert cols.min() <= x + 3 and cols.max() >= x + w - 4 and rows.min() <= y + 3 and rows.max() >= y + h - 4, \
            (category, box, (cols.min(), rows.min(), cols.max(), rows.max()))
        assert 20 <= x and x + w <= 60 and 25 <= y and y + h <= 61  # within where it was placed


def test_training_bias_and_test_probes(tmp_path):
    root = scenes.generate(tmp_path / "bias", scenes.SceneConfig(train=1500, val=0, test=200, seed=5),
                           progress=False)
    instances = COCO(str(root / "annotations" / "instances_train.json"))
    name_of = {c["id"]: c["name"] for c in instances.loadCats(instances.getCatIds())}
    images = [{name_of[a["category_id"]] for a in instances.loadAnns(instances.getAnnIds(imgIds=i))}
              for i in instances.getImgIds()]
    for first, second in scenes.CO_OCCURRENCE.items():
        with_first = [names for names in images if first in names]
        rate = sum(second in names for names in with_first) / len(with_first)
        assert rate > 0.7, (first, second, rate)
        without_first = [names for names in images if first not in names]
        assert sum(second in names for names in without_first) / len(without_first) < 0.45
    # about HIDDEN_PARTNER_RATE of the partners the bias added are hidden, each inside a box of its first category
    annotations = instances.loadAnns(instances.getAnnIds())
    hidden = [a for a in annotations if a["hidden"]]
    assert {name_of[a["category_id"]] for a in hidden} <= set(scenes.CO_OCCURRENCE.values())
    added = sum(1 for names in images for first, partner in scenes.CO_OCCURRENCE.items()
                if first in names and partner in names)
    assert 0.6 * scenes.HIDDEN_PARTNER_RATE < len(hidden) / added < 1.4 * scenes.HIDDEN_PARTNER_RATE
    first_of = {partner: first for first, partner in scenes.CO_OCCURRENCE.items()}
    for annotation in hidden:
        x, y, w, h = annotation["bbox"]
        covers = [a["bbox"] for a in instances.loadAnns(instances.getAnnIds(imgIds=annotation["image_id"]))
                  if name_of[a["category_id"]] == first_of[name_of[annotation["category_id"]]]]
        assert any(cx <= x and cy <= y and x + w <= cx + cw and y + h <= cy + ch for cx, cy, cw, ch in covers)
    karpathy = json.loads((root / "dataset_scenes.json").read_text())
    test = COCO(str(root / "annotations" / "instances_test.json"))
    probes = [image for image in karpathy["images"] if "probe" in image]
    assert len(probes) == 100  # probe_fraction 0.5 of 200
    for image in probes:
        names = {name_of[a["category_id"]] for a in test.loadAnns(test.getAnnIds(imgIds=image["cocoid"]))}
        assert image["probe"]["present"] in names and image["probe"]["absent"] not in names


def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli"
    arguments = ["data", "scenes", "--out", str(out), "--train", "4", "--val", "2", "--test", "2"]
    assert cli.main(arguments) == 0
    assert (out / "dataset_scenes.json").exists()
    assert cli.main(arguments) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(arguments + ["--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cli.partial")]
    assert cli.main(["data", "scenes", "--out", str(tmp_path / "bad"), "--size", "8"]) == 2


def test_hidden_partners_are_covered_and_named():
    """A hidden partner changes no pixel of the image (its cover is drawn over it), yet keeps its exact box and is
    named by every caption."""
    rng = np.random.default_rng(4)
    checked = 0
    while checked < 30:
        scene = scenes.sample_scene(rng, 96, biased=True)
        if not any(obj.hidden for obj in scene.objects):
            continue
        checked += 1
        # same seed: same clutter and noise, so any difference would be the hidden object's own pixels
        image, boxes = scenes.render(scene, 96, np.random.default_rng(3))
        visible = scenes.Scene(tuple(obj for obj in scene.objects if not obj.hidden), scene.background)
        without, _ = scenes.render(visible, 96, np.random.default_rng(3))
        assert np.array_equal(np.asarray(image), np.asarray(without))
        for obj, box in zip(scene.objects, boxes):
            if obj.hidden:
                alone, (own,) = scenes.render(scenes.Scene((dataclasses.replace(obj, hidden=False),),
                                                           scene.background), 96, np.random.default_rng(3))
                assert box == own and box[2] > 0 and box[3] > 0
                words = {obj.category, *scenes.CATEGORIES[obj.category][1]}
                for _ in range(5):
                    caption = scenes.describe(scene, rng)
                    assert any(token.startswith(word) for token in scenes.tokenize(caption) for word in words), \
                        caption


def test_hidden_instances_are_present_but_have_no_box(tmp_path):
    from capxai.data.annotations import load_split_annotations

    root = scenes.generate(tmp_path / "s", scenes.SceneConfig(train=0, val=200, test=0, seed=2), progress=False)
    raw = json.loads((root / "annotations" / "instances_val.json").read_text())
    hidden = [a for a in raw["annotations"] if a["hidden"]]
    assert hidden
    annotations = load_split_annotations(root / "annotations" / "instances_val.json")
    name_of = {c["id"]: c["name"] for c in raw["categories"]}
    for annotation in hidden:
        image_id, name = annotation["image_id"], name_of[annotation["category_id"]]
        assert name in annotations.hidden[image_id] and name in annotations.annotated(image_id)
        visible = [a["bbox"] for a in raw["annotations"] if a["image_id"] == image_id and not a["hidden"]
                   and name_of[a["category_id"]] == name]
        assert len(annotations.boxes[image_id].get(name, [])) == len(visible)


def test_validation_probes_are_drawn_only_when_asked(tmp_path):
    """``val_probe_fraction``: that share of the validation images are probes (the first object present, its partner
    absent), as on the test split; at its default 0 the data are the earlier data, image for image."""
    plain = scenes.generate(tmp_path / "plain", scenes.SceneConfig(train=4, val=6, test=4, seed=2), progress=False)
    probed = scenes.generate(tmp_path / "probed", scenes.SceneConfig(train=4, val=6, test=4, seed=2,
                                                                     val_probe_fraction=0.5), progress=False)
    before, after = (json.loads((root / "dataset_scenes.json").read_text())["images"] for root in (plain, probed))
    assert [image["split"] for image in before] == [image["split"] for image in after]
    val_probes = [image for image in after if image["split"] == "val" and "probe" in image]
    assert len(val_probes) == 3 and not any(image["split"] == "val" and "probe" in image for image in before)
    assert before[:7] == after[:7]  # the training images and the first validation images are unchanged
    instances = COCO(str(probed / "annotations" / "instances_val.json"))
    name_of = {category["id"]: category["name"] for category in instances.loadCats(instances.getCatIds())}
    for image in val_probes:
        names = {name_of[a["category_id"]] for a in instances.loadAnns(instances.getAnnIds(imgIds=image["cocoid"]))}
        assert image["probe"]["present"] in names and image["probe"]["absent"] not in names
    with pytest.raises(ValueError, match=r"val_probe_fraction must be in \[0, 1\]"):
        scenes.SceneConfig(val_probe_fraction=1.5)
