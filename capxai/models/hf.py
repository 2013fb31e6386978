"""Hugging Face image-to-text models as capxai captioners: a ``VisionEncoderDecoderModel`` (a ViT encoder and a GPT-2
decoder with cross-attention) and BLIP's captioning model (``BlipForConditionalGeneration``: its ViT and its BERT
decoder with cross-attention).

The adapter splits the HF model along capxai's contract (``capxai.models.contract``): :class:`HFImageEncoder` is the
vision encoder (``pixel_values`` -> its last hidden state ``[B, tokens, C]``, the class token first, then the patches
row by row), :class:`HFCaptioner` the decoder, one word per ``step``. The decoder's state keeps the embeddings of the
words fed so far (``embedded [B, t, C]``) and re-runs the decoder on them each step: the word embedding (``wte``) is
called exactly once per step on the fed word, which the explainers read, and every state tensor is batch-first, so the
shared beam search reorders it. That costs O(T^2) decoder work per caption instead of a key/value cache's O(T), small at
captioning lengths. The LRP of the HF modules is the generic path's (docs/LRP_RULES.md, "The generic path"): GPT-2's
``Conv1D`` (``torch.addmm``), the ViT's patch embedding (``conv2d``), LayerNorm, GELU, residual sums and attention.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from capxai._optional import require
from capxai.data.vocabulary import END, PAD, SPECIALS, START, UNK
from capxai.models.captioner import Captioner, State

PAD_ID, START_ID, END_ID, UNK_ID = (SPECIALS.index(token) for token in (PAD, START, END, UNK))  # capxai's ids
CAPXAI_IDS = (PAD_ID, START_ID, END_ID)
HF_PURPOSE = "a Hugging Face captioner or encoder (capxai.models.hf)"
WORD_OFFSET = len(SPECIALS)  # a remapped captioner's id of the model's token j is WORD_OFFSET + j
SUPPORTED = {"VisionEncoderDecoderModel": "a ViT encoder ('vit') with a GPT-2 decoder ('gpt2')",
             "BlipForConditionalGeneration": "BLIP's captioning model: its ViT and its BERT decoder"}
CONFIGS = {"VisionEncoderDecoderConfig": "VisionEncoderDecoderModel", "BlipConfig": "BlipForConditionalGeneration"}
ENCODER_TYPES = ("vit",)
DECODER_TYPES = ("gpt2",)


def check_supported(model: nn.Module) -> None:
    """A ValueError naming what the adapter supports when ``model`` is another architecture."""
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"capxai.models.hf: {name} is not supported; the adapter covers {describe_supported()}")
    check_config(model.config)


def check_config(config) -> str:
    """The same check on a model's config (before its weights are read); returns the model class to load."""
    architectures = list(getattr(config, "architectures", None) or [])
    model_class = CONFIGS.get(type(config).__name__)
    if model_class is None or (architectures and model_class not in architectures):
        named = ", ".join(architectures) or "no architectures named"
        from capxai.models.vlm import VLM_FAMILIES

        raise ValueError(f"capxai.models.hf: a {config.model_type!r} model ({named}) is not supported; the "
                         f"adapter covers {describe_supported()}; capxai explains the vision-language families "
                         f"{', '.join(VLM_FAMILIES)}")
    if model_class == "BlipForConditionalGeneration":
        return model_class
    encoder_type, decoder_type = config.encoder.model_type, config.decoder.model_type
    if encoder_type not in ENCODER_TYPES or decoder_type not in DECODER_TYPES:
        raise ValueError(f"capxai.models.hf: a VisionEncoderDecoderModel with a {encoder_type!r} encoder and a "
                         f"{decoder_type!r} decoder is not supported; the adapter covers {describe_supported()}")
    return model_class


def _is_blip(model: nn.Module) -> bool:
    return type(model).__name__ == "BlipForConditionalGeneration"


def describe_supported() -> str:
    """What the adapter covers, in words."""
    return "; ".join(f"{kind} ({what})" for kind, what in SUPPORTED.items())


def special_ids(model: nn.Module) -> Tuple[int, int, int]:
    """``(pad, start, end)`` ids of a ``VisionEncoderDecoderModel`` (its config's, else its decoder's; a model without
    a pad id pads with its end id, as GPT-2 checkpoints do), or of BLIP (its text config's pad, bos ``[DEC]`` and
    sep ``[SEP]``, what its ``generate`` starts and stops with)."""
    def first(*names):
        values = [getattr(owner, name, None) for owner, name in names]
        return next((value for value in values if value is not None), None)

    if _is_blip(model):
        text = model.config.text_config
        start, end, pad = text.bos_token_id, text.sep_token_id, text.pad_token_id
    else:
        config, decoder = model.config, model.config.decoder
        start = first((config, "decoder_start_token_id"), (decoder, "bos_token_id"))
        end = first((config, "eos_token_id"), (decoder, "eos_token_id"))
        pad = first((config, "pad_token_id"), (decoder, "pad_token_id"))
    if start is None or end is None:
        raise ValueError("capxai.models.hf: the model's config names no decoder_start_token_id (or bos_token_id) "
                         "or no eos_token_id; set them (model.config.decoder_start_token_id = ...) before splitting")
    return (int(pad) if pad is not None else int(end)), int(start), int(end)


class HFImageEncoder(nn.Module):
    """A Hugging Face ViT as capxai's encoder: ``images [B, 3, H, W]`` -> ``[B, 1 + h * w, C]`` (class token, then
    the ``h x w`` patches row by row). ``grid_size`` is ``(h, w)``; ``leading_tokens`` the tokens before the grid;
    ``channels`` is C."""

    leading_tokens = 1
    lrp_path = "generic"  # capxai.explain.LRP explains it by the generic path's rules (Zennit has none for attention)

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision
        config = vision.config
        self.image_size, self.channels = int(config.image_size), int(config.hidden_size)
        self.grid_size = (self.image_size // config.patch_size,) * 2

    @classmethod
    def from_model(cls, model: nn.Module) -> "HFImageEncoder":
        check_supported(model)
        return cls(model.vision_model if _is_blip(model) else model.encoder)

    @property
    def cam_layer(self) -> nn.Module:
        """Grad-CAM's layer: the last encoder block (its output tokens, before the final LayerNorm)."""
        encoder = getattr(self.vision, "encoder", None)  # ViT (transformers 5): .layers; 4.x: .encoder.layer; BLIP:
        for blocks in (getattr(self.vision, "layers", None), getattr(encoder, "layers", None),  # .encoder.layers
                       getattr(encoder, "layer", None)):
            if blocks is not None:
                return blocks[-1]
        raise ValueError(f"HFImageEncoder: no encoder blocks in {type(self.vision).__name__} (.layers, "
                         ".encoder.layers, .encoder.layer)")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"HFImageEncoder: images must be [B, 3, {self.image_size}, {self.image_size}] (the "
                             f"ViT's config.image_size), got {list(images.shape)}")
        return self.vision(pixel_values=images).last_hidden_state


class HFCaptioner(Captioner):
    """A Hugging Face GPT-2 decoder with cross-attention as a capxai captioner: ``init_state(features)`` and one word
    per ``step``. ``project``: the ``VisionEncoderDecoderModel``'s encoder-to-decoder projection, when it has one.

    ``hf_special_ids``: the model's own ``(pad, start, end)`` ids, for a checkpoint with a tokenizer's ids (GPT-2's
    50256 for all three) rather than capxai's ``(0, 1, 2)``. The captioner then speaks capxai's ids: id
    ``i < 4`` is capxai's ``<pad> <start> <end> <unk>`` (mapped to the model's pad, start, end and end), id
    ``WORD_OFFSET + j`` is the model's token ``j``. Its logits are the model's, reordered so (``index_select``, which
    routes relevance exactly); ``<pad>``, ``<start>``, ``<unk>`` and the word copies of the model's special tokens get
    ``-inf`` (never decoded), so ``<end>`` is decoded where the model ends and greedy decoding equals ``generate``
    (for a model that does not put its pad or start token first: ``generate`` would emit them, capxai does not).

    Activations of a step: ``attention [B, heads, regions]``, the last decoder layer's cross-attention of the new
    word over the encoder's tokens (computed by the eager attention, which the adapter selects for the decoder).
    """

    def __init__(self, decoder: nn.Module, feature_dim: int, project: Optional[nn.Module] = None,
                 hf_special_ids: Optional[Tuple[int, int, int]] = None):
        super().__init__()
        self.decoder = decoder
        self.decoder.config._attn_implementation = "eager"  # cross-attention weights are an output of the step
        self.project = project
        self.embedding = self.decoder.get_input_embeddings()
        self.hf_vocab_size = int(self.decoder.config.vocab_size)
        self.feature_dim = int(feature_dim)
        config = self.decoder.config
        self.max_positions = int(getattr(config, "n_positions", None) or config.max_position_embeddings)
        self.hf_special_ids = None if hf_special_ids is None else tuple(hf_special_ids)
        self.vocab_size = self.hf_vocab_size
        if self.hf_special_ids is not None:
            pad, start, end = self.hf_special_ids
            if not all(0 <= i < self.hf_vocab_size for i in self.hf_special_ids):
                raise ValueError(f"capxai.models.hf: special ids {self.hf_special_ids} outside the decoder's "
                                 f"{self.hf_vocab_size} tokens")
            token_map = torch.tensor([pad, start, end, end] + list(range(self.hf_vocab_size)))
            never = torch.zeros(len(token_map), dtype=torch.bool)
            never[[PAD_ID, START_ID, UNK_ID]] = True
            never[[WORD_OFFSET + i for i in self.hf_special_ids]] = True
            self.register_buffer("token_map", token_map, persistent=False)
            self.register_buffer("never_decoded", never, persistent=False)
            self.vocab_size = len(token_map)

    @classmethod
    def from_model(cls, model: nn.Module, remap: Optional[bool] = None) -> "HFCaptioner":
        """The decoder of ``model``; ``remap`` (default: when its special ids are not capxai's) makes the captioner
        speak capxai's ids over the model's own (``hf_special_ids`` above)."""
        check_supported(model)
        ids = special_ids(model)
        remap = ids != CAPXAI_IDS if remap is None else remap
        if _is_blip(model):
            return cls(model.text_decoder, model.config.vision_config.hidden_size, None, ids if remap else None)
        return cls(model.decoder, model.config.encoder.hidden_size, getattr(model, "enc_to_dec_proj", None),
                   ids if remap else None)

    def to_hf_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """capxai's ids of this captioner -> the model's own token ids."""
        return tokens if self.hf_special_ids is None else self.token_map[tokens]

    def init_state(self, features: torch.Tensor) -> State:
        if self.project is not None:
            features = self.project(features)
        empty = features.new_zeros(features.shape[0], 0, self.embedding.embedding_dim)
        return {"features": features, "embedded": empty}

    def step(self, state: State, words: torch.Tensor) -> Tuple[torch.Tensor, State, Dict[str, torch.Tensor]]:
        embedded = torch.cat([state["embedded"], self.embedding(self.to_hf_tokens(words)).unsqueeze(1)], dim=1)
        if embedded.shape[1] > self.max_positions:
            raise ValueError(f"HFCaptioner: a caption longer than the decoder's {self.max_positions} positions "
                             "(config.n_positions / max_position_embeddings)")
        # a copy: BLIP's text embeddings add the position embeddings into inputs_embeds in place
        output = self.decoder(inputs_embeds=embedded.clone(), encoder_hidden_states=state["features"],
                              use_cache=False, output_attentions=True, return_dict=True)
        attention = output.cross_attentions[-1][:, :, -1]  # [B, heads, regions]
        logits = output.logits[:, -1]
        if self.hf_special_ids is not None:
            logits = logits.index_select(-1, self.token_map).masked_fill(self.never_decoded, float("-inf"))
        return logits, {"features": state["features"], "embedded": embedded}, {"attention": attention}


def split(model: nn.Module, remap: Optional[bool] = None) -> Tuple[HFCaptioner, HFImageEncoder]:
    """``(captioner, encoder)`` of a ``VisionEncoderDecoderModel`` (in evaluation mode; dropout off; its GELU
    written out by hand replaced by ``nn.GELU``, see :func:`use_torch_gelu`). ``remap``: see
    :meth:`HFCaptioner.from_model`."""
    check_supported(model)
    model.eval()
    use_torch_gelu(model)
    return HFCaptioner.from_model(model, remap), HFImageEncoder.from_model(model)


def use_torch_gelu(model: nn.Module) -> int:
    """Replaces ``transformers``' GELUs written out by hand (GPT-2's ``gelu_new``, ``gelu_fast``, the python ones)
    by ``nn.GELU`` of the same function, in place; returns how many. They compute GELU's tanh form (or its erf form)
    from ``pow`` and products, which the generic LRP path would split as products of signals (or refuse, for
    ``pow``); ``F.gelu`` gets the identity rule of an elementwise nonlinearity, as LRP and AttnLRP treat GELU.
    The outputs agree to float rounding (tested)."""
    from transformers import activations

    tanh_forms = tuple(getattr(activations, name) for name in ("NewGELUActivation", "FastGELUActivation")
                       if hasattr(activations, name))
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = None
            if isinstance(child, tanh_forms):
                replacement = nn.GELU(approximate="tanh")
            elif type(child).__name__ in ("GELUTanh", "GELUActivation") and not _calls_torch_gelu(child):
                replacement = nn.GELU(approximate="tanh" if type(child).__name__ == "GELUTanh" else "none")
            if replacement is not None:
                setattr(parent, name, replacement)
                replaced += 1
    return replaced


def _calls_torch_gelu(activation: nn.Module) -> bool:
    act = getattr(activation, "act", None)
    return getattr(act, "func", act) is torch.nn.functional.gelu


def vit(image_size: int = 96, patch_size: int = 8, width: int = 64, layers: int = 2, heads: int = 2) -> HFImageEncoder:
    """A fresh Hugging Face ViT (built from its config, no download) as capxai's encoder."""
    require("transformers", HF_PURPOSE)
    from transformers import ViTModel

    return HFImageEncoder(ViTModel(_vit_config(image_size, patch_size, width, layers, heads), add_pooling_layer=False))


def gpt2(vocab_size: int, feature_dim: int, width: int = 64, layers: int = 2, heads: int = 2, max_positions: int = 24,
         dropout: float = 0.1) -> HFCaptioner:
    """A fresh Hugging Face GPT-2 with cross-attention over ``feature_dim``-wide tokens as capxai's captioner."""
    require("transformers", HF_PURPOSE)
    from transformers import GPT2LMHeadModel

    config = _gpt2_config(vocab_size, width, layers, heads, max_positions, dropout)
    project = nn.Linear(feature_dim, width) if feature_dim != width else None
    return HFCaptioner(GPT2LMHeadModel(config), feature_dim, project)


def vit_gpt2(vocab_size: int, image_size: int = 96, patch_size: int = 8, width: int = 64, layers: int = 2,
             heads: int = 2, max_positions: int = 24) -> nn.Module:
    """A ``VisionEncoderDecoderModel`` (ViT + GPT-2) built from configs, no download, sized for 2 CPU cores by
    default. Token ids follow capxai's vocabulary (``<pad>`` 0, ``<start>`` 1, ``<end>`` 2), so ``generate`` and
    capxai's decoding agree; GELU is ``F.gelu`` (``"gelu"``), which the generic LRP path covers."""
    require("transformers", HF_PURPOSE)
    from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        _vit_config(image_size, patch_size, width, layers, heads),
        _gpt2_config(vocab_size, width, layers, heads, max_positions))
    config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = START_ID, END_ID, PAD_ID
    return VisionEncoderDecoderModel(config)


def _vit_config(image_size, patch_size, width, layers, heads):
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3, hidden_size=width,
                     num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width,
                     hidden_act="gelu")


def _gpt2_config(vocab_size, width, layers, heads, max_positions, dropout=0.1):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=width, n_layer=layers, n_head=heads,
                      add_cross_attention=True, is_decoder=True, activation_function="gelu", bos_token_id=START_ID,
                      eos_token_id=END_ID, pad_token_id=PAD_ID, resid_pdrop=dropout, embd_pdrop=dropout,
                      attn_pdrop=dropout)
