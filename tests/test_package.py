"""The package imports light: no torchvision, no optional accelerators, no test-only peers."""
from __future__ import annotations

import subprocess
import sys


def test_import_keeps_heavy_and_optional_modules_out():
    code = ("import sys, diffsynth; from diffsynth import ModelManager, WanUniAnimateVideoPipeline, save_video, VideoData, WanModel; "
            "print(sorted(m for m in ('torchvision', 'diffusers', 'flash_attn', 'sageattention', 'mediapipe', "
            "'onnxruntime', 'deepspeed', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
