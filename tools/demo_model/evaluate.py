"""Evaluating the demo model on held-out synthetic clips: PSNR over the whole frame, the figure and the moving
pixels, with each conditioning path cut (`ablation`), and the README's frame strip."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from diffsynth.demo.model import DEMO_VAE, HELD_OUT_SEED, generate, load_demo_pipeline


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
    from diffsynth.pipelines import unianimate  # noqa: PLC0415

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
    from diffsynth.demo.synthetic import make_example  # noqa: PLC0415

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

    from diffsynth.data.safe_write import atomic_output  # noqa: PLC0415
    from diffsynth.demo.synthetic import make_example  # noqa: PLC0415

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


EVAL_SEEDS = [HELD_OUT_SEED + i for i in range(4)]


def vae_reconstruction_psnr(vae_state: Dict[str, torch.Tensor], seeds: Sequence[int]) -> float:
    """PSNR of the VAE's encode-decode round trip on the ground-truth frames of clips `seeds`."""
    from diffsynth.demo.synthetic import make_example  # noqa: PLC0415
    from diffsynth.models.wan_vae import WanVideoVAE  # noqa: PLC0415

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
