"""CPU benchmark: loading a sharded fp32 DiT as bf16, streamed (ours) vs merge-then-cast (the upstream way).

Writes a T2V-1.3B-size fp32 checkpoint (1.42e9 parameters, ~5.7 GB) in 3 safetensors shards to a temporary
directory, then loads it in a fresh process per method and records peak RSS (VmHWM) and seconds:

- ours:  `load_wan_dit(shards, torch.bfloat16)`: meta model, each tensor cast to bf16 as it is read.
- naive: every shard read at its stored precision and merged into one dict (`dict.update`), then a meta model is
         filled with `load_state_dict(assign=True)` and cast with `.to(torch.bfloat16)`.

Target: ours peak RSS <= 1.15 x (bf16 model size + largest shard). Both methods read the shards from the page
cache (they were just written), so the seconds compare CPU work, not disk speed.

    python benchmarks/bench_loading.py [--preset wan2.1-t2v-1.3b] [--shards 3] [--tmp /tmp] [--keep]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_loading.json"
TARGET = 1.15

# Runs in its own process: write the shards without keeping more than one shard in memory.
_WRITE = """
import math, sys, torch
from safetensors.torch import save_file
from diffsynth.configs import WanDiTConfig
from diffsynth.models.wan_dit import WanModel
preset, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with torch.device("meta"):
    shapes = {k: v.shape for k, v in WanModel(WanDiTConfig.from_preset(preset)).state_dict().items()}
keys = list(shapes)
total = sum(math.prod(s) for s in shapes.values())
gen = torch.Generator().manual_seed(0)
shard, size, index = {}, 0, 1
for i, key in enumerate(keys):
    shard[key] = torch.randn(shapes[key], generator=gen) * 0.02
    size += shard[key].numel()
    if size >= total / n * index - 1 or i == len(keys) - 1:
        save_file(shard, f"{out}/diffusion_pytorch_model-{index:05d}-of-{n:05d}.safetensors")
        shard, index = {}, index + 1
"""

# Runs in its own process: one load, then report peak RSS and seconds.
_LOAD = """
import json, sys, time, torch
from diffsynth.configs import WanDiTConfig
from diffsynth.loading import load_state_dict, load_wan_dit
from diffsynth.models.wan_dit import WanModel
mode, preset, shards = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = WanDiTConfig.from_preset(preset)
with torch.device("meta"):
    WanModel(cfg)                      # one-time import / first-build costs before the baseline RSS
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) * 1024
def peak_rss():
    # This process's own high-water mark. ru_maxrss would carry the forking parent's peak over execve on Linux.
    return status("VmHWM:")
before = status("VmRSS:")
start = time.perf_counter()
if mode == "ours":
    model = load_wan_dit(shards, torch.bfloat16, progress=False)
else:
    state_dict = {}
    for path in shards:
        state_dict.update(load_state_dict(path))
    with torch.device("meta"):
        model = WanModel(cfg)
    model.load_state_dict(state_dict, assign=True)
    model = model.to(torch.bfloat16)
    del state_dict
seconds = time.perf_counter() - start
assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in model.parameters())
print(json.dumps({"seconds": seconds, "before_bytes": before,
                  "peak_bytes": peak_rss(),
                  "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}))
"""


def _run(code: str, *args: str) -> str:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, capture_output=True,
                          text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the checkpoint is written")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    args = parser.parse_args()

    free = shutil.disk_usage(args.tmp).free
    directory = Path(tempfile.mkdtemp(prefix="bench_loading_", dir=args.tmp))
    try:
        start = time.perf_counter()
        _run(_WRITE, args.preset, str(args.shards), str(directory))
        write_seconds = time.perf_counter() - start
        shards = sorted(directory.glob("*.safetensors"))
        sizes = [p.stat().st_size for p in shards]
        rows = {}
        for mode in ("ours", "naive"):
            rows[mode] = json.loads(_run(_LOAD, mode, args.preset, json.dumps([str(p) for p in shards])).strip()
                                    .splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)

    model_bytes = rows["ours"]["model_bytes"]
    bound = TARGET * (model_bytes + max(sizes))
    gib = 2 ** 30
    result = {
        "preset": args.preset, "shards": len(shards), "shard_bytes": sizes, "checkpoint_bytes": sum(sizes),
        "bf16_model_bytes": model_bytes, "target": f"peak RSS <= {TARGET} x (bf16 model + largest shard)",
        "target_bytes": bound, "write_seconds": write_seconds, "free_disk_bytes_before": free,
        "methods": {mode: {**row, "growth_bytes": row["peak_bytes"] - row["before_bytes"],
                           "peak_over_target": row["peak_bytes"] / bound} for mode, row in rows.items()},
        "passes": rows["ours"]["peak_bytes"] <= bound,
        "notes": "peak = VmHWM of a fresh process (includes ~0.3 GB of Python/torch); growth = peak minus RSS "
                 "right before loading. Shards are read from the page cache (just written).",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count()},
    }
    print(f"{args.preset}: {sum(sizes) / gib:.2f} GiB fp32 in {len(shards)} shards (largest "
          f"{max(sizes) / gib:.2f} GiB); bf16 model {model_bytes / gib:.2f} GiB; target peak <= {bound / gib:.2f} GiB")
    print(f"{'method':<8}{'peak RSS GiB':>14}{'growth GiB':>12}{'peak/target':>13}{'seconds':>10}")
    for mode, row in result["methods"].items():
        print(f"{mode:<8}{row['peak_bytes'] / gib:>14.2f}{row['growth_bytes'] / gib:>12.2f}"
              f"{row['peak_over_target']:>13.2f}{row['seconds']:>10.1f}")
    print("PASS" if result["passes"] else "FAIL")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
