from .teacache import TEACACHE_COEFFICIENTS, TeaCache
from .vram import LayerStreamer, disable_layer_streaming, enable_layer_streaming, plan_vram, vram_report

__all__ = ["TeaCache", "TEACACHE_COEFFICIENTS", "LayerStreamer", "enable_layer_streaming", "disable_layer_streaming",
           "plan_vram", "vram_report"]
