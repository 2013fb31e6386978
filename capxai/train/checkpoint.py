"""Checkpoints written atomically (temporary file, then rename): an interrupted save never leaves a broken file."""
from pathlib import Path

import torch

from capxai._io import atomic_path


def save_checkpoint(path, payload: dict) -> Path:
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for a broken file
        raise ValueError(f"checkpoint {path} is unreadable or corrupt ({type(error).__name__}: {error})") from None
