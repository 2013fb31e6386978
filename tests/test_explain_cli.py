"""``capxai explain``: images with every method (files, figures, no silent overwrite), a whole split in resumable
shards, and two torchrun-style processes writing the same files as one."""
import os
import subprocess
import sys

import torch

from capxai import cli
from capxai.explain import Explanation
from capxai.commands.explain_run import load_shards
from capxai.train import load_trained


def _run(*arguments):
    return cli.main([str(a) for a in arguments])


def test_explain_images_every_method(tiny_trained, tmp_path, capsys):
    checkpoint, data = tiny_trained
    images = sorted((data / "images" / "test").glob("*.png"))[:2]
    out = tmp_path / "out"
    assert _run("explain", "--checkpoint", checkpoint, "--images", *images, "--method", "all", "--out", out) == 0
    for method in ("lrp", "gradcam", "guided-gradcam", "guided-backprop", "gradient-x-input", "attention"):
        explanation = Explanation.load(out / method / "explanation.pt")
        assert explanation.tokens.shape[0] == 2 and explanation.method == method
        figures = sorted((out / method / images[0].stem).glob("*.png"))
        assert len(figures) == int(explanation.lengths[0]) and figures[0].stat().st_size > 1000
    assert _run("explain", "--checkpoint", checkpoint, "--images", *images, "--out", out) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    word = next(w for w in load_trained(checkpoint)[1].words[4:] if w != "a")  # a word the model knows
    assert _run("explain", "--checkpoint", checkpoint, "--images", images[0], "--captions", f"a {word}", "--out", out,
                "--overwrite", "--no-figures") == 0
    assert Explanation.load(out / "lrp" / "explanation.pt").words == [["a", word, "<end>"]]


def test_explain_contrast_from_the_cli(tiny_trained, tmp_path, capsys):
    """``--contrast WORD``: each word explained rather than WORD, stored with the explanation; a word outside the
    vocabulary and a method without a start are refused before any work."""
    checkpoint, data = tiny_trained
    images = sorted((data / "images" / "test").glob("*.png"))[:1]
    vocabulary = load_trained(checkpoint)[1]
    word = vocabulary.words[5]
    out = tmp_path / "out"
    assert _run("explain", "--checkpoint", checkpoint, "--images", *images, "--contrast", word, "--no-figures",
                "--out", out) == 0
    explanation = Explanation.load(out / "lrp" / "explanation.pt")
    assert torch.equal(explanation.contrast, torch.full_like(explanation.tokens, vocabulary.index[word]))
    plain = tmp_path / "plain"
    assert _run("explain", "--checkpoint", checkpoint, "--images", *images, "--no-figures", "--out", plain) == 0
    assert not torch.equal(Explanation.load(plain / "lrp" / "explanation.pt").pixel_relevance,
                           explanation.pixel_relevance)
    runner = tmp_path / "runner-up"
    assert _run("explain", "--checkpoint", checkpoint, "--images", *images, "--contrast", "<runner-up>",
                "--no-figures", "--out", runner) == 0
    explanation = Explanation.load(runner / "lrp" / "explanation.pt")
    assert not (explanation.contrast == explanation.tokens).any()  # never the explained word itself
    assert explanation.contrast_words == [[vocabulary.words[int(i)] for i in row[:n]]
                                          for row, n in zip(explanation.contrast, explanation.lengths.tolist())]
    split = tmp_path / "split"  # a split's run records its contrast: a run against another word is another run
    assert _run("explain", "--checkpoint", checkpoint, "--split-file", data / "dataset_scenes.json", "--limit", "2",
                "--method", "lrp", "--contrast", word, "--out", split) == 0
    (shard,) = load_shards(split / "lrp")
    assert (shard["explanation"].contrast == vocabulary.index[word]).all()
    assert _run("explain", "--checkpoint", checkpoint, "--split-file", data / "dataset_scenes.json", "--limit", "2",
                "--method", "lrp", "--out", split) == 2
    assert "it differs in contrast" in capsys.readouterr().err
    for arguments, message in [(["--contrast", "zebraxyz"], "--contrast 'zebraxyz' is not in the model's vocabulary"),
                                (["--contrast", word, "--method", "all"], "attention does not")]:
        assert _run("explain", "--checkpoint", checkpoint, "--images", *images, "--out", tmp_path / "o",
                    *arguments) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_explain_bad_arguments(tiny_trained, tmp_path, capsys):
    checkpoint, data = tiny_trained
    image = sorted((data / "images" / "test").glob("*.png"))[0]
    cases = [
        (["--images", image, "--split-file", data / "dataset_scenes.json"], "either --images or --split-file"),
        (["--images", image, "--method", "saliency"], "--method: invalid choice: 'saliency'"),
        (["--images", image, "--captions", "a", "b"], "2 --captions for 1 --images"),
        (["--images", tmp_path / "missing.png"], "does not exist"),
        (["--split-file", data / "dataset_scenes.json", "--shard-size", "0"], "--shard-size: must be >= 1"),
        (["--split-file", data / "dataset_scenes.json", "--limit", "0"], "--limit: must be >= 1"),
        (["--images", image, "--max-length", "0"], "--max-length: must be >= 1"),
        (["--images", image, "--out", image], "is not a folder"),
    ]
    for arguments, message in cases:
        assert _run("explain", "--checkpoint", checkpoint, "--out", tmp_path / "o", *arguments) == 2
        assert message in capsys.readouterr().err
    assert _run("explain", "--checkpoint", tmp_path / "none.pt", "--images", image, "--out", tmp_path / "o") == 2
    assert not (tmp_path / "o").exists() and image.is_file()  # refused calls write nothing, touch nothing


def _split_command(checkpoint, data, out):
    return [sys.executable, "-m", "capxai.cli", "explain", "--checkpoint", str(checkpoint), "--split-file",
            str(data / "dataset_scenes.json"), "--shard-size", "2", "--method", "lrp", "--out", str(out)]


def test_split_in_shards_resumes_and_two_processes_equal_one(tiny_trained, tmp_path):
    checkpoint, data = tiny_trained
    one = tmp_path / "one"
    assert _run("explain", "--checkpoint", checkpoint, "--split-file", data / "dataset_scenes.json",
                "--shard-size", "2", "--method", "lrp", "--out", one) == 0
    shards = sorted((one / "lrp").glob("shard-*.pt"))
    assert len(shards) == 4  # 7 test images in shards of 2
    # resume: a missing shard is redone, complete ones are kept as they are
    kept = shards[0].stat().st_mtime_ns
    shards[2].unlink()
    assert _run("explain", "--checkpoint", checkpoint, "--split-file", data / "dataset_scenes.json",
                "--shard-size", "2", "--out", one) == 0
    assert shards[2].exists() and shards[0].stat().st_mtime_ns == kept
    # two processes as torchrun starts them (RANK / WORLD_SIZE), each on its own shards
    two = tmp_path / "two"
    processes = [subprocess.Popen(_split_command(checkpoint, data, two), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE,
                                  env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"})
                 for rank in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
    first, second = load_shards(one / "lrp"), load_shards(two / "lrp")
    assert [s["image_ids"] for s in first] == [s["image_ids"] for s in second]
    assert sum(len(s["image_ids"]) for s in first) == 7
    for a, b in zip(first, second):
        assert a["captions"] == b["captions"]
        torch.testing.assert_close(a["explanation"].pixel_relevance, b["explanation"].pixel_relevance)
        torch.testing.assert_close(a["explanation"].word_relevance, b["explanation"].word_relevance)
