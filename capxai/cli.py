"""``capxai``: the command line. Subcommands grow with the product (train, caption, explain, evaluate, finetune,
report, bench); for now: ``capxai data scenes --out DIR``."""
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"capxai: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
