"""The settings of ``capxai evaluate`` (its options, defaults and choices, defined once): which split, how the
captions are decoded, CHAIR's files, guided decoding, which explanations to measure (how they are measured:
:class:`capxai.evaluate.explanations.ExplanationSettings`). The demo and the report read the same defaults
(``EvaluateOptions().beam_size``)."""
import dataclasses
from pathlib import Path
from typing import Optional, Tuple, Union

from capxai.data.captions import SPLITS
from capxai.explain import METHODS
from capxai.options import POSITIVE, contrastive_decoding_setting, existing_file, guided_decoding_setting, option


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """``capxai evaluate``: the split, decoding, CHAIR's files, guided decoding and which explanations to measure
    (how: :class:`capxai.evaluate.explanations.ExplanationSettings`)."""

    split: str = option("test", choices=SPLITS)
    beam_size: int = option(3, type=POSITIVE, help="beams when decoding the captions")
    max_length: Optional[int] = option(None, type=POSITIVE, help="words per caption at most (default: the "
                                       "training's)")
    guided_decoding: Optional[Union[Tuple[float, float], str]] = option(
        None, type=guided_decoding_setting, metavar="THRESHOLD:PENALTY|auto", help="explanation-guided beam search: "
        "an object word whose visual relevance share is below THRESHOLD (0..1] loses up to PENALTY nats (e.g. 0.5:2; "
        "docs/LRP_RULES.md, 'Visual share of a word'); auto: the setting chosen on the validation split "
        "(capxai.evaluate.validation_choice)")
    vcd: Optional[Tuple[float, float]] = option(
        None, type=contrastive_decoding_setting, metavar="ALPHA:BETA", help="visual contrastive decoding (VCD): each "
        "step's logits (1 + ALPHA) x on the image - ALPHA x on the image with diffusion noise, among the words at "
        "least BETA times as likely as the most likely one (VCD's 1:0.1; capxai.models.contrastive_decoding)")
    instances: Optional[Path] = option(None, type=existing_file, help="COCO instances json of the split (default: "
                                       "annotations/instances_SPLIT.json beside the split file, when present)")
    synonyms: Optional[Path] = option(None, type=existing_file, help="CHAIR-style synonyms file (default: "
                                      "synonyms.txt beside the split file, when present, else CHAIR's own table "
                                      "for the 80 COCO categories)")
    explanations: Optional[str] = option(None, metavar="METHODS", help=lambda: "also measure explanations of the "
                                         "captions: 'all' or some of " + ", ".join(METHODS.names()) + " (comma-"
                                         "separated): grounding, pointing game, ablation, hallucination detection")

