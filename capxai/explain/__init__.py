"""capxai.explain: for every word a captioner says, which pixels, feature-grid cells and preceding words made it say
that word: LRP (the paper's method, all words in one sweep), Grad-CAM, Guided Grad-CAM, Guided Backprop, Gradient x
Input, attention, Integrated Gradients and occlusion, with one call shape (``explainer.explain(images,
captions=...)``) and one result type."""
from capxai.explain.encoder_lrp import COMPOSITES, make_composite
from capxai.explain.explainers import (GRADIENT_FAMILY, LRP, METHODS, RUNNER_UP, Attention, Explainer, GradCAM,
                                       GradientXInput, GuidedBackprop, GuidedGradCAM, explain_gradient_family,
                                       make_explainer, methods_of)
from capxai.explain.captum_methods import IntegratedGradients, Occlusion  # registers them in METHODS
from capxai.explain.lrp_paths import FAST_PATHS, register_fast_path
from capxai.explain.explanation import Explanation

__all__ = ["LRP", "GradCAM", "GuidedGradCAM", "GuidedBackprop", "GradientXInput", "Attention", "IntegratedGradients",
           "Occlusion", "Explainer",
           "Explanation", "METHODS", "COMPOSITES", "make_composite", "GRADIENT_FAMILY", "explain_gradient_family",
           "make_explainer", "methods_of", "FAST_PATHS", "register_fast_path", "RUNNER_UP"]
