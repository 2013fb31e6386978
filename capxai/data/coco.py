"""COCO-format caption files (COCO 2014 / 2017 ``captions_*.json``, the built-in scenes' own) read with pycocotools
and turned into the Karpathy-style split that :class:`~capxai.data.captions.CaptionDataset` reads, for users who
have the COCO annotations but not Karpathy's ``dataset_coco.json``."""
import contextlib
import io
import json
from pathlib import Path
from typing import Mapping, Tuple

from capxai._io import atomic_write_json
from capxai.outputs import OutputFolder
from capxai.data.vocabulary import caption_tokens


def read_coco(path, kind: str = "COCO"):
    """A pycocotools ``COCO`` index of a COCO-format json (``kind`` names the file in errors, e.g. "instances")."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{kind} file {path} is not valid json ({error})") from None
    except (KeyError, TypeError, AssertionError) as error:
        raise ValueError(f"{kind} file {path} is not COCO-format json (problem with {error})") from None


def _read_captions(path: Path):
    coco = read_coco(path, "COCO caption")
    if any("caption" not in annotation for annotation in coco.anns.values()):
        raise ValueError(f"COCO caption file {path} has annotations without 'caption' (an instances file?)")
    return coco


def karpathy_from_coco(splits: Mapping[str, Tuple[Path, str]], dataset: str = "coco") -> dict:
    """A Karpathy-style split from COCO caption files: ``splits`` maps a split name ("train", "val", "test",
    "restval") to ``(captions json, image folder relative to the image root)``. Images without captions are left
    out; ids are the COCO image ids (``cocoid``)."""
    images, sentence_id = [], 0
    for split, (caption_file, folder) in splits.items():
        coco = _read_captions(Path(caption_file))
        for image_id in sorted(coco.getImgIds()):
            annotations = sorted(coco.imgToAnns.get(image_id, []), key=lambda annotation: annotation["id"])
            if not annotations:
                continue
            sentences = []
            for annotation in annotations:
                sentences.append({"raw": annotation["caption"].strip(), "tokens": caption_tokens(annotation["caption"]),
                                  "imgid": len(images), "sentid": sentence_id})
                sentence_id += 1
            images.append({"filepath": folder, "filename": coco.imgs[image_id]["file_name"], "cocoid": image_id,
                           "imgid": len(images), "split": split, "sentences": sentences,
                           "sentids": [s["sentid"] for s in sentences]})
    if not images:
        raise ValueError("karpathy_from_coco: the caption files hold no captioned images")
    return {"dataset": dataset, "images": images}


def write_karpathy_from_coco(out_file, splits: Mapping[str, Tuple[Path, str]], dataset: str = "coco",
                             overwrite: bool = False) -> Path:
    """Writes :func:`karpathy_from_coco` atomically; an existing file is replaced only with ``overwrite``, and only
    when capxai wrote it (the folder's manifest lists it)."""
    out_file = Path(out_file)
    output = OutputFolder(out_file.parent, "data coco")
    output.check_writable([out_file], overwrite)
    written = atomic_write_json(out_file, karpathy_from_coco(splits, dataset))
    output.record([written], out_file.name)
    return written

