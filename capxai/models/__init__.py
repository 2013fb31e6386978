"""capxai.models: image encoders, the paper's two captioners, and the decoding they share."""
from capxai.models.adaptive import AdaptiveAttentionCaptioner
from capxai.models.captioner import Captioner, DecoderTrace
from capxai.models.decoding import Decoded, beam_search, greedy
from capxai.models.encoders import SceneCNN, TorchvisionEncoder
from capxai.models.multihead import MultiHeadCaptioner

__all__ = ["AdaptiveAttentionCaptioner", "MultiHeadCaptioner", "Captioner", "DecoderTrace", "SceneCNN",
           "TorchvisionEncoder", "beam_search", "greedy", "Decoded"]
