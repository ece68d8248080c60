"""CPU benchmark of the generation fast paths (issue 10): the fast preset, step caches, batched CFG, `pipe.compile()`.

Everything runs `WanUniAnimateVideoPipeline.__call__` end to end on the CPU, fp32, with a *medium* random I2V DiT
built from the real classes (`WanModel`, width 512, ffn 1536, 8 heads, 8 layers: 36 M parameters) and the tiny
VAE / umT5 / CLIP of `diffsynth.tiny` (the pose guider at the DiT width); 17 frames at 64x96 (5 x 8 x 12 latents,
120 video tokens per CFG branch), seed 0, untiled decode. Four tables:

1. **Default vs fast**: one generation with the default settings (50 steps, cfg 1.5) against `preset="fast"`
   (4 steps [1000, 750, 500, 250], shift 5, cfg 1, renoise sampler). There is no step-distillation LoRA here, so
   the benchmark sets `pipe.step_distilled = True` by hand: the fast video of a random model is not a usable video,
   only the time is measured.
2. **Step caches** at 50 steps, cfg 1.5: no cache vs TeaCache and MagCache at two settings each. Speedup (time
   ratio vs uncached, whole call and denoising loop), computed steps per CFG branch (from `pipe.cache_plan`, checked
   against the caches the call actually used), and the difference from the uncached output (final float latents:
   mean abs diff; decoded uint8 frames: mean abs diff and PSNR). The random DiT's timestep modulation changes so
   much between steps that TeaCache needs thresholds in the thousands (with the "Wan2.1-I2V-14B-720P" polynomial)
   to skip anything; the quality numbers show the mechanics, not a trained model's quality loss.
3. **Batched CFG**: s/step with `cfg_batch=True` vs `False` (10 steps, cfg 1.5) and the max abs diff of the outputs.
4. **`pipe.compile()`** (inductor, CPU) on a fresh copy of the models: the first call (includes compiling), then
   s/step against the eager pipeline at the same settings (10 steps, batched CFG) and the max abs diff.

Timing: `time.perf_counter()` around the whole call, and the pipeline's own `last_timings` (per stage; s/step is the
denoising stage over its steps). One warm-up call first; then every 50-step configuration runs `--repeats` times
(default 3) and every 10-step one `--short-repeats` times (default 3), interleaved round by round so a load change
hits all of them alike; tables show the best (minimum) of the repeats, the JSON keeps every run. One torch thread
by default (`--threads`): the development machine has 2 cores shared with other jobs, where 2 threads run 3-5x
slower whenever another process is busy. Outputs are compared on the first repeat (runs are seeded; the JSON records
whether repeats were bit-identical).

    .venv/bin/python benchmarks/bench_pipeline.py                 # the tables above, ~6 min (1 thread, shared 2 cores)
    .venv/bin/python benchmarks/bench_pipeline.py --tiny          # tiny models, a few steps: a ~10 s smoke run
    .venv/bin/python benchmarks/bench_pipeline.py --skip compile  # sections: fast, caches, cfg, compile
    .venv/bin/python benchmarks/bench_pipeline.py --markdown-only # rewrite the .md from the JSON

Writes `benchmarks/results/bench_pipeline.{json,md}` (`--tiny`: `bench_pipeline_tiny.*` unless `--out` is given).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffsynth.acceleration import MagCacheConfig, TeaCacheConfig  # noqa: E402
from diffsynth.configs import PoseGuiderConfig, WanDiTConfig  # noqa: E402
from diffsynth.models.pose_guider import PoseGuider  # noqa: E402
from diffsynth.models.wan_dit import WanModel  # noqa: E402
from diffsynth.pipelines import WanUniAnimateVideoPipeline  # noqa: E402
from diffsynth.pipelines.request import FAST_PRESET, GenerationRequest  # noqa: E402
from diffsynth.pipelines.schedule import make_scheduler  # noqa: E402
from diffsynth.tiny import TINY_CLIP, TINY_DIT, TINY_T5, build_tiny_models  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("fast", "caches", "cfg", "compile")
MODEL_ID = "Wan2.1-I2V-14B-720P"   # UniAnimate-DiT's base model: its TeaCache polynomial and MagCache table
CFG_SCALE = 1.5

# Sizes. TeaCache thresholds were picked with `pipe.cache_plan` for each random DiT (seed 0) to give a visible range
# of computed steps; MagCache uses the authors' default (0.12, K 2) and their 14B preset "E024K6R02" (0.24, K 6).
SIZES = {
    "medium": dict(
        dit=WanDiTConfig(model_type="i2v", in_dim=36, dim=512, ffn_dim=1536, num_heads=8, num_layers=8,
                         text_dim=TINY_T5.dim, image_dim=TINY_CLIP.dim),
        height=64, width=96, frames=17, steps=50, short_steps=10, repeats=3, short_repeats=3,
        teacache=(1500.0, 5000.0), magcache=((0.12, 2), (0.24, 6))),
    "tiny": dict(
        dit=TINY_DIT, height=32, width=48, frames=5, steps=8, short_steps=2, repeats=1, short_repeats=1,
        teacache=(1000.0, 3000.0), magcache=((0.12, 2), (0.24, 6))),
}


class RecordingPipeline(WanUniAnimateVideoPipeline):
    """The real pipeline; it also keeps the final latents and the step caches of its last call."""

    final_latents: Optional[torch.Tensor] = None
    recorded_caches: list = [None, None]

    def step_caches(self, request, num_steps):
        self.recorded_caches = super().step_caches(request, num_steps)
        return self.recorded_caches

    def finish(self, latents, *args, **kwargs):
        self.final_latents = latents.detach().float().clone()
        return super().finish(latents, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ setup
def build(size: dict, workdir: str, seed: int = 0):
    """The tiny models of `diffsynth.tiny`, with the DiT (and the pose guider, which follows its width) replaced
    by seeded random ones of the requested configuration; all fp32, eval, no grad."""
    models = build_tiny_models(str(Path(workdir) / "tok"), seed=seed, dtype=torch.float32)
    torch.manual_seed(seed)
    models.dit = WanModel(size["dit"]).eval().requires_grad_(False)
    models.pose_guider = PoseGuider(PoseGuiderConfig(out_dim=size["dit"].dim)).eval().requires_grad_(False)
    return models


def make_pipe(models) -> RecordingPipeline:
    return RecordingPipeline.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)


def make_inputs(size: dict, seed: int = 0) -> dict:
    from PIL import Image

    h, w, f = size["height"], size["width"], size["frames"]
    rng = np.random.default_rng(seed)
    return dict(prompt="a person is dancing", negative_prompt="blurry, low quality",
                input_image=Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)),
                dwpose_data=torch.from_numpy(rng.integers(0, 255, (3, f, h, w))).float(),
                random_ref_dwpose=torch.from_numpy(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)),
                height=h, width=w, num_frames=f, seed=seed, tiled=False, progress_bar_cmd=lambda x: x)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------------------- running
class Runner:
    """Runs named configurations, keeps the raw figures (for the JSON) and the outputs of the first repeat."""

    def __init__(self, inputs: dict):
        self.inputs = inputs
        self.runs: dict = {}      # name -> list of per-run dicts
        self.outputs: dict = {}   # name -> (latents, uint8 frames) of the first successful run
        self.errors: dict = {}

    def run(self, name: str, pipe: RecordingPipeline, **kwargs) -> Optional[dict]:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                frames = pipe(**{**self.inputs, **kwargs})
                seconds = time.perf_counter() - start
        except Exception as exc:   # record the failure, keep benchmarking the rest
            self.errors.setdefault(name, []).append(f"{type(exc).__name__}: {exc}")
            print(f"  {name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            return None
        video = np.stack([np.asarray(frame) for frame in frames])
        timings = pipe.last_timings
        steps = timings["steps"]
        computed = [None if cache is None else steps - len(cache.skipped_steps) for cache in pipe.recorded_caches]
        row = dict(seconds=seconds, denoise_s=timings["stages_s"].get("denoise"),
                   s_per_step=timings.get("s_per_step"), steps=steps, computed_actual=computed,
                   last_timings=timings, summary=stderr.getvalue().strip().splitlines()[-1:] or [""],
                   warnings=sorted({f"{w.category.__name__}: {w.message}" for w in caught}), load=load())
        row["summary"] = row["summary"][0]
        first = name not in self.outputs
        if first:
            self.outputs[name] = (pipe.final_latents, video)
        else:
            latents, ref = self.outputs[name]
            row["identical_to_first"] = bool(torch.equal(latents, pipe.final_latents) and np.array_equal(ref, video))
        self.runs.setdefault(name, []).append(row)
        print(f"  {name}: {seconds:.2f} s ({row['summary']})", flush=True)
        return row

    def best(self, name: str, key: str = "seconds") -> Optional[float]:
        values = [r[key] for r in self.runs.get(name, []) if r.get(key) is not None]
        return min(values) if values else None

    def median(self, name: str, key: str = "seconds") -> Optional[float]:
        values = [r[key] for r in self.runs.get(name, []) if r.get(key) is not None]
        return float(np.median(values)) if values else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def compare(runner: Runner, name: str, reference: str) -> Optional[dict]:
    """Output of `name` against `reference` (first repeats): float latents and decoded uint8 frames."""
    if name not in runner.outputs or reference not in runner.outputs:
        return None
    (lat, vid), (ref_lat, ref_vid) = runner.outputs[name], runner.outputs[reference]
    diff = (lat - ref_lat).abs()
    pix = np.abs(vid.astype(np.int16) - ref_vid.astype(np.int16))
    return dict(latents_mean_abs=float(diff.mean()), latents_max_abs=float(diff.max()),
                latents_rel_l2=float((lat - ref_lat).norm() / ref_lat.norm()),
                frames_mean_abs=float(pix.mean()), frames_max_abs=int(pix.max()),
                psnr_db=None if not pix.any() else psnr(vid, ref_vid))   # None: identical frames (infinite PSNR)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def round_ratios(runner: Runner, a: str, b: str, key: str = "seconds") -> list:
    """a / b within each round (the runs of one round ran back to back, so they saw about the same load)."""
    return [ratio(x.get(key), y.get(key)) for x, y in zip(runner.runs.get(a, []), runner.runs.get(b, []))]


# ---------------------------------------------------------------------------------------------- sections
@torch.no_grad()
def modulation_change(pipe: RecordingPipeline, steps: int) -> dict:
    """What TeaCache reads on this DiT: the relative L1 change of the block modulation e0 between consecutive steps
    of the default schedule, raw and through the `MODEL_ID` polynomial (the amount added to its accumulator)."""
    from diffsynth.acceleration.teacache import TEACACHE_COEFFICIENTS

    timesteps = make_scheduler(GenerationRequest(num_inference_steps=steps)).timesteps
    mods = [pipe.dit.embed_timestep(torch.tensor([float(t)]))[1] for t in timesteps]
    rel = np.array([float((a - b).abs().mean() / b.abs().mean()) for a, b in zip(mods[1:], mods[:-1])])
    rescaled = np.poly1d(TEACACHE_COEFFICIENTS[MODEL_ID])(rel)
    return dict(rel_l1_min=float(rel.min()), rel_l1_max=float(rel.max()), rel_l1_median=float(np.median(rel)),
                rescaled_min=float(rescaled.min()), rescaled_max=float(rescaled.max()),
                rescaled_median=float(np.median(rescaled)))


def cache_configs(size: dict) -> dict:
    configs = {f"TeaCache {t:g}": TeaCacheConfig(t, MODEL_ID) for t in size["teacache"]}
    configs.update({f"MagCache {t:g}, K {k}": MagCacheConfig(threshold=t, K=k, model_id=MODEL_ID)
                    for t, k in size["magcache"]})
    return configs


def bench(size_name: str, repeats: Optional[int], steps: Optional[int], short_steps: Optional[int],
          skip: tuple, seed: int = 0, short_repeats: Optional[int] = None, warm_cache: bool = False) -> dict:
    size = dict(SIZES[size_name])
    repeats = repeats or size["repeats"]
    short_repeats = short_repeats or size["short_repeats"]
    steps = steps or size["steps"]
    short = short_steps or size["short_steps"]
    started = time.perf_counter()
    load_before = load()
    with tempfile.TemporaryDirectory() as work:
        models = build(size, work, seed)
    pipe = make_pipe(models)
    inputs = make_inputs(size, seed)
    runner = Runner(inputs)
    dit_params = sum(p.numel() for p in models.dit.parameters())
    tokens = ((size["frames"] - 1) // 4 + 1) * (size["height"] // 16) * (size["width"] // 16)
    print(f"{size_name}: DiT {dit_params / 1e6:.1f} M parameters, {tokens} video tokens per branch, "
          f"{steps} steps x {repeats} repeat(s), short runs {short} steps x {short_repeats}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)

    base = dict(cfg_scale=CFG_SCALE, num_inference_steps=steps)
    print("warm-up", flush=True)
    runner.run("warm-up", pipe, cfg_scale=CFG_SCALE, num_inference_steps=2)

    # 1 + 2: the uncached default run is the baseline of both tables.
    long_configs = {"default": dict(base)}
    if "fast" not in skip:
        long_configs["fast"] = dict(preset="fast")
    plans = {}
    if "caches" not in skip:
        for name, config in cache_configs(size).items():
            long_configs[name] = dict(base, step_cache=config)
            plan = pipe.cache_plan(steps, step_cache=config, cfg_scale=CFG_SCALE)
            plans[name] = dict(plan["computed"], positive_steps=[int(b) for b in plan["positive"]],
                               negative_steps=None if plan["negative"] is None else [int(b) for b in plan["negative"]])
    pipe.step_distilled = True   # no step-distill LoRA here: let preset="fast" run (time only; see the notes)
    print(f"default, fast and cache runs ({len(long_configs)} configurations x {repeats})", flush=True)
    for _ in range(repeats):
        for name, kwargs in long_configs.items():
            runner.run(name, pipe, **kwargs)

    # 3 + 4: short runs, eager batched / eager serial / compiled, interleaved after the compiled first call.
    compiled_pipe, compile_info, inductor_dir = None, {}, None
    if "compile" not in skip and not warm_cache:
        # A cold compile: inductor's on-disk cache (shared by every process of the user) would otherwise turn the
        # "first call" into a cache load after any earlier run at this size.
        inductor_dir = tempfile.mkdtemp(prefix="bench_pipeline_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir
    compile_info["inductor_cache"] = "the default (may be warm)" if warm_cache else "fresh temporary directory"
    if "compile" not in skip:
        from torch._dynamo.utils import counters

        compiled_pipe = make_pipe(copy.deepcopy(models))
        compiled_pipe.step_distilled = True
        before = dict(counters["stats"])
        print("compile: first call", flush=True)
        t0 = time.perf_counter()
        try:
            compiled_pipe.compile()
            compile_info["compile_call_s"] = time.perf_counter() - t0
        except Exception as exc:
            runner.errors.setdefault("compile", []).append(f"{type(exc).__name__}: {exc}")
            compiled_pipe = None
        if compiled_pipe is not None:
            runner.run("compiled, first call", compiled_pipe, cfg_scale=CFG_SCALE, num_inference_steps=short)
            after = dict(counters["stats"])
            compile_info.update(unique_graphs=after.get("unique_graphs", 0) - before.get("unique_graphs", 0),
                                calls_captured=after.get("calls_captured", 0) - before.get("calls_captured", 0),
                                recompiles=sum(dict(counters.get("recompiles", {})).values()),
                                graph_breaks=sum(dict(counters.get("graph_break", {})).values()))
    short_configs = []
    if "cfg" not in skip or compiled_pipe is not None:
        short_configs.append(("eager, cfg_batch=True", pipe, dict(cfg_batch=True)))
    if "cfg" not in skip:
        short_configs.append(("eager, cfg_batch=False", pipe, dict(cfg_batch=False)))
    if compiled_pipe is not None:
        short_configs.append(("compiled, cfg_batch=True", compiled_pipe, dict(cfg_batch=True)))
    if short_configs:
        print(f"{short}-step runs ({len(short_configs)} configurations x {short_repeats})", flush=True)
    for _ in range(short_repeats):
        for name, p, kwargs in short_configs:
            runner.run(name, p, cfg_scale=CFG_SCALE, num_inference_steps=short, **kwargs)

    # ------------------------------------------------------------------------------------------ results
    result = dict(
        date=time.strftime("%Y-%m-%d"), size=size_name, torch=torch.__version__, python=platform.python_version(),
        cpu=cpu_name(), cpu_count=os.cpu_count(), threads=torch.get_num_threads(), dtype="float32",
        load_before=load_before, load_after=load(), seed=seed, repeats=repeats, short_repeats=short_repeats,
        steps=steps, short_steps=short,
        cfg_scale=CFG_SCALE, skipped=list(skip),
        setup=dict(dit=dict(dim=size["dit"].dim, ffn_dim=size["dit"].ffn_dim, num_heads=size["dit"].num_heads,
                            num_layers=size["dit"].num_layers, parameters=dit_params),
                   other_models="diffsynth.tiny VAE / umT5 / CLIP; pose guider at the DiT width",
                   height=size["height"], width=size["width"], frames=size["frames"], video_tokens=tokens,
                   text_tokens=size["dit"].text_len, tiled_decode=False),
        runs=runner.runs, errors=runner.errors)
    default_s, default_d = runner.best("default"), runner.best("default", "denoise_s")
    if "fast" not in skip:
        fast_s, fast_d = runner.best("fast"), runner.best("fast", "denoise_s")
        result["fast"] = dict(
            preset=dict(FAST_PRESET, denoising_step_list=list(FAST_PRESET["denoising_step_list"])),
            default_s=default_s, fast_s=fast_s, ratio=ratio(default_s, fast_s),
            default_denoise_s=default_d, fast_denoise_s=fast_d, denoise_ratio=ratio(default_d, fast_d),
            ratio_per_round=round_ratios(runner, "default", "fast"),
            denoise_ratio_per_round=round_ratios(runner, "default", "fast", "denoise_s"),
            default_s_per_step=runner.best("default", "s_per_step"), fast_s_per_step=runner.best("fast", "s_per_step"),
            default_median_s=runner.median("default"), fast_median_s=runner.median("fast"))
    if "caches" not in skip:
        rows = [dict(name="no cache", seconds=default_s, denoise_s=default_d, speedup=1.0, denoise_speedup=1.0,
                     computed_plan=dict(positive=steps, negative=steps),
                     computed_actual=[steps, steps])]   # no cache object: the blocks run at every step
        for name in cache_configs(size):
            runs = runner.runs.get(name) or [{}]
            rows.append(dict(name=name, seconds=runner.best(name), denoise_s=runner.best(name, "denoise_s"),
                             speedup=ratio(default_s, runner.best(name)),
                             denoise_speedup=ratio(default_d, runner.best(name, "denoise_s")),
                             speedup_per_round=round_ratios(runner, "default", name),
                             denoise_speedup_per_round=round_ratios(runner, "default", name, "denoise_s"),
                             computed_plan=plans[name], computed_actual=runs[0].get("computed_actual"),
                             vs_uncached=compare(runner, name, "default")))
        ref_video = runner.outputs.get("default", (None, None))[1]
        result["caches"] = dict(model_id=MODEL_ID, rows=rows, modulation_change=modulation_change(pipe, steps),
                                uncached_frames_std=None if ref_video is None else float(ref_video.std()),
                                uncached_latents_std=None if "default" not in runner.outputs
                                else float(runner.outputs["default"][0].std()))
    if "cfg" not in skip:
        b, s = "eager, cfg_batch=True", "eager, cfg_batch=False"
        result["cfg"] = dict(batched_s_per_step=runner.best(b, "s_per_step"),
                             serial_s_per_step=runner.best(s, "s_per_step"),
                             ratio=ratio(runner.best(s, "s_per_step"), runner.best(b, "s_per_step")),
                             ratio_per_round=round_ratios(runner, s, b, "s_per_step"),
                             batched_s=runner.best(b), serial_s=runner.best(s), diff=compare(runner, b, s))
    if "compile" not in skip:
        e, c = "eager, cfg_batch=True", "compiled, cfg_batch=True"
        first = (runner.runs.get("compiled, first call") or [{}])[0]
        result["compile"] = dict(
            compile_info, first_call_s=first.get("seconds"), first_call_denoise_s=first.get("denoise_s"),
            eager_s_per_step=runner.best(e, "s_per_step"), compiled_s_per_step=runner.best(c, "s_per_step"),
            ratio=ratio(runner.best(e, "s_per_step"), runner.best(c, "s_per_step")),
            ratio_per_round=round_ratios(runner, e, c, "s_per_step"),
            eager_s=runner.best(e), compiled_s=runner.best(c), diff=compare(runner, c, e),
            first_call_diff=compare(runner, "compiled, first call", e),
            warnings=first.get("warnings", []))
    result["wall_s"] = time.perf_counter() - started
    if inductor_dir is not None:
        shutil.rmtree(inductor_dir, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------- markdown
def fmt(x, spec=".2f", none="-"):
    if x is None:
        return none
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def rounds(values: list, spec: str = ".2f") -> str:
    return ", ".join(fmt(v, spec) for v in values) if values else "-"


def markdown(d: dict, command: str) -> str:
    s = d["setup"]
    dit = s["dit"]
    lines = [
        f"# bench_pipeline ({d['date']}, {d['cpu']}, {d['threads']} torch thread(s), torch {d['torch']}, "
        f"{d['dtype']})", "",
        f"**Setup.** `WanUniAnimateVideoPipeline` end to end on the CPU, {d['dtype']}. Random I2V DiT built from the "
        f"real classes: width {dit['dim']}, ffn {dit['ffn_dim']}, {dit['num_heads']} heads, {dit['num_layers']} "
        f"layers ({dit['parameters'] / 1e6:.1f} M parameters); {s['other_models']}. {s['frames']} frames at "
        f"{s['height']}x{s['width']} ({s['video_tokens']} video tokens per CFG branch, {s['text_tokens']} text "
        f"tokens), seed {d['seed']}, untiled decode, cfg {d['cfg_scale']} unless stated. **Random weights**: the "
        "times are the pipeline's real code paths at this size; the output differences show the mechanics only "
        "(a trained model's modulations and residuals behave differently).", "",
        f"**How measured.** `time.perf_counter()` around each whole call (encode, pose, denoise, decode); the "
        "denoising loop's time and s/step are the pipeline's own `last_timings`. One warm-up call, then every "
        f"configuration {d['repeats']} time(s) ({d['steps']}-step runs) or {d['short_repeats']} time(s) "
        f"({d['short_steps']}-step runs), interleaved round by round; the tables show the best of the repeats "
        "(all runs are in the JSON). Differences compare the first repeats (same seed): the final float latents "
        "before decoding, and the decoded uint8 frames. "
        f"Load average {', '.join(map(str, d['load_before']))} before, {', '.join(map(str, d['load_after']))} "
        f"after (the machine is shared; ratios of interleaved runs are more trustworthy than absolute times). "
        f"Whole run: {d['wall_s'] / 60:.1f} min. Command: `{command}`.", ""]
    if "fast" in d:
        f = d["fast"]
        preset = f["preset"]
        lines += [
            "## 1. Default vs fast preset", "",
            "| setting | steps | DiT forwards | whole call | denoising loop | s/step |", "|---|---|---|---|---|---|",
            f"| default: {d['steps']} steps, cfg {d['cfg_scale']}, euler, batched CFG | {d['steps']} | {d['steps']} "
            f"(batch of 2) | {fmt(f['default_s'])} s | {fmt(f['default_denoise_s'])} s | "
            f"{fmt(f['default_s_per_step'], '.3f')} |",
            f"| `preset=\"fast\"`: steps {preset['denoising_step_list']}, shift {preset['sigma_shift']:g}, cfg "
            f"{preset['cfg_scale']:g}, {preset['sampler']} | {len(preset['denoising_step_list'])} | "
            f"{len(preset['denoising_step_list'])} (batch of 1) | {fmt(f['fast_s'])} s | "
            f"{fmt(f['fast_denoise_s'])} s | {fmt(f['fast_s_per_step'], '.3f')} |",
            f"| **ratio default / fast** (best of each) | | | **{fmt(f['ratio'], '.1f')}x** | "
            f"{fmt(f['denoise_ratio'], '.1f')}x | |",
            f"| ratio within each round | | | {rounds(f['ratio_per_round'], '.1f')} | "
            f"{rounds(f['denoise_ratio_per_round'], '.1f')} | |",
            "",
            "Notes: there is no step-distillation LoRA in this benchmark, so `pipe.step_distilled = True` was set by "
            "hand to let `preset=\"fast\"` run; its video from a random, undistilled DiT is not a usable video, only "
            "its time is measured. The whole-call ratio includes encoding and decoding, which are cheap here (tiny "
            "VAE, umT5, CLIP) and expensive with the real models, so on the real pipeline the whole-call ratio sits "
            "between this one and the denoising-loop ratio. Medians: default "
            f"{fmt(f['default_median_s'])} s, fast {fmt(f['fast_median_s'])} s.", ""]
    if "caches" in d:
        c = d["caches"]
        m = c["modulation_change"]
        lines += [
            f"## 2. Step caches ({d['steps']} steps, cfg {d['cfg_scale']}, model_id `{c['model_id']}`)", "",
            "| cache | computed steps, cond / uncond | whole call | speedup | denoising loop | loop speedup | "
            "loop speedup within each round | ideal | latents mean abs diff | frames mean abs diff (uint8) | PSNR |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            plan, actual = r["computed_plan"], r["computed_actual"] or [None, None]
            q = r.get("vs_uncached") or {}
            same = "" if list(actual) == [plan["positive"], plan["negative"]] else \
                f" (plan; actual {fmt(actual[0], 'd')} / {fmt(actual[1], 'd')})"
            lines.append(
                f"| {r['name']} | {plan['positive']} / {plan['negative']} of {d['steps']}{same} | "
                f"{fmt(r['seconds'])} s | {fmt(r['speedup'])}x | {fmt(r['denoise_s'])} s | "
                f"{fmt(r['denoise_speedup'])}x | {rounds(r.get('denoise_speedup_per_round', []))} | "
                f"{d['steps'] / max(plan['positive'], plan['negative']):.2f}x | "
                f"{fmt(q.get('latents_mean_abs'), '.4f', '0 (reference)')} | "
                f"{fmt(q.get('frames_mean_abs'), '.2f', '0 (reference)')} | {fmt(q.get('psnr_db'), '.1f', 'inf')}"
                f"{'' if q.get('psnr_db') is None else ' dB'} |")
        lines += [
            "",
            "Computed steps: from `pipe.cache_plan(...)` before the run; the caches the call actually used agreed "
            "(a disagreement would be printed as \"actual\" in the cell). Where the two branches' plans differ, "
            "batched CFG runs the blocks on a batch of 1 at the steps only one branch computes. Speedup: uncached "
            "time / cached time, best run of each; within each round: the same ratio for the runs of one round, "
            "which ran back to back; ideal: steps / computed steps (what the loop would gain if a skipped step cost "
            "nothing), for reading the measured figures against the machine's noise. "
            f"Scale of the differences: the uncached final latents have std {fmt(c['uncached_latents_std'], '.3f')}, "
            f"the uncached frames a pixel std of {fmt(c['uncached_frames_std'], '.1f')} grey levels.", "",
            f"TeaCache thresholds: this random DiT's timestep modulation e0 changes by a relative L1 of "
            f"{m['rel_l1_min']:.2f}-{m['rel_l1_max']:.2f} between steps (median {m['rel_l1_median']:.2f}); through "
            f"the {c['model_id']} polynomial that adds "
            f"{m['rescaled_min']:.0f}-{m['rescaled_max']:.0f} per step to TeaCache's accumulator, so thresholds of "
            "that order are needed to skip at all (upstream's suggested 0.1-0.3, sized for trained models, computes "
            "every step here). They were chosen "
            "with `cache_plan` to give a range of skip counts. MagCache reads no tensor; "
            "its plan is the same for any model. **The quality columns do not predict a trained model's quality "
            "loss**; they show that skipping changes the output and that more skips change it more.", ""]
    if "cfg" in d:
        g = d["cfg"]
        diff = g.get("diff") or {}
        lines += [
            f"## 3. Batched CFG ({d['short_steps']} steps, cfg {d['cfg_scale']})", "",
            "| cfg_batch | s/step | whole call |", "|---|---|---|",
            f"| True (both branches as one batch of 2) | {fmt(g['batched_s_per_step'], '.3f')} | "
            f"{fmt(g['batched_s'])} s |",
            f"| False (one branch at a time) | {fmt(g['serial_s_per_step'], '.3f')} | {fmt(g['serial_s'])} s |",
            f"| **ratio False / True** (best of each) | **{fmt(g['ratio'])}x** | |",
            f"| ratio within each round | {rounds(g['ratio_per_round'])} | |", "",
            f"Output difference, batched vs serial: final latents max abs {fmt(diff.get('latents_max_abs'), '.2e')} "
            f"(mean {fmt(diff.get('latents_mean_abs'), '.2e')}), uint8 frames max abs "
            f"{fmt(diff.get('frames_max_abs'), 'd')} (mean {fmt(diff.get('frames_mean_abs'), '.4f')}). "
            "Not bit-identical "
            "in general: a batch of 2 can take other matrix-multiply kernels than a batch of 1.", ""]
    if "compile" in d:
        k = d["compile"]
        diff = k.get("diff") or {}
        lines += [
            f"## 4. `pipe.compile()` (inductor on the CPU; {d['short_steps']} steps, cfg {d['cfg_scale']}, "
            "batched CFG)",
            "", "| pipeline | first call | s/step | whole call |", "|---|---|---|---|",
            f"| eager | - | {fmt(k['eager_s_per_step'], '.3f')} | {fmt(k['eager_s'])} s |",
            f"| compiled (fresh copy of the models) | {fmt(k['first_call_s'], '.1f')} s (includes compiling; "
            f"denoising loop {fmt(k['first_call_denoise_s'], '.1f')} s) | {fmt(k['compiled_s_per_step'], '.3f')} | "
            f"{fmt(k['compiled_s'])} s |",
            f"| **ratio eager / compiled** (best of each) | | **{fmt(k['ratio'])}x** | |",
            f"| ratio within each round | | {rounds(k['ratio_per_round'])} | |", "",
            f"Output difference, compiled vs eager: final latents max abs {fmt(diff.get('latents_max_abs'), '.2e')}, "
            f"uint8 frames max abs {fmt(diff.get('frames_max_abs'), 'd')} (mean "
            f"{fmt(diff.get('frames_mean_abs'), '.4f')}). `pipe.compile()` itself took "
            f"{fmt(k.get('compile_call_s'))} s (it only wraps the blocks; compiling happens in the first call), with "
            f"inductor's cache in a {k.get('inductor_cache')}. Dynamo compiled "
            f"{fmt(k.get('unique_graphs'), 'd')} graph(s) "
            f"for the {dit['num_layers']} blocks (recompiles: {fmt(k.get('recompiles'), 'd')}, graph breaks: "
            f"{fmt(k.get('graph_breaks'), 'd')})."]
        if k.get("warnings"):
            lines += ["", "Warnings during the first compiled call: " + "; ".join(f"`{w}`" for w in k["warnings"])
                      + "."]
        lines.append("")
    if d.get("errors"):
        lines += ["## Failures", ""] + [f"- {name}: {'; '.join(errs)}" for name, errs in d["errors"].items()] + [""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models (diffsynth.tiny), 5 frames 32x48, 8 / 2 steps, 1 repeat: a smoke run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine 2 threads oversubscribe and run "
                        "3-5x slower whenever another process is busy)")
    parser.add_argument("--repeats", type=int, help="timed runs per 50-step configuration (default 3, tiny 1)")
    parser.add_argument("--short-repeats", type=int,
                        help="timed runs per batched-CFG / compile configuration (default 3, tiny 1)")
    parser.add_argument("--steps", type=int, help="steps of the default / cache runs (default 50, tiny 8)")
    parser.add_argument("--short-steps", type=int,
                        help="steps of the batched-CFG and compile runs (default 10, tiny 2)")
    parser.add_argument("--warm-inductor-cache", action="store_true",
                        help="compile with inductor's default on-disk cache (the first compiled call then measures "
                        "a cache load after an earlier run) instead of a fresh temporary one")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    parser.add_argument("--out", help="JSON path (the .md goes beside it); default "
                        "benchmarks/results/bench_pipeline.json (tiny: bench_pipeline_tiny.json)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing JSON")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / ("bench_pipeline_tiny.json" if args.tiny else "bench_pipeline.json")
    if args.markdown_only:
        data = json.loads(out.read_text())
        out.with_suffix(".md").write_text(markdown(data, data.get("command", "")))
        return data
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_pipeline.py" + (f" {' '.join(argv if argv is not None else sys.argv[1:])}"
                                                       if (argv if argv is not None else sys.argv[1:]) else "")
    cache_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        data = bench("tiny" if args.tiny else "medium", args.repeats, args.steps, args.short_steps, tuple(args.skip),
                     short_repeats=args.short_repeats, warm_cache=args.warm_inductor_cache)
    finally:   # main() also runs inside the tests: leave the environment as it was
        if cache_env is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_env
    data["command"] = command
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    text = markdown(data, command)
    out.with_suffix(".md").write_text(text)
    print("\n" + text)
    return data


if __name__ == "__main__":
    main()
