"""Long-video memory vs length: peak RSS of a WanUniAnimateLongVideoPipeline call for 1, 2, 4 and 8 DiT windows.

    .venv/bin/python benchmarks/bench_memory.py                 # 96x96, tiny models, 1 step, CPU
    .venv/bin/python benchmarks/bench_memory.py --windows 1 2   # fewer points
    .venv/bin/python benchmarks/bench_memory.py --size 256 --tile 16 --windows 1 4 8   # the decoded video dominates

Every point runs with MALLOC_ARENA_MAX=2 (fewer glibc arenas: less allocator noise in the peak).

Each point runs in a fresh process (`subprocess`): it builds the tiny models of `diffsynth.tiny`, then generates a
video of 81 / 149 / 285 / 557 frames (21-latent-frame windows overlapping by 4) and writes it to an mp4. The peak is
VmHWM from /proc/self/status (reset with /proc/self/clear_refs just before the call where the kernel allows it),
reported over the RSS before the call (after a 5-frame warm-up call in the same process). Two variants per length:

- before: the former path, `window_state="device"` (every window's pose tokens and TeaCache state kept) and the
  one-shot decode to a list of frames, then `save_video(list)`;
- after: `pipe.generate_to_file(..., pose_chunk_size=4)`: per-window state parked (on CPU the compute device
  *is* the CPU, so only the decode changes what RSS sees), decode streamed chunk by chunk into the encoder;
- recompute: `pipe.generate_to_file(..., window_state="recompute")`: per-window pose tokens recomputed when the
  window runs, nothing kept per window (on a GPU, "after" keeps device memory flat; on the host only this does).

Prints a table and writes benchmarks/results/bench_memory.json and .md. TeaCache is on (threshold 0.3) so its
state exists. A few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proc_memory import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402  (benchmarks/ is the script's folder)

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("before", "after", "recompute")
SIZE, STEPS, CONTEXT, OVERLAP = 96, 1, 21, 4


def frames_for(windows: int) -> int:
    """Pixel frames whose latent length gives exactly `windows` windows of CONTEXT with OVERLAP."""
    latent = CONTEXT + (windows - 1) * (CONTEXT - OVERLAP)
    return 4 * (latent - 1) + 1


def point(variant: str, windows: int, threads: int, size: int = SIZE, tile: int = 4) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from diffsynth.data.video import save_video
    from diffsynth.pipelines import WanUniAnimateLongVideoPipeline, context_windows
    from diffsynth.tiny import build_tiny_models

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    models = build_tiny_models(str(work / "tok"), seed=0)
    pipe = WanUniAnimateLongVideoPipeline.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)
    frames = frames_for(windows)
    rng = np.random.default_rng(0)
    pipe.show_summary = False
    args = dict(prompt="a person is dancing", negative_prompt="", seed=0, height=size, width=size,
                num_frames=frames, cfg_scale=1.5, num_inference_steps=STEPS, tiled=True, tile_size=(tile, tile),
                tile_stride=(tile // 2, tile // 2), tea_cache_l1_thresh=0.3, tea_cache_model_id="Wan2.1-I2V-14B-720P",
                progress_bar_cmd=lambda x: x, context_size=CONTEXT, context_overlap=OVERLAP,
                input_image=Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)),
                dwpose_data=torch.from_numpy(rng.integers(0, 255, (3, frames, size, size))).float(),
                random_ref_dwpose=torch.from_numpy(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
    assert len(context_windows((frames - 1) // 4 + 1, CONTEXT, OVERLAP)) == windows
    out = work / "video.mp4"

    def generate(path, **kwargs):
        if variant == "before":
            save_video(pipe(**kwargs, window_state="device"), path, progress=False)
        elif variant == "recompute":
            pipe.generate_to_file(path, **kwargs, window_state="recompute")
        else:
            pipe.generate_to_file(path, **kwargs, pose_chunk_size=4)
    # warm-up on 5 frames: libraries and kernels loaded on first use are resident before the measured call
    generate(work / "warmup.mp4", **{**args, "num_frames": 5, "dwpose_data": args["dwpose_data"][:, :5]})
    rss_before = rss_mb()
    reset = reset_peak_rss()
    start = time.perf_counter()
    generate(out, **args)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    return {"variant": variant, "windows": windows, "frames": frames, "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1), "peak_over_before_mb": round(peak - rss_before, 1),
            "peak_reset": reset, "seconds": round(seconds, 2)}


def run_point(variant: str, windows: int, threads: int, size: int = SIZE, tile: int = 4) -> dict:
    env = dict(os.environ, MALLOC_ARENA_MAX="2")
    out = subprocess.run([sys.executable, __file__, "--point", variant, "--window-count", str(windows),
                          "--threads", str(threads), "--size", str(size), "--tile", str(tile)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=SIZE, help="video height = width (multiple of 16)")
    parser.add_argument("--tile", type=int, default=4, help="VAE decode tile size in latents (stride half of it)")
    parser.add_argument("--out", default=str(RESULTS / "bench_memory"), help="results path without suffix")
    parser.add_argument("--point", choices=["before", "after", "recompute"], help=argparse.SUPPRESS)
    parser.add_argument("--window-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(point(args.point, args.window_count, args.threads, args.size, args.tile)))
        return
    rows = []
    for windows in args.windows:
        for variant in VARIANTS:
            row = run_point(variant, windows, args.threads, args.size, args.tile)
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (f"# bench_memory ({time.strftime('%Y-%m-%d')}, {args.threads} torch thread(s), {args.size}x{args.size}, "
              f"tiny models (diffsynth.tiny), {STEPS} steps, CFG 1.5, TeaCache 0.3, tiled decode "
              f"{args.tile}x{args.tile}/{args.tile // 2}x{args.tile // 2}, float32, CPU, MALLOC_ARENA_MAX=2)\n\n"
              "Peak RSS (VmHWM, fresh process per point, peak reset before the call) over the RSS before the call. "
              "before: window_state=\"device\", one-shot decode to a list, save_video(list); after: "
              "generate_to_file with pose_chunk_size=4 (streamed decode and write, pose CNN 4 latent frames at a "
              "time; per-window state parked on the offload device, which on a CPU-only run is the same memory, so "
              "RSS still holds every window's pose tokens and TeaCache state); recompute: generate_to_file with "
              "window_state=\"recompute\" (pose tokens recomputed per window, nothing per window kept), meant to "
              "keep host memory flat. Command: `python benchmarks/bench_memory.py`.\n\n")
    table = ["| windows / frames | " + " | ".join(f"{w} / {frames_for(w)}" for w in args.windows) + " |",
             "|---" * (len(args.windows) + 1) + "|"]
    for variant in VARIANTS:
        cells = [next(r for r in rows if r["variant"] == variant and r["windows"] == w) for w in args.windows]
        table.append(f"| {variant}: call peak over RSS before, MB | "
                     + " | ".join(f"{c['peak_over_before_mb']:.0f}" for c in cells) + " |")
    for variant in VARIANTS:
        cells = [next(r for r in rows if r["variant"] == variant and r["windows"] == w) for w in args.windows]
        table.append(f"| {variant}: seconds | " + " | ".join(f"{c['seconds']:.1f}" for c in cells) + " |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = header + "\n".join(table) + f"\n\nLoad average after the run: {load}.\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "threads": args.threads},
        "size": args.size, "tile": args.tile, "malloc_arena_max": 2, "steps": STEPS, "context_size": CONTEXT, "context_overlap": OVERLAP, "points": rows},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
