"""capxai.evaluate: caption metrics (pycocoevalcap); hallucination (CHAIR with CHAIR's conventions, the paper's
frequent-word P/R/F1, probe rate); explanation metrics (grounding, pointing game, ablation, hallucinated-word
detection) with bootstrap intervals over images."""
from capxai.evaluate.grounding import grounding_scores, pointing_game
from capxai.evaluate.hallucination import chair, frequent_word_scores
from capxai.evaluate.metrics import caption_metrics, write_metrics
from capxai.evaluate.objects import ObjectWords, frequent_words

__all__ = ["caption_metrics", "write_metrics", "chair", "frequent_word_scores", "ObjectWords", "frequent_words",
           "grounding_scores", "pointing_game", "evaluate_explanations", "ExplanationSettings"]


def __getattr__(name):  # the explanation metrics import the explainers (Zennit, Captum): load them when asked
    if name in ("evaluate_explanations", "ExplanationSettings"):
        from capxai.evaluate import explanations

        return getattr(explanations, name)
    raise AttributeError(f"module 'capxai.evaluate' has no attribute {name!r}")
