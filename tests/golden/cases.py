"""Golden generations: a fixed set of calls whose uint8 frames and final latents must stay bit-identical while the
code around the models is reorganised.

Each case runs a real loader + pipeline path on the tiny random models (written in the release layouts and read back
through `ModelManager`) or on the shipped demo model, and returns what a user sees: the generated uint8 frames, plus
the latents the VAE was asked to decode (captured at the VAE, the one boundary every pipeline shares).

    python tests/golden/record.py           # (re-)record tests/golden/golden.json, only on purpose
    python -m pytest tests/golden           # compare
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import Callable, Dict, List

import numpy as np
import torch
from PIL import Image

H, W, F = 32, 48, 5            # short clips
LONG_F = 29                    # 8 latent frames: three windows of 4 with overlap 2
PROMPT = "a person is dancing"


# --------------------------------------------------------------------------------------------- capturing
class Capture:
    """Records every latent tensor handed to the VAE's decode (plain or streamed)."""

    def __init__(self):
        self.latents: List[torch.Tensor] = []

    @contextlib.contextmanager
    def around(self, vae_class):
        decode, decode_iter = vae_class.decode, vae_class.decode_iter
        capture = self

        def wrapped_decode(vae, latents, *args, **kwargs):
            capture.latents.append(latents.detach().clone())
            return decode(vae, latents, *args, **kwargs)

        def wrapped_decode_iter(vae, latents, *args, **kwargs):
            capture.latents.append(latents.detach().clone())
            return decode_iter(vae, latents, *args, **kwargs)

        vae_class.decode, vae_class.decode_iter = wrapped_decode, wrapped_decode_iter
        try:
            yield self
        finally:
            vae_class.decode, vae_class.decode_iter = decode, decode_iter


def digest(frames, latents: List[torch.Tensor]) -> Dict[str, object]:
    """sha256 of the uint8 frames and of the captured latents (raw bytes, dtype and shape included)."""
    arrays = [np.ascontiguousarray(np.asarray(f)) for f in frames]
    frame_hash = hashlib.sha256()
    for a in arrays:
        frame_hash.update(f"{a.dtype}{a.shape}".encode())
        frame_hash.update(a.tobytes())
    latent_hash = hashlib.sha256()
    for t in latents:
        t = t.detach().cpu().contiguous()
        latent_hash.update(f"{t.dtype}{tuple(t.shape)}".encode())
        latent_hash.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16
                           else t.numpy().tobytes())
    return {"frames": frame_hash.hexdigest(), "latents": latent_hash.hexdigest(), "num_frames": len(arrays),
            "frame_shape": list(arrays[0].shape) if arrays else [],
            "frame_mean": round(float(np.mean([a.mean() for a in arrays])), 4) if arrays else 0.0}


# ------------------------------------------------------------------------------------------------ inputs
def _inputs(num_frames: int = F):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    pose = torch.from_numpy(rng.integers(0, 255, (3, num_frames, H, W))).float()
    ref_pose = torch.from_numpy(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return image, pose, ref_pose


_CHECKPOINTS = {}


def tiny_checkpoints():
    """Seeded random tiny models written once per process in the release layouts."""
    if "files" not in _CHECKPOINTS:
        from diffsynth.tiny import build_tiny_models, save_tiny_checkpoints

        folder = tempfile.mkdtemp(prefix="golden-")
        models = build_tiny_models(os.path.join(folder, "tok"), seed=3)
        _CHECKPOINTS["files"] = save_tiny_checkpoints(models, os.path.join(folder, "ckpt"), seed=3)
    return _CHECKPOINTS["files"]


def tiny_pipe(dtype=torch.float32, long_video=False):
    """The tiny models read back like the release (CLIP fp32, the rest in `dtype`, the UniAnimate LoRA merged)."""
    from diffsynth.animate.models import load_tiny_pipeline
    from diffsynth.pipelines import WanUniAnimateVideoPipeline

    pipe = load_tiny_pipeline("cpu", torch_dtype=dtype, checkpoints=tiny_checkpoints())
    if not long_video:   # the short pipeline class on the same models
        short = WanUniAnimateVideoPipeline(device="cpu", torch_dtype=dtype)
        for name in WanUniAnimateVideoPipeline.MODEL_NAMES:
            setattr(short, name, getattr(pipe, name))
        short.prompter = pipe.prompter
        pipe = short
    pipe.show_summary = False
    return pipe


def _short(dtype=torch.float32, setup: Callable = None, **overrides):
    def run():
        pipe = tiny_pipe(dtype)
        if setup is not None:
            setup(pipe)
        image, pose, ref_pose = _inputs()
        kwargs = dict(prompt=PROMPT, negative_prompt="blurry", input_image=image, dwpose_data=pose,
                      random_ref_dwpose=ref_pose, height=H, width=W, num_frames=F, cfg_scale=1.5,
                      num_inference_steps=4, seed=0, tiled=False, progress_bar_cmd=lambda x: x)
        kwargs.update(overrides)
        return pipe(**kwargs)
    return run


def _long(dtype=torch.float32, setup: Callable = None, **overrides):
    def run():
        pipe = tiny_pipe(dtype, long_video=True)
        if setup is not None:
            setup(pipe)
        image, pose, ref_pose = _inputs(LONG_F)
        kwargs = dict(prompt=PROMPT, negative_prompt="blurry", input_image=image, dwpose_data=pose,
                      random_ref_dwpose=ref_pose, height=H, width=W, num_frames=LONG_F, cfg_scale=1.5,
                      num_inference_steps=3, seed=1, tiled=False, context_size=4, context_overlap=2,
                      progress_bar_cmd=lambda x: x)
        kwargs.update(overrides)
        frames = pipe(**kwargs)
        return list(frames)
    return run


def _v2v(long_video=False):
    def run():
        rng = np.random.default_rng(5)
        frames = LONG_F if long_video else F
        video = [Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)) for _ in range(frames)]
        run_ = (_long if long_video else _short)(input_video=video, denoising_strength=0.6)
        return run_()
    return run


def _distilled(pipe):
    pipe.step_distilled = True


def _streamed(pipe):
    pipe.enable_vram_management(num_persistent_param_in_dit=20_000)


def _magcache():
    from diffsynth.acceleration.magcache import MagCacheConfig

    return MagCacheConfig(threshold=0.5, K=2, retention_ratio=0.2)


def _demo():
    from diffsynth.demo.model import HELD_OUT_SEED, generate, load_demo_pipeline
    from diffsynth.demo.synthetic import make_example

    pipe = load_demo_pipeline()
    example = make_example(HELD_OUT_SEED + 1, num_frames=9, height=64, width=48)
    return generate(pipe, example, num_inference_steps=4)


def _demo_script():
    """`python -m diffsynth.demo` as the Quickstart runs it (frames read back from its mp4 are codec-dependent, so
    the latents and the frames the VAE produced are what is compared)."""
    from diffsynth.demo import run as demo

    out = os.path.join(tempfile.mkdtemp(prefix="golden-demo-"), "demo.mp4")
    frames: List = []
    original = demo.comparison_panels

    def keep(reference, dwpose_data, generated):
        frames.extend(generated)
        return original(reference, dwpose_data, generated)

    demo.comparison_panels = keep
    try:
        demo.main(["--out", out, "--steps", "3"])
    finally:
        demo.comparison_panels = original
    return frames


def _animate_cli():
    """`python -m diffsynth animate --models tiny` on a synthetic photo and driving video (ONNX pose stand-ins)."""
    import cv2

    from diffsynth.cli import main
    from diffsynth.data.video import save_video
    import standins

    folder = tempfile.mkdtemp(prefix="golden-animate-")
    det = standins.build_detector(os.path.join(folder, "det.onnx"), [((40.0, 40.0, 200.0, 300.0), 0.9, 0, 0.95)])
    pose = standins.build_pose_model(os.path.join(folder, "pose.onnx"))
    photo = np.full((180, 320, 3), 60, np.uint8)
    photo[20:160, 40:100] = (230, 210, 200)
    cv2.circle(photo, (220, 90), 45, (40, 200, 40), -1)
    cv2.imwrite(os.path.join(folder, "photo.png"), photo)
    clip = []
    for i in range(7):
        frame = np.full((64, 48, 3), 30, np.uint8)
        frame[5 + i:55, 10:30] = (240, 230, 220)
        clip.append(frame)
    save_video(clip, os.path.join(folder, "dance.mp4"), fps=8, progress=False)
    frames: List = []
    from diffsynth.animate import media

    original = media.write_outputs

    def keep(generated, *args, **kwargs):
        generated = list(generated)
        frames.extend(np.asarray(f) for f in generated)
        return original(generated, *args, **kwargs)

    media.write_outputs = keep
    try:
        rc = main(["animate", "--ref", os.path.join(folder, "photo.png"), "--driving", os.path.join(folder, "dance.mp4"),
                   "--out", os.path.join(folder, "out", "me.mp4"), "--models", "tiny", "--resolution", "3072",
                   "--steps", "2", "--cfg", "1.5", "--det-model", str(det), "--pose-model", str(pose), "--no-audio"])
    finally:
        media.write_outputs = original
    if rc != 0:
        raise RuntimeError(f"animate exited {rc}")
    return frames


CASES: Dict[str, Callable] = {
    "short_fp32": _short(),
    "short_fp32_tiled": _short(tiled=True, tile_size=(2, 2), tile_stride=(1, 1)),
    "short_bf16": _short(torch.bfloat16),
    "short_cfg_unbatched": _short(cfg_batch=False),
    "short_cfg1": _short(cfg_scale=1.0),
    "short_teacache": _short(num_inference_steps=8, tea_cache_l1_thresh=0.05,
                             tea_cache_model_id="Wan2.1-I2V-14B-720P"),
    "short_teacache_bf16": _short(torch.bfloat16, num_inference_steps=8, tea_cache_l1_thresh=0.05,
                                  tea_cache_model_id="Wan2.1-I2V-14B-720P"),
    "short_magcache": lambda: _short(num_inference_steps=8, step_cache=_magcache())(),
    "short_fast": _short(setup=_distilled, preset="fast"),
    "short_step_list_renoise": _short(denoising_step_list=(1000, 600, 200), sampler="renoise"),
    "short_layer_streaming": _short(setup=_streamed),
    "short_v2v": _v2v(),
    "long_fp32": _long(),
    "long_bf16": _long(torch.bfloat16),
    "long_fast": _long(setup=_distilled, preset="fast"),
    "long_teacache": _long(num_inference_steps=6, tea_cache_l1_thresh=0.05, tea_cache_model_id="Wan2.1-I2V-14B-720P"),
    "long_recompute_iterator": _long(window_state="recompute", output_type="iterator"),
    "long_v2v": _v2v(long_video=True),
    "demo_model": _demo,
    "demo_script": _demo_script,
    "animate_cli": _animate_cli,
}


def run_case(name: str) -> Dict[str, object]:
    """Run one case and return its digest."""
    from diffsynth.models.wan_vae import WanVideoVAE

    runner = CASES[name]
    with Capture().around(WanVideoVAE) as capture:
        frames = runner()
    return digest(frames, capture.latents)


def environment() -> Dict[str, str]:
    """What the recorded bits depend on beyond the code: CPU kernels and library versions."""
    import sentencepiece   # trains the tiny tokenizer: another version, another vocabulary

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": np.__version__, "sentencepiece": sentencepiece.__version__}
