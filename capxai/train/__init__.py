"""capxai.train: cross-entropy training of the captioners (LRP-inference fine-tuning follows)."""
from capxai.train.checkpoint import load_checkpoint, save_checkpoint
from capxai.train.trainer import (CaptionModel, TrainConfig, build_model, caption_loss, load_trained, train,
                                  train_step)

__all__ = ["TrainConfig", "train", "train_step", "caption_loss", "build_model", "CaptionModel", "save_checkpoint",
           "load_checkpoint", "load_trained"]
