"""Seeded random mannequins: bodies, clothes and backgrounds, motions (a walk, arm waves, a turn, a bob, mostly
travelling across the frame) and bystanders. Each function draws from the `rng` it is given, in a fixed order: a
clip is a pure function of its seed."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np

from .mannequin import CLIP_FRAMES, Appearance, Body, Bystander, Motion


def _color(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple:
    return tuple(int(v) for v in rng.integers(low, high, size=3))


def _far_color(rng: np.random.Generator, avoid: Sequence[tuple], min_dist: float = 90.0) -> tuple:
    """A colour at least `min_dist` (RGB distance) from every colour in `avoid` (best of 20 tries)."""
    best, best_d = None, -1.0
    for _ in range(20):
        c = _color(rng)
        d = min((float(np.linalg.norm(np.subtract(c, a))) for a in avoid), default=1e9)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def random_body(rng: np.random.Generator) -> Body:
    s = rng.uniform(0.85, 1.1)    # overall size
    return Body(torso=0.25 * s * rng.uniform(0.9, 1.1), neck=0.07 * s, head=0.06 * s * rng.uniform(0.9, 1.15),
                shoulder=0.085 * s * rng.uniform(0.85, 1.2), hip=0.055 * s * rng.uniform(0.85, 1.2),
                upper_arm=0.13 * s * rng.uniform(0.9, 1.1), forearm=0.12 * s * rng.uniform(0.9, 1.1),
                thigh=0.17 * s * rng.uniform(0.9, 1.1), shin=0.16 * s * rng.uniform(0.9, 1.1), foot=0.045 * s,
                limb=0.05 * s * rng.uniform(0.8, 1.25))


def random_appearance(rng: np.random.Generator) -> Appearance:
    skins = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 32))
    skin = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in skins[rng.integers(len(skins))])
    hair = _color(rng, 0, 140) if rng.random() < 0.7 else _color(rng)
    background = _color(rng)
    top = _far_color(rng, [background, skin])
    bottom = _far_color(rng, [background, top], 70.0)
    kind = ("plain", "floor", "gradient")[rng.integers(3)]
    background2 = tuple(int(np.clip(c + rng.integers(-70, 71), 0, 255)) for c in background)
    return Appearance(skin=skin, hair=hair, top=top, bottom=bottom, shoes=_color(rng, 0, 90),
                      long_sleeves=bool(rng.random() < 0.5), background=background, background2=background2,
                      background_kind=kind, floor=float(rng.uniform(0.7, 0.85)))


def random_motion(rng: np.random.Generator, body: Body) -> Motion:
    """A mix of a walk, arm waves, a turn and a bob, with random amplitudes, speeds and phases."""
    walk = rng.uniform(0, 1) ** 0.7
    wave_r, wave_l = (rng.uniform(0, 1) if rng.random() < 0.6 else 0.0 for _ in range(2))
    turn = rng.uniform(0, 0.9) if rng.random() < 0.5 else 0.0
    bob = rng.uniform(0, 0.06) if rng.random() < 0.4 else 0.0
    w = rng.uniform(0.25, 0.55)           # walking angular speed (rad / frame)
    wv = rng.uniform(0.3, 0.7)            # waving speed
    ph = rng.uniform(0, 2 * math.pi)

    def p(base, *terms):
        terms = [t for t in terms if t[0] != 0.0]
        return (float(base), tuple(float(t[0]) for t in terms), tuple(float(t[1]) for t in terms),
                tuple(float(t[2]) for t in terms))

    def jitter(scale):
        return rng.uniform(-scale, scale), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * math.pi)
    raise_r = rng.uniform(0.2, 2.4) * wave_r
    raise_l = rng.uniform(0.2, 2.4) * wave_l
    params = {
        # arms: angle from hanging straight down, positive = outwards/upwards; elbow bend positive = forearm up
        "r_shoulder": p(0.15 + raise_r, (0.35 * walk, w, ph + math.pi), (0.6 * wave_r, wv, ph), jitter(0.15)),
        "r_elbow": p(0.2 + 0.4 * wave_r, (0.2 * walk, w, ph), (0.7 * wave_r, wv * 2, ph + 1), jitter(0.2)),
        "l_shoulder": p(0.15 + raise_l, (0.35 * walk, w, ph), (0.6 * wave_l, wv, ph + 2), jitter(0.15)),
        "l_elbow": p(0.2 + 0.4 * wave_l, (0.2 * walk, w, ph + math.pi), (0.7 * wave_l, wv * 2, ph + 3), jitter(0.2)),
        # legs: thigh angle from straight down (positive = towards image right), knee bend (>= 0)
        "r_hip": p(-0.05, (0.45 * walk, w, ph), jitter(0.08)),
        "r_knee": p(0.1 + 2 * bob, (0.35 * walk, w, ph - 1.2), jitter(0.05)),
        "l_hip": p(0.05, (0.45 * walk, w, ph + math.pi), jitter(0.08)),
        "l_knee": p(0.1 + 2 * bob, (0.35 * walk, w, ph + math.pi - 1.2), jitter(0.05)),
        "lean": p(0.0, (0.05 * walk, 2 * w, ph), jitter(0.1)),
        "yaw": p(rng.uniform(-0.3, 0.3), (turn, rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi))),
        "bob": p(0.0, (bob, 2 * wv, ph)),
    }
    # Most characters travel across the frame (a walk or a slide), so a frame's figure is often far from where it
    # is in the reference frame: only the driving poses say where to draw it (the demo model must follow them).
    start = float(rng.uniform(0.25, 0.75))
    travel = 0.0
    if rng.random() < 0.8:
        distance = float(rng.uniform(0.15, 0.45))
        room_right, room_left = 0.8 - start, start - 0.2
        direction = 1.0 if rng.random() < 0.5 else -1.0
        if (room_right if direction > 0 else room_left) < distance:   # turn round if it would leave the frame
            direction = -direction
        travel = direction * min(distance, room_right if direction > 0 else room_left)
    return Motion(params=params, root_x=start, root_y=float(rng.uniform(0.48, 0.58)),
                  drift=travel / (CLIP_FRAMES - 1))


def random_bystander(rng: np.random.Generator, character: Appearance, mover: Motion) -> Bystander:
    """A figure with its own body and clothes, coloured far from the character's clothes (so wearing the wrong
    figure's colours is a clear error), standing still where the mover passes at a random moment: its place has the
    distribution of the mover's place in a reference frame (any frame), so where a figure stands in the reference
    does not say which one moves (see `crossing_motion`)."""
    body = random_body(rng)
    own = random_appearance(rng)
    top = _far_color(rng, [character.background, character.top, character.bottom, own.skin])
    bottom = _far_color(rng, [character.background, top, character.top, character.bottom], 70.0)
    x = mover.root_x + mover.drift * float(rng.uniform(0, CLIP_FRAMES - 1))
    motion = replace(random_motion(rng, body), root_x=x, drift=0.0)
    return Bystander(body=body, appearance=replace(own, top=top, bottom=bottom), motion=motion,
                     t=float(rng.uniform(0, 50)))


def crossing_motion(rng: np.random.Generator, motion: Motion) -> Motion:
    """`motion` walking across the whole frame (0.6-0.7 of the width, either way), past the bystander.

    Why: the model sees 16-pixel tokens (3 across at 48 pixels), and a reference frame is any frame of the clip.
    Crossing the frame, the mover is often at one side in the reference while the driving poses are at the other,
    and the bystander, standing somewhere on that path, is nearer to them, in a token of its own: there nearness
    points at the wrong figure and only the reference pose points at the right one (about a fifth of the draws,
    against 4% on the shorter paths of one-figure clips)."""
    span = float(rng.uniform(0.6, 0.7))
    direction = 1.0 if rng.random() < 0.5 else -1.0
    start = 0.5 - direction * span / 2 + float(rng.uniform(-0.03, 0.03))
    return replace(motion, root_x=start, drift=direction * span / (CLIP_FRAMES - 1))
