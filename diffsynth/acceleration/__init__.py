from .teacache import TEACACHE_COEFFICIENTS, TeaCache

__all__ = ["TeaCache", "TEACACHE_COEFFICIENTS"]
