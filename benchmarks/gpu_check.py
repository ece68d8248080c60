"""The GPU check: memory tiers, fp8 and speed of the full-size I2V-14B DiT, with random weights (no download).

    python benchmarks/gpu_check.py                 # on a CUDA machine: 14B DiT, VAE and pose guider at 832x480x81
    python benchmarks/gpu_check.py --size tiny     # anywhere (CPU in CI): the same code at a tiny size

For each tier (all resident, 7B persistent, 0 persistent, fp8 weights + 0 persistent) it runs `--steps` denoising
steps with CFG 1.5 (pose tokens on the conditional branch, as the pipeline does) and records the peak
`torch.cuda.max_memory_allocated`, the seconds per step (the first step is reported separately: it includes the
warm-up) and the attention backend. Then one 720p step on the 0 tier, the pose guider over 81 frames, and one tiled
VAE decode of the 480p latents. The umT5 and CLIP encoders are not built: their outputs are random tensors of the
right shapes (they run once per generation and stream under VRAM management). "CPU offload" moves whole models, so
during the denoising loop its GPU peak is the all-resident one; it is reported as such, not measured separately.

Writes benchmarks/results/gpu_check_<device>.json and prints a table. Random weights: speed and memory are those of
the real model, the frames are noise.

Simulated vs measured: `python benchmarks/gpu_check.py --simulate` runs this same script (same models, same calls)
on the shape-only simulated device of benchmarks/sim_device.py, on any CPU, and writes
benchmarks/results/simulate.gpu_check_<size>.json. On a CUDA machine the script reads that file (when present for
the same size and steps) and prints each tier's simulated peak next to `torch.cuda.max_memory_allocated`, with the
ratio: the check of the simulator the first lent GPU gives.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffsynth.acceleration.vram import disable_layer_streaming, enable_layer_streaming  # noqa: E402
from diffsynth.configs import PoseGuiderConfig, WanDiTConfig, WanVAEConfig  # noqa: E402
from diffsynth.models.attention import resolve_backend  # noqa: E402
from diffsynth.models.fp8 import parameter_bytes, quantize_model_fp8  # noqa: E402
from diffsynth.models.pose_guider import PoseGuider  # noqa: E402
from diffsynth.models.wan_dit import WanModel  # noqa: E402
from diffsynth.models.wan_vae import WanVideoVAE  # noqa: E402
from diffsynth.pipelines.units import dit_step, encode_pose_video  # noqa: E402
from diffsynth.schedulers import FlowMatchScheduler  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {
    # name: DiT config, VAE config, (height, width, frames), 720p (height, width)
    "full": (WanDiTConfig.from_preset("wan2.1-i2v-14b"), WanVAEConfig(), (832, 480, 81), (1280, 720)),
    "tiny": (WanDiTConfig(model_type="i2v", in_dim=36, dim=64, ffn_dim=128, num_heads=4, num_layers=4,
                          text_dim=32, image_dim=32), WanVAEConfig(dim=8, z_dim=16), (64, 48, 9), (96, 64)),
}
TEXT_LEN, IMAGE_TOKENS = 512, 257


# ---------------------------------------------------------------------------------------------------- models
@torch.no_grad()
def randomize_(model: torch.nn.Module, staging: torch.device) -> torch.nn.Module:
    """Fill a model built on `meta` with random weights (std 0.02; norms 1, biases 0), tensor by tensor: each is
    drawn on `staging` (the GPU when there is one: fast) and stored on the CPU."""
    model.to_empty(device="cpu")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        if tensor.ndim >= 2:
            value = torch.randn(tensor.shape, device=staging, dtype=torch.float32).mul_(0.02)
        else:
            value = torch.full(tensor.shape, 1.0 if "norm" in name else 0.0, device=staging)
        tensor.copy_(value.to(tensor.dtype))
    return model


def build(size: str, dtype: torch.dtype, staging: torch.device):
    dit_config, vae_config, _, _ = SIZES[size]
    with torch.device("meta"):
        dit = WanModel(dit_config).to(dtype)
        vae = WanVideoVAE(vae_config).to(dtype)
        guider = PoseGuider(PoseGuiderConfig(out_dim=dit_config.dim))
    return randomize_(dit, staging).eval(), randomize_(vae, staging).eval(), randomize_(guider, staging).eval()


# ------------------------------------------------------------------------------------------------- measuring
_SIM = None   # the sim_device.SimDevice while this script runs simulated (--simulate)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if _SIM is not None:
        _SIM.tracker.reset_peaks()
    elif device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device):
    if _SIM is not None:
        return round(_SIM.peak() / 2**30, 2)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def conditions(dit_config: WanDiTConfig, guider: PoseGuider, height: int, width: int, frames: int, device, dtype,
               seed: int = 0):
    """Random stand-ins for the encoders' outputs, and the pose tokens of a random pose video."""
    gen = torch.Generator("cpu").manual_seed(seed)
    t = (frames - 1) // 4 + 1
    latents = torch.randn(1, 16, t, height // 8, width // 8, generator=gen).to(device, dtype)
    context = torch.randn(1, TEXT_LEN, dit_config.text_dim, generator=gen).to(device, dtype)
    context_neg = torch.randn(1, TEXT_LEN, dit_config.text_dim, generator=gen).to(device, dtype)
    clip = torch.randn(1, IMAGE_TOKENS, dit_config.image_dim, generator=gen).to(device, dtype)
    y = torch.randn(1, 20, t, height // 8, width // 8, generator=gen).to(device, dtype)
    poses = torch.rand(1, 3, frames, height, width, generator=gen).to(device)
    with torch.no_grad():
        # the pipelines' own pose step: chunked at 480p/720p (PoseGuider.auto_chunk_size), as a generation runs it
        pose_tokens = encode_pose_video(guider.to(device), poses * 255, device).to(dtype)
    guider.to("cpu")
    return latents, context, context_neg, clip, y, pose_tokens


@torch.no_grad()
def denoise(dit, inputs, steps: int, cfg_scale: float, device) -> list:
    """`steps` Euler steps with CFG (pose tokens on the conditional branch); seconds per step."""
    latents, context, context_neg, clip, y, pose_tokens = inputs
    scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
    scheduler.set_timesteps(max(steps, 2))
    seconds = []
    for timestep in scheduler.timesteps[:steps]:
        sync(device)
        start = time.perf_counter()
        t = timestep[None].to(device)
        velocity = dit_step(dit, latents, t, context, clip, y, pose_tokens)
        velocity_neg = dit_step(dit, latents, t, context_neg, clip, y, None)
        velocity = velocity_neg + cfg_scale * (velocity - velocity_neg)
        latents = scheduler.step(velocity, timestep, latents)
        sync(device)
        seconds.append(time.perf_counter() - start)
        if not torch.isfinite(latents).all():
            raise RuntimeError("non-finite latents: the random initialisation is too large")
    return seconds


def run_tier(name: str, dit, budget, inputs, steps, cfg_scale, device) -> dict:
    """One memory tier: stream the DiT with `budget` persistent parameters (None: all resident)."""
    reset_peak(device)
    streamer = enable_layer_streaming(dit, budget, compute_device=device, storage_device="cpu")
    try:
        seconds = denoise(dit, inputs, steps, cfg_scale, device)
        report = streamer.report()
    finally:
        disable_layer_streaming(dit)
        dit.to("cpu")
    tokens = math.prod(inputs[0].shape[2:]) // 4
    return {
        "tier": name, "num_persistent_param_in_dit": budget, "tokens": tokens, "steps": steps,
        "first_step_s": round(seconds[0], 3),
        "s_per_step": round(sum(seconds[1:]) / len(seconds[1:]), 3) if len(seconds) > 1 else round(seconds[0], 3),
        "peak_gpu_gb": peak_gb(device),
        "resident_params": report.get("resident_params"), "streamed_params": report.get("streamed_params"),
        "copies": report.get("stats", {}).get("copies"),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full on CUDA, tiny on CPU")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cfg_scale", type=float, default=1.5)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: 720p,pose,vae,fp8")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check_<device>.json)")
    parser.add_argument("--simulate", action="store_true",
                        help="run on the simulated device (shape-only, any CPU; default size full)")
    args = parser.parse_args(argv)
    if args.simulate:
        return simulate_main(args)
    return run(args)


def simulate_main(args) -> dict:
    """This script on the simulated device (benchmarks/sim_device.py): every figure simulated."""
    global _SIM
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sim_device import DEVICE, SimDevice  # noqa: PLC0415

    size = args.size or "full"
    args.out = args.out or str(RESULTS / f"simulate.gpu_check_{size}.json")
    with SimDevice(flops=False) as sim:
        _SIM = sim
        try:
            return run(args, device=DEVICE, size=size)
        finally:
            _SIM = None


def simulated_file(size: str) -> Path:
    return RESULTS / f"simulate.gpu_check_{size}.json"


def run(args, device=None, size=None) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = size or args.size or ("full" if device.type == "cuda" else "tiny")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    dtype = torch.bfloat16
    dit_config, _, (height, width, frames), (height_720, width_720) = SIZES[size]
    start = time.perf_counter()
    if _SIM is not None:    # shapes only: no random values to draw
        dit_cfg, vae_cfg = SIZES[size][0], SIZES[size][1]
        dit = _SIM.build(lambda: WanModel(dit_cfg).to(dtype).eval())
        vae = _SIM.build(lambda: WanVideoVAE(vae_cfg).to(dtype).eval())
        guider = _SIM.build(lambda: PoseGuider(PoseGuiderConfig(out_dim=dit_cfg.dim)).eval())
    else:
        dit, vae, guider = build(size, dtype, device)
    # The upstream scripts' middle tier keeps ~7B of the 16.4B parameters resident; a tiny DiT keeps the same share.
    middle = 7e9 if size == "full" else 0.43 * sum(p.numel() for p in dit.parameters())
    if _SIM is not None:
        device_name, backend = "simulated device (benchmarks/sim_device.py, shape-only)", "flash (simulated)"
    elif device.type == "cuda":
        device_name, backend = torch.cuda.get_device_name(device), resolve_backend()
    else:
        device_name, backend = f"CPU {platform.machine()}", "sdpa"
    result = {
        "script": "benchmarks/gpu_check.py", "size": size, "device": str(device), "simulated": _SIM is not None,
        "device_name": device_name, "torch": torch.__version__, "attention_backend": backend,
        "resolution": f"{width}x{height}x{frames}", "cfg_scale": args.cfg_scale,
        "dit_params": sum(p.numel() for p in dit.parameters()), "dit_bytes_bf16": parameter_bytes(dit),
        "build_s": None, "tiers": [], "notes": "random weights; umT5/CLIP outputs are random tensors",
    }
    result["build_s"] = round(time.perf_counter() - start, 1)

    # Pose guider over the whole clip (fp32, as the pipeline runs it), measured on its own.
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    inputs = conditions(dit_config, guider, height, width, frames, device, dtype)
    sync(device)
    if "pose" not in skip:
        result["pose_guider"] = {"frames": frames, "s": round(time.perf_counter() - t0, 3), "peak_gpu_gb": peak_gb(device)}

    tiers = [("all resident", None), ("7B persistent", middle), ("0 persistent", 0)]
    for name, budget in tiers:
        result["tiers"].append(run_tier(name, dit, budget, inputs, args.steps, args.cfg_scale, device))
        print(json.dumps(result["tiers"][-1]), flush=True)
    result["tiers"].append(dict(result["tiers"][0], tier="cpu offload (whole models; DiT loop = all resident)",
                                derived=True))
    if "720p" not in skip:
        inputs_720 = conditions(dit_config, guider, height_720, width_720, frames, device, dtype, seed=1)
        result["tiers"].append(run_tier("0 persistent, 720p", dit, 0, inputs_720, 1, args.cfg_scale, device))
        print(json.dumps(result["tiers"][-1]), flush=True)
        del inputs_720
    if "fp8" not in skip:
        quantize_model_fp8(dit.to(device), torch.float8_e4m3fn, "channel", compute_dtype=dtype)
        dit.to("cpu")
        result["dit_bytes_fp8"] = parameter_bytes(dit)
        result["tiers"].append(run_tier("fp8 + 0 persistent", dit, 0, inputs, args.steps, args.cfg_scale, device))
        print(json.dumps(result["tiers"][-1]), flush=True)
    if "vae" not in skip:
        reset_peak(device)
        vae.to(device)
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            video = vae.decode(inputs[0], tiled=True, progress=False)
        sync(device)
        result["vae_decode_tiled"] = {"frames": int(video.shape[2]), "s": round(time.perf_counter() - t0, 3),
                                      "peak_gpu_gb": peak_gb(device)}
        vae.to("cpu")
        del video
    result["total_s"] = round(time.perf_counter() - start, 1)

    if _SIM is None:
        attach_simulated(result, size, args.steps)
    out = Path(args.out) if args.out else RESULTS / f"gpu_check_{device.type}{'' if size == 'full' else '_' + size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"wrote {out}")
    return result


def attach_simulated(result: dict, size: str, steps: int) -> None:
    """Put the simulated peak of each tier (from `--simulate`, same size and steps) next to the measured one."""
    path = simulated_file(size)
    if not path.exists():
        return
    simulated = json.loads(path.read_text())
    if simulated.get("size") != size or simulated.get("tiers", [{}])[0].get("steps") != steps:
        return
    by_tier = {t["tier"]: t for t in simulated["tiers"]}
    for tier in result["tiers"]:
        sim = by_tier.get(tier["tier"])
        if sim is not None and sim.get("peak_gpu_gb") is not None:
            tier["simulated_gb"] = sim["peak_gpu_gb"]
            if tier.get("peak_gpu_gb"):
                tier["simulated_over_measured"] = round(sim["peak_gpu_gb"] / tier["peak_gpu_gb"], 3)
    for part in ("pose_guider", "vae_decode_tiled"):
        if part in result and part in simulated:
            result[part]["simulated_gb"] = simulated[part].get("peak_gpu_gb")
    result["simulated_from"] = str(path)


def print_table(result: dict) -> None:
    print(f"\n{result['device_name']} ({result['device']}), {result['resolution']}, attention "
          f"{result['attention_backend']}, DiT {result['dit_params'] / 1e9:.2f}B params")
    print(f"{'tier':<52} {'peak GPU GiB':>12} {'simulated GiB':>13} {'sim/meas':>8} {'s/step':>8} {'first step s':>12}")
    for tier in result["tiers"]:
        print(f"{tier['tier']:<52} {str(tier['peak_gpu_gb']):>12} {str(tier.get('simulated_gb', '-')):>13} "
              f"{str(tier.get('simulated_over_measured', '-')):>8} {tier['s_per_step']:>8} {tier['first_step_s']:>12}")
    for part in ("pose_guider", "vae_decode_tiled"):
        if part in result:
            print(f"{part:<52} {str(result[part].get('peak_gpu_gb')):>12} {str(result[part].get('simulated_gb', '-')):>13}")


if __name__ == "__main__":
    main()
