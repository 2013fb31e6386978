"""Captioning a whole split with a trained model (greedy or beam search, batched, with a progress bar) and scoring
the captions against the split's references; shared by validation during training and by ``capxai evaluate``."""
from typing import Dict, List, Sequence

import torch
from tqdm import tqdm

from capxai.data.captions import CaptionDataset, collate, image_id_of
from capxai.evaluate.metrics import METRICS, caption_metrics
from capxai.models import beam_search


def references_of(dataset: CaptionDataset) -> Dict[int, List[str]]:
    """The split's reference captions per image id (raw text where the file has it)."""
    return {image_id_of(entry, position): [s.get("raw") or " ".join(s["tokens"]) for s in entry["sentences"]]
            for position, entry in enumerate(dataset.entries)}


@torch.no_grad()
def caption_dataset(model: torch.nn.Module, dataset: CaptionDataset, beam_size: int = 1, max_length: int = 16,
                    batch_size: int = 50, progress: bool = False) -> Dict[int, str]:
    """Captions of every image of ``dataset`` by ``model`` (a ``CaptionModel``: ``.encoder`` + ``.captioner``),
    decoded with ``beam_size`` beams (1: greedy). Returns ``{image_id: caption}``; a caption that is empty
    (``<end>`` first) is written ``<unk>`` so that metrics can score it as wrong rather than fail."""
    was_training = model.training
    model.eval()
    vocabulary = dataset.vocabulary
    captions = {}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    try:
        with tqdm(loader, desc=f"captioning (beam {beam_size})", unit="batch", disable=not progress) as batches:
            for batch in batches:
                decoded = beam_search(model.captioner, model.encoder(batch["images"]), beam_size, max_length,
                                      start=vocabulary.start, end=vocabulary.end, pad=vocabulary.pad)
                for image_id, tokens in zip(batch["image_ids"].tolist(), decoded.tokens):
                    captions[image_id] = " ".join(vocabulary.decode(tokens)) or "<unk>"
    finally:
        model.train(was_training)
    return captions


def score_dataset(model: torch.nn.Module, dataset: CaptionDataset, beam_size: int = 1, max_length: int = 16,
                  metrics: Sequence[str] = METRICS, progress: bool = False) -> Dict[str, dict]:
    """Captions the split and scores it: ``{"overall", "imgToEval", "captions"}`` (see ``caption_metrics``)."""
    captions = caption_dataset(model, dataset, beam_size, max_length, progress=progress)
    scores = caption_metrics(references_of(dataset), captions, spice="SPICE" in metrics, metrics=metrics)
    return {**scores, "captions": captions}
