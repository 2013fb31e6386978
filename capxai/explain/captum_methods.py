"""The two baselines users of Captum and Inseq reach for, for every captioner: Integrated Gradients and occlusion,
Captum's own implementations, every word of every caption in one Captum call (issue 38).

Both explain the pixels of the teacher-forced caption: word t's logit (minus its contrast's), computed by the
captioner's forward on perturbed images. Captum attributes a forward that returns every word's logit ``[B, T]``
per output (occlusion); Integrated Gradients needs one target per example, so the images are repeated once per word
(B x T examples, word t of caption b the target of copy (b, t)) and Captum's ``internal_batch_size`` bounds the
memory.
"""
from typing import Optional

import torch
from torch import nn

from capxai.explain.explainers import METHODS, _GradientMethod, _word_mask
from capxai.explain.explanation import Explanation
from capxai.explain.inputs import Prepared


class _PerturbationMethod(_GradientMethod):
    """The word logits of the prepared captions as a function of the images: ``[B', T]`` for any number B' of
    images that is a multiple of B (Captum's batches of perturbed copies, caption b for copy i with i mod B = b)."""

    def _logits_of(self, prepared: Prepared, per_copy: int = 1):
        captions, explained, contrast = prepared.captions, prepared.explained, prepared.contrast
        real = _word_mask(prepared)

        def forward(images: torch.Tensor) -> torch.Tensor:
            copies = images.shape[0] // (captions.shape[0] * per_copy)

            def tile(rows):
                return rows.repeat_interleave(per_copy, 0).repeat(copies, 1)

            prepared_copy = Prepared(images=images, features=None, captions=tile(captions), lengths=None,
                                     grid_size=None, words=None, targets=tile(explained),
                                     contrast=None if contrast is None else tile(contrast))
            _, _, logits = self._forward(prepared_copy, images)
            return logits * tile(real).to(logits.dtype)

        return forward


class IntegratedGradients(_PerturbationMethod):
    """Integrated Gradients (Sundararajan et al. 2017) of every word's logit on the pixels, Captum's
    ``IntegratedGradients``: the path from ``baseline`` (0: the mean colour of the normalised image) to the image in
    ``steps`` Gauss-Legendre points; ``internal_batch_size`` images per forward (default: B x T, one step a
    forward)."""

    title = "Integrated Gradients"
    method = "integrated-gradients"

    def __init__(self, model, encoder: Optional[nn.Module] = None, steps: int = 16, baseline: float = 0.0,
                 internal_batch_size: Optional[int] = None, *, vocabulary=None, image_size: Optional[int] = None):
        super().__init__(model, encoder, vocabulary=vocabulary, image_size=image_size)
        if steps < 1:
            raise ValueError(f"IntegratedGradients: steps must be >= 1, got {steps}")
        self.steps, self.baseline, self.internal_batch_size = steps, baseline, internal_batch_size

    @property
    def settings(self) -> dict:
        return {"steps": self.steps, "baseline": self.baseline}

    def _explain(self, prepared: Prepared) -> Explanation:
        from captum.attr import IntegratedGradients as CaptumIG

        images = self._needs_images(prepared)
        batch, words = prepared.captions.shape[0], prepared.captions.shape[1] - 1
        repeated = images.detach().repeat_interleave(words, 0)  # copy (b, t) at b * T + t
        targets = [(t,) for _ in range(batch) for t in range(words)]  # Captum: column t of the [B x T, T] output
        with torch.enable_grad():
            attributions = CaptumIG(self._logits_of(prepared, per_copy=words)).attribute(
                repeated, baselines=self.baseline, target=targets, n_steps=self.steps,
                internal_batch_size=self.internal_batch_size or batch * words)
        pixels = attributions.reshape(batch, words, *images.shape[1:])
        pixels = pixels * _word_mask(prepared)[..., None, None, None].to(pixels.dtype)
        with torch.no_grad():
            _, forward, _ = self._forward(prepared, images)
        return self._result(prepared, forward, pixel_relevance=pixels.detach())


class Occlusion(_PerturbationMethod):
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

        images = self._needs_images(prepared)
        window = self.window or max(1, images.shape[-1] // 8)
        stride = self.stride or window
        batch, words = prepared.captions.shape[0], prepared.captions.shape[1] - 1
        with torch.no_grad():
            attributions = CaptumOcclusion(self._logits_of(prepared)).attribute(
                images.detach(), sliding_window_shapes=(images.shape[1], window, window),
                strides=(images.shape[1], stride, stride), baselines=self.baseline,
                perturbations_per_eval=self.per_forward)
            _, forward, _ = self._forward(prepared, images)
        # Captum attributes each output (b, t) of the [B, T] forward: [B * T, 3, H, W], image b's map for (b, t)
        pixels = attributions.reshape(batch, words, *images.shape[1:]).to(images.dtype)  # Captum's are float32
        pixels = pixels * _word_mask(prepared)[..., None, None, None].to(pixels.dtype)
        return self._result(prepared, forward, pixel_relevance=pixels)


METHODS.register("integrated-gradients", IntegratedGradients,
                 help="Integrated Gradients on the pixels (Captum's; 16 steps from the mean colour)")
METHODS.register("occlusion", Occlusion, help="the logit's drop when a square of the image is hidden (Captum's)")
