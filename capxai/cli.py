"""``capxai``: the command line. Subcommands grow with the product (caption, explain, evaluate, finetune, report,
bench follow); for now: ``capxai data scenes --out DIR`` and ``capxai train --split-file F --image-root D --out D``
(several processes: ``torchrun --nproc_per_node N -m capxai.cli train ...``)."""
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


def _train(args) -> int:
    from capxai.train import TrainConfig, train

    config = TrainConfig(model=args.model, encoder=args.encoder, encoder_weights=args.encoder_weights,
                         hidden=args.hidden, attention_dim=args.hidden, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, image_size=args.image_size, seed=args.seed,
                         min_count=args.min_count)
    history = train(config, args.split_file, args.image_root, args.out)
    print(f"best validation CIDEr {history['best_cider']:.3f} at epoch {history['best_epoch'] + 1}; "
          f"checkpoints in {args.out}")
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

    training = commands.add_parser("train", help="train a captioner with cross-entropy (resumes from OUT/last.pt)")
    training.add_argument("--split-file", type=Path, required=True, help="Karpathy-style json, e.g. "
                          "dataset_scenes.json or dataset_coco.json")
    training.add_argument("--image-root", type=Path, required=True, help="folder the json's image paths start in")
    training.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    training.add_argument("--model", choices=["adaptive", "multihead"], default="adaptive")
    training.add_argument("--encoder", choices=["scene", "vgg16", "resnet101"], default="scene")
    training.add_argument("--encoder-weights", help="local state_dict file for a torchvision encoder")
    training.add_argument("--hidden", type=int, default=512)
    training.add_argument("--epochs", type=int, default=10)
    training.add_argument("--batch-size", type=int, default=32)
    training.add_argument("--lr", type=float, default=5e-4)
    training.add_argument("--image-size", type=int, default=96)
    training.add_argument("--min-count", type=int, default=5, help="rarer words become <unk>")
    training.add_argument("--seed", type=int, default=0)
    training.set_defaults(run=_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"capxai: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
