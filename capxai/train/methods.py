"""The fine-tuning methods of ``capxai finetune --method`` (issue 23): the paper's LRP-inference fine-tuning, the
controls that test its mechanism, and capxai's label gates and relevance-share penalty. One table, read by the
config checks, the objective and the CLI's choices and help.

- ``baseline``: the same schedule and loss scale (``2 CE``) without weights.
- ``lrp`` (Sun et al. 2022): output-layer features weighted by the LRP relevance of the model's top word,
  ``CE(weighted) + CE(plain)``; ``lrp-label``, ``lrp-objects``, ``lrp-common``, ``lrp-visual`` change one choice
  each (:class:`~capxai.train.lrp_weights.Weighting`).
- ``gated``: the cross-entropy of a ground-truth object phrase is masked where the visual share of its head noun
  (the output layer's closed form with the label as target, ``capxai.explain.guided_decoding.label_share``) is below
  ``--threshold``; ``oracle``: masked where the annotations mark the category hidden in the image (the upper bound
  of any label gate; uses annotations, which a real data set does not have).
- ``share-penalty``: ``2 CE + lambda * mean(1 - share)`` over ground-truth object head nouns, differentiable
  through the closed form (gradients into the features, the decoder and ``W_o``).
"""
import dataclasses
from typing import Optional

from capxai.train.lrp_weights import Weighting


@dataclasses.dataclass(frozen=True)
class FinetuneMethod:
    """What a method changes (``title``: what tables call it): LRP weights of the output features (``weighting``),
    a mask on ground-truth object phrases (``gate``: "explanation" or "annotation"), the share penalty; which inputs
    it needs."""

    description: str
    title: str  # its name in tables and reports
    weighting: Optional[Weighting] = None
    gate: Optional[str] = None
    penalty: bool = False

    @property
    def needs_objects(self) -> bool:
        """Whether it reads the object words of the captions (a synonyms file)."""
        return self.gate is not None or self.penalty or (self.weighting is not None and self.weighting.objects_only)

    @property
    def needs_annotations(self) -> bool:
        """Whether it reads the training split's instances file (hidden instances)."""
        return self.gate == "annotation"


FINETUNE_METHODS = {
    "baseline": FinetuneMethod("the same schedule and loss scale without weights (2 CE)",
                               title="baseline fine-tuning"),
    "lrp": FinetuneMethod("Sun et al.: output features weighted by the LRP relevance of the top word",
                          title="LRP-inference fine-tuning", weighting=Weighting()),
    "lrp-label": FinetuneMethod("control: explain the ground-truth word instead of the top word",
                                title="LRP fine-tuning, label explained", weighting=Weighting(word="label")),
    "lrp-objects": FinetuneMethod("control: weigh only steps whose top word names an object",
                                  title="LRP fine-tuning, object words only", weighting=Weighting(objects_only=True)),
    "lrp-common": FinetuneMethod("control: one normalisation (the larger maximum) for both vectors",
                                 title="LRP fine-tuning, one normalisation",
                                 weighting=Weighting(normalisation="common")),
    "lrp-visual": FinetuneMethod("control: weights on the visual term only (the language term keeps 1)",
                                 title="LRP fine-tuning, visual term only", weighting=Weighting(terms="visual")),
    "gated": FinetuneMethod("mask the cross-entropy of object phrases whose label's visual share is below "
                            "--threshold", title="explanation-gated fine-tuning", gate="explanation"),
    "oracle": FinetuneMethod("mask the cross-entropy of object phrases the annotations mark hidden (upper bound; "
                             "needs the instances file)", title="oracle-gated fine-tuning", gate="annotation"),
    "share-penalty": FinetuneMethod("add --penalty * mean(1 - visual share) of ground-truth object words",
                                    title="share-penalty fine-tuning", penalty=True),
}


def describe_methods() -> str:
    """One line of help: every method with what it does."""
    return "; ".join(f"{name}: {method.description}" for name, method in FINETUNE_METHODS.items())
