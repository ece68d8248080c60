"""The shipped demo model has learned something, so wrongly wired conditioning paths show up.

Random-weight parity tests cannot see a pose path, reference latent or reference pose that is consistently wrong on
both sides of a comparison; a trained model can. On held-out synthetic clips (seeds >= HELD_OUT_SEED, never used in
training) the shipped model (read through ModelManager + load_lora_v2 like the released ones) must come close to
the ground truth, and cutting each conditioning path must cost a margin:

- pose tokens zeroed: PSNR over the moving pixels drops;
- reference-pose embedding zeroed, on the same clips with a bystander (a second, still figure that the poses do not
  show): PSNR over the moving figure drops, because only the reference pose says which of the two people moves;
- reference latent (the VAE part of y) zeroed: PSNR drops over the whole frame;
- a different reference: the result matches the other character (its colours and background) doing this clip's
  motion, not this clip's own frames.

A bug that cuts a path inside the pipeline makes "baseline" equal to the ablation, so its margin test fails.
The thresholds come from measurements of the shipped weights (diffsynth/assets/demo_model/MODEL_CARD.md); every
number is deterministic (seeded noise, fixed inputs), the thresholds sit well inside the measured values.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffsynth.demo.synthetic import make_example
from diffsynth.demo.model import ASSET_DIR, HELD_OUT_SEED, generate, load_demo_pipeline
from tools.demo_model.evaluate import (EVAL_SEEDS, POSE_MARGIN_DB, REFERENCE_POSE_CHECK, REFERENCE_POSE_MARGIN_DB,
                                       evaluate)

REPO = Path(__file__).resolve().parents[1]
# Measured on the shipped weights (MODEL_CARD.md, 4 held-out clips, 10 steps, seed 0): baseline 20.98 dB full /
# 15.88 figure / 15.20 moving pixels (the VAE round trip alone: 22.07 dB); pose tokens zeroed -0.80 dB over the
# moving pixels; reference latent zeroed -9.03 dB full; swapped reference 20.67 dB against the other character vs
# 9.98 against this clip's frames; reference pose zeroed, on the two-figure clips: -0.63 dB over the moving figure
# (the model it was fine-tuned from, which never saw two figures: -0.04 dB).
MIN_PSNR = {"full": 20.0, "figure": 15.0}       # baseline, mean over EVAL_SEEDS
# ablation -> (clips, metric, minimum loss in dB)
MARGINS = {
    "pose_tokens_zeroed": ("", "motion", POSE_MARGIN_DB),
    "reference_pose_zeroed": (*REFERENCE_POSE_CHECK, REFERENCE_POSE_MARGIN_DB),
    "reference_latent_zeroed": ("", "full", 3.0),
}
SWAP_MARGIN = 8.0      # swapped reference: PSNR vs the other character's truth minus PSNR vs this clip's frames

pytestmark = pytest.mark.skipif(not (ASSET_DIR / "config.json").is_file(), reason="demo model files not present")


@pytest.fixture(scope="module")
def scores():
    """Mean PSNRs of the baseline, each ablation and the swapped reference on the held-out clips."""
    return evaluate(load_demo_pipeline(), EVAL_SEEDS)["mean"]


def test_seeds_are_held_out():
    assert min(EVAL_SEEDS) >= HELD_OUT_SEED


def test_generation_matches_held_out_ground_truth(scores):
    for metric, threshold in MIN_PSNR.items():
        assert scores[f"baseline.{metric}"] > threshold, (metric, scores)


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_ablation_loses(scores, name):
    clips, metric, margin = MARGINS[name]
    loss = scores[f"{clips}baseline.{metric}"] - scores[f"{clips}{name}.{metric}"]
    assert loss > margin, f"{name}: lost {loss:.3f} dB of {metric} PSNR, needs > {margin} ({scores})"


def test_colours_follow_the_reference(scores):
    """Clip A's poses with clip B's reference: the result matches B's character doing A's motion."""
    gain = scores["swapped_vs_other.full"] - scores["swapped_vs_own.full"]
    assert gain > SWAP_MARGIN, scores
    assert scores["swapped_vs_other.full"] > MIN_PSNR["full"] - 1.0, scores


@pytest.mark.slow
def test_training_script_runs_end_to_end(tmp_path):
    """scripts/train_demo_model.sh with a handful of steps per stage writes loadable files in the release layouts
    (and its card), through every stage: data, VAE, data_process, full, LoRA, export, evaluation."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", str(REPO / "scripts" / "train_demo_model.sh"), "--work_dir", str(tmp_path / "work"),
                    "--out_dir", str(out), "--num_clips", "3", "--vae_steps", "2", "--full_steps", "2",
                    "--lora_steps", "2"], check=True, cwd=REPO, env=env, timeout=900)
    assert (out / "training_log.json").is_file() and (out / "MODEL_CARD.md").is_file()
    pipe = load_demo_pipeline(folder=out)
    frames = generate(pipe, make_example(HELD_OUT_SEED), num_inference_steps=2)
    assert len(frames) == 9 and frames[0].shape == (64, 48, 3)
    record = json.loads((out / "training_log.json").read_text())
    assert "bystanders" in record["data"] and "two_figures.reference_pose_zeroed.figure" in record["evaluation"]["mean"]

    # --init_from: a second run fine-tunes the first one's DiT and pose guider and reuses its VAE
    again = tmp_path / "again"
    subprocess.run(["bash", str(REPO / "scripts" / "train_demo_model.sh"), "--work_dir", str(tmp_path / "work2"),
                    "--out_dir", str(again), "--num_clips", "3", "--full_steps", "1", "--lora_steps", "1",
                    "--init_from", str(out)], check=True, cwd=REPO, env=env, timeout=900)
    record = json.loads((again / "training_log.json").read_text())
    assert record["init_from"]["previous"]["full"]["steps"] == 2 and record["vae"]["from"].startswith(str(out))
    assert (again / "Wan2.1_VAE.safetensors").read_bytes() == (out / "Wan2.1_VAE.safetensors").read_bytes()
    assert "## Starting point" in (again / "MODEL_CARD.md").read_text()


def test_full_stage_init_from_a_demo_model_holds_its_dit_and_pose_guider(tmp_path):
    """--init_from: the full stage's --pretrained_lora_path carries the given model's DiT and pose guider exactly."""
    import torch
    from safetensors.torch import load_file

    from diffsynth.demo.model import model_files
    from tools.demo_model.train import full_init_file
    from diffsynth.loading.lora import pose_guider_state_dict

    files = model_files(ASSET_DIR)
    path = full_init_file(files["dit"], pose_guider_state_dict(load_file(files["unianimate"])),
                          tmp_path / "init.safetensors")
    init = load_file(str(path))
    dit = {f"pipe.dit.{k}": v for shard in files["dit"] for k, v in load_file(shard).items()}
    pose = {k: v for k, v in load_file(files["unianimate"]).items()
            if k.startswith(("dwpose_embedding.", "randomref_embedding_pose."))}
    assert set(init) == set(dit) | set(pose) and pose
    assert all(torch.equal(init[k], v) for k, v in {**dit, **pose}.items())


def test_vae_from_and_vae_init_together_are_refused(capsys):
    from tools.demo_model.__main__ import main

    with pytest.raises(SystemExit):
        main(["--vae_from", "a.safetensors", "--vae_init", "b.safetensors"])
    assert "exclude each other" in capsys.readouterr().err


def test_card_of_a_fine_tuned_model_counts_both_runs(tmp_path):
    from tools.demo_model.card import training_seconds, write_card

    before = {"vae": {"steps": 600, "seconds": 600}, "full": {"steps": 5000, "seconds": 3000},
              "lora": {"steps": 150, "seconds": 60}}
    record = {"init_from": {"folder": "old", "dit_sha256": ["ab" * 32], "previous": before},
              "vae": {"from": "old/Wan2.1_VAE.safetensors", "sha256": "cd" * 32}, "data_process": {"seconds": 240},
              "full": {"steps": 100, "seconds": 120}}
    assert training_seconds(record) == 600 + 3000 + 60 + 240 + 120
    text = write_card(tmp_path, record).read_text()
    assert "full 5000 steps" in text and "about 67 min in all" in text, text
    assert "fine-tuned from the `--init_from` model" in text, text


def test_calibrated_pose_guider_brings_the_pose_tokens_to_the_patch_tokens_scale():
    """The full stage's pose-guider init: default init leaves the pose tokens ~50x weaker than the patch tokens."""
    import numpy as np
    import torch

    from diffsynth.demo.model import DEMO_POSE
    from tools.demo_model.train import calibrated_pose_guider
    from diffsynth.models.pose_guider import PoseGuider

    video = torch.stack([torch.from_numpy(np.stack(make_example(s).poses)).permute(3, 0, 1, 2)
                         for s in (10, 11)]).float() / 255
    torch.manual_seed(0)
    default_std = float(PoseGuider(DEMO_POSE).embed_pose_video(video).std())
    with torch.no_grad():
        calibrated_std = float(calibrated_pose_guider(range(4)).embed_pose_video(video).std())
    assert 0.6 < calibrated_std < 1.5 and default_std < 0.2, (calibrated_std, default_std)


def test_a_stopped_training_stage_ends_the_script_without_marking_it_done():
    from types import SimpleNamespace

    from tools.demo_model.train import _train_stage

    stopped = SimpleNamespace(train=lambda args, configs: SimpleNamespace(stopped_by_signal=2, global_step=7))
    with pytest.raises(SystemExit, match="stopped at step 7"):
        _train_stage(stopped, None, "full")
    finished = SimpleNamespace(train=lambda args, configs: SimpleNamespace(stopped_by_signal=None, global_step=9))
    _train_stage(finished, None, "full")


def test_vae_fine_tuning_starts_from_the_given_weights():
    """--vae_init: the VAE stage continues the given VAE (lr 0 leaves it exactly as it was), clips batched."""
    import torch

    from diffsynth.demo.model import DEMO_VAE
    from tools.demo_model.train import train_vae
    from diffsynth.models.wan_vae import WanVideoVAE

    torch.manual_seed(123)
    init = {k: v.clone() for k, v in WanVideoVAE(DEMO_VAE).state_dict().items()}
    log = []
    vae = train_vae(1, [0], lr=0.0, init_state=init, log=log, clip_batch=2)
    assert all(torch.equal(v, init[k]) for k, v in vae.state_dict().items())
    assert len(log) == 1 and log[0]["mse"] > 0


def test_model_card_describes_a_fine_tuned_vae(tmp_path):
    from tools.demo_model.card import write_card

    record = {"vae_init": {"file": "old/Wan2.1_VAE.safetensors", "sha256": "ab" * 32,
                           "reconstruction_psnr_held_out": 17.9,
                           "training": {"steps": 2000, "seconds": 836, "batch": "4 frames", "learning_rate": 0.003}},
              "vae": {"steps": 600, "seconds": 600, "learning_rate": 0.001, "batch": "4 frames + 2 9-frame clips",
                      "first_loss": 0.035, "final_loss_mean_last50": 0.02, "reconstruction_psnr_held_out": 19.5}}
    text = write_card(tmp_path, record).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| VAE"))
    assert "fine-tuned" in row and "abababababab" in row and "17.90 dB before" in row and "19.50 dB" in row, row
    assert "| 600 | 600 |" in row and "2000 steps in 836 s" in row, row
    assert "about 24 min in all" in text, text   # 600 s + the init VAE's own 836 s


def test_demo_strip_layout(tmp_path):
    """The README's picture: one held-out clip as [reference | poses], [reference pose | generated],
    [blank | ground truth], [next clip's reference | generated from it], frames upscaled."""
    import numpy as np
    from PIL import Image

    from tools.demo_model.evaluate import write_strip

    seeds = (HELD_OUT_SEED, HELD_OUT_SEED + 1)
    frames = (0, 4, 8)
    path = write_strip(tmp_path / "strip.png", seeds=seeds, frames=frames, scale=2, shown=1)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    ex, other = make_example(seeds[0]), make_example(seeds[1])
    h, w, gap = 64, 48, 2
    assert sheet.shape == (2 * (4 * h + 3 * gap + 3 * gap), 2 * (len(frames) * (w + gap) + w + 2 * gap), 3)
    cell = lambda r, c: sheet[2 * r * (h + gap):2 * (r * (h + gap) + h):2,  # noqa: E731
                              2 * (c * (w + gap) + (gap if c else 0)):2 * (c * (w + gap) + (gap if c else 0) + w):2]
    assert np.array_equal(cell(0, 0), ex.reference) and np.array_equal(cell(0, 2), ex.poses[4])
    assert np.array_equal(cell(1, 0), ex.reference_pose) and np.array_equal(cell(2, 3), ex.frames[8])
    assert np.array_equal(cell(3, 0), other.reference)
    generated = cell(1, 1).astype(int)
    assert 0 < np.abs(generated - ex.frames[0]).mean() < np.abs(generated - 255).mean()   # a frame, not blank


def test_demo_strip_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    from tools.demo_model.evaluate import write_strip

    outside = tmp_path / "outside.png"
    outside.write_bytes(b"user data")
    link = tmp_path / "out" / "strip.png"
    link.parent.mkdir()
    link.symlink_to(outside)
    write_strip(link, frames=(0,), scale=1, shown=1)
    assert outside.read_bytes() == b"user data"
    assert not link.is_symlink() and link.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_work_dir_with_other_clips_is_refused(tmp_path):
    """The data stage reuses a finished folder only for the same clips: a second run with another --bystander_every
    in the same --work_dir would train on the first run's clips (and cache) without saying so."""
    from tools.demo_model.train import _write_data, bystander_seeds

    seeds = [0, 1]
    _write_data(tmp_path / "data", seeds, bystander_seeds(seeds, 2))
    written = sorted(p.name for p in (tmp_path / "data").iterdir())
    _write_data(tmp_path / "data", seeds, bystander_seeds(seeds, 2))          # the same clips: reused
    with pytest.raises(SystemExit, match="use another --work_dir"):
        _write_data(tmp_path / "data", seeds, bystander_seeds(seeds, 0))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == written   # nothing deleted
