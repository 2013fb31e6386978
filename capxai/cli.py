"""``capxai``: the command line. Subcommands grow with the product (caption, explain, evaluate, finetune, report,
bench follow); for now: ``capxai data scenes --out DIR``, ``capxai train --split-file F --image-root D --out D``
(several processes: ``torchrun --nproc_per_node N -m capxai.cli train ...``), ``capxai evaluate --checkpoint C
--split-file F --image-root D --out D`` and ``capxai explain --checkpoint C --images I... --out D`` (or a whole split
in shards with ``--split-file F``)."""
import argparse
import sys
from pathlib import Path

from capxai.data import scenes


def _data_scenes(args) -> int:
    config = scenes.SceneConfig(train=args.train, val=args.val, test=args.test, image_size=args.size, seed=args.seed,
                                probe_fraction=args.probe_fraction)
    try:
        out = scenes.generate(args.out, config, overwrite=args.overwrite)
    except FileExistsError as error:
        print(f"capxai data scenes: {error}", file=sys.stderr)
        return 2
    print(f"wrote {config.train}/{config.val}/{config.test} train/val/test scenes to {out}")
    return 0


def _data_coco(args) -> int:
    from capxai.data.coco import write_karpathy_from_coco

    splits = {split: (Path(captions), folder) for split, captions, folder in args.split}
    try:
        out = write_karpathy_from_coco(args.out, splits, args.dataset, overwrite=args.overwrite)
    except FileExistsError as error:
        print(f"capxai data coco: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({', '.join(splits)})")
    return 0


def _train(args) -> int:
    from capxai.train import TrainConfig, train

    config = TrainConfig(model=args.model, encoder=args.encoder, encoder_weights=args.encoder_weights,
                         finetune_encoder=not args.freeze_encoder, encoder_lr=args.encoder_lr,
                         hidden=args.hidden,
                         attention_dim=args.attention_dim or args.hidden, heads=args.heads, dropout=args.dropout,
                         epochs=args.epochs, batch_size=args.batch_size, captions_per_image=args.captions_per_image,
                         lr=args.lr, image_size=args.image_size, max_length=args.max_length, seed=args.seed,
                         min_count=args.min_count)
    history = train(config, args.split_file, args.image_root, args.out)
    print(f"best validation CIDEr {history['best_cider']:.3f} at epoch {history['best_epoch'] + 1}; "
          f"checkpoints in {args.out}")
    return 0


def _evaluate(args) -> int:
    from capxai._io import atomic_write_json
    from capxai.data.captions import CaptionDataset
    from capxai.evaluate.hallucination import hallucination_report
    from capxai.evaluate.captioning import score_dataset
    from capxai.train import load_trained

    stem = f"{args.split}_beam{args.beam_size}"
    outputs = {name: args.out / f"{name}_{stem}.json" for name in ("captions", "metrics", "hallucination")}
    existing = [str(path) for path in outputs.values() if path.exists()]
    if existing and not args.overwrite:
        print(f"capxai evaluate: {existing[0]} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    model, vocabulary, config = load_trained(args.checkpoint)
    dataset = CaptionDataset(args.split_file, args.image_root, args.split, vocabulary, config.max_length,
                             config.image_size)
    scores = score_dataset(model, dataset, args.beam_size, args.max_length or config.max_length,
                           metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE"), progress=True)
    captions = scores.pop("captions")
    report = {"overall": scores["overall"]}
    instances = args.instances or args.split_file.parent / "annotations" / f"instances_{args.split}.json"
    synonyms = args.synonyms or args.split_file.parent / "synonyms.txt"
    if instances.is_file() and synonyms.is_file():
        report.update(hallucination_report(captions, instances, synonyms, args.split_file))
    elif args.instances or args.synonyms:
        raise FileNotFoundError(f"hallucination needs both {instances} and {synonyms}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(outputs["captions"], [{"image_id": i, "caption": c} for i, c in captions.items()])
    atomic_write_json(outputs["metrics"], scores)
    if "chair" in report:
        atomic_write_json(outputs["hallucination"], {key: report[key] for key in ("chair", "probes") if key in report})
    summary = ", ".join(f"{name} {value:.3f}" for name, value in report["overall"].items())
    print(f"{args.split} (beam {args.beam_size}, {len(captions)} images): {summary}")
    if "chair" in report:
        print(f"CHAIR-i {report['chair']['CHAIRi']:.3f}, CHAIR-s {report['chair']['CHAIRs']:.3f}")
    if "probes" in report:
        probes = report["probes"]
        pairs = ", ".join(f"{pair} {value['rate']:.2f}" for pair, value in probes["pairs"].items())
        control = "" if probes.get("control_rate") is None else (
            f"; images showing neither object name the partner {probes['control_rate']:.3f} of the time")
        print(f"probe images naming the absent partner: {probes['rate']:.3f} of {probes['images']} ({pairs}){control}")
    print(f"wrote {', '.join(str(path) for path in outputs.values() if path.exists())}")
    return 0


def _explain(args) -> int:
    from capxai.report.explain_run import explain_images, explain_split, methods_of
    from capxai.train import load_trained

    methods = methods_of(args.method)
    if (args.images is None) == (args.split_file is None):
        raise ValueError("capxai explain: give either --images or --split-file")
    if args.captions is not None and args.images is None:
        raise ValueError("capxai explain: --captions go with --images")
    for name in ("limit", "max_length", "beam_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"capxai explain: --{name.replace('_', '-')} must be >= 1, got {value}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"capxai explain: --out {args.out} exists and is not a folder")
    model, vocabulary, config = load_trained(args.checkpoint)
    max_length = args.max_length if args.max_length is not None else config.max_length
    if args.images is not None:
        written = explain_images(model, vocabulary, config.image_size, args.images, args.out, methods, args.captions,
                                 args.beam_size, max_length, args.composite, args.overwrite, not args.no_figures)
        print(f"wrote {', '.join(str(path) for path in written.values())} and the figures beside them")
        return 0
    image_root = args.image_root or args.split_file.parent
    written = explain_split(model, vocabulary, args.split_file, image_root, args.split, args.out, methods,
                            config.image_size, args.limit, args.shard_size, args.beam_size, max_length,
                            args.composite)
    print(f"wrote {len(written)} shard files under {args.out} (existing complete shards kept)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capxai", description="Explain and improve image-captioning models.")
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="make or prepare data sets").add_subparsers(dest="data_command",
                                                                                        required=True)
    make_scenes = data.add_parser("scenes", help="generate the built-in scenes (COCO + Karpathy json, images)")
    make_scenes.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    make_scenes.add_argument("--train", type=int, default=8000)
    make_scenes.add_argument("--val", type=int, default=1000)
    make_scenes.add_argument("--test", type=int, default=1000)
    make_scenes.add_argument("--size", type=int, default=96, help="image side in pixels")
    make_scenes.add_argument("--seed", type=int, default=0)
    make_scenes.add_argument("--probe-fraction", type=float, default=0.3,
                             help="share of test images that are co-occurrence probes")
    make_scenes.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    make_scenes.set_defaults(run=_data_scenes)

    make_coco = data.add_parser("coco", help="a Karpathy-style split json from COCO-format caption files "
                                "(read with pycocotools), for train / evaluate")
    make_coco.add_argument("--split", nargs=3, action="append", required=True,
                           metavar=("NAME", "CAPTIONS_JSON", "IMAGE_FOLDER"),
                           help="e.g. --split train annotations/captions_train2014.json train2014 (repeat per split; "
                           "IMAGE_FOLDER relative to the image root given to train)")
    make_coco.add_argument("--out", type=Path, required=True, help="the split json to write")
    make_coco.add_argument("--dataset", default="coco", help="name recorded in the json")
    make_coco.add_argument("--overwrite", action="store_true", help="replace an existing split json")
    make_coco.set_defaults(run=_data_coco)

    training = commands.add_parser("train", help="train a captioner with cross-entropy (resumes from OUT/last.pt)")
    training.add_argument("--split-file", type=Path, required=True, help="Karpathy-style json, e.g. "
                          "dataset_scenes.json or dataset_coco.json")
    training.add_argument("--image-root", type=Path, required=True, help="folder the json's image paths start in")
    training.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    training.add_argument("--model", choices=["adaptive", "multihead"], default="adaptive")
    training.add_argument("--encoder", choices=["scene", "vgg16", "resnet101"], default="scene")
    training.add_argument("--encoder-weights", help="local state_dict file for a torchvision encoder")
    training.add_argument("--freeze-encoder", action="store_true",
                          help="keep the encoder's weights fixed (default: fine-tune it with the captioner)")
    training.add_argument("--hidden", type=int, default=512)
    training.add_argument("--attention-dim", type=int, help="additive attention's score space (default: --hidden)")
    training.add_argument("--heads", type=int, default=8, help="heads of the multi-head captioner")
    training.add_argument("--dropout", type=float, default=0.5)
    training.add_argument("--epochs", type=int, default=10)
    training.add_argument("--batch-size", type=int, default=32)
    training.add_argument("--captions-per-image", type=int, default=0,
                          help="captions of each image per step, drawn at random (0: all)")
    training.add_argument("--max-length", type=int, default=16, help="words per caption at most")
    training.add_argument("--lr", type=float, default=5e-4)
    training.add_argument("--encoder-lr", type=float, help="learning rate of the encoder (default: --lr)")
    training.add_argument("--image-size", type=int, default=96)
    training.add_argument("--min-count", type=int, default=5, help="rarer words become <unk>")
    training.add_argument("--seed", type=int, default=0)
    training.set_defaults(run=_train)

    evaluating = commands.add_parser("evaluate", help="caption a split with a trained model and score it "
                                     "(BLEU, METEOR, ROUGE-L, CIDEr, SPICE when available; CHAIR and probe "
                                     "hallucination when instances and synonyms are found)")
    evaluating.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of capxai train")
    evaluating.add_argument("--split-file", type=Path, required=True, help="Karpathy-style json")
    evaluating.add_argument("--image-root", type=Path, required=True, help="folder the json's image paths start in")
    evaluating.add_argument("--split", choices=["train", "val", "test"], default="test")
    evaluating.add_argument("--beam-size", type=int, default=3)
    evaluating.add_argument("--max-length", type=int, help="words per caption at most (default: the training's)")
    evaluating.add_argument("--instances", type=Path, help="COCO instances json of the split (default: "
                            "annotations/instances_SPLIT.json beside the split file, when present)")
    evaluating.add_argument("--synonyms", type=Path, help="CHAIR-style synonyms file (default: synonyms.txt beside "
                            "the split file, when present)")
    evaluating.add_argument("--out", type=Path, required=True, help="folder for captions, metrics, hallucination")
    evaluating.add_argument("--overwrite", action="store_true", help="replace results that exist")
    evaluating.set_defaults(run=_evaluate)

    explaining = commands.add_parser("explain", help="explain every word of captions: LRP, Grad-CAM, Guided "
                                     "Grad-CAM, Guided Backprop, Gradient x Input, attention")
    explaining.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of capxai train")
    explaining.add_argument("--images", type=Path, nargs="+", help="image files to explain")
    explaining.add_argument("--captions", nargs="+", help="one caption per image to explain (default: the model's "
                            "own, decoded)")
    explaining.add_argument("--split-file", type=Path, help="explain a whole split of this Karpathy-style json, "
                            "in shards (resumable; under torchrun each process takes its own shards)")
    explaining.add_argument("--image-root", type=Path, help="folder the json's image paths start in (default: "
                            "the split file's folder)")
    explaining.add_argument("--split", choices=["train", "val", "test"], default="test")
    explaining.add_argument("--limit", type=int, help="explain the first N images of the split only")
    explaining.add_argument("--shard-size", type=int, default=32, help="images per shard file")
    explaining.add_argument("--method", default="lrp", help="lrp, gradcam, guided-gradcam, guided-backprop, "
                            "gradient-x-input, attention or all")
    explaining.add_argument("--composite", default="paper", choices=["paper", "epsilon_plus_flat",
                                                                      "epsilon_alpha2_beta1"],
                            help="LRP rules of the encoder")
    explaining.add_argument("--beam-size", type=int, default=1, help="beams when decoding the model's captions")
    explaining.add_argument("--max-length", type=int, help="words per caption at most (default: the training's)")
    explaining.add_argument("--no-figures", action="store_true", help="with --images: write explanation.pt only")
    explaining.add_argument("--out", type=Path, required=True, help="output folder (one folder per method)")
    explaining.add_argument("--overwrite", action="store_true", help="replace explanations that exist")
    explaining.set_defaults(run=_explain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"capxai: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
