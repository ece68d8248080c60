"""CPU benchmarks: (1) loading a sharded fp32 DiT as bf16, streamed (ours) vs merge-then-cast (the upstream way);
(2) merging a rank-64 LoRA into a 537M-parameter DiT, `load_lora_v2` vs a DiffSynth-Studio-style loader, and whether
the bf16 result is bit-identical to the peer's (= upstream's formula); (3) whether a faster "fp32 product, rounded
to bf16, then alpha and the bf16 add" route would give upstream's bf16 merge bit for bit.

Section 1 (`--only dit`):

Writes a T2V-1.3B-size fp32 checkpoint (1.42e9 parameters, ~5.7 GB) in 3 safetensors shards to a temporary
directory, then loads it in a fresh process per method and records peak RSS (VmHWM) and seconds:

- ours:  `load_wan_dit(shards, torch.bfloat16)`: meta model, each tensor cast to bf16 as it is read.
- naive: every shard read at its stored precision and merged into one dict (`dict.update`), then a meta model is
         filled with `load_state_dict(assign=True)` and cast with `.to(torch.bfloat16)`.

Target: ours peak RSS <= 1.15 x (bf16 model size + largest shard). Both methods read the shards from the page
cache (they were just written), so the seconds compare CPU work, not disk speed.

Section 2 (`--only lora`): a random DiT (T2V layout, dim 1536, ffn 8960, 12 heads, 11 blocks: 536.6M parameters)
in bf16 and in fp32, and a rank-64 bf16 LoRA (PEFT names) on every Linear of its blocks (110 layers, 64 MB), read
from the page cache. Timed in one process, methods alternated, best of `--repeats`:

- ours: `ModelManager.load_lora_v2(path, keep_base_weights=True)`: read + NaN/Inf checks + content digest + all
  checks before the first change + the default merge (bf16: upstream's operations in bf16; fp32: `addmm_`) + the
  base weights kept for `unload_loras` (a fresh manager per run). The ratio is taken on this, the slowest of ours.
- ours-no-backup: the default `load_lora_v2(path)` (no copy for unload_loras).
- ours-float32: `load_lora_v2(path, merge_precision="float32")` (bf16: the update summed in fp32, one rounding).
- diffsynth-studio-style: an independent minimal peer of DiffSynth-Studio's `GeneralLoRALoader`: read the whole
  file, cast to the model dtype, and per adapted module `W' = W.to(dtype) + alpha * torch.mm(up, down)` in the
  model dtype, then `module.load_state_dict`. No checks, no restore.

Target: ours seconds <= diffsynth-studio-style seconds (ratio ours / peer <= 1), for both dtypes. After the
timing, one more merge of each method into fresh copies of the bf16 DiT counts the weight elements whose bits differ
from the peer's (target for the default: 0).

Section 3 (`--only bits`): random bf16 weights and factors of the Wan 1.3B and 14B Linear shapes, ranks 16-128,
strengths 1, 0.5, 0.7; counts the elements where `W + alpha * round_bf16(mm_fp32(up, down))` (products of bf16
numbers are exact in fp32, so this route runs at fp32 GEMM speed) differs from upstream's
`W + alpha * mm_bf16(up, down)` on this CPU.

    python benchmarks/bench_loading.py [--only dit|lora|bits] [--preset wan2.1-t2v-1.3b] [--shards 3] [--tmp /tmp]
                                       [--keep] [--repeats 3]
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
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "bench_loading.json"
REPORT = ROOT / "benchmarks" / "results" / "bench_loading.md"
TARGET = 1.15
LORA_RANK = 64
LORA_DIT = dict(model_type="t2v", in_dim=16, dim=1536, ffn_dim=8960, num_heads=12, num_layers=11, text_dim=4096)

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


def bench_dit(args) -> dict:
    """Section 1: peak RSS and seconds of the sharded DiT load (see the module doc)."""
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
    }
    print(f"{args.preset}: {sum(sizes) / gib:.2f} GiB fp32 in {len(shards)} shards (largest "
          f"{max(sizes) / gib:.2f} GiB); bf16 model {model_bytes / gib:.2f} GiB; target peak <= {bound / gib:.2f} GiB")
    print(f"{'method':<8}{'peak RSS GiB':>14}{'growth GiB':>12}{'peak/target':>13}{'seconds':>10}")
    for mode, row in result["methods"].items():
        print(f"{mode:<8}{row['peak_bytes'] / gib:>14.2f}{row['growth_bytes'] / gib:>12.2f}"
              f"{row['peak_over_target']:>13.2f}{row['seconds']:>10.1f}")
    print("PASS" if result["passes"] else "FAIL")
    return result


# ------------------------------------------------------------------------------------------------- LoRA merge
def _lora_dit(dtype):
    import torch
    from diffsynth.configs import WanDiTConfig
    from diffsynth.models.wan_dit import WanModel

    with torch.device("meta"):
        model = WanModel(WanDiTConfig(**LORA_DIT))
    model = model.to_empty(device="cpu").to(dtype).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
    return model


def _write_lora(model, path: Path) -> int:
    """A rank-64 bf16 LoRA in the trainer's PEFT names on every Linear of the blocks; returns its layer count."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in model.named_modules():
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear):
            out_f, in_f = module.weight.shape
            tensors[f"pipe.dit.{name}.lora_A.default.weight"] = (torch.randn(LORA_RANK, in_f, generator=gen)
                                                                 * 0.01).to(torch.bfloat16)
            tensors[f"pipe.dit.{name}.lora_B.default.weight"] = (torch.randn(out_f, LORA_RANK, generator=gen)
                                                                 * 0.01).to(torch.bfloat16)
    save_file(tensors, str(path))
    return len(tensors) // 2


def diffsynth_studio_style(model, path: Path, alpha: float = 1.0) -> int:
    """The peer: DiffSynth-Studio's GeneralLoRALoader algorithm, written independently (see the module doc)."""
    import torch
    from safetensors.torch import load_file

    dtype = next(model.parameters()).dtype
    lora = {k: v.to(dtype) for k, v in load_file(str(path)).items()}
    targets = {}
    for key in lora:
        if ".lora_B." in key:
            parts = key.split(".")
            i = parts.index("lora_B")
            module = parts[:i]
            targets[".".join(module[2:] if module[:2] == ["pipe", "dit"] else module)] = \
                (key, key.replace(".lora_B.", ".lora_A."))
    updated = 0
    for name, module in model.named_modules():
        if name in targets:
            up, down = (lora[k].to(dtype) for k in targets[name])
            state = module.state_dict()
            state["weight"] = state["weight"].to(dtype) + alpha * torch.mm(up, down)
            module.load_state_dict(state)
            updated += 1
    return updated


def _time_lora_method(method: str, model, path: Path) -> float:
    from diffsynth.loading import ModelManager

    if method == "diffsynth-studio-style":
        start = time.perf_counter()
        count = diffsynth_studio_style(model, path)
        seconds = time.perf_counter() - start
    else:
        manager = ModelManager(progress=False)
        manager.model.append(model)
        manager.model_name.append("wan_video_dit")
        manager.model_path.append("random")
        manager.model_format.append("random")
        start = time.perf_counter()
        count = manager.load_lora_v2(path, keep_base_weights=method == "ours",
                                     merge_precision="float32" if method == "ours-float32" else "upstream")
        seconds = time.perf_counter() - start
        del manager                      # frees the CPU copies kept for unload_loras
    assert count == 10 * LORA_DIT["num_layers"], count
    return seconds


def bench_lora(args) -> dict:
    """Section 2: seconds to merge a rank-64 LoRA, ours vs the DiffSynth-Studio-style peer (best of repeats)."""
    import torch

    methods = ("ours", "ours-no-backup", "ours-float32", "diffsynth-studio-style")
    directory = Path(tempfile.mkdtemp(prefix="bench_lora_", dir=args.tmp))
    result = {"dit": {**LORA_DIT}, "lora_rank": LORA_RANK, "lora_dtype": "bfloat16", "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "target": "ours seconds <= diffsynth-studio-style seconds",
              "by_dtype": {}, "load_average_before": __import__("os").getloadavg()[0]}
    try:
        for dtype_name in ("bfloat16", "float32"):
            model = _lora_dit(getattr(torch, dtype_name))
            path = directory / "lora.safetensors"
            layers = _write_lora(model, path)
            result["parameters"] = sum(p.numel() for p in model.parameters())
            result["lora_layers"], result["lora_bytes"] = layers, path.stat().st_size
            times = {m: [] for m in methods}
            for _ in range(args.repeats):
                for method in methods:         # alternated, so a busy moment of the machine hits every method
                    times[method].append(_time_lora_method(method, model, path))
            best = {m: min(t) for m, t in times.items()}
            result["by_dtype"][dtype_name] = {
                "seconds": best, "all_seconds": times,
                "ratio_ours_over_peer": best["ours"] / best["diffsynth-studio-style"],
                "ratio_ours_no_backup_over_peer": best["ours-no-backup"] / best["diffsynth-studio-style"],
                "passes": best["ours"] <= best["diffsynth-studio-style"]}
            if dtype_name == "bfloat16":
                result["by_dtype"][dtype_name]["elements_differing_from_peer"] = _bits_against_peer(model, path)
            del model
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result["passes"] = all(r["passes"] for r in result["by_dtype"].values())
    result["load_average_after"] = __import__("os").getloadavg()[0]
    print(f"LoRA merge: {result['parameters'] / 1e6:.1f}M-parameter DiT, rank {LORA_RANK} on {result['lora_layers']} "
          f"Linear layers ({result['lora_bytes'] / 2**20:.0f} MiB), best of {args.repeats}, "
          f"{result['torch_threads']} torch threads")
    print(f"{'DiT dtype':<10}" + "".join(f"{m:>24}" for m in methods) + f"{'ours/peer':>11}")
    for dtype_name, row in result["by_dtype"].items():
        print(f"{dtype_name:<10}" + "".join(f"{row['seconds'][m]:>23.2f}s" for m in methods)
              + f"{row['ratio_ours_over_peer']:>11.2f}")
    for dtype_name, row in result["by_dtype"].items():
        if "elements_differing_from_peer" in row:
            print(f"{dtype_name}: weight elements whose bits differ from the peer's merge: "
                  f"{row['elements_differing_from_peer']}")
    print("PASS" if result["passes"] else "FAIL")
    return result


def _bits_against_peer(model, path: Path) -> dict:
    """Merge once more with each method into fresh copies of `model` and count the elements whose bits differ from
    the DiffSynth-Studio-style peer's merge (`W + alpha * torch.mm(up, down)` in the model dtype)."""
    import copy

    import torch
    from diffsynth.loading import ModelManager

    peer = copy.deepcopy(model)
    diffsynth_studio_style(peer, path)
    reference = peer.state_dict()
    out = {}
    for method, precision in (("ours-default", "upstream"), ("ours-float32", "float32")):
        mine = copy.deepcopy(model)
        manager = ModelManager(progress=False)
        manager.model.append(mine)
        manager.model_name.append("wan_video_dit")
        manager.model_path.append("random")
        manager.model_format.append("random")
        manager.load_lora_v2(path, merge_precision=precision)
        out[method] = sum(int((v.view(torch.int16) != reference[k].view(torch.int16)).sum())
                          for k, v in mine.state_dict().items())
        del manager, mine
    out["elements"] = sum(v.numel() for v in reference.values())
    return out


BIT_SHAPES = {"wan2.1-1.3b": ((1536, 1536), (8960, 1536), (1536, 8960)),
              "wan2.1-14b": ((5120, 5120), (13824, 5120), (5120, 13824))}


def bench_bits(args) -> dict:
    """Section 3: does the fp32-speed route give upstream's bf16 merge bit for bit? (Counts per shape.)"""
    import torch

    gen = torch.Generator().manual_seed(0)
    rows, total, differ_weights, differ_products = [], 0, 0, 0
    start = time.perf_counter()
    for model, shapes in BIT_SHAPES.items():
        for out_f, in_f in shapes:
            for rank in (16, 32, 64, 128):
                for alpha in (1.0, 0.5, 0.7):
                    w = (torch.randn(out_f, in_f, generator=gen) * 0.02).to(torch.bfloat16)
                    up = (torch.randn(out_f, rank, generator=gen) * 0.01).to(torch.bfloat16)
                    down = (torch.randn(rank, in_f, generator=gen) * 0.05).to(torch.bfloat16)
                    upstream_product = torch.mm(up, down)
                    fast_product = torch.mm(up.float(), down.float()).to(torch.bfloat16)
                    upstream = w + alpha * upstream_product
                    fast = w + alpha * fast_product
                    n_w = int((upstream.view(torch.int16) != fast.view(torch.int16)).sum())
                    n_p = int((upstream_product.view(torch.int16) != fast_product.view(torch.int16)).sum())
                    rows.append({"model": model, "shape": [out_f, in_f], "rank": rank, "alpha": alpha,
                                 "elements": w.numel(), "weights_differing": n_w, "products_differing": n_p})
                    total += w.numel()
                    differ_weights += n_w
                    differ_products += n_p
    result = {"matrices": len(rows), "elements": total, "weights_differing": differ_weights,
              "products_differing": differ_products, "bit_identical": differ_weights == 0, "rows": rows,
              "seconds": time.perf_counter() - start, "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
    print(f"fp32-product route vs upstream's bf16 formula: {differ_weights} of {total} merged weight elements "
          f"differ ({differ_products} products) over {len(rows)} matrices; torch {torch.__version__}, "
          f"{result['cpu_capability']}")
    return result


def write_report(results: dict) -> None:
    """benchmarks/results/bench_loading.md from the JSON results."""
    lines = ["# bench_loading", ""]
    dit = results if "methods" in results else None
    if dit:
        gib = 2 ** 30
        lines += ["## Sharded DiT load (fp32 shards -> bf16)", "",
                  f"{dit['preset']}, {len(dit['shard_bytes'])} shards, target: {dit['target']} "
                  f"({dit['target_bytes'] / gib:.2f} GiB).", "",
                  "| method | peak RSS GiB | growth GiB | peak / target | seconds |", "|---|---|---|---|---|"]
        for mode, row in dit["methods"].items():
            lines.append(f"| {mode} | {row['peak_bytes'] / gib:.2f} | {row['growth_bytes'] / gib:.2f} | "
                         f"{row['peak_over_target']:.2f} | {row['seconds']:.1f} |")
        lines += ["", "PASS" if dit["passes"] else "FAIL", ""]
    lora = results.get("lora_merge")
    if lora:
        lines += ["## LoRA merge (`load_lora_v2` vs DiffSynth-Studio-style)", "",
                  f"{lora['parameters'] / 1e6:.1f}M-parameter DiT ({lora['dit']}), rank-{lora['lora_rank']} "
                  f"{lora['lora_dtype']} LoRA on {lora['lora_layers']} Linear layers "
                  f"({lora['lora_bytes'] / 2**20:.0f} MiB), read from the page cache; seconds are the best of "
                  f"{lora['repeats']} alternated runs on {lora['torch_threads']} torch threads. "
                  f"Target: {lora['target']}.", "",
                  "| DiT dtype | ours, keep_base_weights=True | ours, default | ours, merge_precision=float32 "
                  "| diffsynth-studio-style | ours / peer |",
                  "|---|---|---|---|---|---|"]
        for dtype_name, row in lora["by_dtype"].items():
            sec = row["seconds"]
            lines.append(f"| {dtype_name} | {sec['ours']:.2f} s | {sec['ours-no-backup']:.2f} s | "
                         f"{sec.get('ours-float32', float('nan')):.2f} s | "
                         f"{sec['diffsynth-studio-style']:.2f} s | {row['ratio_ours_over_peer']:.2f} |")
        lines += ["", "PASS" if lora["passes"] else "FAIL", ""]
        bits = lora["by_dtype"].get("bfloat16", {}).get("elements_differing_from_peer")
        if bits:
            lines += [f"bf16 merge, weight elements whose bits differ from the peer's (`W + alpha * torch.mm(up, down)` "
                      f"in bf16, i.e. upstream's formula), of {bits['elements']:,}: default "
                      f"**{bits['ours-default']:,}**, merge_precision=\"float32\" {bits['ours-float32']:,}.", ""]
        lines += ["ours includes reading, NaN/Inf checks, the content digest, every check before the first change, "
                  "the merge (bf16 default: upstream's operations in bf16; fp32: in place) and, in the first "
                  "column, the base weights kept for `unload_loras`; the peer merges in the model dtype without "
                  "checks.", "",
                  f"1-minute load average {lora['load_average_before']:.1f} before and "
                  f"{lora['load_average_after']:.1f} after the run on {results.get('machine', {}).get('cpus')} CPUs: "
                  "on a shared machine single runs vary several-fold (every run is in the JSON, `all_seconds`), "
                  "so compare the best runs and rerun on a quiet machine.", ""]
    bits = results.get("merge_bits")
    if bits:
        lines += ["## Would an fp32-speed route give upstream's bf16 merge?", "",
                  "`W + alpha * round_bf16(mm_fp32(up, down))` (products of bf16 factors are exact in fp32) against "
                  "upstream's `W + alpha * mm_bf16(up, down)`, random bf16 matrices of the Wan 1.3B and 14B Linear "
                  f"shapes, ranks 16/32/64/128, alpha 1/0.5/0.7: {bits['matrices']} matrices, "
                  f"{bits['elements']:,} weight elements, torch {bits['torch']}, CPU capability "
                  f"{bits['cpu_capability']}, {bits['torch_threads']} threads.", "",
                  f"- merged weights differing: **{bits['weights_differing']:,}** "
                  f"({bits['weights_differing'] / bits['elements']:.1e} of all)",
                  f"- bf16 products differing: {bits['products_differing']:,}", "",
                  ("Bit-identical." if bits["bit_identical"] else
                   "Not bit-identical: the bf16 GEMM accumulates in fp32 too, but in another order (and the fp32 "
                   "sum of rank-many exact products is itself rounded), so its product lands on the other side of "
                   "a bf16 rounding boundary now and then. The default merge therefore calls the same bf16 "
                   "`torch.mm` as upstream."), ""]
    machine = results.get("machine")
    if machine:
        lines += [f"Machine: Python {machine['python']}, {machine['platform']}, {machine['cpus']} CPUs.", ""]
    REPORT.write_text("\n".join(lines))


def _machine() -> dict:
    import os

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("dit", "lora", "bits"), help="run one section (default: all)")
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the checkpoints are written")
    parser.add_argument("--keep", action="store_true", help="keep the generated DiT checkpoint")
    parser.add_argument("--repeats", type=int, default=3, help="LoRA section: runs per method (best is kept)")
    args = parser.parse_args()

    # Section 1 keeps its keys at the top level of the JSON (as before section 2 existed); section 2 is "lora_merge",
    # section 3 "merge_bits".
    # Running one section keeps the other's last results.
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.only in (None, "dit"):
        results = {k: results[k] for k in ("lora_merge", "merge_bits") if k in results}
        results.update(bench_dit(args))
    if args.only in (None, "lora"):
        results["lora_merge"] = bench_lora(args)
    if args.only in (None, "bits"):
        results["merge_bits"] = bench_bits(args)
    results["machine"] = _machine()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results)


if __name__ == "__main__":
    main()
