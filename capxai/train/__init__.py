"""capxai.train: cross-entropy training of the captioners, and fine-tuning them: LRP-inference fine-tuning or
baseline fine-tuning, with cross-entropy or self-critical (SCST) training."""
from capxai.train.checkpoint import load_checkpoint, save_checkpoint
from capxai.train.finetune import FinetuneConfig, finetune
from capxai.train.lrp_weights import FinetuneObjective, feature_weights, load_stop_words, stop_word_mask
from capxai.train.scst import CiderReward, scst_loss
from capxai.train.trainer import (CaptionModel, TrainConfig, build_model, caption_loss, load_trained, train,
                                  train_step)

__all__ = ["TrainConfig", "train", "train_step", "caption_loss", "build_model", "CaptionModel", "save_checkpoint",
           "load_checkpoint", "load_trained", "FinetuneConfig", "finetune", "FinetuneObjective", "feature_weights",
           "load_stop_words", "stop_word_mask", "CiderReward", "scst_loss"]
