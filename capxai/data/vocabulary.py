"""Caption vocabulary: words seen at least ``min_count`` times in the training captions, plus the special tokens;
rarer words map to ``<unk>``. Saved as json next to checkpoints so that a model and its words stay together."""
import collections
import json
import re
from pathlib import Path
from typing import Iterable, List, Sequence

from capxai._io import atomic_write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


def caption_tokens(caption: str) -> List[str]:
    """Lower-case words without punctuation, as in Karpathy's split files."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", caption.lower())


class Vocabulary:
    """Index <-> word. Index 0 is ``<pad>``, 1 ``<start>``, 2 ``<end>``, 3 ``<unk>``, then words by frequency."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:4] != list(SPECIALS):
            raise ValueError(f"Vocabulary: the first words must be {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("Vocabulary: words must be unique")
        self.words = words
        self.index = {word: i for i, word in enumerate(words)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 5) -> "Vocabulary":
        """From tokenised training captions: words seen at least ``min_count`` times, most frequent first (ties
        alphabetical, so the result does not depend on caption order)."""
        if min_count < 1:
            raise ValueError(f"Vocabulary.build: min_count must be >= 1, got {min_count}")
        counts = collections.Counter(token for tokens in token_lists for token in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def pad(self) -> int:
        return 0

    @property
    def start(self) -> int:
        return 1

    @property
    def end(self) -> int:
        return 2

    @property
    def unknown(self) -> int:
        return 3

    def encode(self, tokens: Sequence[str], max_length: int) -> List[int]:
        """``<start> w1 .. wn <end>`` with at most ``max_length`` words (longer captions are cut), unknown words as
        ``<unk>``."""
        if max_length < 1:
            raise ValueError(f"Vocabulary.encode: max_length must be >= 1, got {max_length}")
        body = [self.index.get(token, self.unknown) for token in tokens[:max_length]]
        return [self.start] + body + [self.end]

    def tokenize(self, caption: str) -> List[str]:
        """The words of a caption as the split files hold them (:func:`caption_tokens`)."""
        return caption_tokens(caption)

    def decode(self, indices: Iterable[int]) -> List[str]:
        """Words up to the first ``<end>``, without ``<start>`` / ``<pad>``."""
        words = []
        for index in indices:
            index = int(index)
            if not 0 <= index < len(self.words):
                raise ValueError(f"Vocabulary.decode: index {index} is outside the vocabulary (size {len(self)})")
            if index == self.end:
                break
            if index not in (self.pad, self.start):
                words.append(self.words[index])
        return words

    def save(self, path) -> Path:
        return atomic_write_json(path, {"words": self.words})

    @classmethod
    def load(cls, path) -> "Vocabulary":
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            return cls(payload["words"])
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file {path} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"vocabulary file {path} is not a capxai vocabulary ({error})") from None
