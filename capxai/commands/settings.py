"""The settings of the ``capxai`` commands that are not a library object's own: where a command reads and writes,
which model it loads, how evaluate, explain, finetune-table, data coco and report are asked to run. Each is a
dataclass whose fields (:func:`capxai.options.option`) are the command's options, defaults and choices; the
settings that are a library object's (:class:`capxai.data.scenes.SceneConfig`, :class:`capxai.models.TrainConfig`,
:class:`capxai.train.FinetuneConfig`, :class:`capxai.runtime.RunOptions`, evaluate's
:class:`capxai.evaluate.settings.EvaluateOptions` and explanation settings) are defined beside that object."""
import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple

from capxai.data.captions import SPLITS
from capxai.options import POSITIVE, existing_file, existing_folder, option, output_folder

REPLACE = "replace what capxai wrote there before (all of it; files capxai did not write are never replaced)"


@dataclasses.dataclass(frozen=True)
class GlobalOptions:
    """The options of ``capxai`` itself, before the command."""

    debug: bool = option(False, help="show the traceback of an error")


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """``--out``, ``--overwrite`` (given twice: also files changed after capxai wrote them) and ``--force``."""

    out: Path = option(type=output_folder, required=True, help="output folder")
    overwrite: int = option(0, action="count", help=REPLACE + "; given twice, also files you changed after capxai "
                            "wrote them (refused otherwise)")
    force: bool = option(False, help="the same as --overwrite given twice")


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """``--split-file`` and ``--image-root``: where a command reads its images and captions."""

    split_file: Optional[Path] = option(None, type=existing_file, help="Karpathy-style json, e.g. "
                                        "dataset_scenes.json or dataset_coco.json")
    image_root: Optional[Path] = option(None, type=existing_folder, help="folder the json's image paths start in")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """``--checkpoint`` (a model written by ``capxai train``) or ``--hf-model`` (a local Hugging Face folder)."""

    checkpoint: Optional[Path] = option(None, type=existing_file, help="best.pt or last.pt of capxai train")
    hf_model: Optional[Path] = option(None, type=existing_folder, metavar="DIR", help="a local Hugging Face "
                                      "model: the folder of its save_pretrained")


@dataclasses.dataclass(frozen=True)
class CocoSplitOptions:
    """``capxai data coco``: the splits of a Karpathy-style json made from COCO-format caption files."""

    split: List[Tuple[str, str, str]] = option(None, nargs=3, action="append", required=True,
                                               metavar=("NAME", "CAPTIONS_JSON", "IMAGE_FOLDER"),
                                               help="e.g. --split train annotations/captions_train2014.json "
                                               "train2014 (repeat per split; IMAGE_FOLDER relative to the image "
                                               "root given to train)")
    dataset: str = option("coco", help="name recorded in the json")


@dataclasses.dataclass(frozen=True)
class ExplainOptions:
    """``capxai explain``: what to explain (images, or a split in shards), with which method, how decoded."""

    images: Optional[List[Path]] = option(None, type=existing_file, nargs="+", help="image files to explain")
    captions: Optional[List[str]] = option(None, nargs="+", help="one caption per image to explain (default: the "
                                           "model's own, decoded)")
    split: str = option("test", choices=SPLITS)
    limit: Optional[int] = option(None, type=POSITIVE, help="explain the first N images of the split only")
    shard_size: int = option(32, type=POSITIVE, help="images per shard file")
    method: str = option("lrp", choices=lambda: _method_names() + ["all"],
                         help=lambda: "the method (or all): " + _methods().describe())
    figures: bool = option(True, flag="--no-figures", help="with --images: write explanation.pt only")
    contrast: Optional[str] = option(None, metavar="WORD", help="explain each word rather than WORD: the start is "
                                     "the word's logit minus WORD's (methods that explain a logit); '<runner-up>': "
                                     "rather than the model's next most likely word at each step")
    prompt: Optional[str] = option(None, help="with --hf-model of a vision-language model: the text read with the "
                                   "image (default: the family's captioning prompt; for a family with a chat template "
                                   "the user's message, else the whole prompt with the image placeholder)")
    beam_size: int = option(1, type=POSITIVE, help="beams when decoding the model's captions")
    max_length: Optional[int] = option(None, type=POSITIVE, help="words per caption at most (default: the "
                                       "training's; 16 for --hf-model)")
    memory_budget: Optional[int] = option(None, type=POSITIVE, metavar="MIB", help="with --hf-model of a "
                                          "vision-language model: the MiB the words' backward may take; as many "
                                          "words go through one backward as it holds (default: half the memory "
                                          "available on the device)")


@dataclasses.dataclass(frozen=True)
class EncoderRulesOptions:
    """``--composite``: the LRP rules of the encoder (a name of ``capxai.explain.COMPOSITES``)."""

    composite: str = option("paper", choices=lambda: _composites().names(),
                            help=lambda: "LRP rules of the encoder: " + _composites().describe())


@dataclasses.dataclass(frozen=True)
class TableOptions:
    """``capxai finetune-table``: its rows (evaluation folders, one per seed) and what they evaluated."""

    row: List[str] = option(None, action="append", required=True,
                            metavar="CAPTIONER/VARIANT=FOLDER[,FOLDER...][;FOLDER,...]",
                            help="one row: the evaluation folders of its seeds (capxai evaluate --explanations lrp), "
                            "';' between start models; a variant METHOD-X of a captioner with a baseline-X row also "
                            "gets a difference row, with an interval over starts, seeds and images")
    split: str = option("test", choices=SPLITS, help="the evaluated split")
    beam_size: int = option(3, type=POSITIVE, help="the evaluations' beam size")


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """``capxai report``: the folder whose report is written (a demo run, or explained images), and whether to replace
    it."""

    run_dir: Path = option(type=existing_folder, positional=True, metavar="RUN_DIR",
                           help="what make demo wrote (e.g. runs/demo), or the --out folder of capxai explain "
                           "--images")
    overwrite: bool = option(False, help="replace the report written there before")


def _methods():
    from capxai.explain import METHODS  # the registry is read when the parser is built, not at import

    return METHODS


def _method_names() -> List[str]:
    return _methods().names()


def _composites():
    from capxai.explain import COMPOSITES

    return COMPOSITES


__all__ = ["GlobalOptions", "OutputOptions", "DataOptions", "ModelOptions", "CocoSplitOptions",
           "ExplainOptions", "EncoderRulesOptions", "TableOptions", "ReportOptions"]
