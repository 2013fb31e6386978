"""Hugging Face image-to-text models as capxai captioners (a ``VisionEncoderDecoderModel``: a ViT encoder and a GPT-2
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

from capxai.data.vocabulary import END, PAD, SPECIALS, START
from capxai.models.captioner import Captioner, State

PAD_ID, START_ID, END_ID = (SPECIALS.index(token) for token in (PAD, START, END))  # capxai's vocabulary's ids
SUPPORTED = {"VisionEncoderDecoderModel": "a ViT encoder ('vit') with a GPT-2 decoder ('gpt2')"}
ENCODER_TYPES = ("vit",)
DECODER_TYPES = ("gpt2",)


def check_supported(model: nn.Module) -> None:
    """A ValueError naming what the adapter supports when ``model`` is another architecture."""
    name = type(model).__name__
    supported = "; ".join(f"{kind} ({what})" for kind, what in SUPPORTED.items())
    if name not in SUPPORTED:
        raise ValueError(f"capxai.models.hf: {name} is not supported; the adapter covers {supported}")
    encoder_type = model.config.encoder.model_type
    decoder_type = model.config.decoder.model_type
    if encoder_type not in ENCODER_TYPES or decoder_type not in DECODER_TYPES:
        raise ValueError(f"capxai.models.hf: a VisionEncoderDecoderModel with a {encoder_type!r} encoder and a "
                         f"{decoder_type!r} decoder is not supported; the adapter covers {supported}")


def check_special_ids(model: nn.Module) -> None:
    """A ValueError when the model's ``<start>`` / ``<end>`` / ``<pad>`` ids are not capxai's (1, 2, 0): capxai's
    decoding and explainers use those, and a checkpoint with its own (GPT-2's 50256) would be decoded wrongly."""
    config, decoder = model.config, model.config.decoder
    found = {"decoder_start_token_id": config.decoder_start_token_id,
             "eos_token_id": config.eos_token_id if config.eos_token_id is not None else decoder.eos_token_id,
             "pad_token_id": config.pad_token_id if config.pad_token_id is not None else decoder.pad_token_id}
    wanted = {"decoder_start_token_id": START_ID, "eos_token_id": END_ID, "pad_token_id": PAD_ID}
    if found != wanted:
        raise ValueError(f"capxai.models.hf: the model's special ids are {found}; capxai decodes with {wanted} "
                         "(its vocabulary's <start>, <end>, <pad>). Checkpoints with their own ids (a tokenizer's, "
                         "e.g. GPT-2's 50256) are not supported yet")


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
        return cls(model.encoder)

    @property
    def cam_layer(self) -> nn.Module:
        """Grad-CAM's layer: the last encoder block (its output tokens, before the final LayerNorm)."""
        blocks = getattr(self.vision, "layers", None)  # transformers 5; 4.x kept them in .encoder.layer
        if blocks is None:
            blocks = self.vision.encoder.layer
        return blocks[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"HFImageEncoder: images must be [B, 3, {self.image_size}, {self.image_size}] (the "
                             f"ViT's config.image_size), got {list(images.shape)}")
        return self.vision(pixel_values=images).last_hidden_state


class HFCaptioner(Captioner):
    """A Hugging Face GPT-2 decoder with cross-attention as a capxai captioner: ``init_state(features)`` and one word
    per ``step``. ``project``: the ``VisionEncoderDecoderModel``'s encoder-to-decoder projection, when it has one.

    Activations of a step: ``attention [B, heads, regions]``, the last decoder layer's cross-attention of the new
    word over the encoder's tokens (computed by the eager attention, which the adapter selects for the decoder).
    """

    def __init__(self, decoder: nn.Module, feature_dim: int, project: Optional[nn.Module] = None):
        super().__init__()
        self.decoder = decoder
        self.decoder.config._attn_implementation = "eager"  # cross-attention weights are an output of the step
        self.project = project
        self.embedding = self.decoder.get_input_embeddings()
        self.vocab_size = int(self.decoder.config.vocab_size)
        self.feature_dim = int(feature_dim)
        self.max_positions = int(self.decoder.config.n_positions)

    @classmethod
    def from_model(cls, model: nn.Module) -> "HFCaptioner":
        check_supported(model)
        check_special_ids(model)
        return cls(model.decoder, model.config.encoder.hidden_size, getattr(model, "enc_to_dec_proj", None))

    def init_state(self, features: torch.Tensor) -> State:
        if self.project is not None:
            features = self.project(features)
        return {"features": features, "embedded": features.new_zeros(features.shape[0], 0, self.embedding.embedding_dim)}

    def step(self, state: State, words: torch.Tensor) -> Tuple[torch.Tensor, State, Dict[str, torch.Tensor]]:
        embedded = torch.cat([state["embedded"], self.embedding(words).unsqueeze(1)], dim=1)
        if embedded.shape[1] > self.max_positions:
            raise ValueError(f"HFCaptioner: a caption longer than the decoder's {self.max_positions} positions "
                             "(config.n_positions)")
        output = self.decoder(inputs_embeds=embedded, encoder_hidden_states=state["features"], use_cache=False,
                              output_attentions=True, return_dict=True)
        attention = output.cross_attentions[-1][:, :, -1]  # [B, heads, regions]
        return output.logits[:, -1], {"features": state["features"], "embedded": embedded}, {"attention": attention}


def split(model: nn.Module) -> Tuple[HFCaptioner, HFImageEncoder]:
    """``(captioner, encoder)`` of a ``VisionEncoderDecoderModel`` (in evaluation mode; dropout off)."""
    check_supported(model)
    model.eval()
    return HFCaptioner.from_model(model), HFImageEncoder.from_model(model)


def vit(image_size: int = 96, patch_size: int = 8, width: int = 64, layers: int = 2, heads: int = 2) -> HFImageEncoder:
    """A fresh Hugging Face ViT (built from its config, no download) as capxai's encoder."""
    from transformers import ViTModel

    return HFImageEncoder(ViTModel(_vit_config(image_size, patch_size, width, layers, heads), add_pooling_layer=False))


def gpt2(vocab_size: int, feature_dim: int, width: int = 64, layers: int = 2, heads: int = 2, max_positions: int = 24,
         dropout: float = 0.1) -> HFCaptioner:
    """A fresh Hugging Face GPT-2 with cross-attention over ``feature_dim``-wide tokens as capxai's captioner."""
    from transformers import GPT2LMHeadModel

    config = _gpt2_config(vocab_size, width, layers, heads, max_positions, dropout)
    project = nn.Linear(feature_dim, width) if feature_dim != width else None
    return HFCaptioner(GPT2LMHeadModel(config), feature_dim, project)


def vit_gpt2(vocab_size: int, image_size: int = 96, patch_size: int = 8, width: int = 64, layers: int = 2,
             heads: int = 2, max_positions: int = 24) -> nn.Module:
    """A ``VisionEncoderDecoderModel`` (ViT + GPT-2) built from configs, no download, sized for 2 CPU cores by
    default. Token ids follow capxai's vocabulary (``<pad>`` 0, ``<start>`` 1, ``<end>`` 2), so ``generate`` and
    capxai's decoding agree; GELU is ``F.gelu`` (``"gelu"``), which the generic LRP path covers."""
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
