"""capxai.evaluate: caption metrics (pycocoevalcap); hallucination, grounding and ablation follow."""
from capxai.evaluate.metrics import caption_metrics, write_metrics

__all__ = ["caption_metrics", "write_metrics"]
