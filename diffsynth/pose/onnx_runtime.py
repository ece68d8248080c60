"""onnxruntime session creation: CUDA when the installed onnxruntime offers it, CPU otherwise, no warning storm."""
from __future__ import annotations

from pathlib import Path

DEFAULT_DET_MODEL = Path("checkpoints/yolox_l.onnx")
DEFAULT_POSE_MODEL = Path("checkpoints/dw-ll_ucoco_384.onnx")

DOWNLOAD_HINT = (
    "The DWPose ONNX files are published with UniAnimate-DiT (at the root of the model repository):\n"
    "  modelscope download --model xiaolaowx/UniAnimate-DiT yolox_l.onnx dw-ll_ucoco_384.onnx "
    "--local_dir ./checkpoints\n"
    "  or: hf download ZheWang123/UniAnimate-DiT yolox_l.onnx dw-ll_ucoco_384.onnx --local-dir ./checkpoints\n"
    "(https://modelscope.cn/models/xiaolaowx/UniAnimate-DiT, https://huggingface.co/ZheWang123/UniAnimate-DiT).\n"
    "Without them, the offline MediaPipe backend runs instead: `python -m diffsynth animate` picks it by itself, "
    "run_align_pose.py and prepare_training_data.py with `--backend auto` or `--backend mediapipe` (see docs/pose.md)."
)

_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def create_session(path: str | Path, providers: list[str] | None = None):
    """Open an ONNX model with onnxruntime.

    Args:
        path: the .onnx file. A missing file raises FileNotFoundError that says where to download it.
        providers: execution providers to try in order; default CUDA (if this onnxruntime build has it), then CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}\n{DOWNLOAD_HINT}")
    import onnxruntime as ort  # imported here so `import diffsynth.pose` stays light

    if providers is None:
        available = set(ort.get_available_providers())
        providers = [p for p in _PREFERRED_PROVIDERS if p in available]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-node "fallback to CPU" warnings
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
