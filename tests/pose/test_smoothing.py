"""One-Euro temporal smoothing (optional, off by default)."""
from __future__ import annotations

import numpy as np

from diffsynth.pose import OneEuroFilter, smooth_poses
from standins import synthetic_pose


def test_filter_reduces_jitter_on_a_still_point():
    rng = np.random.default_rng(0)
    noisy = 0.5 + rng.normal(0, 0.01, 300)
    f = OneEuroFilter(freq=30, min_cutoff=1.0, beta=0.0)
    smoothed = np.array([f(np.array([v]))[0] for v in noisy])
    assert smoothed[0] == noisy[0]  # the first sample passes through
    assert np.std(smoothed[50:]) < 0.3 * np.std(noisy[50:])


def test_filter_follows_fast_motion_more_with_a_higher_beta():
    t = np.arange(60) / 30
    ramp = 2.0 * t  # 2 units per second
    lags = []
    for beta in (0.0, 5.0):
        f = OneEuroFilter(freq=30, min_cutoff=1.0, beta=beta)
        out = np.array([f(np.array([v]))[0] for v in ramp])
        lags.append(ramp[-1] - out[-1])
    assert lags[1] < 0.5 * lags[0]


def test_invisible_point_restarts_its_filter():
    f = OneEuroFilter(freq=30, min_cutoff=0.1, beta=0.0)
    f(np.array([0.0, 0.0]))
    f(np.array([1.0, 1.0]), active=np.array([True, False]))  # the second point disappears...
    out = f(np.array([1.0, 1.0]))  # ...and comes back: no history, so it is passed through
    assert out[1] == 1.0 and out[0] < 0.5


def test_smooth_poses_keeps_masks_and_damps_noise():
    rng = np.random.default_rng(1)
    poses = []
    for _ in range(60):
        pose = synthetic_pose()
        pose.body += rng.normal(0, 0.005, pose.body.shape)
        pose.body_valid[3] = False
        poses.append(pose)
    smoothed = smooth_poses(poses, fps=30)
    assert all((s.body_valid == p.body_valid).all() for s, p in zip(smoothed, poses))
    raw_jitter = np.std([p.body[0] for p in poses[20:]], axis=0)
    smooth_jitter = np.std([p.body[0] for p in smoothed[20:]], axis=0)
    assert (smooth_jitter < 0.5 * raw_jitter).all()
