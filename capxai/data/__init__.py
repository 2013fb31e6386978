"""capxai.data: built-in scenes (the demo's data and ground truth), Karpathy-style caption splits (COCO, Flickr30K,
scenes), COCO caption files via pycocotools, vocabulary."""
from capxai.data.scenes import CATEGORY_NAMES, CO_OCCURRENCE, SceneConfig, generate

__all__ = ["generate", "SceneConfig", "CATEGORY_NAMES", "CO_OCCURRENCE"]
