"""Hallucination metrics: object words with plurals and phrases, COCO instances through pycocotools, CHAIR and the
probe rate on hand-checked examples, and clear errors for bad files."""
import json

import pytest

from capxai.evaluate.hallucination import ObjectWords, chair, objects_per_image, probe_hallucination, probes_of

OBJECTS = ObjectWords({"box": ["cube", "crate"], "ball": ["sphere"], "hot dog": ["frank"], "pony": []})


def test_mentions_plurals_phrases_and_punctuation():
    assert OBJECTS.mentions("Two cubes, a ball and a hot dogs!") == ["box", "ball", "hot dog"]
    assert OBJECTS.mentions("three ponies left of spheres") == ["pony", "ball"]
    assert OBJECTS.mentions("a hot day with a dog") == []  # 'hot' and 'dog' alone name nothing
    assert OBJECTS.mentions("") == []


def test_chair_and_probe_rate_on_a_hand_checked_example():
    captions = {1: "a red ball and a box", 2: "two cubes", 3: "a sphere and a frank"}
    present = {1: {"ball"}, 2: {"box"}, 3: {"ball"}}
    result = chair(captions, present, OBJECTS)
    # mentions: ball, box | box | ball, hot dog -> 5, hallucinated: box (1), hot dog (3) -> 2; captions 1 and 3
    assert result["mentions"] == 5
    assert result["CHAIRi"] == pytest.approx(2 / 5) and result["CHAIRs"] == pytest.approx(2 / 3)
    assert result["hallucinated"] == {1: ["box"], 2: [], 3: ["hot dog"]}
    with pytest.raises(ValueError, match="no ground-truth objects"):
        chair({9: "a box"}, present, OBJECTS)
    probes = {1: ("ball", "box"), 3: ("ball", "box"), 7: ("box", "ball")}  # image 7 was not captioned
    rate = probe_hallucination(captions, probes, OBJECTS)
    assert rate["images"] == 2 and rate["rate"] == pytest.approx(0.5) and rate["present_named"] == 1.0
    assert rate["pairs"] == {"ball->box": {"images": 2, "hallucinated": 1, "rate": 0.5}}
    # control: images showing neither ball nor box (4, 5); image 4's caption names a box anyway
    controlled = probe_hallucination({**captions, 4: "a box", 5: "a pony"}, probes, OBJECTS,
                                     {**present, 4: {"pony"}, 5: {"pony"}})
    assert controlled["pairs"]["ball->box"]["control_images"] == 2
    assert controlled["control_rate"] == pytest.approx(0.5) and controlled["rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="none of the captioned images"):
        probe_hallucination({5: "a box"}, probes, OBJECTS)


def test_files(tmp_path):
    synonyms = tmp_path / "synonyms.txt"
    synonyms.write_text("box, cube\n\nball, sphere, orb\n")
    assert ObjectWords.load(synonyms).mentions("an orb on a cube") == ["ball", "box"]
    synonyms.write_text("box, cube\nbox, crate\n")
    with pytest.raises(ValueError, match="listed twice"):
        ObjectWords.load(synonyms)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ObjectWords.load(tmp_path / "missing.txt")
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [{"id": 5, "name": "box"}, {"id": 6, "name": "ball"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 2, 2], "area": 4},
                        {"id": 2, "image_id": 1, "category_id": 6, "bbox": [0, 0, 2, 2], "area": 4},
                        {"id": 3, "image_id": 2, "category_id": 6, "bbox": [0, 0, 2, 2], "area": 4}]}))
    assert objects_per_image(instances) == {1: {"box", "ball"}, 2: {"ball"}, 3: set()}
    instances.write_text("{broken")
    with pytest.raises(ValueError, match="instances.json"):
        objects_per_image(instances)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        objects_per_image(tmp_path / "nothing.json")
    split = tmp_path / "dataset_scenes.json"
    split.write_text(json.dumps({"images": [
        {"cocoid": 4, "filename": "a.png", "split": "test", "sentences": [], "probe": {"present": "ball",
                                                                                     "absent": "box"}},
        {"cocoid": 5, "filename": "b.png", "split": "test", "sentences": []}]}))
    assert probes_of(split) == {4: ("ball", "box")}
