from .block_cache import BlockCache, BlockCacheConfig, MagCacheConfig, TeaCacheConfig
from .magcache import MAG_RATIOS, MagCache
from .teacache import TEACACHE_COEFFICIENTS, TeaCache
from .vram import LayerStreamer, disable_layer_streaming, enable_layer_streaming, plan_vram, vram_report

__all__ = ["BlockCache", "BlockCacheConfig", "TeaCache", "TeaCacheConfig", "TEACACHE_COEFFICIENTS", "MagCache",
           "MagCacheConfig", "MAG_RATIOS", "LayerStreamer", "enable_layer_streaming", "disable_layer_streaming",
           "plan_vram", "vram_report"]
