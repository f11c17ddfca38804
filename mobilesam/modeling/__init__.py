"""Model modules: encoders, prompt encoder, two-way transformer, mask decoder and ``Sam``."""

from .image_encoder import ImageEncoderViT, ViTConfig
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT, TinyViTConfig
from .transformer import TwoWayTransformer

__all__ = [
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TinyViTConfig",
    "TwoWayTransformer",
    "ViTConfig",
]
