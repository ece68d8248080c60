"""The demo model: a tiny UniAnimate (Wan2.1-I2V architecture) trained on synthetic mannequin clips, on CPU.

    from diffsynth.demo_model import load_demo_pipeline, generate
    pipe = load_demo_pipeline()                         # shipped weights, through ModelManager + load_lora_v2
    frames = generate(pipe, example)                    # example = diffsynth.data.synthetic.make_example(seed)

Retrain: `bash scripts/train_demo_model.sh` (this module's `train` command; the shipped model took two runs, about
2.5 h on 2 CPU threads in all, and the script's header has both commands).
Stages, all with this project's own code:

1. data: `diffsynth.data.synthetic` clips written as `prepare_training_data.py` sample folders (seeds 0..N-1;
   seeds >= HELD_OUT_SEED are never used in training and are what the tests generate); every BYSTANDER_EVERY-th
   clip has a bystander (a second, still figure), where only the reference pose tells the two people apart.
2. VAE: the project's `WanVideoVAE` at width 8 (`DEMO_VAE`), trained here as an autoencoder on the clips' frames
   (MSE + L1, latents kept near unit scale, noise on the latents so the decoder tolerates imperfect ones).
3. Frozen tiny umT5 and CLIP (`diffsynth.tiny.build_tiny_models`, random seeded weights: the caption is constant
   and the reference reaches the DiT mainly through the VAE latent `y`).
4. `--task data_process`: the trainer's encoded-data cache.
5. `--train_architecture full`: the whole tiny DiT and the pose guider (calibrated init: `calibrated_pose_guider`),
   flow matching, from the cache.
6. `--train_architecture lora`: a LoRA fine-tune on top of the stage-5 DiT (`--pretrained_lora_path` carries the
   stage-5 pose guider and a zero-initialised LoRA).
7. export into the release layouts: DiT shards + config.json (stage 5), T5 + `google/umt5-xxl` tokenizer, VAE,
   CLIP, and the UniAnimate file (stage-6 LoRA + pose guider + network_alpha), all safetensors; MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .configs import PoseGuiderConfig, WanDiTConfig
from .loading.release import DEMO_FILES, DEMO_FOLDER
from .tiny import TINY_CLIP, TINY_T5, TINY_VAE

logger = logging.getLogger("diffsynth.demo_model")

ASSET_DIR = DEMO_FOLDER
DEMO_DIT = WanDiTConfig(model_type="i2v", in_dim=36, dim=192, ffn_dim=384, num_heads=6, num_layers=4,
                        text_dim=TINY_T5.dim, image_dim=TINY_CLIP.dim)
# Half the released guider width (16): the full-resolution Conv3d layers are most of a CPU training step
# (288 ms of about 350 at 16 channels, 91 ms at 8), and 8 channels are plenty for drawn stick figures.
DEMO_POSE = PoseGuiderConfig(hidden_dim=8, out_dim=DEMO_DIT.dim)
DEMO_VAE = TINY_VAE
CONFIGS = [TINY_T5, DEMO_VAE, TINY_CLIP]
HEIGHT, WIDTH, NUM_FRAMES = 64, 48, 9
HELD_OUT_SEED = 100_000          # synthetic seeds from here on are never used in training
# Every BYSTANDER_EVERY-th training clip has a second, still figure behind the moving one: only the reference pose
# says which of the reference's two figures the driving poses animate (synthetic.Bystander).
BYSTANDER_EVERY = 2
PROMPT = "a person is dancing"   # the trainer's default caption

FILES = DEMO_FILES   # the release layouts (loading/release.py)
# Default inference settings of the demo (what the tests and the strip use).
INFERENCE = dict(num_inference_steps=10, cfg_scale=1.0, sigma_shift=5.0, seed=0)


# ================================================================================================ loading
def model_files(folder=ASSET_DIR) -> Dict[str, object]:
    """Paths of the demo model's files in `folder` (the release layouts, all safetensors)."""
    folder = Path(folder)
    return {k: [str(folder / n) for n in v] if isinstance(v, list) else str(folder / v) for k, v in FILES.items()}


def demo_checkpoints(folder=ASSET_DIR):
    """The demo model's files as `diffsynth.tiny.TinyCheckpoints` (what `python -m diffsynth.demo` and
    `python -m diffsynth animate --models tiny` load through the README's ModelManager flow)."""
    from .tiny import TinyCheckpoints  # noqa: PLC0415

    files = model_files(folder)
    missing = [p for v in files.values() for p in (v if isinstance(v, list) else [v]) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"demo model files missing: {missing}; retrain with bash scripts/train_demo_model.sh")
    return TinyCheckpoints(dit_shards=files["dit"], text_encoder=files["text_encoder"], vae=files["vae"],
                           image_encoder=files["image_encoder"], unianimate=files["unianimate"])


def load_demo_pipeline(device: str = "cpu", folder=ASSET_DIR, torch_dtype: torch.dtype = torch.float32):
    """The shipped demo model as a `WanUniAnimateVideoPipeline`, read exactly like the released models
    (`from_pretrained`: the release table's loaders, the UniAnimate LoRA + pose guider merged with its stored
    network_alpha; its CLIP's configuration is written beside it)."""
    from .pipelines import WanUniAnimateVideoPipeline  # noqa: PLC0415

    pipe = WanUniAnimateVideoPipeline.from_pretrained(folder, torch_dtype=torch_dtype, device=device, progress=False)
    pipe.show_summary = False
    return pipe


def generate(pipe, example, reference: Optional[np.ndarray] = None, reference_pose: Optional[np.ndarray] = None,
             poses: Optional[Sequence[np.ndarray]] = None, **overrides) -> List[np.ndarray]:
    """Generate the frames of a `synthetic.Example` (or with another reference / poses) as uint8 RGB arrays, through
    the front doors' generate step (`animate.generate.generate_frames`)."""
    from PIL import Image  # noqa: PLC0415

    from .animate.generate import generate_frames  # noqa: PLC0415
    from .pipelines import GenerationRequest, load_pose_data  # noqa: PLC0415

    reference = example.reference if reference is None else reference
    reference_pose = example.reference_pose if reference_pose is None else reference_pose
    poses = example.poses if poses is None else poses
    height, width = reference.shape[:2]
    dwpose_data, random_ref_dwpose = load_pose_data([Image.fromarray(p) for p in poses],
                                                    Image.fromarray(reference_pose), height, width)
    request = GenerationRequest(prompt=PROMPT, tiled=False, **{**INFERENCE, **overrides})
    frames = generate_frames(pipe, reference, dwpose_data, random_ref_dwpose, request)
    return [np.asarray(f) for f in frames]


def psnr(frames: Sequence[np.ndarray], truth: Sequence[np.ndarray], masks: Optional[Sequence[np.ndarray]] = None
         ) -> float:
    """PSNR (dB, peak 255) over all frames; with `masks`, only over the masked pixels."""
    a = np.stack(frames).astype(np.float64)
    b = np.stack(truth).astype(np.float64)
    err = (a - b) ** 2
    if masks is not None:
        m = np.stack(masks).astype(bool)
        err = err[m]
    return float(10 * np.log10(255.0 ** 2 / max(err.mean(), 1e-10)))


def figure_region(example, dilate: int = 2) -> List[np.ndarray]:
    """Masks of where the figure is in each ground-truth frame or in the reference, dilated by `dilate` pixels:
    the pixels that tell a right pose from a wrong one (the background dominates a plain PSNR)."""
    import cv2  # noqa: PLC0415

    kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
    return [cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in example.masks]


ABLATIONS = ("pose_tokens_zeroed", "reference_pose_zeroed", "reference_latent_zeroed")
POSE_MARGIN_DB = 0.5    # what the learned-behaviour test asks of each pose ablation (PSNR over the moving pixels)
REFERENCE_POSE_MARGIN_DB = 0.3   # what it asks of the reference-pose ablation (REFERENCE_POSE_CHECK)
# The reference pose is scored where it carries information: on two-figure clips (the same held-out clips with a
# bystander), over the moving figure's region, whose colours it selects. Keys "two_figures.<name>.<metric>".
TWO_FIGURE_ABLATIONS = ("reference_pose_zeroed",)
REFERENCE_POSE_CHECK = ("two_figures.", "figure")   # (key prefix of the clips, metric)


@contextlib.contextmanager
def ablation(pipe, name: str):
    """Temporarily cut one conditioning path of `pipe` (a diagnostic for the learned-behaviour test):
    "pose_tokens_zeroed" (the pose-video tokens are zeros), "reference_pose_zeroed" (the reference-pose embedding
    added to y is zeros) or "reference_latent_zeroed" (the 16 VAE-latent channels of y are zeros; the mask stays)."""
    from .pipelines import unianimate  # noqa: PLC0415

    if name == "pose_tokens_zeroed":
        original = pipe.encode_pose_video
        pipe.encode_pose_video = lambda *a, **k: torch.zeros_like(original(*a, **k))
        try:
            yield
        finally:
            del pipe.encode_pose_video
        return
    if name == "reference_pose_zeroed":
        attr = "encode_reference_pose"
        original = unianimate.encode_reference_pose
        replacement = lambda *a, **k: torch.zeros_like(original(*a, **k))  # noqa: E731
    elif name == "reference_latent_zeroed":
        attr = "encode_reference_image"
        original = unianimate.encode_reference_image

        def replacement(*args, **kwargs):
            clip_feature, y = original(*args, **kwargs)
            y = y.clone()
            y[:, 4:] = 0
            return clip_feature, y
    else:
        raise ValueError(f"unknown ablation {name!r}; choose one of {ABLATIONS}")
    setattr(unianimate, attr, replacement)
    try:
        yield
    finally:
        setattr(unianimate, attr, original)


def evaluate(pipe, seeds: Sequence[int], ablations: Sequence[str] = ABLATIONS, swap: bool = True,
             two_figure_ablations: Sequence[str] = TWO_FIGURE_ABLATIONS, **overrides) -> dict:
    """PSNR (full frame, and over the figure's dilated region) of generations on synthetic clips `seeds`, as is,
    under each ablation, and with the next seed's reference ("swapped": scored against clip A's frames and
    against the other character rendered doing A's motion); then the same clips with a bystander, as is and under
    each of `two_figure_ablations` (keys prefixed "two_figures."; none when it is empty).
    Returns {"per_seed": ..., "mean": ...}."""
    from .data.synthetic import make_example  # noqa: PLC0415

    examples = [make_example(s) for s in seeds]
    per_seed: Dict[str, list] = {}

    def score(name, frames, ex, truth=None):
        truth = truth or ex
        per_seed.setdefault(name + ".full", []).append(psnr(frames, truth.frames))
        per_seed.setdefault(name + ".figure", []).append(psnr(frames, truth.frames, figure_region(truth)))
        per_seed.setdefault(name + ".motion", []).append(psnr(frames, truth.frames, motion_region(truth)))

    for ex in examples:
        score("baseline", generate(pipe, ex, **overrides), ex)
    for name in ablations:
        with ablation(pipe, name):
            for ex in examples:
                score(name, generate(pipe, ex, **overrides), ex)
    if swap:
        for i, ex in enumerate(examples):
            j = (i + 1) % len(examples)
            other = examples[j]
            frames = generate(pipe, ex, reference=other.reference, reference_pose=other.reference_pose, **overrides)
            score("swapped_vs_own", frames, ex)
            score("swapped_vs_other", frames, ex, make_example(seeds[i], appearance_seed=seeds[j]))
    if two_figure_ablations:
        pairs = [make_example(s, bystander=True) for s in seeds]
        for name in ("baseline", *two_figure_ablations):
            with ablation(pipe, name) if name != "baseline" else contextlib.nullcontext():
                for ex in pairs:
                    score("two_figures." + name, generate(pipe, ex, **overrides), ex)
    return {"per_seed": per_seed, "mean": {k: float(np.mean(v)) for k, v in per_seed.items()}}


def write_strip(path, seeds: Sequence[int] = (HELD_OUT_SEED, HELD_OUT_SEED + 1),
                frames: Sequence[int] = (0, 2, 4, 6, 8), scale: int = 2, pipe=None, swap: bool = True,
                shown: Optional[int] = None) -> str:
    """A PNG of held-out examples from the shipped model. Per example, rows: [reference | poses],
    [reference pose | generated], [blank | ground truth] and, with `swap`, [the next example's reference | generated
    from it with these poses]; frames upscaled `scale` times (nearest). `shown`: draw only the first `shown`
    examples (the others still lend their references to the swap row)."""
    from PIL import Image  # noqa: PLC0415

    from .data.safe_write import atomic_output  # noqa: PLC0415
    from .data.synthetic import make_example  # noqa: PLC0415

    pipe = pipe or load_demo_pipeline()
    gap = 2
    examples = [make_example(seed) for seed in seeds]
    blocks = []
    for k, ex in enumerate(examples[:shown]):
        generated = generate(pipe, ex)
        blank = np.full_like(ex.reference, 255)
        rows = [[ex.reference] + [ex.poses[i] for i in frames],
                [ex.reference_pose] + [generated[i] for i in frames],
                [blank] + [ex.frames[i] for i in frames]]
        if swap and len(examples) > 1:
            other = examples[(k + 1) % len(examples)]
            swapped = generate(pipe, ex, reference=other.reference, reference_pose=other.reference_pose)
            rows.append([other.reference] + [swapped[i] for i in frames])
        h, w = ex.reference.shape[:2]
        n = len(rows)
        block = np.full((n * h + (n - 1) * gap, len(frames) * (w + gap) + w + 2 * gap, 3), 255, np.uint8)
        for r, row in enumerate(rows):
            for c, image in enumerate(row):
                x = c * (w + gap) + (gap if c else 0)
                block[r * (h + gap):r * (h + gap) + h, x:x + w] = image
        blocks.append(block)
    sheet = np.concatenate([np.concatenate([b, np.full((3 * gap, b.shape[1], 3), 255, np.uint8)]) for b in blocks])
    sheet = sheet.repeat(scale, 0).repeat(scale, 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temp:        # never a half-written PNG, never written through a symlink
        Image.fromarray(sheet).save(temp, format="PNG", optimize=True)
    return str(path)


def motion_region(example, threshold: int = 40, dilate: int = 1) -> List[np.ndarray]:
    """Masks of the pixels that move: where a ground-truth frame differs from the clip's per-pixel median by more
    than `threshold` in some channel (dilated by `dilate`). A generation that ignores the poses (a static figure)
    loses here; the static background and torso do not count."""
    import cv2  # noqa: PLC0415

    frames = np.stack(example.frames).astype(np.int16)
    median = np.median(frames, axis=0)
    kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
    return [cv2.dilate((np.abs(f - median).max(-1) > threshold).astype(np.uint8), kernel) > 0 for f in frames]


# ================================================================================================ training
def bystander_seeds(seeds: Sequence[int], every: int = BYSTANDER_EVERY) -> List[int]:
    """The training seeds whose clips have a bystander: every `every`-th one (none when `every` is 0)."""
    return [s for s in seeds if every and s % every == every - 1]


def _write_data(folder: Path, seeds: Sequence[int], bystanders: Sequence[int] = ()) -> Path:
    """The training clips in `folder`; a folder finished by an earlier run is reused only if it holds these very
    clips (its `.done` marker names them), since every later stage of the work dir was built from it."""
    from .data.synthetic import write_dataset  # noqa: PLC0415

    marker = folder / ".done"
    wanted = json.dumps({"seeds": [min(seeds), max(seeds), len(seeds)], "bystanders": sorted(bystanders)})
    if marker.is_file():
        found = marker.read_text().strip()
        if found != wanted and not (found == "ok" and not bystanders):   # "ok": written before bystanders existed
            raise SystemExit(f"{folder} holds other training clips than these settings ask for (--num_clips or "
                             "--bystander_every differ from the run that wrote it); use another --work_dir")
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    write_dataset(folder, seeds, set(bystanders))
    marker.write_text(wanted + "\n")
    return folder


VAE_BATCH = dict(images=4, clip_batch=2, clip_every=1)   # what the VAE stage reconstructs per step


def train_vae(steps: int, seeds: Sequence[int], seed: int = 0, images: int = 4, frames: int = NUM_FRAMES,
              lr: float = 3e-3,
              log: Optional[list] = None, noise: float = 0.05, reg_weight: float = 0.01, hint_weight: float = 1.0,
              clip_every: int = 1, clip_batch: int = 2, log_every: int = 100,
              init_state: Optional[Dict[str, torch.Tensor]] = None):
    """The tiny Wan VAE trained as an autoencoder on synthetic frames at the model size: returns the VAE (eval).

    Each step reconstructs `images` single frames (the VAE's first-frame path) and, every `clip_every` steps,
    `clip_batch` `frames`-frame clips (the temporal path, which the DiT's latents come from: trained too little,
    the later latent frames decode faded). A step's cost is mostly per-call overhead at these sizes, so a batch of
    clips costs about what one does. Loss: MSE + 0.5 L1 on pixels; `hint_weight` x MSE between
    the first 3 normalised latent channels and the 8x8-average-pooled RGB (per latent frame), which makes the
    latents informative from the start (the narrow VAE otherwise sits for many steps at the dataset mean);
    `reg_weight` x (per-channel latent mean^2 + (std - 1)^2); Gaussian noise of std `noise` on the normalised
    latents before decoding, so the decoder tolerates the DiT's imperfect latents. `init_state`: fine-tune this
    VAE instead of a seeded new one."""
    import torch.nn.functional as F  # noqa: PLC0415, N812

    from .data.synthetic import make_clip, resize_rgb  # noqa: PLC0415
    from .models.wan_vae import WanVideoVAE  # noqa: PLC0415

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clips = []
    for s in seeds:
        clip = make_clip(s)
        clips.append(np.stack([resize_rgb(f, HEIGHT, WIDTH) for f in clip.frames]))
    clips = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1   # [N, 3, T, H, W]
    vae = WanVideoVAE(DEMO_VAE).train()
    if init_state is not None:
        vae.load_state_dict(init_state)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 50) * (0.5 * (1 + math.cos(
        math.pi * min(i / max(steps, 1), 1.0))) * 0.9 + 0.1))

    def pooled(x):   # the RGB of each latent frame's pixels: frame 0 alone, then groups of 4 frames
        first = x[:, :, :1]
        if x.shape[2] > 1:
            rest = x[:, :, 1:].unflatten(2, (-1, 4)).mean(3)
            first = torch.cat([first, rest], dim=2)
        return F.avg_pool3d(first, (1, 8, 8)) * 1.5

    def losses(x):
        mu = vae.encode_raw(x)
        mean, inv_std = vae._stats(mu)
        z = (mu - mean) * inv_std                            # the normalised latents the DiT sees
        rec = vae.decode_raw((z + noise * torch.randn_like(z)) / inv_std + mean)
        rec_loss = F.mse_loss(rec, x) + 0.5 * (rec - x).abs().mean()
        zc = z.transpose(0, 1).flatten(1)
        reg = zc.mean(1).pow(2).mean() + (zc.std(1) - 1).pow(2).mean()
        return rec_loss, reg, F.mse_loss(z[:, :3], pooled(x)), F.mse_loss(rec.detach().clamp(-1, 1), x)

    start = time.perf_counter()
    for step in range(steps):
        n, t = clips.shape[0], clips.shape[2]
        idx, ti = rng.integers(0, n, size=images), rng.integers(0, t, size=images)
        parts = [losses(torch.stack([clips[i, :, j:j + 1] for i, j in zip(idx, ti)]))]
        if step % clip_every == 0:
            idx, starts = rng.integers(0, n, size=clip_batch), rng.integers(0, t - frames + 1, size=clip_batch)
            parts.append(losses(torch.stack([clips[i, :, j:j + frames] for i, j in zip(idx, starts)])))
        rec_loss = sum(p[0] for p in parts)
        loss = rec_loss + sum(reg_weight * p[1] + hint_weight * p[2] for p in parts)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        mse = float(parts[0][3])
        if log is not None:
            log.append({"step": step, "loss": float(parts[0][0].detach()), "mse": mse,
                        "time": time.perf_counter() - start})
        if step % log_every == 0 or step == steps - 1:
            recent = [r["mse"] for r in (log or [])[-log_every:]] or [mse]
            logger.info("vae step %d/%d: image mse %.4f (mean of last %d: %.4f, %.1f dB)  %.0f s", step, steps, mse,
                        len(recent), float(np.mean(recent)), 10 * math.log10(4 / max(float(np.mean(recent)), 1e-10)),
                        time.perf_counter() - start)
    return vae.eval().requires_grad_(False)


def calibrated_pose_guider(seeds: Sequence[int], seed: int = 0, target_std: float = 1.0):
    """A seeded `PoseGuider` at the demo DiT's width whose convolutions are rescaled layer by layer (LSUV-style) so
    that each one's output has standard deviation `target_std` on the pose images of synthetic clips `seeds`.

    Why: with PyTorch's default initialisation the six conv + SiLU layers shrink the signal, so the pose tokens
    start about 50x weaker than the patch tokens they are added to (rms 0.017 vs 0.77 spatial variation in the
    first trained demo model) and a short CPU training run never learns to use them; the DiT only copies the
    reference. Calibrated, the poses are visible to the DiT from the first step."""
    import torch.nn as nn  # noqa: PLC0415

    from .data.synthetic import make_example  # noqa: PLC0415
    from .models.pose_guider import PoseGuider  # noqa: PLC0415

    torch.manual_seed(seed)
    guider = PoseGuider(DEMO_POSE)
    examples = [make_example(s) for s in seeds]
    video = torch.stack([torch.from_numpy(np.stack(e.poses)).permute(3, 0, 1, 2) for e in examples]).float() / 255
    video = torch.cat([video[:, :, :1].expand(-1, -1, 3, -1, -1), video], dim=2)  # as embed_pose_video feeds it
    reference = torch.stack([torch.from_numpy(e.reference_pose).permute(2, 0, 1) for e in examples]).float() / 255
    with torch.no_grad():
        for stack, x in ((guider.dwpose_embedding, video), (guider.randomref_embedding_pose, reference)):
            for layer in stack:
                if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
                    factor = target_std / max(float(layer(x).std()), 1e-8)
                    layer.weight.mul_(factor)
                    layer.bias.mul_(factor)
                x = layer(x)
    return guider


def full_init_file(dit_paths: Sequence[str], pose_state: Dict[str, torch.Tensor], path: Path) -> Path:
    """The `--pretrained_lora_path` of the full stage: the DiT's weights (`pipe.dit.*`, unchanged) and the pose
    guider's tensors (the calibrated one, or an `--init_from` model's at whatever width: the trainer rebuilds the
    guider to fit), in the trainer's release format."""
    from safetensors.torch import load_file, save_file  # noqa: PLC0415

    state = {}
    for shard in dit_paths:
        state.update({f"pipe.dit.{k}": v for k, v in load_file(shard).items()})
    state.update({k: v.detach().float().contiguous() for k, v in pose_state.items()})
    save_file(state, str(path))
    return path


def _save_base_models(folder: Path, vae, seed: int = 0) -> Dict[str, object]:
    """Frozen tiny T5 / CLIP (seeded random), the trained VAE and a seeded untrained DiT, in the release layouts."""
    from safetensors.torch import save_file  # noqa: PLC0415

    from .loading.sidecar import write_config_sidecar  # noqa: PLC0415
    from .models.wan_dit import WanModel  # noqa: PLC0415
    from .tiny import build_tiny_models  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    models = build_tiny_models(str(folder / "_tokenizer"), seed=seed)
    models.prompter.tokenizer.save_pretrained(str(folder / "google" / "umt5-xxl"))
    shutil.rmtree(folder / "_tokenizer", ignore_errors=True)
    files = model_files(folder)
    contiguous = lambda sd: {k: v.detach().contiguous() for k, v in sd.items()}  # noqa: E731
    save_file(contiguous(models.text_encoder.state_dict()), files["text_encoder"])
    save_file(contiguous(models.image_encoder.state_dict()), files["image_encoder"])
    write_config_sidecar(files["image_encoder"], models.image_encoder.config)   # its heads are not width / 80
    save_file(contiguous(vae.state_dict()), files["vae"])
    torch.manual_seed(seed + 1)
    save_dit(WanModel(DEMO_DIT).state_dict(), folder)
    return files


def save_dit(state: Dict[str, torch.Tensor], folder: Path) -> List[str]:
    """DiT weights (official names) as two safetensors shards + the Wan config.json beside them."""
    from safetensors.torch import save_file  # noqa: PLC0415

    keys = sorted(state)
    paths = model_files(folder)["dit"]
    for path, part in zip(paths, (keys[: len(keys) // 2], keys[len(keys) // 2:])):
        save_file({k: state[k].detach().float().contiguous() for k in part}, path)
    cfg = DEMO_DIT
    (Path(folder) / "config.json").write_text(json.dumps(
        {"_class_name": "WanModel", "model_type": cfg.model_type, "dim": cfg.dim, "num_heads": cfg.num_heads,
         "num_layers": cfg.num_layers, "ffn_dim": cfg.ffn_dim, "in_dim": cfg.in_dim, "text_dim": cfg.text_dim,
         "out_dim": cfg.out_dim, "freq_dim": cfg.freq_dim}, indent=1) + "\n")
    return paths


def _release_checkpoint(output: Path) -> Path:
    ckpts = sorted(output.glob("lightning_logs/version_*/checkpoints/last.ckpt"), key=os.path.getmtime)
    if not ckpts:
        raise RuntimeError(f"no last.ckpt under {output}")
    return ckpts[-1]


def _losses(output: Path) -> List[float]:
    with open(output / "loss.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _trainer_argv(base: Dict[str, object], cache: Path, output: Path, dit_path: Sequence[str], *extra) -> List[str]:
    return ["--cached_dataset_path", str(cache), "--output_path", str(output), "--dit_path", ",".join(dit_path),
            "--precision", "32-true", "--dataloader_num_workers", "0", "--seed", "0", "--max_epochs", "100000",
            "--save_every_n_steps", "1000", "--keep_resume_checkpoints", "1", *[str(e) for e in extra]]


def lora_init_file(dit_state_keys: Sequence[str], pose_state: Dict[str, torch.Tensor], path: Path, rank: int,
                   alpha: float, shapes: Dict[str, Sequence[int]], seed: int = 0) -> Path:
    """A UniAnimate checkpoint to start a LoRA from: PEFT's default init (A kaiming-uniform, B zero, so the LoRA
    starts as the identity), the pose guider of the previous stage, and network_alpha."""
    from safetensors.torch import save_file  # noqa: PLC0415

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key in dit_state_keys:
        out_f, in_f = shapes[key]
        name = key[: -len(".weight")]
        bound = 1 / math.sqrt(in_f)    # kaiming_uniform(a=sqrt(5)) of a [rank, in] matrix
        state[f"pipe.dit.{name}.lora_A.default.weight"] = (torch.rand(rank, in_f, generator=gen) * 2 - 1) * bound
        state[f"pipe.dit.{name}.lora_B.default.weight"] = torch.zeros(out_f, rank)
    state.update({k: v.float().contiguous() for k, v in pose_state.items()})
    state["network_alpha"] = torch.tensor(float(alpha))
    save_file(state, str(path))
    return path


def train(work_dir: str, out_dir: str = str(ASSET_DIR), num_clips: int = 400, vae_steps: int = 2000,
          full_steps: int = 2600, lora_steps: int = 150, full_lr: float = 3e-4, lora_lr: float = 5e-4,
          lora_rank: int = 8, cache_epochs: int = 1, vae_from: Optional[str] = None, seed: int = 0,
          full_accumulate: int = 1, vae_init: Optional[str] = None, vae_lr: float = 3e-3,
          bystander_every: int = BYSTANDER_EVERY, init_from: Optional[str] = None) -> dict:
    """All stages (see the module docstring); stages already finished in `work_dir` are reused. Returns the
    training record (also written to `out_dir/training_log.json`).

    `init_from`: a demo model folder (e.g. a copy of the shipped one) whose DiT and pose guider the full stage
    fine-tunes instead of starting from a seeded random DiT and the calibrated guider; its VAE is reused unless
    `vae_from` / `vae_init` say otherwise, and its training_log.json goes into the record (the card counts it)."""
    from safetensors.torch import load_file, save_file  # noqa: PLC0415

    from .animate.poses import file_sha256  # noqa: PLC0415
    from .training import cli  # noqa: PLC0415

    torch.set_num_threads(int(os.environ.get("DEMO_THREADS", "1")))
    work, out = Path(work_dir), Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}

    def save_record():
        record_path.write_text(json.dumps(record, indent=1))

    seeds = list(range(num_clips))
    assert max(seeds) < HELD_OUT_SEED
    if init_from:
        init_files = model_files(init_from)
        if "init_from" not in record:
            previous = Path(init_from) / "training_log.json"
            record["init_from"] = {
                "folder": str(init_from), "dit_sha256": [file_sha256(p) for p in init_files["dit"]],
                "unianimate_sha256": file_sha256(init_files["unianimate"]),
                "previous": json.loads(previous.read_text()) if previous.is_file() else {}}
        if not (vae_from or vae_init):
            vae_from = init_files["vae"]
    t = time.perf_counter()
    bystanders = bystander_seeds(seeds, bystander_every)
    data = _write_data(work / "data", seeds, bystanders)
    record.setdefault("data", {"clips": num_clips, "seeds": [0, num_clips - 1], "frames_per_clip": 24,
                               "render_size": [128, 96], "model_size": [HEIGHT, WIDTH], "num_frames": NUM_FRAMES,
                               "travel": "80% of the clips travel 0.15-0.45 of the width across the frame",
                               "seconds": round(time.perf_counter() - t, 1)})
    if bystanders:
        record["data"].setdefault("bystanders", f"{len(bystanders)} of the {num_clips} clips (the seeds that are "
                                                f"{bystander_every - 1} mod {bystander_every}) have a second, still "
                                                "figure standing on the path of the moving one, which crosses 0.6-0.7 "
                                                "of the width in front of it; the poses show only the moving one")

    base = work / "base"
    if not (base / ".done").is_file():
        t = time.perf_counter()
        if vae_from:
            # A VAE trained before (e.g. the shipped one): the DiT stages are reproducible from it alone.
            from .models.wan_vae import WanVideoVAE  # noqa: PLC0415

            vae = WanVideoVAE(DEMO_VAE).eval()
            vae.load_state_dict(load_file(str(vae_from)))
            _save_base_models(base, vae, seed=seed)
            record["vae"] = {"from": str(vae_from), "sha256": file_sha256(vae_from),
                             "reconstruction_psnr_held_out": vae_reconstruction_psnr(vae.state_dict(), EVAL_SEEDS)}
        else:
            vae_log: list = []
            init = None
            if vae_init:   # fine-tune an earlier VAE (its provenance goes into the record)
                init = load_file(str(vae_init))
                record["vae_init"] = {"file": str(vae_init), "sha256": file_sha256(vae_init),
                                      "reconstruction_psnr_held_out": vae_reconstruction_psnr(init, EVAL_SEEDS),
                                      **_earlier_vae_training(Path(vae_init))}
            vae = train_vae(vae_steps, seeds, seed=seed, log=vae_log, lr=vae_lr, init_state=init, **VAE_BATCH)
            _save_base_models(base, vae, seed=seed)
            tail = vae_log[-min(50, len(vae_log)):]
            record["vae"] = {"steps": vae_steps,
                             "batch": f"{VAE_BATCH['images']} frames + {VAE_BATCH['clip_batch']} {NUM_FRAMES}-frame "
                                      f"clips" + ("" if VAE_BATCH["clip_every"] == 1 else
                                                  f" every {VAE_BATCH['clip_every']} steps"),
                             "learning_rate": vae_lr,
                             "seconds": round(time.perf_counter() - t),
                             "first_loss": vae_log[0]["mse"] if vae_log else None,
                             "final_loss_mean_last50": float(np.mean([r["mse"] for r in tail])) if tail else None,
                             "reconstruction_psnr_held_out": vae_reconstruction_psnr(vae.state_dict(), EVAL_SEEDS)}
            if record["vae"]["reconstruction_psnr_held_out"] < 15.0:
                # single-frame losses can look fine while the temporal (4-frame chunk) path is broken
                logger.warning("the VAE reconstructs held-out %d-frame clips at only %.1f dB: the DiT stages would "
                               "learn from poor latents; retrain it (more --vae_steps, another --seed) or pass "
                               "--vae_from", NUM_FRAMES, record["vae"]["reconstruction_psnr_held_out"])
        (base / ".done").write_text("ok\n")
        save_record()
    files = model_files(base)

    cache = work / "cache"
    if not (cache / "cache.json").is_file():
        t = time.perf_counter()
        args = cli.parse_args(["--task", "data_process", "--dataset_path", str(data), "--dit_path",
                               ",".join(files["dit"]), "--text_encoder_path", files["text_encoder"],
                               "--vae_path", files["vae"], "--image_encoder_path", files["image_encoder"],
                               "--cached_dataset_path", str(cache), "--num_frames", str(NUM_FRAMES),
                               "--height", str(HEIGHT), "--width", str(WIDTH), "--no-tiled",
                               "--precision", "32-true", "--seed", str(seed), "--dataloader_num_workers", "0",
                               "--cache_epochs", str(cache_epochs)])
        cli.data_process(args, configs=CONFIGS)
        record["data_process"] = {"items": num_clips * cache_epochs, "epochs": cache_epochs,
                                  "seconds": round(time.perf_counter() - t)}
        save_record()

    full = work / "full"
    if not (full / ".done").is_file():
        # --resume: a run stopped (or finished with fewer --full_steps) continues exactly where it was
        t = time.perf_counter()
        init = work / "full_init.safetensors"
        if not init.is_file():
            if init_from:
                from .loading.lora import pose_guider_state_dict  # noqa: PLC0415

                full_init_file(init_files["dit"], pose_guider_state_dict(load_file(init_files["unianimate"])), init)
            else:
                full_init_file(files["dit"], calibrated_pose_guider(seeds[:16], seed=seed).state_dict(), init)
        args = cli.parse_args(_trainer_argv(files, cache, full, files["dit"], "--train_architecture", "full",
                                            "--pretrained_lora_path", init, "--learning_rate", full_lr,
                                            "--accumulate_grad_batches", full_accumulate,
                                            "--max_steps", full_steps, "--resume"))
        try:
            _train_stage(cli, args, "full")
        finally:   # a stopped run keeps its time, so the card counts every segment of a resumed stage
            record.setdefault("full_segments", []).append(round(time.perf_counter() - t))
            save_record()
        losses = _losses(full)[:full_steps]   # rows of steps past a checkpoint resumed to an earlier end
        record["full"] = {"steps": full_steps, "learning_rate": full_lr, "accumulate": full_accumulate,
                          "pose_guider_hidden_dim": DEMO_POSE.hidden_dim, "seconds": sum(record["full_segments"]),
                          "segments": len(record["full_segments"]), **_loss_summary(losses)}
        (full / ".done").write_text("ok\n")
        save_record()

    stage1 = work / "stage1"
    if not (stage1 / ".done").is_file():
        state = torch.load(_release_checkpoint(full), map_location="cpu", weights_only=True)
        stage1.mkdir(exist_ok=True)
        dit_state = {k[len("pipe.dit."):]: v for k, v in state.items() if k.startswith("pipe.dit.")}
        save_dit(dit_state, stage1)
        pose = {k: v for k, v in state.items() if not k.startswith("pipe.dit.")}
        save_file({k: v.contiguous() for k, v in pose.items()}, str(stage1 / "pose_guider.safetensors"))
        targets = [k for k in dit_state if _is_lora_target(k, dit_state[k])]
        lora_init_file(sorted(targets), pose, stage1 / "lora_init.safetensors", lora_rank, float(lora_rank),
                       {k: tuple(dit_state[k].shape) for k in targets}, seed=seed)
        (stage1 / ".done").write_text("ok\n")

    lora = work / "lora"
    stage1_dit = model_files(stage1)["dit"]
    if not (lora / ".done").is_file():
        shutil.rmtree(lora, ignore_errors=True)
        t = time.perf_counter()
        args = cli.parse_args(_trainer_argv(files, cache, lora, stage1_dit, "--train_architecture", "lora",
                                            "--lora_rank", lora_rank, "--lora_alpha", lora_rank,
                                            "--pretrained_lora_path", stage1 / "lora_init.safetensors",
                                            "--learning_rate", lora_lr, "--max_steps", lora_steps))
        _train_stage(cli, args, "lora")
        record["lora"] = {"steps": lora_steps, "learning_rate": lora_lr, "rank": lora_rank, "alpha": lora_rank,
                          "seconds": round(time.perf_counter() - t), **_loss_summary(_losses(lora))}
        (lora / ".done").write_text("ok\n")
        save_record()

    # export
    out.mkdir(parents=True, exist_ok=True)
    final = model_files(out)
    for src, dst in zip(stage1_dit, final["dit"]):
        shutil.copyfile(src, dst)
    shutil.copyfile(stage1 / "config.json", out / "config.json")
    for name in ("text_encoder", "vae", "image_encoder"):
        shutil.copyfile(files[name], final[name])
    shutil.rmtree(out / "google", ignore_errors=True)
    shutil.copytree(base / "google", out / "google")
    lora_state = torch.load(_release_checkpoint(lora), map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in lora_state.items()}, final["unianimate"],
              metadata={"format": "diffsynth UniAnimate checkpoint (trainer release format)"})
    record["settings"] = {"dit": asdict(DEMO_DIT), "vae": {"dim": DEMO_VAE.dim, "z_dim": DEMO_VAE.z_dim},
                          "num_clips": num_clips, "seed": seed, "threads": torch.get_num_threads()}
    t = time.perf_counter()
    record["evaluation"] = evaluate(load_demo_pipeline(folder=out), EVAL_SEEDS)
    record["evaluation"]["seconds"] = round(time.perf_counter() - t)
    record["evaluation"]["vae_reconstruction_psnr"] = vae_reconstruction_psnr(load_file(final["vae"]), EVAL_SEEDS)
    save_record()
    (out / "training_log.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    write_card(out, record)
    return record


def _earlier_vae_training(vae_file: Path) -> dict:
    """How the VAE in `vae_file` was trained, from the training_log.json beside it when that log describes this very
    file (same sha256); {} otherwise."""
    from .animate.poses import file_sha256  # noqa: PLC0415

    log = vae_file.parent / "training_log.json"
    if not log.is_file():
        return {}
    vae = json.loads(log.read_text()).get("vae", {})
    if vae.get("sha256") != file_sha256(vae_file) or "previous_training" not in vae:
        return {}
    return {"training": vae["previous_training"]}


def _train_stage(cli, args, name: str) -> None:
    """Run one trainer stage; a stage stopped by Ctrl-C / SIGTERM (the trainer wrote a resumable checkpoint) ends
    the script without marking the stage done, so running the script again continues it."""
    trainer = cli.train(args, configs=CONFIGS)
    if getattr(trainer, "stopped_by_signal", None) is not None:
        raise SystemExit(f"the {name} stage was stopped at step {trainer.global_step}; run the same command again "
                         "to continue it from its resumable checkpoint")


EVAL_SEEDS = [HELD_OUT_SEED + i for i in range(4)]


def vae_reconstruction_psnr(vae_state: Dict[str, torch.Tensor], seeds: Sequence[int]) -> float:
    """PSNR of the VAE's encode-decode round trip on the ground-truth frames of clips `seeds`."""
    from .data.synthetic import make_example  # noqa: PLC0415
    from .models.wan_vae import WanVideoVAE  # noqa: PLC0415

    vae = WanVideoVAE(DEMO_VAE).eval()
    vae.load_state_dict(vae_state)
    frames, recs = [], []
    with torch.no_grad():
        for seed in seeds:
            ex = make_example(seed)
            x = torch.from_numpy(np.stack(ex.frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            rec = vae.decode(vae.encode(x, progress=False), progress=False)[0]
            recs += list(((rec.permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy())
            frames += ex.frames
    return psnr(recs, frames)


def training_seconds(record: dict) -> float:
    """All the CPU time behind a model: its stages, the earlier VAE it reused or fine-tuned, and (recursively) the
    model it was fine-tuned from (`--init_from`)."""
    r = {k: (v if isinstance(v, dict) else {}) for k, v in record.items()}
    total = sum(r.get(k, {}).get("seconds", 0) for k in ("data", "vae", "data_process", "full", "lora"))
    total += r.get("vae", {}).get("previous_training", {}).get("seconds", 0)    # a VAE reused with --vae_from
    total += r.get("vae_init", {}).get("training", {}).get("seconds", 0)        # a VAE fine-tuned (--vae_init)
    if r.get("init_from", {}).get("previous"):
        total += training_seconds(r["init_from"]["previous"])
    return total


def write_card(out_dir, record: dict) -> Path:
    """MODEL_CARD.md from the training record (data, steps, times, losses, held-out evaluation)."""
    r = {k: (v if isinstance(v, dict) else {}) for k, v in record.items()}
    ev = r.get("evaluation", {}).get("mean", {})
    fmt = lambda key: f"{ev[key]:.2f}" if key in ev else "n/a"  # noqa: E731
    total = training_seconds(record)
    names = ["baseline", *ABLATIONS, "swapped_vs_own", "swapped_vs_other",
             *(f"two_figures.{n}" for n in ("baseline", *TWO_FIGURE_ABLATIONS))]
    rows = "\n".join(f"| {name} | {fmt(name + '.full')} | {fmt(name + '.figure')} | {fmt(name + '.motion')} |"
                     for name in names if name + ".full" in ev)
    vae, full, lora, data = r.get("vae", {}), r.get("full", {}), r.get("lora", {}), r.get("data", {})

    def losses(stage, first, last, note):
        return f"{stage.get(first, float('nan')):.3f} -> {stage.get(last, float('nan')):.3f} ({note})"

    if "from" in vae:
        earlier = vae.get("previous_training", {})
        vae_row = (f"| VAE: reused (`--vae_from`, sha256 {vae.get('sha256', '')[:12]}...)"
                   + (f"; it was trained by this script's VAE stage: {earlier.get('batch')}, lr "
                      f"{earlier.get('learning_rate')}, {earlier.get('steps')} steps in {earlier.get('seconds')} s"
                      if earlier else "")
                   + " | - | - | held-out reconstruction "
                   + f"{vae.get('reconstruction_psnr_held_out', float('nan')):.2f} dB"
                   + (f"; training loss {earlier['first_loss']:.3f} -> {earlier['final_loss_mean_last50']:.3f}"
                      if earlier else "") + " |")
    elif "vae_init" in r:
        init = r["vae_init"]
        earlier = init.get("training", {})
        vae_row = (f"| VAE: fine-tuned (`--vae_init`, sha256 {init.get('sha256', '')[:12]}..., held-out "
                   f"reconstruction {init.get('reconstruction_psnr_held_out', float('nan')):.2f} dB before"
                   + (f"; that VAE was trained by this script's VAE stage: {earlier.get('batch')}, lr "
                      f"{earlier.get('learning_rate')}, {earlier.get('steps')} steps in {earlier.get('seconds')} s"
                      if earlier else "")
                   + f"), AdamW lr {vae.get('learning_rate')}, cosine, {vae.get('batch')} per step | "
                   f"{vae.get('steps')} | {vae.get('seconds')} | "
                   + losses(vae, "first_loss", "final_loss_mean_last50", "image MSE in [-1, 1], first step -> mean "
                            "of the last 50") + f"; held-out reconstruction "
                   f"{vae.get('reconstruction_psnr_held_out', float('nan')):.2f} dB |")
    else:
        vae_row = (f"| VAE: AdamW lr {vae.get('learning_rate', 3e-3)}, cosine; MSE + 0.5 L1 + latent hint + mean/std regulariser (loss: image MSE "
                   f"in [-1, 1]) | {vae.get('steps')} | {vae.get('seconds')} | "
                   + losses(vae, "first_loss", "final_loss_mean_last50", "first step -> mean of the last 50") + " |")
    stages = "\n".join([
        vae_row,
        f"| `--task data_process` cache | {r.get('data_process', {}).get('items')} items | "
        f"{r.get('data_process', {}).get('seconds')} | |",
        f"| DiT + pose guider (pose guider {full.get('pose_guider_hidden_dim', 16)} channels wide, "
        + ("fine-tuned from the `--init_from` model" if "init_from" in r else
           "calibrated: `calibrated_pose_guider`")
        + f"), `--train_architecture full`, lr {full.get('learning_rate')}, "
        f"{full.get('accumulate', 1)} clip(s) per step (`--accumulate_grad_batches`) | {full.get('steps')} | "
        f"{full.get('seconds')} | " + losses(full, "first_loss_mean", "last_loss_mean",
                                             f"mean of the first / last {full.get('window')} steps") + " |",
        f"| LoRA (rank {lora.get('rank')}, alpha {lora.get('alpha')}) + pose guider, `--train_architecture lora`, "
        f"lr {lora.get('learning_rate')} | {lora.get('steps')} | {lora.get('seconds')} | "
        + losses(lora, "first_loss_mean", "last_loss_mean", f"mean of the first / last {lora.get('window')} steps")
        + " |"])
    vae_psnr = r.get("evaluation", {}).get("vae_reconstruction_psnr", float("nan"))

    def margin(name, metric, scene=""):
        key = f"{scene}{name}.{metric}"
        return f"{ev[key] - ev[f'{scene}baseline.{metric}']:+.2f}" if key in ev else "n/a"

    swap = (f"{ev['swapped_vs_other.full'] - ev['swapped_vs_own.full']:.2f}"
            if "swapped_vs_own.full" in ev and "swapped_vs_other.full" in ev else "n/a")
    def uses(name, scene="", metric="motion", threshold=POSE_MARGIN_DB):   # cutting this path costs > threshold
        key, base = f"{scene}{name}.{metric}", f"{scene}baseline.{metric}"
        return key in ev and base in ev and ev[base] - ev[key] > threshold

    scene, metric = REFERENCE_POSE_CHECK

    pose_sentence = (
        ("It follows the driving poses" if uses("pose_tokens_zeroed") else
         "It does not follow the driving poses well enough yet")
        + f": zeroing the pose tokens changes the PSNR over the moving pixels by "
        f"{margin('pose_tokens_zeroed', 'motion')} dB (the test asks for a loss of more than {POSE_MARGIN_DB} dB).\n- "
        + ("It uses the reference pose to tell which of two people in the reference the poses animate"
           if uses("reference_pose_zeroed", scene, metric, REFERENCE_POSE_MARGIN_DB) else
           "It does not use the reference pose to tell which of two people in the reference the poses animate")
        + f": on the held-out clips with a bystander, zeroing the reference-pose embedding changes the PSNR over "
        f"the moving figure by {margin('reference_pose_zeroed', metric, scene)} dB (the test asks for a loss of more "
        f"than {REFERENCE_POSE_MARGIN_DB} dB); on the one-figure clips, where the reference image alone says who "
        f"moves, by {margin('reference_pose_zeroed', metric)} dB.")
    travel = f" {data['travel']}." if data.get("travel") else ""
    travel += f" {data['bystanders'][0].upper()}{data['bystanders'][1:]}." if data.get("bystanders") else ""
    init = r.get("init_from", {})
    start = ""
    if init:
        before = init.get("previous", {})
        earlier = ", ".join(f"{k} {before[k]['steps']} steps" for k in ("vae", "full", "lora")
                            if isinstance(before.get(k), dict) and "steps" in before[k])
        start = (f"\n\n## Starting point\n\nThe DiT and pose guider were fine-tuned from an earlier demo model "
                 f"(`--init_from {init.get('folder')}`{' = ' + init['source'] if init.get('source') else ''}, DiT sha256 "
                 f"{', '.join(h[:12] + '...' for h in init.get('dit_sha256', []))}; its own training: {earlier}, about "
                 f"{training_seconds(before) / 60:.0f} min, on one-figure clips); its VAE, T5 and CLIP are reused as "
                 f"they are. The time below counts both runs.")
    notes = "".join(f"{stage['note']}\n\n" for stage in (vae, full, lora) if stage.get("note"))
    text = f"""# Demo model card

A tiny UniAnimate model (the Wan2.1-I2V DiT + UniAnimate pose guider architecture, at toy sizes) trained on CPU by
this project's own trainer on synthetic mannequin clips (`diffsynth/data/synthetic.py`). It exists so that the demo
shows a learned model and so that `tests/test_demo_model.py` can catch conditioning paths wired wrongly. It only
knows mannequins at {HEIGHT}x{WIDTH}, {NUM_FRAMES} frames; it is not a model of people.

Retrain: `bash scripts/train_demo_model.sh` (`python -m diffsynth.demo_model`; seeded; add `--vae_from FILE` or
`--vae_init FILE` when the VAE row below says the VAE was reused or fine-tuned; the numbers below come from
`training_log.json`, written by that run; the exact command is in `scripts/train_demo_model.sh`). Load: `diffsynth.demo_model.load_demo_pipeline()`.

## Files (release layouts, all safetensors, read by `ModelManager.load_models` / `load_lora_v2`)

| file | content |
|---|---|
| `diffusion_pytorch_model-0000{{1,2}}-of-00002.safetensors`, `config.json` | DiT: dim {DEMO_DIT.dim}, \
{DEMO_DIT.num_layers} layers, {DEMO_DIT.num_heads} heads, ffn {DEMO_DIT.ffn_dim}; the full-training stage |
| `UniAnimate-Wan2.1-demo-lora.safetensors` | the LoRA stage's LoRA + pose guider + `network_alpha` (trainer format) |
| `Wan2.1_VAE.safetensors` | Wan VAE at width {DEMO_VAE.dim} (z 16), trained as an autoencoder |
| `models_t5_umt5-xxl-enc.safetensors`, `google/umt5-xxl/` | tiny umT5 (`TINY_T5`, frozen random seeded weights) |
| `models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors` | tiny CLIP (`TINY_CLIP`, frozen random weights) |

## Data

{data.get("clips")} synthetic clips (seeds {data.get("seeds")}), 24 frames each, rendered at 128x96, trained at
{HEIGHT}x{WIDTH} in {NUM_FRAMES}-frame windows (the trainer's clip / reference / crop draws, `--seed 0`;
{r.get("data_process", {}).get("epochs", 1)} cached draw(s) per clip).{travel} Poses are
drawn with `diffsynth.pose.draw.draw_pose`. Evaluation seeds start at {HELD_OUT_SEED} and are never trained on.{start}

## Training ({r.get("settings", {}).get("threads", 1)} CPU thread(s), about {total / 60:.0f} min in all)

| stage | steps | time (s) | loss |
|---|---|---|---|
{stages}

{notes}Flow-matching losses are per optimizer step (the mean over its clips, random timesteps), so they are noisy;
compare the means.

## Held-out evaluation

Seeds {EVAL_SEEDS}; {INFERENCE["num_inference_steps"]} Euler steps, cfg {INFERENCE["cfg_scale"]}, seed \
{INFERENCE["seed"]}. The VAE round trip alone reaches {vae_psnr:.2f} dB (the ceiling of any generation).

| generation | PSNR full frame (dB) | PSNR figure region (dB) | PSNR moving pixels (dB) |
|---|---|---|---|
{rows}

`figure region`: the ground-truth figure's pixels, dilated by 2. `moving pixels`: where a ground-truth frame differs
from the clip's per-pixel median by > 40 (dilated by 1). `swapped`: clip A's poses with clip B's reference, scored
against A's frames (`_vs_own`) and against B's character rendered doing A's motion (`_vs_other`). `two_figures`: the
same held-out characters and dances with a bystander (`make_example(seed, bystander=True)`: the mover crosses the
frame in front of a second, still figure standing on its path; the figure region is the mover's, and the reference
frame is late in the clip, so the mover is at the other side of the frame than in the frames generated).

## What it has learned, and what not

- It reproduces the reference's colours and background (reference latent zeroed: {margin("reference_latent_zeroed",
"full")} dB full frame; another reference: {swap} dB closer to the other character than to this clip's frames).
- {pose_sentence}
- Frames are blurry: the width-{DEMO_VAE.dim} VAE round trip alone is at {vae_psnr:.1f} dB. It knows 64x48 mannequins in
9-frame clips; longer clips, other sizes and photos of people are outside what it was trained on.
"""
    path = Path(out_dir) / "MODEL_CARD.md"
    path.write_text(text)
    return path


def _is_lora_target(key: str, tensor: torch.Tensor) -> bool:
    """The trainer's default LoRA targets: q/k/v/o of self- and cross-attention and ffn.0/ffn.2 Linears."""
    if not (key.startswith("blocks.") and key.endswith(".weight") and tensor.ndim == 2):
        return False
    name = key[: -len(".weight")]
    return name.rsplit(".", 1)[-1] in ("q", "k", "v", "o") or name.endswith((".ffn.0", ".ffn.2"))


def _loss_summary(losses: Sequence[float]) -> dict:
    if not losses:
        return {}
    n = max(1, min(100, len(losses) // 5))
    return {"first_loss_mean": float(np.mean(losses[:n])), "last_loss_mean": float(np.mean(losses[-n:])),
            "window": n}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny demo model (CPU) and write its files.")
    parser.add_argument("--work_dir", default="outputs/demo_model_training")
    parser.add_argument("--out_dir", default=str(ASSET_DIR))
    parser.add_argument("--num_clips", type=int, default=1000)
    parser.add_argument("--vae_steps", type=int, default=2000)
    parser.add_argument("--full_steps", type=int, default=5000)
    parser.add_argument("--lora_steps", type=int, default=150)
    parser.add_argument("--full_lr", type=float, default=4e-4)
    parser.add_argument("--full_accumulate", type=int, default=4,
                        help="clips per optimizer step of the full stage (trainer --accumulate_grad_batches)")
    parser.add_argument("--vae_from", default=None,
                        help="use this trained demo VAE (safetensors) instead of training one, e.g. the shipped "
                             "diffsynth/assets/demo_model/Wan2.1_VAE.safetensors")
    parser.add_argument("--vae_init", default=None,
                        help="fine-tune this demo VAE (safetensors) for --vae_steps instead of training a new one")
    parser.add_argument("--vae_lr", type=float, default=3e-3)
    parser.add_argument("--cache_epochs", type=int, default=2,
                        help="encode this many random clip/reference draws per clip (trainer --cache_epochs)")
    parser.add_argument("--bystander_every", type=int, default=BYSTANDER_EVERY,
                        help="every Nth training clip has a second, still figure (0: none)")
    parser.add_argument("--init_from", default=None,
                        help="fine-tune the DiT and pose guider of this demo model folder (e.g. a copy of the "
                             "shipped one) instead of training them from scratch; its VAE is reused")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.vae_from and args.vae_init:
        parser.error("--vae_from (use this VAE as is) and --vae_init (fine-tune it) exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = train(args.work_dir, args.out_dir, num_clips=args.num_clips, vae_steps=args.vae_steps,
                   full_steps=args.full_steps, lora_steps=args.lora_steps, full_lr=args.full_lr,
                   cache_epochs=args.cache_epochs, vae_from=args.vae_from, seed=args.seed,
                   full_accumulate=args.full_accumulate, vae_init=args.vae_init, vae_lr=args.vae_lr,
                   bystander_every=args.bystander_every, init_from=args.init_from)
    print(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
