"""A LLaVA-style vision-language model as a capxai captioner, built from Hugging Face configs and trained on the
scenes (``capxai train --model hf-llava``, issue 38): a CLIP vision tower (capxai's encoder, ``--encoder clip``), an
MLP projector (Linear, GELU, Linear: LLaVA-1.5's) and a LLaMA decoder that reads the projected image tokens as the
prefix of its input, then the caption's words. Being a capxai captioner, it is decoded, evaluated (CHAIR, the probe
rate, hallucinated-word detection) and explained like the others, by the generic LRP path through the LLaMA (RMSNorm,
rotary positions, SiLU-gated MLP: docs/LRP_RULES.md Part 3) and the CLIP tower to the pixels."""
from typing import Dict, Tuple

import torch
from torch import nn

from capxai._optional import require
from capxai.models.captioner import Captioner, DecoderTrace, State, steps_needed
from capxai.models.hf import HF_PURPOSE, HFImageEncoder


class LlavaCaptioner(Captioner):
    """``features [B, regions, C]`` (the CLIP tower's tokens, the class token included: LLaVA's "full" feature
    selection) projected to the LLaMA's width, then the words so far: each ``step`` runs the LLaMA on
    ``[image tokens; words]`` without a cache (captions of the scenes are short) and returns the last position's
    logits.

    Activations of a step: ``attention [B, heads, regions]``, the LLaMA's attention from the new word to the image
    tokens, averaged over its layers (the VLM visualisers' attention map; eager attention)."""

    def __init__(self, language_model: nn.Module, feature_dim: int):
        super().__init__()
        self.language_model = language_model  # a LlamaForCausalLM
        self.language_model.config._attn_implementation = "eager"  # attention weights are an output of the step
        width = int(language_model.config.hidden_size)
        self.projector = nn.Sequential(nn.Linear(feature_dim, width), nn.GELU(), nn.Linear(width, width))
        self.embedding = language_model.get_input_embeddings()
        self.vocab_size = int(language_model.config.vocab_size)
        self.feature_dim = int(feature_dim)
        self.max_positions = int(language_model.config.max_position_embeddings)

    def init_state(self, features: torch.Tensor) -> State:
        image = self.projector(features)
        return {"image": image, "embedded": image.new_zeros(image.shape[0], 0, image.shape[-1])}

    def step(self, state: State, words: torch.Tensor) -> Tuple[torch.Tensor, State, Dict[str, torch.Tensor]]:
        embedded = torch.cat([state["embedded"], self.embedding(words).unsqueeze(1)], dim=1)
        sequence = torch.cat([state["image"], embedded], dim=1)
        if sequence.shape[1] > self.max_positions:
            raise ValueError(f"LlavaCaptioner: image tokens and caption exceed the LLaMA's {self.max_positions} "
                             "positions (max_position_embeddings)")
        output = self.language_model(inputs_embeds=sequence, use_cache=False, output_attentions=True)
        regions = state["image"].shape[1]
        attention = torch.stack([layer[:, :, -1, :regions] for layer in output.attentions]).mean(0)
        return output.logits[:, -1], {"image": state["image"], "embedded": embedded}, {"attention": attention}


    def forward(self, features: torch.Tensor, captions: torch.Tensor, pad: int = 0) -> DecoderTrace:
        """Teacher forcing of all positions in one pass of the LLaMA over ``[image tokens; words]`` (its causal mask
        in place of re-running each prefix; what training and the explainers run): equal to :meth:`step` run
        position by position (tested); positions after a row's last word are 0, as in :meth:`Captioner.forward`."""
        self.check_teacher_forcing(features, captions)
        state = self.init_state(features)
        regions, steps = state["image"].shape[1], captions.shape[1] - 1
        if regions + steps > self.max_positions:
            raise ValueError(f"LlavaCaptioner: image tokens and caption exceed the LLaMA's {self.max_positions} "
                             "positions (max_position_embeddings)")
        sequence = torch.cat([state["image"], self.embedding(captions[:, :-1])], dim=1)
        output = self.language_model(inputs_embeds=sequence, use_cache=False, output_attentions=True)
        logits = output.logits[:, regions:]
        attention = torch.stack([layer[:, :, regions:, :regions] for layer in output.attentions]).mean(0)
        real = (torch.arange(steps, device=captions.device) < steps_needed(captions, pad).unsqueeze(1)).unsqueeze(-1)
        return DecoderTrace(logits * real, {"attention": attention.transpose(1, 2) * real.unsqueeze(-1)})


def llama(vocab_size: int, feature_dim: int, regions: int, width: int = 64, layers: int = 2, heads: int = 2,
          max_length: int = 16, dropout: float = 0.0) -> LlavaCaptioner:
    """A fresh LLaMA (built from its config, no download: width ``width``, MLP 4x, ``layers``, ``heads`` query heads
    and one key-value head per two, RMSNorm, SiLU-gated MLP, rotary positions) over ``regions`` image tokens of
    ``feature_dim`` channels, as capxai's captioner."""
    require("transformers", HF_PURPOSE)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 2) if heads % 2 == 0 else heads,
                         max_position_embeddings=regions + max_length + 2, attention_dropout=dropout,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlavaCaptioner(LlamaForCausalLM(config), feature_dim)


def clip(image_size: int = 96, patch_size: int = 8, width: int = 64, layers: int = 2,
         heads: int = 2) -> HFImageEncoder:
    """A fresh CLIP vision tower (built from its config; GELU, which the generic path explains, for CLIP's quick
    GELU) as capxai's encoder: ``[B, 1 + h * w, width]``, the class token first."""
    require("transformers", HF_PURPOSE)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=width,
                              intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
                              hidden_act="gelu")
    return HFImageEncoder(CLIPVisionModel(config))
