"""Building and loading a trained model: the config a model is built from, the registries of captioner kinds and
encoders it names, and ``load_trained`` (a checkpoint written by ``capxai train`` back into a model). Explaining and
evaluating load models through here, never through ``capxai.train``."""
import dataclasses
from pathlib import Path
from typing import Callable, List, Optional

from torch import nn

from capxai.data.vocabulary import Vocabulary
from capxai.models.adaptive import AdaptiveAttentionCaptioner
from capxai.models.captioner import Captioner
from capxai.models.checkpoint import load_checkpoint
from capxai.models import hf, hf_llava
from capxai.models.encoders import SceneCNN, TorchvisionEncoder
from capxai.models.multihead import MultiHeadCaptioner
from capxai.models.transformer import TransformerCaptioner
from capxai.options import COUNT, POSITIVE, existing_file, float_between, int_at_least, option
from capxai.registry import Registry


@dataclasses.dataclass(frozen=True)
class CaptionerKind:
    """A captioner kind of ``capxai train --model``: ``build(config, vocab_size, feature_dim)`` and ``check(config)``
    (what in the config this kind cannot take, as messages)."""

    build: Callable[..., Captioner]
    check: Callable[..., List[str]] = lambda config: []
    encoder: Optional[str] = None  # the encoder this kind reads, when it needs one (an HF ViT's tokens)


CAPTIONERS: Registry = Registry("captioners")
ENCODERS: Registry = Registry("encoders")


def _heads_divide_hidden(config) -> List[str]:
    if config.hidden % config.heads:
        return [f"hidden ({config.hidden}) must be divisible by heads ({config.heads}) for the {config.model} model"]
    return []


CAPTIONERS.register("adaptive", CaptionerKind(lambda config, vocab_size, feature_dim: AdaptiveAttentionCaptioner(
    vocab_size, feature_dim, config.hidden, config.attention_dim, config.dropout)),
    help="the paper's adaptive attention with a visual sentinel (two LSTMs)")
CAPTIONERS.register("multihead", CaptionerKind(lambda config, vocab_size, feature_dim: MultiHeadCaptioner(
    vocab_size, feature_dim, config.hidden, config.heads, config.dropout), _heads_divide_hidden),
    help="the paper's LSTM with multi-head attention")
CAPTIONERS.register("transformer", CaptionerKind(lambda config, vocab_size, feature_dim: TransformerCaptioner(
    vocab_size, feature_dim, config.hidden, config.layers, config.heads, dropout=config.dropout,
    max_positions=config.max_length + 2), _heads_divide_hidden),
    help="a pre-LayerNorm transformer decoder (--layers, --heads), explained by the generic LRP path")
CAPTIONERS.register("hf-vit-gpt2", CaptionerKind(lambda config, vocab_size, feature_dim: hf.gpt2(
    vocab_size, feature_dim, config.hidden, config.layers, config.heads, config.max_length + 2, config.dropout),
    _heads_divide_hidden, encoder="vit"),
    help="Hugging Face GPT-2 with cross-attention over a Hugging Face ViT (--encoder vit; --hidden, --layers, "
         "--heads), explained by the generic LRP path")
CAPTIONERS.register("hf-llava", CaptionerKind(lambda config, vocab_size, feature_dim: hf_llava.llama(
    vocab_size, feature_dim, (config.image_size // 8) ** 2 + 1, config.hidden, config.layers, config.heads,
    config.max_length, config.dropout), _heads_divide_hidden, encoder="clip"),
    help="a LLaVA-style vision-language model: Hugging Face LLaMA reading a CLIP tower's projected tokens as its "
         "prefix (--encoder clip; --hidden, --layers, --heads), explained by the generic LRP path")
ENCODERS.register("scene", lambda config: SceneCNN(), help="a small CNN for the built-in scenes")
ENCODERS.register("vit", lambda config: hf.vit(config.image_size, 8, config.hidden, config.layers, config.heads),
                  help="a Hugging Face ViT (patches of 8 px, --hidden wide, --layers, --heads), for --model "
                       "hf-vit-gpt2")
ENCODERS.register("clip", lambda config: hf_llava.clip(config.image_size, 8, config.hidden, config.layers,
                                                        config.heads),
                  help="a Hugging Face CLIP vision tower (patches of 8 px, --hidden wide, --layers, --heads), for "
                       "--model hf-llava")
ENCODERS.register("vgg16", lambda config: TorchvisionEncoder("vgg16", config.encoder_weights),
                  help="torchvision VGG16 (the paper's), weights from --encoder-weights")
ENCODERS.register("resnet101", lambda config: TorchvisionEncoder("resnet101", config.encoder_weights),
                  help="torchvision ResNet-101, weights from --encoder-weights")


@dataclasses.dataclass
class TrainConfig:
    """How a captioner is built and trained (``capxai train``'s options; a checkpoint stores it).
    ``encoder`` None: the encoder the captioner kind reads, else "scene"; ``attention_dim`` None: ``hidden``."""

    model: str = option("adaptive", choices=lambda: CAPTIONERS.names(),
                        help=lambda: "captioner kind: " + CAPTIONERS.describe())
    encoder: Optional[str] = option(None, choices=lambda: ENCODERS.names(), help=lambda: "image encoder (default: "
                                    "the one the --model kind reads, else scene): " + ENCODERS.describe())
    encoder_weights: Optional[str] = option(None, type=existing_file, to_field=str,
                                            help="local state_dict file for a torchvision encoder")
    finetune_encoder: bool = option(True, flag="--freeze-encoder", help="keep the encoder's weights fixed (default: "
                                    "fine-tune it with the captioner)")
    # None: lr; a CNN trained from scratch may learn faster with more
    encoder_lr: Optional[float] = option(None, type=float_between(0, 10, low_open=True),
                                         help="learning rate of the encoder (default: --lr)")
    hidden: int = option(512, type=POSITIVE)
    attention_dim: Optional[int] = option(None, type=POSITIVE, help="additive attention's score space (default: "
                                          "--hidden)")
    heads: int = option(8, type=POSITIVE, help="attention heads (multihead, transformer)")
    layers: int = option(2, type=POSITIVE, help="decoder layers of the transformer")
    dropout: float = option(0.5, type=float_between(0, 1, high_open=True))
    image_size: int = option(96, type=int_at_least(32))
    max_length: int = option(16, type=POSITIVE, help="words per caption at most")
    min_count: int = option(5, type=POSITIVE, help="rarer words become <unk>")
    epochs: int = option(10, type=POSITIVE, help="total epochs (may grow when resuming)")
    batch_size: int = option(32, type=POSITIVE)
    captions_per_image: int = option(0, type=COUNT, help="captions of each image per step, drawn anew each step "
                                     "(0: all)")
    lr: float = option(5e-4, type=float_between(0, 10, low_open=True))
    betas: tuple = (0.8, 0.999)
    clip_norm: float = option(2.0, type=float_between(0, 1e6, low_open=True), help="gradients are clipped to this "
                              "norm")
    decay_factor: float = option(0.8, type=float_between(0, 1, low_open=True), help="the learning rate is "
                                 "multiplied by this when validation CIDEr stops improving")
    decay_patience: int = option(1, type=COUNT, help="epochs without improvement before the learning rate decays")
    seed: int = option(0, type=COUNT)

    def __post_init__(self):
        if self.encoder is None:
            kind = CAPTIONERS.get(self.model)
            self.encoder = (kind.encoder if kind is not None else None) or "scene"
        if self.attention_dim is None:
            self.attention_dim = self.hidden
        problems = check_config(self)
        if problems:
            raise ValueError(f"TrainConfig: {problems[0]}")


# (field, lowest allowed, is the lowest itself allowed) for the numbers of a TrainConfig
_LIMITS = (("hidden", 1, True), ("attention_dim", 1, True), ("heads", 1, True), ("layers", 1, True),
           ("image_size", 32, True), ("max_length", 1, True), ("min_count", 1, True), ("epochs", 1, True),
           ("batch_size", 1, True), ("captions_per_image", 0, True), ("lr", 0.0, False), ("clip_norm", 0.0, False),
           ("decay_factor", 0.0, False), ("decay_patience", 0, True), ("dropout", 0.0, True))


def choice_problems(config, choices) -> list:
    """Which of a config's fields (``(field, allowed values)``) hold a value that is not allowed."""
    return [f"{name} must be one of {list(allowed)}, got {getattr(config, name)!r}" for name, allowed in choices
            if getattr(config, name) not in allowed]


def limit_problems(config, limits) -> list:
    """What breaks ``limits`` (``(field, lowest, is the lowest allowed)``) among a config's numbers."""
    problems = []
    for name, lowest, inclusive in limits:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            problems.append(f"{name} must be a number, got {value!r}")
        elif value < lowest or (value == lowest and not inclusive):
            problems.append(f"{name} must be {'>=' if inclusive else '>'} {lowest}, got {value}")
    return problems


def check_config(config: "TrainConfig") -> list:
    """What is wrong with a training config, as ``["hidden must be >= 1, got 0", ...]`` (empty when nothing)."""
    problems = choice_problems(config, (("model", CAPTIONERS.names()), ("encoder", ENCODERS.names())))
    problems += limit_problems(config, _LIMITS)
    if isinstance(config.dropout, (int, float)) and config.dropout >= 1:
        problems.append(f"dropout must be < 1, got {config.dropout}")
    if config.encoder_lr is not None and not (isinstance(config.encoder_lr, (int, float)) and config.encoder_lr > 0):
        problems.append(f"encoder_lr must be > 0, got {config.encoder_lr!r}")
    if not problems and config.model in CAPTIONERS:
        kind = CAPTIONERS[config.model]
        problems += kind.check(config)
        if kind.encoder is not None and config.encoder != kind.encoder:
            problems.append(f"model {config.model} reads the tokens of its own encoder: use encoder "
                            f"{kind.encoder!r} (--encoder {kind.encoder}), got {config.encoder!r}")
    return problems


class CaptionModel(nn.Module):
    """Encoder + captioner: ``forward(images [B, 3, S, S], captions [N, L], image_index [N])`` encodes each image
    once and returns the captioner's teacher-forced trace of caption n on image ``image_index[n]``. ``image_size``
    (S, when known) lets explainers refuse images of another size."""

    def __init__(self, encoder: nn.Module, captioner: nn.Module, image_size: Optional[int] = None):
        super().__init__()
        self.encoder, self.captioner, self.image_size = encoder, captioner, image_size

    def forward(self, images, captions, image_index):
        return self.captioner(self.encoder(images).index_select(0, image_index), captions)


def build_model(config: TrainConfig, vocab_size: int) -> CaptionModel:
    """The encoder and captioner a config names (``ENCODERS``, ``CAPTIONERS``), freshly initialised."""
    encoder = ENCODERS[config.encoder](config)
    captioner = CAPTIONERS[config.model].build(config, vocab_size, encoder.channels)
    return CaptionModel(encoder, captioner, config.image_size)


def config_from_dict(values, source) -> TrainConfig:
    """A ``TrainConfig`` from a checkpoint's plain-data config (unknown keys ignored, bad values named)."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{key: value for key, value in values.items() if key in fields})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: its training config is invalid ({error})") from None


def load_trained(checkpoint, vocabulary_file=None, device="cpu"):
    """A trained ``CaptionModel`` (in eval mode, on ``device``), its ``Vocabulary`` and ``TrainConfig`` from a
    checkpoint written by :func:`train` (``best.pt`` or ``last.pt``; saved on any device), read without running
    code from it. The vocabulary is the one stored in the checkpoint, or ``vocabulary_file`` when given (it must
    have as many words)."""
    checkpoint = Path(checkpoint)
    payload = load_checkpoint(checkpoint, kind="model")
    config = config_from_dict(payload["config"], f"checkpoint {checkpoint}")
    try:
        vocabulary = Vocabulary.load(vocabulary_file) if vocabulary_file else Vocabulary(payload["vocabulary"])
    except ValueError as error:
        raise ValueError(f"checkpoint {checkpoint}: {error}") from None
    model = build_model(config, len(vocabulary))
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"checkpoint {checkpoint} does not fit its own config and vocabulary "
                         f"({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), vocabulary, config
