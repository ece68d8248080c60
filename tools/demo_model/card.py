"""The demo model's card (MODEL_CARD.md) from its training record and held-out evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from diffsynth.demo.model import DEMO_DIT, DEMO_VAE, HEIGHT, HELD_OUT_SEED, INFERENCE, NUM_FRAMES, WIDTH
from .evaluate import (ABLATIONS, EVAL_SEEDS, POSE_MARGIN_DB, REFERENCE_POSE_CHECK, REFERENCE_POSE_MARGIN_DB,
                       TWO_FIGURE_ABLATIONS)


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
this project's own trainer on synthetic mannequin clips (`diffsynth/demo/synthetic.py`). It exists so that the demo
shows a learned model and so that `tests/test_demo_model.py` can catch conditioning paths wired wrongly. It only
knows mannequins at {HEIGHT}x{WIDTH}, {NUM_FRAMES} frames; it is not a model of people.

Retrain: `bash scripts/train_demo_model.sh` (`python -m tools.demo_model`; seeded; add `--vae_from FILE` or
`--vae_init FILE` when the VAE row below says the VAE was reused or fine-tuned; the numbers below come from
`training_log.json`, written by that run; the exact command is in `scripts/train_demo_model.sh`). Load: `diffsynth.demo.model.load_demo_pipeline()`.

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


def _loss_summary(losses: Sequence[float]) -> dict:
    if not losses:
        return {}
    n = max(1, min(100, len(losses) // 5))
    return {"first_loss_mean": float(np.mean(losses[:n])), "last_loss_mean": float(np.mean(losses[-n:])),
            "window": n}
