"""capxai.models: image encoders, the captioners (the paper's two and a transformer decoder), the captioner contract
and the decoding they share."""
from capxai.models.adaptive import AdaptiveAttentionCaptioner
from capxai.models.captioner import Captioner, DecoderTrace
from capxai.models.decoding import Decoded, beam_search, greedy
from capxai.models.encoders import SceneCNN, TorchvisionEncoder
from capxai.models.multihead import MultiHeadCaptioner
from capxai.models.transformer import TransformerCaptioner
from capxai.models.factory import CAPTIONERS, ENCODERS, CaptionModel, TrainConfig, build_model, load_trained

__all__ = ["AdaptiveAttentionCaptioner", "MultiHeadCaptioner", "TransformerCaptioner", "Captioner", "DecoderTrace",
           "SceneCNN", "TorchvisionEncoder", "beam_search", "greedy", "Decoded", "CAPTIONERS", "ENCODERS",
           "CaptionModel", "TrainConfig", "build_model", "load_trained"]
