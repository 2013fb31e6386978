"""Vocabulary: frequency cut, special tokens, encode/decode round trip, save/load, clear errors."""
import pytest

from capxai.data.vocabulary import SPECIALS, Vocabulary

CAPTIONS = [["a", "red", "ball"], ["a", "blue", "ball"], ["two", "balls"], ["a", "ball"], ["a", "box"]]


def test_build_keeps_frequent_words_in_a_stable_order():
    vocabulary = Vocabulary.build(CAPTIONS, min_count=2)
    assert vocabulary.words == list(SPECIALS) + ["a", "ball"]
    assert Vocabulary.build(list(reversed(CAPTIONS)), min_count=1).words == Vocabulary.build(CAPTIONS, 1).words


def test_round_trip_and_unknown_words(tmp_path):
    vocabulary = Vocabulary.build(CAPTIONS, min_count=1)
    encoded = vocabulary.encode(["a", "red", "ball"], max_length=16)
    assert encoded[0] == vocabulary.start and encoded[-1] == vocabulary.end
    assert vocabulary.decode(encoded + [vocabulary.pad] * 3) == ["a", "red", "ball"]
    assert vocabulary.decode(vocabulary.encode(["a", "green", "ball"], 16)) == ["a", "<unk>", "ball"]
    assert vocabulary.encode(["a", "red", "ball"], max_length=2)[1:-1] == encoded[1:3]
    loaded = Vocabulary.load(vocabulary.save(tmp_path / "vocab.json"))
    assert loaded.words == vocabulary.words


def test_bad_input_is_named(tmp_path):
    vocabulary = Vocabulary.build(CAPTIONS, min_count=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocabulary.decode([len(vocabulary)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Vocabulary.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a capxai vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="first words must be"):
        Vocabulary(["a", "b"])
