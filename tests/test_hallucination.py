"""Hallucination metrics: object words with plurals and phrases, COCO instances through pycocotools, CHAIR and the
probe rate on hand-checked examples, and clear errors for bad files."""
import json

import pytest

from capxai.data.annotations import load_split_annotations
from capxai.evaluate.hallucination import (ObjectWords, chair, frequent_word_scores, hallucination_report,
                                           load_hallucination_data, objects_per_image, probe_hallucination, probes_of)
from capxai.evaluate.objects import frequent_words

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
    overall, per_image = result["overall"], result["imgToEval"]
    # mentions: ball, box | box | ball, hot dog -> 5, hallucinated: box (1), hot dog (3) -> 2; captions 1 and 3
    assert overall["mentions"] == 5 and overall["hallucinated_mentions"] == 2 and overall["captions"] == 3
    assert overall["CHAIRi"] == pytest.approx(2 / 5) and overall["CHAIRs"] == pytest.approx(2 / 3)
    assert overall["CHAIRi_ci"][0] <= overall["CHAIRi"] <= overall["CHAIRi_ci"][1]
    assert per_image["1"]["mscoco_hallucinated_words"] == [["box", "box"]]
    assert per_image["1"]["hallucination_idxs"] == [5] and per_image["1"]["metrics"] == {"CHAIRs": 1, "CHAIRi": 0.5}
    assert per_image["2"]["mscoco_hallucinated_words"] == [] and per_image["2"]["mscoco_generated_words"] == ["box"]
    assert per_image["3"]["mscoco_hallucinated_words"] == [["frank", "hot dog"]]
    with pytest.raises(ValueError, match="no ground-truth objects"):
        chair({9: "a box"}, present, OBJECTS)
    with pytest.raises(ValueError, match="no captions"):
        chair({}, present, OBJECTS)
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
        "images": [{"id": i, "width": 10, "height": 10} for i in (1, 2, 3)],
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


COCO = ObjectWords.coco()


@pytest.mark.parametrize("caption, expected", [
    ("a man eating a hot dog next to a dog", ["person", "hot dog", "dog"]),  # "hot dog" is not a dog
    ("two teddy bears on a bed", ["teddy bear", "bed"]),  # nor is a teddy bear a bear
    ("women and children with their dogs", ["person", "person", "dog"]),  # irregular and regular plurals
    ("a baby elephant beside a baby", ["elephant", "person"]),  # CHAIR's "baby" animal words
    ("people on a passenger train at the train track", ["person", "train"]),  # "train track" names nothing
    ("a toilet seat and a seat", ["toilet"]),  # "seat" is no chair beside a toilet
    ("knives, forks and a wine glass", ["knife", "fork", "wine glass"]),
])
def test_coco_object_words_follow_chair(caption, expected):
    assert COCO.mentions(caption) == expected
    assert len(COCO.categories) == 80


def test_chair_counts_repeated_mentions_and_objects_known_from_references(tmp_path):
    captions = {1: "a dog and a dog and a cat", 2: "a man with a hot dog"}
    present = {1: {"cat"}, 2: {"person"}}
    overall = chair(captions, present, COCO)["overall"]
    # image 1: dog, dog, cat -> 2 hallucinated of 3; image 2: person, hot dog -> 1 of 2
    assert overall["CHAIRi"] == pytest.approx(3 / 5) and overall["CHAIRs"] == 1.0
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({
        "images": [{"id": 1, "width": 20, "height": 20}, {"id": 2, "width": 20, "height": 20}],
        "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 17, "bbox": [1, 1, 5, 5], "area": 25},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25}]}))
    split = tmp_path / "dataset_coco.json"
    split.write_text(json.dumps({"dataset": "coco", "images": [
        {"cocoid": 1, "filename": "a.jpg", "split": "test",
         "sentences": [{"tokens": ["a", "puppy", "and", "a", "kitten"]}]},
        {"cocoid": 2, "filename": "b.jpg", "split": "test", "sentences": [{"tokens": ["a", "man"]}]}]}))
    data = load_hallucination_data(instances, None, split, [1, 2])
    assert data.present == {1: {"cat", "dog"}, 2: {"person"}}  # "puppy" in a reference makes a dog right
    assert data.frequent == frequent_words("coco")
    report = hallucination_report(captions, data)
    assert report["chair"]["overall"]["CHAIRi"] == pytest.approx(1 / 5)  # only the hot dog is wrong now


def test_frequent_word_precision_recall_f1_by_hand():
    references = {1: [["a", "man", "and", "a", "dog"]], 2: [["a", "cat", "on", "a", "table"]], 3: [["a", "man"]]}
    captions = {1: "a man with a dog", 2: "a man at a table", 3: "a cat"}
    result = frequent_word_scores(captions, references, ["man", "dog", "cat", "table"])
    # image 1: man, dog right; image 2: table right, man wrong, cat missed; image 3: cat wrong, man missed
    assert result["overall"]["precision"]["value"] == pytest.approx(3 / 5)
    assert result["overall"]["recall"]["value"] == pytest.approx(3 / 5)
    assert result["overall"]["f1"]["value"] == pytest.approx(6 / 10)
    assert result["per_word"]["man"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "said": 2, "in_references": 2}
    assert result["per_word"]["cat"]["precision"] == 0.0 and result["per_word"]["dog"]["f1"] == 1.0
    with pytest.raises(ValueError, match="no references"):
        frequent_word_scores({9: "a man"}, references, ["man"])


def test_annotations_refuse_bad_boxes_and_uncovered_images(tmp_path):
    instances = tmp_path / "instances.json"

    def write(box):
        instances.write_text(json.dumps({
            "images": [{"id": 1, "width": 20, "height": 10}], "categories": [{"id": 1, "name": "box"}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": box, "area": 1}]}))

    write([15, 2, 10, 5])
    with pytest.raises(ValueError, match="annotation 7.*outside the 20x10 image"):
        load_split_annotations(instances)
    write([1, 2, 0, 5])
    with pytest.raises(ValueError, match="annotation 7.*no area"):
        load_split_annotations(instances)
    write([1, 2, 3, 4])
    assert load_split_annotations(instances).boxes == {1: {"box": [(1.0, 2.0, 3.0, 4.0)]}}
    with pytest.raises(ValueError, match="no entry for 1 images.*image id 2"):
        load_split_annotations(instances, image_ids=[1, 2])
