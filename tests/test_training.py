"""Training: loss falls, checkpoints (atomic) and resume, best kept; two gloo processes with DDP equal one process
on the same global batch."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from capxai.data import scenes
from capxai.train import (TrainConfig, build_model, caption_loss, load_checkpoint, save_checkpoint, train,
                          train_step)
from helpers import TINY_TRAINING, free_port, training_batch, training_model


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    return scenes.generate(tmp_path_factory.mktemp("train") / "scenes",
                           scenes.SceneConfig(train=24, val=6, test=4, seed=1), progress=False)


@pytest.mark.parametrize("model", ["adaptive", "multihead", "transformer"])
def test_train_resume_and_best_checkpoint(tiny_scenes, tmp_path, model):
    config = TrainConfig(**{**TINY_TRAINING.__dict__, "model": model})
    out = tmp_path / model
    history = train(config, tiny_scenes / "dataset_scenes.json", tiny_scenes, out, progress=False)
    assert [e["epoch"] for e in history["epochs"]] == [0, 1]
    assert history["epochs"][1]["loss"] < history["epochs"][0]["loss"]
    assert (out / "best.pt").exists() and (out / "vocabulary.json").exists()
    assert json.loads((out / "history.json").read_text())["best_epoch"] == history["best_epoch"]
    # resume: a third epoch continues from last.pt instead of starting over
    resumed = train(TrainConfig(**{**config.__dict__, "epochs": 3}), tiny_scenes / "dataset_scenes.json",
                    tiny_scenes, out, progress=False)
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2]
    assert resumed["epochs"][:2] == history["epochs"]


def test_checkpoint_errors_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "broken.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="broken.pt is unreadable or corrupt"):
        load_checkpoint(tmp_path / "broken.pt")
    save_checkpoint(tmp_path / "ok.pt", {"a": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt", "ok.pt"]


def _ddp_worker(rank, port, steps, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model = training_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # linear in the gradient: rounding is not amplified
    for step in range(steps):
        batch = training_batch(step, 8)
        half = {name: value[rank * 4:(rank + 1) * 4] for name, value in batch.items()}
        train_step(ddp, optimizer, half, clip_norm=1e9)
    if rank == 0:
        torch.save(model.state_dict(), result_path)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one_process_on_the_global_batch(tmp_path):
    steps = 3
    mp.spawn(_ddp_worker, args=(free_port(), steps, str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    model = training_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # linear in the gradient: rounding is not amplified
    for step in range(steps):
        train_step(model, optimizer, training_batch(step, 8), clip_norm=1e9)
    ddp_state = torch.load(tmp_path / "ddp.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_loss_ignores_padding():
    model = training_model()
    batch = training_batch(0, 2)
    padded = {**batch, "captions": torch.cat([batch["captions"], torch.zeros(2, 2, 3, dtype=torch.long)], -1)}
    torch.testing.assert_close(caption_loss(model, **{k: padded[k] for k in ("images", "captions", "caption_mask")}),
                               caption_loss(model, **{k: batch[k] for k in ("images", "captions", "caption_mask")}))


def test_cli_train(tiny_scenes, tmp_path, capsys):
    from capxai import cli

    arguments = ["train", "--split-file", str(tiny_scenes / "dataset_scenes.json"), "--image-root", str(tiny_scenes),
                 "--out", str(tmp_path / "run"), "--hidden", "16", "--epochs", "1", "--batch-size", "8",
                 "--min-count", "1"]
    assert cli.main(arguments) == 0
    assert "best validation CIDEr" in capsys.readouterr().out
    assert cli.main(["train", "--split-file", str(tmp_path / "none.json"), "--image-root", str(tmp_path),
                     "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_evaluate_writes_metrics_and_hallucination_once(tiny_scenes, tmp_path, capsys):
    from capxai import cli

    run = tmp_path / "run"
    assert cli.main(["train", "--split-file", str(tiny_scenes / "dataset_scenes.json"), "--image-root",
                     str(tiny_scenes), "--out", str(run), "--hidden", "16", "--epochs", "1", "--batch-size", "8",
                     "--min-count", "1", "--captions-per-image", "2", "--dropout", "0.1"]) == 0
    arguments = ["evaluate", "--checkpoint", str(run / "best.pt"), "--split-file",
                 str(tiny_scenes / "dataset_scenes.json"), "--image-root", str(tiny_scenes), "--beam-size", "2",
                 "--out", str(tmp_path / "eval")]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "test (beam 2, 4 images)" in printed and "CIDEr" in printed and "CHAIR-i" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics_test_beam2.json").read_text())
    assert set(metrics) == {"overall", "imgToEval", "run"} and len(metrics["imgToEval"]) == 4
    captions = json.loads((tmp_path / "eval" / "captions_test_beam2.json").read_text())
    assert len(captions) == 4 and all(set(c) == {"image_id", "caption", "run_id"} for c in captions)
    found = json.loads((tmp_path / "eval" / "hallucination_test_beam2.json").read_text())
    assert found["probes"]["images"] == 2 and 0.0 <= found["chair"]["overall"]["CHAIRi"] <= 1.0
    before = (tmp_path / "eval" / "metrics_test_beam2.json").stat().st_mtime_ns
    assert cli.main(arguments) == 2  # results exist: not replaced unless asked
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "eval" / "metrics_test_beam2.json").stat().st_mtime_ns == before


def test_load_trained_restores_the_model_and_names_bad_files(tiny_scenes, tmp_path):
    from capxai.train import load_trained

    out = tmp_path / "run"
    config = TrainConfig(**{**TINY_TRAINING.__dict__, "epochs": 1})
    train(config, tiny_scenes / "dataset_scenes.json", tiny_scenes, out, progress=False)
    model, vocabulary, loaded_config = load_trained(out / "best.pt")
    saved = load_checkpoint(out / "best.pt")["model"]
    assert loaded_config == config and not model.training
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    (tmp_path / "broken.pt").write_bytes(b"no checkpoint")
    with pytest.raises(ValueError, match="broken.pt"):
        load_trained(tmp_path / "broken.pt")
    save_checkpoint(tmp_path / "other.pt", {"weights": 1})
    with pytest.raises(ValueError, match="is not a capxai checkpoint"):
        load_trained(tmp_path / "other.pt")


def test_frozen_encoder_stays_as_initialised(tiny_scenes, tmp_path):
    from capxai.data.vocabulary import Vocabulary
    from capxai.train.trainer import set_seed

    config = TrainConfig(**{**TINY_TRAINING.__dict__, "epochs": 1, "finetune_encoder": False})
    train(config, tiny_scenes / "dataset_scenes.json", tiny_scenes, tmp_path, progress=False)
    trained = load_checkpoint(tmp_path / "last.pt")["model"]
    set_seed(config.seed)
    initial = build_model(config, len(Vocabulary.load(tmp_path / "vocabulary.json"))).state_dict()
    for name, value in initial.items():
        if name.startswith("encoder."):  # weights and BatchNorm statistics untouched
            assert torch.equal(trained[name], value), name
    assert not all(torch.equal(trained[name], value) for name, value in initial.items()
                   if name.startswith("captioner."))


def test_encoder_learning_rate_is_its_own(tiny_scenes, tmp_path):
    config = TrainConfig(**{**TINY_TRAINING.__dict__, "epochs": 1, "encoder_lr": 7e-3})
    train(config, tiny_scenes / "dataset_scenes.json", tiny_scenes, tmp_path, progress=False)
    groups = load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"]
    assert [group["lr"] for group in groups] == [config.lr, 7e-3]
    model = build_model(config, 10)
    assert [len(group["params"]) for group in groups] == [len(list(model.captioner.parameters())),
                                                          len(list(model.encoder.parameters()))]


@pytest.mark.parametrize("field, value, message", [
    ("model", "lstm",
     r"model must be one of \['adaptive', 'multihead', 'transformer', 'hf-vit-gpt2', 'hf-llava'\], got 'lstm'"),
    ("encoder", "swin", r"encoder must be one of \[.*'scene'.*\], got 'swin'"),
    ("hidden", 0, "hidden must be >= 1, got 0")])
def test_config_names_a_bad_choice_or_number(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
