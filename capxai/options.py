"""One definition of every command option: a settings dataclass's fields carry their command-line form.

A field made with :func:`option` holds its default (the dataclass's, which is what the Python API takes) and, in its
metadata, how ``capxai`` reads it: the flag, the argument type that checks the text, the choices (a list, or a
function that reads a registry when the parser is built), the help. :func:`add_options` turns the fields of a
dataclass into argparse options and :func:`from_args` turns the parsed values back into the dataclass, so no
default or choice list is written a second time in ``capxai.cli``. Fields made with plain ``dataclasses.field`` (or
a bare default) stay API-only.

The argument types (``int_at_least``, ``existing_file``...) check values as they are parsed and raise
``argparse.ArgumentTypeError``, which argparse reports naming the option. This module imports nothing of capxai, so
every layer may define its settings with it.
"""
import argparse
import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

__all__ = ["Option", "option", "add_options", "from_args", "values_of", "options_of", "default_of", "POSITIVE", "COUNT",
           "int_at_least", "float_between",
           "existing_file", "existing_folder", "output_folder", "output_file", "guided_decoding_setting",
           "contrastive_decoding_setting"]

_KEY = "capxai_option"
Text = Union[str, Callable[[], str]]


@dataclasses.dataclass(frozen=True)
class Option:
    """How a settings field reads on the command line (see :func:`option` for the meaning of each attribute)."""

    help: Text = ""
    flag: Optional[str] = None
    type: Optional[Callable[[str], Any]] = None
    choices: Union[None, Sequence, Callable[[], Sequence]] = None
    metavar: Union[None, str, Tuple[str, ...]] = None
    nargs: Union[None, int, str] = None
    action: Optional[str] = None
    required: bool = False
    positional: bool = False
    to_field: Optional[Callable[[Any], Any]] = None

    def flag_of(self, name: str) -> str:
        return name if self.positional else (self.flag or "--" + name.replace("_", "-"))


def option(default: Any = dataclasses.MISSING, *, help: Text = "", flag: Optional[str] = None,
           type: Optional[Callable[[str], Any]] = None, choices=None, metavar=None, nargs=None,
           action: Optional[str] = None, required: bool = False, positional: bool = False,
           to_field: Optional[Callable[[Any], Any]] = None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field that is also a command-line option.

    Args:
        default / default_factory: the field's default, and the option's.
        help: the option's help, or a function returning it (read when the parser is built: registries' help).
        flag: the option string (default ``--field-name``).
        type: an argparse type that checks and converts the text (default: the text itself).
        choices: the allowed values, or a function returning them (read when the parser is built).
        metavar, nargs, required: as argparse's.
        action: argparse's action; a ``bool`` field defaults to ``store_true`` when its default is False and
            ``store_false`` when it is True (then give ``flag``, e.g. ``--no-ablation``).
        positional: a positional argument named after the field.
        to_field: what :func:`from_args` applies to a parsed value that is not None (e.g. ``str`` on a ``Path``).
    """
    metadata = {_KEY: Option(help=help, flag=flag, type=type, choices=choices, metavar=metavar, nargs=nargs,
                             action=action, required=required, positional=positional, to_field=to_field)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options_of(settings) -> Dict[str, Tuple[dataclasses.Field, Option]]:
    """The command-line fields of a settings dataclass (class or instance): ``{name: (field, Option)}``."""
    return {field.name: (field, field.metadata[_KEY]) for field in dataclasses.fields(settings)
            if _KEY in field.metadata}


def default_of(field: dataclasses.Field) -> Any:
    """A field's default value (its factory called), or None for a field without one."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _resolved(value):
    return value() if callable(value) else value


def add_options(parser, settings: type, only: Optional[Iterable[str]] = None, exclude: Iterable[str] = (),
                help: Optional[Dict[str, str]] = None, type: Optional[Dict[str, Callable]] = None,
                required: Iterable[str] = ()) -> None:
    """Adds the command-line fields of the dataclass ``settings`` to ``parser`` (a parser or an argument group):
    all of them, or those named in ``only``, less ``exclude``. ``help`` / ``type`` replace a field's help or
    argument type for this command (a shared option read with another wording or check), ``required`` names fields
    this command cannot do without; defaults and choices are always the field's. Each argparse action made records
    its field as ``action.settings_field = (settings, name)`` (tests check with it that every option of ``capxai``
    comes from a dataclass)."""
    fields = options_of(settings)
    names = list(fields) if only is None else list(only)
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise ValueError(f"{settings.__name__} has no command-line field {unknown[0]!r}; it has {sorted(fields)}")
    for name in names:
        if name in set(exclude):
            continue
        field, spec = fields[name]
        must = spec.required or name in set(required)
        default = default_of(field)
        text = (help or {}).get(name, _resolved(spec.help))
        shown = default is not None and not isinstance(default, bool) and spec.action != "count"
        if shown and "default" not in (text or ""):  # the field's default, said once, where the user looks for it
            text = f"{text} (default {default})" if text else f"default {default}"
        kwargs: Dict[str, Any] = {"help": text or None}
        action = spec.action or (("store_false" if default else "store_true") if field.type in (bool, "bool")
                                 else None)
        if action in ("store_true", "store_false", "count"):
            kwargs.update(action=action, default=default)
        else:
            if action is not None:
                kwargs["action"] = action
            argument_type = (type or {}).get(name, spec.type)
            if argument_type is not None:
                kwargs["type"] = argument_type
            for key in ("metavar", "nargs"):
                if getattr(spec, key) is not None:
                    kwargs[key] = getattr(spec, key)
            if spec.metavar is None and spec.choices is None and not spec.positional:
                kwargs["metavar"] = spec.flag_of(name).lstrip("-").upper().replace("-", "_")
            if spec.choices is not None:
                kwargs["choices"] = list(_resolved(spec.choices))
            if not must:
                kwargs["default"] = default
        if spec.positional:
            action_made = parser.add_argument(name, **kwargs)
        else:
            if must:
                kwargs["required"] = True
            action_made = parser.add_argument(spec.flag_of(name), dest=name, **kwargs)
        action_made.settings_field = (settings, name)


def values_of(settings: type, args: argparse.Namespace, only: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """The parsed values of ``settings``'s command-line fields found in ``args`` (``only``: those named), each
    passed through its ``to_field``."""
    values = {}
    for name, (_, spec) in options_of(settings).items():
        if (only is not None and name not in only) or not hasattr(args, name):
            continue
        value = getattr(args, name)
        values[name] = spec.to_field(value) if spec.to_field is not None and value is not None else value
    return values


def from_args(settings: type, args: argparse.Namespace, only: Optional[Iterable[str]] = None, **given):
    """The dataclass ``settings`` made from parsed command-line values (its command-line fields present in
    ``args``, or those named in ``only``) and ``given`` (fields the command computes itself; they win).

    A ``ValueError`` of the dataclass's own checks (values fine alone, wrong together: heads that do not divide
    hidden) comes back with the options of the fields it names appended, so the user knows which flags to change."""
    values = values_of(settings, args, only)
    try:
        return settings(**{**values, **given})
    except ValueError as error:
        named = [spec.flag_of(name) for name, (_, spec) in options_of(settings).items()
                 if name in values and re.search(rf"\b{name}\b", str(error))]
        if not named:
            raise
        raise ValueError(f"{error} (options {', '.join(named)})") from None


# -- argument types: each raises ArgumentTypeError, which argparse reports with the option's name ----------------
def _number(kind: Callable, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_at_least(lowest: int) -> Callable[[str], int]:
    """An integer ``>= lowest``."""

    def parse(text: str) -> int:
        value = _number(int, text)
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {text!r}")
        return value

    return parse


POSITIVE, COUNT = int_at_least(1), int_at_least(0)


def float_between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A finite float in the interval ``low .. high`` (``*_open``: the end itself excluded)."""

    def parse(text: str) -> float:
        value = _number(float, text)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text!r}")
        return value

    return parse


def existing_file(text: str) -> Path:
    """A path to a file that exists (not a folder)."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("must be a file path, got ''")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def existing_folder(text: str) -> Path:
    """A path to a folder that exists."""
    path = Path(text)
    if not text or not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder" if path.exists() else
                                         f"{text!r} does not exist")
    return path


def output_folder(text: str) -> Path:
    """Where a command writes its folder: not an existing file, and not inside one."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("must be a folder path, got ''")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    for parent in path.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{parent} is a file, so {text} cannot be a folder")
    return path


def output_file(text: str) -> Path:
    """Where a command writes one file: not an existing folder, in a folder that can exist."""
    path = Path(text)
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name" if text else "must be a file "
                                         "path, got ''")
    output_folder(str(path.parent))
    return path


def guided_decoding_setting(text: str) -> Union[Tuple[float, float], str]:
    """``THRESHOLD:PENALTY`` of ``--guided-decoding``: a threshold in (0, 1] and a penalty >= 0 (nats); or ``auto``
    (chosen on the validation split: :func:`capxai.evaluate.validation_choice.choose_guided_decoding`)."""
    if text.strip().lower() == "auto":
        return "auto"
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be THRESHOLD:PENALTY (e.g. 0.5:2), got {text!r}")
    threshold = float_between(0, 1, low_open=True)(parts[0])
    penalty = float_between(0, 1000)(parts[1])
    return threshold, penalty


def contrastive_decoding_setting(text: str) -> Tuple[float, float]:
    """``ALPHA:BETA`` of ``--vcd``: the contrast's weight alpha >= 0 and the plausibility cut beta in [0, 1]."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be ALPHA:BETA (e.g. 1:0.1, VCD's), got {text!r}")
    return float_between(0, 100)(parts[0]), float_between(0, 1)(parts[1])
