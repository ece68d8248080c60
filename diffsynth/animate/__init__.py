"""Photo + driving video -> clip, in one call (`python -m diffsynth animate`; the web UI uses the same API).

    from diffsynth.animate import AnimateSettings, Animator, animate, animate_batch
    result = animate("photo.jpg", "dance.mp4", "outputs/dance.mp4", AnimateSettings(models="tiny"),
                     progress=lambda event: print(event.stage, event.fraction, event.message))
"""
from .run import AnimateResult, Animator, BatchResult, ModelLoadError, OutputPaths, animate, animate_batch, find_pairs
from .run import generation_size
from .settings import DEFAULT_PROMPT, TINY, VRAM_TIERS, AnimateSettings, ProgressEvent, VramTier

__all__ = ["AnimateSettings", "AnimateResult", "Animator", "BatchResult", "ModelLoadError", "OutputPaths",
           "ProgressEvent", "VramTier", "VRAM_TIERS", "TINY", "DEFAULT_PROMPT", "animate", "animate_batch",
           "find_pairs", "generation_size"]
