"""CPU benchmark: our Wan DiT forward and VAE decode vs diffusers' classes on the same medium config, fp32.

Each case runs in its own process so peak RSS (ru_maxrss) is measured per case. Prints a table and writes
`benchmarks/results/bench_models.json`. Target: time ratio ours/diffusers <= 1.0.

    python benchmarks/bench_models.py [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Medium config: width 512 (4 heads of 128), 8 layers, 17 frames at 128x128 -> latent 5x16x16, 320 tokens.
DIT = dict(dim=512, num_heads=4, num_layers=8, ffn_dim=2048, text_dim=4096, image_dim=1280)
FRAMES, SIZE = 17, 128
VAE = dict(dim=96, z_dim=16)   # the real VAE architecture (it is small: 127M params)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _timeit(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _case(kind: str, impl: str, repeats: int, threads: int, queue):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with torch.no_grad():
        if kind == "dit":
            from diffsynth.configs import WanDiTConfig
            from diffsynth.loading.diffusers_dit import dit_official_to_diffusers
            from diffsynth.models.wan_dit import WanModel

            cfg = WanDiTConfig(model_type="i2v", in_dim=36, ffn_dim=DIT["ffn_dim"], dim=DIT["dim"],
                               num_heads=DIT["num_heads"], num_layers=DIT["num_layers"])
            ours = WanModel(cfg).eval()
            T, h = (FRAMES - 1) // 4 + 1, SIZE // 8
            x, y = torch.randn(1, 16, T, h, h), torch.randn(1, 20, T, h, h)
            t, ctx, clip = torch.tensor([700.0]), torch.randn(1, 512, 4096), torch.randn(1, 257, 1280)
            if impl == "ours":
                model, fn = ours, lambda: ours(x, t, ctx, clip_feature=clip, y=y)
            else:
                from diffusers import WanTransformer3DModel

                model = WanTransformer3DModel(
                    num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, in_channels=36,
                    out_channels=16, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, image_dim=1280,
                    added_kv_proj_dim=cfg.dim, qk_norm="rms_norm_across_heads", cross_attn_norm=True).eval()
                model.load_state_dict(dit_official_to_diffusers(ours.state_dict()))
                del ours
                xy = torch.cat([x, y], 1)
                fn = lambda: model(xy, t, ctx, encoder_hidden_states_image=clip, return_dict=False)  # noqa: E731
        else:
            from diffsynth.configs import WanVAEConfig
            from diffsynth.loading.diffusers_vae import vae_official_to_diffusers
            from diffsynth.models.wan_vae import WanVideoVAE

            ours = WanVideoVAE(WanVAEConfig(dim=VAE["dim"], z_dim=VAE["z_dim"])).eval()
            z = torch.randn(1, 16, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8)
            if impl == "ours":
                model, fn = ours, lambda: ours.decode(z)
            else:
                from diffusers import AutoencoderKLWan

                model = AutoencoderKLWan(base_dim=VAE["dim"], z_dim=VAE["z_dim"]).eval()
                model.load_state_dict(vae_official_to_diffusers(ours.state_dict()))
                del ours
                # diffusers' VAE does not de-normalise; feeding the same tensor times the same work
                fn = lambda: model.decode(z, return_dict=False)  # noqa: E731
        rss_before = _rss_mb()
        times = _timeit(fn, repeats)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(dict(kind=kind, impl=impl, median_s=statistics.median(times), min_s=min(times),
                   peak_rss_mb=peak, model_rss_mb=rss_before, activation_peak_mb=peak - rss_before))


def run(kind, impl, repeats, threads):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(kind, impl, repeats, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["dit", "vae"], default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_models.json"))
    args = parser.parse_args()

    rows = []
    for kind in [args.only] if args.only else ["dit", "vae"]:
        ours, peer = run(kind, "ours", args.repeats, args.threads), run(kind, "diffusers", args.repeats, args.threads)
        rows.append(dict(case=kind, ours=ours, diffusers=peer, time_ratio=ours["median_s"] / peer["median_s"],
                         activation_mem_ratio=ours["activation_peak_mb"] / max(peer["activation_peak_mb"], 1e-6)))

    print(f"{'case':6} {'ours s':>9} {'diffusers s':>12} {'ratio':>7} {'ours act MB':>12} {'diff act MB':>12}")
    for r in rows:
        print(f"{r['case']:6} {r['ours']['median_s']:9.3f} {r['diffusers']['median_s']:12.3f} {r['time_ratio']:7.2f} "
              f"{r['ours']['activation_peak_mb']:12.0f} {r['diffusers']['activation_peak_mb']:12.0f}")
    import torch

    meta = dict(config=dict(dit=DIT, vae=VAE, frames=FRAMES, size=SIZE, dtype="float32"), threads=args.threads,
                repeats=args.repeats, torch=torch.__version__, python=platform.python_version(),
                machine=platform.machine(), processor=platform.processor())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(meta=meta, results=rows), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
