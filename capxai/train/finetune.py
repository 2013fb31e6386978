"""Fine-tuning a trained captioner (``capxai finetune``): LRP-inference fine-tuning or baseline fine-tuning, with
the cross-entropy objective (``lrp_weights.FinetuneObjective``) or self-critical training (``scst``), from the best
cross-entropy checkpoint; checkpoints, resume, run settings (device, precision, workers) and torchrun DDP as in
:func:`capxai.train.train`.

The fine-tuned checkpoints are ordinary model checkpoints (``config`` is the model's training config), so every
command that reads ``best.pt`` reads them; ``finetune`` in them and in ``history.json`` records how they were made.
"""
import dataclasses
import json
from pathlib import Path
from typing import Optional, Union

import torch

from capxai._io import file_sha256
from capxai.data.annotations import load_split_annotations
from capxai.data.captions import image_id_of, open_split
from capxai.evaluate.objects import ObjectWords
from capxai.explain.guided_decoding import object_word_mask
from capxai.options import COUNT, POSITIVE, existing_file, float_between, option
from capxai.outputs import OutputFolder
from capxai.runtime import RunSettings, default_run
from capxai.models.checkpoint import load_checkpoint
from capxai.train.label_gates import object_phrases
from capxai.train.lrp_weights import PAPER, FinetuneObjective, load_stop_words, stop_word_mask
from capxai.train.methods import FINETUNE_METHODS, describe_methods
from capxai.train.scst import CiderReward, scst_loss
from capxai.models.contract import check_captioner
from capxai.models.factory import choice_problems, limit_problems, load_trained
from capxai.train.trainer import EpochLoop, TRAIN_FILES, optimizer_step, restore, set_seed, wrap_distributed

OBJECTIVES = ("xe", "scst")
AUTO = "auto"  # --threshold auto: chosen on the validation split (capxai.train.threshold_choice)


def threshold_value(text: str) -> Union[float, str]:
    """``--threshold``: ``auto`` or a float in [0, 1]."""
    return AUTO if text.strip().lower() == AUTO else float_between(0, 1)(text)

DEFAULT_LR = {"xe": 5e-4, "scst": 5e-5}  # the paper's rates (its config.py, train_bu.py)


@dataclasses.dataclass
class FinetuneConfig:
    """How to fine-tune. ``method``: one of ``capxai.train.methods.FINETUNE_METHODS``. ``lr = None``: 5e-4 for
    "xe", 5e-5 for "scst" (the paper's rates). ``stop_words``: a file (one word per line) or None for capxai's list.
    ``clamp``: clamp every gradient element to [-clamp, clamp] instead of clipping the norm (the paper's code: 0.1).
    ``threshold``: the visual share under which ``gated`` masks an object phrase; ``penalty``: the weight of
    ``share-penalty``'s term. ``synonyms``: the object words (a CHAIR-style file; None: ``synonyms.txt`` beside the
    split file, else COCO's); ``instances``: the training split's instances json for ``oracle`` (None:
    ``annotations/instances_train.json`` beside the split file)."""

    method: str = option("lrp", choices=lambda: list(FINETUNE_METHODS), required=True,
                         help=lambda: describe_methods())
    objective: str = option("xe", choices=OBJECTIVES, help="xe: cross-entropy; scst: self-critical with a CIDEr-D "
                            "reward")
    epochs: int = option(1, type=POSITIVE, help="total epochs (may grow when resuming)")
    lr: Optional[float] = option(None, type=float_between(0, 10, low_open=True), help="learning rate (default "
                                 + ", ".join(
                                     f"{rate:g} for {objective}" for objective, rate in DEFAULT_LR.items())
                                 + ": the paper's)")
    batch_size: int = option(32, type=POSITIVE)
    captions_per_image: int = option(0, type=COUNT, help="xe: captions of each image per step (0: all)")
    samples_per_image: int = option(5, type=POSITIVE, help="scst: sampled captions per image")
    eps: float = option(0.01, type=float_between(0, 10, low_open=True),
                        help="LRP epsilon (> 0: a logit of exactly 0 would divide by zero)")
    clip_norm: float = 2.0
    clamp: Optional[float] = option(None, type=float_between(0, 10, low_open=True), help="clamp every gradient "
                                    "element to [-CLAMP, CLAMP] instead of clipping the gradient norm (the paper's "
                                    "code: 0.1)")
    threshold: Union[float, str] = option(0.5, type=threshold_value, metavar="T|auto", help="gated: the visual "
                                          "share under which an object phrase's cross-entropy is masked; auto: "
                                          "chosen on the validation split (capxai.train.threshold_choice)")
    penalty: float = option(1.0, type=float_between(0, 1000), help="share-penalty: the weight lambda of mean(1 - "
                            "visual share) of object words")
    synonyms: Optional[str] = option(None, type=existing_file, to_field=str, help="object words (CHAIR-style "
                                     "synonyms file) for the methods that read them (default: synonyms.txt beside "
                                     "the split file, else COCO's)")
    instances: Optional[str] = option(None, type=existing_file, to_field=str, help="oracle: the training split's "
                                      "COCO instances json (default: annotations/instances_train.json beside the "
                                      "split file)")
    decay_factor: float = 0.8
    decay_patience: int = 1
    seed: int = option(0, type=COUNT)
    stop_words: Optional[str] = option(None, type=existing_file, to_field=str, help="one stop word per line "
                                       "(default: capxai's English list)")

    def __post_init__(self):
        problems = check_finetune_config(self)
        if problems:
            raise ValueError(f"FinetuneConfig: {problems[0]}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.objective]


_LIMITS = (("epochs", 1, True), ("batch_size", 1, True), ("captions_per_image", 0, True),
           ("samples_per_image", 1, True), ("eps", 0.0, False), ("clip_norm", 0.0, False),
           ("decay_factor", 0.0, False), ("decay_patience", 0, True))


def check_finetune_config(config: FinetuneConfig) -> list:
    """What is wrong with a fine-tuning config (empty when nothing)."""
    problems = choice_problems(config, (("method", FINETUNE_METHODS), ("objective", OBJECTIVES)))
    problems += limit_problems(config, _LIMITS)
    for name in ("lr", "clamp"):
        value = getattr(config, name)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            problems.append(f"{name} must be > 0, got {value!r}")
    if config.threshold == AUTO:
        if config.method != "gated":
            problems.append(f"threshold 'auto' chooses the gate of method 'gated', not of {config.method!r}")
    elif not (isinstance(config.threshold, (int, float)) and 0.0 <= config.threshold <= 1.0):
        problems.append(f"threshold must be in [0, 1] or 'auto', got {config.threshold!r}")
    if not (isinstance(config.penalty, (int, float)) and config.penalty >= 0):
        problems.append(f"penalty (lambda) must be >= 0, got {config.penalty!r}")
    if config.objective == "scst" and config.method not in ("lrp", "baseline"):
        problems.append(f"method {config.method!r} is a cross-entropy method; with objective 'scst' use lrp or "
                        "baseline")
    return problems


def _check_not_trained_here(output: OutputFolder) -> None:
    """Refuses an ``--out`` whose checkpoints another command (``capxai train``) wrote: ``--overwrite`` must never
    turn a fine-tuning into the loss of a trained model."""
    entries = output.entries()
    for name in TRAIN_FILES:
        entry = entries.get(name)
        if entry is not None and entry.get("command") != "finetune":
            raise FileExistsError(f"{output.path / name} was written by capxai {entry.get('command')}, not by capxai "
                                  "finetune; fine-tune into another --out (the trained model stays as it is)")


def _resume_problem(saved: dict, config: FinetuneConfig, start_sha256: str, split_sha256: str,
                    stop_words: list) -> Optional[str]:
    history = saved["history"]
    before, now = history.get("finetune", {}), json.loads(json.dumps(dataclasses.asdict(config)))
    defaults = json.loads(json.dumps(dataclasses.asdict(FinetuneConfig())))  # options added since it was saved
    if history.get("start_checkpoint_sha256") != start_sha256:
        return "it was fine-tuned from another start checkpoint"
    for name, value in now.items():
        if name != "epochs" and before.get(name, defaults[name]) != value:
            return f"it was fine-tuned with {name} = {before.get(name, defaults[name])!r}, not {value!r}"
    if history.get("stop_words") not in (None, stop_words):
        return "it was fine-tuned with another stop-word list"
    if history.get("split_file_sha256") != split_sha256:
        return "it was fine-tuned on another version of the split file"
    return None


def finetune(config: FinetuneConfig, checkpoint, split_file, image_root, out_dir, progress: bool = True,
             val_split: str = "val", overwrite: bool = False, run: Optional[RunSettings] = None) -> dict:
    """Fine-tunes the model of ``checkpoint`` (a ``best.pt`` of ``capxai train``) on the split's training images,
    keeping ``best.pt``, ``last.pt``, ``vocabulary.json`` and ``history.json`` in ``out_dir`` (resumed from
    ``last.pt`` when it was made the same way from the same checkpoint; ``overwrite`` starts afresh, and never
    replaces what ``capxai train`` wrote). All parameters share one learning rate (the paper's LRP fine-tuning
    did the same). Returns the history (one entry per epoch with its validation CIDEr and seconds). ``run``: device,
    precision, workers and process group, as for :func:`capxai.train.train`; the LRP weights are computed on the
    run's device, in float32 even under autocast (they carry no gradient; docs/LRP_RULES.md (Part 2), "Precision")."""
    run = default_run(run)
    out_dir = Path(out_dir)
    problems = check_finetune_config(config)
    if problems:
        raise ValueError(f"FinetuneConfig: {problems[0]}")
    if config.threshold == AUTO:
        from capxai.train.threshold_choice import finetune_with_threshold_choice

        return finetune_with_threshold_choice(config, checkpoint, split_file, image_root, out_dir, progress=progress,
                                              overwrite=overwrite, run=run)
    output = OutputFolder(out_dir, "finetune")
    if config.objective == "scst" and run.distributed:
        raise ValueError("capxai finetune --objective scst runs in one process (its sampling is not wrapped for "
                         "DistributedDataParallel); run it without torchrun")
    if out_dir.resolve() == Path(checkpoint).resolve().parent:
        raise ValueError(f"--out {out_dir} is the folder of --checkpoint {checkpoint}; fine-tuning writes best.pt "
                         "and last.pt and would replace the model it starts from: choose another --out")
    _check_not_trained_here(output)
    model, vocabulary, train_config = load_trained(checkpoint)
    try:
        check_captioner(model.captioner, "finetune")
    except TypeError as error:
        raise ValueError(f"--checkpoint {checkpoint} ({train_config.model}): {error}") from None
    method = FINETUNE_METHODS[config.method]
    labels = _label_inputs(method, config, Path(split_file))
    stop_words = sorted(load_stop_words(config.stop_words)) if method.weighting is not None else []
    skipped = None
    if method.weighting is not None:
        skipped = stop_word_mask(vocabulary, stop_words)
        if method.weighting.objects_only:
            skipped |= ~object_word_mask(vocabulary.words, labels["objects"])
    start_sha256, split_sha256 = file_sha256(checkpoint), file_sha256(split_file)
    last_path = out_dir / "last.pt"
    targets = [out_dir / name for name in TRAIN_FILES]
    resume = last_path.exists() and not overwrite
    if resume:
        output.check_writable(targets, overwrite=2)  # resuming continues the run's own files
        saved = load_checkpoint(last_path, kind="training")
        problem = _resume_problem(saved, config, start_sha256, split_sha256, stop_words)
        if problem:
            raise ValueError(f"{last_path} cannot be resumed: {problem}; rerun with the options it was fine-tuned "
                             "with (only --epochs may change), pass --overwrite to start afresh, or choose another "
                             "--out")
        if saved["vocabulary"] != vocabulary.words:
            raise ValueError(f"{last_path} cannot be resumed: its vocabulary is not the start checkpoint's")
    else:
        output.check_writable(targets, overwrite, group="checkpoints")
    datasets = {split: open_split(split_file, image_root, split, vocabulary, train_config.max_length,
                                  train_config.image_size, progress) for split in ("train", val_split)}
    if method.needs_annotations:
        ids = [image_id_of(entry, position) for position, entry in enumerate(datasets["train"].entries)]
        labels["hidden"] = load_split_annotations(labels["instances"], image_ids=ids).hidden
    set_seed(config.seed)
    model.to(run.device)
    run.join()
    if overwrite and not resume and run.rank == 0:
        output.remove_group("checkpoints")
    run.barrier()  # the earlier run's files are gone before any process writes
    if not train_config.finetune_encoder:
        model.encoder.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, betas=tuple(train_config.betas))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.decay_factor,
                                                           patience=config.decay_patience)
    history = {"config": dataclasses.asdict(train_config), "finetune": dataclasses.asdict(config),
               "start_checkpoint": str(checkpoint), "start_checkpoint_sha256": start_sha256, "epochs": [],
               "best_cider": None, "best_epoch": None, "run_id": output.run_id, "split_file_sha256": split_sha256,
               "stop_words": stop_words}
    scaler = run.grad_scaler()
    start_epoch = 0
    if resume:
        history, start_epoch = restore(saved, model, optimizer, scheduler, output, scaler)
        history["finetune"] = dataclasses.asdict(config)  # epochs may have grown
    step, statistics = _make_step(model, config, skipped, datasets["train"], train_config.max_length, run,
                                  optimizer, scaler, labels)
    loop = EpochLoop(model=model, optimizer=optimizer, scheduler=scheduler, train_set=datasets["train"],
                     val_set=datasets[val_split], vocabulary=vocabulary, out_dir=out_dir, output=output,
                     history=history, payload={"config": history["config"], "finetune": history["finetune"]},
                     epochs=config.epochs, batch_size=config.batch_size,
                     captions_per_image=config.captions_per_image if config.objective == "xe" else 1,
                     seed=config.seed, max_length=train_config.max_length, run=run, progress=progress,
                     epoch_statistics=statistics, scaler=scaler)
    return loop.run_epochs(start_epoch, step)


def _label_inputs(method, config: FinetuneConfig, split_file: Path) -> dict:
    """The object words (and the instances file) a method reads, checked before anything is loaded."""
    if not method.needs_objects:
        return {}
    beside = split_file.parent / "synonyms.txt"
    synonyms = config.synonyms or (beside if beside.is_file() else None)
    labels = {"objects": ObjectWords.load(synonyms) if synonyms else ObjectWords.coco()}
    if method.needs_annotations:
        instances = Path(config.instances or split_file.parent / "annotations" / "instances_train.json")
        if not instances.is_file():
            raise FileNotFoundError(f"--method {config.method} masks the instances the annotations mark hidden and "
                                    f"needs the training split's instances json; {instances} does not exist (give "
                                    "--instances)")
        labels["instances"] = instances
    return labels


def _make_step(model, config: FinetuneConfig, skipped, train_set, max_length: int, run: RunSettings, optimizer,
               scaler, labels: dict):
    """``(step(batch) -> loss, epoch statistics)`` of the chosen objective. SCST samples with torch's global
    generator, whose state ``last.pt`` keeps, so a resumed run draws what an uninterrupted one would."""
    vocabulary = train_set.vocabulary
    method = FINETUNE_METHODS[config.method]
    if config.objective == "xe":
        objective = FinetuneObjective(model, skipped, config.eps, vocabulary.pad, weighting=method.weighting or PAPER,
                                      gate=method.gate, threshold=config.threshold,
                                      penalty=config.penalty if method.penalty else 0.0).to(run.device)
        trained = wrap_distributed(objective, run)

        def step(batch):
            captions, mask = batch["captions"], batch["caption_mask"]
            batch_size, per_image, length = captions.shape
            image_index = torch.arange(batch_size, device=captions.device).repeat_interleave(per_image)
            image_index = image_index[mask.reshape(-1)]
            captions = captions.reshape(-1, length)[mask.reshape(-1)]
            phrases = None
            if method.gate is not None or method.penalty:
                phrases = object_phrases(captions, batch["image_ids"].to(captions.device)[image_index],
                                         vocabulary.words, labels["objects"], labels.get("hidden"))
            optimizer.zero_grad()
            with run.autocast():
                loss = trained(batch["images"], captions, image_index, phrases)
            return optimizer_step(loss, model, optimizer, config.clip_norm, scaler, config.clamp)
        return step, objective.take_statistics
    by_image_id = {image_id_of(entry, position): [" ".join(s["tokens"]) for s in entry["sentences"]]
                   for position, entry in enumerate(train_set.entries)}
    reward = CiderReward(list(by_image_id.values()))
    special = {"start": vocabulary.start, "end": vocabulary.end, "pad": vocabulary.pad}
    rewards = []

    def step(batch):
        optimizer.zero_grad()
        with run.autocast():
            loss, statistics = scst_loss(model, batch["images"], [by_image_id[i] for i in batch["image_ids"].tolist()],
                                         vocabulary.words, reward, skipped, config.samples_per_image, max_length,
                                         None, config.eps, special)
        rewards.append((statistics["reward"], statistics["greedy_reward"]))
        return optimizer_step(loss, model, optimizer, config.clip_norm, scaler, config.clamp)

    def statistics():
        sample, greedy = (float(sum(values) / max(1, len(rewards))) for values in zip(*rewards)) if rewards else (0, 0)
        rewards.clear()
        return {"sample_reward": sample, "greedy_reward": greedy}
    return step, statistics

