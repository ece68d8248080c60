"""Training the demo model with this project's own code (see tools/demo_model/__init__.py for the stages)."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from diffsynth.demo.model import (ASSET_DIR, BYSTANDER_EVERY, CONFIGS, DEMO_DIT, DEMO_POSE, DEMO_VAE, HEIGHT,
                                  HELD_OUT_SEED, NUM_FRAMES, WIDTH, load_demo_pipeline, logger, model_files)
from diffsynth.loading.sidecar import write_config_sidecar
from diffsynth.tiny import TINY_CLIP

from .card import _loss_summary, write_card
from .evaluate import EVAL_SEEDS, evaluate, vae_reconstruction_psnr


def bystander_seeds(seeds: Sequence[int], every: int = BYSTANDER_EVERY) -> List[int]:
    """The training seeds whose clips have a bystander: every `every`-th one (none when `every` is 0)."""
    return [s for s in seeds if every and s % every == every - 1]


def _write_data(folder: Path, seeds: Sequence[int], bystanders: Sequence[int] = ()) -> Path:
    """The training clips in `folder`; a folder finished by an earlier run is reused only if it holds these very
    clips (its `.done` marker names them), since every later stage of the work dir was built from it."""
    from diffsynth.demo.synthetic import write_dataset  # noqa: PLC0415

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

    from diffsynth.demo.synthetic import make_clip, resize_rgb  # noqa: PLC0415
    from diffsynth.models.wan_vae import WanVideoVAE  # noqa: PLC0415

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

    from diffsynth.demo.synthetic import make_example  # noqa: PLC0415
    from diffsynth.models.pose_guider import PoseGuider  # noqa: PLC0415

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

    from diffsynth.models.wan_dit import WanModel  # noqa: PLC0415
    from diffsynth.tiny import build_tiny_models  # noqa: PLC0415

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

    from diffsynth.animate.poses import file_sha256  # noqa: PLC0415
    from diffsynth.training import cli  # noqa: PLC0415

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
            from diffsynth.models.wan_vae import WanVideoVAE  # noqa: PLC0415

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
                from diffsynth.loading.lora import pose_guider_state_dict  # noqa: PLC0415

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
    write_config_sidecar(final["image_encoder"], TINY_CLIP)   # its heads are not width / 80: loaders read this
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
    from diffsynth.animate.poses import file_sha256  # noqa: PLC0415

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


def _is_lora_target(key: str, tensor: torch.Tensor) -> bool:
    """The trainer's default LoRA targets: q/k/v/o of self- and cross-attention and ffn.0/ffn.2 Linears."""
    if not (key.startswith("blocks.") and key.endswith(".weight") and tensor.ndim == 2):
        return False
    name = key[: -len(".weight")]
    return name.rsplit(".", 1)[-1] in ("q", "k", "v", "o") or name.endswith((".ffn.0", ".ffn.2"))
