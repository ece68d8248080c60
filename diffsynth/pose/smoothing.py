"""Optional temporal smoothing of keypoint tracks with the One-Euro filter (Casiez et al., CHI 2012).

Off by default: the upstream defines a OneEuroFilter but never applies it, and the released model was trained on
unsmoothed poses. A point's filter restarts whenever the point reappears after being invisible.
"""
from __future__ import annotations

import math

import numpy as np

from .keypoints import Pose


class OneEuroFilter:
    """Vectorised One-Euro filter over an array of values sampled at `freq` Hz.

    Args:
        freq: sampling rate (frames per second).
        min_cutoff: cutoff (Hz) at zero speed; lower = smoother when still.
        beta: speed coefficient; higher = less lag when moving (units: per coordinate unit per second).
        d_cutoff: cutoff (Hz) for the speed estimate.
    """

    def __init__(self, freq: float, min_cutoff: float = 1.0, beta: float = 0.5, d_cutoff: float = 1.0):
        if freq <= 0:
            raise ValueError(f"freq must be positive, got {freq}")
        self.freq, self.min_cutoff, self.beta, self.d_cutoff = freq, min_cutoff, beta, d_cutoff
        self.x_prev: np.ndarray | None = None
        self.dx_prev: np.ndarray | None = None
        self._restart: np.ndarray | None = None  # values with no usable history

    def _alpha(self, cutoff):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.freq)

    def __call__(self, x: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Filter one sample. `active` (bool, broadcastable to x) marks values to filter; the others restart."""
        x = np.asarray(x, np.float64)
        active = np.ones(x.shape, bool) if active is None else np.broadcast_to(active, x.shape)
        if self.x_prev is None:
            self.x_prev, self.dx_prev = x.copy(), np.zeros_like(x)
            self._restart = ~active
            return x.copy()
        fresh = ~active | self._restart  # no usable history: pass the value through and restart
        dx = (x - self.x_prev) * self.freq
        dx_hat = self._alpha(self.d_cutoff) * dx + (1 - self._alpha(self.d_cutoff)) * self.dx_prev
        a = self._alpha(self.min_cutoff + self.beta * np.abs(dx_hat))
        x_hat = a * x + (1 - a) * self.x_prev
        x_hat = np.where(fresh, x, x_hat)
        self.dx_prev = np.where(fresh, 0.0, dx_hat)
        self.x_prev = x_hat
        self._restart = ~active
        return x_hat


def smooth_poses(poses: list[Pose], fps: float, min_cutoff: float = 1.0, beta: float = 0.5,
                 d_cutoff: float = 1.0) -> list[Pose]:
    """One-Euro smoothing of body, hand and face tracks (normalised coordinates); masks are unchanged."""
    parts = (("body", "body_valid"), ("hands", "hands_valid"), ("face", "face_valid"))
    filters = {name: OneEuroFilter(fps, min_cutoff, beta, d_cutoff) for name, _ in parts}
    out = []
    for pose in poses:
        pose = pose.copy()
        for name, valid_name in parts:
            valid = getattr(pose, valid_name)[..., None]
            setattr(pose, name, filters[name](getattr(pose, name), valid))
        out.append(pose)
    return out
