"""CPU benchmark: one training step end to end (T5, VAE and CLIP run inside the step) vs from a `--task data_process`
cache (the encoders are not loaded), on a small random-weight model set in the release file layout.

Each point runs in a fresh process (`subprocess`): it builds the training module from the files, runs one warm-up
step and then `--steps` timed steps (compute_loss + backward + AdamW step; fetching the item is timed apart), and
reports the median step time and the process's peak RSS (VmHWM from /proc/self/status, model loading included).
The cache is written once before, by `diffsynth.training.cache.encode_dataset` (its time per item is reported too).
Prints a table and writes `benchmarks/results/bench_training.{json,md}`.

    python benchmarks/bench_training.py [--steps 5] [--threads 1] [--rounds 3]

Run it on a quiet machine: on 2 cores a second busy process oversubscribes PyTorch's threads (see README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from proc_memory import peak_rss_mb  # noqa: E402  (benchmarks/ is the script's folder)

FRAMES, SIZE, ITEMS = 5, 64, 4     # 5 frames at 64x64 -> latents 16 x 2 x 8 x 8
LORA_RANK = 16


def model_configs():
    """Small versions of the five networks, with the real structure (T5 runs on its full 512 positions)."""
    from diffsynth.configs import ClipVisionConfig, UMT5Config, WanDiTConfig, WanVAEConfig

    t5 = UMT5Config(vocab_size=128, dim=256, dim_attn=256, dim_ffn=1024, num_heads=4, num_layers=4)
    vae = WanVAEConfig(dim=16, z_dim=16)
    clip = ClipVisionConfig(image_size=112, patch_size=14, dim=160, mlp_dim=640, num_heads=2, num_layers=4,
                            out_dim=64, use_layers=3)
    dit = WanDiTConfig(model_type="i2v", in_dim=36, dim=256, ffn_dim=1024, num_heads=2, num_layers=4,
                       text_dim=t5.dim, image_dim=clip.dim)
    return dict(dit=dit, text_encoder=t5, vae=vae, image_encoder=clip)


def write_sample(folder: Path, count: int, size=(96, 128)) -> None:
    """A prepare_training_data.py sample folder with random frames and poses."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(count)
    names = [f"{i:06d}.jpg" for i in range(count)]
    for sub in ("frames", "poses"):
        (folder / sub).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / sub / name)
    (folder / "meta.json").write_text(json.dumps({"format": "diffsynth.training_sample/1", "width": size[0],
                                                  "height": size[1], "num_frames": count, "files": names}))


# ------------------------------------------------------------------------------------------------ setup
def prepare(work: Path) -> dict:
    """Write the model files, a small dataset and the cache; returns what the points need."""
    import torch

    from diffsynth.models.pose_guider import PoseGuider
    from diffsynth.models.wan_dit import WanModel
    from diffsynth.models.wan_image_encoder import WanImageEncoder
    from diffsynth.models.wan_text_encoder import WanTextEncoder
    from diffsynth.models.wan_vae import WanVideoVAE
    from diffsynth.prompters import WanPrompter
    from diffsynth.tiny import TINY_POSE, TinyModels, build_tiny_tokenizer, save_tiny_checkpoints
    from diffsynth.training.cache import encode_dataset
    from diffsynth.training.dataset import UniAnimateDataset
    from diffsynth.training.module import FrozenEncoders

    cfg = model_configs()
    torch.manual_seed(0)
    models = TinyModels(dit=WanModel(cfg["dit"]), vae=WanVideoVAE(cfg["vae"]),
                        text_encoder=WanTextEncoder(cfg["text_encoder"]),
                        image_encoder=WanImageEncoder(cfg["image_encoder"]),
                        pose_guider=PoseGuider(replace(TINY_POSE, out_dim=cfg["dit"].dim)),
                        prompter=WanPrompter(build_tiny_tokenizer(str(work / "tok"))))
    ckpt = save_tiny_checkpoints(models, str(work / "models"))
    for i, count in enumerate((40, 25, 30)):
        write_sample(work / "data" / f"v{i}", count)
    dataset = UniAnimateDataset(work / "data", num_frames=FRAMES, height=SIZE, width=SIZE, samples_per_epoch=ITEMS,
                                seed=0)
    encoders = FrozenEncoders.load(ckpt.text_encoder, ckpt.vae, ckpt.image_encoder, torch_dtype=torch.float32,
                                   configs=list(cfg.values()), tiled=False)
    started = time.perf_counter()
    encode_dataset(dataset, encoders, work / "cache", settings={"bench": True}, progress=False)
    return dict(work=str(work), dit=ckpt.dit_shards, text_encoder=ckpt.text_encoder, vae=ckpt.vae,
                image_encoder=ckpt.image_encoder, data_process_s_per_item=(time.perf_counter() - started) / ITEMS)


# ------------------------------------------------------------------------------------------------ one point
def point(kind: str, spec: dict, steps: int, threads: int) -> dict:
    """Runs in its own process: build the module, 1 warm-up + `steps` timed training steps."""
    import torch

    from diffsynth.training.cache import CachedDataset
    from diffsynth.training.dataset import UniAnimateDataset
    from diffsynth.training.module import UniAnimateTrainingModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    work = Path(spec["work"])
    encoders = (None, None, None) if kind == "cached" else (spec["text_encoder"], spec["vae"], spec["image_encoder"])
    started = time.perf_counter()
    module = UniAnimateTrainingModule(spec["dit"], *encoders, torch_dtype=torch.float32, tiled=False,
                                      lora_rank=LORA_RANK, lora_alpha=LORA_RANK, configs=list(model_configs().values()),
                                      learning_rate=1e-4)
    build_s = time.perf_counter() - started
    optimizer = module.configure_optimizers()
    if kind == "cached":
        dataset = CachedDataset(work / "cache")
    else:
        dataset = UniAnimateDataset(work / "data", num_frames=FRAMES, height=SIZE, width=SIZE,
                                    samples_per_epoch=ITEMS, seed=0)
    from torch.utils.data import default_collate

    step_times, data_times, encode_times = [], [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        batch = default_collate([dataset[i % len(dataset)]])
        t1 = time.perf_counter()
        loss = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i:                                          # the first step is a warm-up
            data_times.append(t1 - t0)
            step_times.append(t2 - t1)
    if kind == "end_to_end":                           # the encoders' share of a step, timed on their own
        for _ in range(2):
            t0 = time.perf_counter()
            module.encode_batch(batch)
            encode_times.append(time.perf_counter() - t0)
    return dict(kind=kind, step_median_s=statistics.median(step_times), step_min_s=min(step_times),
                data_median_s=statistics.median(data_times),
                encode_median_s=min(encode_times) if encode_times else 0.0,
                build_s=build_s, peak_rss_mb=peak_rss_mb(), steps=steps, threads=threads,
                trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
                frozen_params=sum(p.numel() for p in module.parameters() if not p.requires_grad))


def run_point(kind: str, spec_path: Path, steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--point", kind, "--spec", str(spec_path), "--steps", str(steps),
                          "--threads", str(threads)], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per point (1 keeps the ratio stable on a busy 2-core machine)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each point (alternated); the fastest is kept")
    parser.add_argument("--point", choices=["end_to_end", "cached"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_training.json"))
    args = parser.parse_args()
    if args.point:
        spec = json.loads(Path(args.spec).read_text())
        print(json.dumps(point(args.point, spec, args.steps, args.threads)))
        return

    import logging

    import torch

    logging.disable(logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.set_num_threads(args.threads)
        spec = prepare(work)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        results = {}
        for _ in range(args.rounds):               # alternate the points; keep each one's fastest round
            for kind in ("end_to_end", "cached"):
                result = run_point(kind, spec_path, args.steps, args.threads)
                if kind not in results or result["step_median_s"] < results[kind]["step_median_s"]:
                    results[kind] = result
    e2e, cached = results["end_to_end"], results["cached"]
    summary = dict(
        step_time_ratio_cached_over_end_to_end=cached["step_median_s"] / e2e["step_median_s"],
        speedup=e2e["step_median_s"] / cached["step_median_s"],
        peak_rss_ratio_cached_over_end_to_end=cached["peak_rss_mb"] / e2e["peak_rss_mb"],
        encoder_share_of_end_to_end_step=e2e["encode_median_s"] / e2e["step_median_s"],
        data_process_s_per_item=spec["data_process_s_per_item"],
    )
    cfg = {k: asdict(v) for k, v in model_configs().items()}
    meta = dict(frames=FRAMES, size=SIZE, items=ITEMS, lora_rank=LORA_RANK, dtype="float32", models=cfg,
                threads=args.threads, steps=args.steps, rounds=args.rounds, torch=torch.__version__,
                python=platform.python_version(),
                machine=platform.machine(), cpus=os.cpu_count(), load_average=os.getloadavg(),
                total_s=time.perf_counter() - started,
                date=time.strftime("%Y-%m-%d"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(meta=meta, results=results, summary=summary), indent=1) + "\n")
    table = [
        "| point | step (median) | of which T5+VAE+CLIP | item fetch | peak RSS (VmHWM) |",
        "|---|---|---|---|---|",
        f"| end to end | {e2e['step_median_s']:.3f} s | {e2e['encode_median_s']:.3f} s "
        f"({summary['encoder_share_of_end_to_end_step']:.0%}) | {e2e['data_median_s'] * 1000:.1f} ms | "
        f"{e2e['peak_rss_mb']:.0f} MB |",
        f"| from the cache | {cached['step_median_s']:.3f} s | - | {cached['data_median_s'] * 1000:.1f} ms | "
        f"{cached['peak_rss_mb']:.0f} MB |",
        f"| ratio cached / end to end | {summary['step_time_ratio_cached_over_end_to_end']:.2f} | | | "
        f"{summary['peak_rss_ratio_cached_over_end_to_end']:.2f} |",
    ]
    text = "\n".join([
        f"# bench_training ({meta['date']}, {args.threads} torch thread(s), {FRAMES} frames at {SIZE}x{SIZE}, "
        "float32, CPU)",
        "",
        f"Small random-weight models (DiT width {cfg['dit']['dim']} x {cfg['dit']['num_layers']} layers, LoRA rank "
        f"{LORA_RANK}; umT5 width {cfg['text_encoder']['dim']} x {cfg['text_encoder']['num_layers']}; VAE base "
        f"{cfg['vae']['dim']}; CLIP width {cfg['image_encoder']['dim']} x {cfg['image_encoder']['num_layers']}), "
        "one fresh process per point, median of the timed steps, fastest of the rounds. Command: "
        "`python benchmarks/bench_training.py`.",
        "",
        *table,
        "",
        f"data_process: {summary['data_process_s_per_item']:.3f} s per item (once). Speed-up per step: "
        f"{summary['speedup']:.2f}x. Load average during the run: "
        + ", ".join(f"{v:.1f}" for v in meta["load_average"]) + ".",
        "",
    ])
    Path(args.out).with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
