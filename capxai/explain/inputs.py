"""What every explainer checks and prepares before it explains: the model's parts, the images or features, and the
captions (decoded when not given, or strings read through the vocabulary), each with a clear error on bad input."""
import dataclasses
import math
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from capxai.models import Captioner, beam_search
from capxai.models.contract import feature_width

PAD, START, END = 0, 1, 2  # capxai's vocabulary: <pad>, <start>, <end> (then <unk>, words)


@dataclasses.dataclass
class Prepared:
    """One batch ready to explain: ``images [B, 3, H, W]`` or None, ``features [B, regions, C]`` (the encoder's
    output, detached), ``captions [B, L]`` (``<start>`` first), ``lengths [B]`` (explained words per caption), the
    feature grid's ``(h, w)`` (None without images) and the words as strings when a vocabulary is known."""

    images: Optional[torch.Tensor]
    features: torch.Tensor
    captions: torch.Tensor
    lengths: torch.Tensor
    grid_size: Optional[Tuple[int, int]]
    words: Optional[List[List[str]]]
    targets: Optional[torch.Tensor] = None  # [B, T]: the word whose logit is explained at each step (default: the
    # caption's own word there)
    contrast: Optional[torch.Tensor] = None  # [B, T]: explain "target rather than contrast" (logit difference)
    leading_tokens: int = 0  # regions before the grid's (a ViT's class token): regions = leading + h * w

    @property
    def explained(self) -> torch.Tensor:
        """``[B, T]``: the word whose logit is explained at each step."""
        return self.captions[:, 1:] if self.targets is None else self.targets


def word_choice(choice, prepared: Prepared, vocab_size: int, vocabulary, name: str) -> Optional[torch.Tensor]:
    """``targets=`` / ``contrast=`` of ``explain`` as ``[B, T]`` word ids: None, one word (an id, or a string with a
    vocabulary) for every step, or a ``[B, T]`` tensor of ids (T = the explained caption's words)."""
    if choice is None:
        return None
    shape = tuple(prepared.captions[:, 1:].shape)
    if isinstance(choice, str):
        if vocabulary is None:
            raise ValueError(f"capxai.explain: {name}={choice!r} is a word: pass vocabulary= (or a word id)")
        if choice not in vocabulary.index:
            raise ValueError(f"capxai.explain: {name}={choice!r} is not in the vocabulary")
        choice = vocabulary.index[choice]
    if isinstance(choice, bool) or not isinstance(choice, (int, torch.Tensor)):
        raise TypeError(f"capxai.explain: {name} must be a word, a word id or a [B, T] tensor of ids, got "
                        f"{type(choice).__name__}")
    ids = torch.full(shape, choice, dtype=torch.long) if isinstance(choice, int) else choice
    if ids.dtype != torch.long or tuple(ids.shape) != shape:
        raise ValueError(f"capxai.explain: {name} must be [B, T] = {list(shape)} word ids (long), got "
                         f"{list(ids.shape)} {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"capxai.explain: {name} ids must be in [0, {vocab_size})")
    return ids.to(prepared.captions.device)


def model_parts(model, encoder: Optional[nn.Module]) -> Tuple[Captioner, Optional[nn.Module]]:
    """The captioner and encoder of what a user passed: a captioner (with ``encoder`` given or not) or a model with
    ``.captioner`` and ``.encoder`` (what ``capxai.models.load_trained`` returns first)."""
    if isinstance(model, tuple) and model and hasattr(model[0], "captioner"):
        raise TypeError("capxai.explain: got the (model, vocabulary, config) tuple of load_trained; pass its model "
                        "(and vocabulary=...)")
    if isinstance(model, Captioner):
        return model, encoder
    captioner = getattr(model, "captioner", None)
    if not isinstance(captioner, Captioner):
        raise TypeError(f"capxai.explain: expected a capxai.models.Captioner (a built-in one or a subclass of your "
                        f"own) or a model with .captioner and .encoder, got {type(model).__name__}")
    return captioner, encoder if encoder is not None else getattr(model, "encoder", None)


def _check_images(images, image_size: Optional[int]) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"capxai.explain: images must be [B, 3, H, W] (RGB), got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"capxai.explain: images must be floating point (normalised), got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("capxai.explain: images hold no image (B = 0)")
    if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        raise ValueError(f"capxai.explain: the model was trained on {image_size}x{image_size} images, got "
                         f"{images.shape[2]}x{images.shape[3]}; resize them first")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("capxai.explain: images hold NaN or Inf")
    return images


def _check_features(features, captioner: Captioner) -> torch.Tensor:
    width = feature_width(captioner)
    if not isinstance(features, torch.Tensor) or features.dim() != 3 or (width is not None and
                                                                         features.shape[2] != width):
        shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"capxai.explain: features must be [B, regions, {width or 'C'}] for this captioner, got "
                         f"{shape}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"capxai.explain: features hold no image or no region, got {list(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("capxai.explain: features hold NaN or Inf")
    return features


def _encode_strings(captions: Sequence[str], vocabulary, max_length: int) -> torch.Tensor:
    if vocabulary is None:
        raise ValueError("capxai.explain: captions given as strings need the vocabulary (vocabulary=...)")
    rows, unknown = [], []
    for caption in captions:
        if not isinstance(caption, str):
            raise TypeError(f"capxai.explain: captions must be all strings or a [B, L] tensor, got "
                            f"{type(caption).__name__}")
        tokens = vocabulary.tokenize(caption)
        if not tokens:
            raise ValueError(f"capxai.explain: caption {caption!r} holds no word")
        if len(tokens) > max_length:
            raise ValueError(f"capxai.explain: caption {caption!r} has {len(tokens)} words, more than max_length = "
                             f"{max_length}")
        unknown += [token for token in tokens if token not in vocabulary.index]
        rows.append([START] + [vocabulary.index.get(token, vocabulary.unknown) for token in tokens] + [END])
    if unknown:
        warnings.warn(f"capxai.explain: words not in the vocabulary are read as <unk>: {sorted(set(unknown))}",
                      stacklevel=4)
    length = max(len(row) for row in rows)
    return torch.tensor([row + [PAD] * (length - len(row)) for row in rows], dtype=torch.long)


def _check_token_ids(captions: torch.Tensor, batch: int, vocab_size: int, max_length: int) -> torch.Tensor:
    if captions.dim() != 2 or captions.shape[0] != batch or captions.dtype not in (torch.long, torch.int32):
        raise ValueError(f"capxai.explain: captions must be [B = {batch}, L] integer token ids, got "
                         f"{list(captions.shape)} {captions.dtype}")
    captions = captions.long()
    if captions.shape[1] < 2:
        raise ValueError("capxai.explain: captions must hold <start> and at least one word (L >= 2)")
    if bool((captions[:, 0] != START).any()):
        raise ValueError("capxai.explain: every caption must begin with <start> (id 1)")
    if captions.min() < 0 or captions.max() >= vocab_size:
        raise ValueError(f"capxai.explain: caption token ids must be in [0, {vocab_size})")
    if bool((captions[:, 1] == PAD).any()):
        raise ValueError("capxai.explain: a caption is empty (no word after <start>)")
    words = int(((captions[:, 1:] != PAD) & (captions[:, 1:] != END)).sum(1).max())
    if words > max_length:
        raise ValueError(f"capxai.explain: a caption has {words} words, more than max_length = {max_length}")
    return captions


def explained_lengths(captions: torch.Tensor) -> torch.Tensor:
    """Words explained per caption: positions 1.. up to the last one that is not ``<pad>``."""
    positions = torch.arange(1, captions.shape[1], device=captions.device)
    return ((captions[:, 1:] != PAD) * positions).amax(1)


def encode_with_grid_size(encoder: nn.Module, images: torch.Tensor):
    """``(features, (h, w))``: the encoder's output and the shape of the last 4-D activation it computed on the way
    (its feature grid before flattening; None when there was none), from one forward without gradients."""
    shapes = []
    hooks = [module.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
             for module in encoder.modules() if not list(module.children())]
    try:
        with torch.no_grad():
            features = encoder(images)
    finally:
        for hook in hooks:
            hook.remove()
    grids = [shape for shape in shapes if len(shape) == 4]
    return features, ((grids[-1][2], grids[-1][3]) if grids else None)


def prepare(captioner: Captioner, encoder: Optional[nn.Module], images, features, captions: Union[None, torch.Tensor,
            Sequence[str]], beam_size: int, max_length: int, vocabulary=None, image_size: Optional[int] = None
            ) -> Prepared:
    """Checks the inputs of ``explain`` and encodes / decodes what is missing (see :class:`Prepared`)."""
    if (images is None) == (features is None):
        raise ValueError("capxai.explain: pass exactly one of images and features")
    if max_length < 1 or beam_size < 1:
        raise ValueError(f"capxai.explain: max_length and beam_size must be >= 1, got {max_length}, {beam_size}")
    grid_size = None
    if images is not None:
        if encoder is None:
            raise ValueError("capxai.explain: images need an encoder (pass encoder=..., or features=...)")
        images = _check_images(images, image_size)
        features, grid_size = encode_with_grid_size(encoder, images)
    features = _check_features(features, captioner).detach()
    if grid_size is not None and math.prod(grid_size) != features.shape[1]:
        grid_size = None
    leading = int(getattr(encoder, "leading_tokens", 0) or 0)
    declared = getattr(encoder, "grid_size", None)  # a token encoder's (a ViT): class token(s), then the patches
    if images is not None and grid_size is None and declared is not None and \
            leading + math.prod(declared) == features.shape[1]:
        grid_size = tuple(declared)
    else:
        leading = 0
    batch = features.shape[0]
    if captions is None:
        decoded = beam_search(captioner, features, beam_size, max_length, START, END, PAD)
        captions = torch.cat([torch.full((batch, 1), START, dtype=torch.long, device=features.device),
                              decoded.tokens], dim=1)
    elif isinstance(captions, (list, tuple)):
        if len(captions) != batch:
            raise ValueError(f"capxai.explain: {len(captions)} captions for {batch} images")
        captions = _encode_strings(captions, vocabulary, max_length).to(features.device)
    elif isinstance(captions, torch.Tensor):
        captions = _check_token_ids(captions, batch, captioner.vocab_size, max_length).to(features.device)
    else:
        raise TypeError(f"capxai.explain: captions must be None, a [B, L] tensor of ids or a list of strings, got "
                        f"{type(captions).__name__}")
    lengths = explained_lengths(captions)
    if batch > 0 and int(lengths.max()) == 0:  # only decoding gets here: given captions are checked above
        raise ValueError("capxai.explain: the captioner decoded an empty caption for every image (its first word is "
                         "<pad>, id 0), so there is no word to explain; train it further or pass captions= to "
                         "explain given words")
    captions = captions[:, :int(lengths.max()) + 1]
    words = None
    if vocabulary is not None:
        words = [[vocabulary.words[int(i)] for i in row[1:n + 1]] for row, n in zip(captions, lengths.tolist())]
    return Prepared(images, features, captions, lengths, grid_size, words, leading_tokens=leading)
