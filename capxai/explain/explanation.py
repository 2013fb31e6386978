"""One typed result for every explanation method: what was explained (the words, their logits) and what each
method says about them (relevance of pixels, of the feature grid, of the preceding words; attention)."""
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from capxai._io import atomic_torch_save, atomic_write_json

TENSOR_FIELDS = ("tokens", "lengths", "logits", "probabilities", "feature_relevance", "pixel_relevance", "pixel_map",
                 "word_relevance", "prompt_relevance", "initial_state_relevance", "attention", "attention_heads",
                 "beta", "captions", "targets", "contrast")
FORMAT_VERSION = 1


@dataclasses.dataclass
class Explanation:
    """Explanations of the words of B captions (T = the longest caption's words, ``<end>`` included).

    Fields a method does not produce are None.

    Attributes:
        tokens: ``[B, T]`` the explained words (caption positions 1..L-1; ``<pad>`` after a caption's end).
        lengths: ``[B]`` explained words per caption (the rest of a row is padding and carries zeros everywhere).
        logits: ``[B, T]`` the raw logit of each explained word (the relevance put in by LRP).
        probabilities: ``[B, T]`` the probability of each explained word.
        captions: ``[B, L]`` the teacher-forced captions (``<start>`` first).
        feature_relevance: ``[B, T, regions, C]`` on the encoder's feature grid (what the decoder received).
        pixel_relevance: ``[B, T, 3, H, W]`` per colour channel (LRP, Guided Backprop, Guided Grad-CAM, Gradient x
            Input).
        pixel_map: ``[B, T, H, W]`` a one-channel map upsampled to the image (Grad-CAM, attention).
        word_relevance: ``[B, T, T]`` row t holds the relevance of the words fed at steps 0..t (``<start>``, w1 ..
            wt) for word t+1, summed over the embedding; zeros above the diagonal.
        prompt_relevance: ``[B, T, P]`` a vision-language model's: the relevance of the prompt's text tokens before
            the one fed at step 0 (the image placeholders left out: the image tokens' relevance is
            ``feature_relevance``).
        initial_state_relevance: ``[B, T]`` what LRP gives the decoder's initial states (non-zero only with a bias
            share, ``bias_factor > 0``).
        attention: ``[B, T, regions]`` (the multi-head model: mean over heads).
        attention_heads: ``[B, T, heads, regions]``.
        beta: ``[B, T]`` the adaptive model's sentinel share.
        targets: ``[B, T]`` the word whose logit was explained at each step, when not the caption's own (else None).
        contrast: ``[B, T]`` the word it was explained against ("target rather than contrast"), or None.
        contrast_words: those words as strings when a vocabulary was known.
        grid_size: ``(h, w)`` the feature grid (regions = h * w), or None when only features were explained.
        method: "lrp", "gradcam", ...
        settings: the method's settings.
        words: the explained words as strings when a vocabulary was known.
        prompt_words: a vision-language model's prompt tokens as strings (``prompt_relevance``'s columns).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor
    probabilities: torch.Tensor
    captions: torch.Tensor
    method: str
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    feature_relevance: Optional[torch.Tensor] = None
    pixel_relevance: Optional[torch.Tensor] = None
    pixel_map: Optional[torch.Tensor] = None
    word_relevance: Optional[torch.Tensor] = None
    prompt_relevance: Optional[torch.Tensor] = None
    initial_state_relevance: Optional[torch.Tensor] = None
    attention: Optional[torch.Tensor] = None
    attention_heads: Optional[torch.Tensor] = None
    beta: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None
    contrast: Optional[torch.Tensor] = None
    grid_size: Optional[List[int]] = None
    words: Optional[List[List[str]]] = None
    contrast_words: Optional[List[List[str]]] = None
    prompt_words: Optional[List[List[str]]] = None
    run: Dict[str, Any] = dataclasses.field(default_factory=dict)  # which run wrote it (run id, checkpoint), if saved

    @property
    def mask(self) -> torch.Tensor:
        """``[B, T]`` bool: True where a real word (not padding) was explained."""
        steps = torch.arange(self.tokens.shape[1], device=self.lengths.device)
        return steps.unsqueeze(0) < self.lengths.unsqueeze(1)

    def heatmaps(self) -> torch.Tensor:
        """``[B, T, H, W]``: the pixel relevance summed over colour, or the method's one-channel map."""
        if self.pixel_map is not None:
            return self.pixel_map
        if self.pixel_relevance is None:
            raise ValueError(f"Explanation ({self.method}): no pixel relevance (features were explained, not images)")
        return self.pixel_relevance.sum(2)

    def normalised_word_relevance(self) -> torch.Tensor:
        """``word_relevance`` with each row divided by its largest absolute value (the paper's linguistic
        explanation, docs/LRP_RULES.md "Linguistic explanation"); an all-zero row stays zero."""
        if self.word_relevance is None:
            raise ValueError(f"Explanation ({self.method}): this method gives no word relevance")
        scale = self.word_relevance.abs().amax(-1, keepdim=True)
        return self.word_relevance / torch.where(scale > 0, scale, torch.ones_like(scale))

    def to(self, device) -> "Explanation":
        """A copy with every tensor on ``device``."""
        moved = {name: getattr(self, name).to(device) for name in TENSOR_FIELDS if getattr(self, name) is not None}
        return dataclasses.replace(self, **moved)

    def select(self, rows) -> "Explanation":
        """The explanation of some captions only (``rows``: indices or a slice along B)."""
        index = torch.arange(self.tokens.shape[0])[rows]
        picked = {name: getattr(self, name)[index.to(getattr(self, name).device)] for name in TENSOR_FIELDS
                  if getattr(self, name) is not None}
        words = None if self.words is None else [self.words[int(i)] for i in index]
        contrast_words = None if self.contrast_words is None else [self.contrast_words[int(i)] for i in index]
        prompt_words = None if self.prompt_words is None else [self.prompt_words[int(i)] for i in index]
        return dataclasses.replace(self, **picked, words=words, contrast_words=contrast_words,
                                   prompt_words=prompt_words)

    def save(self, path) -> Path:
        """Writes ``path`` (``.pt``: the tensors, readable with ``torch.load(weights_only=True)``) and ``path`` with
        suffix ``.json`` beside it (method, settings, shapes, words), both atomically."""
        path = Path(path)
        tensors = {name: getattr(self, name).detach().cpu() for name in TENSOR_FIELDS
                   if getattr(self, name) is not None}
        atomic_torch_save(path, tensors)
        atomic_write_json(path.with_suffix(".json"), {
            "format": FORMAT_VERSION, "method": self.method, "settings": self.settings, "grid_size": self.grid_size,
            "words": self.words, "contrast_words": self.contrast_words, "prompt_words": self.prompt_words,
            "run": self.run,
            "shapes": {name: list(t.shape) for name, t in tensors.items()}})
        return path

    @classmethod
    def load(cls, path, map_location="cpu") -> "Explanation":
        """Reads what :meth:`save` wrote (never runs code from the file: ``weights_only=True``)."""
        path = Path(path)
        meta_path = path.with_suffix(".json")
        for needed in (path, meta_path):
            if not needed.is_file():
                raise FileNotFoundError(f"Explanation.load: {needed} does not exist")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # json and torch raise many types for broken files
            raise ValueError(f"Explanation.load: {path} is not a capxai explanation "
                             f"({type(error).__name__}: {error})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or not isinstance(tensors, dict):
            raise ValueError(f"Explanation.load: {path} is not a capxai explanation (format {FORMAT_VERSION})")
        unknown = set(tensors) - set(TENSOR_FIELDS)
        missing = {"tokens", "lengths", "logits", "probabilities", "captions"} - set(tensors)
        if unknown or missing:
            raise ValueError(f"Explanation.load: {path} has unknown {sorted(unknown)} / lacks {sorted(missing)}")
        return cls(method=meta["method"], settings=meta.get("settings", {}), grid_size=meta.get("grid_size"),
                   words=meta.get("words"), contrast_words=meta.get("contrast_words"),
                   prompt_words=meta.get("prompt_words"), run=meta.get("run") or {},
                   **tensors)
