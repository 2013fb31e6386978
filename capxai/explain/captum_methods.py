"""The two baselines users of Captum and Inseq reach for, for every captioner: Integrated Gradients and occlusion,
built on Captum, every word of every caption at once (issue 38).

Both explain the pixels of the teacher-forced caption: word t's logit (minus its contrast's), computed by the
captioner's forward on perturbed images. Occlusion is Captum's ``Occlusion`` over a forward that returns every
word's logit ``[B, T]`` (Captum attributes each output). Integrated Gradients takes Captum's quadrature and batches
the words in capxai's backward, because Captum's gradients take one target per example (every word would cost its
own forwards); it equals Captum's ``IntegratedGradients`` word by word (tests/test_captum_methods.py).
"""
from typing import Optional

import torch
from torch import nn

from capxai.explain.explainers import METHODS, _GradientMethod, _word_mask
from capxai.explain.gradients import all_word_gradients
from capxai.explain.explanation import Explanation
from capxai.explain.inputs import Prepared


class IntegratedGradients(_GradientMethod):
    """Integrated Gradients (Sundararajan et al. 2017) of every word's logit on the pixels: the path from
    ``baseline`` (0: the mean colour of the normalised image) to the image, in Captum's ``steps`` Gauss-Legendre
    points and weights (``captum.attr._utils.approximation_methods``, what Captum's ``IntegratedGradients`` uses).
    At each point one forward and one backward batched over the words (Captum would need one forward per word: its
    gradients take one target per example), so it costs ``steps`` Gradient x Input passes; equal to Captum's
    ``IntegratedGradients`` word by word (tested)."""

    title = "Integrated Gradients"
    method = "integrated-gradients"

    def __init__(self, model, encoder: Optional[nn.Module] = None, steps: int = 16, baseline: float = 0.0, *,
                 vocabulary=None, image_size: Optional[int] = None):
        super().__init__(model, encoder, vocabulary=vocabulary, image_size=image_size)
        if steps < 1:
            raise ValueError(f"IntegratedGradients: steps must be >= 1, got {steps}")
        self.steps, self.baseline = steps, baseline

    @property
    def settings(self) -> dict:
        return {"steps": self.steps, "baseline": self.baseline}

    def _explain(self, prepared: Prepared) -> Explanation:
        from captum.attr._utils.approximation_methods import approximation_parameters

        images = self._needs_images(prepared).detach()
        step_sizes, alphas = approximation_parameters("gausslegendre")
        mask = _word_mask(prepared)
        path = images - self.baseline
        integral = torch.zeros(mask.shape[1], *images.shape, dtype=images.dtype, device=images.device)
        # one path point a forward: the words' backward is already batched, and 16 points of a batch at once were
        # slower on the CPU (2.4 s against 1.5 s for 4 images at 64 px)
        for alpha, size in zip(alphas(self.steps), step_sizes(self.steps)):
            point = (self.baseline + alpha * path).requires_grad_(True)
            with torch.enable_grad():
                _, _, word_logits = self._forward(prepared, point)
                (gradients,) = all_word_gradients(word_logits, mask, [point])
            integral += size * gradients  # [T, B, 3, H, W]
        with torch.no_grad():
            _, forward, _ = self._forward(prepared, images)
        return self._result(prepared, forward, pixel_relevance=(integral * path).transpose(0, 1))


def _tiled(prepared: Prepared, copies: int) -> Prepared:
    """``prepared``'s captions (and targets, contrast, lengths) for ``copies`` copies of its batch, one after the
    other."""
    def tile(rows):
        return None if rows is None else rows.repeat(copies, *([1] * (rows.dim() - 1)))

    return Prepared(images=None, features=None, captions=tile(prepared.captions), lengths=tile(prepared.lengths),
                    grid_size=None, words=None, targets=tile(prepared.explained), contrast=tile(prepared.contrast))


class Occlusion(_GradientMethod):
    """Occlusion (Zeiler and Fergus 2014) by Captum's ``Occlusion``: a square of ``window`` pixels (all channels;
    default an eighth of the image's side) slid by ``stride`` (default: the window) and set to ``baseline`` (0: the
    mean colour of the normalised image); a pixel's value is the drop of the word's logit (minus its contrast's),
    averaged over the windows covering it. Every word of every caption in each forward; ``per_forward`` occluded
    copies of the batch a forward."""

    title = "Occlusion"
    method = "occlusion"

    def __init__(self, model, encoder: Optional[nn.Module] = None, window: Optional[int] = None,
                 stride: Optional[int] = None, baseline: float = 0.0, per_forward: int = 8, *, vocabulary=None,
                 image_size: Optional[int] = None):
        super().__init__(model, encoder, vocabulary=vocabulary, image_size=image_size)
        for name, value in (("window", window), ("stride", stride), ("per_forward", per_forward)):
            if value is not None and value < 1:
                raise ValueError(f"Occlusion: {name} must be >= 1, got {value}")
        self.window, self.stride, self.baseline, self.per_forward = window, stride, baseline, per_forward

    @property
    def settings(self) -> dict:
        return {"window": self.window, "stride": self.stride, "baseline": self.baseline}

    def _explain(self, prepared: Prepared) -> Explanation:
        from captum.attr import Occlusion as CaptumOcclusion

        def word_logits(images: torch.Tensor) -> torch.Tensor:  # [copies * B, T]: Captum's batches of copies
            tiled = _tiled(prepared, images.shape[0] // prepared.captions.shape[0])
            return self._forward(tiled, images)[2] * _word_mask(tiled).to(images.dtype)

        images = self._needs_images(prepared)
        window = self.window or max(1, images.shape[-1] // 8)
        stride = self.stride or window
        batch, words = prepared.captions.shape[0], prepared.captions.shape[1] - 1
        with torch.no_grad():
            attributions = CaptumOcclusion(word_logits).attribute(
                images.detach(), sliding_window_shapes=(images.shape[1], window, window),
                strides=(images.shape[1], stride, stride), baselines=self.baseline,
                perturbations_per_eval=self.per_forward)
            _, forward, _ = self._forward(prepared, images)
        # Captum attributes each output (b, t) of the [B, T] forward: [B * T, 3, H, W], image b's map for (b, t)
        pixels = attributions.reshape(batch, words, *images.shape[1:]).to(images.dtype)  # Captum's are float32
        pixels = pixels * _word_mask(prepared)[..., None, None, None].to(pixels.dtype)
        return self._result(prepared, forward, pixel_relevance=pixels)


METHODS.register("integrated-gradients", IntegratedGradients,
                 help="Integrated Gradients on the pixels (Captum's quadrature, 16 steps from the mean colour)")
METHODS.register("occlusion", Occlusion, help="the logit's drop when a square of the image is hidden (Captum's)")
