"""Block caches (TeaCache, MagCache) behind the BlockCache interface: MagCache's schedule against the authors' loop
written out independently, table resampling, plan() against step-by-step calls, configs and their validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsynth.acceleration import (MAG_RATIOS, TEACACHE_COEFFICIENTS, BlockCache, MagCache, MagCacheConfig,
                                    TeaCache, TeaCacheConfig)

I2V_480P = "Wan2.1-I2V-14B-480P"


def upstream_magcache(table, steps, threshold, K, retention_ratio):
    """MagCache4Wan2.1/magcache_generate.py `magcache_forward`, as the authors run it: one counter over all 2*steps
    model calls (conditional first, then unconditional, per step), state lists indexed by counter % 2, the whole
    interleaved table resampled first when it was calibrated for another step count. Returns per-branch decisions
    (True = computed)."""
    if len(table) != 2 * steps:
        cols = []
        for b in (0, 1):
            col = list(table[b::2])
            scale = (len(col) - 1) / (steps - 1)
            cols.append([col[int(round(k * scale))] for k in range(steps)])   # round(): half to even, like np.round
        table = [cols[k % 2][k // 2] for k in range(2 * steps)]
    ratio, err, skips = [1.0, 1.0], [0.0, 0.0], [0, 0]
    decisions = ([], [])
    for cnt in range(2 * steps):
        b, skip = cnt % 2, False
        if cnt >= int(2 * steps * retention_ratio):
            ratio[b] = ratio[b] * table[cnt]
            skips[b] += 1
            err[b] += np.abs(1 - ratio[b])
            if err[b] < threshold and skips[b] <= K:
                skip = True
            else:
                ratio[b], err[b], skips[b] = 1.0, 0.0, 0
        assert not (skip and True not in decisions[b]), "upstream would add a residual it never computed"
        decisions[b].append(not skip)
    return decisions


def step_by_step(cache: BlockCache, modulations=None):
    """Drive a cache as the DiT forward does, on small stand-in tensors."""
    decisions = []
    for i in range(cache.num_inference_steps):
        compute = cache.should_compute(None if modulations is None else modulations[i])
        if compute:
            cache.store(torch.zeros(2), torch.full((2,), float(i)))
        decisions.append(compute)
    return decisions


@pytest.mark.parametrize("model_id", sorted(MAG_RATIOS))
@pytest.mark.parametrize("steps, threshold, K, retention", [
    (None, 0.12, 2, 0.2),          # the authors' defaults at the calibration step count
    (None, 0.24, 6, 0.2),          # their README preset for the 14B models (E024K6R02)
    (25, 0.24, 6, 0.3),            # int(50 * 0.3) = 15 retained calls: the branches' cut-offs differ by one step
    (20, 0.06, 4, 0.1),            # resampled table, threshold-bound skips
    (7, 0.5, 3, 0.15),             # half-way indices in the resampling; int(14 * 0.15) = 2: step 0 only
])
def test_magcache_schedule_matches_the_authors_loop(model_id, steps, threshold, K, retention):
    table = MAG_RATIOS[model_id]
    steps = steps or len(table) // 2
    expected = upstream_magcache(table, steps, threshold, K, retention)
    config = MagCacheConfig(threshold, K, retention, model_id)
    for branch in (0, 1):
        assert config.new_cache(steps, branch).plan() == expected[branch]
        assert step_by_step(config.new_cache(steps, branch)) == expected[branch]
    assert not all(expected[0]) and not all(expected[1])      # the cases do skip


def test_magcache_rule_written_out_on_an_own_table():
    # (cond, uncond) per step; threshold 0.05, K 3, retention 0 (only step 0 is forced).
    table = (1.0, 1.0, 0.98, 1.0, 0.99, 1.0, 0.99, 1.0, 0.96, 1.0, 1.0, 1.0)
    config = MagCacheConfig(threshold=0.05, K=3, retention_ratio=0.0, mag_ratios=table)
    # cond: 1: ratio .98, err .02 -> skip; 2: ratio .98*.99 = .9702, err .02 + .0298 = .0498 < .05 -> skip;
    #       3: ratio .9702*.99 = .960498, err .0498 + .039502 = .089302 -> compute, reset;
    #       4: ratio .96, err .04 -> skip; 5: ratio .96, err .08 -> compute.
    assert config.new_cache(6, 0).plan() == [True, False, False, True, False, True]
    # uncond: ratios 1, err 0: skips 1, 2, 3 allowed (<= K), the 4th (step 4) computes, step 5 skips: the last step
    # is not forced (upstream does not force it).
    assert config.new_cache(6, 1).plan() == [True, False, False, False, True, False]


def test_magcache_resamples_the_table_by_nearest_index():
    # 40 calibrated steps -> 7: index k * 39/6 = 0, 6.5, 13, 19.5, 26, 32.5, 39, rounded half to even: 0 6 13 20 26 32 39
    cond = [1.0, 0.98762, 0.99057, 0.98571, 0.9774, 0.96113, 0.92617]
    uncond = [1.0, 0.98759, 0.99057, 0.98572, 0.97742, 0.96124, 0.92616]
    assert MagCache(7, model_id=I2V_480P, branch=0).ratios.tolist() == cond
    assert MagCache(7, model_id=I2V_480P, branch=1).ratios.tolist() == uncond
    assert MagCache(1, branch=0).ratios.tolist() == [0.92617]              # one step: upstream keeps the last entry
    table = MAG_RATIOS[I2V_480P]
    assert MagCache(40, branch=1).ratios.tolist() == list(table[1::2])    # calibration count: the column itself


def test_published_tables_are_pinned():
    assert {k: len(v) for k, v in MAG_RATIOS.items()} == {
        "Wan2.1-I2V-14B-480P": 80, "Wan2.1-I2V-14B-720P": 80, "Wan2.1-T2V-1.3B": 100, "Wan2.1-T2V-14B": 100}
    assert MAG_RATIOS[I2V_480P][:4] == (1.0, 1.0, 0.98783, 0.98993)
    assert MAG_RATIOS[I2V_480P][-2:] == (0.92617, 0.92616)
    assert MAG_RATIOS["Wan2.1-I2V-14B-720P"][2:4] == (0.99428, 0.99498)
    assert MAG_RATIOS["Wan2.1-T2V-14B"][2:4] == (1.02504, 1.03017)
    assert MAG_RATIOS["Wan2.1-T2V-1.3B"][-2:] == (0.81838, 0.81939)


@pytest.mark.parametrize("config", [MagCacheConfig(threshold=0.0), MagCacheConfig(0.0, 6, 0.0, "Wan2.1-T2V-14B"),
                                    MagCacheConfig(threshold=0.0, retention_ratio=0.0, mag_ratios=(1.0,) * 8)])
def test_magcache_zero_threshold_computes_every_step(config):
    for steps in (4, 30):
        for branch in (0, 1):
            cache = config.new_cache(steps, branch)
            assert step_by_step(cache) == [True] * steps and cache.skipped_steps == []


def test_magcache_retains_the_leading_fraction():
    cache = MagCacheConfig(threshold=1e9, K=100, retention_ratio=0.25).new_cache(40, 0)
    assert cache.plan() == [True] * 10 + [False] * 30          # 2 * 40 * 0.25 = 20 calls = steps 0..9 of a branch
    assert MagCacheConfig(threshold=1e9, K=100, retention_ratio=1.0).new_cache(40, 1).plan() == [True] * 40


def test_magcache_plan_is_pure_and_a_second_generation_repeats_the_first():
    cache = MagCacheConfig().new_cache(40, 1)
    first = step_by_step(cache)
    assert not first[-1]                                       # ends mid-accumulation: the reset matters
    assert cache.skipped_steps == [i for i, c in enumerate(first) if not c]
    assert cache.step == 0
    assert step_by_step(cache) == first                        # state reset after the full schedule
    assert cache.skipped_steps == [i for i, c in enumerate(first) if not c] * 2
    for _ in range(13):                                        # mid-generation: plan neither reads nor writes it
        if cache.should_compute(None):
            cache.store(torch.zeros(2), torch.ones(2))
    before = dict(vars(cache))
    before_skipped, before_residual = list(cache.skipped_steps), cache.previous_residual
    assert cache.plan() == first
    assert vars(cache).keys() == before.keys()
    for key, value in before.items():
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            assert getattr(cache, key) == value, key
    assert cache.skipped_steps == before_skipped and cache.previous_residual is before_residual


@pytest.mark.parametrize("branch", [0, 1])
def test_magcache_always_computes_step_0(branch):
    # retention 0 retains no call (upstream would add a residual it does not have); a second generation on the same
    # object must not start from the previous video's residual either.
    cache = MagCache(8, threshold=1e9, K=100, retention_ratio=0.0, branch=branch)
    assert cache.plan() == [True] + [False] * 7
    assert step_by_step(cache) == step_by_step(cache) == [True] + [False] * 7


def modulations(steps, seed=0):
    """Slowly drifting e0 stand-ins (relative change ~1% a step, where the rescaled change is ~0.13)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 6, 8, generator=gen)
    return [base * (1 + 0.01 * i) + 0.005 * torch.randn(1, 6, 8, generator=gen) for i in range(steps)]


@pytest.mark.parametrize("thresh", [0.0, 0.2, 0.3, 1e9])
def test_teacache_plan_equals_step_by_step(thresh):
    mods = modulations(10)
    cache = TeaCacheConfig(thresh, I2V_480P).new_cache(10, 1)
    planned = cache.plan(mods)
    assert cache.step == 0 and cache.previous_modulation is None and cache.accumulated == 0.0   # untouched
    assert cache.skipped_steps == [] and cache.previous_residual is None
    assert step_by_step(cache, mods) == planned
    # the rule, written out: first and last steps compute; the rescaled relative L1 change of e0 accumulates and
    # a step computes (restarting the sum) once the sum reaches the threshold
    poly, total, expected = np.poly1d(TEACACHE_COEFFICIENTS[I2V_480P]), 0.0, [True]
    for prev, mod in zip(mods[:-2], mods[1:-1]):
        total += poly(((mod - prev).abs().mean() / prev.abs().mean()).item())
        expected.append(bool(total >= thresh))
        total = 0.0 if expected[-1] else total
    assert planned == expected + [True]
    if thresh in (0.2, 0.3):
        assert 0 < planned.count(False) < 8                    # both skips and threshold-triggered computes
    if thresh == 1e9:
        assert planned == [True] + [False] * 8 + [True]
    if thresh == 0.0:
        assert all(planned)


def test_teacache_plan_needs_one_modulation_per_step():
    cache = TeaCache(5, 0.1, I2V_480P)
    with pytest.raises(ValueError, match="modulation"):
        cache.plan()
    with pytest.raises(ValueError, match="5 expected, got 4"):
        cache.plan(modulations(4))
    with pytest.raises(ValueError, match="5 expected, got 4"):
        MagCache(5).plan([None] * 4)


def test_configs():
    assert TeaCacheConfig(0.3, I2V_480P).needs_modulation is True
    assert MagCacheConfig().needs_modulation is False
    assert MagCacheConfig() == MagCacheConfig(0.12, 2, 0.2, "Wan2.1-I2V-14B-480P")   # the authors' defaults
    assert hash(MagCacheConfig(mag_ratios=[1.0, 1.0])) == hash(MagCacheConfig(mag_ratios=(1.0, 1.0)))
    tea, mag = TeaCacheConfig(0.3, I2V_480P).new_cache(8, 1), MagCacheConfig().new_cache(8, 1)
    assert isinstance(tea, TeaCache) and isinstance(tea, BlockCache) and tea.num_inference_steps == 8
    assert isinstance(mag, MagCache) and isinstance(mag, BlockCache) and mag.branch == 1
    assert set(TEACACHE_COEFFICIENTS) >= {I2V_480P, "Wan2.1-I2V-14B-720P"}


@pytest.mark.parametrize("make, message", [
    (lambda: TeaCacheConfig(-0.1, I2V_480P), r"rel_l1_thresh must be a number >= 0.0, got -0.1"),
    (lambda: TeaCacheConfig(0.3, "wan-21"), r"model_id must be one of .*Wan2.1-I2V-14B-720P.*got 'wan-21'"),
    (lambda: TeaCacheConfig(0.3, I2V_480P).new_cache(10, 2), r"branch must be one of \[0, 1\], got 2"),
    (lambda: TeaCacheConfig(0.3, I2V_480P).new_cache(0), r"num_inference_steps must be an integer >= 1, got 0"),
    (lambda: MagCacheConfig(threshold=-1), r"threshold must be a number >= 0.0, got -1"),
    (lambda: MagCacheConfig(threshold=float("nan")), r"threshold must be a number"),
    (lambda: MagCacheConfig(K=0), r"K must be an integer >= 1, got 0"),
    (lambda: MagCacheConfig(K=2.5), r"K must be an integer >= 1, got 2.5"),
    (lambda: MagCacheConfig(retention_ratio=1.5), r"retention_ratio must be a number >= 0.0 and <= 1.0, got 1.5"),
    (lambda: MagCacheConfig(model_id="Wan2.2"), r"model_id must be one of .*Wan2.1-T2V-14B.*got 'Wan2.2'"),
    (lambda: MagCacheConfig(mag_ratios=(1.0, 1.0, 1.0)), r"mag_ratios must interleave .* got 3 values"),
    (lambda: MagCacheConfig(mag_ratios=(1.0, -1.0)), r"mag_ratios must interleave"),
    (lambda: MagCacheConfig().new_cache(10, -1), r"branch must be one of \[0, 1\], got -1"),
    (lambda: TeaCache(4, 0.1, I2V_480P).should_compute(None), r"needs the block modulation"),
])
def test_invalid_settings_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_skipped_steps_reuse_the_last_computed_residual():
    cache = MagCache(6, mag_ratios=(1.0,) * 12, threshold=1.0, K=1, retention_ratio=0.0)
    with pytest.raises(RuntimeError, match="before any store"):
        cache.reuse(torch.zeros(2))
    outs = []
    for i in range(6):
        x = torch.full((2,), float(i))
        if cache.should_compute(None):
            out = x * 10                                       # stand-in blocks
            cache.store(x, out)
        else:
            out = cache.reuse(x)
        outs.append(out[0].item())
    # computed at 0, 2, 4 (K = 1): residual 9x there; skipped steps add the previous step's residual
    assert outs == [0.0, 1.0, 20.0, 3.0 + 18.0, 40.0, 5.0 + 36.0]


@pytest.mark.parametrize("cache", [TeaCache(4, 0.1, I2V_480P), MagCache(4)], ids=["tea", "mag"])
def test_to_moves_the_held_tensors(cache):
    blocks_in = torch.arange(6.0).reshape(1, 2, 3)
    assert cache.should_compute(torch.ones(1, 6, 8))
    cache.store(blocks_in, blocks_in * 3)
    assert cache.to("cpu") is cache and torch.equal(cache.previous_residual, blocks_in * 2)   # values unchanged
    cache.to(torch.device("meta"))
    assert cache.previous_residual.device.type == "meta" and cache.previous_residual.shape == (1, 2, 3)
    if isinstance(cache, TeaCache):
        assert cache.previous_modulation.device.type == "meta"
    assert cache.reuse(torch.zeros(1, 2, 3, device="meta")).device.type == "meta"
    assert MagCache(3).to("meta").previous_residual is None    # nothing held: nothing to move


# The published TeaCache4Wan2.1 table (ali-vilab/TeaCache, TeaCache4Wan2.1/teacache_generate.py, the
# `use_ret_steps` branch, whose signal is the block modulation e0 as here), copied from that file by hand.
PUBLISHED_TEACACHE4WAN21 = {
    "Wan2.1-T2V-1.3B": [-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02],
    "Wan2.1-T2V-14B": [-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01],
    "Wan2.1-I2V-14B-480P": [2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01],
    "Wan2.1-I2V-14B-720P": [8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02],
}


def test_teacache_coefficients_are_the_published_table():
    assert set(TEACACHE_COEFFICIENTS) == set(PUBLISHED_TEACACHE4WAN21)
    for model_id, published in PUBLISHED_TEACACHE4WAN21.items():
        ours = TEACACHE_COEFFICIENTS[model_id]
        assert len(ours) == 5
        assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(ours, published)), model_id
