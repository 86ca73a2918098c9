"""toy-wan: a small diffusers WanTransformer3DModel trained by cachepilot on synthetic moving shapes."""

from .pipeline import ToyWanPipeline
from .text_encoder import ToyPromptEncoder, UnknownWordsError

__all__ = ["ToyWanPipeline", "ToyPromptEncoder", "UnknownWordsError"]
