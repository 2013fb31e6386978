"""The explainers: one call shape for every method (Captum's spirit) and one result type,
:class:`~capxai.explain.explanation.Explanation`.

    explainer = LRP(model)                  # or GradCAM, GuidedGradCAM, GuidedBackprop, GradientXInput, Attention
    explanation = explainer.explain(images, captions=None, beam_size=1, max_length=20)

``model`` is a captioner with its encoder (what ``capxai.models.load_trained`` returns first) or a captioner alone
(then ``encoder=`` for images, or ``features=`` to explain the decoder on the feature grid). With ``captions=None``
the model's own caption (greedy or beam search) is explained; captions given as ``[B, L]`` ids (``<start>`` first)
or strings (with ``vocabulary=``) are teacher-forced. Every word of every caption is explained in one pass.
"""
import abc
import inspect
from typing import Dict, List, Optional, Union

import torch
from torch import nn
from zennit.core import Composite

from capxai.explain.decoder_lrp import Rules
from capxai.explain.encoder_lrp import COMPOSITES, pixel_relevance
from capxai.explain.explanation import Explanation
from capxai.explain.forward import ForwardPass, evaluation_mode, runner_up, teacher_force
from capxai.explain.gradients import (all_word_gradients, cam_layer, captured_output, grad_cam, guided_relus,
                                      tokens_to_grid, upsample)
from capxai.explain.generic_lrp import generic_pixel_relevance
from capxai.explain.inputs import Prepared, model_parts, prepare, word_choice
from capxai.explain.lrp_paths import PATHS, decoder_relevance, has_fast_path
from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner
from capxai.models.contract import attention_of, check_captioner
from capxai.nn.context import LRPSettings
from capxai.registry import Registry


RUNNER_UP = "<runner-up>"  # contrast= / --contrast: each word against the model's next most likely word there


class Explainer(abc.ABC):
    """Base of the explainers: checks and prepares the inputs, runs the method, fills one :class:`Explanation`.

    Args:
        model: a captioner, or a model with ``.captioner`` and ``.encoder`` (``load_trained``'s).
        encoder: the image encoder when ``model`` is a captioner alone.
        vocabulary: a ``capxai.data.Vocabulary``: needed for captions given as strings, and names the words in the
            result. Default: ``model.vocabulary`` when present.
        image_size: the side the model was trained on; images of another size are refused. Default:
            ``model.image_size`` when present (models from ``load_trained`` carry it).
    """

    title = ""  # the method's name in figures and reports (empty: its registry name)

    method = ""
    takes_a_start = True  # the method explains a logit (False: attention weights, read off the forward)

    def __init__(self, model, encoder: Optional[nn.Module] = None, *, vocabulary=None,
                 image_size: Optional[int] = None):
        self.captioner, self.encoder = model_parts(model, encoder)
        check_captioner(self.captioner, "explain")  # names what a captioner of the user's own lacks
        self.vocabulary = vocabulary if vocabulary is not None else getattr(model, "vocabulary", None)
        self.image_size = image_size if image_size is not None else getattr(model, "image_size", None)

    @property
    def settings(self) -> dict:
        return {}

    def explain(self, images: Optional[torch.Tensor] = None, *, features: Optional[torch.Tensor] = None,
                captions=None, beam_size: int = 1, max_length: int = 20, targets=None, contrast=None
                ) -> Explanation:
        """Explains every word of the captions of ``images [B, 3, H, W]`` (or of ``features [B, regions, C]``).

        Args:
            captions: None (decode with ``beam_size`` beams, at most ``max_length`` words), ``[B, L]`` token ids
                beginning with ``<start>``, or B strings.
            targets: the word whose logit is explained at each step, when not the caption's own (the caption is
                still what is fed): a word, a word id, or ``[B, T]`` ids.
            contrast: explain "the target rather than this word": the start is ``logit_target - logit_contrast``
                (Inseq's contrastive attribution; LRP starts with ``+logit`` at the target, ``-logit`` at the
                contrast). A word, a word id, ``[B, T]`` ids, or ``"<runner-up>"`` (:data:`RUNNER_UP`): at each step
                the word the model finds most likely after the target ("why this word rather than its second
                choice"). Methods without a start (attention) refuse it.
        """
        with evaluation_mode(self.captioner, self.encoder):
            prepared = prepare(self.captioner, self.encoder, images, features, captions, beam_size, max_length,
                               self.vocabulary, self.image_size)
            prepared.targets = word_choice(targets, prepared, self.captioner.vocab_size, self.vocabulary, "targets")
            if isinstance(contrast, str) and contrast == RUNNER_UP:
                contrast = runner_up(self.captioner, prepared.features, prepared.captions, prepared.explained)
            prepared.contrast = word_choice(contrast, prepared, self.captioner.vocab_size, self.vocabulary,
                                            "contrast")
            if (prepared.targets is not None or prepared.contrast is not None) and not self.takes_a_start:
                raise ValueError(f"capxai.explain.{type(self).__name__}: it explains no logit, so targets= and "
                                 "contrast= do not apply")
            return self._explain(prepared)

    @abc.abstractmethod
    def _explain(self, prepared: Prepared) -> Explanation:
        """The method itself, on checked and prepared inputs."""

    def _needs_images(self, prepared: Prepared) -> torch.Tensor:
        if prepared.images is None:
            raise ValueError(f"capxai.explain.{type(self).__name__}: needs images (it explains pixels), got features")
        return prepared.images

    def _result(self, prepared: Prepared, forward: ForwardPass, **fields) -> Explanation:
        """The fields every method shares (words, logits, attention), plus the method's own (``[B, T, ...]``)."""
        tokens = prepared.captions[:, 1:]
        real = _word_mask(prepared).to(forward.logits.dtype)
        probabilities = torch.softmax(forward.logits.detach(), -1).gather(2, tokens.unsqueeze(2)).squeeze(2)
        explanation = Explanation(tokens=tokens, lengths=prepared.lengths, captions=prepared.captions,
                                  logits=forward.word_logits(tokens).detach() * real,
                                  probabilities=probabilities * real, method=self.method, settings=self.settings,
                                  grid_size=list(prepared.grid_size) if prepared.grid_size and
                                  not prepared.leading_tokens else None,
                                  words=prepared.words)
        if "alpha" in forward.steps[0]:
            explanation.attention = forward.stacked("alpha").detach().transpose(0, 1) * real.unsqueeze(-1)
            if "beta" in forward.steps[0]:  # the sentinel's share (optional in the contract)
                explanation.beta = forward.stacked("beta").detach().t() * real
        elif "attention" in forward.steps[0]:
            heads = forward.stacked("attention").detach().transpose(0, 1) * real[..., None, None]
            explanation.attention_heads, explanation.attention = heads, heads.mean(2)
        explanation.targets, explanation.contrast = prepared.targets, prepared.contrast
        if prepared.contrast is not None and self.vocabulary is not None:
            explanation.contrast_words = [[self.vocabulary.words[int(i)] for i in row[:n]] for row, n in
                                          zip(prepared.contrast, prepared.lengths.tolist())]
        for name, value in fields.items():
            setattr(explanation, name, value)
        return explanation


class LRP(Explainer):
    """Layer-wise relevance propagation (Sun et al. 2022; docs/LRP_RULES.md) of every word, to the pixels, the feature
    grid and the preceding words.

    The decoder: from the raw logit of each word through the output layer, the two-term sum, attention (weights
    constant; the sentinel's two stages), both LSTMs over all earlier steps, to the feature grid and the word
    embeddings, with the fused capxai ops, all words as targets of one reverse sweep. The encoder: a Zennit
    composite fed with all words' feature-grid relevance (a batched fast path for plain conv/BN/ReLU/max-pool
    encoders under "paper" and "epsilon_plus_flat"); an encoder that says ``lrp_path = "generic"`` (a ViT,
    ``capxai.models.hf``) by the generic path's rules instead, in one vmapped backward.

    Args:
        composite: "paper" (alpha=1, beta=0 on every conv, bias ignored; ReLU passes; max pooling by the
            gradient; BatchNorm merged), "epsilon_plus_flat", "epsilon_alpha2_beta1", or a zennit ``Composite``.
        eps: the decoder rules' stabiliser (and the epsilon of linear layers in the named composites).
        bias_factor: share of the absorbed relevance given back (1 makes the decoder rules conservative).
        attention_mode: "constant" (the paper) or "attnlrp" (multi-head model only: AttnLRP through the scores).
        head: explain the multi-head model through this head only.
        fast_encoder: use the batched encoder fast path where it applies (it equals Zennit's result).
        path: the decoder's LRP path: "auto" (the fused fast path registered for the captioner's class, else the
            generic path), "fused" or "generic" (one autograd backward through any captioner built from capxai.nn
            modules and ordinary layers; docs/LRP_RULES.md, "The generic path").
    """

    title = "LRP"  # what the report and the tables call it

    method = "lrp"

    def __init__(self, model, encoder: Optional[nn.Module] = None, composite: Union[str, Composite] = "paper",
                 eps: float = 0.01, bias_factor: float = 0.0, attention_mode: str = "constant",
                 head: Optional[int] = None, *, vocabulary=None, image_size: Optional[int] = None,
                 fast_encoder: bool = True, path: str = "auto"):
        super().__init__(model, encoder, vocabulary=vocabulary, image_size=image_size)
        LRPSettings(eps, bias_factor, attention_mode)  # validates eps, bias_factor and the mode
        if not (isinstance(composite, Composite) or composite in COMPOSITES):
            raise ValueError(f"capxai.explain.LRP: composite must be one of {COMPOSITES.names()} "
                             f"or a zennit Composite, got {composite!r}")
        if path not in PATHS:
            raise ValueError(f"capxai.explain.LRP: path must be one of {PATHS}, got {path!r}")
        if path == "fused" and not has_fast_path(self.captioner):
            raise ValueError(f"capxai.explain.LRP: no fused path is registered for {type(self.captioner).__name__}; "
                             "use path='auto' or 'generic'")
        is_multihead = isinstance(self.captioner, MultiHeadCaptioner)
        if attention_mode != "constant" and isinstance(self.captioner, AdaptiveAttentionCaptioner):
            raise ValueError("capxai.explain.LRP: attention_mode='attnlrp' does not apply to the adaptive captioner "
                             "(its additive attention keeps its weights constant)")
        if head is not None and not (is_multihead and path != "generic" and 0 <= head < self.captioner.heads):
            heads = self.captioner.heads if is_multihead else 0
            raise ValueError(f"capxai.explain.LRP: head must be None or in [0, {heads}) for this captioner, got {head}")
        self.composite, self.eps, self.bias_factor = composite, eps, bias_factor
        self.attention_mode, self.head, self.fast_encoder, self.path = attention_mode, head, fast_encoder, path

    @property
    def settings(self) -> dict:
        composite = self.composite if isinstance(self.composite, str) else type(self.composite).__name__
        return {"composite": composite, "eps": self.eps, "bias_factor": self.bias_factor,
                "attention_mode": self.attention_mode, "head": self.head, "path": self.path}

    def _explain(self, prepared: Prepared) -> Explanation:
        with torch.no_grad():
            forward = teacher_force(self.captioner, prepared.features, prepared.captions)
            relevance = decoder_relevance(self.captioner, prepared.features, forward, prepared.captions,
                                          _word_mask(prepared), Rules(self.eps, self.bias_factor),
                                          self.attention_mode, self.head, self.path, prepared.targets,
                                          prepared.contrast)
        pixels = None
        if prepared.images is not None and getattr(self.encoder, "lrp_path", None) == "generic":
            pixels = generic_pixel_relevance(self.encoder, prepared.images, relevance.features, LRPSettings(
                self.eps, self.bias_factor, self.attention_mode)).transpose(0, 1)
        elif prepared.images is not None:
            pixels = pixel_relevance(self.encoder, prepared.images, relevance.features, prepared.grid_size,
                                     self.composite, self.eps, self.fast_encoder).transpose(0, 1)
        return self._result(prepared, forward, feature_relevance=relevance.features.transpose(0, 1),
                            word_relevance=relevance.words.transpose(0, 1),
                            initial_state_relevance=relevance.initial_state.t(), pixel_relevance=pixels)


def _word_mask(prepared: Prepared) -> torch.Tensor:
    steps = torch.arange(prepared.captions.shape[1] - 1, device=prepared.captions.device)
    return steps.unsqueeze(0) < prepared.lengths.unsqueeze(1)


class _GradientMethod(Explainer):
    """Shared forward for the gradient methods: encoder (when images are given) and teacher-forced decoder with
    gradients on; all words' gradients in one batched backward."""

    def _forward(self, prepared: Prepared, images: Optional[torch.Tensor]):
        features = self.encoder(images) if images is not None else prepared.features.clone().requires_grad_(True)
        forward = teacher_force(self.captioner, features, prepared.captions)
        explained = forward.word_logits(prepared.explained)
        if prepared.contrast is not None:
            explained = explained - forward.word_logits(prepared.contrast)
        return features, forward, explained


class GradCAM(_GradientMethod):
    """Grad-CAM (Selvaraju et al. 2017) of every word's logit on ``layer`` (default: the encoder's ``cam_layer`` --
    a ViT's last encoder block, its patch tokens placed on the patch grid row by row, the class token left
    out -- else its last conv), as
    Captum's ``LayerGradCam`` with ``relu_attributions=True``, batched over words; ``pixel_map`` is the map
    upsampled to the image (``upsample_mode``)."""

    title = "Grad-CAM"  # what the report and the tables call it

    method = "gradcam"

    def __init__(self, model, encoder: Optional[nn.Module] = None, layer: Optional[nn.Module] = None,
                 upsample_mode: str = "bilinear", *, vocabulary=None, image_size: Optional[int] = None):
        super().__init__(model, encoder, vocabulary=vocabulary, image_size=image_size)
        if self.encoder is None:
            raise ValueError(f"capxai.explain.{type(self).__name__}: needs the encoder")
        self.layer = layer if layer is not None else cam_layer(self.encoder)
        self.upsample_mode = upsample_mode

    @property
    def settings(self) -> dict:
        return {"layer": type(self.layer).__name__, "upsample_mode": self.upsample_mode}

    def _layer_maps(self, prepared: Prepared):
        """(forward, Grad-CAM maps ``[T, B, h, w]`` on the layer)."""
        images = self._needs_images(prepared)
        activations = []
        with torch.enable_grad(), captured_output(self.layer, activations):
            _, forward, word_logits = self._forward(prepared, images)
            (gradient,) = all_word_gradients(word_logits, _word_mask(prepared), [activations[-1]])
        if gradient is None:
            raise ValueError(f"capxai.explain.{type(self).__name__}: the words do not depend on the chosen layer")
        activation = activations[-1].detach()
        if activation.dim() == 3:  # a ViT layer's tokens: onto the encoder's patch grid
            grid_size, leading = getattr(self.encoder, "grid_size", None), getattr(self.encoder, "leading_tokens", 0)
            if grid_size is None:
                raise ValueError(f"capxai.explain.{type(self).__name__}: the layer gives tokens [B, tokens, C] and "
                                 "the encoder has no grid_size (h, w) to place them on")
            activation, gradient = (tokens_to_grid(t, grid_size, leading) for t in (activation, gradient))
        return forward, grad_cam(activation, gradient)

    def _explain(self, prepared: Prepared) -> Explanation:
        forward, maps = self._layer_maps(prepared)
        heatmap = upsample(maps, prepared.images.shape[-2:], self.upsample_mode)
        return self._result(prepared, forward, pixel_map=heatmap.transpose(0, 1))


class GuidedBackprop(_GradientMethod):
    """Guided Backprop (Springenberg et al. 2015) of every word's logit to the pixels, as Captum's
    ``GuidedBackprop`` (the encoder's ReLUs pass only positive gradients), batched over words."""

    title = "Guided Backprop"  # what the report and the tables call it

    method = "guided-backprop"

    def _guided_gradient(self, prepared: Prepared):
        images = self._needs_images(prepared).detach().clone().requires_grad_(True)
        with torch.enable_grad(), guided_relus(self.encoder):
            _, forward, word_logits = self._forward(prepared, images)
            (gradient,) = all_word_gradients(word_logits, _word_mask(prepared), [images])
        return forward, gradient

    def _explain(self, prepared: Prepared) -> Explanation:
        forward, gradient = self._guided_gradient(prepared)
        return self._result(prepared, forward, pixel_relevance=gradient.transpose(0, 1))


class GuidedGradCAM(GradCAM, GuidedBackprop):
    """Guided Grad-CAM (Selvaraju et al. 2017): Guided Backprop times the upsampled Grad-CAM map, as Captum's
    ``GuidedGradCam`` (whose default upsampling is "nearest")."""

    title = "Guided Grad-CAM"  # what the report and the tables call it

    method = "guided-gradcam"

    def __init__(self, model, encoder: Optional[nn.Module] = None, layer: Optional[nn.Module] = None,
                 upsample_mode: str = "nearest", *, vocabulary=None, image_size: Optional[int] = None):
        super().__init__(model, encoder, layer, upsample_mode, vocabulary=vocabulary, image_size=image_size)

    def _explain(self, prepared: Prepared) -> Explanation:
        forward, maps = self._layer_maps(prepared)
        _, gradient = self._guided_gradient(prepared)
        heatmap = upsample(maps, prepared.images.shape[-2:], self.upsample_mode)
        return self._result(prepared, forward, pixel_relevance=(gradient * heatmap.unsqueeze(2)).transpose(0, 1))


class GradientXInput(_GradientMethod):
    """Gradient x Input of every word's logit: pixels (``image * d logit / d image``), feature grid and word
    embeddings (``sum_d e_d * d logit / d e_d`` per fed word), batched over words."""

    title = "Gradient x Input"  # what the report and the tables call it

    method = "gradient-x-input"

    def _explain(self, prepared: Prepared) -> Explanation:
        images = None if prepared.images is None else prepared.images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            features, forward, word_logits = self._forward(prepared, images)
            inputs = ([images] if images is not None else []) + [features] + forward.embeddings
            gradients = all_word_gradients(word_logits, _word_mask(prepared), inputs)
        gradients = [torch.zeros(len(forward.steps), *x.shape, dtype=x.dtype, device=x.device) if g is None else g
                     for g, x in zip(gradients, inputs)]
        fields = {}
        if images is not None:
            fields["pixel_relevance"] = (gradients.pop(0) * images.detach()).transpose(0, 1)
        fields["feature_relevance"] = (gradients.pop(0) * features.detach()).transpose(0, 1)
        words = torch.stack([(g * e.detach()).sum(-1) for g, e in zip(gradients, forward.embeddings)], dim=-1)
        fields["word_relevance"] = words.transpose(0, 1)
        return self._result(prepared, forward, **fields)


class Attention(Explainer):
    """The model's own attention at each step: the adaptive model's ``alpha`` over the regions (and the sentinel
    share ``beta``), the multi-head model's weights per head and their mean; ``pixel_map`` upsampled to the image
    when the feature grid's shape is known."""

    title = "Attention"  # what the report and the tables call it

    method = "attention"
    takes_a_start = False

    def __init__(self, model, encoder: Optional[nn.Module] = None, upsample_mode: str = "bilinear", *,
                 vocabulary=None, image_size: Optional[int] = None):
        super().__init__(model, encoder, vocabulary=vocabulary, image_size=image_size)
        self.upsample_mode = upsample_mode

    @property
    def settings(self) -> dict:
        return {"upsample_mode": self.upsample_mode}

    def _explain(self, prepared: Prepared) -> Explanation:
        with torch.no_grad():
            forward = teacher_force(self.captioner, prepared.features, prepared.captions)
        attention_of(forward.steps[0], type(self.captioner).__name__)
        explanation = self._result(prepared, forward)
        if prepared.images is not None and prepared.grid_size is not None:
            # a ViT's class token has no place on the image: the map is the attention on the patches
            grid = explanation.attention[..., prepared.leading_tokens:].unflatten(-1, tuple(prepared.grid_size))
            explanation.pixel_map = upsample(grid, prepared.images.shape[-2:], self.upsample_mode)
        return explanation


GRADIENT_FAMILY = ("gradcam", "guided-backprop", "guided-gradcam")


def explain_gradient_family(explainers: Dict[str, Explainer], images: torch.Tensor, captions) -> Dict[str,
                                                                                                     Explanation]:
    """Grad-CAM, Guided Backprop and Guided Grad-CAM of the same captions, sharing their backward passes: Guided
    Grad-CAM is the product of the other two methods' intermediate results, so with all three asked for it costs
    nothing more (what ``capxai evaluate --explanations all`` runs). ``explainers``: the three methods' explainers
    (``GRADIENT_FAMILY`` keys) on one model and layer; ``captions`` as for :meth:`Explainer.explain`. Returns each
    method's :class:`Explanation`, equal to its own explainer's ``explain(images, captions=captions)`` (tested)."""
    gradcam, guided, combined = (explainers[method] for method in GRADIENT_FAMILY)
    if gradcam.layer is not combined.layer or gradcam.encoder is not guided.encoder:
        raise ValueError("explain_gradient_family: the explainers must share one encoder and Grad-CAM layer")
    with evaluation_mode(combined.captioner, combined.encoder):
        prepared = prepare(combined.captioner, combined.encoder, images, None, captions, 1, 20, combined.vocabulary,
                           combined.image_size)
        forward, maps = gradcam._layer_maps(prepared)
        _, gradient = guided._guided_gradient(prepared)
    size = prepared.images.shape[-2:]
    combined_map = upsample(maps, size, combined.upsample_mode).unsqueeze(2)
    return {"gradcam": gradcam._result(prepared, forward,
                                       pixel_map=upsample(maps, size, gradcam.upsample_mode).transpose(0, 1)),
            "guided-backprop": guided._result(prepared, forward, pixel_relevance=gradient.transpose(0, 1)),
            "guided-gradcam": combined._result(prepared, forward,
                                               pixel_relevance=(gradient * combined_map).transpose(0, 1))}


METHODS: Registry = Registry("methods")
METHODS.register("lrp", LRP, help="layer-wise relevance propagation (the paper's rules; pixels, regions, words)")
METHODS.register("gradcam", GradCAM, help="Grad-CAM on the encoder's last conv")
METHODS.register("guided-gradcam", GuidedGradCAM, help="Guided Backprop times Grad-CAM")
METHODS.register("guided-backprop", GuidedBackprop, help="gradients through positive-only ReLUs")
METHODS.register("gradient-x-input", GradientXInput, help="gradient times input (pixels, regions, words)")
METHODS.register("attention", Attention, help="the captioner's own attention weights")


def methods_of(method: str) -> List[str]:
    """``"all"`` (every registered method) or one registered method's name, as a list."""
    if method == "all":
        return METHODS.names()
    if method not in METHODS:
        raise ValueError(f"--method must be 'all' or one of {METHODS.names()}, got {method!r}")
    return [method]


def make_explainer(method: str, model, vocabulary, composite: Union[str, Composite] = "paper") -> Explainer:
    """The registered explainer ``method`` on ``model``; ``composite`` goes to the methods that take one (LRP)."""
    explainer = METHODS[method]
    if "composite" in inspect.signature(explainer).parameters:
        return explainer(model, composite=composite, vocabulary=vocabulary)
    return explainer(model, vocabulary=vocabulary)
