"""Captioning a whole split with a trained model (greedy or beam search, batched, with a progress bar) and scoring
the captions against the split's references; shared by validation during training and by ``capxai evaluate``.
Images are decoded in the run's DataLoader workers and captioned on the model's device; under torchrun each process
captions its share of the images and every process gets all captions."""
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from capxai.data.captions import CaptionDataset, collate, image_id_of
from capxai.evaluate.metrics import METRICS, caption_metrics
from capxai.models import beam_search
from capxai.models.contrastive_decoding import (VCDSettings, VisualContrastiveCaptioner, diffusion_noise,
                                                image_seed)
from capxai.runtime import RunSettings
from capxai.interrupts import stoppable


def references_of(dataset: CaptionDataset) -> Dict[int, List[str]]:
    """The split's reference captions per image id (raw text where the file has it)."""
    return {image_id_of(entry, position): [s.get("raw") or " ".join(s["tokens"]) for s in entry["sentences"]]
            for position, entry in enumerate(dataset.entries)}


@torch.no_grad()
def caption_dataset(model: torch.nn.Module, dataset: CaptionDataset, beam_size: int = 1, max_length: int = 16,
                    batch_size: int = 50, progress: bool = False,
                    run: Optional[RunSettings] = None, guidance: Optional[Callable] = None,
                    contrastive: Optional[VCDSettings] = None) -> Dict[int, str]:
    """Captions of every image of ``dataset`` by ``model`` (a ``CaptionModel``: ``.encoder`` + ``.captioner``),
    decoded with ``beam_size`` beams (1: greedy) on the model's device. Returns ``{image_id: caption}`` in the
    split's order; a caption that is empty (``<end>`` first) is written ``<unk>`` so that metrics can score it as
    wrong rather than fail. ``run``: its workers decode the images; under torchrun process r captions images r, r +
    W, ... and the captions of all processes are merged (every process must call). ``guidance``: beam search's score
    adjustment (``capxai.explain.guided_decoding``); ``contrastive``: visual contrastive decoding
    (:mod:`capxai.models.contrastive_decoding`), each image also encoded with diffusion noise."""
    if guidance is not None and contrastive is not None:
        raise ValueError("caption_dataset: guided decoding and visual contrastive decoding are not combined; "
                         "choose one")
    run = run if run is not None else RunSettings()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocabulary = dataset.vocabulary
    captions = {}
    mine = torch.utils.data.Subset(dataset, range(run.rank, len(dataset), run.world_size))
    # no generator: the loader draws one number from torch's global generator, as it always did (trainings whose
    # validation runs here reproduce earlier ones)
    loader = run.loader(mine, batch_size, collate)
    try:
        with tqdm(loader, desc=f"captioning (beam {beam_size})", unit="batch", disable=not progress) as batches:
            for batch in stoppable(batches):
                images = batch["images"].to(device, non_blocking=True)
                captioner, features = model.captioner, model.encoder(images)
                if contrastive is not None:
                    seeds = [image_seed(contrastive, image_id) for image_id in batch["image_ids"].tolist()]
                    distorted = model.encoder(diffusion_noise(images, contrastive.noise_step, seeds))
                    captioner = VisualContrastiveCaptioner(model.captioner, contrastive)
                    features = torch.stack([features, distorted], 1)
                decoded = beam_search(captioner, features, beam_size, max_length,
                                      start=vocabulary.start, end=vocabulary.end, pad=vocabulary.pad,
                                      guidance=guidance)
                for image_id, tokens in zip(batch["image_ids"].tolist(), decoded.tokens.tolist()):
                    captions[image_id] = " ".join(vocabulary.decode(tokens)) or "<unk>"
    finally:
        model.train(was_training)
    if not run.distributed:
        return captions
    merged = {image_id: caption for part in run.gather(captions) for image_id, caption in part.items()}
    return {image_id: merged[image_id] for image_id in references_of(dataset)}


def score_dataset(model: torch.nn.Module, dataset: CaptionDataset, beam_size: int = 1, max_length: int = 16,
                  metrics: Sequence[str] = METRICS, progress: bool = False,
                  run: Optional[RunSettings] = None) -> Dict[str, dict]:
    """Captions the split and scores it: ``{"overall", "imgToEval", "captions"}`` (see ``caption_metrics``)."""
    captions = caption_dataset(model, dataset, beam_size, max_length, progress=progress, run=run)
    scores = caption_metrics(references_of(dataset), captions, spice="SPICE" in metrics, metrics=metrics)
    return {**scores, "captions": captions}
