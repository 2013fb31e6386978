"""``capxai``: the command line: ``capxai data scenes|coco``, ``train``, ``finetune``, ``finetune-table``,
``evaluate``, ``explain``, ``report``. The commands that compute (train, finetune, evaluate, explain) share one group
of run options (``--device``, ``--workers``, ``--dist-backend``; ``--precision`` for training), turned once into a
:class:`capxai.runtime.RunSettings` and handed down. Several processes: ``torchrun --nproc_per_node N -m capxai
train|finetune|evaluate|explain ...`` (one GPU each with NCCL, or gloo on the CPU)."""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from capxai.cli_checks import (CommandError, Parser, existing_file, existing_folder, float_between,
                               guided_decoding_setting, int_at_least, output_file, output_folder, run_command)
from capxai.data import scenes
from capxai.runtime import BACKENDS, DEVICES_HELP, PRECISIONS, default_workers, run_settings

POSITIVE, COUNT = int_at_least(1), int_at_least(0)


def run_options(precision: bool) -> Parser:
    """The run options every computing command takes (argparse parent); ``precision``: training's autocast too."""
    parent = Parser(add_help=False)
    group = parent.add_argument_group("run options")
    group.add_argument("--device", default="auto", help=f"where to run: {DEVICES_HELP}; under torchrun each process "
                       "takes the GPU of its LOCAL_RANK (default auto)")
    if precision:
        group.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                           help="training arithmetic: fp32, or bf16 / fp16 autocast (fp16 with a gradient scaler, "
                           "GPU only); explanations stay float32 (default fp32)")
    group.add_argument("--workers", type=COUNT, default=None, help="processes decoding images (0: in this process; "
                       f"default {default_workers()} here: the cores less one, at most 8); results do not depend on it")
    group.add_argument("--dist-backend", choices=list(BACKENDS), default="auto", help="torchrun's process group: "
                       "auto (nccl on CUDA, gloo on the CPU), nccl or gloo")
    return parent


def _parent(title: str) -> tuple[Parser, argparse._ArgumentGroup]:
    """An argparse parent parser holding one titled option group (shared by several commands)."""
    parent = Parser(add_help=False)
    return parent, parent.add_argument_group(title)


def data_options(required: bool, split_file_help: str, image_root_help: str) -> Parser:
    """``--split-file`` and ``--image-root``: where a command reads its images and captions."""
    parent, group = _parent("data")
    group.add_argument("--split-file", type=existing_file, required=required, help=split_file_help)
    group.add_argument("--image-root", type=existing_folder, required=required, help=image_root_help)
    return parent


def checkpoint_option(help_text: str, hf_model_help: Optional[str] = None) -> Parser:
    """``--checkpoint``: the trained model a command reads; with ``hf_model_help``, or ``--hf-model DIR`` (a local
    Hugging Face checkpoint folder), one of the two."""
    parent, group = _parent("model")
    if hf_model_help is None:
        group.add_argument("--checkpoint", type=existing_file, required=True, help=help_text)
        return parent
    either = group.add_mutually_exclusive_group(required=True)
    either.add_argument("--checkpoint", type=existing_file, help=help_text)
    either.add_argument("--hf-model", type=existing_folder, metavar="DIR", help=hf_model_help)
    return parent


def output_options(out_help: str, overwrite_help: str, out_type=None) -> Parser:
    """``--out`` (required) and ``--overwrite``: where a command writes, and whether it may replace what capxai
    wrote there before (files capxai did not write are never replaced)."""
    parent, group = _parent("output")
    group.add_argument("--out", type=out_type or output_folder, required=True, help=out_help)
    group.add_argument("--overwrite", action="count", default=0, help=overwrite_help + "; given twice, also "
                       "files you changed after capxai wrote them (refused otherwise)")
    group.add_argument("--force", action="store_true", help="the same as --overwrite given twice")
    return parent


def decoding_options(beam_size: int, beam_help: str) -> Parser:
    """``--beam-size`` and ``--max-length``: how a command decodes the model's captions."""
    parent, group = _parent("decoding")
    group.add_argument("--beam-size", type=POSITIVE, default=beam_size, help=beam_help)
    group.add_argument("--max-length", type=POSITIVE, help="words per caption at most (default: the training's)")
    return parent


def composite_option(help_prefix: str) -> Parser:
    """``--composite``: the LRP rules of the encoder, read from the registry of composites."""
    from capxai.explain import COMPOSITES
    parent, group = _parent("encoder rules")
    group.add_argument("--composite", default="paper", choices=COMPOSITES.names(),
                       help=help_prefix + COMPOSITES.describe())
    return parent


def _run_of(args):
    """The checked run settings of a command's options (a bad value stops it before any work)."""
    workers = args.workers if args.workers is not None else default_workers()
    return run_settings(args.device, getattr(args, "precision", "fp32"), workers, args.dist_backend)


def _data_scenes(args) -> int:
    config = scenes.SceneConfig(train=args.train, val=args.val, test=args.test, image_size=args.size, seed=args.seed,
                                probe_fraction=args.probe_fraction)
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
    from capxai.models import CAPTIONERS

    problems = CAPTIONERS[args.model].check(argparse.Namespace(model=args.model, hidden=args.hidden,
                                                                   heads=args.heads, layers=args.layers))
    if problems:
        raise CommandError(f"--model {args.model} with --hidden {args.hidden} --heads {args.heads}: {problems[0]}")
    encoder = args.encoder or CAPTIONERS[args.model].encoder or "scene"
    config = TrainConfig(model=args.model, encoder=encoder,
                         encoder_weights=str(args.encoder_weights) if args.encoder_weights else None,
                         finetune_encoder=not args.freeze_encoder, encoder_lr=args.encoder_lr,
                         hidden=args.hidden, layers=args.layers,
                         attention_dim=args.attention_dim or args.hidden, heads=args.heads, dropout=args.dropout,
                         epochs=args.epochs, batch_size=args.batch_size, captions_per_image=args.captions_per_image,
                         lr=args.lr, image_size=args.image_size, max_length=args.max_length, seed=args.seed,
                         min_count=args.min_count)
    history = train(config, args.split_file, args.image_root, args.out, overwrite=args.overwrite, run=run)
    if run.rank != 0:
        return 0
    print(f"best validation CIDEr {history['best_cider']:.3f} at epoch {history['best_epoch'] + 1}; "
          f"checkpoints in {args.out}")
    return 0


def _finetune(args) -> int:
    from capxai.train import FinetuneConfig, finetune

    run = _run_of(args)
    config = FinetuneConfig(method=args.method, objective=args.objective, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, captions_per_image=args.captions_per_image,
                            samples_per_image=args.samples_per_image, eps=args.eps, seed=args.seed,
                            stop_words=str(args.stop_words) if args.stop_words else None, clamp=args.clamp,
                            threshold=args.threshold, penalty=args.penalty,
                            synonyms=str(args.synonyms) if args.synonyms else None,
                            instances=str(args.instances) if args.instances else None)
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
    rows = []
    for spec in args.row:
        label, _, folders = spec.partition("=")
        captioner, _, variant = label.partition("/")
        if not (captioner and variant and folders):
            raise CommandError(f"--row {spec!r} must read CAPTIONER/VARIANT=FOLDER[,FOLDER...] (one evaluation "
                               "folder per seed), e.g. adaptive/lrp-xe=runs/e1,runs/e2")
        evaluations = []
        for folder in folders.split(","):
            if not Path(folder).is_dir():
                raise CommandError(f"--row {label}: evaluation folder {folder} does not exist")
            evaluations.append((folder, load_evaluation(folder, args.split, args.beam_size)))
        rows.append((captioner, variant, evaluations))
    table = finetune_table(rows)
    markdown = table_markdown(table)
    output.remove_group("table")
    written = [atomic_write_json(paths[0], {**table, "split": args.split, "beam_size": args.beam_size}),
               atomic_write_text(paths[1], markdown)]
    output.record(written, "table")
    print(markdown)
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _evaluate(args) -> int:
    from capxai.data.captions import image_id_of, open_split
    from capxai.evaluate.hallucination import load_hallucination_data
    from capxai.evaluate.explanations import ExplanationSettings, tables_markdown
    from capxai.evaluate.run import check_outputs, evaluate_split
    from capxai.models import load_trained
    from capxai._io import file_sha256

    run = _run_of(args)
    explanations = None
    if args.explain_limit is not None and args.explanations is None:
        raise CommandError("--explain-limit needs --explanations "
                           "(it limits the images whose explanations are measured)")
    if args.explanations is not None:  # checked before any work
        explanations = ExplanationSettings(
            methods=methods_of_option(args.explanations), batch_size=args.explain_batch_size,
            composite=args.composite, pointing_tolerance=args.pointing_tolerance, grid=args.ablation_grid,
            patches=args.ablation_patches, ablation=not args.no_ablation, limit=args.explain_limit)
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

        threshold, penalty = args.guided_decoding
        objects = hallucination.objects if hallucination is not None else (
            ObjectWords.load(synonyms) if synonyms else ObjectWords.coco())
        try:
            guidance = VisualShareGuidance(model.captioner, object_word_mask(vocabulary.words, objects), threshold,
                                           penalty)
        except TypeError as error:
            raise CommandError(f"--guided-decoding: {error}") from None
        stamp["guided_decoding"] = {"threshold": threshold, "penalty": penalty}
    report = evaluate_split(model, dataset, output, args.beam_size, args.max_length or config.max_length,
                            hallucination, stamp, explanations=explanations, run=run, guidance=guidance)
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
                                 overwrite=args.overwrite, figures=not args.no_figures,
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


def build_parser() -> Parser:
    """The ``capxai`` parser; its choices and help read the registries (methods, composites, encoders, captioner
    kinds), so an entry registered by a user's package (``capxai.registry``) appears here. Options several commands
    take come from one parent each (``run_options``, ``data_options``, ``checkpoint_option``, ``output_options``,
    ``decoding_options``, ``composite_option``), so they read and check the same everywhere."""
    parser = Parser(prog="capxai", description="Explain and improve image-captioning models. Bad input stops a "
                    "command before any work with one line naming the problem (exit status 2).")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    make_scenes = data.add_parser("scenes", help="generate the built-in scenes (COCO + Karpathy json, images)",
                                  parents=[output_options("output folder (new or empty; with --overwrite: scenes "
                                                          "capxai wrote before)", "replace the scenes capxai wrote "
                                                          "in --out (nothing else there is touched)")])
    make_scenes.add_argument("--train", type=COUNT, default=8000)
    make_scenes.add_argument("--val", type=COUNT, default=1000)
    make_scenes.add_argument("--test", type=COUNT, default=2000)
    make_scenes.add_argument("--size", type=int_at_least(32), default=96, help="image side in pixels (>= 32)")
    make_scenes.add_argument("--seed", type=COUNT, default=0)
    make_scenes.add_argument("--probe-fraction", type=float_between(0, 1), default=0.5,
                             help="share of test images that are co-occurrence probes")
    make_scenes.set_defaults(run=_data_scenes)

    make_coco = data.add_parser("coco", help="a Karpathy-style split json from COCO-format caption files "
                                "(read with pycocotools), for train / evaluate",
                                parents=[output_options("the split json to write", "replace a split json capxai "
                                                        "wrote", out_type=output_file)])
    make_coco.add_argument("--split", nargs=3, action="append", required=True,
                           metavar=("NAME", "CAPTIONS_JSON", "IMAGE_FOLDER"),
                           help="e.g. --split train annotations/captions_train2014.json train2014 (repeat per split; "
                           "IMAGE_FOLDER relative to the image root given to train)")
    make_coco.add_argument("--dataset", default="coco", help="name recorded in the json")
    make_coco.set_defaults(run=_data_coco)


def _add_train(commands) -> None:
    from capxai.models import CAPTIONERS, ENCODERS
    training = commands.add_parser("train", help="train a captioner with cross-entropy (resumes from OUT/last.pt)",
                                   parents=[run_options(precision=True),
                                            data_options(True, "Karpathy-style json, e.g. dataset_scenes.json or "
                                                         "dataset_coco.json", IMAGE_ROOT_HELP),
                                            output_options("checkpoint folder", "start afresh, replacing the "
                                                           "checkpoints capxai train wrote in --out (default: "
                                                           "resume from its last.pt)")])
    training.add_argument("--model", choices=CAPTIONERS.names(), default="adaptive",
                          help="captioner kind: " + CAPTIONERS.describe())
    training.add_argument("--encoder", choices=ENCODERS.names(),
                          help="image encoder (default: the one the --model kind reads, else scene): "
                               + ENCODERS.describe())
    training.add_argument("--encoder-weights", type=existing_file,
                          help="local state_dict file for a torchvision encoder")
    training.add_argument("--freeze-encoder", action="store_true",
                          help="keep the encoder's weights fixed (default: fine-tune it with the captioner)")
    training.add_argument("--hidden", type=POSITIVE, default=512)
    training.add_argument("--attention-dim", type=POSITIVE, help="additive attention's score space (default: "
                          "--hidden)")
    training.add_argument("--heads", type=POSITIVE, default=8, help="attention heads (multihead, transformer)")
    training.add_argument("--layers", type=POSITIVE, default=2, help="decoder layers of the transformer")
    training.add_argument("--dropout", type=float_between(0, 1, high_open=True), default=0.5)
    training.add_argument("--epochs", type=POSITIVE, default=10, help="total epochs (may grow when resuming)")
    training.add_argument("--batch-size", type=POSITIVE, default=32)
    training.add_argument("--captions-per-image", type=COUNT, default=0,
                          help="captions of each image per step, drawn at random (0: all)")
    training.add_argument("--max-length", type=POSITIVE, default=16, help="words per caption at most")
    training.add_argument("--lr", type=float_between(0, 10, low_open=True), default=5e-4)
    training.add_argument("--encoder-lr", type=float_between(0, 10, low_open=True),
                          help="learning rate of the encoder (default: --lr)")
    training.add_argument("--image-size", type=int_at_least(32), default=96)
    training.add_argument("--min-count", type=POSITIVE, default=5, help="rarer words become <unk>")
    training.add_argument("--seed", type=COUNT, default=0)
    training.set_defaults(run=_train)


def _add_finetune(commands) -> None:
    tuning = commands.add_parser("finetune", help="fine-tune a trained captioner: LRP-inference or baseline, "
                                 "cross-entropy or self-critical (resumes from OUT/last.pt)",
                                 parents=[run_options(precision=True), checkpoint_option("best.pt of capxai train"),
                                          data_options(True, "Karpathy-style json it was trained on", IMAGE_ROOT_HELP),
                                          output_options("checkpoint folder", "start afresh, replacing the "
                                                         "checkpoints capxai finetune wrote in --out (default: "
                                                         "resume from its last.pt)")])
    from capxai.train.methods import FINETUNE_METHODS, describe_methods

    tuning.add_argument("--method", choices=list(FINETUNE_METHODS), required=True, help=describe_methods())
    tuning.add_argument("--objective", choices=["xe", "scst"], default="xe",
                        help="xe: cross-entropy; scst: self-critical with a CIDEr-D reward")
    tuning.add_argument("--epochs", type=POSITIVE, default=1, help="total epochs (may grow when resuming)")
    tuning.add_argument("--lr", type=float_between(0, 10, low_open=True),
                        help="learning rate (default 5e-4 for xe, 5e-5 for scst: the paper's)")
    tuning.add_argument("--batch-size", type=POSITIVE, default=32)
    tuning.add_argument("--captions-per-image", type=COUNT, default=0, help="xe: captions of each image per step "
                        "(0: all)")
    tuning.add_argument("--samples-per-image", type=POSITIVE, default=5, help="scst: sampled captions per image")
    tuning.add_argument("--eps", type=float_between(0, 10, low_open=True), default=0.01,
                        help="LRP epsilon (> 0: a logit of exactly 0 would divide by zero)")
    tuning.add_argument("--stop-words", type=existing_file, help="one stop word per line (default: capxai's "
                        "English list)")
    tuning.add_argument("--clamp", type=float_between(0, 10, low_open=True),
                        help="clamp every gradient element to [-CLAMP, CLAMP] instead of clipping the gradient norm "
                        "(the paper's code: 0.1)")
    tuning.add_argument("--threshold", type=float_between(0, 1), default=0.5,
                        help="gated: the visual share under which an object phrase's cross-entropy is masked")
    tuning.add_argument("--penalty", type=float_between(0, 1000), default=1.0,
                        help="share-penalty: the weight lambda of mean(1 - visual share) of object words")
    tuning.add_argument("--synonyms", type=existing_file, help="object words (CHAIR-style synonyms file) for the "
                        "methods that read them (default: synonyms.txt beside the split file, else COCO's)")
    tuning.add_argument("--instances", type=existing_file, help="oracle: the training split's COCO instances json "
                        "(default: annotations/instances_train.json beside the split file)")
    tuning.add_argument("--seed", type=COUNT, default=0)
    tuning.set_defaults(run=_finetune)


def _add_finetune_table(commands) -> None:
    tabling = commands.add_parser("finetune-table", help="the fine-tuning results table (json and markdown) from "
                                  "evaluations of the cross-entropy, baseline and LRP fine-tuned models",
                                  parents=[output_options("folder for finetune_table.json/.md", "replace a table "
                                                          "capxai wrote there before")])
    tabling.add_argument("--row", action="append", required=True, metavar="CAPTIONER/VARIANT=FOLDER[,FOLDER...]",
                         help="one row: the evaluation folders of its seeds (capxai evaluate --explanations lrp); "
                         "variants lrp-X and baseline-X of a captioner also get a difference row")
    tabling.add_argument("--split", default="test", help="the evaluated split (default test)")
    tabling.add_argument("--beam-size", type=POSITIVE, default=3, help="the evaluations' beam size (default 3)")
    tabling.set_defaults(run=_finetune_table)


def _add_evaluate(commands) -> None:
    from capxai.explain import METHODS
    evaluating = commands.add_parser(
        "evaluate", help="caption a split with a trained model and score it (BLEU, METEOR, ROUGE-L, CIDEr, SPICE "
        "when available; CHAIR and probe hallucination when instances and synonyms are found)",
        parents=[run_options(precision=False), checkpoint_option("best.pt or last.pt of capxai train"),
                 data_options(True, "Karpathy-style json", IMAGE_ROOT_HELP),
                 decoding_options(3, "beams when decoding the captions"),
                 composite_option("LRP rules of the encoder (with --explanations): "),
                 output_options("folder for captions, metrics, hallucination", "replace the results of an earlier "
                                "run " + REPLACE_RESULTS)])
    evaluating.add_argument("--split", choices=["train", "val", "test"], default="test")
    evaluating.add_argument("--guided-decoding", type=guided_decoding_setting, metavar="THRESHOLD:PENALTY",
                            help="explanation-guided beam search: an object word whose visual relevance share is "
                            "below THRESHOLD (0..1] loses up to PENALTY nats (e.g. 0.5:2; docs/LRP_RULES.md, "
                            "'Visual share of a word')")
    evaluating.add_argument("--instances", type=existing_file, help="COCO instances json of the split (default: "
                            "annotations/instances_SPLIT.json beside the split file, when present)")
    evaluating.add_argument("--synonyms", type=existing_file,
                            help="CHAIR-style synonyms file (default: synonyms.txt beside the split file, when "
                                 "present, else CHAIR's own table for the 80 COCO categories)")
    evaluating.add_argument("--explanations", metavar="METHODS", help="also measure explanations of the captions: "
                            f"'all' or some of {', '.join(METHODS.names())} (comma-separated): grounding, pointing "
                            "game, ablation, hallucination detection")
    evaluating.add_argument("--explain-batch-size", type=POSITIVE, default=50, help="images explained at once")
    evaluating.add_argument("--pointing-tolerance", type=float_between(0, 1000), default=0.0,
                            help="pixels a box is grown by in the pointing game")
    evaluating.add_argument("--ablation-grid", type=POSITIVE, default=8, help="patches per image side for image "
                            "ablation")
    evaluating.add_argument("--ablation-patches", type=POSITIVE, default=20, help="patches blanked per word")
    evaluating.add_argument("--no-ablation", action="store_true", help="skip the ablation experiments")
    evaluating.add_argument("--explain-limit", type=POSITIVE,
                            help="measure explanations on N images spread evenly over the split (captions, metrics "
                                 "and CHAIR still use every image)")
    evaluating.set_defaults(run=_evaluate)


def _add_explain(commands) -> None:
    from capxai.explain import METHODS
    from capxai.models import hf
    explaining = commands.add_parser(
        "explain", help="explain every word of captions: " + ", ".join(METHODS.names()),
        parents=[run_options(precision=False), checkpoint_option(
                     "best.pt or last.pt of capxai train", "a local Hugging Face image-to-text model instead: the "
                     "folder of its save_pretrained, with its image processor and tokenizer ("
                     + hf.describe_supported() + "; with --images)"),
                 data_options(False, "explain a whole split of this Karpathy-style json, in shards (resumable; "
                              "under torchrun each process takes its own shards)",
                              IMAGE_ROOT_HELP + " (default: the split file's folder)"),
                 decoding_options(1, "beams when decoding the model's captions"),
                 composite_option("LRP rules of the encoder: "),
                 output_options("output folder (one folder per method)", "replace explanations of an earlier run "
                                + REPLACE_RESULTS)])
    explaining.add_argument("--images", type=existing_file, nargs="+", help="image files to explain")
    explaining.add_argument("--captions", nargs="+", help="one caption per image to explain (default: the model's "
                            "own, decoded)")
    explaining.add_argument("--split", choices=["train", "val", "test"], default="test")
    explaining.add_argument("--limit", type=POSITIVE, help="explain the first N images of the split only")
    explaining.add_argument("--shard-size", type=POSITIVE, default=32, help="images per shard file")
    explaining.add_argument("--method", default="lrp", choices=METHODS.names() + ["all"],
                            help="the method (or all): " + METHODS.describe())
    explaining.add_argument("--no-figures", action="store_true", help="with --images: write explanation.pt only")
    explaining.add_argument("--contrast", metavar="WORD", help="explain each word rather than WORD: the start is "
                            "the word's logit minus WORD's (methods that explain a logit); '<runner-up>': rather "
                            "than the model's next most likely word at each step")
    explaining.set_defaults(run=_explain)


def _add_report(commands) -> None:
    reporting = commands.add_parser("report", help="the HTML report of a demo folder (RUN_DIR/report.html): per "
                                    "word heatmaps of every method, metric tables and plots, fine-tuning results")
    reporting.add_argument("run_dir", type=existing_folder, metavar="RUN_DIR", help="what make demo wrote, e.g. "
                           "runs/demo")
    reporting.add_argument("--overwrite", action="store_true", help="replace the report written there before")
    reporting.set_defaults(run=_report)


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
