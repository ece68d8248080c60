from .block_cache import BlockCache, BlockCacheConfig
from .magcache import MAG_RATIOS, MagCache, MagCacheConfig
from .teacache import TEACACHE_COEFFICIENTS, TeaCache, TeaCacheConfig
from .vram import LayerStreamer, disable_layer_streaming, enable_layer_streaming, plan_vram, vram_report

__all__ = ["BlockCache", "BlockCacheConfig", "TeaCache", "TeaCacheConfig", "TEACACHE_COEFFICIENTS", "MagCache",
           "MagCacheConfig", "MAG_RATIOS", "LayerStreamer", "enable_layer_streaming", "disable_layer_streaming",
           "plan_vram", "vram_report"]
