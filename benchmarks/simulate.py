"""The GPU path without a GPU: full-size memory, FLOPs and transfer accounting of the real pipeline code (simulated).

    python benchmarks/simulate.py                    # every tier at 480p and 720p, long video 1/2/4/8 windows, FLOPs
    python benchmarks/simulate.py --quick            # the 480p tiers only (what the regression test runs)
    python benchmarks/simulate.py --tiers "0 resident" --resolution 480p --steps 2

The real `WanUniAnimateVideoPipeline` / `WanUniAnimateLongVideoPipeline`, `LayerStreamer`, fp8 layers and the full-size
Wan2.1-I2V-14B, umT5-XXL, CLIP ViT-H, Wan VAE and pose guider run on shape-only tensors (`sim_device.SimDevice`: fake
tensors, the simulated GPU is the `meta` device, the host is a fake CPU). Nothing is computed; every live storage on
the device and on the host, every host -> device copy and (with `--flops`) every FLOP is counted. Only the
tokenizer is replaced (a fixed 100-token prompt): it is string handling on the CPU.

Every figure is **simulated**, not measured: the allocated-bytes peak that `torch.cuda.max_memory_allocated` would
report, plus a stated allowance (`sim_device.with_allowance`) for what the simulator cannot see. Attention is counted
as the kernel a GPU would run (`sim_device.ATTENTION_KERNEL`). Speed is a lower bound from FLOPs and bytes with the
H100 figures below, not a timing.

Writes benchmarks/results/simulate.json and simulate.md.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_device import (ALLOWANCE_FIXED_GIB, ALLOWANCE_FRACTION, ATTENTION_KERNEL, DEVICE, GIB,  # noqa: E402
                        SimDevice, with_allowance)

from diffsynth.configs import ClipVisionConfig, PoseGuiderConfig, UMT5Config, WanDiTConfig, WanVAEConfig  # noqa: E402
from diffsynth.models.fp8 import quantize_model_fp8  # noqa: E402
from diffsynth.models.pose_guider import PoseGuider  # noqa: E402
from diffsynth.models.wan_dit import WanModel  # noqa: E402
from diffsynth.models.wan_image_encoder import WanImageEncoder  # noqa: E402
from diffsynth.models.wan_text_encoder import WanTextEncoder  # noqa: E402
from diffsynth.models.wan_vae import WanVideoVAE  # noqa: E402
from diffsynth.pipelines import timing as timing_module  # noqa: E402
from diffsynth.pipelines.long_video import WanUniAnimateLongVideoPipeline  # noqa: E402
from diffsynth.pipelines.unianimate import WanUniAnimateVideoPipeline  # noqa: E402
from diffsynth.prompters import WanPrompter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}     # (height, width), portrait as in the UniAnimate scripts
TIERS = {
    # name: (DiT weights fp8?, placement call, its argument)
    "all resident": (False, "vram", None),
    "7B resident": (False, "vram", 7e9),
    "0 resident": (False, "vram", 0),
    "fp8 + 0": (True, "vram", 0),
    "CPU offload": (False, "offload", None),
}
# Lower-bound speed figures (named in the report): H100 SXM dense bf16 tensor-core peak, and pinned host -> device
# copies over PCIe Gen5 x16 (~64 GB/s raw; ~50 GB/s is what pinned cudaMemcpy reaches).
H100_BF16_FLOPS = 989e12
PCIE_BYTES_PER_S = 50e9
PROMPT_TOKENS = 100
UPSTREAM = {  # published peak GPU memory, for comparison (different code, GPU and settings; see the report)
    "UniAnimate-DiT (published, A800, 480p)": {"7B resident": "23 GB", "0 resident": "14 GB"},
    "DiffSynth-Studio (published)": {"7B resident": "24 GB", "0 resident": "10 GB"},
}


class FixedPrompter(WanPrompter):
    """The real prompter with a fixed tokenisation (no tokenizer files needed): PROMPT_TOKENS real tokens, then
    padding to 512. `encode_prompt` (umT5 forward, masking) is the project's own."""

    def tokenize(self, prompt):
        ids = torch.zeros(1, self.text_len, dtype=torch.long)
        mask = torch.zeros(1, self.text_len, dtype=torch.long)
        ids[:, :PROMPT_TOKENS] = 7
        mask[:, :PROMPT_TOKENS] = 1
        return ids, mask


# ------------------------------------------------------------------------------------------------------ models
def build_models(sim: SimDevice, fp8: bool = False, dit_config: Optional[WanDiTConfig] = None,
                 only_dit: bool = False) -> dict:
    """The five full-size models with fake CPU weights, in the dtypes the README loads them in (DiT, umT5, VAE in
    bf16; CLIP and the pose guider in fp32)."""
    dit_config = dit_config or WanDiTConfig.from_preset("wan2.1-i2v-14b")
    bf16 = torch.bfloat16

    def dit():
        model = WanModel(dit_config).to(bf16)
        if fp8:
            quantize_model_fp8(model, torch.float8_e4m3fn, "channel", compute_dtype=bf16)
        return model.eval()

    if only_dit:
        return {"dit": sim.build(dit)}
    return {
        "dit": sim.build(dit),
        "text_encoder": sim.build(lambda: WanTextEncoder(UMT5Config()).to(bf16).eval()),
        "image_encoder": sim.build(lambda: WanImageEncoder(ClipVisionConfig()).float().eval()),
        "vae": sim.build(lambda: WanVideoVAE(WanVAEConfig()).to(bf16).eval()),
        "pose_guider": sim.build(lambda: PoseGuider(PoseGuiderConfig(out_dim=dit_config.dim)).float().eval()),
    }


def make_pipeline(models: dict, tier: str, long_video: bool = False):
    cls = WanUniAnimateLongVideoPipeline if long_video else WanUniAnimateVideoPipeline
    pipe = cls.from_models(**models, prompter=FixedPrompter(), device=DEVICE, torch_dtype=torch.bfloat16)
    pipe.show_summary = False
    _, placement, budget = TIERS[tier]
    if placement == "vram":
        pipe.enable_vram_management(num_persistent_param_in_dit=budget)
    elif placement == "offload":
        pipe.enable_cpu_offload()
    return pipe


class _DecodeReached(Exception):
    """Raised at the VAE decode when a simulation stops before it (`decode=False`)."""


def _stop(*args, **kwargs):
    raise _DecodeReached


def _decode_output_only(latents, *args, **kwargs):
    """`decode="output"`: the tiled decode's output, [B, 3, 4T-3, 8h, 8w] in the latents' dtype, without its tile
    loop (what runs after it, the conversion to frames, is the real code)."""
    b, _, t, h, w = latents.shape
    return torch.empty(b, 3, 4 * t - 3, 8 * h, 8 * w, dtype=latents.dtype, device=latents.device)


# The stage from the VAE decode's return to the end of the pipeline's "decode" stage: the decoded video becoming
# frames (units.decode_video, data.images.tensor_to_frames, the pipeline's decode). A copy of the video kept there
# stays under the tile loop's peak, so it has a stage (and a ceiling in tests/test_simulate.py) of its own.
FRAMES_STAGE = "decoded video -> frames"


# ------------------------------------------------------------------------------------------------ instrumenting
@contextlib.contextmanager
def instrument(sim: SimDevice, pipe):
    """Name the stages: the pipeline's own StageTimer stages ("encode", "pose", "denoise", "decode"), and inside
    them each model's call (umT5, CLIP, VAE encode/decode, pose guider, one guided DiT prediction), and
    `FRAMES_STAGE` after the VAE decode. Yields a dict that gets "decoded_video": the decode's output (shape, dtype,
    bytes)."""
    opened: Dict[int, object] = {}
    after_decode: List[object] = []
    notes: dict = {}
    timer_cls = timing_module.StageTimer
    orig_start, orig_stop = timer_cls.start, timer_cls.stop

    def start(timer, stage):
        opened[(id(timer), stage)] = sim.tracker.begin(f"stage:{stage}", sim.flops)
        return orig_start(timer, stage)

    def stop(timer, stage):
        out = orig_stop(timer, stage)
        if stage == "decode":
            while after_decode:
                sim.tracker.end(after_decode.pop(), sim.flops)
        record = opened.pop((id(timer), stage), None)
        if record is not None:
            sim.tracker.end(record, sim.flops)
        return out

    def wrap(obj, name, label, after=None):
        original = getattr(obj, name, None)
        if original is None:     # a pipeline without that step (the pipelines are being restructured)
            return lambda: None

        def wrapped(*args, **kwargs):
            with sim.stage(label):
                out = original(*args, **kwargs)
            if after is not None:
                after(out)
            return out
        setattr(obj, name, wrapped)
        return lambda: obj.__dict__.pop(name, None)

    def frames_stage(video):
        notes["decoded_video"] = {"shape": list(video.shape), "dtype": str(video.dtype),
                                  "bytes": video.numel() * video.element_size()}
        after_decode.append(sim.tracker.begin(FRAMES_STAGE, sim.flops))

    undo = [wrap(pipe, "encode_prompts", "umT5 encode (2 prompts)"),
            wrap(pipe.image_encoder, "encode_image", "CLIP encode"),
            wrap(pipe.vae, "encode", "VAE encode (reference)"),
            wrap(pipe, "encode_pose_video", "pose guider"),
            wrap(pipe, "predict", "DiT step (one guided prediction)"),
            wrap(pipe.vae, "decode", "VAE decode (tiled)", after=frames_stage),
            wrap(pipe.vae, "decode_iter", "VAE decode (tiled, streamed)")]
    timer_cls.start, timer_cls.stop = start, stop
    try:
        yield notes
    finally:
        timer_cls.start, timer_cls.stop = orig_start, orig_stop
        for u in undo:
            u()


def summarise_stages(sim: SimDevice) -> Dict[str, dict]:
    """Stages by name: the highest peak of any call, summed copies and FLOPs, the number of calls."""
    out: Dict[str, dict] = {}
    for stage in sim.tracker.stages:
        row = out.setdefault(stage.name, {"calls": 0, "peak_device": 0, "peak_host": 0, "h2d": 0, "flops": 0,
                                          "h2d_last": 0, "flops_last": 0, "seconds": 0.0,
                                          "live_start_device": stage.start.get("device", 0)})
        row["live_end_device"] = stage.end.get("device", 0)
        row["calls"] += 1
        row["peak_device"] = max(row["peak_device"], stage.peak.get("device", 0))
        row["peak_host"] = max(row["peak_host"], stage.peak.get("cpu", 0) + stage.peak.get("pinned", 0))
        row["h2d"] += stage.h2d
        row["flops"] += stage.flops
        row["h2d_last"], row["flops_last"] = stage.h2d, stage.flops
        row["seconds"] += stage.seconds
    return out


# -------------------------------------------------------------------------------------------------- a generation
class Session:
    """One simulated device and the full-size models, shared by several generations (building and packing the 14B
    DiT is a few seconds; `simulate(..., session=...)` reuses them). Models are reset to the CPU between runs."""

    def __init__(self, flops: bool = False, exact_rope: bool = False, dit_config: Optional[WanDiTConfig] = None,
                 reuse_encoders: bool = False):
        self.sim = SimDevice(flops=flops, exact_rope=exact_rope)
        self.dit_config = dit_config
        self.models: Optional[dict] = None
        self.fp8: Optional[bool] = None
        self.built_config: Optional[WanDiTConfig] = None
        # reuse_encoders: after the first generation at a resolution, umT5, CLIP and the reference VAE encode return
        # outputs of the recorded shapes without running, and their stage figures are the first run's (they do not
        # depend on the tier: the encoders stream the same way whatever the DiT budget, and the DiT is not on the
        # device while they run). For the regression test's speed; the report runs everything.
        self.reuse_encoders = reuse_encoders
        self.encoder_records: Dict[str, dict] = {}
        self.sim.__enter__()

    def close(self) -> None:
        self.models = None
        self.sim.__exit__(None, None, None)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def models_for(self, fp8: bool, dit_config: Optional[WanDiTConfig] = None) -> dict:
        dit_config = dit_config or self.dit_config or WanDiTConfig.from_preset("wan2.1-i2v-14b")
        if self.models is None:
            self.models = build_models(self.sim, fp8=fp8, dit_config=dit_config)
        elif fp8 != self.fp8 or dit_config != self.built_config:
            self.reset()
            self.models["dit"] = None                 # the other DiT is freed before the new one is built
            built = build_models(self.sim, fp8=fp8, dit_config=dit_config, only_dit=True)
            self.models["dit"] = built["dit"]
        self.fp8, self.built_config = fp8, dit_config
        return self.models

    def reset(self) -> None:
        """Models back to the CPU (streaming removed), stage records and peaks cleared."""
        from diffsynth.acceleration.vram import disable_layer_streaming  # noqa: PLC0415

        for model in (self.models or {}).values():
            if model is not None:
                disable_layer_streaming(model)
                model.to("cpu")
        self.sim.tracker.stages.clear()
        self.sim.tracker.reset_peaks()


def _call_arguments(pipe, wanted: dict) -> dict:
    """Drop the keyword arguments this pipeline's `__call__` does not take (the pipelines' signatures evolve)."""
    import inspect  # noqa: PLC0415

    params = inspect.signature(type(pipe).__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and "output_type" not in params:
        return {k: v for k, v in wanted.items() if k in params or k == "output_type"}
    return {k: v for k, v in wanted.items() if k in params}


def simulate(tier: str = "0 resident", resolution: str = "480p", num_frames: int = 81, steps: int = 2,
             cfg_scale: float = 1.5, cfg_batch: bool = True, long_windows: Optional[int] = None,
             output: str = "pil", flops: bool = False, mutate: Optional[Callable] = None,
             dit_config: Optional[WanDiTConfig] = None, decode=True, exact_rope: bool = False,
             session: Optional[Session] = None) -> dict:
    """One generation of the real pipeline at full size on the simulated device; figures in bytes.

    long_windows: run the long-video pipeline over that many 81-frame windows (overlap 4 latent frames).
    output: "pil" (the frames returned as a list, as `pipe(...)`) or "iterator" (streamed decode).
    mutate: called with (sim, pipe) before the generation (the regression tests break things on purpose with it).
    decode: False stops the generation when the VAE decode starts (every stage before it is complete); the decode is
        the slowest stage to simulate (~190k ops at 480p) and does not depend on the tier's DiT placement.
        "output": the VAE decode returns its output's shape without the tile loop; everything after it (the
        conversion to frames, `FRAMES_STAGE`) runs: seconds instead of a minute.
    session: reuse the models of a `Session` (then `flops` and `exact_rope` are the session's).
    """
    own = session is None
    session = session or Session(flops=flops, exact_rope=exact_rope, dit_config=dit_config)
    try:
        return _simulate(session, tier, resolution, num_frames, steps, cfg_scale, cfg_batch, long_windows, output,
                         mutate, decode, dit_config)
    finally:
        if own:
            session.close()
        else:
            session.reset()


ENCODER_STAGES = {"text_encoder": ("forward", "umT5 encode (2 prompts)"),
                  "image_encoder": ("encode_image", "CLIP encode"),
                  "vae": ("encode", "VAE encode (reference)")}


@contextlib.contextmanager
def encoder_reuse(session: Session, models: dict, resolution: str):
    """See `Session.reuse_encoders`: record the encoders' outputs on the first run, replay their shapes after."""
    if not session.reuse_encoders:
        yield None
        return
    record = session.encoder_records.get(resolution)
    replay = record is not None
    record = record or {"outputs": {name: [] for name in ENCODER_STAGES}, "stages": {}}
    undo = []
    for name, (method, _) in ENCODER_STAGES.items():
        model = models[name]
        original = getattr(model, method)
        calls = itertools.cycle(list(record["outputs"][name])) if replay else None

        def call(*args, _original=original, _name=name, _calls=calls, **kwargs):
            if _calls is not None:
                shape, dtype = next(_calls)
                return torch.empty(shape, dtype=dtype, device=DEVICE)
            out = _original(*args, **kwargs)
            record["outputs"][_name].append((tuple(out.shape), out.dtype))
            return out
        setattr(model, method, call)
        undo.append((model, method))
    try:
        yield record if replay else None
    finally:
        for model, method in undo:
            model.__dict__.pop(method, None)
    if not replay:
        session.encoder_records[resolution] = record


def _simulate(session: Session, tier, resolution, num_frames, steps, cfg_scale, cfg_batch, long_windows, output,
              mutate, decode, dit_config=None) -> dict:
    from PIL import Image  # noqa: PLC0415

    height, width = RESOLUTIONS[resolution]
    started = time.perf_counter()
    sim = session.sim
    flops_start = sim.flops
    models = session.models_for(TIERS[tier][0], dit_config)
    weights_host = sim.live("cpu")
    pipe = make_pipeline(models, tier, long_video=long_windows is not None)
    extra = {}
    if long_windows is not None:
        latent_frames = 21 + 17 * (long_windows - 1)
        num_frames = 4 * (latent_frames - 1) + 1
        extra = dict(context_size=21, context_overlap=4, output_type="iterator" if output == "iterator" else "pil",
                     output=output)
    image = Image.new("RGB", (width, height), (128, 128, 128))
    poses = sim.fake(3, num_frames, height, width)                         # float 0..255, as read_pose_clip
    ref_pose = sim.fake(height, width, 3, dtype=torch.uint8)
    if not decode:
        for name in ("decode", "decode_iter"):
            setattr(pipe.vae, name, _stop)
    elif decode == "output":
        pipe.vae.decode = _decode_output_only
    if mutate is not None:
        mutate(sim, pipe)
    setup = {k: sim.live(k) for k in ("device", "cpu", "pinned")}
    sim.tracker.stages.clear()
    sim.tracker.reset_peaks()
    arguments = dict(prompt="a person is dancing", negative_prompt="blurry", input_image=image, dwpose_data=poses,
                     random_ref_dwpose=ref_pose, height=height, width=width, num_frames=num_frames,
                     cfg_scale=cfg_scale, num_inference_steps=steps, seed=0, cfg_batch=cfg_batch,
                     progress_bar_cmd=lambda x: x, **extra)
    frames = None
    reuse = encoder_reuse(session, models, resolution)
    try:
        with reuse as replayed, instrument(sim, pipe) as notes, contextlib.suppress(_DecodeReached):
            frames = pipe(**_call_arguments(pipe, arguments))
            if frames is not None and not isinstance(frames, list):   # a streamed decode runs when consumed
                if decode:
                    with sim.stage("stage:decode (streamed)"):
                        frames = [f for f in frames]
                else:
                    frames.close() if hasattr(frames, "close") else None
                    frames = None
        n_frames = len(frames) if frames is not None else 0
        frames = None
        peaks = {k: sim.peak(k) for k in ("device", "cpu", "pinned")}
        stages = summarise_stages(sim)
        if not decode:
            stages = {k: v for k, v in stages.items() if "decode" not in k}
        elif decode == "output":     # the tile loop did not run: no VAE decode figure ("stage:decode" is the rest)
            stages.pop("VAE decode (tiled)", None)
        if session.reuse_encoders:
            record = session.encoder_records[resolution]
            if replayed is not None:
                for _, label in ENCODER_STAGES.values():
                    stages[label] = dict(record["stages"][label], reused=True)
            else:
                for _, label in ENCODER_STAGES.values():
                    record["stages"][label] = dict(stages[label])
        streamers = getattr(pipe, "_streamers", {})
        return {
            "tier": tier, "resolution": resolution, "height": height, "width": width, "num_frames": num_frames,
            "frames_out": n_frames, "steps": steps, "cfg_scale": cfg_scale, "cfg_batch": cfg_batch,
            "long_windows": long_windows, "output": output, "decoded": decode is True,
            "decoded_video": notes.get("decoded_video"),
            "peak_device": max(v["peak_device"] for v in stages.values()) if decode is not True else peaks["device"],
            "peak_host": peaks["cpu"] + peaks["pinned"],
            "weights_host_at_load": weights_host, "setup_live": setup,
            "streamed_host_bytes": {name: sum(g.nbytes for g in st._groups.values())
                                    for name, st in streamers.items()},
            "streamer_stats": {name: dict(st.stats) for name, st in streamers.items()},
            "stages": stages, "flops_total": sim.flops - flops_start,
            "attention_calls": dict(sim.counts), "assumed_scalars": sim.tracker.assumed_scalars,
            "sim_seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        del pipe


# ---------------------------------------------------------------------------------------------------- reporting
def gib(n: float) -> float:
    return round(n / GIB, 2)


def step_figures(result: dict) -> dict:
    """Per denoising step (steady state: the last step of the run): host -> device bytes, FLOPs, and the H100 lower
    bounds."""
    pred = result["stages"].get("DiT step (one guided prediction)", {})
    calls = pred.get("calls", 0)
    windows = result["long_windows"] or 1
    per_step_calls = max(1, calls // result["steps"]) if calls else windows
    # The last step's copies: the streamer's prefetch order is learned during the first step.
    h2d_step = pred.get("h2d_last", 0) * per_step_calls
    flops_step = pred.get("flops_last", 0) * per_step_calls
    out = {"h2d_bytes_per_step": h2d_step, "flops_per_step": flops_step}
    if flops_step:
        out["compute_s_per_step"] = flops_step / H100_BF16_FLOPS
    out["transfer_s_per_step"] = h2d_step / PCIE_BYTES_PER_S
    return out


def decode_peaks(results: List[dict], stage_name: str = "VAE decode (tiled)") -> Dict[str, int]:
    """Device peak of the tiled VAE decode (or of `stage_name`) per resolution (simulated once per resolution; see
    `main`)."""
    out = {}
    for r in results:
        stage = r["stages"].get(stage_name)
        if stage and not r.get("long_windows"):
            out[r["resolution"]] = max(out.get(r["resolution"], 0), stage["peak_device"])
    return out


def generation_peak(r: dict, decodes: Dict[str, int]) -> int:
    """The run's device peak, with the decode of its resolution when the run stopped before decoding."""
    return r["peak_device"] if r.get("decoded") else max(r["peak_device"], decodes.get(r["resolution"], 0))


def table_rows(results: List[dict]) -> List[str]:
    stage_names = ["umT5 encode (2 prompts)", "CLIP encode", "VAE encode (reference)", "pose guider",
                   "DiT step (one guided prediction)"]
    decodes = decode_peaks(results)
    conversions = decode_peaks(results, FRAMES_STAGE)
    head = ("| tier | res | CFG | peak GPU, simulated | + allowance | host RAM in denoise / peak | "
            + " | ".join(["umT5", "CLIP", "VAE enc", "pose guider", "DiT step", "decode", "to frames"])
            + " | H2D GB/step |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if r.get("long_windows"):
            continue
        stages = r["stages"]
        cells = [f"{gib(stages[s]['peak_device']):.2f}" if s in stages else "-" for s in stage_names]
        for name, peaks in (("VAE decode (tiled)", decodes), (FRAMES_STAGE, conversions)):
            own = stages.get(name, {}).get("peak_device")
            cells.append(f"{gib(own):.2f}" if own else (f"({gib(peaks[r['resolution']]):.2f})"
                                                         if r["resolution"] in peaks else "-"))
        peak = generation_peak(r, decodes)
        rows.append(f"| {r['tier']} | {r['resolution']} | {'batched' if r['cfg_batch'] else 'one by one'} | "
                    f"{gib(peak):.2f} GiB | {gib(with_allowance(peak)):.1f} GiB | "
                    f"{gib(stages['stage:denoise']['peak_host']):.1f} / {gib(r['peak_host']):.1f} GiB | "
                    + " | ".join(cells) +
                    f" | {step_figures(r)['h2d_bytes_per_step'] / 1e9:.1f} |")
    return rows


def long_rows(results: List[dict]) -> List[str]:
    rows = ["| windows | frames | peak GPU (simulated) | denoise stage | pose stage | host RAM peak |",
            "|---|---|---|---|---|---|"]
    for r in results:
        if not r.get("long_windows"):
            continue
        st = r["stages"]
        rows.append(f"| {r['long_windows']} | {r['num_frames']} | {gib(r['peak_device']):.2f} GiB | "
                    f"{gib(st['stage:denoise']['peak_device']):.2f} GiB | "
                    f"{gib(st['stage:pose']['peak_device']):.2f} GiB | {gib(r['peak_host']):.1f} GiB |")
    return rows


CALLS = {"all resident": "`enable_vram_management(None)`", "7B resident": "`enable_vram_management(7e9)`",
         "0 resident": "`enable_vram_management(0)`",
         "fp8 + 0": "fp8 load + `enable_vram_management(0)`", "CPU offload": "`enable_cpu_offload()`"}


def readme_rows(report: dict) -> List[str]:
    """The README's tier table, from the simulated figures (each cell labelled simulated)."""
    results = [r for r in report["results"] if not r.get("long_windows")]
    decodes = decode_peaks(results)
    speed = {(row["resolution"], row["tier"], row["cfg_batch"]): row for row in report.get("speed", [])}

    def find(tier, res, batch):
        return next((r for r in results if r["tier"] == tier and r["resolution"] == res and r["cfg_batch"] == batch),
                    None)

    def peak(r):
        return f"{gib(generation_peak(r, decodes)):.1f}" if r is not None else "n/s"

    def allowance(r):
        return f"{gib(with_allowance(generation_peak(r, decodes))):.1f}" if r is not None else "n/s"

    rows = ["| tier | call | GPU peak 480p (832x480), simulated: CFG one by one / batched | the same + allowance | "
            "s/step 480p, H100 lower bound | GPU peak 720p, simulated: one by one / batched | host RAM while "
            "denoising, simulated |", "|---|---|---|---|---|---|---|"]
    for tier in TIERS:
        one, both = find(tier, "480p", False), find(tier, "480p", True)
        one7, both7 = find(tier, "720p", False), find(tier, "720p", True)
        if one is None and both is None:
            continue
        sp = speed.get(("480p", tier, True))
        if sp is not None:
            hidden = sp["prefetch_hides"] and speed.get(("480p", tier, False), sp)["prefetch_hides"]
            seconds = f"{sp['compute_s_per_step']:.1f}" + (" (copies hidden)" if hidden else
                                                          f" + {sp['transfer_s_per_step']:.1f} copies")
        else:
            seconds = "n/s"
        if tier == "CPU offload":
            seconds += " + moving 33 GB per call"
        host = (one or both)["stages"]["stage:denoise"]["peak_host"]
        rows.append(f"| {tier} | {CALLS[tier]} | {peak(one)} / {peak(both)} GiB | {allowance(one)} / "
                    f"{allowance(both)} GiB | {seconds} | {peak(one7)} / {peak(both7)} GiB | {gib(host):.1f} GiB |")
    return rows


def write_report(report: dict, out_dir: Path = RESULTS) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "simulate.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# Simulated GPU memory, transfers and FLOPs (not measured)", "",
             "Written by `python benchmarks/simulate.py`. The project's real pipelines, streamer and models ran at full "
             "size on shape-only tensors (see `benchmarks/sim_device.py`); no GPU was used. **Every figure is "
             f"simulated.** Attention counted as {ATTENTION_KERNEL}. Allowance for what the simulator cannot see "
             f"(CUDA context, cuBLAS/flash workspaces, allocator fragmentation): +{ALLOWANCE_FIXED_GIB:g} GiB + "
             f"{ALLOWANCE_FRACTION:.0%} of the simulated peak. GiB = 2^30 bytes, GB = 10^9.", "",
             f"Settings: {report['settings']}", "", "## Peak GPU memory per tier and stage (GiB, simulated)", ""]
    lines += table_rows(report["results"])
    lines += ["", "Stage columns: the device peak while that stage runs (everything resident at the time included); "
              "(x): the decode simulated in the 0-resident run of that resolution (the DiT is offloaded before the "
              "VAE runs, so the decode does not depend on the tier). decode: the VAE's tiled decode (tile loop and "
              "blend); to frames: from its return to the frames (`tensor_to_frames` converts one frame at a time: "
              "two fp32 temporaries of one frame, on the device).",
              "Host RAM: fake-CPU storage (models parked in CPU memory, the streamed weights' buffers, which are "
              "pinned on CUDA, the pose frames, the returned frames), during the denoising loop and over the whole "
              "call (the peak is at the start, when every model still sits in CPU memory as the ModelManager loaded "
              "it).", ""]
    lines += ["## Host memory per tier (480p, while denoising, GiB, simulated)", "",
              "Pinned on CUDA: the streamer's flat buffers (the streamed DiT part, umT5 and CLIP, which stream whole). "
              "Other: what stays in pageable CPU memory (models parked by CPU offload, the input pose frames, "
              "the reference image, small tensors).", "",
              "| tier | pinned: DiT | pinned: umT5 | pinned: CLIP | other | total |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        if r["resolution"] != "480p" or r.get("long_windows") or not r["cfg_batch"]:
            continue
        pinned = r["streamed_host_bytes"]
        total = r["stages"]["stage:denoise"]["peak_host"]
        other = total - sum(pinned.values())
        lines.append(f"| {r['tier']} | {gib(pinned.get('dit', 0)):.2f} | {gib(pinned.get('text_encoder', 0)):.2f} | "
                     f"{gib(pinned.get('image_encoder', 0)):.2f} | {gib(other):.2f} | {gib(total):.2f} |")
    lines.append("")
    if any(r.get("long_windows") for r in report["results"]):
        lines += ["## Long video (0 resident, 480p, one window = 81 frames, overlap 4 latent frames)", ""]
        lines += long_rows(report["results"])
        lines += ["", "cfg 1.5 batched, 1 step, stopped before the decode (it streams one latent frame at a time "
                  "through the tiled VAE: flat by construction, not simulated here). Host RAM grows with the "
                  "length: the pose frames given as input (fp32, 1.6 MB per frame at 480p) and each window's pose "
                  "tokens parked on the CPU (335 MB per window).", ""]
    if report.get("speed"):
        lines += ["## FLOPs and the H100 lower bound per CFG step", "",
                  f"Figures used: {H100_BF16_FLOPS / 1e12:g} TFLOP/s dense bf16 (H100 SXM), {PCIE_BYTES_PER_S / 1e9:g} "
                  "GB/s pinned host -> device (PCIe Gen5 x16). Lower bounds: real kernels reach 40-70% of peak.", "",
                  "FLOPs / DiT forward: one CFG branch (batch 1). FLOPs / generation: 50 steps x 2 branches + the "
                  "other stages (umT5, CLIP, VAE encode, pose guider, and at 480p the tiled decode; the 720p FLOP "
                  "run stopped before the decode). Per block: the compute of one block in one DiT call (batch 2 when "
                  "batched, batch 1 one by one) against the copy of its streamed weights.", "",
                  "| res | tier | CFG | FLOPs / DiT forward | FLOPs / generation (50 steps, CFG) | H2D GB / step | "
                  "compute s / step | transfer s / step | per block: compute ms / copy ms | prefetch hides copy |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in report["speed"]:
            lines.append(f"| {row['resolution']} | {row['tier']} | "
                         f"{'batched' if row['cfg_batch'] else 'one by one'} | {row['flops_per_forward']:.3e} | "
                         f"{row['flops_per_generation']:.3e} | {row['h2d_bytes_per_step'] / 1e9:.1f} | "
                         f"{row['compute_s_per_step']:.2f} | {row['transfer_s_per_step']:.2f} | "
                         f"{row['block_compute_ms']:.0f} / {row['block_copy_ms']:.0f} | "
                         f"{'yes' if row['prefetch_hides'] else 'NO'} |")
        lines.append("")
    lines += ["## README tier table (simulated)", "",
              "n/s: not simulated. Peaks include the tiled decode of the same resolution. Allowance: "
              f"x{1 + ALLOWANCE_FRACTION:g} + {ALLOWANCE_FIXED_GIB:g} GiB. s/step: cfg 1.5 (two DiT forwards), "
              "FLOPs / 989 TFLOP/s; copies hidden when a block's copy (50 GB/s) is shorter than its compute.", ""]
    lines += readme_rows(report) + [""]
    lines += ["## Published figures (for comparison; other code, GPUs and settings)", "",
              "| tier | this project, simulated, one by one / batched CFG (GB = 10^9, with allowance) | "
              + " | ".join(UPSTREAM) + " |", "|---|---|" + "---|" * len(UPSTREAM)]
    decodes = decode_peaks(report["results"])
    for tier in ("7B resident", "0 resident"):
        runs = {r["cfg_batch"]: r for r in report["results"] if r["tier"] == tier and r["resolution"] == "480p"
                and not r.get("long_windows")}
        ours = " / ".join(f"{with_allowance(generation_peak(runs[b], decodes)) / 1e9:.1f}" if b in runs else "n/s"
                          for b in (False, True))
        lines.append(f"| {tier} | {ours} | " + " | ".join(UPSTREAM[src].get(tier, "-") for src in UPSTREAM) + " |")
    lines += ["", "The published figures are nvidia-smi-style totals from other implementations (upstream copies "
              "each layer's weights per call and keeps umT5/CLIP differently); users of the upstream report up "
              "to 47 GB measured where 23 GB was promised. Not comparable cell by cell, listed as the reference "
              "points issue 22 names.", ""]
    (out_dir / "simulate.md").write_text("\n".join(lines))


def speed_rows(flop_results: List[dict], tier_results: List[dict]) -> List[dict]:
    """FLOPs per DiT forward / generation from the FLOP-counted runs; copies per step from the tier runs; the H100
    lower bounds, and per block the compute time against the copy time of its streamed weights."""
    layers = WanDiTConfig.from_preset("wan2.1-i2v-14b").num_layers
    rows = []
    for fr in flop_results:
        step = step_figures(fr)
        branches = 2 if fr["cfg_scale"] != 1.0 else 1
        per_forward = step["flops_per_step"] / branches           # one branch, batch 1
        others = fr["flops_total"] - fr["stages"]["DiT step (one guided prediction)"]["flops"]
        for tr in tier_results:
            if tr["resolution"] != fr["resolution"] or tr.get("long_windows"):
                continue
            t = step_figures(tr)
            forwards = 1 if tr["cfg_batch"] else branches
            streamed = tr["streamed_host_bytes"].get("dit", 0)
            block_bytes = streamed / layers                         # streamed weights per block (blocks dominate)
            compute_ms = per_forward * (branches if tr["cfg_batch"] else 1) / layers / H100_BF16_FLOPS * 1e3
            copy_ms = block_bytes / PCIE_BYTES_PER_S * 1e3
            rows.append({
                "resolution": fr["resolution"], "tier": tr["tier"], "cfg_batch": tr["cfg_batch"],
                "flops_per_forward": per_forward, "flops_per_generation": others + 50 * step["flops_per_step"],
                "flops_other_stages": others, "forwards_per_step": forwards,
                "h2d_bytes_per_step": t["h2d_bytes_per_step"],
                "compute_s_per_step": step["flops_per_step"] / H100_BF16_FLOPS,
                "transfer_s_per_step": t["h2d_bytes_per_step"] / PCIE_BYTES_PER_S,
                "block_compute_ms": compute_ms, "block_copy_ms": copy_ms,
                "prefetch_hides": copy_ms <= compute_ms})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 480p tiers only (batched CFG, no decode, no FLOPs)")
    parser.add_argument("--tiers", default=",".join(TIERS))
    parser.add_argument("--resolution", default="480p,720p")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--windows", default="1,2,4,8", help="long-video windows ('' to skip)")
    parser.add_argument("--no_flops", action="store_true")
    parser.add_argument("--cfg", choices=("both", "batched", "one_by_one"), default="both",
                        help="CFG branches batched, one by one, or both (--quick: batched)")
    parser.add_argument("--no_decode", action="store_true", help="stop every run before the VAE decode")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="write one report from several simulate.json files (their runs and FLOP runs)")
    parser.add_argument("--out_dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.merge:
        reports = [json.loads(Path(p).read_text()) for p in args.merge]
        results = [r for rep in reports for r in rep["results"]]
        flop_results = [r for rep in reports for r in rep.get("flop_runs", [])]
        report = dict(reports[0], results=results, flop_runs=flop_results,
                      failures=[f for rep in reports for f in rep.get("failures", [])],
                      speed=speed_rows(flop_results, results) if flop_results else [])
        write_report(report, Path(args.out_dir))
        return report
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    resolutions = [r.strip() for r in args.resolution.split(",") if r.strip()]
    windows = [] if args.quick else [int(w) for w in args.windows.split(",") if w.strip()]
    if args.quick:
        resolutions = ["480p"]
    results = []
    failures = []

    def run(label, **kw):
        """One simulation; a failure is logged and reported, not fatal to the others."""
        try:
            r = simulate(**kw)
        except Exception as exc:  # noqa: BLE001
            import traceback  # noqa: PLC0415
            failures.append({"run": label, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{label}: FAILED {type(exc).__name__}: {exc}\n{traceback.format_exc()}", flush=True)
            return None
        results.append(r)
        log(r, label)
        partial = dict(settings={"partial": True}, results=results, flop_runs=[], speed=[], failures=failures)
        (Path(args.out_dir) / "simulate.partial.json").write_text(json.dumps(partial, indent=1, default=str))
        return r

    Path(args.out_dir).mkdir(parents=True, exist_ok=True)

    def log(r, label):
        print(f"{label}: peak {gib(r['peak_device'])} GiB (+allowance {gib(with_allowance(r['peak_device']))}), "
              f"host {gib(r['peak_host'])} GiB [{r['sim_seconds']} s]", flush=True)

    with Session() as session:
        for resolution in resolutions:
            for tier in tiers:
                # The decode does not depend on the tier (the DiT is offloaded before the VAE runs): simulated once
                # per resolution, in the "0 resident" run.
                batches = {"batched": (True,), "one_by_one": (False,)}.get(
                    args.cfg, (True,) if args.quick else (True, False))
                for batch in batches:
                    decode = not args.quick and not args.no_decode and batch and tier == "0 resident"
                    run(f"{tier} {resolution} cfg_batch={batch} decode={decode}", tier=tier, resolution=resolution,
                        steps=args.steps, cfg_batch=batch, decode=decode, session=session)
        for n in windows:
            run(f"long video {n} windows", tier="0 resident", resolution="480p", steps=1, long_windows=n,
                output="iterator", decode=False, session=session)
    flop_results = []
    if not args.quick and not args.no_flops:
        with Session(flops=True) as session:
            for resolution in resolutions:
                try:
                    r = simulate("0 resident", resolution, steps=1, cfg_batch=True, decode=resolution == "480p",
                                 session=session)
                except Exception as exc:  # noqa: BLE001
                    failures.append({"run": f"FLOPs {resolution}", "error": f"{type(exc).__name__}: {exc}"})
                    print(f"FLOPs {resolution}: FAILED {exc}", flush=True)
                    continue
                flop_results.append(r)
                print(f"FLOPs {resolution}: {r['flops_total']:.3e} [{r['sim_seconds']} s]", flush=True)
    report = {"settings": {"steps": args.steps, "cfg_scale": 1.5, "prompt_tokens": PROMPT_TOKENS,
                           "torch": torch.__version__, "attention": ATTENTION_KERNEL,
                           "allowance": {"fixed_gib": ALLOWANCE_FIXED_GIB, "fraction": ALLOWANCE_FRACTION},
                           "h100_bf16_flops": H100_BF16_FLOPS, "pcie_bytes_per_s": PCIE_BYTES_PER_S},
              "results": results, "flop_runs": flop_results, "failures": failures,
              "speed": speed_rows(flop_results, results) if flop_results else []}
    write_report(report, Path(args.out_dir))
    (Path(args.out_dir) / "simulate.partial.json").unlink(missing_ok=True)
    return report


if __name__ == "__main__":
    main()
