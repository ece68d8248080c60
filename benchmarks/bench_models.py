"""CPU benchmark: our Wan DiT forward and VAE decode vs diffusers' classes on the same medium config, fp32; and the
cost of the upstream-exact float64 RoPE (our DiT forward with `rope_precision="float64"`, the default, vs "float32").

Timing: both implementations (or both settings) in one process, calls interleaved (fair under changing machine
load). Memory: each call in a fresh process, peak RSS during the call (kernel high-water mark reset just before)
minus RSS before it. Prints a table and writes `benchmarks/results/bench_models.json`. Target: time ratio
ours/diffusers <= 1.0 (the rope rows have no target: they record the price of bit-exactness).

    python benchmarks/bench_models.py [--repeats 5] [--threads 2] [--only dit|vae|rope]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from proc_memory import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402  (benchmarks/ is the script's folder)

# Medium config: width 512 (4 heads of 128), 8 layers, 17 frames at 128x128 -> latent 5x16x16, 320 tokens.
DIT = dict(dim=512, num_heads=4, num_layers=8, ffn_dim=2048, text_dim=4096, image_dim=1280)
FRAMES, SIZE = 17, 128
VAE = dict(dim=96, z_dim=16)   # the real VAE architecture (it is small: 127M params)
# RoPE precision rows: the same DiT in fp32 and bf16 weights, at 128x128 (320 tokens) and 256x256 (1280 tokens).
ROPE_CASES = {f"rope_{dtype}_{size}": (dtype, size) for dtype in ("float32", "bfloat16") for size in (128, 256)}
CASES = ["dit", "vae", *ROPE_CASES]


def _medium_dit_config():
    from diffsynth.configs import WanDiTConfig

    return WanDiTConfig(model_type="i2v", in_dim=36, ffn_dim=DIT["ffn_dim"], dim=DIT["dim"],
                        num_heads=DIT["num_heads"], num_layers=DIT["num_layers"])


def _build(kind: str):
    """Both implementations of `kind` with the same weights and inputs: {impl: zero-arg callable}.

    The callables share one closure, so both models stay alive as long as either callable does."""
    import torch

    torch.manual_seed(0)
    if kind in ROPE_CASES:
        from diffsynth.models.wan_dit import WanModel

        dtype, size = ROPE_CASES[kind]
        dtype = getattr(torch, dtype)
        model = WanModel(_medium_dit_config()).to(dtype).eval()
        T, h = (FRAMES - 1) // 4 + 1, size // 8
        x, y = torch.randn(1, 16, T, h, h, dtype=dtype), torch.randn(1, 20, T, h, h, dtype=dtype)
        t, ctx, clip = (torch.tensor([700.0], dtype=dtype), torch.randn(1, 512, 4096, dtype=dtype),
                        torch.randn(1, 257, 1280, dtype=dtype))

        def forward(precision):
            model.rope_precision = precision
            return model(x, t, ctx, clip_feature=clip, y=y)
        return {"float64": lambda: forward("float64"), "float32": lambda: forward("float32")}
    if kind == "dit":
        from diffusers import WanTransformer3DModel

        from diffsynth.loading.diffusers_dit import dit_official_to_diffusers
        from diffsynth.models.wan_dit import WanModel

        cfg = _medium_dit_config()
        ours = WanModel(cfg).eval()
        peer = WanTransformer3DModel(
            num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, in_channels=36, out_channels=16,
            ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, image_dim=1280, added_kv_proj_dim=cfg.dim,
            qk_norm="rms_norm_across_heads", cross_attn_norm=True).eval()
        peer.load_state_dict(dit_official_to_diffusers(ours.state_dict()))
        T, h = (FRAMES - 1) // 4 + 1, SIZE // 8
        x, y = torch.randn(1, 16, T, h, h), torch.randn(1, 20, T, h, h)
        t, ctx, clip = torch.tensor([700.0]), torch.randn(1, 512, 4096), torch.randn(1, 257, 1280)
        # Both calls include building the 36-channel input (diffusers' pipeline concatenates x and y too).
        return {"ours": lambda: ours(x, t, ctx, clip_feature=clip, y=y),
                "diffusers": lambda: peer(torch.cat([x, y], 1), t, ctx, encoder_hidden_states_image=clip,
                                          return_dict=False)}
    from diffusers import AutoencoderKLWan

    from diffsynth.configs import WanVAEConfig
    from diffsynth.loading.diffusers_vae import vae_official_to_diffusers
    from diffsynth.models.wan_vae import WanVideoVAE

    ours = WanVideoVAE(WanVAEConfig(dim=VAE["dim"], z_dim=VAE["z_dim"])).eval()
    peer = AutoencoderKLWan(base_dim=VAE["dim"], z_dim=VAE["z_dim"]).eval()
    peer.load_state_dict(vae_official_to_diffusers(ours.state_dict()))
    z = torch.randn(1, 16, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8)
    # diffusers' VAE does not de-normalise; the same tensor costs the same work.
    return {"ours": lambda: ours.decode(z, progress=False), "diffusers": lambda: peer.decode(z, return_dict=False)}


def _time_case(kind: str, repeats: int, threads: int, queue):
    """Both implementations in one process, calls interleaved, so they see the same machine conditions."""
    import torch

    torch.set_num_threads(threads)
    fns = _build(kind)
    times = {impl: [] for impl in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):
            for impl, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[impl].append(time.perf_counter() - start)
    queue.put({impl: dict(median_s=statistics.median(v), min_s=min(v)) for impl, v in times.items()})


def _memory_case(kind: str, impl: str, threads: int, queue):
    """Peak RSS growth during one call of one implementation (both models are resident, so only the call's own
    allocations count: the high-water mark is reset right before it)."""
    import gc

    import torch

    torch.set_num_threads(threads)
    fn = _build(kind)[impl]
    gc.collect()
    rss_before = rss_mb()
    exact = reset_peak_rss()
    with torch.no_grad():
        fn()
    peak = peak_rss_mb()
    queue.put(dict(peak_rss_mb=peak, activation_peak_mb=peak - rss_before, peak_reset=exact))


def _in_subprocess(target, *args, exact_rss: bool = False):
    # exact_rss: a fixed mmap threshold makes glibc map every large tensor separately and unmap it when freed, so
    # RSS follows the live tensors instead of the allocator's free lists (where a peak would hide). It slows the
    # process down, so timing runs without it.
    env_before = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if exact_rss:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    if exact_rss:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        if env_before is not None:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = env_before
    result = queue.get()
    proc.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["dit", "vae", "rope"], default=None,
                        help="one case (rope: the four RoPE precision rows)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_models.json"))
    args = parser.parse_args()

    kinds = CASES if args.only is None else list(ROPE_CASES) if args.only == "rope" else [args.only]
    rows = []
    for kind in kinds:
        # (a, b): the time ratio is a / b. dit, vae: ours vs diffusers; rope rows: float64 (default) vs float32.
        a, b = ("float64", "float32") if kind in ROPE_CASES else ("ours", "diffusers")
        timing = _in_subprocess(_time_case, kind, args.repeats, args.threads)
        ra, rb = ({**timing[impl], **_in_subprocess(_memory_case, kind, impl, args.threads, exact_rss=True)}
                  for impl in (a, b))
        row = dict(case=kind, **{a: ra, b: rb}, time_ratio=ra["median_s"] / rb["median_s"],
                   activation_mem_ratio=ra["activation_peak_mb"] / max(rb["activation_peak_mb"], 1e-6),
                   repeats=args.repeats, threads=args.threads)
        if kind in ROPE_CASES:
            dtype, size = ROPE_CASES[kind]
            row.update(dtype=dtype, tokens=((FRAMES - 1) // 4 + 1) * (size // 16) ** 2)
        rows.append(row)

    print(f"{'case':22} {'a':>9} {'a s':>8} {'b':>10} {'b s':>8} {'a/b':>6} {'a act MB':>9} {'b act MB':>9}")
    for r in rows:
        a, b = [k for k in r if isinstance(r[k], dict)]
        print(f"{r['case']:22} {a:>9} {r[a]['median_s']:8.3f} {b:>10} {r[b]['median_s']:8.3f} {r['time_ratio']:6.3f} "
              f"{r[a]['activation_peak_mb']:9.0f} {r[b]['activation_peak_mb']:9.0f}")
    import torch

    meta = dict(config=dict(dit=DIT, vae=VAE, frames=FRAMES, size=SIZE, dtype="float32",
                            rope_cases={k: dict(dtype=d, size=s) for k, (d, s) in ROPE_CASES.items()}),
                threads=args.threads, repeats=args.repeats,   # of this run; each row has its own
                torch=torch.__version__,
                python=platform.python_version(), machine=platform.machine(), processor=platform.processor())
    out = Path(args.out)
    if args.only is not None and out.exists():   # keep the other cases' rows (each row records its repeats)
        old = json.loads(out.read_text())
        kept = [{"repeats": old["meta"]["repeats"], "threads": old["meta"]["threads"], **r}
                for r in old["results"] if r["case"] not in kinds]
        rows = kept + rows
        rows.sort(key=lambda r: CASES.index(r["case"]) if r["case"] in CASES else len(CASES))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, results=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
