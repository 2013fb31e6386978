"""capxai.data: built-in scenes (the demo's data and ground truth); COCO / Flickr30K loading follows."""
from capxai.data.scenes import CATEGORY_NAMES, CO_OCCURRENCE, SceneConfig, generate

__all__ = ["generate", "SceneConfig", "CATEGORY_NAMES", "CO_OCCURRENCE"]
