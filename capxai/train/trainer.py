"""Cross-entropy training with teacher forcing (the paper's recipe: Adam, lr 5e-4, betas 0.8 / 0.999, clipped
gradients), validation by CIDEr each epoch, best checkpoint kept, learning-rate decay on plateau, resume after an
interruption, seeds; on the device of the run settings (``capxai.runtime``), in float32 or bf16 / fp16 autocast,
images decoded in DataLoader workers; several processes through torchrun + DistributedDataParallel (NCCL on CUDA,
gloo on the CPU). Checkpoints hold CPU tensors: they open on any device, and a run resumes on another device."""
import contextlib
import dataclasses
import functools
import json
import random
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from capxai._optional import require
from capxai._io import file_sha256, json_writer, torch_save, write_together
from capxai.data.captions import CaptionDataset, EpochOrder, choose_captions, collate, load_karpathy, open_split
from capxai.data.vocabulary import SPECIALS, Vocabulary
from capxai.evaluate.captioning import score_dataset
from capxai.models.factory import CaptionModel, TrainConfig, build_model, check_config
from capxai.outputs import OutputFolder
from capxai.runtime import RunSettings, default_run
from capxai.models.checkpoint import checkpoint_payload, load_checkpoint
from capxai.interrupts import deferred, raise_pending


def caption_loss(model: nn.Module, images: torch.Tensor, captions: torch.Tensor,
                 caption_mask: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over every real caption of every image (``captions [B, C, L]``), pads ignored."""
    batch, per_image, length = captions.shape
    image_index = torch.arange(batch, device=images.device).repeat_interleave(per_image)[caption_mask.reshape(-1)]
    flat = captions.reshape(-1, length)[caption_mask.reshape(-1)]
    trace = model(images, flat, image_index)
    return nn.functional.cross_entropy(trace.logits.reshape(-1, trace.logits.shape[-1]), flat[:, 1:].reshape(-1),
                                       ignore_index=0)


def train_step(model, optimizer, batch: Dict[str, torch.Tensor], clip_norm: float,
               run: Optional[RunSettings] = None, scaler=None) -> float:
    """One cross-entropy step on ``batch`` (on the model's device), in ``run``'s training precision; the loss."""
    return float(_train_step(model, optimizer, batch, clip_norm, run, scaler))


def _train_step(model, optimizer, batch, clip_norm, run, scaler) -> torch.Tensor:
    optimizer.zero_grad()
    with (run.autocast() if run is not None else contextlib.nullcontext()):
        loss = caption_loss(model, batch["images"], batch["captions"], batch["caption_mask"])
    return optimizer_step(loss, model, optimizer, clip_norm, scaler)


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, clip_norm: float, scaler=None,
                   clamp: Optional[float] = None) -> torch.Tensor:
    """Backward, gradient-norm clipping (or, with ``clamp``, every gradient element clamped to [-clamp, clamp], as
    the paper's code did) and the optimizer step; with an (enabled) fp16 gradient scaler, the loss is scaled and the
    gradients unscaled before clipping. Returns the loss, detached (reading it would wait for the GPU: the epoch
    loop reads its losses once, at the end of the epoch)."""
    def clip():
        if clamp is None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        else:
            nn.utils.clip_grad_value_(model.parameters(), clamp)

    if scaler is None or not scaler.is_enabled():
        loss.backward()
        clip()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        clip()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validation_cider(model: CaptionModel, dataset: CaptionDataset, max_length: int,
                     run: Optional[RunSettings] = None) -> float:
    """Greedy captions of the split, scored by CIDEr against its references."""
    return score_dataset(model, dataset, beam_size=1, max_length=max_length, metrics=("CIDEr",),
                         run=run)["overall"]["CIDEr"]


TRAIN_FILES = ("last.pt", "best.pt", "vocabulary.json", "history.json")
# Options that may differ when resuming (the rest would silently mix two trainings in one model).
RESUMABLE_CHANGES = ("epochs",)


def _resume_problem(saved: dict, config: TrainConfig, split_sha256: str) -> Optional[str]:
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    before = json.loads(json.dumps(saved["config"]))
    for name, value in now.items():
        if name not in RESUMABLE_CHANGES and before.get(name) != value:
            return f"it was trained with {name} = {before.get(name)!r}, not {value!r}"
    if saved["history"].get("split_file_sha256") not in (None, split_sha256):
        return "it was trained on another version of the split file"
    return None


def wrap_distributed(module: nn.Module, run: RunSettings) -> nn.Module:
    """``module`` in DistributedDataParallel under torchrun (on the process's GPU with NCCL), else itself."""
    if not run.distributed:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[run.device.index] if run.on_cuda else None)


def restore(saved: dict, model, optimizer, scheduler, output: OutputFolder, scaler=None):
    """Loads a ``last.pt``'s model, optimizer, scheduler and random state onto the model's device (which may not be
    the one it was saved from); returns ``(history, next epoch)`` and keeps the run id of the run it continues."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])  # Adam's state follows its parameters' device
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    device = next(model.parameters()).device
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    if scaler is not None and scaler.is_enabled() and saved.get("grad_scaler"):
        scaler.load_state_dict(saved["grad_scaler"])
    output.run_id = saved["history"].get("run_id", output.run_id)
    return saved["history"], saved["epoch"] + 1


def train(config: TrainConfig, split_file, image_root, out_dir, progress: bool = True,
          val_split: str = "val", overwrite: bool = False, run: Optional[RunSettings] = None) -> dict:
    """Trains, keeping ``last.pt`` (resumed from when present), ``best.pt`` (highest validation CIDEr),
    ``vocabulary.json`` and ``history.json`` in ``out_dir``. Returns the history.

    Every input is checked before the first step: the config, the split file entry by entry, that the train and
    validation splits hold images, every image's header and one decoded image per split, a torchvision encoder's
    weights. A ``last.pt`` is resumed only when it was trained with the same options (``epochs`` may grow) on the
    same split file; ``overwrite`` starts afresh, replacing the files an earlier ``capxai train`` wrote there (never
    others), once every check has passed. Checkpoints hold the config and vocabulary as plain data;
    ``vocabulary.json`` beside them is a copy for people and other tools.

    ``run`` (:mod:`capxai.runtime`): device, training precision, image-decoding workers, torchrun's process group
    (default: the GPU when one is visible, float32, no workers). None of it is a training option: a run may resume
    on another device or precision."""
    run = default_run(run)
    out_dir = Path(out_dir)
    output = OutputFolder(out_dir, "train")
    problems = check_config(config)
    if problems:
        raise ValueError(f"TrainConfig: {problems[0]}")
    require("pycocoevalcap", "training (its validation CIDEr)")
    split_sha256 = file_sha256(split_file)
    last_path = out_dir / "last.pt"
    targets = [out_dir / name for name in TRAIN_FILES]
    resume = last_path.exists() and not overwrite
    if resume:
        output.check_writable(targets, overwrite=2)  # resuming continues the run's own files
        checkpoint = load_checkpoint(last_path, kind="training")
        problem = _resume_problem(checkpoint, config, split_sha256)
        if problem:
            raise ValueError(f"{last_path} cannot be resumed: {problem}; rerun with the options it was trained "
                             "with (only --epochs may change), pass --overwrite to start afresh, or choose "
                             "another --out")
        vocabulary = Vocabulary(checkpoint["vocabulary"])
    else:
        output.check_writable(targets, overwrite, group="checkpoints")
        train_images = [i for i in load_karpathy(split_file) if i["split"] in ("train", "restval")]
        vocabulary = Vocabulary.build([s["tokens"] for i in train_images for s in i["sentences"]], config.min_count)
        if len(vocabulary) == len(SPECIALS):
            raise ValueError(f"no word of {split_file}'s training captions occurs --min-count {config.min_count} "
                             "times; lower --min-count")
    datasets = {split: open_split(split_file, image_root, split, vocabulary, config.max_length, config.image_size,
                                  progress) for split in ("train", val_split)}
    set_seed(config.seed)
    model = build_model(config, len(vocabulary)).to(run.device)  # loads (checks) a torchvision encoder's weights
    run.join()
    if overwrite and not resume and run.rank == 0:
        output.remove_group("checkpoints")
    run.barrier()  # the earlier run's files are gone before any process writes
    if not config.finetune_encoder:
        model.encoder.requires_grad_(False)
    groups = [{"params": [p for p in model.captioner.parameters() if p.requires_grad]}]
    if config.finetune_encoder:
        groups.append({"params": list(model.encoder.parameters()), "lr": config.encoder_lr or config.lr})
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=tuple(config.betas))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.decay_factor,
                                                           patience=config.decay_patience)
    history = {"config": dataclasses.asdict(config), "epochs": [], "best_cider": None, "best_epoch": None,
               "run_id": output.run_id, "split_file_sha256": split_sha256}
    scaler = run.grad_scaler()
    start_epoch = 0
    if resume:
        history, start_epoch = restore(checkpoint, model, optimizer, scheduler, output, scaler)
        history["config"] = dataclasses.asdict(config)  # epochs may have grown
    trained = wrap_distributed(model, run)
    loop = EpochLoop(model=model, optimizer=optimizer, scheduler=scheduler, train_set=datasets["train"],
                     val_set=datasets[val_split], vocabulary=vocabulary, out_dir=out_dir, output=output,
                     history=history, payload={"config": history["config"]}, epochs=config.epochs,
                     batch_size=config.batch_size, captions_per_image=config.captions_per_image, seed=config.seed,
                     max_length=config.max_length, run=run, progress=progress, scaler=scaler)
    loop.run_epochs(start_epoch, lambda batch: _train_step(trained, optimizer, batch, config.clip_norm, run, scaler))
    return history


@dataclasses.dataclass(kw_only=True)
class EpochLoop:
    """The epochs of a training or fine-tuning run: batches in a seeded order (a distributed sampler under torchrun),
    decoded by the run's DataLoader workers (kept between epochs) and moved to its device, one ``step(batch) -> loss``
    each (a tensor, read at the end of the epoch), validation CIDEr, learning-rate decay on plateau, and after every
    epoch ``best.pt`` (highest validation CIDEr), ``last.pt`` (everything resuming needs), ``vocabulary.json`` and
    ``history.json``, written atomically by rank 0 and recorded in the output folder's manifest. The captions of a step
    are drawn in this process (:func:`~capxai.data.captions.choose_captions`), so a run's result does not depend on the
    workers.

    ``payload`` goes into both checkpoints (at least the model's ``config``: :func:`load_trained` reads it)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_set: CaptionDataset
    val_set: CaptionDataset
    vocabulary: Vocabulary
    out_dir: Path
    output: OutputFolder
    history: dict
    payload: dict
    epochs: int
    batch_size: int
    captions_per_image: int
    seed: int
    max_length: int
    run: RunSettings = dataclasses.field(default_factory=RunSettings)
    progress: bool = True
    epoch_statistics: Optional[Callable[[], dict]] = None  # more numbers for an epoch's record, read once per epoch
    scaler: object = None  # the fp16 gradient scaler, whose state last.pt keeps

    def run_epochs(self, start_epoch: int, step) -> dict:
        run = self.run
        sampler = (torch.utils.data.distributed.DistributedSampler(self.train_set, shuffle=True, seed=self.seed)
                   if run.distributed else EpochOrder(len(self.train_set), self.seed))
        loader = run.loader(self.train_set, self.batch_size, collate, sampler=sampler,
                            generator=torch.Generator().manual_seed(self.seed), persistent=True)
        for epoch in range(start_epoch, self.epochs):
            sampler.set_epoch(epoch)
            caption_generator = torch.Generator().manual_seed(self.seed + 7919 * (epoch + 1) + run.rank)
            epoch_started = time.perf_counter()
            self.model.train()
            if not any(p.requires_grad for p in self.model.encoder.parameters()):
                self.model.encoder.eval()
            losses, waited = [], 0.0
            # the bar closes as an exception (Ctrl-C) passes, so that the one-line message comes after it
            with tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                      disable=not self.progress or run.rank != 0) as bar:
                batches = iter(loader)
                while True:
                    raise_pending()
                    asked = time.perf_counter()
                    batch = next(batches, None)
                    waited += time.perf_counter() - asked
                    if batch is None:
                        break
                    batch = run.to_device(choose_captions(batch, self.captions_per_image, caption_generator))
                    losses.append(step(batch))
                    bar.update(1)
            losses = [float(loss) for loss in losses]  # read once the epoch's steps are done
            train_seconds = time.perf_counter() - epoch_started
            if run.distributed:  # every process validates (and process 0 saves) process 0's BatchNorm statistics
                self._broadcast_buffers()
            cider = validation_cider(self.model, self.val_set, self.max_length, run)
            self.scheduler.step(cider)
            record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_cider": cider,
                      "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - epoch_started,
                      "train_seconds": train_seconds, "data_seconds": round(waited, 3), **run.describe(),
                      **(self.epoch_statistics() if self.epoch_statistics else {})}
            self.history["epochs"].append(record)
            if run.rank == 0:
                self._save(epoch, cider)
                if self.progress:
                    print(f"epoch {epoch + 1}: loss {record['loss']:.3f}, val CIDEr {cider:.3f}")
        return self.history

    def _save(self, epoch: int, cider: float) -> None:
        history = self.history
        model_payload = {"model": self.model.state_dict(), **self.payload, "vocabulary": self.vocabulary.words,
                         "run_id": self.output.run_id, "epoch": epoch}
        written = [self.vocabulary.save(self.out_dir / "vocabulary.json")]
        writers = {}
        if history["best_cider"] is None or cider > history["best_cider"]:
            history["best_cider"], history["best_epoch"] = cider, epoch
            best = checkpoint_payload({**model_payload, "val_cider": cider}, kind="model")
            writers[self.out_dir / "best.pt"] = functools.partial(torch_save, best)
        last = checkpoint_payload({
            **model_payload, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "history": history, "torch_rng": torch.get_rng_state(), **self._device_state()}, kind="training")
        writers[self.out_dir / "last.pt"] = functools.partial(torch_save, last)
        writers[self.out_dir / "history.json"] = json_writer(history)
        # all or nothing: a full disk on last.pt must not leave a new best.pt beside the old history
        with deferred():  # in place and recorded, or neither: a stop between would orphan them
            written += write_together(writers)
            self.output.record(written, "checkpoints")

    def _broadcast_buffers(self) -> None:
        """DDP sends process 0's buffers before each training forward, and each process then updates its own
        BatchNorm statistics: after the last step they differ until made equal here."""
        self.run.join()
        for buffer in self.model.buffers():
            torch.distributed.broadcast(buffer, src=0)

    def _device_state(self) -> dict:
        """What resuming on the same GPU needs beyond the CPU's random state (dropout draws there)."""
        state = {}
        if self.run.on_cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(self.run.device)
        if self.scaler is not None and self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        return state
