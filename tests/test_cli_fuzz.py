"""CLI fuzz: hundreds of generated bad invocations of every ``capxai`` command (bad numbers, paths, files of the wrong
kind or corrupt, json of the wrong shape, checkpoints of another kind or version or carrying code, existing outputs,
outputs in the way). Each must end with exit status 2, one message that names the culprit (the option or the file)
and no traceback, and must leave the sandbox exactly as it was: nothing written, nothing replaced, nothing deleted,
no temporary file left. Run in-process (``capxai.cli.main``) on tiny data, so the suite takes seconds."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from capxai import cli

MARKER = "code-ran-from-a-file"


class _RunsCode:
    """Unpickling this runs a command (what a crafted checkpoint does with ``weights_only=False``)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return path


def _bad_split_files(bad: Path, good: dict) -> dict:
    entry = good["images"][0]
    sentence = entry["sentences"][0]
    variants = {
        "empty": b"", "garbage": b"\x89\x00\xffnot json", "not-utf8": b'{"images": "\xff\xfe"}',
        "list": [], "images-not-list": {"images": 5}, "entry-not-object": {"images": [1]},
        "missing-keys": {"images": [{"filename": "a.png"}]},
        "tokens-string": {"images": [{**entry, "sentences": [{**sentence, "tokens": "a red ball"}]}]},
        "filename-int": {"images": [{**entry, "filename": 7}]},
        "sentences-not-list": {"images": [{**entry, "sentences": "a ball"}]},
        "cocoid-string": {"images": [{**entry, "cocoid": "7"}]},
        "probe-string": {"images": [{**entry, "probe": "ball"}]},
        "raw-number": {"images": [{**entry, "sentences": [{**sentence, "raw": 3}]}]},
        # crafted entries that would make capxai read (and a report copy) a file outside --image-root (issue 24)
        "escapes-root": {"images": [{**entry, "filepath": "../../..", "filename": "etc/passwd"}]},
        "absolute-filename": {"images": [{**entry, "filepath": "", "filename": "/etc/passwd"}]},
        "nul-in-filename": {"images": [{**entry, "filename": "a\u0000b.png"}]},
    }
    return {name: _write(bad / f"split-{name}.json", content) for name, content in variants.items()}


def _bad_checkpoints(bad: Path, best: Path) -> dict:
    payload = torch.load(best, weights_only=True)
    files = {"empty": _write(bad / "ckpt-empty.pt", b""), "garbage": _write(bad / "ckpt-garbage.pt", b"\x00garbage"),
             "truncated": _write(bad / "ckpt-truncated.pt", best.read_bytes()[:200]),
             "json": _write(bad / "ckpt.json", {"model": {}})}
    torch.save({"payload": _RunsCode(bad / MARKER)}, bad / "ckpt-runs-code.pt")
    files["runs-code"] = bad / "ckpt-runs-code.pt"
    torch.save({"a": torch.ones(2)}, bad / "ckpt-tensors.pt")
    files["tensors"] = bad / "ckpt-tensors.pt"
    legacy = {key: value for key, value in payload.items() if key not in ("format", "version", "kind")}
    torch.save(legacy, bad / "ckpt-unstamped.pt")
    files["unstamped"] = bad / "ckpt-unstamped.pt"
    torch.save({**payload, "version": 99}, bad / "ckpt-version99.pt")
    files["version99"] = bad / "ckpt-version99.pt"
    torch.save({**payload, "config": {**payload["config"], "hidden": 24}}, bad / "ckpt-wrong-config.pt")
    files["wrong-config"] = bad / "ckpt-wrong-config.pt"
    torch.save({**payload, "config": {**payload["config"], "hidden": -3}}, bad / "ckpt-invalid-config.pt")
    files["invalid-config"] = bad / "ckpt-invalid-config.pt"
    torch.save({**payload, "vocabulary": "abc"}, bad / "ckpt-vocabulary-string.pt")
    files["vocabulary-string"] = bad / "ckpt-vocabulary-string.pt"
    torch.save({**payload, "vocabulary": payload["vocabulary"][:5]}, bad / "ckpt-short-vocabulary.pt")
    files["short-vocabulary"] = bad / "ckpt-short-vocabulary.pt"
    return files


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Tiny scenes, a model trained on them, bad files of every kind and outputs in the way, under one folder."""
    from capxai.data import scenes
    from capxai.explain import LRP
    from capxai.train import TrainConfig, load_trained, train

    root = tmp_path_factory.mktemp("sandbox")
    data = scenes.generate(root / "scenes", scenes.SceneConfig(train=8, val=3, test=3, image_size=32, seed=3),
                           progress=False)
    config = TrainConfig(hidden=8, attention_dim=8, heads=2, dropout=0.0, epochs=1, batch_size=4, min_count=1,
                         max_length=8, image_size=32)
    train(config, data / "dataset_scenes.json", data, root / "model", progress=False)
    best = root / "model" / "best.pt"
    bad = root / "bad"
    good_split = json.loads((data / "dataset_scenes.json").read_text())
    files = {"split": _bad_split_files(bad, good_split), "checkpoint": _bad_checkpoints(bad, best),
             "split-edited": _write(bad / "split-edited.json", {**good_split, "dataset": "scenes, edited"})}
    model, vocabulary, _ = load_trained(best)
    LRP(model, vocabulary=vocabulary).explain(torch.randn(1, 3, 32, 32), captions=["a ball"]).save(
        bad / "explanation.pt")
    files["checkpoint"]["explanation"] = bad / "explanation.pt"
    files["folder"] = bad / "a-folder"
    files["folder"].mkdir()
    files["text"] = _write(bad / "notes.txt", "just text\n")
    files["image-garbage"] = _write(bad / "garbage.png", b"\x89PNG\r\n\x1a\nbroken")
    files["image-empty"] = _write(bad / "empty.png", b"")
    files["instances"] = {
        "captions-file": data / "annotations" / "captions_test.json", "garbage": bad / "ckpt-garbage.pt",
        "empty": bad / "ckpt-empty.pt", "list": _write(bad / "instances-list.json", []),
        "no-categories": _write(bad / "instances-no-categories.json", {"images": [], "annotations": []}),
        "other-split": data / "annotations" / "instances_train.json"}
    files["synonyms"] = {"names-nothing": _write(bad / "synonyms-nothing.txt", "zebra, horse\ngiraffe\n"),
                         "binary": _write(bad / "synonyms-binary.txt", b"\xff\xfe\x00\x01"),
                         "empty": _write(bad / "synonyms-empty.txt", ""),
                         "twice": _write(bad / "synonyms-twice.txt", "ball, orb\nball, sphere\n")}
    # a copy of the scenes with one broken image per split kind
    for name, split, kind in (("corrupt-val", "val", "garbage"), ("missing-test", "test", "missing")):
        copy = root / name
        shutil.copytree(data, copy)
        victim = sorted((copy / "images" / split).glob("*.png"))[-1]
        if kind == "garbage":
            victim.write_bytes(b"not a png at all")
        else:
            victim.unlink()
        files[name] = copy
    # outputs in the way: files capxai did not write, and earlier runs
    foreign = root / "foreign"
    for relative in ("scenes-out/holiday.jpg", "eval-out/captions_test_beam1.json", "explain-out/lrp/explanation.pt",
                     "train-out/best.pt", "coco/split.json", "blocker"):
        _write(foreign / relative, b"the user's own file")
    no_val = {**good_split, "images": [image for image in good_split["images"] if image["split"] != "val"]}
    files["split-no-val"] = _write(bad / "split-no-val.json", no_val)
    wrong_last = root / "model-wrong-last"  # a last.pt (listed in the manifest) that is a model, not a training one
    shutil.copytree(root / "model", wrong_last)
    (wrong_last / "last.pt").write_bytes(best.read_bytes())
    earlier_eval = root / "earlier-eval"
    assert cli.main(["evaluate", "--checkpoint", str(best), "--split-file", str(data / "dataset_scenes.json"),
                     "--image-root", str(data), "--beam-size", "1", "--out", str(earlier_eval)]) == 0
    edited_eval = root / "edited-eval"  # an earlier run whose metrics the user annotated (issue 24)
    shutil.copytree(earlier_eval, edited_eval)
    metrics = edited_eval / "metrics_test_beam1.json"
    metrics.write_text(metrics.read_text().rstrip() + " \n")
    earlier_split = root / "earlier-split"
    assert cli.main(["explain", "--checkpoint", str(best), "--split-file", str(data / "dataset_scenes.json"),
                     "--shard-size", "2", "--limit", "2", "--out", str(earlier_split)]) == 0
    earlier_coco = root / "earlier-coco" / "split.json"
    assert cli.main(["data", "coco", "--split", "test", str(data / "annotations" / "captions_test.json"),
                     "images/test", "--out", str(earlier_coco)]) == 0
    files.update(root=root, data=data, best=best, last=root / "model" / "last.pt", foreign=foreign,
                 earlier_eval=earlier_eval, edited_eval=edited_eval, earlier_split=earlier_split,
                 earlier_coco=earlier_coco,
                 image=sorted((data / "images" / "test").glob("*.png"))[0])
    return files


# -- valid invocations; each case changes one thing --------------------------------------------------------------
def _base(command: str, s: dict, out: Path) -> list:
    data, split = s["data"], s["data"] / "dataset_scenes.json"
    return {
        "scenes": ["data", "scenes", "--out", out, "--train", "2", "--val", "1", "--test", "1", "--size", "32"],
        "coco": ["data", "coco", "--split", "test", data / "annotations" / "captions_test.json", "images/test",
                 "--out", out / "split.json"],
        "train": ["train", "--split-file", split, "--image-root", data, "--out", out, "--hidden", "8",
                  "--attention-dim", "8", "--epochs", "1", "--min-count", "1", "--image-size", "32",
                  "--batch-size", "4", "--max-length", "8", "--dropout", "0", "--heads", "2"],
        "evaluate": ["evaluate", "--checkpoint", s["best"], "--split-file", split, "--image-root", data,
                     "--beam-size", "1", "--out", out],
        "finetune": ["finetune", "--checkpoint", s["best"], "--split-file", split, "--image-root", data, "--out", out,
                     "--method", "baseline"],
        "explain": ["explain", "--checkpoint", s["best"], "--images", s["image"], "--out", out],
        "explain-split": ["explain", "--checkpoint", s["best"], "--split-file", split, "--shard-size", "2",
                          "--limit", "2", "--out", out],
    }[command]


def _set(argv: list, option: str, *values) -> list:
    """``argv`` with ``option`` given ``values`` (replacing as many values when present, else appended)."""
    argv = list(argv)
    if option in argv:
        at = argv.index(option)
        argv[at + 1:at + 1 + len(values)] = list(values)
        return argv
    return argv + [option, *values]


def _drop(argv: list, option: str) -> list:
    argv = list(argv)
    at = argv.index(option)
    del argv[at:at + 2]
    return argv


INT_OPTIONS = {  # command -> options that must be integers >= 1 (or >= 0 / >= 32 where said)
    "scenes": {"--train": 0, "--val": 0, "--test": 0, "--seed": 0, "--size": 32},
    "train": {"--hidden": 1, "--attention-dim": 1, "--heads": 1, "--epochs": 1, "--batch-size": 1, "--max-length": 1,
              "--min-count": 1, "--image-size": 32, "--seed": 0, "--captions-per-image": 0},
    "evaluate": {"--beam-size": 1, "--max-length": 1},
    "explain": {"--beam-size": 1, "--max-length": 1},
    "explain-split": {"--limit": 1, "--shard-size": 1, "--beam-size": 1},
}
FLOAT_OPTIONS = {  # command -> option -> values out of its range
    "scenes": {"--probe-fraction": ["1.5", "-0.1", "nan", "x"]},
    "train": {"--dropout": ["1", "-0.1", "nan", "inf"], "--lr": ["0", "-1", "nan", "inf", "abc"],
              "--encoder-lr": ["0", "-1e-3", "1e999"]},
}
FILE_OPTIONS = {"train": ["--split-file"], "evaluate": ["--checkpoint", "--split-file"],
                "explain": ["--checkpoint", "--images"], "explain-split": ["--checkpoint", "--split-file"]}
FOLDER_OPTIONS = {"train": ["--image-root"], "evaluate": ["--image-root"], "explain-split": ["--image-root"]}


def _cases():
    """(id, builder): a builder takes the sandbox and a fresh output path and returns (argv, culprit)."""
    cases = []

    def add(name, build):
        cases.append(pytest.param(build, id=name))

    for command, options in INT_OPTIONS.items():
        for option, lowest in options.items():
            for value in [str(lowest - 1), "-5", "abc", "1.5", "", "nan", "2e3"]:
                add(f"{command}{option}={value!r}",
                    lambda s, out, c=command, o=option, v=value: (_set(_base(c, s, out), o, v), o))
    for command, options in FLOAT_OPTIONS.items():
        for option, values in options.items():
            for value in values:
                add(f"{command}{option}={value}",
                    lambda s, out, c=command, o=option, v=value: (_set(_base(c, s, out), o, v), o))
    for command, options in FILE_OPTIONS.items():
        for option in options:
            add(f"{command}{option}-missing",
                lambda s, out, c=command, o=option: (_set(_base(c, s, out), o, str(s["root"] / "nothing")), "nothing"))
            add(f"{command}{option}-folder",
                lambda s, out, c=command, o=option: (_set(_base(c, s, out), o, s["folder"]), "a-folder"))
            add(f"{command}{option}-empty-name",
                lambda s, out, c=command, o=option: (_set(_base(c, s, out), o, ""), o))
    for command, options in FOLDER_OPTIONS.items():
        for option in options:
            add(f"{command}{option}-missing",
                lambda s, out, c=command, o=option: (_set(_base(c, s, out), o, s["root"] / "nowhere"), "nowhere"))
            add(f"{command}{option}-a-file",
                lambda s, out, c=command, o=option: (_set(_base(c, s, out), o, s["text"]), "notes.txt"))
            add(f"{command}{option}-wrong-folder",
                lambda s, out, c=command, o=option: (_set(_base(c, s, out), o, s["folder"]), "--image-root"))
    for command in ("scenes", "train", "evaluate", "explain", "explain-split"):
        add(f"{command}--out-is-a-file",
            lambda s, out, c=command: (_set(_base(c, s, out), "--out", s["text"]), "notes.txt"))
        add(f"{command}--out-inside-a-file",
            lambda s, out, c=command: (_set(_base(c, s, out), "--out", s["text"] / "sub"), "notes.txt"))
    add("coco--out-is-a-folder", lambda s, out: (_set(_base("coco", s, out), "--out", s["folder"]), "a-folder"))
    add("coco--out-inside-a-file",
        lambda s, out: (_set(_base("coco", s, out), "--out", s["text"] / "x.json"), "notes.txt"))
    # split files of the wrong shape, for every command that reads one
    for command in ("train", "evaluate", "explain-split"):
        for name in _bad_split_names():
            add(f"{command}-split-{name}",
                lambda s, out, c=command, n=name: (_set(_base(c, s, out), "--split-file", s["split"][n]),
                                                   f"split-{n}.json"))
    # checkpoints of another kind, version, shape, or carrying code
    for command in ("evaluate", "explain", "explain-split"):
        for name in CHECKPOINT_NAMES:
            add(f"{command}-checkpoint-{name}",
                lambda s, out, c=command, n=name: (_set(_base(c, s, out), "--checkpoint", s["checkpoint"][n]),
                                                   s["checkpoint"][n].name))
    # images: corrupt, empty, not an image, missing within a split
    for name in ("image-garbage", "image-empty", "text"):
        add(f"explain-images-{name}",
            lambda s, out, n=name: (_set(_base("explain", s, out), "--images", s[n]), s[n].name))
    for command in ("train", "evaluate", "explain-split"):
        for copy, culprit in (("corrupt-val", ".png"), ("missing-test", ".png")):
            if command != "train" and copy == "corrupt-val":
                continue
            if command == "train" and copy == "missing-test":
                continue
            add(f"{command}-{copy}", lambda s, out, c=command, k=copy, u=culprit: (
                _set(_set(_base(c, s, out), "--split-file", s[k] / "dataset_scenes.json"), "--image-root", s[k]), u))
    add("explain-split-corrupt-val-image", lambda s, out: (
        _set(_set(_set(_base("explain-split", s, out), "--split-file", s["corrupt-val"] / "dataset_scenes.json"),
                  "--image-root", s["corrupt-val"]), "--split", "val"), ".png"))
    # hallucination inputs
    for name in ("captions-file", "garbage", "empty", "list", "no-categories", "other-split"):
        add(f"evaluate-instances-{name}",
            lambda s, out, n=name: (_set(_base("evaluate", s, out), "--instances", s["instances"][n]),
                                    s["instances"][n].name))
    for name in ("names-nothing", "binary", "empty", "twice"):
        add(f"evaluate-synonyms-{name}",
            lambda s, out, n=name: (_set(_base("evaluate", s, out), "--synonyms", s["synonyms"][n]),
                                    s["synonyms"][n].name))
    # outputs in the way
    add("scenes-out-not-empty", lambda s, out: (_set(_base("scenes", s, out), "--out", s["foreign"] / "scenes-out"),
                                                "scenes-out"))
    add("scenes-overwrite-foreign", lambda s, out: (
        _set(_base("scenes", s, out), "--out", s["foreign"] / "scenes-out") + ["--overwrite"], "holiday.jpg"))
    add("scenes-overwrite-sandbox", lambda s, out: (
        _set(_base("scenes", s, out), "--out", s["root"]) + ["--overwrite"], str(s["root"])))
    add("coco-out-foreign", lambda s, out: (
        _set(_base("coco", s, out), "--out", s["foreign"] / "coco" / "split.json"), "split.json"))
    add("coco-overwrite-foreign", lambda s, out: (
        _set(_base("coco", s, out), "--out", s["foreign"] / "coco" / "split.json") + ["--overwrite"], "split.json"))
    add("coco-earlier-run", lambda s, out: (_set(_base("coco", s, out), "--out", s["earlier_coco"]), "--overwrite"))
    add("coco-same-split-twice", lambda s, out: (
        _base("coco", s, out) + ["--split", "test", s["data"] / "annotations" / "captions_val.json", "images/val"],
        "--split test"))
    add("coco-instances-as-captions", lambda s, out: (
        _set(_base("coco", s, out), "--split", "test", s["data"] / "annotations" / "instances_test.json",
             "images/test"), "instances_test.json"))
    add("coco-captions-missing", lambda s, out: (
        _set(_base("coco", s, out), "--split", "test", s["root"] / "nothing.json", "images/test"), "nothing.json"))
    add("coco-split-too-few-values", lambda s, out: (["data", "coco", "--split", "test", "x.json", "--out",
                                                      out / "s.json"], "--split"))
    for overwrite in ([], ["--overwrite"]):
        flag = "-overwrite" if overwrite else ""
        add(f"evaluate-foreign-results{flag}", lambda s, out, f=overwrite: (
            _set(_base("evaluate", s, out), "--out", s["foreign"] / "eval-out") + f, "captions_test_beam1.json"))
        add(f"explain-foreign-results{flag}", lambda s, out, f=overwrite: (
            _set(_base("explain", s, out), "--out", s["foreign"] / "explain-out") + f, "explanation.pt"))
        add(f"train-foreign-checkpoint{flag}", lambda s, out, f=overwrite: (
            _set(_base("train", s, out), "--out", s["foreign"] / "train-out") + f, "best.pt"))
    add("evaluate-earlier-run", lambda s, out: (_set(_base("evaluate", s, out), "--out", s["earlier_eval"]),
                                                "--overwrite"))
    add("evaluate-overwrite-edited-result", lambda s, out: (
        _set(_base("evaluate", s, out), "--out", s["edited_eval"]) + ["--overwrite"], "metrics_test_beam1.json"))
    add("explain-split-other-run", lambda s, out: (
        _set(_set(_base("explain-split", s, out), "--out", s["earlier_split"]), "--limit", "3"), "--overwrite"))
    add("explain-split-other-composite", lambda s, out: (
        _set(_set(_base("explain-split", s, out), "--out", s["earlier_split"]), "--composite", "epsilon_plus_flat"),
        "composite"))
    add("train-split-without-val", lambda s, out: (_set(_base("train", s, out), "--split-file", s["split-no-val"]),
                                                   "'val'"))
    add("train-last-not-a-training-checkpoint", lambda s, out: (
        _set(_base("train", s, out), "--out", s["root"] / "model-wrong-last"), "last.pt"))
    # resuming with other options
    for option, value in (("--hidden", "16"), ("--model", "multihead"), ("--max-length", "9"), ("--lr", "0.01"),
                          ("--min-count", "2"), ("--attention-dim", "4")):
        add(f"train-resume{option}", lambda s, out, o=option, v=value: (
            _set(_set(_base("train", s, out), "--out", s["best"].parent), o, v), o.lstrip("-").replace("-", "_")))
    add("train-resume-other-split-file", lambda s, out: (
        _set(_set(_base("train", s, out), "--out", s["best"].parent), "--split-file", s["split-edited"]),
        "split file"))
    # choices, combinations, unknown words
    for argv, culprit in ((["frobnicate"], "frobnicate"), ([], "command"), (["data"], "data_command"),
                          (["evaluate"], "--checkpoint"), (["train", "--split-file"], "--split-file")):
        add(f"argv-{'-'.join(argv) or 'empty'}", lambda s, out, a=argv, u=culprit: (list(a), u))
    for command, option, value in (("train", "--model", "lstm"), ("train", "--encoder", "alexnet"),
                                   ("evaluate", "--split", "dev"), ("explain", "--composite", "zplus"),
                                   ("explain", "--method", "saliency"), ("explain-split", "--split", "holdout")):
        add(f"{command}{option}={value}",
            lambda s, out, c=command, o=option, v=value: (_set(_base(c, s, out), o, v), o))
    for command in ("train", "evaluate", "explain"):
        add(f"{command}-unknown-option", lambda s, out, c=command: (_base(c, s, out) + ["--colour", "red"], "--colour"))
    add("train-heads-not-dividing", lambda s, out: (
        _set(_set(_base("train", s, out), "--model", "multihead"), "--heads", "3"), "--heads"))
    add("train-encoder-weights-garbage", lambda s, out: (
        _set(_set(_base("train", s, out), "--encoder", "vgg16"), "--encoder-weights", s["checkpoint"]["garbage"]),
        "ckpt-garbage.pt"))
    add("explain-images-and-split", lambda s, out: (
        _base("explain", s, out) + ["--split-file", s["data"] / "dataset_scenes.json"], "--split-file"))
    add("explain-neither-images-nor-split", lambda s, out: (_drop(_base("explain", s, out), "--images"), "--images"))
    add("explain-captions-count", lambda s, out: (_base("explain", s, out) + ["--captions", "a", "b"], "--captions"))
    add("explain-captions-without-images", lambda s, out: (
        _base("explain-split", s, out) + ["--captions", "a ball"], "--captions"))
    # run options (capxai.runtime): every computing command checks them before any work
    no_gpu = not torch.cuda.is_available()
    for command in ("train", "finetune", "evaluate", "explain", "explain-split"):
        bad_run = [("--workers", "-1", "--workers"), ("--workers", "two", "--workers"), ("--device", "tpu", "--device"),
                   ("--device", "cuda:x", "--device"), ("--device", "", "--device"),
                   ("--dist-backend", "mpi", "--dist-backend"), ("--device", "cuda:64", "--device")]
        if no_gpu:
            bad_run += [("--device", "cuda", "--device"), ("--dist-backend", "nccl", "--dist-backend")]
        if command in ("train", "finetune"):
            bad_run += [("--precision", "fp8", "--precision")] + ([("--precision", "fp16", "--precision")]
                                                                  if no_gpu else [])
        else:
            bad_run += [("--precision", "bf16", "--precision")]  # explanations and evaluation take no precision
        for option, value, culprit in bad_run:
            add(f"{command}{option}={value or 'empty'}", lambda s, out, c=command, o=option, v=value, u=culprit: (
                _set(_base(c, s, out), o, v), u))
    return cases


def _bad_split_names():
    return ["empty", "garbage", "not-utf8", "list", "images-not-list", "entry-not-object", "missing-keys",
            "tokens-string", "filename-int", "sentences-not-list", "cocoid-string", "probe-string", "raw-number",
            "escapes-root", "absolute-filename", "nul-in-filename"]


CHECKPOINT_NAMES = ["empty", "garbage", "truncated", "json", "runs-code", "tensors", "unstamped", "version99",
                    "wrong-config", "invalid-config", "vocabulary-string", "short-vocabulary", "explanation"]
CASES = _cases()


def _snapshot(root: Path) -> dict:
    """Every path under ``root`` with its size and modification time (and the bytes of small files)."""
    state = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            info = path.lstat()
            content = path.read_bytes() if path.is_file() and info.st_size < 4096 else None
            state[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, content)
    return state


def test_the_suite_is_large_enough():
    assert len(CASES) >= 417, len(CASES)  # docs/guide/safety.md says 417


@pytest.mark.parametrize("build", CASES)
def test_bad_invocation(build, sandbox, capsys):
    out = sandbox["root"] / "fresh-output"
    argv, culprit = build(sandbox, out)
    argv = [str(argument) for argument in argv]
    before = _snapshot(sandbox["root"])
    code = cli.main(argv)
    captured = capsys.readouterr()
    message = captured.err.strip().splitlines()[-1] if captured.err.strip() else ""
    assert code == 2, (argv, captured.err[-2000:])
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert message.startswith("capxai"), captured.err
    assert str(culprit) in message, (culprit, message)
    assert not (sandbox["root"] / "bad" / MARKER).exists(), "a checkpoint ran code"
    assert _snapshot(sandbox["root"]) == before, "a refused command changed files"


def test_scenes_overwrite_of_the_current_folder_is_refused(sandbox, tmp_path, monkeypatch, capsys):
    """``capxai data scenes --out . --overwrite`` used to empty the current folder, then crash."""
    _write(tmp_path / "thesis.tex", "years of work")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "scenes", "--out", ".", "--train", "1", "--val", "1", "--test", "1", "--size", "32",
                     "--overwrite"]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["thesis.tex"]


def test_pickled_code_in_a_checkpoint_never_runs(sandbox, capsys):
    from capxai.train import load_trained

    with pytest.raises(ValueError, match="could run code"):
        load_trained(sandbox["checkpoint"]["runs-code"])
    assert not (sandbox["root"] / "bad" / MARKER).exists()
