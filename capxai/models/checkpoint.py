"""Checkpoints: written atomically (temporary file, then rename), so an interrupted save never leaves a broken file;
read with ``torch.load(weights_only=True)``, so a crafted file cannot run code: a capxai checkpoint holds only
tensors and plain data (the training config and the vocabulary as a dict and a word list).

Format (version 1): ``{"format": "capxai-checkpoint", "version": 1, "kind": "model" | "training", "config": {...},
"vocabulary": [words], "model": state_dict, ...}``; ``kind`` "training" (``last.pt``) adds the optimizer,
scheduler, history, epoch and random state that resuming needs."""
import pickle
from pathlib import Path
from typing import Optional

import torch

from capxai._io import atomic_torch_save

FORMAT, VERSION = "capxai-checkpoint", 1
KINDS = ("model", "training")


def on_cpu(value):
    """``value`` (tensors, nested in dicts, lists and tuples) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


def save_checkpoint(path, payload: dict, kind: Optional[str] = None) -> Path:
    """Writes ``payload`` to ``path`` atomically, every tensor on the CPU (a checkpoint saved from a GPU opens on a
    machine without one); with ``kind`` it is stamped as a capxai checkpoint of that kind."""
    return atomic_torch_save(path, checkpoint_payload(payload, kind))


def checkpoint_payload(payload: dict, kind: Optional[str] = None) -> dict:
    """What :func:`save_checkpoint` writes: ``payload`` on the CPU, stamped with ``kind`` when given (for writers
    that put several files in place together, :func:`capxai._io.write_together`)."""
    payload = on_cpu(payload)
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"save_checkpoint: kind must be one of {KINDS}, got {kind!r}")
        payload = {"format": FORMAT, "version": VERSION, "kind": kind, **payload}
    return payload


def load_checkpoint(path, map_location="cpu", kind: Optional[str] = None) -> dict:
    """Reads a checkpoint without running code from it (``weights_only=True``).

    With ``kind`` ("model": any capxai checkpoint with model weights, "training": one that can be resumed), the
    file must be a capxai checkpoint of the current format version and of that kind; errors say what it is instead.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; give the .pt file (best.pt or last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if refused:
            raise ValueError(f"checkpoint {path} holds objects other than tensors and plain data, which capxai refuses "
                             f"to load, as loading them could run code from the file ({refused[0]}); only open "
                             "checkpoints written by capxai train") from None
        raise ValueError(f"checkpoint {path} is unreadable or corrupt "
                         f"(not a torch file: {_last_line(error)})") from None
    except Exception as error:  # torch raises many types for a broken file
        raise ValueError(f"checkpoint {path} is unreadable or corrupt ({type(error).__name__}: "
                         f"{_last_line(error)})") from None
    if kind is not None:
        _check_kind(path, payload, kind)
    return payload


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _check_kind(path: Path, payload, kind: str) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a capxai checkpoint (no capxai format stamp: written by another program "
                         "or by a capxai older than checkpoint format 1); give best.pt or last.pt of capxai train")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {payload.get('version')!r}, this capxai reads version "
                         f"{VERSION}; use the capxai that wrote it, or retrain")
    if kind == "training" and payload.get("kind") != "training":
        raise ValueError(f"checkpoint {path} is a {payload.get('kind')!r} checkpoint, not a training checkpoint "
                         "(last.pt) that training can resume from; remove it or choose another --out")
    required = ("model", "config", "vocabulary") + (("optimizer", "scheduler", "history", "epoch", "torch_rng")
                                                   if kind == "training" else ())
    missing = [key for key in required if key not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; it is damaged or was not written by capxai train")
    if not isinstance(payload["config"], dict) or not (isinstance(payload["vocabulary"], list) and all(
            isinstance(word, str) for word in payload["vocabulary"])):
        raise ValueError(f"checkpoint {path}: config must be a dict and vocabulary a list of words")
