"""Visual contrastive decoding (VCD; Leng et al., "Mitigating object hallucinations in large vision-language models
through visual contrastive decoding", CVPR 2024): the training-free decoding VLM users reach for first against
hallucination, offered for every capxai captioner as a baseline to the fine-tuning arms (issue 35).

At each step the next word's logits on the image are contrasted with those on a distorted copy of it, which carries
the language prior and little of the image: ``(1 + alpha) * logits(image) - alpha * logits(distorted)``; words the
model finds implausible on the image itself are dropped first (VCD's adaptive plausibility constraint: only words
with ``p(w | image) >= beta * max_w p(w | image)`` stay). The distortion is VCD's: forward diffusion noise,
``sqrt(abar_t) x + sqrt(1 - abar_t) eps`` with a linear schedule of 1000 steps from 1e-4 to 0.02, at step 500 (their
default), on the model's input tensor.

:class:`VisualContrastiveCaptioner` wraps a captioner so that capxai's one beam search decodes with it: its
``init_state`` takes the clean and the distorted features stacked (``[B, 2, ...]``), its ``step`` runs the wrapped
captioner on both and returns the contrasted logits.
"""
import dataclasses
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

DIFFUSION_STEPS, BETA_START, BETA_END = 1000, 1e-4, 0.02


@dataclasses.dataclass(frozen=True)
class VCDSettings:
    """``alpha``: the weight of the contrast (VCD: 1); ``beta``: the plausibility cut (VCD: 0.1); ``noise_step``:
    the diffusion step of the distortion (VCD: 500 of 1000); ``seed``: the noise's."""

    alpha: float = 1.0
    beta: float = 0.1
    noise_step: int = 500
    seed: int = 0

    def __post_init__(self):
        if not (self.alpha >= 0 and 0 <= self.beta <= 1 and 0 <= self.noise_step < DIFFUSION_STEPS):
            raise ValueError(f"VCD: alpha must be >= 0, beta in [0, 1], noise_step in [0, {DIFFUSION_STEPS - 1}]; "
                             f"got {self.alpha}, {self.beta}, {self.noise_step}")


def diffusion_noise(images: torch.Tensor, step: int, seeds: Sequence[int]) -> torch.Tensor:
    """``images [B, ...]`` after ``step + 1`` steps of forward diffusion (VCD's distortion): ``sqrt(abar) x +
    sqrt(1 - abar) eps``, ``abar`` the product of ``1 - beta_t`` over a linear schedule (1000 steps, 1e-4 to 0.02);
    image b's ``eps`` drawn from a generator seeded with ``seeds[b]`` (an image gets the same noise whatever batch
    it is in)."""
    if len(seeds) != images.shape[0]:
        raise ValueError(f"diffusion_noise: one seed per image, got {len(seeds)} for {images.shape[0]}")
    betas = torch.linspace(BETA_START, BETA_END, DIFFUSION_STEPS, dtype=torch.float64)
    kept = float(torch.cumprod(1 - betas, 0)[step])
    noise = torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(int(seed)),
                                     dtype=images.dtype) for seed in seeds]).to(images.device)
    return kept ** 0.5 * images + (1 - kept) ** 0.5 * noise


def image_seed(settings: "VCDSettings", image_id: int) -> int:
    """The noise seed of one image: the settings' seed and the image id."""
    return (settings.seed * 1_000_003 + int(image_id)) % (2 ** 63)


class VisualContrastiveCaptioner(nn.Module):
    """A captioner decoded by VCD (module docstring). ``init_state(features)``: ``features [B, 2, ...]``, the clean
    image's then the distorted image's; ``step(state, words)``: ``(contrasted logits [B, V], state, the clean
    step's trace)``."""

    def __init__(self, captioner: nn.Module, settings: VCDSettings):
        super().__init__()
        self.captioner, self.settings = captioner, settings

    def init_state(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        if features.dim() < 2 or features.shape[1] != 2:
            raise ValueError(f"VisualContrastiveCaptioner: features must be [B, 2, ...] (the clean image's and the "
                             f"distorted image's), got {list(features.shape)}")
        clean, distorted = (self.captioner.init_state(features[:, k]) for k in (0, 1))
        return {**{f"clean/{name}": value for name, value in clean.items()},
                **{f"distorted/{name}": value for name, value in distorted.items()}}

    @staticmethod
    def _part(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
        return {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}

    def step(self, state: Dict[str, torch.Tensor], words: torch.Tensor) -> Tuple[torch.Tensor, dict, dict]:
        clean_logits, clean, trace = self.captioner.step(self._part(state, "clean/"), words)
        distorted_logits, distorted, _ = self.captioner.step(self._part(state, "distorted/"), words)
        logits = contrast_logits(clean_logits, distorted_logits, self.settings.alpha, self.settings.beta)
        return logits, {**{f"clean/{name}": value for name, value in clean.items()},
                        **{f"distorted/{name}": value for name, value in distorted.items()}}, trace


def contrast_logits(clean: torch.Tensor, distorted: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``(1 + alpha) * clean - alpha * distorted`` where ``softmax(clean) >= beta * max softmax(clean)``, -inf
    elsewhere (``[..., V]``)."""
    clean, distorted = clean.float(), distorted.float()
    log_probs = torch.log_softmax(clean, -1)
    plausible = log_probs >= log_probs.max(-1, keepdim=True).values + torch.log(torch.tensor(max(beta, 1e-45)))
    contrasted = (1 + alpha) * clean - alpha * distorted
    return contrasted.masked_fill(~plausible, float("-inf"))
