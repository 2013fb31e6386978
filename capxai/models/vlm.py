"""Vision-language models of Hugging Face (``AutoModelForImageTextToText``) as captioners capxai explains: one
adapter over the whole model's forward, whatever the family (issue 38). The family's processor turns an image and a
prompt into the model's inputs, the model's own ``generate`` writes the caption, and :mod:`capxai.explain.vlm`
explains it teacher-forced.

A family is one entry of :data:`VLM_FAMILIES`, keyed by the config's ``model_type``: the model class, the
captioning prompt, whether the prompt goes through the processor's chat template, and the image placeholder a raw
prompt must hold. :func:`load_vlm` reads a local ``save_pretrained`` folder (config checked before any weight is
read; nothing downloaded).
"""
import dataclasses
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from capxai._optional import require
from capxai.registry import Registry


@dataclasses.dataclass(frozen=True)
class VLMFamily:
    """How capxai captions with one family.

    Attributes:
        model_class: the ``transformers`` class that loads it.
        prompt: the captioning prompt used when the user gives none (the user's text inside the chat template when
            ``chat``, else the whole prompt).
        chat: the prompt is the user's message of the processor's chat template (the image placed by the template).
        placeholder: the image placeholder a raw prompt must hold (None: the processor places the image itself).
        pooled_image_tokens: how many image tokens, before the grid, pool the whole image (Florence-2: 1, the
            spatial mean); a map spreads them evenly over the grid.
        caption_token_type: the ``token_type_ids`` of the caption's tokens, for a family that reads them
            (PaliGemma's prefix LM: 1, the causal suffix; Gemma 3: 0, text, where 1 marks the image tokens, which
            attend both ways).
        image_tokens_on_grid: the image tokens are places of the image, row by row (a map of them is a map of the
            image); False for BLIP-2, whose image tokens are its Q-Former's learned queries, each reading the whole
            image.
        learned_inputs: parameters the model reads as inputs, beside the image and the text (BLIP-2's Q-Former
            queries, ``query_tokens``): the relevance they take is reported, not lost.
    """

    model_class: str
    prompt: str
    chat: bool = False
    placeholder: Optional[str] = "<image>"
    caption_token_type: int = 0
    pooled_image_tokens: int = 0
    image_tokens_on_grid: bool = True
    learned_inputs: Tuple[str, ...] = ()


VLM_FAMILIES: Registry = Registry("vision-language families")
VLM_FAMILIES.register("llava", VLMFamily("LlavaForConditionalGeneration", "USER: <image>\nDescribe the image in one "
                                         "sentence. ASSISTANT:"), help="LLaVA-1.5: CLIP tower, MLP projector, LLaMA")
VLM_FAMILIES.register("qwen2_5_vl", VLMFamily("Qwen2_5_VLForConditionalGeneration", "Describe the image in one "
                                              "sentence.", chat=True, placeholder="<|image_pad|>"),
                      help="Qwen2.5-VL: windowed ViT with Conv3d patches, merger, Qwen2 with multimodal RoPE")
VLM_FAMILIES.register("idefics3", VLMFamily("Idefics3ForConditionalGeneration", "Describe the image in one sentence.",
                                            chat=True), help="Idefics3 / SmolVLM: SigLIP, pixel shuffle, LLaMA")
VLM_FAMILIES.register("gemma3", VLMFamily("Gemma3ForConditionalGeneration", "Describe the image in one sentence.",
                                          chat=True, placeholder="<start_of_image>"),
                      help="Gemma 3: SigLIP, average-pooled projector, Gemma 3 with QK-norm and sliding windows")
VLM_FAMILIES.register("paligemma", VLMFamily("PaliGemmaForConditionalGeneration", "caption en", placeholder=None,
                                             caption_token_type=1),
                      help="PaliGemma: SigLIP, linear projector, Gemma as a prefix LM")
VLM_FAMILIES.register("blip-2", VLMFamily("Blip2ForConditionalGeneration", "a photo of", placeholder=None,
                                          image_tokens_on_grid=False, learned_inputs=("query_tokens",)),
                      help="BLIP-2: ViT, a Q-Former's learned queries cross-attending the image, OPT")
VLM_FAMILIES.register("florence2", VLMFamily("Florence2ForConditionalGeneration", "<CAPTION>", placeholder=None,
                                             pooled_image_tokens=1),
                      help="Florence-2: DaViT, projector with a pooled token, BART encoder-decoder")


def family_of(config) -> Tuple[str, VLMFamily]:
    """``(name, family)`` of a model's config; an uncovered ``model_type`` is refused by name, with the covered ones."""
    name = getattr(config, "model_type", None)
    if name not in VLM_FAMILIES:
        raise ValueError(f"capxai explains the vision-language families {', '.join(VLM_FAMILIES)}; this model is "
                         f"{name!r} ({type(config).__name__})")
    return name, VLM_FAMILIES[name]


def is_vlm_folder(folder: Union[str, Path]) -> bool:
    """Whether a ``save_pretrained`` folder's ``config.json`` names a family of :data:`VLM_FAMILIES` (which path
    ``--hf-model`` takes; read without transformers; a missing or broken file is left to the loader to name)."""
    try:
        model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type in VLM_FAMILIES


@dataclasses.dataclass
class VLMInputs:
    """One image, its prompt and a caption, as the model reads them teacher-forced.

    Attributes:
        inputs: the processor's tensors (``input_ids [1, L]`` = prompt then caption, ``pixel_values``, ...; an
            encoder-decoder's caption in ``decoder_input_ids``, after the decoder's start token).
        positions: ``[C]`` the caption's positions in :func:`sequence_ids` (word k is predicted at ``positions[k] -
            1``).
        tiles: ``(rows, columns)`` of the crops the processor cut the image into (read with a global view of the
            whole image after them: Idefics3 / SmolVLM's image splitting), or None for an image read whole.
    """

    inputs: Dict[str, torch.Tensor]
    positions: torch.Tensor
    tiles: Optional[Tuple[int, int]] = None

    @property
    def caption_ids(self) -> torch.Tensor:
        """``[C]`` the caption's token ids."""
        return sequence_ids(self.inputs)[0, self.positions]

    @property
    def prompt_length(self) -> int:
        return int(self.positions[0])


TILE_TOKEN = re.compile(r"<row_(\d+)_col_(\d+)>")  # Idefics3's marks of an image's crops


class VisionLanguageModel:
    """A Hugging Face vision-language model with its processor and captioning prompt: what capxai captions and
    explains. ``model``: evaluation mode, parameters frozen; ``family``: its :data:`VLM_FAMILIES` name."""

    def __init__(self, model: nn.Module, processor, prompt: Optional[str] = None, family: Optional[str] = None):
        name, spec = family_of(model.config) if family is None else (family, VLM_FAMILIES[family])
        self.model, self.processor, self.family, self.spec = model.eval(), processor, name, spec
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.prompt = prompt_text(name, processor, prompt)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_inputs(self, image) -> Dict[str, torch.Tensor]:
        """The processor's inputs for one PIL image and the prompt (``input_ids [1, L]``), on the model's device and
        in its float dtype (without the ``labels`` some processors add for training). An image the processor refuses
        is named."""
        try:
            inputs = self.processor(images=[image], text=[self.prompt], return_tensors="pt")
        except Exception as error:  # the processors raise ValueError, TypeError, PIL's errors...
            raise ValueError(f"the {self.family} processor refused the image ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None
        dtype = next(self.model.parameters()).dtype
        return {name: value.to(self.device, dtype if value.is_floating_point() else value.dtype)
                for name, value in dict(inputs).items() if isinstance(value, torch.Tensor) and name != "labels"}

    def caption(self, image, max_new_tokens: int = 16) -> VLMInputs:
        """The model's own greedy caption of ``image`` (its ``generate``), appended to the prompt's inputs."""
        inputs, positions = generate_caption(self.model, self.prompt_inputs(image), max_new_tokens)
        return VLMInputs(inputs, positions, self.tiles_of(inputs["input_ids"]))

    def teacher_forced(self, image, caption: str) -> VLMInputs:
        """``caption`` (text, tokenised without special tokens) appended to the prompt's inputs of ``image``."""
        ids = self.tokenizer(caption, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
        if ids.shape[1] == 0:
            raise ValueError("the caption is empty: nothing to explain")
        inputs = self.prompt_inputs(image)
        return VLMInputs(*with_caption(inputs, ids, self.model), self.tiles_of(inputs["input_ids"]))

    def tiles_of(self, input_ids: torch.Tensor) -> Optional[Tuple[int, int]]:
        """``(rows, columns)`` of the crops an image was split into, read off the tile tokens the processor put in
        the prompt (Idefics3 / SmolVLM's ``<row_R_col_C>``: the largest R and C); None where there are none."""
        cells = [TILE_TOKEN.fullmatch(token) for token in
                 self.tokenizer.convert_ids_to_tokens(sorted(set(input_ids.flatten().tolist())))]
        cells = [(int(cell.group(1)), int(cell.group(2))) for cell in cells if cell is not None]
        if not cells:
            return None
        return max(row for row, _ in cells), max(column for _, column in cells)

    def token_id(self, word: str) -> int:
        """The id of ``word``, which must be one token of the model's tokenizer (a contrast word)."""
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"--contrast {word!r} is {len(ids)} tokens of the model's tokenizer; give one token")
        return int(ids[0])

    def token_texts(self, ids: Sequence[int]) -> List[str]:
        """Each token's text, as it reads alone (spaces stripped; an empty one named by its id)."""
        texts = [self.tokenizer.decode([int(i)]).strip() for i in ids]
        return [text if text else f"<token {int(i)}>" for text, i in zip(texts, ids)]


# The processors' per-token inputs, and the value of a caption token in each: attended; its token type (the
# family's: VLMFamily.caption_token_type); Qwen2.5-VL's modality of a text token (0)
PER_TOKEN_INPUTS = {"attention_mask": 1, "token_type_ids": None, "mm_token_type_ids": 0}


def prompt_text(family: str, processor, prompt: Optional[str] = None) -> str:
    """The text the processor reads: for a chat family, the user's message (``prompt``, default the family's) in the
    processor's chat template; else the prompt itself, which must hold the family's image placeholder."""
    spec = VLM_FAMILIES[family]
    prompt = spec.prompt if prompt is None else prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty; give the text the model reads with the image (--prompt)")
    placeholder = spec.placeholder
    if spec.chat and (placeholder is None or placeholder not in prompt):
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"the {family} processor has no chat template: give the whole prompt with its image "
                             f"placeholder {placeholder or '<image>'!r} (--prompt)")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    if placeholder is not None and placeholder not in prompt:
        raise ValueError(f"the prompt {prompt!r} holds no image placeholder {placeholder!r}: a {family} model reads "
                         "the image where the prompt says so")
    return prompt


def sequence_ids(inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``[1, L]`` the tokens as one sequence, prompt then caption: ``input_ids``, or an encoder-decoder's
    ``input_ids`` (the prompt, read by the encoder) then ``decoder_input_ids`` (its start token, then the caption)."""
    decoder = inputs.get("decoder_input_ids")
    return inputs["input_ids"] if decoder is None else torch.cat([inputs["input_ids"], decoder], 1)


def decoder_offset(inputs: Dict[str, torch.Tensor]) -> int:
    """Where the language model's own sequence starts in :func:`sequence_ids` (an encoder-decoder's decoder: after
    the prompt; else 0): a position p there is step ``p - decoder_offset`` of the logits."""
    return inputs["input_ids"].shape[1] if inputs.get("decoder_input_ids") is not None else 0


def with_caption(inputs: Dict[str, torch.Tensor], ids: torch.Tensor, model: nn.Module):
    """``(inputs with the caption ids [1, C] placed, the caption's positions [C] in :func:`sequence_ids`)``: appended
    to ``input_ids`` (:func:`append_tokens`), or, for an encoder-decoder (Florence-2), the decoder's input: its start
    token, then the caption."""
    if not model.config.is_encoder_decoder:
        length = inputs["input_ids"].shape[1]
        return append_tokens(inputs, ids, model), torch.arange(length, length + ids.shape[1], device=ids.device)
    begin = model.generation_config.decoder_start_token_id
    if begin is None:
        raise ValueError(f"{type(model).__name__} names no decoder_start_token_id: its decoder's input cannot be made")
    decoder = torch.cat([ids.new_full((1, 1), int(begin)), ids], 1)
    start = inputs["input_ids"].shape[1] + 1
    return dict(inputs, decoder_input_ids=decoder), torch.arange(start, start + ids.shape[1], device=ids.device)


def append_tokens(inputs: Dict[str, torch.Tensor], ids: torch.Tensor, model: nn.Module) -> Dict[str, torch.Tensor]:
    """``inputs`` with ``ids [1, C]`` appended to ``input_ids``; the per-token inputs (:data:`PER_TOKEN_INPUTS`)
    grow with them, ``token_type_ids`` with ``model``'s family's caption token type."""
    extended = dict(inputs, input_ids=torch.cat([inputs["input_ids"], ids], 1))
    family = VLM_FAMILIES.get(getattr(model.config, "model_type", None))
    for name, fill in PER_TOKEN_INPUTS.items():
        fill = fill if fill is not None else (family.caption_token_type if family is not None else 0)
        if name in inputs:
            extended[name] = torch.cat([inputs[name], inputs[name].new_full(ids.shape, fill)], 1)
    return extended


def generate_caption(model: nn.Module, inputs: Dict[str, torch.Tensor], max_new_tokens: int = 16):
    """The model's own greedy caption (its ``generate``) of the image and prompt in ``inputs`` (the processor's,
    ``input_ids [1, L]``): ``(inputs with the caption appended, the caption's positions [C])``."""
    ids = inputs["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"caption: input_ids must be [1, L] (one image and its prompt), got {list(ids.shape)}")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    # a decoder-only model returns the prompt and its words; an encoder-decoder its decoder's start token and words
    added = generated[:, 1:] if model.config.is_encoder_decoder else generated[:, ids.shape[1]:]
    if added.shape[1] < 1:
        raise ValueError("caption: the model generated no token (its first word ended the caption)")
    return with_caption(inputs, added, model)


def load_vlm(folder: Union[str, Path], device: Union[str, torch.device] = "cpu", prompt: Optional[str] = None,
             dtype: Optional[torch.dtype] = None) -> VisionLanguageModel:
    """A local ``save_pretrained`` folder of a covered family (model and processor) as a
    :class:`VisionLanguageModel` on ``device``. The config is checked before the weights are read; what the folder
    lacks is named."""
    transformers = require("transformers", "a Hugging Face vision-language model (--hf-model)")
    from transformers import AutoProcessor

    from capxai.models.hf_local import read_config

    folder = Path(folder)
    name, spec = family_of(read_config(folder))
    if not any((folder / file).is_file() for file in ("processor_config.json", "preprocessor_config.json")):
        raise FileNotFoundError(f"{folder} holds no processor (processor_config.json / preprocessor_config.json): "
                                "save it with processor.save_pretrained(DIR); a VLM's images and prompt are read "
                                "by its processor")
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # a missing tokenizer file surfaces as OSError, ValueError, TypeError...
        raise FileNotFoundError(f"{folder}: its processor could not be read ({type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ValueError(f"{folder}: its processor ({type(processor).__name__}) has no tokenizer and image "
                         "processor; save the model's multimodal processor with processor.save_pretrained(DIR)")
    prompt_text(name, processor, prompt)  # a prompt the family cannot read stops before the weights are read
    try:
        model = getattr(transformers, spec.model_class).from_pretrained(folder, local_files_only=True,
                                                                       dtype=dtype or torch.float32)
    except Exception as error:  # truncated or foreign weights: safetensors, torch and transformers raise many types
        raise ValueError(f"{folder}: the model's weights could not be read ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    return VisionLanguageModel(model.to(device), processor, prompt=prompt, family=name)
