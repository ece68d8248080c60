"""Multi-process DiT steps: measured overhead on the CPU, communication volume from the shapes, predicted 8-GPU scaling.

1. Measured (CPU, gloo, one torch thread per process): seconds per denoising step (both CFG branches) of a medium
   random I2V DiT, 1 process vs 2 processes with Ulysses sequence parallel and with CFG parallel, launched with
   `torch.distributed.run`. On a 2-core machine two processes have one core each, so the ratio shows the parallel
   overhead (all-to-alls, padding, gathers) next to the ideal halving, not GPU scaling.
2. Computed: bytes each rank sends per step with Ulysses at the 14B model's 480p and 720p shapes (4 all-to-alls of
   the local q/k/v/output per block, each moving (P-1)/P of it, plus the final gather), for P = 2, 4, 8.
3. Estimated (not measured: no multi-GPU machine has been lent yet): 8-GPU step time at 480p = single-GPU step time /
   8 + communication time at NVLink bandwidth. The single-GPU step time is itself an estimate (FLOPs at 50% of an
   H100's dense bf16 rate) until `benchmarks/gpu_check.py` has run; both are labelled as estimates in the table.

    python benchmarks/bench_parallel.py [--steps 3] [--smoke]

Writes benchmarks/results/bench_parallel.json and .md.
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The 14B DiT (wan2.1-i2v-14b preset) and its token counts: 81 frames -> 21 latent frames, patch 1x2x2.
DIM, HEADS, LAYERS, FFN = 5120, 40, 40, 13824
TOKENS = {"480p": 21 * (480 // 16) * (832 // 16), "720p": 21 * (720 // 16) * (1280 // 16)}
H100_BF16_FLOPS = 989e12      # dense bf16, SXM
EFFICIENCY = 0.5              # assumed fraction of it reached (estimate)
NVLINK_BYTES_PER_S = 450e9    # H100 SXM NVLink 4, per direction per GPU

# Runs in each process under torch.distributed.run: times `steps` guided steps of the medium DiT.
_WORKER = r"""
import json, sys, time
import torch
from diffsynth.configs import WanDiTConfig
from diffsynth.distributed import ParallelConfig, init_parallel
from diffsynth.distributed.sequence_parallel import SequenceParallel
from diffsynth.models.wan_dit import WanModel
torch.set_num_threads(1)
out, mode, steps, smoke = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
config = {"single": ParallelConfig(), "ulysses": ParallelConfig(ulysses_size=2),
          "cfg": ParallelConfig(cfg_parallel=True)}[mode]
state = init_parallel(config)
torch.manual_seed(0)
dim, heads, layers = (48, 4, 2) if smoke else (512, 8, 8)
dit = WanModel(WanDiTConfig(model_type="i2v", in_dim=36, dim=dim, ffn_dim=4 * dim, num_heads=heads,
                            num_layers=layers, text_dim=64, image_dim=64)).eval().requires_grad_(False)
if config.sp_size > 1:
    dit.sequence_parallel = SequenceParallel(state.sp_group)
T, h, w = (2, 4, 6) if smoke else (5, 16, 24)
g = torch.Generator().manual_seed(1)
x = torch.randn(1, 16, T, h, w, generator=g); y = torch.randn(1, 20, T, h, w, generator=g)
ctx = torch.randn(2, 64, 64, generator=g); clip = torch.randn(2, 257, 64, generator=g)
def step():
    t = torch.tensor([500.0])
    if config.cfg_parallel:      # this rank's branch, then the partner's velocity
        mine = dit(x, t, ctx[state.cfg_rank:state.cfg_rank + 1], clip[:1], y)
        parts = [torch.empty_like(mine) for _ in range(2)]
        torch.distributed.all_gather(parts, mine, group=state.cfg_group)
        return parts
    return dit(x.expand(2, -1, -1, -1, -1), t, ctx, clip, y.expand(2, -1, -1, -1, -1))
with torch.no_grad():
    step()                        # warm-up
    if state.world_size > 1:
        torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if state.world_size > 1:
        torch.distributed.barrier()
    seconds = (time.perf_counter() - start) / steps
if state.is_main:
    json.dump({"s_per_step": seconds, "tokens": T * (h // 2) * (w // 2), "dim": dim, "layers": layers}, open(out, "w"))
if state.world_size > 1:
    torch.distributed.destroy_process_group()
"""


def measure(mode: str, steps: int, smoke: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(_WORKER)
        out = Path(tmp) / "out.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        nproc = 1 if mode == "single" else 2
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(worker), str(out), mode, str(steps), "1" if smoke else "0"]
        if nproc == 1:
            cmd = [sys.executable, str(worker), str(out), mode, str(steps), "1" if smoke else "0"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{result.stderr[-2000:]}")
        return json.loads(out.read_text())


def ulysses_bytes_per_step(tokens: int, ranks: int, branches: int = 2, bytes_per_value: int = 2) -> float:
    """Bytes one rank sends per denoising step with Ulysses over `ranks` (bf16): per block 4 all-to-alls of its
    [L/P, d] q, k, v and attention output, each sending (P-1)/P of it; plus the final all-gather of the head's
    output (16*4 values per token, small). `branches` DiT forwards per step (2 with CFG)."""
    local = tokens / ranks * DIM * bytes_per_value
    per_block = 4 * local * (ranks - 1) / ranks
    gather = tokens / ranks * 64 * bytes_per_value * (ranks - 1)
    return branches * (LAYERS * per_block + gather)


def forward_flops(tokens: int, text_tokens: int = 512, image_tokens: int = 257) -> float:
    """FLOPs of one 14B DiT forward (matmuls only): q/k/v/o, cross-attention (text + image), FFN, attention."""
    linear = tokens * (4 * DIM * DIM + 2 * DIM * DIM + 2 * DIM * FFN) * 2           # self q,k,v,o; cross q,o; ffn
    kv = (text_tokens + image_tokens) * 2 * DIM * DIM * 2                          # cross k,v (+ image k,v)
    attention = 2 * tokens * tokens * DIM * 2 + 2 * tokens * (text_tokens + image_tokens) * DIM * 2
    return LAYERS * (linear + kv + attention)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1 step: checks the script runs")
    parser.add_argument("--out", default=str(RESULTS / "bench_parallel.json"))
    args = parser.parse_args(argv)
    steps = 1 if args.smoke else args.steps
    load_before = os.getloadavg()[0]
    measured = {mode: measure(mode, steps, args.smoke) for mode in ("single", "ulysses", "cfg")}
    load_after = os.getloadavg()[0]
    base = measured["single"]["s_per_step"]
    for mode in ("ulysses", "cfg"):
        measured[mode]["speedup_vs_single"] = base / measured[mode]["s_per_step"]

    comm = {res: {p: ulysses_bytes_per_step(tokens, p) for p in (2, 4, 8)} for res, tokens in TOKENS.items()}
    step_1gpu = 2 * forward_flops(TOKENS["480p"]) / (H100_BF16_FLOPS * EFFICIENCY)
    comm_8 = comm["480p"][8] / NVLINK_BYTES_PER_S
    estimate = {"single_gpu_s_per_step_estimate": step_1gpu, "comm_s_per_step_8gpu": comm_8,
                "s_per_step_8gpu_estimate": step_1gpu / 8 + comm_8,
                "speedup_8gpu_estimate": step_1gpu / (step_1gpu / 8 + comm_8),
                "assumptions": f"FLOPs at {EFFICIENCY:.0%} of {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (H100 SXM dense "
                               f"bf16); NVLink {NVLINK_BYTES_PER_S / 1e9:.0f} GB/s per direction; communication not "
                               "overlapped with compute; attention assumed to split perfectly by heads"}
    results = {"measured_cpu": measured, "ulysses_bytes_per_rank_per_step": comm, "estimate_8gpu_480p": estimate,
               "smoke": args.smoke, "steps": steps, "load_average_before": load_before,
               "load_average_after": load_after,
               "machine": {"python": platform.python_version(), "platform": platform.platform(),
                           "cpus": os.cpu_count(), "torch_threads_per_process": 1},
               "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(report(results))
    print(report(results))
    return results


def report(r: dict) -> str:
    m = r["measured_cpu"]
    s = m["single"]
    lines = ["# bench_parallel", "",
             f"## Measured: CPU, gloo, 1 torch thread per process ({r['steps']} steps after a warm-up)", "",
             f"Medium random I2V DiT (dim {s['dim']}, {s['layers']} blocks), {s['tokens']} tokens, cfg on (2 "
             "branches per step).", "",
             "| layout | processes | s/step | speedup vs 1 process (ideal 2.0) |", "|---|---|---|---|",
             f"| single | 1 | {s['s_per_step']:.3f} | 1.00 |",
             f"| Ulysses 2 | 2 | {m['ulysses']['s_per_step']:.3f} | {m['ulysses']['speedup_vs_single']:.2f} |",
             f"| CFG parallel | 2 | {m['cfg']['s_per_step']:.3f} | {m['cfg']['speedup_vs_single']:.2f} |", "",
             f"1-minute load average {r.get('load_average_before', 0):.1f} before and "
             f"{r.get('load_average_after', 0):.1f} after, on {r['machine']['cpus']} CPUs: with other work running, "
             "two processes do not get a core each and the speedup reads low; rerun on a quiet machine.", "",
             "## Computed: bytes each rank sends per step with Ulysses (14B DiT, bf16, 2 CFG branches)", "",
             "| resolution | tokens | P = 2 | P = 4 | P = 8 |", "|---|---|---|---|---|"]
    for res, per in r["ulysses_bytes_per_rank_per_step"].items():
        lines.append(f"| {res} | {TOKENS[res]} | " + " | ".join(f"{per[p] / 1e9:.1f} GB" for p in per) + " |")
    e = r["estimate_8gpu_480p"]
    lines += ["", "## Estimate (not measured): 8 H100s, 480p, Ulysses 8", "",
              f"- single-GPU step (estimate): {e['single_gpu_s_per_step_estimate']:.2f} s",
              f"- communication per step at NVLink bandwidth: {e['comm_s_per_step_8gpu'] * 1e3:.0f} ms",
              f"- 8-GPU step (estimate): {e['s_per_step_8gpu_estimate']:.2f} s, "
              f"speedup {e['speedup_8gpu_estimate']:.1f}x",
              f"- assumptions: {e['assumptions']}", "",
              "Run this script on a multi-GPU machine (and `benchmarks/gpu_check.py`) to replace the estimate.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
