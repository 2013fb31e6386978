"""Registries: one per kind of choice (explanation methods, Zennit composites, encoders, captioner kinds). The CLI's
choices and help, the demo and the report read them, so adding a method or a captioner is one entry.

A user's own package adds entries in two ways, both read the first time a registry is asked for its names:
an entry point in the group ``capxai.<kind>`` (e.g. ``capxai.methods``) whose object is loaded (importing the
module that registers is enough), or a module named in the environment variable ``CAPXAI_PLUGINS`` (comma
separated), imported. Imported by any layer; imports nothing of capxai.
"""
import dataclasses
import importlib
import importlib.metadata
import os
from collections.abc import Mapping
from typing import Dict, Generic, Iterator, List, Optional, TypeVar

T = TypeVar("T")
PLUGINS_VARIABLE = "CAPXAI_PLUGINS"
_plugins_loaded: Dict[str, bool] = {}


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    help: str


class UnknownChoice(KeyError, ValueError):
    """A name no registry entry has: a KeyError (the Mapping protocol) and a ValueError (bad input), whose message
    names the choices."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind, in registration order: a read-only ``Mapping`` from name to value
    (``registry[name]``, ``registry.items()`` gives ``(name, value)`` pairs, ``registry.get(name)`` is None for an
    unknown name) with ``register``, and each entry's help (``registry.help(name)``, ``registry.entries()``).

    Example:
        >>> METHODS.register("my-method", MyExplainer, help="what it shows")
        >>> @CAPTIONERS.register("my-captioner", help="...")
        ... def build(config, vocab_size, feature_dim): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Entry[T]] = {}

    def register(self, name: str, value: Optional[T] = None, *, help: str = "", replace: bool = False):
        """Adds ``value`` under ``name`` (as a decorator when ``value`` is omitted); an existing name is refused
        unless ``replace``."""
        if not isinstance(name, str) or not name or name != name.strip() or "," in name:
            raise ValueError(f"capxai {self.kind}: a name must be a non-empty string without commas, got {name!r}")

        def add(item: T) -> T:
            if name in self._entries and not replace:
                raise ValueError(f"capxai {self.kind}: {name!r} is already registered (replace=True replaces it)")
            self._entries[name] = Entry(name, item, help)
            return item

        return add if value is None else add(value)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load_plugins(self) -> None:
        key = f"{self.kind}:{os.environ.get(PLUGINS_VARIABLE, '')}"
        if _plugins_loaded.get(key):
            return
        _plugins_loaded[key] = True
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ImportError(f"{PLUGINS_VARIABLE} names {module!r}, which does not import ({error})") from None
        for entry_point in importlib.metadata.entry_points(group=f"capxai.{self.kind}"):
            entry_point.load()

    def names(self) -> List[str]:
        self._load_plugins()
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        """The value registered under ``name``; an UnknownChoice (KeyError and ValueError) naming the choices for an
        unknown one."""
        self._load_plugins()
        if not isinstance(name, str) or name not in self._entries:
            raise UnknownChoice(f"capxai: unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} "
                                f"{name!r}; choose one of {self.names()}")
        return self._entries[name].value

    def help(self, name: str) -> str:
        return self._entries[name].help if name in self._entries else ""

    def describe(self) -> str:
        """``name: help`` lines, for a command's help text."""
        return "; ".join(f"{name}: {self.help(name)}" if self.help(name) else name for name in self.names())

    def entries(self) -> List[Entry[T]]:
        """Every entry with its name, value and help, in registration order."""
        self._load_plugins()
        return list(self._entries.values())

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

