"""The memory simulator (benchmarks/simulate.py, benchmarks/sim_device.py): full-size Wan2.1-I2V-14B pipelines on
shape-only tensors, with asserted ceilings per tier, so a change that keeps a copy of the video or a tensor per
window fails here long before a user's GPU runs out of memory. Every figure is simulated, not measured."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
GB = 1e9


def _load(name):
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sim_device = _load("sim_device")
simulate = _load("simulate")

# Simulated allocated peak (what torch.cuda.max_memory_allocated would show, before the allowance), 480x832x81,
# cfg 1.5 with the branches one at a time, every stage up to the decode. The targets.
TIER_CEILINGS_GB = {"0 resident": 12, "fp8 + 0": 10, "7B resident": 20, "all resident": 40}


# ------------------------------------------------------------------------------------------------ the tracker
def test_tracker_counts_storages_once_and_frees_them():
    with sim_device.SimDevice(flops=False) as sim:
        x = torch.empty(1024, 1024, device=sim_device.DEVICE)          # 4 MiB
        view = x[:512]                                                   # same storage: not counted again
        assert sim.live() == 4 * 2**20
        y = x * 2
        assert sim.live() == 8 * 2**20
        del x
        assert sim.live() == 8 * 2**20                                   # the view keeps the storage alive
        del view, y
        assert sim.live() == 0 and sim.peak() == 8 * 2**20
        host = torch.empty(256, 1024)                                    # 1 MiB on the fake host
        moved = host.to(sim_device.DEVICE)
        assert sim.tracker.h2d == 2**20 and sim.live("cpu") == 2**20 and sim.live() == 2**20
        param = torch.nn.Parameter(torch.empty(256, 1024), requires_grad=False)
        sim.tracker.track(param)
        param.data = param.data.to(sim_device.DEVICE)                    # set_data moves it (as Module.to does)
        assert param.device.type == sim_device.DEVICE.type and sim.live("cpu") == 2**20 and sim.live() == 2 * 2**20
        del moved


def test_attention_is_counted_as_the_flash_kernel_not_the_score_matrix():
    """At 480p the math kernel's score matrix alone is 40 x 32,760 x 32,760 fp32 = 172 GB per call."""
    with sim_device.SimDevice(flops=False) as sim:
        q = torch.empty(1, 32760, 40, 128, device=sim_device.DEVICE, dtype=torch.bfloat16)
        from diffsynth.models.attention import attention
        base = sim.live()
        out = attention(q, q, q)
        extra = sim.peak() - base
        assert out.shape == q.shape and sim.counts["attention_flash"] == 1
        # output (bf16) + log-sum-exp (fp32, [B, n, L]) and nothing of the size of a score matrix
        assert extra <= q.numel() * 2 + 40 * 32760 * 4 + 2**20


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 2])
def test_rope_summary_gives_the_real_loop_peak_at_full_size(precision, batch):
    """The simulator summarises `apply_rope`'s chunk loop (for speed); its peak must be the real loop's."""
    from diffsynth.models.layers import apply_rope, rope_table

    peaks = []
    for fn in (apply_rope, sim_device.apply_rope_summary):
        with sim_device.SimDevice(flops=False, exact_rope=True) as sim:
            x = torch.empty(batch, 32760, 40, 128, device=sim_device.DEVICE, dtype=torch.bfloat16)
            table = rope_table(torch.empty(32760, 1, 64, dtype=torch.complex128, device=sim_device.DEVICE),
                               precision, torch.bfloat16)
            base = sim.live()
            sim.tracker.reset_peaks()
            out = fn(x, table)
            peaks.append((sim.peak() - base, tuple(out.shape), out.dtype))
    assert peaks[0] == peaks[1]


# ------------------------------------------------------------------------------------- the 14B tiers at 480p
@pytest.fixture(scope="module")
def session():
    with simulate.Session(reuse_encoders=True) as s:
        yield s


@pytest.fixture(scope="module")
def tiers(session):
    return {tier: simulate.simulate(tier, "480p", steps=1, cfg_batch=False, decode=False, session=session)
            for tier in TIER_CEILINGS_GB}


@pytest.mark.parametrize("tier", list(TIER_CEILINGS_GB))
def test_tier_fits_its_ceiling_at_480p(tiers, tier):
    result = tiers[tier]
    assert result["peak_device"] <= TIER_CEILINGS_GB[tier] * GB, (
        f"{tier}: simulated peak {result['peak_device'] / GB:.2f} GB > {TIER_CEILINGS_GB[tier]} GB; stages: "
        + ", ".join(f"{k} {v['peak_device'] / GB:.2f}" for k, v in result["stages"].items()))
    # every stage ran (the pipeline was not short-circuited) and the DiT really streamed what the tier says
    assert {"umT5 encode (2 prompts)", "CLIP encode", "VAE encode (reference)", "pose guider",
            "DiT step (one guided prediction)"} <= set(result["stages"])
    streamed = result["streamed_host_bytes"].get("dit", 0)
    if tier == "all resident":
        assert streamed == 0
    else:
        assert streamed > 10 * GB


def test_tiers_are_ordered(tiers):
    peak = {t: r["peak_device"] for t, r in tiers.items()}
    assert peak["fp8 + 0"] < peak["0 resident"] < peak["7B resident"] < peak["all resident"]
    step = {t: simulate.step_figures(r)["h2d_bytes_per_step"] for t, r in tiers.items()}
    # one-by-one CFG: the streamed weights cross PCIe twice per step; fp8 halves the Linear weights
    assert step["all resident"] < 2**20                     # only the timestep crosses
    assert step["0 resident"] == pytest.approx(2 * tiers["0 resident"]["streamed_host_bytes"]["dit"], rel=0.01)
    assert step["fp8 + 0"] < 0.55 * step["0 resident"]


# ------------------------------------------------------------------------------------------------ long video
LONG_DIT = None


def _long(session, windows, mutate=None):
    from diffsynth.configs import WanDiTConfig, replace

    # The full-width DiT (5120) with 2 blocks: per-window state (pose tokens [1, L, 5120], private frames) is full
    # size, the forward is 20x cheaper to simulate. The full 40 blocks at 1/2/4/8 windows are in simulate.md.
    config = replace(WanDiTConfig.from_preset("wan2.1-i2v-14b"), num_layers=2)
    return simulate.simulate("0 resident", "480p", steps=1, cfg_batch=False, long_windows=windows, decode=False,
                             output="iterator", session=session, dit_config=config, mutate=mutate)


def test_long_video_memory_is_flat_in_the_number_of_windows(session):
    one, eight = _long(session, 1), _long(session, 8)
    assert eight["num_frames"] == 557 and one["num_frames"] == 81
    for key in ("stage:denoise", "stage:pose"):
        assert eight["stages"][key]["peak_device"] <= 1.02 * one["stages"][key]["peak_device"], key
    assert eight["peak_device"] <= 1.02 * one["peak_device"]
    assert eight["stages"]["DiT step (one guided prediction)"]["calls"] == 8
