"""A user's own Hugging Face captioning checkpoint, a local ``save_pretrained`` folder (the model's ``config.json`` and
weights, its image processor's ``preprocessor_config.json`` and its tokenizer's files), as what capxai explains:
:func:`load_local`. Nothing is downloaded (``local_files_only``); what the folder lacks, or an architecture the
adapter does not cover, is named in the error."""
import dataclasses
from pathlib import Path
from typing import Callable, List, Sequence, Union

import torch
from torch import nn

from capxai._optional import require
from capxai.data.vocabulary import SPECIALS, Vocabulary
from capxai.models import hf


class HFCaptioningModel(nn.Module):
    """The captioner and encoder of one Hugging Face model (what the explainers take: ``.captioner``, ``.encoder``,
    ``.image_size``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.captioner, self.encoder = hf.split(model, remap=True)  # capxai's ids over the tokenizer's
        self.image_size = self.encoder.image_size


class TokenizerVocabulary(Vocabulary):
    """capxai's vocabulary of a captioner remapped by :class:`capxai.models.hf.HFCaptioner`: capxai's four special
    tokens, then one word per token of the model (``WORD_OFFSET + j`` is token ``j``). A token's word is its text
    without the space before it; where two tokens read the same (GPT-2's ``Ġdog`` and ``dog``), the one that starts
    a word keeps the text and the other is written ``##dog`` (attached to the piece before it), else ``dog#ID``.
    ``tokenize`` reads a caption with the model's tokenizer."""

    def __init__(self, words: Sequence[str], tokenizer):
        super().__init__(words)
        self.tokenizer = tokenizer

    @classmethod
    def from_tokenizer(cls, tokenizer, size: int) -> "TokenizerVocabulary":
        """The words of the model's ``size`` tokens (ids the tokenizer does not know, in padded embedding matrices,
        are ``<token ID>``)."""
        known = min(len(tokenizer), size)
        tokens = tokenizer.convert_ids_to_tokens(list(range(known)))
        texts = [tokenizer.convert_tokens_to_string([token]) if token is not None else "" for token in tokens]
        texts += [""] * (size - known)
        names: List[str] = [""] * size
        taken = set(SPECIALS)
        starts_word = [text[:1].isspace() for text in texts]
        for token_id in sorted(range(size), key=lambda i: not starts_word[i]):  # word starts choose first
            text = texts[token_id].strip()
            if not text or not text.isprintable():  # a byte of a character, a control byte: named by its id
                text = f"<token {token_id}>"
            for name in (text, f"##{text}", f"{text}#{token_id}"):
                if name not in taken:
                    break
            names[token_id] = name
            taken.add(name)
        return cls(list(SPECIALS) + names, tokenizer)

    def tokenize(self, caption: str) -> List[str]:
        ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"]
        return [self.words[hf.WORD_OFFSET + i] for i in ids]


@dataclasses.dataclass
class LocalHFModel:
    """What :func:`load_local` returns: ``model`` (``.captioner``, ``.encoder``), its ``vocabulary``, the
    ``transform`` of a PIL image into the model's ``pixel_values [3, S, S]`` (its image processor) and ``image_size``
    (S)."""

    model: HFCaptioningModel
    vocabulary: Vocabulary
    transform: Callable
    image_size: int


def read_config(folder: Path):
    """The ``config.json`` of a ``save_pretrained`` folder (read before any weight), or the error naming what is
    wrong with the folder."""
    from transformers import AutoConfig

    if not folder.is_dir():
        raise FileNotFoundError(f"--hf-model {folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a Hugging Face model folder (write one with "
                                "model.save_pretrained(DIR))")
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"{folder}/config.json is not a config transformers can read ({error})") from None


def load_local(folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> LocalHFModel:
    """A local ``save_pretrained`` folder of a ``VisionEncoderDecoderModel`` (ViT + GPT-2) or of BLIP's captioning
    model, with its image processor and tokenizer, ready to explain (evaluation mode, on ``device``)."""
    transformers = require("transformers", "a Hugging Face model folder (--hf-model)")
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(folder)
    config = read_config(folder)
    model_class = hf.check_config(config)
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no preprocessor_config.json: the model's image processor "
                                "(processor.save_pretrained(DIR)) is needed to read images")
    try:
        model = getattr(transformers, model_class).from_pretrained(folder, local_files_only=True)
    except Exception as error:  # truncated or foreign weights: safetensors, torch and transformers raise many types
        raise ValueError(f"{folder}: the model's weights could not be read ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    wrapped = HFCaptioningModel(model).to(device)
    image_size = wrapped.image_size
    size = dict(getattr(processor, "size", None) or {})
    if (size.get("height"), size.get("width")) != (image_size, image_size):
        raise ValueError(f"{folder}: the image processor resizes to {size}, but the model's ViT takes "
                         f"{image_size}x{image_size} images (its config's image_size); fix one of them")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError) as error:
        raise FileNotFoundError(f"{folder} holds no tokenizer transformers can read ({error}); save it with "
                                "tokenizer.save_pretrained(DIR)") from None
    vocabulary = TokenizerVocabulary.from_tokenizer(tokenizer, wrapped.captioner.hf_vocab_size)

    def transform(picture):
        return processor(images=picture, return_tensors="pt")["pixel_values"][0]

    return LocalHFModel(wrapped, vocabulary, transform, image_size)
