"""FlowMatchScheduler against the spec's numbers and an independent computation."""
from __future__ import annotations

import math

import pytest
import torch

from diffsynth.schedulers import FlowMatchScheduler


def test_inference_schedule_matches_spec_values():
    s = FlowMatchScheduler(shift=5.0)
    s.set_timesteps(50)
    assert s.timesteps.dtype == torch.float32 and len(s.timesteps) == 50
    # upstream spec 5.1: 1000, 995.935, 991.736, 987.395, ..., 241.935, 172.414, 92.593
    expected_head, expected_tail = [1000.0, 995.935, 991.736, 987.395], [241.935, 172.414, 92.593]
    torch.testing.assert_close(s.timesteps[:4], torch.tensor(expected_head), atol=1e-3, rtol=0)
    torch.testing.assert_close(s.timesteps[-3:], torch.tensor(expected_tail), atol=1e-3, rtol=0)
    # as bf16 (what the DiT sees): 1000, 996, 992, 988, ..., 92.5
    assert s.timesteps[:4].bfloat16().float().tolist() == [1000.0, 996.0, 992.0, 988.0]
    assert s.timesteps[-1].bfloat16().item() == 92.5


def test_euler_steps_integrate_a_constant_velocity_exactly():
    s = FlowMatchScheduler(shift=3.0)
    s.set_timesteps(7)
    x0, eps = torch.randn(4), torch.randn(4)
    x = eps.clone()                       # sigma = 1
    for t in s.timesteps:
        x = s.step(eps - x0, t, x)        # the true velocity of the straight path
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_training_weights_and_noise():
    s = FlowMatchScheduler(shift=5.0)
    s.set_timesteps(1000, training=True)
    w = s.linear_timesteps_weights
    assert abs(w.mean().item() - 1) < 1e-4 and w[0].item() == 0.0
    assert abs(w.max().item() - 2.076) < 2e-3
    frac_above_500 = (s.timesteps > 500).float().mean().item()
    assert abs(frac_above_500 - 0.83) < 0.01
    x0, eps = torch.ones(3), torch.zeros(3)
    t = s.timesteps[100]
    sigma = 5 * (1 - 100 / 1000) / (1 + 4 * (1 - 100 / 1000))
    torch.testing.assert_close(s.add_noise(x0, eps, t), torch.full((3,), 1 - sigma), atol=1e-6, rtol=0)
    assert math.isclose(s.training_weight(t).item(), w[100].item())


def test_partial_denoising_and_bad_steps():
    s = FlowMatchScheduler(shift=1.0)
    s.set_timesteps(4, denoising_strength=0.5)
    torch.testing.assert_close(s.sigmas, torch.tensor([0.5, 0.375, 0.25, 0.125]))
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)


# ---------------------------------------------------------------------------------------- explicit schedules
def test_denoising_step_list_picks_the_shifted_training_grid():
    """LightX2V convention: entry s is sigma s/1000 on the unshifted grid, then shifted: t = 1000 k u/(1+(k-1)u)."""
    from diffsynth.schedulers import FlowMatchScheduler
    sched = FlowMatchScheduler(shift=5.0)
    sched.set_timesteps(None, denoising_step_list=[1000, 750, 500, 250])
    u = torch.tensor([1.0, 0.75, 0.5, 0.25])
    expected = 1000 * 5 * u / (1 + 4 * u)                      # 1000, 937.5, 833.3, 625
    torch.testing.assert_close(sched.timesteps, expected)
    sched.set_timesteps(4, sigmas=[0.9, 0.5, 0.3, 0.1])         # explicit sigmas are used as given
    torch.testing.assert_close(sched.timesteps, torch.tensor([900.0, 500.0, 300.0, 100.0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(denoising_step_list=[1000, 1200]), "1..1000"),
    (dict(denoising_step_list=[250, 500]), "decreasing"),
    (dict(sigmas=[0.5, 0.0]), r"\(0, 1\]"),
    (dict(denoising_step_list=[1000], sigmas=[0.5]), "one of"),
    (dict(num_inference_steps=3, denoising_step_list=[1000, 500]), "num_inference_steps=3"),
])
def test_explicit_schedules_are_checked(kwargs, message):
    from diffsynth.schedulers import FlowMatchScheduler
    kwargs = dict(dict(num_inference_steps=None), **kwargs)
    with pytest.raises(ValueError, match=message):
        FlowMatchScheduler().set_timesteps(**kwargs)


def test_renoise_sampler_predicts_x0_and_renoises_to_the_next_sigma():
    from diffsynth.schedulers import FlowMatchScheduler
    sched = FlowMatchScheduler(shift=5.0, sampler="renoise")
    sched.set_timesteps(None, denoising_step_list=[1000, 500])
    gen = torch.Generator().manual_seed(0)
    x, v, eps = (torch.randn(2, 3, generator=gen) for _ in range(3))
    s0, s1 = 1.0, 5 * 0.5 / (1 + 4 * 0.5)
    t0, t1 = sched.timesteps
    assert sched.needs_noise(t0) and not sched.needs_noise(t1)
    torch.testing.assert_close(sched.step(v, t0, x, eps), (1 - s1) * (x - s0 * v) + s1 * eps)
    torch.testing.assert_close(sched.step(v, t1, x), x - s1 * v)          # the last step returns x0
    with pytest.raises(ValueError, match="fresh noise"):
        sched.step(v, t0, x)
    sched.sampler = "euler"
    torch.testing.assert_close(sched.step(v, t0, x), x + v * (s1 - s0))
    with pytest.raises(ValueError, match="sampler"):
        sched.sampler = "dpm"
