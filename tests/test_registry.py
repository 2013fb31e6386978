"""capxai.registry.Registry is a read-only Mapping from name to value, as a Python user expects (issue 37), with
each entry's help and a refusal of unknown names that lists the choices."""
from collections.abc import Mapping

import pytest

from capxai import explain
from capxai.models import CAPTIONERS, ENCODERS
from capxai.registry import Registry, UnknownChoice


@pytest.fixture
def colours():
    registry = Registry("colours")
    registry.register("red", 1, help="warm")
    registry.register("blue", 2)
    return registry


def test_a_registry_is_a_mapping_of_names_to_values(colours):
    assert isinstance(colours, Mapping)
    assert list(colours) == ["red", "blue"] and len(colours) == 2
    assert list(colours.items()) == [("red", 1), ("blue", 2)]
    assert list(colours.values()) == [1, 2] and list(colours.keys()) == ["red", "blue"]
    assert dict(colours) == {"red": 1, "blue": 2}
    assert colours.get("green") is None and colours.get("green", 0) == 0 and colours.get("red") == 1
    assert "red" in colours and "green" not in colours and 3 not in colours


def test_an_unknown_name_is_refused_with_the_choices(colours):
    with pytest.raises(UnknownChoice, match=r"unknown colour 'green'; choose one of \['red', 'blue'\]") as caught:
        colours["green"]
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)


def test_help_stays_reachable(colours):
    assert colours.help("red") == "warm" and colours.help("blue") == "" and colours.help("green") == ""
    assert [(entry.name, entry.value, entry.help) for entry in colours.entries()] == [("red", 1, "warm"),
                                                                                      ("blue", 2, "")]
    assert colours.describe() == "red: warm; blue"


def test_names_are_checked_and_not_replaced_unless_asked(colours):
    with pytest.raises(ValueError, match="already registered"):
        colours.register("red", 3)
    colours.register("red", 3, replace=True)
    assert colours["red"] == 3
    for bad in ("", " red", "a,b"):
        with pytest.raises(ValueError, match="non-empty string without commas"):
            colours.register(bad, 4)


@pytest.mark.parametrize("registry", [explain.METHODS, CAPTIONERS, ENCODERS], ids=lambda r: r.kind)
def test_the_product_registries_iterate_as_mappings(registry):
    pairs = list(registry.items())
    assert pairs and all(isinstance(name, str) and value is registry[name] for name, value in pairs)
