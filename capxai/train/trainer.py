"""Cross-entropy training with teacher forcing (the paper's recipe: Adam, lr 5e-4, betas 0.8 / 0.999, clipped
gradients), validation by CIDEr each epoch, best checkpoint kept, learning-rate decay on plateau, resume after an
interruption, seeds; several processes through torchrun + DistributedDataParallel (nccl on GPUs, gloo on CPU)."""
import dataclasses
import functools
import os
import random
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from capxai._io import atomic_write_json
from capxai.data.captions import CaptionDataset, collate, load_karpathy
from capxai.data.vocabulary import Vocabulary
from capxai.evaluate.captioning import score_dataset
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner, SceneCNN, TorchvisionEncoder
from capxai.train.checkpoint import load_checkpoint, save_checkpoint


@dataclasses.dataclass
class TrainConfig:
    model: str = "adaptive"  # or "multihead"
    encoder: str = "scene"  # "scene", "vgg16" or "resnet101"
    encoder_weights: Optional[str] = None
    finetune_encoder: bool = True
    encoder_lr: Optional[float] = None  # None: lr; a CNN trained from scratch may learn faster with more
    hidden: int = 512
    attention_dim: int = 512
    heads: int = 8
    dropout: float = 0.5
    image_size: int = 96
    max_length: int = 16
    min_count: int = 5
    epochs: int = 10
    batch_size: int = 32
    captions_per_image: int = 0  # > 0: that many of each image's captions, drawn anew each step; 0: all
    lr: float = 5e-4
    betas: tuple = (0.8, 0.999)
    clip_norm: float = 2.0
    decay_factor: float = 0.8
    decay_patience: int = 1
    seed: int = 0


class CaptionModel(nn.Module):
    """Encoder + captioner: ``forward(images [B, 3, S, S], captions [N, L], image_index [N])`` encodes each image
    once and returns the captioner's teacher-forced trace of caption n on image ``image_index[n]``. ``image_size``
    (S, when known) lets explainers refuse images of another size."""

    def __init__(self, encoder: nn.Module, captioner: nn.Module, image_size: Optional[int] = None):
        super().__init__()
        self.encoder, self.captioner, self.image_size = encoder, captioner, image_size

    def forward(self, images, captions, image_index):
        return self.captioner(self.encoder(images).index_select(0, image_index), captions)


def build_model(config: TrainConfig, vocab_size: int) -> CaptionModel:
    if config.encoder == "scene":
        encoder = SceneCNN()
    else:
        encoder = TorchvisionEncoder(config.encoder, config.encoder_weights)
    if config.model == "adaptive":
        captioner = AdaptiveAttentionCaptioner(vocab_size, encoder.channels, config.hidden, config.attention_dim,
                                               config.dropout)
    elif config.model == "multihead":
        captioner = MultiHeadCaptioner(vocab_size, encoder.channels, config.hidden, config.heads, config.dropout)
    else:
        raise ValueError(f"TrainConfig.model must be 'adaptive' or 'multihead', got {config.model!r}")
    return CaptionModel(encoder, captioner, config.image_size)


def load_trained(checkpoint, vocabulary_file=None):
    """A trained ``CaptionModel`` (in eval mode), its ``Vocabulary`` and ``TrainConfig`` from a checkpoint written by
    :func:`train` (``best.pt`` or ``last.pt``); the vocabulary is ``vocabulary.json`` beside it unless named."""
    checkpoint = Path(checkpoint)
    payload = load_checkpoint(checkpoint)
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"checkpoint {checkpoint} holds no model weights (not written by capxai train)")
    config_dict = payload.get("config") or (payload.get("history") or {}).get("config")
    if config_dict is None:
        raise ValueError(f"checkpoint {checkpoint} holds no training config (not written by capxai train)")
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{key: value for key, value in config_dict.items() if key in fields})
    vocabulary = Vocabulary.load(vocabulary_file or checkpoint.parent / "vocabulary.json")
    model = build_model(config, len(vocabulary))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {checkpoint} does not fit its own config and vocabulary ({error})") from None
    return model.eval(), vocabulary, config


def caption_loss(model: nn.Module, images: torch.Tensor, captions: torch.Tensor,
                 caption_mask: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over every real caption of every image (``captions [B, C, L]``), pads ignored."""
    batch, per_image, length = captions.shape
    image_index = torch.arange(batch, device=images.device).repeat_interleave(per_image)[caption_mask.reshape(-1)]
    flat = captions.reshape(-1, length)[caption_mask.reshape(-1)]
    trace = model(images, flat, image_index)
    return nn.functional.cross_entropy(trace.logits.reshape(-1, trace.logits.shape[-1]), flat[:, 1:].reshape(-1),
                                       ignore_index=0)


def train_step(model, optimizer, batch: Dict[str, torch.Tensor], clip_norm: float) -> float:
    optimizer.zero_grad()
    loss = caption_loss(model, batch["images"], batch["captions"], batch["caption_mask"])
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return float(loss.detach())


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validation_cider(model: CaptionModel, dataset: CaptionDataset, max_length: int) -> float:
    """Greedy captions of the split, scored by CIDEr against its references."""
    return score_dataset(model, dataset, beam_size=1, max_length=max_length, metrics=("CIDEr",))["overall"]["CIDEr"]


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def train(config: TrainConfig, split_file, image_root, out_dir, progress: bool = True,
          val_split: str = "val") -> dict:
    """Trains, keeping ``last.pt`` (resumed from when present), ``best.pt`` (highest validation CIDEr),
    ``vocabulary.json`` and ``history.json`` in ``out_dir``. Returns the history."""
    out_dir = Path(out_dir)
    distributed = _distributed()
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    set_seed(config.seed)
    vocabulary_path = out_dir / "vocabulary.json"
    if vocabulary_path.exists():
        vocabulary = Vocabulary.load(vocabulary_path)
    else:
        train_images = [i for i in load_karpathy(split_file) if i["split"] in ("train", "restval")]
        vocabulary = Vocabulary.build([s["tokens"] for i in train_images for s in i["sentences"]], config.min_count)
        if rank == 0:
            vocabulary.save(vocabulary_path)
    datasets = {split: CaptionDataset(split_file, image_root, split, vocabulary, config.max_length,
                                      config.image_size) for split in ("train", val_split)}
    model = build_model(config, len(vocabulary))
    if not config.finetune_encoder:
        model.encoder.requires_grad_(False)
    groups = [{"params": [p for p in model.captioner.parameters() if p.requires_grad]}]
    if config.finetune_encoder:
        groups.append({"params": list(model.encoder.parameters()), "lr": config.encoder_lr or config.lr})
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=tuple(config.betas))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.decay_factor,
                                                           patience=config.decay_patience)
    history = {"config": dataclasses.asdict(config), "epochs": [], "best_cider": None, "best_epoch": None}
    start_epoch = 0
    last_path = out_dir / "last.pt"
    if last_path.exists():
        checkpoint = load_checkpoint(last_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history, start_epoch = checkpoint["history"], checkpoint["epoch"] + 1
        torch.set_rng_state(checkpoint["torch_rng"])
    trained = nn.parallel.DistributedDataParallel(model) if distributed else model
    sampler = (torch.utils.data.distributed.DistributedSampler(datasets["train"], shuffle=True, seed=config.seed)
               if distributed else None)
    for epoch in range(start_epoch, config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(config.seed + epoch)
        caption_generator = torch.Generator().manual_seed(config.seed + 7919 * (epoch + 1) + rank)
        train_collate = functools.partial(collate, captions_per_image=config.captions_per_image,
                                          generator=caption_generator)
        loader = torch.utils.data.DataLoader(datasets["train"], batch_size=config.batch_size, collate_fn=train_collate,
                                             sampler=sampler, shuffle=sampler is None,
                                             generator=None if sampler else generator)
        epoch_started = time.perf_counter()
        model.train()
        if not config.finetune_encoder:
            model.encoder.eval()
        losses = [train_step(trained, optimizer, batch, config.clip_norm)
                  for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                                    disable=not progress or rank != 0)]
        cider = validation_cider(model, datasets[val_split], config.max_length)
        scheduler.step(cider)
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_cider": cider,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - epoch_started}
        history["epochs"].append(record)
        if rank == 0:
            if history["best_cider"] is None or cider > history["best_cider"]:
                history["best_cider"], history["best_epoch"] = cider, epoch
                save_checkpoint(out_dir / "best.pt", {"model": model.state_dict(), "config": history["config"],
                                                      "epoch": epoch, "val_cider": cider})
            save_checkpoint(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "history": history, "epoch": epoch,
                                        "torch_rng": torch.get_rng_state()})
            atomic_write_json(out_dir / "history.json", history)
            if progress:
                print(f"epoch {epoch + 1}: loss {record['loss']:.3f}, val CIDEr {cider:.3f}")
    return history
