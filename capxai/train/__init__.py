"""capxai.train: cross-entropy training of the captioners, and fine-tuning them: LRP-inference fine-tuning or
baseline fine-tuning, with cross-entropy or self-critical (SCST) training. (Building and loading a trained model
lives in ``capxai.models.factory``; its names are re-exported here for existing code.)"""
from capxai.models.checkpoint import load_checkpoint, save_checkpoint
from capxai.models.factory import CaptionModel, TrainConfig, build_model, load_trained
from capxai.train.finetune import FinetuneConfig, finetune
from capxai.train.lrp_weights import FinetuneObjective, feature_weights, load_stop_words, stop_word_mask
from capxai.train.scst import CiderReward, scst_loss
from capxai.train.trainer import caption_loss, train, train_step

__all__ = ["TrainConfig", "train", "train_step", "caption_loss", "build_model", "CaptionModel", "save_checkpoint",
           "load_checkpoint", "load_trained", "FinetuneConfig", "finetune", "FinetuneObjective", "feature_weights",
           "load_stop_words", "stop_word_mask", "CiderReward", "scst_loss"]
