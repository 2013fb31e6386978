"""One definition of every option (issue 37): each ``capxai`` option is a field of a settings dataclass, whose
default and choices argparse shows, and which the command turns back into that dataclass."""
import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from capxai import cli, demo
from capxai.data.scenes import SceneConfig
from capxai.options import POSITIVE, add_options, default_of, from_args, option, options_of
from capxai.train import FinetuneConfig, TrainConfig

CLI_SOURCE = Path(cli.__file__)


def _commands(parser, prefix=()):
    """``(command words, subparser)`` of every leaf command of ``parser``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, prefix + (name,))
    return found or [(prefix, parser)]


def _own_actions(parser):
    return [action for action in parser._actions
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))]


def _resolved(value):
    return list(value()) if callable(value) else (None if value is None else list(value))


ROOT = cli.build_parser()
COMMANDS = _commands(ROOT)
DEMO = demo.build_parser()


def test_every_command_is_found():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert names == {"data scenes", "data coco", "train", "finetune", "finetune-table", "evaluate", "explain",
                     "report"}


@pytest.mark.parametrize("words,parser", COMMANDS, ids=[" ".join(words) for words, _ in COMMANDS])
def test_every_option_default_and_choice_comes_from_its_dataclass(words, parser):
    for action in _own_actions(parser) + _own_actions(ROOT):
        origin = getattr(action, "settings_field", None)
        assert origin is not None, f"capxai {' '.join(words)} {action.option_strings or action.dest}: an option " \
            "not made from a settings dataclass (capxai.options.add_options)"
        settings, name = origin
        field, spec = options_of(settings)[name]
        assert action.dest == name
        if not action.required:
            assert action.default == default_of(field), (words, name)
        assert action.choices == _resolved(spec.choices), (words, name)


def test_the_demo_options_come_from_dataclasses_too():
    for action in _own_actions(DEMO):
        settings, name = action.settings_field
        field, spec = options_of(settings)[name]
        assert action.default == default_of(field) and action.choices == _resolved(spec.choices), name


def test_cli_source_types_no_default_or_choices():
    """The static half: no ``add_argument`` in cli.py or demo.py (an option typed there would slip past the
    dataclasses)."""
    typed = []
    for node in ast.walk(ast.parse(CLI_SOURCE.read_text() + Path(demo.__file__).read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            typed += [f"line {node.lineno}: {kw.arg}=" for kw in node.keywords if kw.arg in ("default", "choices")]
            typed.append(f"line {node.lineno}: add_argument (use capxai.options.add_options)")
    assert typed == []


def _parse(*argv):
    return ROOT.parse_args([str(a) for a in argv])


def test_the_command_line_defaults_are_the_api_defaults(tmp_path):
    split = tmp_path / "split.json"
    split.write_text("{}")
    common = ["--split-file", split, "--image-root", tmp_path, "--out", tmp_path / "out"]
    assert from_args(TrainConfig, _parse("train", *common)) == TrainConfig()
    assert from_args(FinetuneConfig, _parse("finetune", "--checkpoint", split, "--method", "lrp", *common)) == \
        FinetuneConfig(method="lrp")
    assert from_args(SceneConfig, _parse("data", "scenes", "--out", tmp_path / "s")) == SceneConfig()


def test_values_reach_the_dataclass_converted(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    args = _parse("train", "--split-file", weights, "--image-root", tmp_path, "--out", tmp_path / "o",
                  "--freeze-encoder", "--encoder-weights", weights, "--hidden", "64", "--model", "transformer",
                  "--heads", "4")
    config = from_args(TrainConfig, args)
    assert config.finetune_encoder is False and config.encoder_weights == str(weights)  # a str, as checkpoints store
    assert (config.hidden, config.attention_dim, config.heads, config.model) == (64, 64, 4, "transformer")


def test_a_dataclass_check_names_the_options_it_concerns():
    args = argparse.Namespace(model="multihead", hidden=8, heads=3)
    with pytest.raises(ValueError, match=r"divisible by heads.*\(options --model, --hidden, --heads\)"):
        from_args(TrainConfig, args)


@dataclasses.dataclass
class _Demo:
    count: int = option(3, type=POSITIVE, help="how many")
    name: str = option("a", choices=lambda: ["a", "b"])
    kept: bool = option(True, flag="--drop")
    api_only: float = 1.5


def test_add_options_from_a_dataclass():
    parser = argparse.ArgumentParser()
    add_options(parser, _Demo, required=["count"])
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --count made required for this parser
    args = parser.parse_args(["--count", "2", "--drop"])
    assert from_args(_Demo, args) == _Demo(count=2, name="a", kept=False)
    assert not any(action.dest == "api_only" for action in parser._actions)
    with pytest.raises(ValueError, match="no command-line field 'api_only'"):
        add_options(argparse.ArgumentParser(), _Demo, only=["api_only"])


@pytest.mark.parametrize("words,parser", COMMANDS, ids=[" ".join(words) for words, _ in COMMANDS])
def test_the_help_says_each_default(words, parser):
    for action in _own_actions(parser):
        if action.default is None or isinstance(action.default, bool) or isinstance(action, argparse._CountAction):
            continue
        assert "default" in action.help, (words, action.dest)
        if "(default " in action.help or action.help.startswith("default "):
            assert f"default {action.default}" in action.help, (words, action.dest, action.help)
