"""Which object category each word of a caption names: CHAIR's reading of captions (Rohrbach et al. 2018), from a
synonyms table (one line per category: its name, then the words that name it).

:class:`ObjectWords` matches phrases before single words ("hot dog" is a hot dog, not a dog; "teddy bear" is not a
bear), counts plurals as the word ("dogs", "boxes", "ponies", "knives", "women", "people", "children"), and takes
extra phrases that name a category or nothing (CHAIR's "baby elephant" -> elephant, not person; "train track" ->
nothing). :meth:`ObjectWords.coco` is CHAIR's table for the 80 COCO categories with CHAIR's double words.
"""
import dataclasses
import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

RESOURCES = Path(__file__).with_name("resources")

# CHAIR's hard-coded two-word rules on top of its table: animals said "baby X" / "adult X" are X (not a person),
# passenger jets and trains are the vehicle, "bow tie" is a tie and "toilet seat" a toilet; "home plate" and
# "train track" name no object (not a plate, not a train).
CHAIR_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
CHAIR_PASSENGER_VEHICLES = ("jet", "train")
CHAIR_NO_OBJECT = ("home plate", "train track")
CHAIR_ALIASES = {"bow tie": "tie", "toilet seat": "toilet"}
IRREGULAR_PLURALS = {"person": ("people", "persons"), "child": ("children",), "mouse": ("mice",),
                     "goose": ("geese",), "ox": ("oxen",), "foot": ("feet",), "tooth": ("teeth",),
                     "sheep": ("sheep",), "fish": ("fish",), "calf": ("calves",), "knife": ("knives",),
                     "wolf": ("wolves",), "leaf": ("leaves",), "shelf": ("shelves",), "loaf": ("loaves",),
                     "thief": ("thieves",), "skis": ("skis",), "scissors": ("scissors",), "bus": ("buses",)}


def plural_forms(word: str) -> Tuple[str, ...]:
    """The word and the plurals English forms of it (regular: -s, -es, consonant + y -> -ies, -f/-fe -> -ves,
    -man -> -men; irregular: a table)."""
    forms = [word, word + "s", word + "es"]
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        forms.append(word[:-1] + "ies")
    if word.endswith("man"):
        forms.append(word[:-3] + "men")
    if word.endswith("fe"):
        forms.append(word[:-2] + "ves")
    forms.extend(IRREGULAR_PLURALS.get(word, ()))
    return tuple(dict.fromkeys(forms))


def caption_words(caption: str) -> List[str]:
    """Lower-case words of a caption (punctuation is a word boundary)."""
    return "".join(c if c.isalnum() else " " for c in caption.lower()).split()


@dataclasses.dataclass(frozen=True)
class Mention:
    """Words ``start .. end - 1`` of a caption name ``category`` (``end - 1`` is the head noun)."""

    start: int
    end: int
    category: str


class ObjectWords:
    """Reads the object mentions of captions.

    Args:
        synonyms: ``{category: [synonym, ...]}`` (the category's own name always counts).
        phrases: extra phrases: ``{phrase: category}`` or ``{phrase: None}`` for a phrase that names nothing (its
            words are then not read alone either).
        dropped_with: ``{word: other}``: a mention by ``word`` is not counted when the caption also says ``other``
            (CHAIR: "seat" is not a chair in a caption about a toilet).
    """

    def __init__(self, synonyms: Mapping[str, Iterable[str]], phrases: Optional[Mapping[str, Optional[str]]] = None,
                 dropped_with: Optional[Mapping[str, str]] = None):
        self.categories = list(synonyms)
        self.synonyms = {category: [name.lower() for name in names] for category, names in synonyms.items()}
        self._phrases: Dict[Tuple[str, ...], Optional[str]] = {}
        for category, names in synonyms.items():
            for name in [category, *names]:
                self._add(name, category)
        for phrase, category in (phrases or {}).items():
            if category is not None and category not in synonyms:
                raise ValueError(f"ObjectWords: phrase {phrase!r} names unknown category {category!r}")
            self._add(phrase, category)
        self._dropped_with = {word: other for word, other in (dropped_with or {}).items()}
        self._longest = max((len(phrase) for phrase in self._phrases), default=1)

    def _add(self, phrase: str, category: Optional[str]) -> None:
        words = tuple(phrase.lower().split())
        if not words:
            return
        for last in plural_forms(words[-1]):
            self._phrases[words[:-1] + (last,)] = category

    @classmethod
    def load(cls, path) -> "ObjectWords":
        """From a CHAIR-style synonyms file: ``category, synonym, synonym ...`` per line; ``#`` starts a comment."""
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"synonyms file {path} does not exist") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"synonyms file {path} is not text ({error})") from None
        synonyms: Dict[str, List[str]] = {}
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("#"):
                continue
            names = [name.strip().lower() for name in line.split(",") if name.strip()]
            if not names:
                continue
            if names[0] in synonyms:
                raise ValueError(f"synonyms file {path}, line {number}: category {names[0]!r} is listed twice")
            synonyms[names[0]] = names[1:]
        if not synonyms:
            raise ValueError(f"synonyms file {path} names no categories")
        return cls(synonyms)

    @classmethod
    def coco(cls) -> "ObjectWords":
        """CHAIR's reading of COCO captions: its synonyms table for the 80 categories (shipped with capxai), its
        double words, its "baby"/"adult" animal words, "passenger" vehicles, and "seat" dropped beside "toilet"."""
        table = cls.load(RESOURCES / "coco_synonyms.txt")
        known = {name: category for category, names in table.synonyms.items() for name in [category, *names]}
        phrases: Dict[str, Optional[str]] = {phrase: None for phrase in CHAIR_NO_OBJECT}
        for animal in CHAIR_ANIMALS:
            for age in ("baby", "adult"):
                phrases[f"{age} {animal}"] = known.get(animal)
        for vehicle in CHAIR_PASSENGER_VEHICLES:
            phrases[f"passenger {vehicle}"] = known[vehicle]
        phrases.update(CHAIR_ALIASES)
        return cls(table.synonyms, phrases, dropped_with={"seat": "toilet"})

    def find(self, words: Sequence[str]) -> List[Mention]:
        """The object mentions in a caption given as words, longest phrase first, left to right."""
        words = [word.lower() for word in words]
        found, position = [], 0
        while position < len(words):
            for size in range(min(self._longest, len(words) - position), 0, -1):
                phrase = tuple(words[position:position + size])
                if phrase in self._phrases:
                    category = self._phrases[phrase]
                    if category is not None and not self._dropped(phrase, words):
                        found.append(Mention(position, position + size, category))
                    position += size
                    break
            else:
                position += 1
        return found

    def _dropped(self, phrase: Tuple[str, ...], words: Sequence[str]) -> bool:
        if len(phrase) != 1:
            return False
        for word, other in self._dropped_with.items():
            if phrase[0] in plural_forms(word) and any(w in plural_forms(other) for w in words):
                return True
        return False

    def mentions(self, caption: str) -> List[str]:
        """The categories a caption (a string) names, in order, once per mention."""
        return [mention.category for mention in self.find(caption_words(caption))]


def frequent_words(dataset: str) -> List[str]:
    """The paper's frequent object words of ``"coco"`` or ``"flickr30k"`` (Sun et al. 2022, shipped with capxai)."""
    table = json.loads((RESOURCES / "frequent_words.json").read_text())
    if dataset not in ("coco", "flickr30k"):
        raise ValueError(f"frequent_words: the paper gives lists for 'coco' and 'flickr30k', got {dataset!r}")
    return list(table[dataset])
