"""Caption data: Karpathy-style files on tiny images the test writes, batching, and clear errors for missing or
corrupt images and json."""
import json

import pytest
import torch
from PIL import Image

from capxai.data.captions import CaptionDataset, collate, load_karpathy
from capxai.data.vocabulary import Vocabulary


@pytest.fixture
def tiny_split(tmp_path):
    (tmp_path / "val2014").mkdir()
    for name, colour in (("a.jpg", "red"), ("b.jpg", "blue"), ("c.jpg", "green")):
        Image.new("RGB", (40, 30), colour).save(tmp_path / "val2014" / name)
    (tmp_path / "val2014" / "corrupt.jpg").write_bytes(b"not an image")
    images = []
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg", "corrupt.jpg", "missing.jpg"]):
        sentences = [{"tokens": ["a", "red", "ball"], "raw": "A red ball."},
                     {"tokens": ["a", "ball", "on", "a", "very", "long", "long", "table"], "raw": "..."}][: 1 + i % 2]
        images.append({"filepath": "val2014", "filename": name, "imgid": i, "cocoid": 100 + i,
                       "split": "restval" if i == 0 else "train" if i < 4 else "test", "sentences": sentences})
    split_file = tmp_path / "dataset_coco.json"
    split_file.write_text(json.dumps({"dataset": "coco", "images": images}))
    vocabulary = Vocabulary.build([s["tokens"] for image in images for s in image["sentences"]], min_count=1)
    return tmp_path, split_file, vocabulary


def test_items_and_batches(tiny_split):
    root, split_file, vocabulary = tiny_split
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        dataset = CaptionDataset(split_file, root, "train", vocabulary, max_length=5, image_size=32,
                                 skip_unreadable=True)
    assert len(dataset) == 3  # restval counts as train; the corrupt image is skipped with a warning
    item = dataset[1]
    assert item["image"].shape == (3, 32, 32) and item["image_id"] == 101
    assert [vocabulary.decode(c) for c in item["captions"]] == [["a", "red", "ball"],
                                                                ["a", "ball", "on", "a", "very"]]
    batch = collate([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 3, 32, 32)
    assert batch["captions"].shape == (2, 2, 7)
    assert batch["caption_mask"].tolist() == [[True, False], [True, True]]
    assert torch.equal(batch["image_ids"], torch.tensor([100, 101]))



def test_collate_draws_captions_per_image_reproducibly():
    items = [{"image": torch.zeros(3, 4, 4), "image_id": i,
              "captions": [torch.tensor([1, 3 + c, 2]) for c in range(5 - 3 * i)]} for i in range(2)]
    draws = [collate(items, captions_per_image=2, generator=torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert torch.equal(draws[0]["captions"], draws[1]["captions"])
    assert draws[0]["captions"].shape == (2, 2, 3)
    assert draws[0]["caption_mask"].all()
    for draw in draws:  # two different captions of image 0; image 1 has only two, so both are kept
        assert len(set(draw["captions"][0, :, 1].tolist())) == 2
        assert sorted(draw["captions"][1, :, 1].tolist()) == [3, 4]
    seen = {tuple(collate(items, 2, torch.Generator().manual_seed(s))["captions"][0, :, 1].tolist()) for s in range(20)}
    assert len(seen) > 3  # the draw depends on the generator
    with pytest.raises(ValueError, match="captions_per_image"):
        collate(items, captions_per_image=-1)

def test_unreadable_images_raise_naming_the_file(tiny_split):
    root, split_file, vocabulary = tiny_split
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        CaptionDataset(split_file, root, "train", vocabulary, skip_unreadable=True)
    dataset = CaptionDataset(split_file, root, "train", vocabulary, image_size=32)
    with pytest.raises(ValueError, match="corrupt.jpg is unreadable or corrupt"):
        dataset[3]
    test = CaptionDataset(split_file, root, "test", vocabulary, image_size=32)
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"):
        test[0]


def test_bad_split_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_karpathy(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json is not valid json"):
        load_karpathy(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="has no 'images' list"):
        load_karpathy(tmp_path / "other.json")
    (tmp_path / "partial.json").write_text('{"images": [{"filename": "a.jpg"}]}')
    with pytest.raises(ValueError, match=r"image #0 lacks \['split', 'sentences'\]"):
        load_karpathy(tmp_path / "partial.json")
    with pytest.raises(ValueError, match="split must be one of"):
        CaptionDataset(tmp_path / "partial.json", tmp_path, "dev", Vocabulary.build([["a"]], 1))


def test_built_in_scenes_load(tmp_path):
    from capxai.data import scenes
    root = scenes.generate(tmp_path / "scenes", scenes.SceneConfig(train=6, val=2, test=2), progress=False)
    images = load_karpathy(root / "dataset_scenes.json")
    vocabulary = Vocabulary.build([s["tokens"] for image in images for s in image["sentences"]], min_count=1)
    dataset = CaptionDataset(root / "dataset_scenes.json", root, "train", vocabulary, image_size=96)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["images"].shape == (6, 3, 96, 96) and batch["captions"].shape[:2] == (6, 5)


def test_coco_caption_files_give_the_same_split_as_karpathy_json(tmp_path, capsys):
    from capxai import cli
    from capxai.data import scenes

    root = scenes.generate(tmp_path / "scenes", scenes.SceneConfig(train=5, val=2, test=3), progress=False)
    arguments = ["data", "coco", "--out", str(tmp_path / "dataset_coco.json")]
    for split in ("train", "val", "test"):
        arguments += ["--split", split, str(root / "annotations" / f"captions_{split}.json"), f"images/{split}"]
    assert cli.main(arguments) == 0
    converted, original = load_karpathy(tmp_path / "dataset_coco.json"), load_karpathy(root / "dataset_scenes.json")
    assert [(i["cocoid"], i["split"], i["filepath"], i["filename"]) for i in converted] == \
        [(i["cocoid"], i["split"], i["filepath"], i["filename"]) for i in original]
    assert [[s["tokens"] for s in i["sentences"]] for i in converted] == \
        [[s["tokens"] for s in i["sentences"]] for i in original]
    vocabulary = Vocabulary.build([s["tokens"] for i in converted for s in i["sentences"]], min_count=1)
    assert len(CaptionDataset(tmp_path / "dataset_coco.json", root, "test", vocabulary, image_size=32)) == 3
    assert cli.main(arguments) == 2  # not overwritten unless asked
    assert "exists" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("[1, 2")
    from capxai.data.coco import karpathy_from_coco

    with pytest.raises(ValueError, match="broken.json"):
        karpathy_from_coco({"train": (tmp_path / "broken.json", "x")})
    with pytest.raises(ValueError, match="instances file"):
        karpathy_from_coco({"train": (root / "annotations" / "instances_train.json", "x")})


def test_flickr30k_style_entries_load(tmp_path):
    Image.new("RGB", (20, 20), "red").save(tmp_path / "1000.jpg")
    split_file = tmp_path / "dataset_flickr30k.json"
    split_file.write_text(json.dumps({"dataset": "flickr30k", "images": [
        {"filename": "1000.jpg", "imgid": 0, "split": "val",
         "sentences": [{"tokens": ["a", "dog"], "raw": "A dog."}]}]}))
    vocabulary = Vocabulary.build([["a", "dog"]], min_count=1)
    item = CaptionDataset(split_file, tmp_path, "val", vocabulary, image_size=16)[0]
    assert item["image_id"] == 0 and vocabulary.decode(item["captions"][0]) == ["a", "dog"]
