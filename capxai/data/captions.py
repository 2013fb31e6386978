"""Image-caption data from Karpathy-style split files (``dataset_coco.json``, ``dataset_flickr30k.json``, and the
built-in ``dataset_scenes.json``): images loaded with PIL and torchvision transforms, captions encoded with a
:class:`~capxai.data.vocabulary.Vocabulary` and padded per batch."""
import json
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Dict, List, Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from tqdm import tqdm

from capxai.data.vocabulary import Vocabulary
from capxai.interrupts import stoppable

# Karpathy's COCO split calls the extra training images "restval".
SPLIT_ALIASES = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
SPLITS = tuple(SPLIT_ALIASES)  # the split names every command takes
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_karpathy(path) -> List[dict]:
    """The ``images`` list of a Karpathy-style json, every entry checked for the keys capxai uses and their types
    (a caption's ``tokens`` given as one string would otherwise become a vocabulary of single characters)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"caption split file {path} is a folder; give the json file (e.g. dataset_coco.json)")
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"caption split file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"caption split file {path} is not valid json ({error})") from None
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"caption split file {path} has no 'images' list (not a Karpathy-style split file)")
    for position, image in enumerate(images):
        problem = _entry_problem(image)
        if problem:
            raise ValueError(f"caption split file {path}: image #{position} {problem}; fix the file or "
                             "regenerate it (capxai data coco / capxai data scenes)")
    return images


def escapes_root(relative: str) -> bool:
    """Whether a split file's ``filepath`` / ``filename`` could name a file outside ``--image-root`` by its text: an
    absolute path (POSIX or Windows), a ``..`` part, or a NUL character. (A symbolic link that leaves the root is
    found when the path is resolved: :meth:`CaptionDataset.image_path`.)"""
    if "\0" in relative:
        return True
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    return posix.is_absolute() or bool(windows.drive or windows.root) or ".." in posix.parts or ".." in windows.parts


def path_under(root, *relative: str, what: str = "its folder") -> Path:
    """``root`` joined with ``relative`` parts; a path that leaves ``root`` (through ``..``, an absolute path or a
    symbolic link) is refused, so a crafted split file or report list cannot make capxai read, or copy into a report
    that gets shared, any other file of the machine. ``what`` names the root in the error (e.g. "--image-root")."""
    root = Path(root)
    path = root.joinpath(*relative)
    if any(escapes_root(part) for part in relative) or not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{path} leaves {what} {root} (an absolute path, '..' or a symbolic link out of it); "
                         "refused: keep the files under it (link the folder itself, not folders or files inside it)")
    return path


def _is_words(value) -> bool:
    return isinstance(value, list) and all(isinstance(word, str) for word in value)


def _entry_problem(image) -> Optional[str]:
    """What is wrong with one entry of a split file's ``images``, or None."""
    if not isinstance(image, dict):
        return f"must be an object, got {type(image).__name__}"
    missing = [key for key in ("filename", "split", "sentences") if key not in image]
    if missing:
        return f"lacks {missing}"
    for key in ("filename", "split") + (("filepath",) if "filepath" in image else ()):
        if not isinstance(image[key], str) or (key == "filename" and not image[key]):
            return f"'{key}' must be a non-empty string, got {image[key]!r}"
    for key in ("filepath", "filename"):
        if key in image and escapes_root(image[key]):
            return f"'{key}' {image[key]!r:.60} leaves the image root (absolute, '..' or a NUL character)"
    for key in ("cocoid", "imgid"):
        if key in image and (not isinstance(image[key], int) or isinstance(image[key], bool)):
            return f"'{key}' must be an integer, got {image[key]!r}"
    if not isinstance(image["sentences"], list):
        return f"'sentences' must be a list, got {type(image['sentences']).__name__}"
    for number, sentence in enumerate(image["sentences"]):
        if not isinstance(sentence, dict) or not _is_words(sentence.get("tokens")):
            got = sentence.get("tokens") if isinstance(sentence, dict) else sentence
            return f"sentence {number}: 'tokens' must be a list of words, got {type(got).__name__} {got!r:.40}"
        if "raw" in sentence and not isinstance(sentence["raw"], str):
            return f"sentence {number}: 'raw' must be a string, got {sentence['raw']!r:.40}"
    probe = image.get("probe")
    if probe is not None and not (isinstance(probe, dict) and isinstance(probe.get("present"), str)
                                  and isinstance(probe.get("absent"), str)):
        return f"'probe' must be {{'present': category, 'absent': category}}, got {probe!r:.60}"
    return None


def image_id_of(entry: Dict, position: int) -> int:
    """The id an image of a Karpathy-style split is known by in COCO files and metric results: ``cocoid``, else
    ``imgid`` (Flickr30K), else its position in the split."""
    return int(entry.get("cocoid", entry.get("imgid", position)))


def default_transform(image_size: int) -> Callable:
    """Resize to ``image_size`` (square), to tensor, ImageNet normalisation (what torchvision encoders expect)."""
    return transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def open_image(path: Path) -> Image.Image:
    """An RGB image, or an error naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image {path} is unreadable or corrupt ({error})") from None


class CaptionDataset(torch.utils.data.Dataset):
    """One split: item ``i`` is ``{"image": [3, S, S], "captions": list of [L_j] LongTensors, "image_id": int}``.

    Args:
        split_file: Karpathy-style json. image_root: folder that ``filepath/filename`` are relative to.
        split: "train" (includes "restval"), "val" or "test". vocabulary: encodes the captions.
        max_length: words per caption at most (longer ones are cut). image_size: side after resizing.
        skip_unreadable: drop images that are missing or corrupt (checked once, up front, with a warning that
            counts them) instead of raising an error that names the file.
    """

    def __init__(self, split_file, image_root, split: str, vocabulary: Vocabulary, max_length: int = 16,
                 image_size: int = 224, transform: Optional[Callable] = None, skip_unreadable: bool = False):
        if split not in SPLIT_ALIASES:
            raise ValueError(f"CaptionDataset: split must be one of {list(SPLIT_ALIASES)}, got {split!r}")
        self.image_root = Path(image_root)
        self.split = split
        self.vocabulary = vocabulary
        self.max_length = max_length
        self.transform = transform or default_transform(image_size)
        self.entries = [image for image in load_karpathy(split_file) if image["split"] in SPLIT_ALIASES[split]]
        if skip_unreadable:
            self.entries = self._readable(self.entries)

    def _path(self, entry: dict) -> Path:
        return self.image_path(entry.get("filepath", ""), entry["filename"])

    def image_path(self, *relative: str) -> Path:
        """The image at ``relative`` parts under ``--image-root`` (:func:`path_under`)."""
        return path_under(self.image_root, *relative, what="--image-root")

    def _readable(self, entries: List[dict]) -> List[dict]:
        kept, dropped = [], []
        for entry in entries:
            try:
                open_image(self._path(entry))
                kept.append(entry)
            except (FileNotFoundError, ValueError) as error:
                dropped.append(str(error))
        if dropped:
            warnings.warn(f"CaptionDataset: skipped {len(dropped)} unreadable images, e.g. {dropped[0]}",
                          stacklevel=3)
        return kept

    def check_images(self, progress: bool = False) -> None:
        """Finds unreadable images before any long work: opens every image's header (a few bytes each: a missing,
        empty or non-image file is named) and decodes the first image whole."""
        if not self.entries:
            return
        for entry in stoppable(tqdm(self.entries, desc="checking images", unit="image", disable=not progress,
                                    mininterval=1.0)):
            path = self._path(entry)
            try:
                with Image.open(path) as image:
                    image.size  # noqa: B018  (the header is parsed on open; size proves it)
            except FileNotFoundError:
                raise FileNotFoundError(f"image {path} does not exist (from the split file; is --image-root "
                                        f"{self.image_root} right?)") from None
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"image {path} is unreadable or corrupt ({error})") from None
        self.transform(open_image(self._path(self.entries[0])))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Dict[str, object]:
        entry = self.entries[index]
        image = self.transform(open_image(self._path(entry)))
        captions = [torch.tensor(self.vocabulary.encode(sentence["tokens"], self.max_length))
                    for sentence in entry["sentences"]]
        return {"image": image, "captions": captions, "image_id": image_id_of(entry, index)}


def open_split(split_file, image_root, split: str, vocabulary: Vocabulary, max_length: int, image_size: int,
               progress: bool = False) -> CaptionDataset:
    """A split ready for long work: it must hold images, every image's header is read and the first decoded (see
    :meth:`CaptionDataset.check_images`), so a bad file stops the command before, not after, hours of work."""
    if not Path(image_root).is_dir():
        raise NotADirectoryError(f"image root {image_root} is not a folder")
    dataset = CaptionDataset(split_file, image_root, split, vocabulary, max_length, image_size)
    if len(dataset) == 0:
        raise ValueError(f"caption split file {split_file} has no {split!r} images")
    dataset.check_images(progress)
    return dataset


def stack_images(items: Sequence[Dict[str, object]]) -> torch.Tensor:
    """``[B, 3, S, S]``: the images of a batch of items, without their captions (a DataLoader's collate)."""
    return torch.stack([item["image"] for item in items])


def collate(batch: Sequence[Dict[str, object]], captions_per_image: int = 0,
            generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Images ``[B, 3, S, S]``; captions ``[B, C, L]`` padded with ``<pad>`` (0) to the longest caption and to the
    most captions per image in the batch; ``caption_mask [B, C]`` marks real captions; ``image_ids [B]``.

    ``captions_per_image > 0`` keeps that many captions of each image, drawn at random with ``generator`` (training
    sees every caption over the epochs while each step pays for fewer decoder sequences per encoded image); see
    :func:`choose_captions`.
    """
    if captions_per_image < 0:
        raise ValueError(f"collate: captions_per_image must be >= 0 (0 keeps all), got {captions_per_image}")
    images = torch.stack([item["image"] for item in batch])
    most_captions = max(len(item["captions"]) for item in batch)
    longest = max(len(caption) for item in batch for caption in item["captions"])
    captions_tensor = torch.zeros(len(batch), most_captions, longest, dtype=torch.long)
    caption_mask = torch.zeros(len(batch), most_captions, dtype=torch.bool)
    for b, item in enumerate(batch):
        for c, caption in enumerate(item["captions"]):
            captions_tensor[b, c, :len(caption)] = caption
            caption_mask[b, c] = True
    collated = {"images": images, "captions": captions_tensor, "caption_mask": caption_mask,
                "image_ids": torch.tensor([item["image_id"] for item in batch])}
    return choose_captions(collated, captions_per_image, generator)


def choose_captions(batch: Dict[str, torch.Tensor], captions_per_image: int,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """A collated batch with at most ``captions_per_image`` captions of each image (0: all), drawn with
    ``generator`` image by image, padded to the longest caption and the most captions kept.

    Training draws here, in its own process, after DataLoader workers collated every caption: draws made in the
    workers would depend on how many there are."""
    if captions_per_image <= 0:
        return batch
    captions, mask = batch["captions"], batch["caption_mask"]
    counts = mask.sum(1).tolist()
    if all(count <= captions_per_image for count in counts):
        return batch
    chosen = []
    for b, count in enumerate(counts):
        real = captions[b, :count]  # a batch's real captions come first (collate)
        if count > captions_per_image:
            real = real[torch.randperm(count, generator=generator)[:captions_per_image]]
        chosen.append(real)
    most = max(len(kept) for kept in chosen)
    longest = max(int((kept != 0).sum(1).max()) for kept in chosen)
    picked = torch.zeros(len(chosen), most, longest, dtype=captions.dtype)
    picked_mask = torch.zeros(len(chosen), most, dtype=torch.bool)
    for b, kept in enumerate(chosen):
        picked[b, :len(kept)] = kept[:, :longest]
        picked_mask[b, :len(kept)] = True
    return {**batch, "captions": picked, "caption_mask": picked_mask}


class EpochOrder(torch.utils.data.Sampler):
    """The order of a split's images in each epoch: a permutation drawn from ``seed + epoch`` (set with
    :meth:`set_epoch`, as ``DistributedSampler`` does), so one DataLoader serves every epoch and its workers persist.

    It draws exactly what ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed + epoch))`` drew (that
    loader first took one number from the generator for its workers' seeds), so trainings reproduce earlier ones."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return iter(torch.randperm(self.size, generator=generator).tolist())
