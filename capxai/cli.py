"""``capxai``: the command line: ``capxai data scenes|coco``, ``train``, ``finetune``, ``finetune-table``,
``evaluate``, ``explain``, ``report``. The commands that compute (train, finetune, evaluate, explain) share one group
of run options (``--device``, ``--workers``, ``--dist-backend``; ``--precision`` for training), turned once into a
:class:`capxai.runtime.RunSettings` and handed down. Several processes: ``torchrun --nproc_per_node N -m capxai
train|finetune|evaluate|explain ...`` (one GPU each with NCCL, or gloo on the CPU)."""
import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from capxai.cli_checks import CommandError, Parser, run_command
from capxai.commands.settings import (CocoSplitOptions, DataOptions, EncoderRulesOptions, ExplainOptions,
                                     GlobalOptions, ModelOptions, OutputOptions, ReportOptions, TableOptions)
from capxai.data import scenes
from capxai.options import add_options, from_args, output_file
from capxai.runtime import RunOptions


def run_options(precision: bool) -> Parser:
    """The run options every computing command takes (argparse parent); ``precision``: training's autocast too."""
    parent, group = _parent("run options")
    add_options(group, RunOptions, exclude=() if precision else ("precision",))
    return parent


def _parent(title: str) -> tuple[Parser, argparse._ArgumentGroup]:
    """An argparse parent parser holding one titled option group (shared by several commands)."""
    parent = Parser(add_help=False)
    return parent, parent.add_argument_group(title)


def data_options(required: bool, split_file_help: Optional[str] = None, image_root_help: Optional[str] = None) \
        -> Parser:
    """``--split-file`` and ``--image-root``: where a command reads its images and captions."""
    parent, group = _parent("data")
    helps = {name: text for name, text in (("split_file", split_file_help), ("image_root", image_root_help)) if text}
    add_options(group, DataOptions, help=helps, required=("split_file", "image_root") if required else ())
    return parent


def checkpoint_option(help_text: str, hf_model_help: Optional[str] = None) -> Parser:
    """``--checkpoint``: the trained model a command reads; with ``hf_model_help``, or ``--hf-model DIR`` (a local
    Hugging Face checkpoint folder), one of the two."""
    parent, group = _parent("model")
    if hf_model_help is None:
        add_options(group, ModelOptions, only=["checkpoint"], help={"checkpoint": help_text},
                    required=["checkpoint"])
    else:
        add_options(group.add_mutually_exclusive_group(required=True), ModelOptions,
                    help={"checkpoint": help_text, "hf_model": hf_model_help})
    return parent


def output_options(out_help: str, overwrite_help: str, out_type=None) -> Parser:
    """``--out`` (required) and ``--overwrite``: where a command writes, and whether it may replace what capxai
    wrote there before (files capxai did not write are never replaced)."""
    parent, group = _parent("output")
    add_options(group, OutputOptions, help={"out": out_help, "overwrite": overwrite_help + "; given twice, also "
                                            "files you changed after capxai wrote them (refused otherwise)"},
                type={"out": out_type} if out_type else None)
    return parent


def composite_option(help_prefix: str) -> Parser:
    """``--composite``: the LRP rules of the encoder, read from the registry of composites."""
    from capxai.explain import COMPOSITES
    parent, group = _parent("encoder rules")
    add_options(group, EncoderRulesOptions, help={"composite": help_prefix + COMPOSITES.describe()})
    return parent


def _run_of(args):
    """The checked run settings of a command's options (a bad value stops it before any work)."""
    return from_args(RunOptions, args).settings()


def _command_parser(commands, name: str, help: str, parents: Iterable[Parser], settings: type) -> Parser:
    """A subcommand whose own options are the command-line fields of ``settings`` (a dataclass)."""
    parser = commands.add_parser(name, help=help, parents=list(parents))
    add_options(parser, settings)
    return parser


def _data_scenes(args) -> int:
    config = from_args(scenes.SceneConfig, args)
    out = scenes.generate(args.out, config, overwrite=args.overwrite)
    print(f"wrote {config.train}/{config.val}/{config.test} train/val/test scenes to {out}")
    return 0


def _data_coco(args) -> int:
    from capxai.data.coco import write_karpathy_from_coco

    names = [split for split, _, _ in args.split]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CommandError(f"--split {repeated[0]} is given {names.count(repeated[0])} times; give each split once "
                           "(a split's captions in several files: merge them first)")
    for split, captions, _ in args.split:
        if not Path(captions).is_file():
            raise CommandError(f"--split {split}: caption file {captions} does not exist or is not a file")
    splits = {split: (Path(captions), folder) for split, captions, folder in args.split}
    out = write_karpathy_from_coco(args.out, splits, args.dataset, overwrite=args.overwrite)
    print(f"wrote {out} ({', '.join(splits)})")
    return 0


def _train(args) -> int:
    from capxai.train import TrainConfig, train

    run = _run_of(args)
    config = from_args(TrainConfig, args)
    history = train(config, args.split_file, args.image_root, args.out, overwrite=args.overwrite, run=run)
    if run.rank != 0:
        return 0
    print(f"best validation CIDEr {history['best_cider']:.3f} at epoch {history['best_epoch'] + 1}; "
          f"checkpoints in {args.out}")
    return 0


def _finetune(args) -> int:
    from capxai.train import FinetuneConfig, finetune

    run = _run_of(args)
    config = from_args(FinetuneConfig, args)
    history = finetune(config, args.checkpoint, args.split_file, args.image_root, args.out, overwrite=args.overwrite,
                       run=run)
    if run.rank != 0:
        return 0
    last = history["epochs"][-1]
    print(f"{args.method} fine-tuning ({args.objective}): validation CIDEr {last['val_cider']:.3f} after epoch "
          f"{last['epoch'] + 1}; checkpoints in {args.out}")
    return 0


def _finetune_table(args) -> int:
    from capxai._io import atomic_write_json, atomic_write_text
    from capxai.evaluate.comparison import finetune_table, table_markdown
    from capxai.evaluate.run import load_evaluation
    from capxai.outputs import OutputFolder

    output = OutputFolder(args.out, "finetune-table")
    paths = [Path(args.out) / "finetune_table.json", Path(args.out) / "finetune_table.md"]
    output.check_writable(paths, args.overwrite, group="table")  # before reading and bootstrapping anything
    rows, starts = [], {}
    for spec in args.row:
        label, _, folders = spec.partition("=")
        captioner, _, variant = label.partition("/")
        if not (captioner and variant and folders):
            raise CommandError(f"--row {spec!r} must read CAPTIONER/VARIANT=FOLDER[,FOLDER...][;FOLDER,...] (one "
                               "evaluation folder per seed, ';' between start models), e.g. "
                               "adaptive/lrp-xe=runs/e1,runs/e2")
        evaluations, row_starts = [], []
        for start, group in enumerate(folders.split(";")):
            for folder in group.split(","):
                if not Path(folder).is_dir():
                    raise CommandError(f"--row {label}: evaluation folder {folder} does not exist")
                evaluations.append((folder, load_evaluation(folder, args.split, args.beam_size)))
                row_starts.append(start)
        if starts.setdefault(captioner, row_starts) != row_starts:
            raise CommandError(f"--row {label}: its starts and seeds ({folders}) are not laid out as the other rows "
                               f"of {captioner}; every row of a captioner pairs start by start, seed by seed")
        rows.append((captioner, variant, evaluations))
    table = finetune_table(rows, starts)
    markdown = table_markdown(table)
    output.remove_group("table")
    written = [atomic_write_json(paths[0], {**table, "split": args.split, "beam_size": args.beam_size}),
               atomic_write_text(paths[1], markdown)]
    output.record(written, "table")
    print(markdown)
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _guided_decoding_on_validation(args, model, vocabulary, config, synonyms, run):
    """``--guided-decoding auto``: the setting chosen on the validation split (its instances beside the split file;
    :func:`capxai.evaluate.validation_choice.choose_guided_decoding`), or a one-line refusal naming why."""
    from capxai.data.captions import open_split
    from capxai.evaluate.hallucination import load_hallucination_data
    from capxai.evaluate.validation_choice import SPLIT, choose_guided_decoding, dataset_ids

    instances = args.split_file.parent / "annotations" / f"instances_{SPLIT}.json"
    if not instances.is_file():
        raise CommandError(f"--guided-decoding auto scores CHAIR-i on the validation split and needs its instances "
                           f"json; {instances} does not exist")
    dataset = open_split(args.split_file, args.image_root, SPLIT, vocabulary, config.max_length, config.image_size,
                         progress=True)
    if len(dataset) == 0:
        raise CommandError(f"--guided-decoding auto chooses on the validation split, and {args.split_file} has no "
                           "'val' images")
    hallucination = load_hallucination_data(instances, synonyms, args.split_file, dataset_ids(dataset))
    setting, record = choose_guided_decoding(model, dataset, hallucination, args.max_length or config.max_length,
                                             run, progress=True)
    if setting is None:
        raise CommandError(f"--guided-decoding auto: {record['why']}; guided decoding does not help this model")
    print(f"--guided-decoding auto: {record['why']}")
    return setting, record


def _evaluate(args) -> int:
    from capxai._optional import require
    from capxai.data.captions import image_id_of, open_split
    from capxai.evaluate.hallucination import load_hallucination_data
    from capxai.evaluate.explanations import ExplanationSettings, tables_markdown
    from capxai.evaluate.run import check_outputs, evaluate_split
    from capxai.models import load_trained
    from capxai._io import file_sha256

    require("pycocoevalcap", "capxai evaluate (its caption metrics)")  # before the model captions a whole split
    run = _run_of(args)
    explanations = None
    if args.limit is not None and args.explanations is None:
        raise CommandError("--explain-limit needs --explanations "
                           "(it limits the images whose explanations are measured)")
    if args.guided_decoding == "auto" and args.split == "val":
        raise CommandError("--guided-decoding auto chooses its setting on the validation split; evaluate another "
                           "split with it (the test split), or give THRESHOLD:PENALTY")
    if args.vcd is not None and (args.guided_decoding is not None or args.explanations is not None):
        raise CommandError("--vcd is not combined with --guided-decoding or --explanations; evaluate them apart")
    if args.explanations is not None:  # checked before any work
        explanations = from_args(ExplanationSettings, args, methods=methods_of_option(args.explanations),
                                 composite=args.composite)
    output = check_outputs(args.out, args.split, args.beam_size, args.overwrite)
    model, vocabulary, config = load_trained(args.checkpoint, device=run.device)
    run.join()
    dataset = open_split(args.split_file, args.image_root, args.split, vocabulary, config.max_length,
                         config.image_size, progress=True)
    instances = args.instances or args.split_file.parent / "annotations" / f"instances_{args.split}.json"
    beside = args.split_file.parent / "synonyms.txt"
    synonyms = args.synonyms or (beside if beside.is_file() else None)  # None: CHAIR's table for COCO
    hallucination = None
    if args.instances or args.synonyms or instances.is_file() or explanations is not None:
        if not instances.is_file():
            raise CommandError(f"--instances {instances} does not exist (CHAIR and the explanation metrics need the "
                               "split's COCO instances json)")
        ids = [image_id_of(entry, position) for position, entry in enumerate(dataset.entries)]
        hallucination = load_hallucination_data(instances, synonyms, args.split_file, ids)
    stamp = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint), **run.describe()}
    guidance = None
    if args.guided_decoding is not None:
        from capxai.evaluate.objects import ObjectWords
        from capxai.explain.guided_decoding import VisualShareGuidance, object_word_mask

        objects = hallucination.objects if hallucination is not None else (
            ObjectWords.load(synonyms) if synonyms else ObjectWords.coco())
        choice = None
        if args.guided_decoding == "auto":
            args.guided_decoding, choice = _guided_decoding_on_validation(args, model, vocabulary, config, synonyms,
                                                                          run)
        threshold, penalty = args.guided_decoding
        try:
            guidance = VisualShareGuidance(model.captioner, object_word_mask(vocabulary.words, objects), threshold,
                                           penalty)
        except TypeError as error:
            raise CommandError(f"--guided-decoding: {error}") from None
        stamp["guided_decoding"] = {"threshold": threshold, "penalty": penalty,
                                    **({"choice": choice} if choice is not None else {})}
    contrastive = None
    if args.vcd is not None:
        from capxai.models.contrastive_decoding import VCDSettings

        contrastive = VCDSettings(alpha=args.vcd[0], beta=args.vcd[1])
        stamp["vcd"] = dataclasses.asdict(contrastive)
    report = evaluate_split(model, dataset, output, args.beam_size, args.max_length or config.max_length,
                            hallucination, stamp, explanations=explanations, run=run, guidance=guidance,
                            contrastive=contrastive)
    if run.rank != 0:
        return 0
    summary = ", ".join(f"{name} {value:.3f}" for name, value in report["overall"].items())
    print(f"{args.split} (beam {args.beam_size}, {len(dataset)} images): {summary}")
    if "chair" in report:
        chair = report["chair"]["overall"]
        print(f"CHAIR-i {chair['CHAIRi']:.3f} {_interval(chair['CHAIRi_ci'])}, CHAIR-s {chair['CHAIRs']:.3f} "
              f"{_interval(chair['CHAIRs_ci'])} ({chair['captions']} captions, {chair['mentions']} object mentions)")
    if "frequent_words" in report:
        scores = report["frequent_words"]["overall"]
        print("frequent words: " + ", ".join(f"{name} {entry['value']:.3f} {_interval(entry['ci'])}"
                                               for name, entry in scores.items() if entry["value"] is not None))
    if "probes" in report:
        probes = report["probes"]
        pairs = ", ".join(f"{pair} {value['rate']:.2f}" for pair, value in probes["pairs"].items())
        control = "" if probes.get("control_rate") is None else (
            f"; images showing neither object name the partner {probes['control_rate']:.3f} of the time")
        print(f"probe images naming the absent partner: {probes['rate']:.3f} {_interval(probes['rate_ci'])} of "
              f"{probes['images']} ({pairs}){control}")
    if "explanations" in report:
        print(tables_markdown(report["explanations"], "Explanations"))
    print(f"wrote {', '.join(str(path) for path in report['paths'])}")
    return 0


def _interval(ci) -> str:
    return "[95 % CI n/a]" if ci is None or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def methods_of_option(text: str):
    """``--explanations``: "all" or methods separated by commas."""
    from capxai.explain import METHODS

    methods = METHODS.names() if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise CommandError(f"--explanations must be 'all' or some of {', '.join(METHODS.names())} separated by commas, "
                           f"got {text!r}")
    return methods


def _explain(args) -> int:
    from capxai.commands.explain_run import explain_images, explain_split
    from capxai.explain import METHODS, RUNNER_UP, methods_of
    from capxai.models import load_trained
    from capxai.models.hf_local import load_local
    from capxai.models.vlm import is_vlm_folder

    run = _run_of(args)
    methods = methods_of(args.method)
    if (args.images is None) == (args.split_file is None):
        raise CommandError("give either --images or --split-file")
    if args.captions is not None and args.images is None:
        raise CommandError("--captions go with --images")
    if args.captions is not None and len(args.captions) != len(args.images):
        raise CommandError(f"{len(args.captions)} --captions for {len(args.images)} --images; give one caption per "
                           "image")
    if args.images is not None and run.distributed:
        raise CommandError("--images runs in one process; explain a whole split (--split-file) under torchrun")
    if args.contrast is not None:
        no_start = [method for method in methods if not METHODS[method].takes_a_start]
        if no_start:
            raise CommandError(f"--contrast applies to methods that explain a logit; {', '.join(no_start)} does "
                               "not (choose the other methods with --method)")
    if args.hf_model is not None and is_vlm_folder(args.hf_model):
        return _explain_vlm(args, run)
    if args.prompt is not None:
        raise CommandError("--prompt goes with --hf-model of a vision-language model (the text read with the image)")
    if args.memory_budget is not None:
        raise CommandError("--memory-budget goes with --hf-model of a vision-language model (other captioners' words "
                           "are explained in one backward)")
    if args.hf_model is not None:
        if args.images is None:
            raise CommandError("--hf-model explains --images (a split's captions are read with capxai's vocabulary; "
                               "explain its images with --images)")
        local = load_local(args.hf_model, device=run.device)
        model, vocabulary, image_size, transform = local.model, local.vocabulary, local.image_size, local.transform
        max_length = args.max_length if args.max_length is not None else 16
    else:
        model, vocabulary, config = load_trained(args.checkpoint, device=run.device)
        image_size, transform = config.image_size, None
        max_length = args.max_length if args.max_length is not None else config.max_length
    if args.contrast not in (None, RUNNER_UP) and args.contrast not in vocabulary.index:
        raise CommandError(f"--contrast {args.contrast!r} is not in the model's vocabulary")
    if args.images is not None:
        written = explain_images(model, vocabulary, image_size=image_size, image_paths=args.images,
                                 out_dir=args.out, methods=methods, captions=args.captions,
                                 beam_size=args.beam_size, max_length=max_length, composite=args.composite,
                                 overwrite=args.overwrite, figures=args.figures,
                                 checkpoint=args.checkpoint or args.hf_model, contrast=args.contrast,
                                 transform=transform)
        print(f"wrote {', '.join(str(path) for path in written.values())} and the figures beside them")
        return 0
    image_root = args.image_root or args.split_file.parent
    written = explain_split(model, vocabulary, split_file=args.split_file, image_root=image_root, split=args.split,
                            out_dir=args.out, methods=methods, image_size=config.image_size, limit=args.limit,
                            shard_size=args.shard_size, beam_size=args.beam_size, max_length=max_length,
                            composite=args.composite, overwrite=args.overwrite, checkpoint=args.checkpoint, run=run,
                            contrast=args.contrast)
    print(f"process {run.rank + 1}/{run.world_size}: " if run.distributed else "", end="")
    print(f"wrote {len(written)} shard files under {args.out} (existing complete shards kept)")
    return 0


def _explain_vlm(args, run) -> int:
    """``capxai explain --hf-model DIR`` of a vision-language model (:mod:`capxai.models.vlm`)."""
    from capxai.commands.explain_run import explain_vlm_images
    from capxai.explain import RUNNER_UP
    from capxai.explain.vlm import NO_GRID, VLM_EXPLAINERS, vlm_methods
    from capxai.models.hf_local import read_config
    from capxai.models.vlm import family_of, load_vlm

    if args.images is None:
        raise CommandError("--hf-model explains --images")
    methods = list(VLM_EXPLAINERS) if args.method == "all" else [args.method]
    if methods[0] not in VLM_EXPLAINERS:
        raise CommandError(f"--method {args.method} is not offered for a vision-language model; choose from "
                           f"{', '.join(VLM_EXPLAINERS)} or all")
    if args.beam_size != 1:
        raise CommandError("a vision-language model's caption is its own greedy generate (--beam-size 1)")
    if args.contrast == RUNNER_UP:
        raise CommandError(f"--contrast {RUNNER_UP} is not offered for a vision-language model; give a word")
    family, spec = family_of(read_config(args.hf_model))  # the methods checked before any weight is read
    if args.method == "all":
        methods = vlm_methods(spec)
    elif methods[0] not in vlm_methods(spec):
        raise CommandError(f"--method {args.method} does not apply to {family}: {NO_GRID}; choose from "
                           f"{', '.join(vlm_methods(spec))} or all")
    vlm = load_vlm(args.hf_model, device=run.device, prompt=args.prompt)
    written = explain_vlm_images(vlm, image_paths=args.images, out_dir=args.out, methods=methods,
                                 captions=args.captions, max_length=args.max_length or 16, contrast=args.contrast,
                                 overwrite=args.overwrite, figures=args.figures, checkpoint=args.hf_model,
                                 memory_budget=None if args.memory_budget is None else args.memory_budget << 20)
    print(f"wrote {', '.join(str(path) for path in written.values())} and the figures beside them")
    return 0


def build_parser() -> Parser:
    """The ``capxai`` parser. Every option is a field of a settings dataclass (:mod:`capxai.options`): its default,
    choices and check are written there once, and the command turns the parsed values back into that dataclass.
    Choices and help read the registries (methods, composites, encoders, captioner kinds) when the parser is built,
    so an entry registered by a user's package (``capxai.registry``) appears here. Options several commands take
    come from one parent each (``run_options``, ``data_options``, ``checkpoint_option``, ``output_options``,
    ``composite_option``), so they read and check the same everywhere."""
    parser = Parser(prog="capxai", description="Explain and improve image-captioning models. Bad input stops a "
                    "command before any work with one line naming the problem (exit status 2).")
    add_options(parser, GlobalOptions)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add_command in (_add_data, _add_train, _add_finetune, _add_finetune_table, _add_evaluate, _add_explain,
                        _add_report):
        add_command(commands)
    return parser


IMAGE_ROOT_HELP = "folder the json's image paths start in"
REPLACE_RESULTS = "(all its files; files capxai did not write are never replaced)"


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="make or prepare data sets").add_subparsers(
        dest="data_command", required=True, parser_class=Parser)
    _command_parser(data, "scenes", "generate the built-in scenes (COCO + Karpathy json, images)",
                    [output_options("output folder (new or empty; with --overwrite: scenes capxai wrote before)",
                                    "replace the scenes capxai wrote in --out (nothing else there is touched)")],
                    scenes.SceneConfig).set_defaults(run=_data_scenes)
    _command_parser(data, "coco", "a Karpathy-style split json from COCO-format caption files (read with "
                    "pycocotools), for train / evaluate",
                    [output_options("the split json to write", "replace a split json capxai wrote",
                                    out_type=output_file)],
                    CocoSplitOptions).set_defaults(run=_data_coco)


def _add_train(commands) -> None:
    from capxai.train import TrainConfig
    _command_parser(commands, "train", "train a captioner with cross-entropy (resumes from OUT/last.pt)",
                    [run_options(precision=True), data_options(True, image_root_help=IMAGE_ROOT_HELP),
                     output_options("checkpoint folder", "start afresh, replacing the checkpoints capxai train wrote "
                                    "in --out (default: resume from its last.pt)")],
                    TrainConfig).set_defaults(run=_train)


def _add_finetune(commands) -> None:
    from capxai.train import FinetuneConfig
    _command_parser(commands, "finetune", "fine-tune a trained captioner: LRP-inference or baseline, cross-entropy "
                    "or self-critical (resumes from OUT/last.pt)",
                    [run_options(precision=True), checkpoint_option("best.pt of capxai train"),
                     data_options(True, "Karpathy-style json it was trained on", IMAGE_ROOT_HELP),
                     output_options("checkpoint folder", "start afresh, replacing the checkpoints capxai finetune "
                                    "wrote in --out (default: resume from its last.pt)")],
                    FinetuneConfig).set_defaults(run=_finetune)


def _add_finetune_table(commands) -> None:
    _command_parser(commands, "finetune-table", "the fine-tuning results table (json and markdown) from evaluations "
                    "of the cross-entropy, baseline and LRP fine-tuned models",
                    [output_options("folder for finetune_table.json/.md", "replace a table capxai wrote there "
                                    "before")],
                    TableOptions).set_defaults(run=_finetune_table)


def _add_evaluate(commands) -> None:
    from capxai.evaluate.explanations import ExplanationSettings
    from capxai.evaluate.settings import EvaluateOptions
    evaluating = _command_parser(
        commands, "evaluate", "caption a split with a trained model and score it (BLEU, METEOR, ROUGE-L, CIDEr, "
        "SPICE when available; CHAIR and probe hallucination when instances and synonyms are found)",
        [run_options(precision=False), checkpoint_option("best.pt or last.pt of capxai train"),
         data_options(True, "Karpathy-style json", IMAGE_ROOT_HELP),
         composite_option("LRP rules of the encoder (with --explanations): "),
         output_options("folder for captions, metrics, hallucination", "replace the results of an earlier run "
                        + REPLACE_RESULTS)],
        EvaluateOptions)
    add_options(evaluating.add_argument_group("explanations (with --explanations)"), ExplanationSettings)
    evaluating.set_defaults(run=_evaluate)


def _add_explain(commands) -> None:
    from capxai.explain import METHODS
    from capxai.models import hf
    _command_parser(
        commands, "explain", "explain every word of captions: " + ", ".join(METHODS.names()),
        [run_options(precision=False),
         checkpoint_option("best.pt or last.pt of capxai train", "a local Hugging Face image-to-text model instead: "
                           "the folder of its save_pretrained, with its image processor and tokenizer ("
                           + hf.describe_supported() + "; with --images)"),
         data_options(False, "explain a whole split of this Karpathy-style json, in shards (resumable; under "
                      "torchrun each process takes its own shards)", IMAGE_ROOT_HELP + " (default: the split "
                      "file's folder)"),
         composite_option("LRP rules of the encoder: "),
         output_options("output folder (one folder per method)", "replace explanations of an earlier run "
                        + REPLACE_RESULTS)],
        ExplainOptions).set_defaults(run=_explain)


def _add_report(commands) -> None:
    _command_parser(commands, "report", "the HTML report of a demo folder (RUN_DIR/report.html): per word heatmaps "
                    "of every method, metric tables and plots, fine-tuning results", [],
                    ReportOptions).set_defaults(run=_report)


def _report(args) -> int:
    from capxai.report.html_report import build_report

    path = build_report(args.run_dir, overwrite=args.overwrite)
    print(f"wrote {path} (open it in a browser; its pictures are in {path.parent / 'report_files'})")
    return 0


RESUMABLE = {"train", "explain"}  # rerunning the same command resumes where it stopped


def main(argv=None) -> int:
    """Runs one ``capxai`` command; returns its exit status (0 done, 2 bad invocation, 130 / 143 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a bad argument (2, already reported)
        return stop.code if isinstance(stop.code, int) else 2
    if getattr(args, "force", False):
        args.overwrite = max(args.overwrite, 2)
    name = args.command + (f" {args.data_command}" if args.command == "data" else "")
    return run_command(name, lambda: _in_process_group(args, name), args.debug,
                       resumable=args.command in RESUMABLE, batch_size=getattr(args, "batch_size", None))


LOCKED_FOLDERS = {"train": "out", "finetune": "out", "evaluate": "out", "explain": "out", "data scenes": "out",
                  "report": "run_dir"}  # the folder each command writes into, one run at a time (capxai.run_lock)


def _in_process_group(args, name: str) -> int:
    """Runs the command holding its output folder's lock; under torchrun, leaves the process group it joined once
    the command is done (torch warns at exit of a group never destroyed)."""
    import torch.distributed

    from capxai._io import remove_stale_temporaries
    from capxai.run_lock import folder_lock

    started = time.time()
    folder = getattr(args, LOCKED_FOLDERS[name]) if name in LOCKED_FOLDERS else None
    try:
        with folder_lock(folder, name) as locked:
            if locked is not None and Path(folder).is_dir():  # the half-written files of a killed run
                remove_stale_temporaries(folder, older_than=started)
            return args.run(args)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
