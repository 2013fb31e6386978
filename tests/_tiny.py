"""The smallest training configuration the CLI-level tests share (a captioner that trains in seconds on tiny
scenes; what it learns does not matter to them)."""
from capxai.train import TrainConfig

TINY = TrainConfig(hidden=8, attention_dim=8, heads=2, dropout=0.0, epochs=1, batch_size=4, min_count=1,
                   max_length=8, image_size=32)
